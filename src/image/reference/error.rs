//! Why a string is not an image reference, tag or tag template.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use super::{MAX_NAME_LEN, MAX_TAG_LEN};

const FORMS_HELP: &str = "accepted forms are `docker://HOST[:PORT]/PATH` (e.g. \
    docker://registry.example.org/infra/runners/nixos or docker://localhost:5000/runner) \
    and `oci:DIR` (an OCI layout directory)";

const PATH_GRAMMAR: &str = "each `/`-separated path component must match \
    [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*: lowercase letters and digits, separated by \
    `.`, `_`, `__` or dashes";

const TAG_GRAMMAR: &str = "a tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}: \
    1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`";

/// Why a string is not an [`ImageRef`](super::ImageRef).
#[derive(Debug, Clone, PartialEq, Eq, Error, Diagnostic)]
pub enum ImageRefError {
    #[error("image reference `{input}` has no transport")]
    #[diagnostic(
        code(runnerctl::image_ref::missing_transport),
        help("{hint}{FORMS_HELP}")
    )]
    MissingTransport {
        #[source_code]
        input: String,
        /// `did you mean ...? ` or empty.
        hint: String,
        #[label("expected `docker://` or `oci:` here")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` uses unsupported transport `{transport}`")]
    #[diagnostic(code(runnerctl::image_ref::unknown_transport), help("{FORMS_HELP}"))]
    UnknownTransport {
        #[source_code]
        input: String,
        transport: String,
        #[label("unsupported transport")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` has no registry host")]
    #[diagnostic(code(runnerctl::image_ref::empty_host), help("{FORMS_HELP}"))]
    EmptyHost {
        #[source_code]
        input: String,
        #[label("host expected here")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` has an invalid registry host `{host}`: {reason}")]
    #[diagnostic(
        code(runnerctl::image_ref::invalid_host),
        help(
            "the host is a DNS name or IP address (letters, digits, `.`, `-`, or an IPv6 \
             address in brackets), optionally followed by `:PORT`; {FORMS_HELP}"
        )
    )]
    InvalidHost {
        #[source_code]
        input: String,
        host: String,
        reason: String,
        #[label("{reason}")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` has no repository path after the host")]
    #[diagnostic(code(runnerctl::image_ref::empty_path), help("{FORMS_HELP}"))]
    EmptyPath {
        #[source_code]
        input: String,
        #[label("repository path expected here")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` contains the tag `{tag}`")]
    #[diagnostic(
        code(runnerctl::image_ref::tag_not_allowed),
        help("write the reference without a tag and pass tags with --tag (e.g. --tag {tag}); {FORMS_HELP}")
    )]
    TagNotAllowed {
        #[source_code]
        input: String,
        tag: String,
        #[label("tags come from --tag, not from the reference")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` contains a digest")]
    #[diagnostic(
        code(runnerctl::image_ref::digest_not_allowed),
        help("images are pushed by tag; remove the `@...` part and pass tags with --tag; {FORMS_HELP}")
    )]
    DigestNotAllowed {
        #[source_code]
        input: String,
        #[label("digests are not allowed here")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` has uppercase letters in repository path component `{component}`")]
    #[diagnostic(
        code(runnerctl::image_ref::uppercase_path),
        help("registries only accept lowercase repository paths; {PATH_GRAMMAR}")
    )]
    UppercaseRepository {
        #[source_code]
        input: String,
        component: String,
        #[label("use lowercase here")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` has an invalid repository path component `{component}`")]
    #[diagnostic(code(runnerctl::image_ref::invalid_path), help("{PATH_GRAMMAR}"))]
    InvalidComponent {
        #[source_code]
        input: String,
        component: String,
        #[label("invalid path component")]
        span: SourceSpan,
    },

    #[error("image reference `{input}` is {len} characters long; registries accept at most {MAX_NAME_LEN} for HOST/PATH")]
    #[diagnostic(
        code(runnerctl::image_ref::name_too_long),
        help("use a shorter repository path")
    )]
    NameTooLong { input: String, len: usize },

    #[error("image reference `{input}` has an empty OCI directory")]
    #[diagnostic(
        code(runnerctl::image_ref::empty_oci_dir),
        help("name the OCI layout directory, e.g. `oci:./out/image`; {FORMS_HELP}")
    )]
    EmptyOciDir {
        #[source_code]
        input: String,
        #[label("directory expected here")]
        span: SourceSpan,
    },
}

/// What is wrong with a string that should be a [`Tag`](super::Tag).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagProblem {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long, more than the {MAX_TAG_LEN} allowed")]
    TooLong(usize),
    #[error("it starts with `{0}`; a tag must start with a letter, digit or `_`")]
    BadFirst(char),
    #[error("it contains `{ch}` at position {index}; only letters, digits, `_`, `.` and `-` are allowed")]
    BadChar { ch: char, index: usize },
}

/// Why a tag or tag template is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error, Diagnostic)]
pub enum TagError {
    #[error("`{tag}` is not a valid image tag: {problem}")]
    #[diagnostic(code(runnerctl::tag::invalid), help("{TAG_GRAMMAR}"))]
    Invalid { tag: String, problem: TagProblem },

    #[error(
        "tag template `{template}` produced `{tag}`, which is not a valid image tag: {problem}"
    )]
    #[diagnostic(code(runnerctl::tag::invalid_expansion), help("{TAG_GRAMMAR}"))]
    InvalidExpansion {
        template: String,
        tag: String,
        problem: TagProblem,
    },

    #[error("tag template `{template}` uses unknown placeholder `{{{placeholder}}}`")]
    #[diagnostic(
        code(runnerctl::tag::unknown_placeholder),
        help("known placeholders: {known}")
    )]
    UnknownPlaceholder {
        #[source_code]
        template: String,
        placeholder: String,
        /// The known placeholders, e.g. `{date}`.
        known: String,
        #[label("unknown placeholder")]
        span: SourceSpan,
    },

    #[error("tag template `{template}` has an unmatched `{brace}`")]
    #[diagnostic(
        code(runnerctl::tag::unmatched_brace),
        help("placeholders are written `{{date}}`; braces cannot appear in tags otherwise")
    )]
    UnmatchedBrace {
        #[source_code]
        template: String,
        brace: char,
        #[label("unmatched")]
        span: SourceSpan,
    },
}
