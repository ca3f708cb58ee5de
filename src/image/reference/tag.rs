//! Image tags and the tag templates they are expanded from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{TagError, TagProblem};

/// Tag templates used when none are configured.
pub const DEFAULT_TAGS: &[&str] = &["latest", "unstable", "{date}"];

/// Placeholders a [`TagTemplate`] may contain.
pub const KNOWN_PLACEHOLDERS: &[&str] = &["date"];

/// Longest tag allowed by the OCI distribution specification.
pub const MAX_TAG_LEN: usize = 128;

fn check_tag(s: &str) -> Result<(), TagProblem> {
    let mut chars = s.chars();
    let first = chars.next().ok_or(TagProblem::Empty)?;
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(TagProblem::BadFirst(first));
    }
    for (index, ch) in s.chars().enumerate().skip(1) {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')) {
            return Err(TagProblem::BadChar { ch, index });
        }
    }
    // All characters are ASCII now, so bytes == characters.
    if s.len() > MAX_TAG_LEN {
        return Err(TagProblem::TooLong(s.len()));
    }
    Ok(())
}

/// A valid image tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, TagError> {
        check_tag(s).map_err(|problem| TagError::Invalid {
            tag: s.to_owned(),
            problem,
        })?;
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tag::parse(s)
    }
}

impl TryFrom<String> for Tag {
    type Error = TagError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        check_tag(&s).map_err(|problem| TagError::Invalid {
            tag: s.clone(),
            problem,
        })?;
        Ok(Tag(s))
    }
}

impl From<Tag> for String {
    fn from(tag: Tag) -> String {
        tag.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag with optional placeholders, e.g. `{date}` or `nightly-{date}`.
///
/// [`TagTemplate::new`] accepts any string; problems are reported by
/// [`TagTemplate::expand`]. Parsing with [`FromStr`] also checks the template
/// up front by expanding it with a sample date.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagTemplate(String);

/// Sample value used to check templates when parsing them.
const SAMPLE_DATE: &str = "19700101";

impl TagTemplate {
    pub fn new(template: impl Into<String>) -> TagTemplate {
        TagTemplate(template.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the template contains `{date}`.
    pub fn needs_date(&self) -> bool {
        self.0.contains("{date}")
    }

    /// Replaces `{date}` with `date` and validates the result as a [`Tag`].
    pub fn expand(&self, date: &str) -> Result<Tag, TagError> {
        let template = &self.0;
        let mut out = String::with_capacity(template.len() + date.len());
        let mut rest = template.as_str();
        let mut offset = 0;
        while let Some(i) = rest.find(['{', '}']) {
            if rest[i..].starts_with('}') {
                return Err(TagError::UnmatchedBrace {
                    template: template.clone(),
                    brace: '}',
                    span: (offset + i, 1).into(),
                });
            }
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let Some(close) = after
                .find(['{', '}'])
                .filter(|&j| after[j..].starts_with('}'))
            else {
                return Err(TagError::UnmatchedBrace {
                    template: template.clone(),
                    brace: '{',
                    span: (offset + i, 1).into(),
                });
            };
            let name = &after[..close];
            if name == "date" {
                out.push_str(date);
            } else {
                return Err(TagError::UnknownPlaceholder {
                    template: template.clone(),
                    placeholder: name.to_owned(),
                    known: KNOWN_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    span: (offset + i, close + 2).into(),
                });
            }
            let consumed = i + 1 + close + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        out.push_str(rest);

        check_tag(&out).map_err(|problem| TagError::InvalidExpansion {
            template: template.clone(),
            tag: out.clone(),
            problem,
        })?;
        Ok(Tag(out))
    }

    /// The [`DEFAULT_TAGS`] as templates.
    pub fn defaults() -> Vec<TagTemplate> {
        DEFAULT_TAGS.iter().map(|t| TagTemplate::new(*t)).collect()
    }
}

impl FromStr for TagTemplate {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let template = TagTemplate::new(s);
        template.expand(SAMPLE_DATE)?;
        Ok(template)
    }
}

impl fmt::Display for TagTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::tests::tag;
    use miette::Diagnostic;

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "20260629", "_x", "v1.2.3-rc_1", "A", "0"] {
            assert_eq!(tag(ok).as_str(), ok);
            assert_eq!(ok.parse::<Tag>().unwrap().to_string(), ok);
        }
        let cases = [
            ("", TagProblem::Empty),
            (".hidden", TagProblem::BadFirst('.')),
            ("-x", TagProblem::BadFirst('-')),
            ("a/b", TagProblem::BadChar { ch: '/', index: 1 }),
            ("a:b", TagProblem::BadChar { ch: ':', index: 1 }),
            ("ab{", TagProblem::BadChar { ch: '{', index: 2 }),
            ("aé", TagProblem::BadChar { ch: 'é', index: 1 }),
        ];
        for (input, problem) in cases {
            assert_eq!(
                Tag::parse(input),
                Err(TagError::Invalid {
                    tag: input.to_owned(),
                    problem
                })
            );
        }
    }

    #[test]
    fn tag_length_boundary() {
        let max = "a".repeat(128);
        assert_eq!(tag(&max).as_str().len(), 128);
        let over = "a".repeat(129);
        assert!(matches!(
            Tag::parse(&over),
            Err(TagError::Invalid {
                problem: TagProblem::TooLong(129),
                ..
            })
        ));
    }

    #[test]
    fn tag_serde() {
        let t: Tag = serde_json::from_str("\"latest\"").unwrap();
        assert_eq!(t, tag("latest"));
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"latest\"");
        assert!(serde_json::from_str::<Tag>("\".x\"").is_err());
    }

