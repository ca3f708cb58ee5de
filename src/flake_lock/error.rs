//! [`LockError`], its `miette` diagnostic, and turning serde_json errors
//! into one that points at the offending byte.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};
use thiserror::Error;

use super::span::{
    floor_char_boundary, next_unread_offset, offset_to_line_col, skip_json_ws, trailing_comma,
};
use super::{MAX_FOLLOWS_DEPTH, MAX_RESOLVE_STEPS, SUPPORTED_VERSIONS};

/// Errors reading or querying a `flake.lock`.
///
/// Each variant says what is wrong; [`LockError::path`] names the file and,
/// when the lock was read with [`parse`](super::parse), the diagnostic points into its text
/// (`miette` source code and label). The help text says what to do.
///
/// Where in the file the problem is lives in a boxed [`Site`] so that the
/// error stays small enough to return by value.
#[derive(Debug, Error)]
pub enum LockError {
    /// The text is not JSON, or not JSON of the shape of a lock file.
    #[error("{}:{line}:{column}: {message}", .site.path.display())]
    Json {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What serde_json found wrong, without its position suffix.
        message: String,
        /// Whether the text is valid JSON of the wrong shape (rather than
        /// not JSON at all).
        shape: bool,
        site: Box<Site>,
    },

    /// The `version` field is missing or not one of [`SUPPORTED_VERSIONS`].
    #[error("{}: unsupported flake.lock version {found}", .site.path.display())]
    UnsupportedVersion {
        /// The version as written (JSON text), or `missing`.
        found: String,
        site: Box<Site>,
    },

    /// The node named by the top-level `root` field does not exist.
    #[error("{}: the root node `{root}` is not in `nodes`", .site.path.display())]
    MissingRoot { root: String, site: Box<Site> },

    /// The root node has no input of the requested name.
    #[error("{}: the flake has no input named `{input}`", .site.path.display())]
    InputNotInRoot {
        input: String,
        /// Names of the root node's inputs, sorted.
        available: Vec<String>,
        site: Box<Site>,
    },

    /// A node input refers to a node key that does not exist.
    #[error(
        "{}: input `{input}` refers to node `{node}`, which is not in `nodes`",
        .site.path.display()
    )]
    MissingNode {
        /// The root input being resolved.
        input: String,
        /// The node key that is missing.
        node: String,
        site: Box<Site>,
    },

    /// A `follows` path names an input that does not exist.
    #[error(
        "{}: input `{input}` follows `{}`, but `{missing}` has no input `{segment}`",
        .site.path.display(),
        .follows.join("/")
    )]
    DanglingFollows {
        /// The root input being resolved.
        input: String,
        /// The `follows` path that could not be resolved.
        follows: Vec<String>,
        /// The node in which the look-up failed.
        missing: String,
        /// The path segment that was not found.
        segment: String,
        site: Box<Site>,
    },

    /// `follows` declarations refer to each other in a loop.
    #[error(
        "{}: resolving input `{input}` loops through `follows`: {}",
        .site.path.display(),
        .chain.join(" -> ")
    )]
    FollowsCycle {
        input: String,
        /// The chain of `node.inputs.name` look-ups, ending where it repeats.
        chain: Vec<String>,
        site: Box<Site>,
    },

    /// Resolution needed more `follows` look-ups than allowed.
    #[error(
        "{}: resolving input `{input}` needs too many `follows` look-ups \
         (more than {MAX_FOLLOWS_DEPTH} nested or {MAX_RESOLVE_STEPS} in total)",
        .site.path.display()
    )]
    FollowsTooDeep { input: String, site: Box<Site> },

    /// The resolved node records no `lastModified` time.
    #[error(
        "{}: input `{input}` (node `{node}`) has no lastModified time",
        .site.path.display()
    )]
    NoLastModified {
        input: String,
        node: String,
        /// The locked `type`, or `unlocked` if the node has no `locked` attribute.
        kind: String,
        site: Box<Site>,
    },

    /// The resolved node's `lastModified` is not a date a tag can name
    /// (before 1970-01-02 or after 9999-12-31).
    #[error(
        "{}: input `{input}` (node `{node}`) has lastModified {value}, which is not a date between 1970-01-02 and 9999-12-31",
        .site.path.display()
    )]
    LastModifiedOutOfRange {
        input: String,
        node: String,
        value: i64,
        site: Box<Site>,
    },
}

