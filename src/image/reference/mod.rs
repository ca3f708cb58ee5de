//! Image references (where an image is pushed) and image tags.
//!
//! An [`ImageRef`] names a repository without a tag: either
//! `docker://HOST[:PORT]/PATH` (a registry) or `oci:DIR` (an OCI layout
//! directory). Tags are separate [`Tag`] values, usually expanded from
//! [`TagTemplate`]s such as `{date}`, and combined with [`ImageRef::at_tag`]
//! into the transport strings `skopeo` understands.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use miette::SourceSpan;
use serde::{Deserialize, Serialize};

mod error;
mod tag;

pub use error::{ImageRefError, TagError, TagProblem};
pub use tag::{Tag, TagTemplate, DEFAULT_TAGS, KNOWN_PLACEHOLDERS, MAX_TAG_LEN};

/// Longest repository name (host and path) accepted by registries.
const MAX_NAME_LEN: usize = 255;

/// Where images are pushed: a registry repository or an OCI layout directory.
///
/// Serializes as the string form (`docker://HOST/PATH` or `oci:DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ImageRef {
    /// `docker://HOST[:PORT]/PATH`.
    Docker {
        /// `host[:port]`, e.g. `registry.example.org` or `localhost:5000`.
        registry: String,
        /// Repository path, e.g. `infra/runners/nixos`.
        repository: String,
    },
    /// `oci:DIR`.
    Oci { dir: PathBuf },
}

impl ImageRef {
    /// The `skopeo` transport string for this image at `tag`:
    /// `docker://HOST/PATH:TAG` or `oci:DIR:TAG`.
    pub fn at_tag(&self, tag: &Tag) -> String {
        match self {
            ImageRef::Docker {
                registry,
                repository,
            } => format!("docker://{registry}/{repository}:{tag}"),
            ImageRef::Oci { dir } => format!("oci:{}:{tag}", dir.display()),
        }
    }

    /// The registry `host[:port]`, for `docker://` references.
    pub fn registry(&self) -> Option<&str> {
        match self {
            ImageRef::Docker { registry, .. } => Some(registry),
            ImageRef::Oci { .. } => None,
        }
    }

    /// The repository path, for `docker://` references.
    pub fn repository(&self) -> Option<&str> {
        match self {
            ImageRef::Docker { repository, .. } => Some(repository),
            ImageRef::Oci { .. } => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Docker {
                registry,
                repository,
            } => write!(f, "docker://{registry}/{repository}"),
            ImageRef::Oci { dir } => write!(f, "oci:{}", dir.display()),
        }
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ImageRefError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ImageRef> for String {
    fn from(image: ImageRef) -> String {
        image.to_string()
    }
}

const DOCKER_PREFIX: &str = "docker://";
const OCI_PREFIX: &str = "oci:";

fn span(start: usize, len: usize) -> SourceSpan {
    (start, len).into()
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = input.strip_prefix(DOCKER_PREFIX) {
            parse_docker(input, rest)
        } else if let Some(rest) = input.strip_prefix(OCI_PREFIX) {
            parse_oci(input, rest)
        } else if let Some((transport, _)) = input.split_once("://") {
            Err(ImageRefError::UnknownTransport {
                input: input.to_owned(),
                transport: format!("{transport}://"),
                span: span(0, transport.len() + 3),
            })
        } else {
            let hint = if let Some(rest) = input.strip_prefix("docker:") {
                format!("did you mean `docker://{}`? ", rest.trim_start_matches('/'))
            } else if input.contains('/') && !input.starts_with(['/', '.']) {
                format!("did you mean `docker://{input}`? ")
            } else {
                String::new()
            };
            Err(ImageRefError::MissingTransport {
                input: input.to_owned(),
                hint,
                span: span(0, 0),
            })
        }
    }
}

fn parse_oci(input: &str, dir: &str) -> Result<ImageRef, ImageRefError> {
    let base = OCI_PREFIX.len();
    if dir.is_empty() {
        return Err(ImageRefError::EmptyOciDir {
            input: input.to_owned(),
            span: span(base, 0),
        });
    }
    // skopeo splits `oci:DIR:REF` at the first colon after the transport, so
    // anything after a colon would be taken as a tag.
    if let Some(colon) = dir.find(':') {
        let tag = &dir[colon + 1..];
        if colon == 0 {
            return Err(ImageRefError::EmptyOciDir {
                input: input.to_owned(),
                span: span(base, 0),
            });
        }
        return Err(ImageRefError::TagNotAllowed {
            input: input.to_owned(),
            tag: tag.to_owned(),
            span: span(base + colon, dir.len() - colon),
        });
    }
    Ok(ImageRef::Oci {
        dir: PathBuf::from(dir),
    })
}

fn parse_docker(input: &str, rest: &str) -> Result<ImageRef, ImageRefError> {
    let base = DOCKER_PREFIX.len();

    // `NAME@ALGO:HEX`; other `@`s are rejected by the host/path grammar below.
    if let Some(at) = rest.find('@').filter(|&at| rest[at..].contains(':')) {
        return Err(ImageRefError::DigestNotAllowed {
            input: input.to_owned(),
            span: span(base + at, rest.len() - at),
        });
    }

    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(ImageRefError::EmptyHost {
            input: input.to_owned(),
            span: span(base, 0),
        });
    }
    if let Err(reason) = check_host(host) {
        return Err(ImageRefError::InvalidHost {
            input: input.to_owned(),
            host: host.to_owned(),
            reason,
            span: span(base, host.len()),
        });
    }
    let path_start = base + host.len() + 1;
    if path.is_empty() {
        return Err(ImageRefError::EmptyPath {
            input: input.to_owned(),
            span: span(path_start.min(input.len()), 0),
        });
    }

