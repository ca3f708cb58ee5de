//! update: `nix flake update`, then the input changes against HEAD.
//!
//! The update always happens in a throwaway copy of the flake, so nix never
//! writes the working flake.lock. A dry run stops there (the plan shows the
//! real input changes); a real run records the new lock's hash in the
//! pending bump, then renames the new lock over flake.lock.

use std::path::Path;

use miette::{Diagnostic, IntoDiagnostic};
use thiserror::Error;

use super::preflight::Prepared;
use super::target::Target;
use super::{Check, Ctx, Done, Stage};
use crate::digest::sha256_hex as hash_hex;
use crate::flake_lock::{self, diff_inputs};
use crate::state::{Outputs, PendingBump};

/// The stage, on what preflight prepared.
pub struct Update<'a> {
    pub prepared: &'a Prepared,
}

/// What the update produced: the lock to build from.
pub struct Updated {
    pub target: Target,
    /// The input changes against HEAD's flake.lock.
    pub changes: Vec<String>,
    /// Nothing new upstream, and flake.lock at HEAD is on the remote.
    pub up_to_date: bool,
    /// A dry run's throwaway copy of the flake with the new lock (it is
    /// what the dry run evaluates).
    pub dry_flake: Option<tempfile::TempDir>,
}

impl Updated {
    /// A dry run whose throwaway update changed the lock: the commit and
    /// push stages would run.
    pub fn would_change(&self) -> bool {
        self.dry_flake.is_some() && !self.changes.is_empty()
    }

    /// The flake to evaluate: the dry-run copy with the new lock, if any.
    pub fn flake<'b>(&'b self, checkout: &'b Path) -> &'b Path {
        match &self.dry_flake {
            Some(dir) => dir.path(),
            None => checkout,
        }
    }
}

#[derive(Debug, Error, Diagnostic)]
#[error("could not copy the flake to a temporary directory for the dry run")]
#[diagnostic(
    code(runnerctl::update::copy),
    help("check that the temp dir ($TMPDIR or /tmp) is writable")
)]
struct CopyError(#[source] std::io::Error);

#[derive(Debug, Error, Diagnostic)]
#[error("could not replace {path} with the updated lock")]
#[diagnostic(
    code(runnerctl::update::write),
    help("check that the flake's directory is writable; flake.lock is either unchanged or the updated one, and a rerun resumes")
)]
struct WriteError {
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}

