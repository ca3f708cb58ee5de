//! update: `nix flake update`, then the input changes against HEAD.
//!
//! In a dry run the update happens in a throwaway copy of the flake, so the
//! plan shows the real input changes without touching flake.lock.

use std::path::Path;

use miette::{Diagnostic, IntoDiagnostic};
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::digest::sha256_hex as hash_hex;
use crate::flake_lock::{self, diff_inputs};
use crate::pipeline::Ctx;
use crate::state::{Outputs, PendingBump};

pub struct Update;

#[derive(Debug, Error, Diagnostic)]
#[error("could not copy the flake to a temporary directory for the dry run")]
#[diagnostic(
    code(runnerctl::update::copy),
    help("check that the temp dir ($TMPDIR or /tmp) is writable")
)]
struct CopyError(#[source] std::io::Error);

impl Update {
    /// Compare the working lock with HEAD's and record what changed.
    async fn changes(cx: &mut Ctx, new_text: &str) -> miette::Result<Vec<String>> {
        let git = cx.git()?.clone();
        let head_text = git.show(&cx.runner, "HEAD", "flake.lock").await?;
        let path = cx.cfg.lock_path();
        let new = flake_lock::parse(new_text, &path)?;
        let changes = match head_text {
            Some(text) => {
                let old = flake_lock::parse(&text, &path)?;
                diff_inputs(&old, &new).iter().map(|c| c.render()).collect()
            }
            None => vec!["flake.lock is new".to_string()],
        };
        Ok(changes)
    }

    /// Is the working lock what HEAD has, and is HEAD's lock on the remote?
    async fn up_to_date(cx: &Ctx) -> miette::Result<bool> {
        let git = cx.git()?;
        let working = git.hash_object(&cx.runner, "flake.lock").await?;
        let head = git.blob(&cx.runner, "HEAD", "flake.lock").await?;
        if head.as_deref() != Some(working.as_str()) {
            return Ok(false);
        }
        match &cx.upstream {
            Some(up) => Ok(git
                .blob(&cx.runner, &up.tracking_ref(), "flake.lock")
                .await?
                == head),
            None => Ok(true),
        }
    }

    fn note(changes: &[String]) -> String {
        if changes.is_empty() {
            "up to date: no input changed upstream".to_string()
        } else {
            format!("{} input(s) changed: {}", changes.len(), changes.join("; "))
        }
    }
}

impl Stage for Update {
    fn name(&self) -> &'static str {
        "update"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        let nix = std::fs::read(cx.cfg.flake.join("flake.nix")).unwrap_or_default();
        let mut data = nix;
        data.extend_from_slice(cx.cfg.update_inputs.join(",").as_bytes());
        Some(hash_hex(&data))
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        // Resume: an unfinished bump already updated the lock, flake.nix is
        // unchanged, and flake.lock is still what it wrote.
        let current = hash_hex(cx.lock_text.as_bytes());
        let fingerprint = self.fingerprint(cx);
        let done = cx.state.pending_bump.as_ref().is_some_and(|p| {
            p.fingerprint == fingerprint && p.lock_hash.as_deref() == Some(current.as_str())
        });
        if !done {
            return Ok(Check::Todo("check upstream for new input revisions".into()));
        }
        let lock_text = cx.lock_text.clone();
        cx.changes = Self::changes(cx, &lock_text).await?;
        cx.up_to_date = Self::up_to_date(cx).await?;
        Ok(Check::Done(
            Done::new(format!(
                "flake.lock was already updated by the interrupted run ({})",
                Self::note(&cx.changes)
            ))
            .with(Outputs {
                lock_hash: Some(current),
                changes: cx.changes.clone(),
                date: cx.date.as_ref().map(|d| d.to_string()),
                ..Outputs::default()
            }),
        ))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        match &cx.nix {
            Some(nix) => vec![format!(
                "(cd {} && {})",
                crate::tool::shell_quote(&cx.cfg.flake.display().to_string()),
                nix.update_cmd(&cx.cfg.flake, &cx.cfg.update_inputs)
                    .display()
            )],
            None => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let tmp = tempfile::Builder::new()
            .prefix("runnerctl-dry-run-")
            .tempdir()
            .map_err(CopyError)?;
        let git = cx.git()?.clone();
        let files = git.ls_files(&cx.runner).await?;
        for file in files {
            match copy_file(&cx.cfg.flake.join(&file), &tmp.path().join(&file)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(CopyError)?,
            }
        }
        // A plain directory is a `path:` flake: no git needed in the copy.
        let nix = cx.nix()?.clone();
        let cmd = nix.update_cmd(tmp.path(), &cx.cfg.update_inputs);
        cx.runner.run(&cmd).await?;
        let new_text = std::fs::read_to_string(tmp.path().join("flake.lock")).into_diagnostic()?;
        cx.changes = Self::changes(cx, &new_text).await?;
        let path = cx.cfg.lock_path();
        let new = flake_lock::parse(&new_text, &path)?;
        cx.lock = Some(new);
        cx.lock_text = new_text;
        cx.resolve_tags()?;
        cx.up_to_date = cx.changes.is_empty() && Self::up_to_date(cx).await.unwrap_or(false);
        cx.dry_flake = Some(tmp);
        Ok(format!(
            "would update flake.lock: {}",
            Self::note(&cx.changes)
        ))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let nix = cx.nix()?.clone();
        let cmd = nix.update_cmd(&cx.cfg.flake, &cx.cfg.update_inputs);
        // Record that flake.lock is about to change, so a run killed while
        // nix writes it still knows the dirty lock is its own.
        cx.state.pending_bump = Some(PendingBump {
            lock_hash: None,
            fingerprint: self.fingerprint(cx),
            commit: None,
            commit_parent: None,
        });
        cx.save()?;
        let before = hash_hex(cx.lock_text.as_bytes());
        if let Err(err) = cx.runner.run(&cmd).await {
            // The update did not finish. The pending bump must not leave a
            // hash-less record behind, or the next run would take any
            // uncommitted flake.lock (a hand edit) for the one nix wrote.
            let now = std::fs::read(cx.cfg.lock_path()).map(|b| hash_hex(&b)).ok();
            cx.state.pending_bump = match now {
                Some(now) if now != before => cx.state.pending_bump.take().map(|p| PendingBump {
                    lock_hash: Some(now),
                    ..p
                }),
                _ => None,
            };
            cx.save()?;
            return Err(err.with_help("nix could not update the inputs (network, or an input that no longer exists?); flake.lock is unchanged unless nix wrote it, and a rerun starts the update again").into());
        }
        cx.reload_lock()?;
        cx.resolve_tags()?;
        let text = cx.lock_text.clone();
        cx.changes = Self::changes(cx, &text).await?;
        cx.up_to_date = Self::up_to_date(cx).await?;
        let lock_hash = hash_hex(cx.lock_text.as_bytes());
        cx.state.pending_bump = (!cx.up_to_date).then(|| PendingBump {
            lock_hash: Some(lock_hash),
            fingerprint: self.fingerprint(cx),
            commit: None,
            commit_parent: None,
        });
        Ok(Done::new(Self::note(&cx.changes)).with(Outputs {
            lock_hash: Some(hash_hex(cx.lock_text.as_bytes())),
            changes: cx.changes.clone(),
            date: cx.date.as_ref().map(|d| d.to_string()),
            ..Outputs::default()
        }))
    }
}

fn copy_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        std::os::unix::fs::symlink(target, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}
