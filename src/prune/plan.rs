//! Which tags prune deletes and which it keeps, and why: a pure function of
//! the destination's tags, the digests they point to and the rules.
//!
//! Deleting is by digest (a registry's `DELETE /v2/<name>/manifests/<digest>`
//! removes every tag on that digest), so protection is by digest too: a
//! digest that any kept tag points to, or that a kept index references, is
//! never deleted, whatever other tags it carries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// What prune keeps.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Keep the newest `keep` date tags.
    pub keep: usize,
    /// Also keep date tags at most this many days old.
    pub keep_days: Option<u32>,
    /// Today (UTC), for `keep_days`.
    pub today: time::Date,
    /// Floating tags (`latest`, `unstable`, every `--tag` without `{date}`).
    pub floating: Vec<String>,
    /// The tag `release --hold` pushes (`candidate`).
    pub candidate: String,
}

/// How prune sees one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Floating,
    Candidate,
    /// Exactly `YYYYMMDD`, a real calendar date.
    Date(time::Date),
    /// `nix-<32 nix-base32 characters>`.
    Content,
    /// Anything else: never deleted.
    Other,
}

/// Nix's base-32 alphabet (no e, o, u, t).
const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// The date of a date tag (`YYYYMMDD`), if `tag` is one.
pub fn date_of(tag: &str) -> Option<time::Date> {
    if tag.len() != 8 || !tag.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = tag[..4].parse().ok()?;
    let month: u8 = tag[4..6].parse().ok()?;
    let day: u8 = tag[6..].parse().ok()?;
    let month = time::Month::try_from(month).ok()?;
    time::Date::from_calendar_date(year, month, day).ok()
}

/// Whether `tag` is a content tag, `nix-<hash>` (the store path's hash).
pub fn is_content_tag(tag: &str) -> bool {
    tag.strip_prefix("nix-")
        .is_some_and(|h| h.len() == 32 && h.chars().all(|c| NIX32.contains(c)))
}

impl Rules {
    pub fn kind(&self, tag: &str) -> Kind {
        if self.floating.iter().any(|f| f == tag) {
            Kind::Floating
        } else if tag == self.candidate {
            Kind::Candidate
        } else if let Some(date) = date_of(tag) {
            Kind::Date(date)
        } else if is_content_tag(tag) {
            Kind::Content
        } else {
            Kind::Other
        }
    }
}

/// A tag prune keeps, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub tag: String,
    pub digest: String,
    pub reason: String,
}

/// A digest prune deletes (with every tag on it), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub digest: String,
    pub tags: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub keeps: Vec<Keep>,
    pub deletes: Vec<Delete>,
}

