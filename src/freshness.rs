//! `runnerctl status --max-age DAYS`: how old the published image is, and
//! an alarm (exit 1) when it is older than DAYS, so a scheduled bump that
//! stopped working, or keeps finding nothing, does not go unnoticed.
//!
//! With `--image`, the date is read from what is published: the config of
//! the image under the floating tag, its `org.opencontainers.image.created`
//! label or else its `created`. Without, it is the date tag of the last
//! push recorded in the state.

use miette::Diagnostic;
use serde::Serialize;
use thiserror::Error;

use crate::auth::Credentials;
use crate::cli::StatusArgs;
use crate::image::destination::{self, Access, Destination};
use crate::image::reference::ImageRef;
use crate::prune::plan::date_of;
use crate::state::State;

pub const CREATED_LABEL: &str = "org.opencontainers.image.created";

/// Where the date came from, and how old it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The floating tag looked at (with --image), or the date tag (without).
    pub tag: String,
    /// YYYY-MM-DD
    pub date: String,
    pub age_days: i64,
    pub max_age: u32,
    pub fresh: bool,
    /// `label org.opencontainers.image.created`, `config created` or
    /// `state: date tag of the last push`.
    pub source: String,
    /// The image read, with --image.
    pub image: Option<String>,
    pub message: String,
}

#[derive(Debug, Error, Diagnostic)]
pub enum FreshnessError {
    #[error("{message}")]
    #[diagnostic(
        code(runnerctl::status::stale),
        help("no newer image was published: look at the scheduled bump's recent runs (one that fails, or keeps finding nothing new upstream, leaves the image to age), fix what stops it, then run `runnerctl bump` (or start the bump workflow by hand)")
    )]
    Stale { message: String },

    #[error("{image} has no `{tag}` tag to check the age of")]
    #[diagnostic(
        code(runnerctl::status::no_image),
        help("pass the floating tag users run with --tag, or check --image")
    )]
    NoImage { image: String, tag: String },

    #[error("the image under {image}:{tag} says nothing about when it was built: {reason}")]
    #[diagnostic(
        code(runnerctl::status::no_date),
        help("its config needs a `created` date (or the label org.opencontainers.image.created); leave out --image to use the date tag of the last push recorded in the state")
    )]
    NoDate {
        image: String,
        tag: String,
        reason: String,
    },

    #[error("no successful push is recorded in {state_file}, so there is no date to check")]
    #[diagnostic(
        code(runnerctl::status::no_push),
        help("pass --image docker://HOST/PATH to read the date from the published image, or run `runnerctl bump` first")
    )]
    NoPush { state_file: String },
}

/// `YYYY-MM-DD…` (an RFC 3339 time, or a bare date) → the date.
pub fn parse_created(text: &str) -> Option<time::Date> {
    let day = text.get(..10)?;
    let compact: String = day.split('-').collect();
    (day.as_bytes().get(4) == Some(&b'-') && day.as_bytes().get(7) == Some(&b'-'))
        .then(|| date_of(&compact))
        .flatten()
}

