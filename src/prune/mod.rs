//! `runnerctl prune --keep N`: delete old date tags, and content tags left
//! without a date or floating tag, from a registry repository or an `oci:`
//! layout. Deletes go by digest, so everything a kept tag points to (and
//! every manifest a kept index references) is protected by digest; see
//! [`plan`]. Each delete is recorded in the state before and after it is
//! sent ([`record`]); a rerun after a kill finishes the interrupted plan
//! and deletes nothing beyond it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use miette::Diagnostic;
use serde::Serialize;
use thiserror::Error;

use crate::cli::PruneArgs;
use crate::image::destination::Destination;
use crate::image::reference::Tag;
use crate::image::registry::{Registry, RegistryError};
use crate::report::{ErrorReport, Outcome, SCHEMA_VERSION};
use crate::state;

pub mod oci;
pub mod plan;
pub mod record;
mod render;

pub use plan::{Delete, Keep, Plan, Rules};
pub use record::{DeleteRecord, DeleteStatus, PruneRecord};

/// What prune says about freeing space.
pub const REGISTRY_GC_NOTE: &str = "the registry frees the blobs of deleted manifests when its garbage collection runs: `docker-registry garbage-collect --delete-untagged CONFIG` for docker-registry, the package cleanup job on Forgejo";

#[derive(Debug, Error, Diagnostic)]
pub enum PruneError {
    #[error("the registry refused to delete {digest} from {image}: HTTP {status}, deleting manifests is not enabled there (UNSUPPORTED)")]
    #[diagnostic(
        code(runnerctl::prune::delete_unsupported),
        help("nothing more was deleted. For docker-registry (distribution), enable deletes in its config: `storage: {{delete: {{enabled: true}}}}` (or REGISTRY_STORAGE_DELETE_ENABLED=true) and restart it. For Forgejo, use its package cleanup rules (Settings → Packages → Cleanup rules) or the packages API instead")
    )]
    DeleteUnsupported {
        image: String,
        digest: String,
        status: u16,
    },

    #[error("no state dir for prune: neither --state-dir, -C, $XDG_STATE_HOME nor $HOME is set")]
    #[diagnostic(code(runnerctl::prune::state_dir), help("pass --state-dir DIR"))]
    NoStateDir,

    #[error("`{tag}` cannot be a floating tag: {reason}")]
    #[diagnostic(
        code(runnerctl::prune::bad_tag),
        help("pass --tag with a plain tag such as latest; a {{date}} template names date tags, which --keep decides about")
    )]
    BadTag { tag: String, reason: String },
}

/// The `--json` document of a prune.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub schema_version: u32,
    pub command: String,
    /// `success`, `dry-run` or `failure`.
    pub outcome: Outcome,
    pub dry_run: bool,
    pub image: String,
    pub keep: u32,
    pub keep_days: Option<u32>,
    /// Tags the destination had, and how many pages the registry sent them in.
    pub tags_listed: usize,
    pub pages: usize,
    /// What is (or would be) deleted, with every tag on each digest.
    pub deletes: Vec<Delete>,
    /// Every tag kept, with the reason.
    pub keeps: Vec<Keep>,
    /// Digests deleted by this run (0 in a dry run).
    pub deleted: usize,
    /// Blobs removed from an `oci:` layout.
    pub blobs_removed: Option<usize>,
    pub note: String,
    pub state_file: String,
    pub duration_ms: u64,
    pub error: Option<ErrorReport>,
}

impl PruneReport {
    fn new(args: &PruneArgs) -> PruneReport {
        PruneReport {
            schema_version: SCHEMA_VERSION,
            command: "prune".into(),
            outcome: Outcome::Failure,
            dry_run: args.dry_run,
            image: String::new(),
            keep: args.keep,
            keep_days: args.keep_days,
            tags_listed: 0,
            pages: 0,
            deletes: Vec::new(),
            keeps: Vec::new(),
            deleted: 0,
            blobs_removed: None,
            note: String::new(),
            state_file: String::new(),
            duration_ms: 0,
            error: None,
        }
    }
}

fn floating_tags(args: &PruneArgs) -> Result<Vec<String>, PruneError> {
    let given: Vec<&str> = args
        .tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if given.is_empty() {
        return Ok(vec!["latest".into(), "unstable".into()]);
    }
    let mut tags = Vec::new();
    for text in given {
        let bad = |reason: String| PruneError::BadTag {
            tag: crate::diagnostic::bound(text, 200),
            reason,
        };
        if text.contains("{date}") {
            return Err(bad("it is a {date} template".into()));
        }
        let tag = Tag::parse(text).map_err(|e| bad(e.to_string()))?;
        if !tags.contains(&tag.to_string()) {
            tags.push(tag.to_string());
        }
    }
    Ok(tags)
}

/// A destination to prune.
enum Target {
    Registry(Arc<Registry>),
    Layout(PathBuf),
}