/// Where a [`LockError`] happened: the file, and if known its text and the
/// span of the offending part.
#[derive(Debug)]
pub struct Site {
    pub(super) path: PathBuf,
    pub(super) src: Option<NamedSource<String>>,
    pub(super) span: Option<SourceSpan>,
}

impl Site {
    pub(super) fn in_text(path: &Path, text: &str, span: SourceSpan) -> Box<Site> {
        Box::new(Site {
            path: path.to_owned(),
            src: Some(NamedSource::new(
                path.display().to_string(),
                text.to_owned(),
            )),
            span: Some(span),
        })
    }
}

const RESTORE_HELP: &str = "restore it with `git checkout -- flake.lock` or regenerate it with \
                            `nix flake lock`";

impl LockError {
    fn site(&self) -> &Site {
        match self {
            LockError::Json { site, .. }
            | LockError::UnsupportedVersion { site, .. }
            | LockError::MissingRoot { site, .. }
            | LockError::InputNotInRoot { site, .. }
            | LockError::MissingNode { site, .. }
            | LockError::DanglingFollows { site, .. }
            | LockError::FollowsCycle { site, .. }
            | LockError::FollowsTooDeep { site, .. }
            | LockError::NoLastModified { site, .. }
            | LockError::LastModifiedOutOfRange { site, .. } => site,
        }
    }

    /// The lock file the error is about (`flake.lock` if the lock was not
    /// read with [`parse`](super::parse)).
    pub fn path(&self) -> &Path {
        &self.site().path
    }

    /// Byte span of the offending part of the file, if known.
    pub fn span(&self) -> Option<SourceSpan> {
        self.site().span
    }

    /// The diagnostic's code (after `runnerctl::flake_lock::`), the label
    /// on the offending span, and what to do: one arm per kind of error.
    fn parts(&self) -> (&'static str, String, String) {
        let inconsistent = || format!("the lock file is inconsistent; {RESTORE_HELP}");
        match self {
            LockError::Json {
                message,
                shape: false,
                ..
            } => (
                "json",
                message.clone(),
                format!("flake.lock is not valid JSON; {RESTORE_HELP}"),
            ),
            LockError::Json {
                message,
                shape: true,
                ..
            } => (
                "json",
                message.clone(),
                format!(
                    "the file is JSON but not shaped like a flake.lock (`version`, `root` and \
                     `nodes` with `inputs`/`locked` entries); {RESTORE_HELP}"
                ),
            ),
            LockError::UnsupportedVersion { found, .. } => (
                "unsupported_version",
                format!("version {found} is not supported"),
                format!(
                    "runnerctl reads flake.lock versions {}; regenerate the lock file with \
                     `nix flake lock` using a Nix that writes one of those, or upgrade runnerctl",
                    supported_list()
                ),
            ),
            LockError::MissingRoot { .. } => (
                "missing_root",
                "no node with this name".to_owned(),
                inconsistent(),
            ),
            LockError::InputNotInRoot { available, .. } => (
                "input_not_in_root",
                "the root node's inputs are declared here".to_owned(),
                if available.is_empty() {
                    "the flake has no inputs at all, so there is nothing to take a date from; \
                     add an input to flake.nix and run `nix flake lock`"
                        .to_owned()
                } else {
                    format!(
                        "the flake's inputs are: {}; pass one of them with `--input NAME`",
                        available.join(", ")
                    )
                },
            ),
            LockError::MissingNode { .. } => (
                "missing_node",
                "refers to a missing node".to_owned(),
                inconsistent(),
            ),
            LockError::DanglingFollows { .. } => (
                "dangling_follows",
                "this follows path does not resolve".to_owned(),
                "fix the `follows` declaration in flake.nix (`nix flake metadata` shows the \
                 input tree), then run `nix flake lock`"
                    .to_owned(),
            ),
            LockError::FollowsCycle { .. } => (
                "follows_cycle",
                "this follows path leads back to itself".to_owned(),
                "fix the `follows` declarations in flake.nix so they do not refer to each \
                 other in a loop, then run `nix flake lock`"
                    .to_owned(),
            ),
            LockError::FollowsTooDeep { .. } => (
                "follows_too_deep",
                "resolution starts here".to_owned(),
                "simplify the `follows` declarations in flake.nix and run `nix flake lock`, \
                 or pick another input with `--input NAME`"
                    .to_owned(),
            ),
            LockError::NoLastModified { input, kind, .. } => (
                "no_last_modified",
                "locked without lastModified".to_owned(),
                format!(
                    "the lock entry of type `{kind}` records no lastModified time (as for \
                     `path:` inputs), so no date tag can be derived from `{input}`; pick \
                     another input, e.g. a `github:` one, with `--input NAME`"
                ),
            ),
            LockError::LastModifiedOutOfRange { input, .. } => (
                "last_modified_range",
                "lastModified out of range".to_owned(),
                format!(
                    "the lock entry's time cannot be a date tag; run `nix flake update {input}` \
                     to lock it again, or pick another input with `--input NAME`"
                ),
            ),
        }
    }
}