fn iso(date: time::Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The date an image config gives: the created label, else `created`.
pub fn config_date(config: &[u8]) -> Result<(time::Date, &'static str), String> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("its config is not JSON ({e})"))?;
    let label = value
        .get("config")
        .and_then(|c| c.get("Labels"))
        .and_then(|l| l.get(CREATED_LABEL))
        .and_then(|v| v.as_str());
    if let Some(date) = label.and_then(parse_created) {
        return Ok((date, "label org.opencontainers.image.created"));
    }
    match value.get("created").and_then(|v| v.as_str()) {
        Some(text) => parse_created(text)
            .map(|d| (d, "config created"))
            .ok_or_else(|| {
                format!(
                    "its config's created `{}` is not a date",
                    crate::diagnostic::bound(text, 60)
                )
            }),
        None => Err(
            "its config has neither the label org.opencontainers.image.created nor `created`"
                .into(),
        ),
    }
}

/// The date tag of the last push recorded in the state, if any.
pub fn last_pushed_date(state: &State) -> Option<(String, time::Date)> {
    state
        .images
        .values()
        .filter_map(|r| {
            let tag = r.tags.iter().find(|t| date_of(t).is_some())?;
            Some((r.pushed_at.clone(), tag.clone()))
        })
        .max()
        .map(|(_, tag)| tag)
        .and_then(|tag| date_of(&tag).map(|d| (tag, d)))
}

/// The config of the image at `tag`; for an index, of its first manifest.
fn config_of(destination: &Destination, tag: &str) -> miette::Result<Option<Vec<u8>>> {
    match destination.manifest(tag)? {
        Some(manifest) => destination.config(&manifest),
        None => Ok(None),
    }
}

/// Check the age. `Ok` with `fresh: false` when it is too old: the caller
/// reports that ([`stale_error`]) after printing the document.
pub fn check(
    args: &StatusArgs,
    max_age: u32,
    state: &State,
    state_file: &str,
) -> miette::Result<Freshness> {
    let tag = args.tag.clone().unwrap_or_else(|| "latest".into());
    let today = time::OffsetDateTime::now_utc().date();
    let (shown_tag, date, source, image) = match &args.image {
        Some(text) => {
            let image = text.parse::<ImageRef>()?;
            let credentials = Credentials::from_env()?;
            let connected = destination::connect(
                &image,
                &Access {
                    credentials: &credentials,
                    tls_verify: args.tls_verify,
                    timeout: std::time::Duration::from_secs(args.registry_timeout),
                },
            )?;
            let config = config_of(&connected.destination, &tag)?.ok_or_else(|| {
                FreshnessError::NoImage {
                    image: image.to_string(),
                    tag: tag.clone(),
                }
            })?;
            let (date, source) = config_date(&config).map_err(|reason| FreshnessError::NoDate {
                image: image.to_string(),
                tag: tag.clone(),
                reason,
            })?;
            (tag, date, source.to_string(), Some(image.to_string()))
        }
        None => {
            let (date_tag, date) =
                last_pushed_date(state).ok_or_else(|| FreshnessError::NoPush {
                    state_file: state_file.to_string(),
                })?;
            (
                date_tag,
                date,
                "state: date tag of the last push".to_string(),
                None,
            )
        }
    };
    let age_days = (today - date).whole_days();
    let message = format!(
        "{shown_tag} was built from {} of {}, {age_days} days ago (limit {max_age})",
        args.input,
        iso(date)
    );
    Ok(Freshness {
        tag: shown_tag,
        date: iso(date),
        age_days,
        max_age,
        fresh: age_days <= i64::from(max_age),
        source,
        image,
        message,
    })
}

pub fn stale_error(f: &Freshness) -> miette::Report {
    FreshnessError::Stale {
        message: f.message.clone(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_configs() {
        let d = |y, m, day| {
            time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), day).unwrap()
        };
        assert_eq!(parse_created("2026-06-29T00:00:00Z"), Some(d(2026, 6, 29)));
        assert_eq!(parse_created("2026-06-29"), Some(d(2026, 6, 29)));
        assert_eq!(parse_created("20260629"), None);
        assert_eq!(parse_created("1970-01-01T00:00:01Z"), Some(d(1970, 1, 1)));
        let labelled = br#"{"created":"2020-01-01T00:00:00Z","config":{"Labels":{"org.opencontainers.image.created":"2026-06-29T10:00:00Z"}}}"#;
        assert_eq!(
            config_date(labelled),
            Ok((d(2026, 6, 29), "label org.opencontainers.image.created"))
        );
        assert_eq!(
            config_date(br#"{"created":"2020-01-02T00:00:00Z"}"#),
            Ok((d(2020, 1, 2), "config created"))
        );
        assert!(config_date(br#"{"architecture":"amd64"}"#).is_err());
        assert!(config_date(br#"{"created":"yesterday"}"#).is_err());
    }

    #[test]
    fn the_last_push_gives_the_date() {
        let mut state = State::default();
        assert_eq!(last_pushed_date(&state), None);
        for (out, at, tag) in [
            ("/a", "2026-07-01T00:00:00Z", "20260630"),
            ("/b", "2026-07-08T00:00:00Z", "20260707"),
        ] {
            state.images.insert(
                out.into(),
                crate::state::ImageRecord {
                    image: "oci:x".into(),
                    digest: "sha256:x".into(),
                    tags: vec!["latest".into(), tag.into()],
                    pushed_at: at.into(),
                },
            );
        }
        assert_eq!(
            last_pushed_date(&state).map(|(t, _)| t),
            Some("20260707".into())
        );
    }
}