/// Decide. `tags` are (tag, digest) pairs; an empty tag is an untagged
/// entry (an OCI layout's index may have those), which is kept.
/// `children(digest)` names the manifests an index references (empty for
/// an image manifest); it is asked only for digests that are kept.
pub fn plan<E>(
    tags: &[(String, String)],
    rules: &Rules,
    children: &mut dyn FnMut(&str) -> Result<Vec<String>, E>,
) -> Result<Plan, E> {
    // Date tags, newest first (the tag name breaks ties).
    let mut dated: Vec<(time::Date, &str)> = tags
        .iter()
        .filter_map(|(t, _)| match rules.kind(t) {
            Kind::Date(d) => Some((d, t.as_str())),
            _ => None,
        })
        .collect();
    dated.sort_by(|a, b| b.cmp(a));
    dated.dedup();
    let mut date_verdict: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for (i, (date, tag)) in dated.iter().enumerate() {
        let age = (rules.today - *date).whole_days();
        let verdict = if i < rules.keep {
            Some(format!("one of the newest {} date tags", rules.keep))
        } else {
            match rules.keep_days {
                Some(days) if age <= i64::from(days) => {
                    Some(format!("{age} days old, within --keep-days {days}"))
                }
                _ => None,
            }
        };
        date_verdict.insert(tag, verdict);
    }

    // The reason each tag keeps its digest, if it does.
    let own_reason = |tag: &str| -> Option<String> {
        match rules.kind(tag) {
            _ if tag.is_empty() => Some("an index entry without a tag name".into()),
            Kind::Floating => Some("floating tag".into()),
            Kind::Candidate => Some("candidate tag".into()),
            Kind::Date(_) => date_verdict.get(tag).cloned().flatten(),
            Kind::Content => None,
            Kind::Other => Some("not a date tag or a content tag".into()),
        }
    };

    // Digests protected, with the first reason found.
    let mut protected: BTreeMap<String, String> = BTreeMap::new();
    for (tag, digest) in tags {
        if own_reason(tag).is_some() && !protected.contains_key(digest) {
            let name = if tag.is_empty() { "(untagged)" } else { tag };
            protected.insert(digest.clone(), format!("kept tag {name} points to it"));
        }
    }
    // And whatever a kept index references, however deep.
    let mut queue: VecDeque<String> = protected.keys().cloned().collect();
    let mut asked = BTreeSet::new();
    while let Some(digest) = queue.pop_front() {
        if !asked.insert(digest.clone()) {
            continue;
        }
        for child in children(&digest)? {
            if !protected.contains_key(&child) {
                protected.insert(
                    child.clone(),
                    format!("the kept index {digest} references it"),
                );
                queue.push_back(child);
            }
        }
    }

    let mut plan = Plan::default();
    let mut deletes: BTreeMap<String, (Option<time::Date>, Vec<String>, String)> = BTreeMap::new();
    for (tag, digest) in tags {
        if let Some(reason) = own_reason(tag) {
            plan.keeps.push(Keep {
                tag: tag.clone(),
                digest: digest.clone(),
                reason,
            });
            continue;
        }
        if let Some(why) = protected.get(digest) {
            plan.keeps.push(Keep {
                tag: tag.clone(),
                digest: digest.clone(),
                reason: format!("its digest is kept: {why}"),
            });
            continue;
        }
        let kind = rules.kind(tag);
        let reason = match kind {
            Kind::Date(date) => {
                let age = (rules.today - date).whole_days();
                match rules.keep_days {
                    Some(days) => format!(
                        "date tag beyond the newest {} and {age} days old (over --keep-days {days})",
                        rules.keep
                    ),
                    None => format!("date tag beyond the newest {}", rules.keep),
                }
            }
            _ => "content tag whose image no kept tag points to".into(),
        };
        let entry = deletes
            .entry(digest.clone())
            .or_insert((None, Vec::new(), String::new()));
        entry.1.push(tag.clone());
        if let Kind::Date(date) = kind {
            if entry.0.is_none_or(|d| date < d) {
                entry.0 = Some(date);
            }
            entry.2 = reason;
        } else if entry.2.is_empty() {
            entry.2 = reason;
        }
    }
    let mut deletes: Vec<_> = deletes.into_iter().collect();
    // Oldest first; digests with only a content tag last.
    deletes.sort_by(|a, b| {
        let key = |d: &Option<time::Date>| (d.is_none(), *d);
        key(&a.1 .0).cmp(&key(&b.1 .0)).then(a.0.cmp(&b.0))
    });
    plan.deletes = deletes
        .into_iter()
        .map(|(digest, (_, mut tags, reason))| {
            tags.sort();
            Delete {
                digest,
                tags,
                reason,
            }
        })
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "nix-0c5xw4d7hrq3j3a4r9r4brrv3ia4p1b6";
    const H2: &str = "nix-1c5xw4d7hrq3j3a4r9r4brrv3ia4p1b6";
    const H3: &str = "nix-2c5xw4d7hrq3j3a4r9r4brrv3ia4p1b6";

    fn rules(keep: usize, keep_days: Option<u32>) -> Rules {
        Rules {
            keep,
            keep_days,
            today: time::macros::date!(2026 - 07 - 10),
            floating: vec!["latest".into(), "unstable".into()],
            candidate: "candidate".into(),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(t, d)| (t.to_string(), d.to_string()))
            .collect()
    }

    fn none(_: &str) -> Result<Vec<String>, ()> {
        Ok(Vec::new())
    }

    fn deleted(plan: &Plan) -> Vec<&str> {
        plan.deletes.iter().map(|d| d.digest.as_str()).collect()
    }

    #[test]
    fn kinds() {
        let r = rules(1, None);
        assert_eq!(r.kind("latest"), Kind::Floating);
        assert_eq!(r.kind("candidate"), Kind::Candidate);
        assert!(matches!(r.kind("20260229"), Kind::Other), "not a leap year");
        assert!(matches!(r.kind("20240229"), Kind::Date(_)));
        assert_eq!(r.kind("2026070"), Kind::Other);
        assert_eq!(r.kind(H1), Kind::Content);
        assert_eq!(r.kind("nix-short"), Kind::Other);
        assert_eq!(
            r.kind("nix-ec5xw4d7hrq3j3a4r9r4brrv3ia4p1b6"),
            Kind::Other,
            "e is not nix32"
        );
        assert_eq!(r.kind("rolled-back"), Kind::Other);
    }

    #[test]
    fn keeps_the_newest_dates_and_what_floating_tags_point_to() {
        let tags = pairs(&[
            ("20260701", "sha256:a"),
            (H1, "sha256:a"),
            ("20260702", "sha256:b"),
            (H2, "sha256:b"),
            ("20260703", "sha256:c"),
            (H3, "sha256:c"),
            ("20260704", "sha256:d"),
            ("latest", "sha256:d"),
            ("unstable", "sha256:d"),
            ("rolled-back", "sha256:zz"),
        ]);
        let plan = plan(&tags, &rules(1, None), &mut none).unwrap();
        assert_eq!(deleted(&plan), vec!["sha256:a", "sha256:b", "sha256:c"]);
        assert_eq!(
            plan.deletes[0].tags,
            vec!["20260701".to_string(), H1.to_string()]
        );
        assert_eq!(plan.deletes[0].reason, "date tag beyond the newest 1");
        assert!(plan.keeps.iter().any(|k| k.tag == "rolled-back"));

        // latest rolled back to the oldest: that digest stays, with both tags.
        let mut tags = tags;
        tags[7].1 = "sha256:a".into();
        let plan = super::plan(&tags, &rules(1, None), &mut none).unwrap();
        assert_eq!(deleted(&plan), vec!["sha256:b", "sha256:c"]);
        let h1 = plan.keeps.iter().find(|k| k.tag == H1).unwrap();
        assert!(h1.reason.contains("kept tag"), "{h1:?}");
    }

    #[test]
    fn keep_days_keeps_what_either_rule_keeps() {
        let tags = pairs(&[
            ("20260601", "sha256:a"),
            ("20260705", "sha256:b"),
            ("20260708", "sha256:c"),
        ]);
        let plan = plan(&tags, &rules(1, Some(7)), &mut none).unwrap();
        assert_eq!(deleted(&plan), vec!["sha256:a"]);
        assert!(
            plan.deletes[0].reason.contains("39 days old"),
            "{:?}",
            plan.deletes
        );
        let b = plan.keeps.iter().find(|k| k.tag == "20260705").unwrap();
        assert!(b.reason.contains("5 days old"), "{b:?}");
    }

    #[test]
    fn a_content_tag_alone_goes_and_one_shared_with_a_kept_tag_stays() {
        let tags = pairs(&[
            (H1, "sha256:orphan"),
            (H2, "sha256:held"),
            ("candidate", "sha256:held"),
        ]);
        let plan = plan(&tags, &rules(3, None), &mut none).unwrap();
        assert_eq!(deleted(&plan), vec!["sha256:orphan"]);
        assert_eq!(
            plan.deletes[0].reason,
            "content tag whose image no kept tag points to"
        );
    }

    #[test]
    fn manifests_of_a_kept_index_are_protected() {
        // An old date tag points at one architecture's manifest, which the
        // index under latest references.
        let tags = pairs(&[
            ("20260101", "sha256:amd64"),
            ("20260102", "sha256:old"),
            ("20260709", "sha256:index"),
            ("latest", "sha256:index"),
        ]);
        let mut children = |d: &str| -> Result<Vec<String>, ()> {
            Ok(if d == "sha256:index" {
                vec!["sha256:amd64".into(), "sha256:arm64".into()]
            } else {
                Vec::new()
            })
        };
        let plan = plan(&tags, &rules(1, None), &mut children).unwrap();
        assert_eq!(deleted(&plan), vec!["sha256:old"]);
        let kept = plan.keeps.iter().find(|k| k.tag == "20260101").unwrap();
        assert!(kept.reason.contains("index sha256:index"), "{kept:?}");
    }

    #[test]
    fn errors_from_children_stop_the_plan() {
        let tags = pairs(&[("latest", "sha256:a")]);
        let mut failing = |_: &str| -> Result<Vec<String>, &str> { Err("down") };
        assert_eq!(plan(&tags, &rules(1, None), &mut failing), Err("down"));
    }
}
