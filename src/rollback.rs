//! `runnerctl rollback TARGET`: point floating tags back at an image the
//! destination already holds. No flake is needed: the destination and its
//! login are enough. Every move is a manifest PUT of the target's own
//! bytes (no re-push, no recompression). The destination's `rolled-back`
//! tag marks the target, so a later `release` without `--hold` leaves the
//! rolled-back tags where they are (see `stage::push`), and the state
//! records the rollback for `runnerctl status`.

use std::time::Instant;

use miette::Diagnostic;
use thiserror::Error;

use crate::cli::RollbackArgs;
use crate::image::destination::{self, describe_moves, Destination, Manifest, TagMove};
use crate::image::reference::Tag;
use crate::report::{Outcome, Report, StageReport};
use crate::state::Command;
use crate::state::{self, StageStatus};

/// The tag `runnerctl rollback` leaves on the image it rolled back to.
pub const ROLLED_BACK: &str = "rolled-back";

/// Of the floating tags `items`, those a rollback holds: the ones that
/// still point where the `rolled-back` marker points. A release without
/// --hold leaves them; `runnerctl promote` moves them.
pub fn held<'a, T: Clone + 'a>(
    marker: Option<&str>,
    items: impl IntoIterator<Item = &'a T>,
    digest: impl Fn(&'a T) -> Option<&'a str>,
) -> Vec<T> {
    let Some(marker) = marker else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter(|i| digest(i) == Some(marker))
        .cloned()
        .collect()
}

/// "is"/"it" for one tag, "are"/"them" for more.
pub fn agreement(tags: usize) -> (&'static str, &'static str) {
    if tags == 1 {
        ("is", "it")
    } else {
        ("are", "them")
    }
}

/// The warning a release prints when it leaves rolled-back tags.
pub fn held_warning(names: &[String], digest: &str) -> String {
    let (are, them) = agreement(names.len());
    format!(
        "{} {are} rolled back to {digest} (by `runnerctl rollback`), so this run leaves {them} there; \
         run `runnerctl promote` to move {them} to this image",
        names.join(", ")
    )
}

#[derive(Debug, Error, Diagnostic)]
pub enum RollbackError {
    #[error("`{target}` is not at {image}: no tag or manifest by that name")]
    #[diagnostic(
        code(runnerctl::rollback::unknown_target),
        help("nothing was changed. Name a tag the destination has (a date tag such as 20260629, or nix-<hash>) or a sha256: digest of a manifest in the repository; `skopeo list-tags {image}` lists the tags")
    )]
    UnknownTarget { target: String, image: String },

    #[error("`{target}` is neither a tag nor a sha256: digest")]
    #[diagnostic(
        code(runnerctl::rollback::bad_target),
        help("pass a tag (e.g. 20260629) or a digest written sha256:<64 hex digits>")
    )]
    BadTarget { target: String },

    #[error(
        "no state dir for rollback: neither --state-dir, -C, $XDG_STATE_HOME nor $HOME is set"
    )]
    #[diagnostic(code(runnerctl::rollback::state_dir), help("pass --state-dir DIR"))]
    NoStateDir,
}

/// With several `--system`s: which of them the target has no image for,
/// as a warning (a rollback to a date from before multi-arch is allowed).
fn lacking_systems(
    args: &RollbackArgs,
    destination: &destination::Destination,
    target: &destination::Manifest,
) -> miette::Result<Option<String>> {
    let systems = crate::system::parse_list(&args.systems)?;
    if systems.len() < 2 {
        return Ok(None);
    }
    let has = destination.platforms(target)?;
    let missing: Vec<String> = systems
        .iter()
        .filter(|s| {
            let p = s.platform();
            !has.contains(&format!("{}/{}", p.os, p.architecture))
        })
        .map(|s| s.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} has no image for {} (it is for {}): hosts of those systems get no image of their own from the moved tags until the next release",
        args.target,
        missing.join(", "),
        if has.is_empty() {
            "an unknown platform".to_string()
        } else {
            has.join(", ")
        }
    )))
}

fn check_target(target: &str) -> Result<(), RollbackError> {
    let bad = || RollbackError::BadTarget {
        target: crate::diagnostic::bound(target, 200),
    };
    match target.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(_) => Err(bad()),
        None => Tag::parse(target).map(|_| ()).map_err(|_| bad()),
    }
}

/// Run a rollback; the report is filled in on failure too.
pub async fn rollback(args: &RollbackArgs) -> (Report, Option<miette::Report>) {
    let started = Instant::now();
    let mut report = Report::new("rollback", args.dry_run);
    let result = rollback_inner(args, &mut report);
    report.duration_ms = started.elapsed().as_millis() as u64;
    let err = crate::report::conclude(result, args.dry_run, &mut report.outcome, &mut report.error);
    (report, err)
}