    // A colon in the last component is a tag (`PATH:TAG`).
    let last_start = path.rfind('/').map_or(0, |i| i + 1);
    if let Some(colon) = path[last_start..].find(':') {
        let colon = last_start + colon;
        return Err(ImageRefError::TagNotAllowed {
            input: input.to_owned(),
            tag: path[colon + 1..].to_owned(),
            span: span(path_start + colon, path.len() - colon),
        });
    }

    let mut offset = 0;
    for component in path.split('/') {
        let at = span(path_start + offset, component.len());
        if component.chars().any(|c| c.is_ascii_uppercase())
            && is_path_component(&component.to_ascii_lowercase())
        {
            return Err(ImageRefError::UppercaseRepository {
                input: input.to_owned(),
                component: component.to_owned(),
                span: at,
            });
        }
        if !is_path_component(component) {
            return Err(ImageRefError::InvalidComponent {
                input: input.to_owned(),
                component: component.to_owned(),
                span: at,
            });
        }
        offset += component.len() + 1;
    }

    let len = host.len() + 1 + path.len();
    if len > MAX_NAME_LEN {
        return Err(ImageRefError::NameTooLong {
            input: input.to_owned(),
            len,
        });
    }

    Ok(ImageRef::Docker {
        registry: host.to_owned(),
        repository: path.to_owned(),
    })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        // One or more alphanumerics.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Checks `host[:port]`; returns a reason on failure.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(bracketed) = host.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err("`[` without a closing `]`".to_owned());
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`{addr}` is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("unexpected text after `]`".to_owned()),
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };

    if let Some(name) = name {
        if name.is_empty() {
            return Err("the host name is empty".to_owned());
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!("`{label}` is not a valid host name part"));
            }
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(format!("`{port}` is not a port number (1-65535)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::Diagnostic;

    fn docker(registry: &str, repository: &str) -> ImageRef {
        ImageRef::Docker {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
        }
    }

    fn parse_err(s: &str) -> ImageRefError {
        match s.parse::<ImageRef>() {
            Ok(r) => panic!("`{s}` parsed as {r:?}, expected an error"),
            Err(e) => e,
        }
    }

    pub(super) fn tag(s: &str) -> Tag {
        Tag::parse(s).unwrap()
    }

    #[test]
    fn parses_docker_references() {
        for (input, registry, repository) in [
            (
                "docker://registry.example.org/infra/runners/nixos",
                "registry.example.org",
                "infra/runners/nixos",
            ),
            ("docker://localhost:5000/runner", "localhost:5000", "runner"),
            ("docker://127.0.0.1:34567/a/b", "127.0.0.1:34567", "a/b"),
            ("docker://[::1]:5000/x", "[::1]:5000", "x"),
            (
                "docker://Registry.Example.org/x",
                "Registry.Example.org",
                "x",
            ),
            (
                "docker://r.io/a.b/c_d/e__f/g--h/i-j-k/0x1",
                "r.io",
                "a.b/c_d/e__f/g--h/i-j-k/0x1",
            ),
        ] {
            let parsed: ImageRef = input.parse().unwrap();
            assert_eq!(parsed, docker(registry, repository), "{input}");
            assert_eq!(parsed.to_string(), input);
            assert_eq!(parsed.registry(), Some(registry));
            assert_eq!(parsed.repository(), Some(repository));
        }
    }

    #[test]
    fn errors_stay_small() {
        // Keeps `Result<_, E>` below clippy's `result_large_err` limit.
        assert!(std::mem::size_of::<ImageRefError>() <= 128);
        assert!(std::mem::size_of::<TagError>() <= 128);
    }

    #[test]
    fn parses_oci_references() {
        let parsed: ImageRef = "oci:./out/image".parse().unwrap();
        assert_eq!(
            parsed,
            ImageRef::Oci {
                dir: PathBuf::from("./out/image")
            }
        );
        assert_eq!(parsed.to_string(), "oci:./out/image");
        assert_eq!(parsed.registry(), None);
        assert_eq!(parsed.repository(), None);
        let abs: ImageRef = "oci:/var/lib/images/My Image".parse().unwrap();
        assert_eq!(abs.to_string(), "oci:/var/lib/images/My Image");
    }

    #[test]
    fn at_tag_gives_skopeo_transport_strings() {
        let t = tag("20260629");
        let d: ImageRef = "docker://localhost:5000/infra/runner".parse().unwrap();
        assert_eq!(
            d.at_tag(&t),
            "docker://localhost:5000/infra/runner:20260629"
        );
        let o: ImageRef = "oci:out/img".parse().unwrap();
        assert_eq!(o.at_tag(&tag("latest")), "oci:out/img:latest");
    }

    #[test]
    fn rejects_missing_or_unknown_transport() {
        match parse_err("registry.example.org/infra/runner") {
            ImageRefError::MissingTransport { hint, .. } => {
                assert!(
                    hint.contains("docker://registry.example.org/infra/runner"),
                    "{hint}"
                )
            }
            e => panic!("{e:?}"),
        }
        match parse_err("docker:registry.example.org/x") {
            ImageRefError::MissingTransport { hint, .. } => {
                assert!(hint.contains("docker://registry.example.org/x"), "{hint}")
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            parse_err(""),
            ImageRefError::MissingTransport { .. }
        ));
        match parse_err("https://registry.example.org/x") {
            ImageRefError::UnknownTransport {
                transport, span, ..
            } => {
                assert_eq!(transport, "https://");
                assert_eq!((span.offset(), span.len()), (0, 8));
            }
            e => panic!("{e:?}"),
        }
        // Help lists the accepted forms.
        let help = parse_err("foo").help().map(|h| h.to_string()).unwrap();
        assert!(help.contains("docker://HOST[:PORT]/PATH") && help.contains("oci:DIR"));
    }

    #[test]
    fn rejects_empty_host_or_path() {
        assert!(matches!(
            parse_err("docker://"),
            ImageRefError::EmptyHost { .. }
        ));
        assert!(matches!(
            parse_err("docker:///x"),
            ImageRefError::EmptyHost { .. }
        ));
        assert!(matches!(
            parse_err("docker://host"),
            ImageRefError::EmptyPath { .. }
        ));
        assert!(matches!(
            parse_err("docker://host/"),
            ImageRefError::EmptyPath { .. }
        ));
        assert!(matches!(
            parse_err("docker://localhost:5000"),
            ImageRefError::EmptyPath { .. }
        ));
    }

    #[test]
    fn rejects_invalid_hosts() {
        for input in [
            "docker://host:/x",
            "docker://host:99999/x",
            "docker://host:0/x",
            "docker://host:5a/x",
            "docker://-host/x",
            "docker://a..b/x",
            "docker://ho st/x",
            "docker://user@host/x",
            "docker://[::1/x",
            "docker://[zz]/x",
        ] {
            assert!(
                matches!(parse_err(input), ImageRefError::InvalidHost { .. }),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_tags_and_digests_in_reference() {
        match parse_err("docker://localhost:5000/infra/runner:latest") {
            ImageRefError::TagNotAllowed { tag, span, .. } => {
                assert_eq!(tag, "latest");
                assert_eq!(span.offset(), "docker://localhost:5000/infra/runner".len());
            }
            e => panic!("{e:?}"),
        }
        let e = parse_err("docker://r.io/x:1");
        assert!(e.help().unwrap().to_string().contains("--tag"));
        match parse_err("oci:out/img:latest") {
            ImageRefError::TagNotAllowed { tag, .. } => assert_eq!(tag, "latest"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            parse_err("docker://r.io/x@sha256:0123abcd"),
            ImageRefError::DigestNotAllowed { .. }
        ));
        assert!(matches!(
            parse_err("docker://r.io/x:tag@sha256:0123abcd"),
            ImageRefError::DigestNotAllowed { .. }
        ));
    }

    #[test]
    fn rejects_uppercase_and_invalid_components() {
        match parse_err("docker://r.io/infra/Runners") {
            ImageRefError::UppercaseRepository {
                component, span, ..
            } => {
                assert_eq!(component, "Runners");
                assert_eq!(
                    (span.offset(), span.len()),
                    ("docker://r.io/infra/".len(), 7)
                );
            }
            e => panic!("{e:?}"),
        }
        for input in [
            "docker://r.io/a//b",
            "docker://r.io/a/",
            "docker://r.io/-a",
            "docker://r.io/a-",
            "docker://r.io/.a",
            "docker://r.io/a.",
            "docker://r.io/a..b",
            "docker://r.io/a___b",
            "docker://r.io/a._b",
            "docker://r.io/_a",
            "docker://r.io/a b",
            "docker://r.io/a:b/c",
            "docker://r.io/é",
        ] {
            assert!(
                matches!(parse_err(input), ImageRefError::InvalidComponent { .. }),
                "{input}: {:?}",
                parse_err(input)
            );
        }
    }

    #[test]
    fn path_component_grammar() {
        for ok in [
            "a",
            "0",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a1.b2_c3__d4-e5",
        ] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", ".", "-", "_", "a_", "a__", "a___b", "a.-b", "A", "a/b"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_overlong_names() {
        let ok = format!("docker://r.io/{}", "a".repeat(MAX_NAME_LEN - 5));
        assert!(ok.parse::<ImageRef>().is_ok());
        let long = format!("docker://r.io/{}", "a".repeat(MAX_NAME_LEN - 4));
        assert!(matches!(
            parse_err(&long),
            ImageRefError::NameTooLong { len: 256, .. }
        ));
    }

    #[test]
    fn rejects_empty_oci_dir() {
        assert!(matches!(
            parse_err("oci:"),
            ImageRefError::EmptyOciDir { .. }
        ));
        assert!(matches!(
            parse_err("oci::tag"),
            ImageRefError::EmptyOciDir { .. }
        ));
    }

    #[test]
    fn image_ref_serde_round_trip() {
        let r: ImageRef = serde_json::from_str("\"docker://localhost:5000/a/b\"").unwrap();
        assert_eq!(r, docker("localhost:5000", "a/b"));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"docker://localhost:5000/a/b\""
        );
        assert!(serde_json::from_str::<ImageRef>("\"docker://r.io/A\"").is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn image_ref_parse_never_panics_and_round_trips(
                prefix in prop::sample::select(vec!["docker://", "oci:", "", "docker:", "x://"]),
                body in "[a-zA-Z0-9:/@._\\-\\[\\] é]{0,40}",
            ) {
                let input = format!("{prefix}{body}");
                if let Ok(parsed) = input.parse::<ImageRef>() {
                    let shown = parsed.to_string();
                    prop_assert_eq!(&shown, &input);
                    prop_assert_eq!(shown.parse::<ImageRef>(), Ok(parsed.clone()));
                    let tagged = parsed.at_tag(&Tag::parse("t").unwrap());
                    prop_assert_eq!(tagged, format!("{input}:t"));
                }
            }
        }
    }
}
