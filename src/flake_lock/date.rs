//! The date tag of a lock entry, and the differences between two lock files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{FlakeLock, LockedInput};

/// Last second representable as a four-digit year: 9999-12-31T23:59:59Z.
pub(super) const MAX_DATE_SECS: i64 = 253_402_300_799;

/// The UTC calendar date of `secs`, clamped to 1970-01-01 ..= 9999-12-31.
fn utc_date(secs: i64) -> time::Date {
    let secs = secs.clamp(0, MAX_DATE_SECS);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_or(time::macros::date!(1970 - 01 - 01), |t| t.date())
}

/// A `YYYYMMDD` date used as an image tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DateTag(String);

impl DateTag {
    /// The UTC date of `secs` (seconds since the Unix epoch) as `YYYYMMDD`.
    ///
    /// Times outside 1970-01-01 ..= 9999-12-31 are clamped to that range, so
    /// the result is always exactly eight digits (and a valid image tag).
    pub fn from_unix(secs: i64) -> DateTag {
        let d = utc_date(secs);
        DateTag(format!(
            "{:04}{:02}{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DateTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The UTC date of `secs` as `YYYY-MM-DD`, for messages. Clamped like
/// [`DateTag::from_unix`].
pub fn format_day(secs: i64) -> String {
    let d = utc_date(secs);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A root input that differs between two lock files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChange {
    pub input: String,
    /// `None` if the input was added.
    pub old: Option<LockedInput>,
    /// `None` if the input was removed.
    pub new: Option<LockedInput>,
}

/// Root inputs that were added, removed, or whose (rev, narHash,
/// lastModified) changed between `old` and `new`, sorted by name.
pub fn diff_inputs(old: &FlakeLock, new: &FlakeLock) -> Vec<InputChange> {
    fn by_name(lock: &FlakeLock) -> BTreeMap<String, LockedInput> {
        lock.root_inputs()
            .into_iter()
            .map(|i| (i.input.clone(), i))
            .collect()
    }
    let mut old = by_name(old);
    let mut new = by_name(new);
    let names: BTreeSet<String> = old.keys().chain(new.keys()).cloned().collect();

    names
        .into_iter()
        .filter_map(|name| {
            let o = old.remove(&name);
            let n = new.remove(&name);
            let same = match (&o, &n) {
                (Some(a), Some(b)) => {
                    a.rev == b.rev && a.nar_hash == b.nar_hash && a.last_modified == b.last_modified
                }
                _ => false,
            };
            (!same).then_some(InputChange {
                input: name,
                old: o,
                new: n,
            })
        })
        .collect()
}

/// Short description of a locked input: 12-char rev (or narHash) and day.
fn describe(input: &LockedInput) -> String {
    let id = match (&input.rev, &input.nar_hash) {
        (Some(rev), _) => rev.chars().take(12).collect(),
        (None, Some(hash)) => match hash.split_once('-') {
            Some((algo, digest)) => {
                format!("{algo}-{}", digest.chars().take(12).collect::<String>())
            }
            None => hash.chars().take(12).collect(),
        },
        (None, None) => "unknown".to_owned(),
    };
    match input.last_modified {
        Some(secs) => format!("{id} ({})", format_day(secs)),
        None => id,
    }
}

impl InputChange {
    /// One line for humans, e.g.
    /// `nixpkgs: b5aa0fbd5389 (2026-06-29) → 0123456789ab (2026-07-05)`.
    pub fn render(&self) -> String {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => {
                format!("{}: {} → {}", self.input, describe(old), describe(new))
            }
            (None, Some(new)) => format!("{}: added, {}", self.input, describe(new)),
            (Some(old), None) => format!("{}: removed, was {}", self.input, describe(old)),
            (None, None) => format!("{}: unchanged", self.input),
        }
    }
}

impl fmt::Display for InputChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake_lock::fixtures::*;
    use crate::flake_lock::parse;
    use serde_json::json;

    #[test]
    fn date_tags() {
        assert_eq!(DateTag::from_unix(NIXPKGS_DATE).as_str(), "20260629");
        assert_eq!(DateTag::from_unix(0).to_string(), "19700101");
        assert_eq!(DateTag::from_unix(1_782_691_199).as_str(), "20260628");
        assert_eq!(DateTag::from_unix(1_782_691_200).as_str(), "20260629");
        assert_eq!(DateTag::from_unix(951_782_400).as_str(), "20000229");
        assert_eq!(DateTag::from_unix(951_782_399).as_str(), "20000228");
        // Clamped to four-digit years after the epoch.
        assert_eq!(DateTag::from_unix(-1).as_str(), "19700101");
        assert_eq!(DateTag::from_unix(i64::MIN).as_str(), "19700101");
        assert_eq!(DateTag::from_unix(MAX_DATE_SECS).as_str(), "99991231");
        assert_eq!(DateTag::from_unix(i64::MAX).as_str(), "99991231");
        assert_eq!(format_day(NIXPKGS_DATE), "2026-06-29");
        assert_eq!(format_day(1_782_691_199), "2026-06-28");
        assert_eq!(format_day(i64::MAX), "9999-12-31");
    }

    fn with_nixpkgs(rev: &str, last_modified: i64, hash: &str) -> FlakeLock {
        let mut value: serde_json::Value = serde_json::from_str(REALISTIC).unwrap();
        value["nodes"]["nixpkgs"] = github(rev, last_modified, hash);
        lock_from(value)
    }

    #[test]
    fn diff_reports_changed_inputs_only() {
        let old = parse(REALISTIC, path()).unwrap();
        assert!(diff_inputs(&old, &old).is_empty());

        let new = with_nixpkgs(
            "0123456789abcdef0123456789abcdef01234567",
            1_783_209_600,
            "sha256-new=",
        );
        let changes = diff_inputs(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].input, "nixpkgs");
        assert_eq!(
            changes[0].render(),
            "nixpkgs: b5aa0fbd5389 (2026-06-29) → 0123456789ab (2026-07-05)"
        );
        assert_eq!(changes[0].to_string(), changes[0].render());

        // Same rev and date but a different narHash still counts.
        let rehashed = with_nixpkgs(NIXPKGS_REV, NIXPKGS_DATE, "sha256-other=");
        assert_eq!(diff_inputs(&old, &rehashed).len(), 1);
    }

    #[test]
    fn diff_reports_added_and_removed_inputs_sorted() {
        let old = parse(REALISTIC, path()).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(REALISTIC).unwrap();
        let root_inputs = value["nodes"]["root"]["inputs"].as_object_mut().unwrap();
        root_inputs.remove("flake-utils");
        root_inputs.insert("systems".into(), json!("systems"));
        let new = lock_from(value);

        let changes = diff_inputs(&old, &new);
        let rendered: Vec<String> = changes.iter().map(InputChange::render).collect();
        assert_eq!(
            rendered,
            [
                "flake-utils: removed, was 11707dc2f618 (2024-11-13)",
                "systems: added, da67096a3b9b (2023-04-09)",
            ]
        );
        assert!(changes[0].new.is_none() && changes[1].old.is_none());
    }

    #[test]
    fn render_falls_back_to_nar_hash() {
        let change = InputChange {
            input: "secrets".into(),
            old: Some(LockedInput {
                input: "secrets".into(),
                node: "secrets".into(),
                rev: None,
                last_modified: None,
                nar_hash: Some("sha256-Dq4Lc4VhsNHYuP4NOP0PzSWsjvqwO3RRSGJIXcFVwLc=".into()),
            }),
            new: Some(LockedInput {
                input: "secrets".into(),
                node: "secrets".into(),
                rev: None,
                last_modified: Some(0),
                nar_hash: None,
            }),
        };
        assert_eq!(
            change.render(),
            "secrets: sha256-Dq4Lc4VhsNHY → unknown (1970-01-01)"
        );
    }
}