impl Target {
    /// (tag, digest) for every tag, and the pages the list took.
    fn tags(&self) -> miette::Result<(Vec<(String, String)>, usize)> {
        match self {
            Target::Layout(dir) => Ok((oci::tags(dir)?, 0)),
            Target::Registry(client) => {
                let list = client.list_tags()?;
                let mut out = Vec::with_capacity(list.tags.len());
                for tag in list.tags {
                    // A tag deleted between the list and now is no tag.
                    if let Some(digest) = client.digest_of(&tag)? {
                        out.push((tag, digest));
                    }
                }
                Ok((out, list.pages))
            }
        }
    }

    fn children(&self, digest: &str) -> miette::Result<Vec<String>> {
        match self {
            Target::Layout(dir) => Ok(oci::children(dir, digest)),
            Target::Registry(client) => {
                let Some((bytes, _)) = client.manifest(digest)? else {
                    return Ok(Vec::new());
                };
                Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
                    .map(|list| {
                        list.iter()
                            .filter_map(|d| {
                                d.get("digest").and_then(|d| d.as_str()).map(String::from)
                            })
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    /// Whether the destination still has a manifest with this digest.
    fn has(&self, digest: &str) -> miette::Result<bool> {
        match self {
            Target::Layout(dir) => Ok(oci::tags(dir)?.iter().any(|(_, d)| d == digest)),
            Target::Registry(client) => Ok(client.digest_of(digest)?.is_some()),
        }
    }

    /// Of `tags`, the first that points at `digest` now.
    fn moved_here(&self, digest: &str, tags: &[String]) -> miette::Result<Option<String>> {
        match self {
            Target::Layout(dir) => Ok(oci::tags(dir)?
                .into_iter()
                .find(|(t, d)| d == digest && tags.contains(t))
                .map(|(t, _)| t)),
            Target::Registry(client) => {
                for tag in tags {
                    if client.digest_of(tag)?.as_deref() == Some(digest) {
                        return Ok(Some(tag.clone()));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Delete by digest; false when it was gone already.
    fn delete(&self, image: &str, digest: &str) -> miette::Result<bool> {
        match self {
            Target::Layout(dir) => Ok(crate::image::layout::remove_manifest(dir, digest)? > 0),
            Target::Registry(client) => match client.delete_manifest(digest) {
                Ok(deleted) => Ok(deleted),
                Err(RegistryError::Http { status, body, .. })
                    if status == 405 || body.contains("UNSUPPORTED") =>
                {
                    Err(PruneError::DeleteUnsupported {
                        image: image.to_string(),
                        digest: digest.to_string(),
                        status,
                    }
                    .into())
                }
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// Run a prune; the report is filled in on failure too.
pub async fn prune(args: &PruneArgs) -> (PruneReport, Option<miette::Report>) {
    let started = Instant::now();
    let mut report = PruneReport::new(args);
    let result = prune_inner(args, &mut report);
    report.duration_ms = started.elapsed().as_millis() as u64;
    let err = crate::report::conclude(result, args.dry_run, &mut report.outcome, &mut report.error);
    (report, err)
}

fn prune_inner(args: &PruneArgs, report: &mut PruneReport) -> miette::Result<()> {
    let floating = floating_tags(args)?;
    let candidate = Tag::parse(args.candidate_tag.trim())?.to_string();
    let state_dir = args.local.state_dir().ok_or(PruneError::NoStateDir)?;
    let image = args.local.image(&state_dir)?;
    let image_text = image.to_string();
    report.image = image_text.clone();
    report.state_file = state_dir.join(state::STATE_FILE).display().to_string();
    let connected = args.local.connect(&image)?;
    let target = match connected.destination {
        Destination::Registry(registry) => Target::Registry(registry.client().clone()),
        Destination::Layout(layout) => Target::Layout(layout.dir),
    };
    report.note = match &target {
        Target::Registry(_) => REGISTRY_GC_NOTE.to_string(),
        Target::Layout(_) => {
            "blobs that nothing in the layout references any more are removed with the entries"
                .to_string()
        }
    };
    // The lock first: a bump pushing to the same layout, or another prune,
    // must not run in between the list and the deletes.
    let lock = if args.dry_run {
        None
    } else {
        Some(state::lock(&state_dir, &state_dir)?)
    };
    let (tags, pages) = target.tags()?;
    report.tags_listed = tags.len();
    report.pages = pages;
    let rules = Rules {
        keep: args.keep as usize,
        keep_days: args.keep_days,
        today: time::OffsetDateTime::now_utc().date(),
        floating,
        candidate,
    };
    let mut plan = plan::plan(&tags, &rules, &mut |d| target.children(d))?;
    // The tags that move: checked again before each delete.
    let mut watched = rules.floating.clone();
    watched.push(rules.candidate.clone());
    watched.push(crate::rollback::ROLLED_BACK.to_string());

    // A dry run reads the state too (without the lock): it shows what
    // the real run would do, which finishes an interrupted plan first.
    let mut saved = state::load(&state_dir)?;
    // An interrupted prune with the same rules: finish its plan, delete
    // nothing it did not plan (one uninterrupted prune's worth at most).
    let unfinished = saved
        .prune
        .as_ref()
        .and_then(|p| p.unfinished_plan(&image_text, rules.keep, rules.keep_days));
    if let Some(unfinished) = &unfinished {
        let (finish, later): (Vec<Delete>, Vec<Delete>) = plan
            .deletes
            .into_iter()
            .partition(|d| unfinished.contains(&d.digest));
        plan.deletes = finish;
        for d in later {
            for tag in d.tags {
                plan.keeps.push(Keep {
                    tag,
                    digest: d.digest.clone(),
                    reason: "left for the next prune: this run finishes an interrupted prune's plan, which did not include it".into(),
                });
            }
        }
    }
    report.deletes = plan.deletes.clone();
    report.keeps = plan.keeps.clone();
    if args.dry_run {
        return Ok(());
    }
    // What the interrupted prune already did stays on record: a delete
    // that was being sent when it died is "gone" if the destination no
    // longer has it.
    let mut carried = Vec::new();
    if let Some(previous) = saved.prune.as_ref().filter(|_| unfinished.is_some()) {
        for d in &previous.deletes {
            if plan.deletes.iter().any(|p| p.digest == d.digest) {
                continue;
            }
            match d.status {
                DeleteStatus::Deleted | DeleteStatus::Gone => carried.push(d.clone()),
                DeleteStatus::Sending if !target.has(&d.digest)? => carried.push(DeleteRecord {
                    status: DeleteStatus::Gone,
                    ..d.clone()
                }),
                _ => {}
            }
        }
    }
    let mut record = PruneRecord {
        image: image_text.clone(),
        keep: rules.keep,
        keep_days: rules.keep_days,
        started_at: state::now(),
        finished_at: None,
        outcome: None,
        kept: plan.keeps.len(),
        deletes: plan
            .deletes
            .iter()
            .map(|d| DeleteRecord {
                digest: d.digest.clone(),
                tags: d.tags.clone(),
                status: DeleteStatus::Planned,
                at: None,
            })
            .collect(),
        blobs_removed: None,
    };
    record.deletes.splice(0..0, carried);
    let mut save = |record: &PruneRecord| -> miette::Result<()> {
        saved.prune = Some(record.clone());
        state::save(&state_dir, &saved)?;
        Ok(())
    };
    save(&record)?;
    pause_after_plan_for_tests();
    for i in 0..record.deletes.len() {
        if record.deletes[i].status != DeleteStatus::Planned {
            continue;
        }
        let digest = record.deletes[i].digest.clone();
        // A tag that moves (a promote or rollback in between) may have
        // moved here since the plan: then this digest is in use again.
        if let Some(tag) = target.moved_here(&digest, &watched)? {
            record.deletes[i].status = DeleteStatus::Skipped;
            record.deletes[i].at = Some(state::now());
            save(&record)?;
            report.deletes.retain(|d| d.digest != digest);
            report.keeps.push(Keep {
                tag,
                digest: digest.clone(),
                reason: "moved to this digest during the prune, so it was not deleted".into(),
            });
            continue;
        }
        record.deletes[i].status = DeleteStatus::Sending;
        record.deletes[i].at = Some(state::now());
        save(&record)?;
        match target.delete(&image_text, &digest) {
            Ok(now) => {
                record.deletes[i].status = if now {
                    report.deleted += 1;
                    DeleteStatus::Deleted
                } else {
                    DeleteStatus::Gone
                };
                record.deletes[i].at = Some(state::now());
                save(&record)?;
            }
            Err(err) => {
                record.deletes[i].status = DeleteStatus::Failed;
                record.outcome = Some(Outcome::Failure);
                record.finished_at = Some(state::now());
                // The error that stopped the run matters more than a
                // failure to record it.
                let _ = save(&record);
                return Err(err);
            }
        }
    }
    if let Target::Layout(dir) = &target {
        let (removed, _) = oci::collect_garbage(dir)?;
        report.blobs_removed = Some(removed);
        record.blobs_removed = Some(removed);
    }
    record.outcome = Some(Outcome::Success);
    record.finished_at = Some(state::now());
    save(&record)?;
    drop(lock);
    Ok(())
}

/// Test-only hook: with `RUNNERCTL_TEST_PRUNE_PAUSE=FILE`, a prune creates
/// FILE once its plan is recorded and waits (up to 120 s) until FILE is
/// removed, so tests/prune.rs can move a tag between the plan and the
/// deletes. Unset, it costs one env lookup.
fn pause_after_plan_for_tests() {
    let Some(file) = std::env::var_os("RUNNERCTL_TEST_PRUNE_PAUSE") else {
        return;
    };
    let file = PathBuf::from(file);
    if std::fs::write(&file, "paused").is_err() {
        return;
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while file.exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