impl Update<'_> {
    /// Run `nix flake update` in a throwaway copy of the flake's tracked
    /// files; the working flake.lock is never touched. Returns the copy
    /// (the dry run evaluates it) and its new lock.
    async fn update_copy(&self, cx: &Ctx) -> miette::Result<(tempfile::TempDir, String)> {
        let tmp = tempfile::Builder::new()
            .prefix("runnerctl-update-")
            .tempdir()
            .map_err(CopyError)?;
        let files = self.prepared.git.ls_files(&cx.runner).await?;
        for file in files {
            match copy_file(&cx.cfg.flake.join(&file), &tmp.path().join(&file)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(CopyError)?,
            }
        }
        // A plain directory is a `path:` flake: no git needed in the copy.
        // Relative `path:./sub` inputs resolve inside the copy as they do in
        // the checkout (Nix refuses `../` ones in both).
        let cmd = self
            .prepared
            .nix
            .update_cmd(tmp.path(), &cx.cfg.update_inputs);
        cx.runner.run(&cmd).await.map_err(|err| {
            err.with_help("nix could not update the inputs (network, or an input that no longer exists?); flake.lock is unchanged, and a rerun starts the update again")
        })?;
        let new_text = std::fs::read_to_string(tmp.path().join("flake.lock")).into_diagnostic()?;
        Ok((tmp, new_text))
    }

    /// Compare the working lock with HEAD's and record what changed.
    async fn changes(&self, cx: &Ctx, new_text: &str) -> miette::Result<Vec<String>> {
        let git = &self.prepared.git;
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
    async fn up_to_date(&self, cx: &Ctx) -> miette::Result<bool> {
        let git = &self.prepared.git;
        let working = git.hash_object(&cx.runner, "flake.lock").await?;
        let head = git.blob(&cx.runner, "HEAD", "flake.lock").await?;
        if head.as_deref() != Some(working.as_str()) {
            return Ok(false);
        }
        match &self.prepared.upstream {
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

impl Stage for Update<'_> {
    type Output = Updated;
    type Found = ();

    fn name(&self) -> &'static str {
        "update"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        let nix = std::fs::read(cx.cfg.flake.join("flake.nix")).unwrap_or_default();
        let mut data = nix;
        data.extend_from_slice(cx.cfg.update_inputs.join(",").as_bytes());
        Some(hash_hex(&data))
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Updated, ()>> {
        // Resume: an unfinished bump already updated the lock, flake.nix is
        // unchanged, and flake.lock is still what it wrote.
        let target = &self.prepared.target;
        let current = hash_hex(target.lock_text.as_bytes());
        let fingerprint = self.fingerprint(cx);
        let done = cx.state.pending_bump.as_ref().is_some_and(|p| {
            p.fingerprint == fingerprint && p.lock_hash.as_deref() == Some(current.as_str())
        });
        if !done {
            return Ok(Check::Todo(
                "check upstream for new input revisions".into(),
                (),
            ));
        }
        let changes = self.changes(cx, &target.lock_text).await?;
        let up_to_date = self.up_to_date(cx).await?;
        let outputs = Outputs {
            lock_hash: Some(current),
            changes: changes.clone(),
            date: Some(target.date.to_string()),
            ..Outputs::default()
        };
        Ok(Check::Done(
            Done::new(
                format!(
                    "flake.lock was already updated by the interrupted run ({})",
                    Self::note(&changes)
                ),
                Updated {
                    target: target.clone(),
                    changes,
                    up_to_date,
                    dry_flake: None,
                },
            )
            .with(outputs),
        ))
    }

    fn plan(&self, cx: &Ctx, _: &()) -> Vec<String> {
        vec![format!(
            "(cd {} && {})",
            crate::tool::shell_quote(&cx.cfg.flake.display().to_string()),
            self.prepared
                .nix
                .update_cmd(&cx.cfg.flake, &cx.cfg.update_inputs)
                .display()
        )]
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Updated>> {
        let (tmp, new_text) = self.update_copy(cx).await?;
        let changes = self.changes(cx, &new_text).await?;
        let target = Target::parse(&cx.cfg, new_text, &cx.cfg.lock_path())?;
        target.report(&cx.cfg, &mut cx.report);
        let up_to_date = changes.is_empty() && self.up_to_date(cx).await.unwrap_or(false);
        Ok(Done::new(
            format!("would update flake.lock: {}", Self::note(&changes)),
            Updated {
                target,
                changes,
                up_to_date,
                dry_flake: Some(tmp),
            },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Updated>> {
        // nix never writes the working flake.lock: it updates a throwaway
        // copy, and the new lock's hash is saved before the lock replaces
        // flake.lock. A run killed at any point leaves either the old lock
        // or the recorded one, never a lock nobody recorded.
        remove_stale_temp_locks(&cx.cfg.flake);
        let (_tmp, new_text) = match self.update_copy(cx).await {
            Ok(updated) => updated,
            Err(err) => {
                // flake.lock is untouched: no pending bump to resume.
                cx.state.pending_bump = None;
                cx.save()?;
                return Err(err);
            }
        };
        if new_text != self.prepared.target.lock_text {
            let path = cx.cfg.lock_path();
            flake_lock::parse(&new_text, &path)?;
            cx.state.pending_bump = Some(PendingBump {
                lock_hash: Some(hash_hex(new_text.as_bytes())),
                fingerprint: self.fingerprint(cx),
                commit: None,
                commit_parent: None,
            });
            cx.save()?;
            replace_file(&path, new_text.as_bytes()).map_err(|source| WriteError {
                path: path.clone(),
                source,
            })?;
        }
        let target = Target::read(&cx.cfg)?;
        target.report(&cx.cfg, &mut cx.report);
        let changes = self.changes(cx, &target.lock_text).await?;
        let up_to_date = self.up_to_date(cx).await?;
        let lock_hash = hash_hex(target.lock_text.as_bytes());
        cx.state.pending_bump = (!up_to_date).then(|| PendingBump {
            lock_hash: Some(lock_hash.clone()),
            fingerprint: self.fingerprint(cx),
            commit: None,
            commit_parent: None,
        });
        let outputs = Outputs {
            lock_hash: Some(lock_hash),
            changes: changes.clone(),
            date: Some(target.date.to_string()),
            ..Outputs::default()
        };
        Ok(Done::new(
            Self::note(&changes),
            Updated {
                target,
                changes,
                up_to_date,
                dry_flake: None,
            },
        )
        .with(outputs))
    }
}

const TEMP_LOCK_PREFIX: &str = ".flake.lock.runnerctl-";

/// A run killed between writing the new lock's temporary file and renaming
/// it leaves that file behind (untracked); the next run removes it.
fn remove_stale_temp_locks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let ours = entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEMP_LOCK_PREFIX);
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Write `bytes` to a temporary file next to `path`, then rename it over
/// `path`: a reader (or a run killed midway) sees the old file or the new
/// one, whole. The old file's permissions are kept.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_LOCK_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    let perms = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions(),
        Err(_) => std::os::unix::fs::PermissionsExt::from_mode(0o644),
    };
    tmp.as_file().set_permissions(perms)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