impl Diagnostic for LockError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!(
            "runnerctl::flake_lock::{}",
            self.parts().0
        )))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.parts().2))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.site().src.as_ref().map(|src| src as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let site = self.site();
        let span = site.span.filter(|_| site.src.is_some())?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.parts().1),
            span,
        ))))
    }
}

fn supported_list() -> String {
    let mut out = String::new();
    for (i, v) in SUPPORTED_VERSIONS.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == SUPPORTED_VERSIONS.len() {
                " and "
            } else {
                ", "
            });
        }
        out.push_str(&v.to_string());
    }
    out
}

pub(super) fn json_error(err: &serde_json::Error, text: &str, path: &Path) -> LockError {
    use serde_json::error::Category;

    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let mut message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();

    // serde_json reports the position of the last byte it consumed (column 0:
    // nothing consumed on that line yet).
    let next = next_unread_offset(text, err.line(), err.column());
    let last = (err.column() > 0).then(|| floor_char_boundary(text, next.saturating_sub(1)));
    let bytes = text.as_bytes();

    let offset = match err.classify() {
        Category::Data => {
            // For a scalar, the last consumed byte is the end of the offending
            // value; for an object or array it is the byte before it.
            let before_value = match last {
                Some(i) => matches!(
                    bytes.get(i),
                    Some(b' ' | b'\t' | b'\n' | b'\r' | b':' | b',' | b'[' | b'{')
                ),
                None => true,
            };
            match last {
                Some(i) if !before_value => i,
                _ => skip_json_ws(bytes, next).min(text.len()),
            }
        }
        _ => {
            let at = last.unwrap_or(next);
            match trailing_comma(bytes, at) {
                Some(comma) => {
                    let closer = bytes.get(at).map_or('}', |&b| char::from(b));
                    message = format!("trailing comma before `{closer}`");
                    comma
                }
                None => at,
            }
        }
    };
    let offset = floor_char_boundary(text, offset);
    let (line, column) = offset_to_line_col(text, offset);
    let len = text
        .get(offset..)
        .and_then(|rest| rest.chars().next())
        .map_or(0, char::len_utf8);

    LockError::Json {
        line,
        column,
        message,
        shape: err.classify() == Category::Data,
        site: Site::in_text(path, text, (offset, len).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake_lock::fixtures::*;
    use crate::flake_lock::{parse, FlakeLock};
    use std::collections::BTreeMap;

    #[test]
    fn invalid_json_reports_line_and_column() {
        let text = "{\n  \"nodes\": {\n    \"root\": {\n      \"inputs\": {}\n    },\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";
        // Line 5 ends with a trailing comma (serde_json notices it at the `}`
        // on line 6; the error points at the comma itself).
        let err = parse(text, path()).unwrap_err();
        match &err {
            LockError::Json {
                line,
                column,
                message,
                shape,
                ..
            } => {
                assert_eq!((*line, *column), (5, 6));
                assert_eq!(message, "trailing comma before `}`");
                assert!(!shape);
                let line5 = text.lines().take(4).map(|l| l.len() + 1).sum::<usize>();
                assert_eq!(err.span().unwrap().offset(), line5 + 5);
                assert_eq!(err.path(), path());
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(label_text(&err, text), ",");
        let msg = err.to_string();
        assert_eq!(msg, "/srv/runner/flake.lock:5:6: trailing comma before `}`");
        let help = err.help().unwrap().to_string();
        assert!(help.contains("git checkout -- flake.lock"), "{help}");
        assert!(help.contains("nix flake lock"), "{help}");
        let rendered = render(&err);
        assert!(
            rendered.contains("/srv/runner/flake.lock:5:6"),
            "{rendered}"
        );

        // Comma before `]`, and other syntax errors.
        let text = "{\n\n\n\n  \"nodes\": [1, ]}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(":5:14: trailing comma before `]`"),
            "{err}"
        );
        let text = "{\"version\": 7, \"root\": \"r\" \"nodes\": {}}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string().ends_with(":1:28: expected `,` or `}`"),
            "{err}"
        );
        assert_eq!(label_text(&err, text), "\"");
        let text = "{\n  \"root\": tru }";
        let err = parse(text, path()).unwrap_err();
        assert!(err.to_string().ends_with(":2:14: expected ident"), "{err}");
    }

    #[test]
    fn trailing_comma_on_line_five() {
        for text in [
            "{\n  \"root\": \"root\",\n  \"version\": 7,\n  \"nodes\": {\n    \"root\": {},\n  }\n}",
            "{\n  \"root\": \"root\",\n  \"version\": 7,\n  \"nodes\": {\n    \"root\": {}, }\n}",
        ] {
            let err = parse(text, path()).unwrap_err();
            assert!(
                matches!(&err, LockError::Json { line: 5, column: 15, message, .. } if message.starts_with("trailing comma")),
                "{err:?}"
            );
            assert_eq!(label_text(&err, text), ",");
        }
    }

    #[test]
    fn column_counts_characters() {
        let text = "{\"é\": 1, \"ü\": x}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Json {
                    line: 1,
                    column: 15,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(label_text(&err, text), "x");
    }

    #[test]
    fn json_errors_at_end_of_input_are_clamped() {
        for text in ["", "{", "{\"version\": 7", "\n\n", "{\"a\": \"é"] {
            let err = parse(text, path()).unwrap_err();
            assert!(matches!(err, LockError::Json { .. }), "{err:?}");
            let span = err.span().unwrap();
            assert!(span.offset() + span.len() <= text.len(), "{text:?}");
            render(&err);
        }
    }

    #[test]
    fn wrong_shape_is_a_json_error_with_shape_help() {
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\": []}";
        let err = parse(text, path()).unwrap_err();
        let LockError::Json { line, column, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *column), (1, 41));
        assert_eq!(label_text(&err, text), "[");
        assert!(err
            .to_string()
            .contains("invalid type: sequence, expected a map"));
        assert!(err
            .help()
            .unwrap()
            .to_string()
            .contains("not shaped like a flake.lock"));

        // Compound value without a space before it.
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\":{\"root\":{\"inputs\":[]}}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "[");

        // Scalar of the wrong type: the label ends the value.
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\": 35}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "5");
        let text = "{\"version\": 7, \"root\": 5, \"nodes\": {}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "5");

        // Input references are buffered (they are untagged), so a bad one is
        // reported just after its value, with a message saying what fits.
        let text =
            "{\"version\": 7, \"root\": \"root\", \"nodes\": {\"root\": {\"inputs\": {\"a\": 1}}}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "}");
        assert_eq!(
            err.labels().unwrap().next().unwrap().offset(),
            text.len() - 4
        );
        assert!(
            err.to_string().contains("follows path (array of strings)"),
            "{err}"
        );

        // Missing field: the label is the end of the object lacking it.
        let text = "{\"version\": 7,\n \"nodes\": {}\n}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string().ends_with(":3:1: missing field `root`"),
            "{err}"
        );

        let err = parse("[7]", path()).unwrap_err();
        assert_eq!(label_text(&err, "[7]"), "]");
        assert!(err.to_string().contains("invalid length 1"), "{err}");
        let err = parse("  \"x\"", path()).unwrap_err();
        assert_eq!(label_text(&err, "  \"x\""), "\"");
    }

    #[test]
    fn errors_stay_small() {
        // Keeps `Result<_, LockError>` below clippy's `result_large_err` limit.
        assert!(std::mem::size_of::<LockError>() <= 128);
    }

    #[test]
    fn errors_without_source_text_still_name_a_file() {
        let lock: FlakeLock = serde_json::from_str(REALISTIC).unwrap();
        let err = lock.resolve_root_input("nope").unwrap_err();
        assert!(err.to_string().starts_with("flake.lock: "), "{err}");
        assert_eq!(err.labels().into_iter().flatten().count(), 0);
        render(&err);
        let lock = FlakeLock {
            version: 7,
            root: "root".into(),
            nodes: BTreeMap::new(),
            source: None,
        };
        assert!(matches!(
            lock.resolve_root_input("x"),
            Err(LockError::MissingRoot { .. })
        ));
        assert!(lock.root_inputs().is_empty());
    }
}