    #[test]
    fn template_expansion() {
        let t = TagTemplate::new("{date}");
        assert!(t.needs_date());
        assert_eq!(t.expand("20260629").unwrap().as_str(), "20260629");
        let t = TagTemplate::new("nightly-{date}-{date}");
        assert_eq!(
            t.expand("20260629").unwrap().as_str(),
            "nightly-20260629-20260629"
        );
        let t = TagTemplate::new("latest");
        assert!(!t.needs_date());
        assert_eq!(t.expand("ignored").unwrap().as_str(), "latest");
        let defaults: Vec<String> = TagTemplate::defaults()
            .iter()
            .map(|t| t.expand("20260629").unwrap().to_string())
            .collect();
        assert_eq!(defaults, ["latest", "unstable", "20260629"]);
    }

    #[test]
    fn template_unknown_placeholder() {
        let err = TagTemplate::new("v-{version}")
            .expand("20260629")
            .unwrap_err();
        match &err {
            TagError::UnknownPlaceholder {
                placeholder,
                known,
                span,
                ..
            } => {
                assert_eq!(placeholder, "version");
                assert_eq!(known, "{date}");
                assert_eq!((span.offset(), span.len()), (2, 9));
            }
            e => panic!("{e:?}"),
        }
        assert!(err.to_string().contains("`{version}`"), "{err}");
        assert!(err.help().unwrap().to_string().contains("{date}"));
    }

    #[test]
    fn template_unmatched_braces() {
        for (template, brace, offset) in [("a{date", '{', 1), ("a}b", '}', 1), ("{x{date}", '{', 0)]
        {
            match TagTemplate::new(template).expand("d") {
                Err(TagError::UnmatchedBrace { brace: b, span, .. }) => {
                    assert_eq!((b, span.offset()), (brace, offset), "{template}")
                }
                other => panic!("{template}: {other:?}"),
            }
        }
    }

    #[test]
    fn template_invalid_expansion_names_template_and_tag() {
        let err = TagTemplate::new("{date}").expand("-2026").unwrap_err();
        assert_eq!(
            err,
            TagError::InvalidExpansion {
                template: "{date}".to_owned(),
                tag: "-2026".to_owned(),
                problem: TagProblem::BadFirst('-'),
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("`{date}`") && msg.contains("`-2026`"), "{msg}");
        let help = err.help().unwrap().to_string();
        assert!(help.contains("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"), "{help}");

        let long = TagTemplate::new(format!("{}{{date}}", "x".repeat(120)));
        assert!(long.expand("12345678").is_ok());
        assert!(matches!(
            long.expand("123456789"),
            Err(TagError::InvalidExpansion {
                problem: TagProblem::TooLong(129),
                ..
            })
        ));
    }

    #[test]
    fn template_from_str_validates_up_front() {
        assert!("{date}".parse::<TagTemplate>().is_ok());
        assert!("latest".parse::<TagTemplate>().is_ok());
        assert!(matches!(
            "{commit}".parse::<TagTemplate>(),
            Err(TagError::UnknownPlaceholder { .. })
        ));
        assert!(matches!(
            ".{date}".parse::<TagTemplate>(),
            Err(TagError::InvalidExpansion { .. })
        ));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn valid_tags_are_accepted(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
                prop_assert_eq!(Tag::parse(&s).map(|t| t.as_str().to_owned()), Ok(s));
            }

            #[test]
            fn tag_parse_matches_grammar(s in "\\PC{0,3}[a-zA-Z0-9._/:-]{0,130}") {
                let b = s.as_bytes();
                let grammar = !b.is_empty()
                    && b.len() <= 128
                    && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                    && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
                prop_assert_eq!(Tag::parse(&s).is_ok(), grammar);
            }

            #[test]
            fn template_expand_never_panics(t in "[a-z{}.é-]{0,20}", d in "[0-9a-z{}]{0,10}") {
                let _ = TagTemplate::new(t).expand(&d);
            }
        }
    }
}