fn rollback_inner(args: &RollbackArgs, report: &mut Report) -> miette::Result<()> {
    check_target(&args.target)?;
    let tags: Vec<Tag> = if args.tags.iter().all(|t| t.trim().is_empty()) {
        vec!["latest".parse()?, "unstable".parse()?]
    } else {
        let mut tags = Vec::new();
        for text in args.tags.iter().filter(|t| !t.trim().is_empty()) {
            let tag = Tag::parse(text.trim())?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        tags
    };
    let state_dir = args.local.state_dir().ok_or(RollbackError::NoStateDir)?;
    let image = args.local.image(&state_dir)?;
    report.image = image.to_string();
    report.tags = tags.iter().map(|t| t.to_string()).collect();
    report.state_file = state_dir.join(state::STATE_FILE).display().to_string();
    let destination = args.local.connect(&image)?.destination;
    let target =
        destination
            .manifest(&args.target)?
            .ok_or_else(|| RollbackError::UnknownTarget {
                target: args.target.clone(),
                image: image.to_string(),
            })?;
    report.digest = Some(target.digest.clone());
    let lacking = lacking_systems(args, &destination, &target)?;
    if let Some(warning) = &lacking {
        if !args.local.quiet && !args.local.json {
            eprintln!("warning: {warning}");
        }
    }
    let moves = destination.moves(tags.iter().map(|t| t.as_str()), &target.digest)?;
    let started = Instant::now();
    let commands: Vec<String> = moves
        .iter()
        .map(|m| destination.describe_retag(&image, &m.tag, &target.digest))
        .collect();
    let described = describe_moves(&moves, &target.digest);
    let warned = |note: String| match &lacking {
        Some(warning) => format!("{note}; warning: {warning}"),
        None => note,
    };
    if args.dry_run {
        report.stages.push(StageReport {
            name: "rollback".into(),
            status: StageStatus::Planned,
            note: warned(if moves.is_empty() {
                format!(
                    "nothing to move: {} already at {}",
                    report.tags.join(", "),
                    target.digest
                )
            } else {
                format!("would move {described}")
            }),
            duration_ms: 0,
            commands,
        });
        return Ok(());
    }

    let _lock = state::lock(&state_dir, &state_dir)?;
    let mut saved = state::load(&state_dir)?;
    move_tags(&destination, &moves, &target)?;
    // The marker, so that a release without --hold leaves these tags.
    if destination.manifest(ROLLED_BACK)?.map(|m| m.digest) != Some(target.digest.clone()) {
        destination.retag(ROLLED_BACK, &target)?;
    }
    let at = state::now();
    let note = warned(if moves.is_empty() {
        format!("{} already at {}", report.tags.join(", "), target.digest)
    } else {
        format!("moved {described}")
    });
    saved.rollback = Some(state::Rollback {
        image: image.to_string(),
        target: args.target.clone(),
        digest: target.digest.clone(),
        tags: report.tags.clone(),
        at: at.clone(),
    });
    saved.command = Some(Command::Rollback);
    saved.outcome = Some(Outcome::Success);
    saved.started_at = Some(at.clone());
    saved.finished_at = Some(at.clone());
    saved.stages.clear();
    saved.stages.insert(
        "rollback".into(),
        state::StageRecord {
            status: StageStatus::Done,
            fingerprint: None,
            outputs: state::Outputs {
                digest: Some(target.digest.clone()),
                tags: report.tags.clone(),
                ..state::Outputs::default()
            },
            note: Some(note.clone()),
            started_at: Some(at.clone()),
            finished_at: Some(at),
            duration_ms: Some(started.elapsed().as_millis() as u64),
        },
    );
    state::save(&state_dir, &saved)?;
    report.stages.push(StageReport {
        name: "rollback".into(),
        status: StageStatus::Done,
        note,
        duration_ms: started.elapsed().as_millis() as u64,
        commands,
    });
    Ok(())
}

fn move_tags(
    destination: &Destination,
    moves: &[TagMove],
    target: &Manifest,
) -> miette::Result<()> {
    for m in moves {
        destination.retag(&m.tag, target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tags_at_the_marker_are_held() {
        let items: Vec<(&str, Option<&str>)> =
            vec![("latest", Some("sha256:a")), ("unstable", Some("sha256:b"))];
        let held = |marker| {
            held(marker, &items, |i| i.1)
                .into_iter()
                .map(|i| i.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(held(Some("sha256:a")), vec!["latest"]);
        assert!(held(Some("sha256:c")).is_empty());
        assert!(held(None).is_empty());
        assert_eq!(
            held_warning(&["latest".into()], "sha256:a"),
            "latest is rolled back to sha256:a (by `runnerctl rollback`), so this run leaves it there; \
             run `runnerctl promote` to move it to this image"
        );
    }
}
