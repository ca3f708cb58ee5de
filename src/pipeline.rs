//! Runs the stages in order: check → act → record. Resumes an interrupted
//! run, and in a dry run collects the plan instead of acting.

use std::path::PathBuf;
use std::time::Instant;

use miette::{Diagnostic, IntoDiagnostic};
use thiserror::Error;

use crate::config::{Config, Mode};
use crate::flake_lock::{DateTag, FlakeLock};
use crate::image::destination::Destination;
use crate::image::reference::Tag;
use crate::progress::{Event, Reporter};
use crate::report::{ErrorReport, Outcome, Report, StageReport};
use crate::stage::{self, Check, Stage};
use crate::state::{self, Outputs, StageRecord, StageStatus, State};
use crate::tool::git::{Git, Upstream};
use crate::tool::nix::{Evaluated, Nix};
use crate::tool::skopeo::Skopeo;
use crate::tool::Runner;

/// Everything the stages share during one run.
pub struct Ctx {
    pub cfg: Config,
    pub runner: Runner,
    pub state: State,
    /// The previous run of the same command did not finish: stages whose
    /// recorded inputs are unchanged are not redone.
    pub resume: bool,
    pub nix: Option<Nix>,
    pub skopeo: Option<Skopeo>,
    pub git: Option<Git>,
    pub branch: Option<String>,
    pub upstream: Option<Upstream>,
    /// The working flake.lock as last read, and its parse.
    pub lock_text: String,
    pub lock: Option<FlakeLock>,
    /// bump: nothing new upstream, and flake.lock at HEAD is on the remote.
    pub up_to_date: bool,
    pub changes: Vec<String>,
    pub date: Option<DateTag>,
    pub tags: Vec<Tag>,
    pub eval: Option<Evaluated>,
    /// The uncompressed docker-archive to verify and push.
    pub archive: Option<PathBuf>,
    pub digest: Option<String>,
    pub commit: Option<String>,
    /// The registry login preflight resolved (skopeo gets it as `authfile`).
    pub login: Option<crate::auth::Login>,
    /// Where images go, as preflight connected to it: for a registry, the
    /// client preflight checked the login with (the push reuses it and its
    /// token), skopeo and its auth file.
    pub destination: Option<Destination>,
    /// Dry-run bump: the throwaway copy of the flake with the new lock.
    pub dry_flake: Option<tempfile::TempDir>,
    /// Where each tag points, as last asked.
    pub tag_states: Option<Vec<crate::image::destination::TagState>>,
    /// Floating tags a rollback holds where they are (see `push`).
    pub held_back: Vec<Tag>,
    pub report: Report,
}

#[derive(Debug, Error, Diagnostic)]
#[error("runnerctl could not prepare {what}")]
#[diagnostic(
    code(runnerctl::internal),
    help("this is a bug in runnerctl; please report it with the output above")
)]
pub struct Missing {
    pub what: &'static str,
}

impl Ctx {
    pub fn nix(&self) -> miette::Result<&Nix> {
        self.nix
            .as_ref()
            .ok_or_else(|| Missing { what: "nix" }.into())
    }
    pub fn skopeo(&self) -> miette::Result<&Skopeo> {
        self.skopeo
            .as_ref()
            .ok_or_else(|| Missing { what: "skopeo" }.into())
    }
    pub fn git(&self) -> miette::Result<&Git> {
        self.git
            .as_ref()
            .ok_or_else(|| Missing { what: "git" }.into())
    }
    /// A dry-run bump whose throwaway update changed the lock: the commit
    /// and push stages would run.
    pub fn dry_run_changes(&self) -> bool {
        self.dry_flake.is_some() && !self.changes.is_empty()
    }

    /// The flake to evaluate: the dry-run copy with the new lock, if any.
    pub fn eval_flake(&self) -> PathBuf {
        match &self.dry_flake {
            Some(dir) => dir.path().to_path_buf(),
            None => self.cfg.flake.clone(),
        }
    }

    /// The destination the run's preflight connected to.
    pub fn destination(&self) -> miette::Result<&Destination> {
        self.destination.as_ref().ok_or_else(|| {
            Missing {
                what: "the destination",
            }
            .into()
        })
    }

    /// The built image as an archive that can be read in place: a tar or a
    /// gzip archive is the out path itself; a stream script is run into a
    /// file first (once per run: kept in `archive`).
    pub async fn readable_archive(&mut self) -> miette::Result<PathBuf> {
        if let Some(archive) = &self.archive {
            return Ok(archive.clone());
        }
        let eval = self.eval.clone().ok_or(Missing {
            what: "the out path",
        })?;
        let out = std::path::Path::new(eval.out_path.as_str());
        if crate::image::archive::detect(out)? != crate::image::archive::ArchiveKind::Script {
            return Ok(out.to_path_buf());
        }
        let file = crate::image::archive::prepare(
            &self.runner,
            out,
            &eval.out_path.hash_part(),
            &self.cfg.cache_dir(),
        )
        .await?;
        self.archive = Some(file.clone());
        Ok(file)
    }

    pub fn reporter(&self) -> &Reporter {
        self.runner.reporter()
    }
    pub fn lock(&self) -> miette::Result<&FlakeLock> {
        self.lock
            .as_ref()
            .ok_or_else(|| Missing { what: "flake.lock" }.into())
    }

    /// Read and parse the working flake.lock.
    pub fn reload_lock(&mut self) -> miette::Result<()> {
        let path = self.cfg.lock_path();
        // A symlink is refused before it is read: its target may be any
        // file (a diagnostic would quote it).
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(LockSymlink { path }.into());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LockRead {
            path: path.clone(),
            source,
        })?;
        let lock = crate::flake_lock::parse(&text, &path)?;
        self.lock_text = text;
        self.lock = Some(lock);
        Ok(())
    }

    /// Compute the date tag and the tags from the current lock.
    pub fn resolve_tags(&mut self) -> miette::Result<()> {
        let date = self.lock()?.date_tag(&self.cfg.input)?;
        let mut tags = Vec::new();
        for template in &self.cfg.tag_templates {
            let tag = template.expand(date.as_str())?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        self.report.date = Some(date.to_string());
        // What this run points at the image (besides nix-<hash>).
        self.report.tags = if self.cfg.hold {
            vec![self.cfg.candidate_tag.to_string()]
        } else {
            tags.iter().map(|t| t.to_string()).collect()
        };
        self.report.commit_message =
            (self.cfg.mode == Mode::Bump).then(|| self.cfg.subject(date.as_str()));
        self.date = Some(date);
        self.tags = tags;
        Ok(())
    }

    /// Write the state now (stages call this before a step whose effect a
    /// kill could otherwise leave unrecorded).
    pub fn save(&self) -> miette::Result<()> {
        if !self.cfg.dry_run {
            state::save(&self.cfg.state_dir, &self.state)?;
        }
        Ok(())
    }
}

#[derive(Debug, Error, Diagnostic)]
#[error("{} is a symbolic link", path.display())]
#[diagnostic(
    code(runnerctl::lock::symlink),
    help("runnerctl updates and commits flake.lock itself: replace the link by the lock file (`cp --remove-destination \"$(readlink -f flake.lock)\" flake.lock`)")
)]
pub struct LockSymlink {
    pub path: PathBuf,
}

#[derive(Debug, Error, Diagnostic)]
#[error("could not read {}", path.display())]
#[diagnostic(
    code(runnerctl::lock::read),
    help("run runnerctl in a flake that has a flake.lock (create one with `nix flake lock`)")
)]
pub struct LockRead {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

async fn run_stage<S: Stage>(cx: &mut Ctx, stage: &S) -> miette::Result<()> {
    let name = stage.name();
    let started = Instant::now();
    let started_at = state::now();
    cx.reporter().emit(Event::StageStarted { stage: name });
    let fingerprint = stage.fingerprint(cx);

    let result: miette::Result<(StageStatus, stage::Done, Vec<String>)> = async {
        match stage.check(cx).await? {
            Check::Done(done) => Ok((StageStatus::Skipped, done, Vec::new())),
            Check::Todo(_) if cx.cfg.dry_run && stage.read_only() => {
                let done = stage.run(cx).await?;
                Ok((StageStatus::Done, done, Vec::new()))
            }
            Check::Todo(_) if cx.cfg.dry_run => {
                let plan = stage.plan(cx);
                let note = stage.dry_run(cx).await?;
                Ok((StageStatus::Planned, stage::Done::new(note), plan))
            }
            Check::Todo(_) => {
                cx.state.stages.insert(
                    name.to_string(),
                    StageRecord {
                        status: StageStatus::Running,
                        fingerprint: fingerprint.clone(),
                        outputs: Outputs::default(),
                        note: None,
                        started_at: Some(started_at.clone()),
                        finished_at: None,
                        duration_ms: None,
                    },
                );
                cx.save()?;
                let done = stage.run(cx).await?;
                Ok((StageStatus::Done, done, Vec::new()))
            }
        }
    }
    .await;

    let (status, note, outputs, commands, error) = match result {
        Ok((status, done, commands)) => (status, done.note, done.outputs, commands, None),
        Err(err) => (
            StageStatus::Failed,
            err.to_string(),
            Outputs::default(),
            Vec::new(),
            Some(err),
        ),
    };
    finish_stage(
        cx,
        Finished {
            name,
            status,
            note: first_line(&note),
            outputs,
            commands,
            fingerprint,
            started_at,
            duration: started.elapsed(),
        },
    )?;
    match error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// How a stage ended, for the progress display, the report and the state.
struct Finished {
    name: &'static str,
    status: StageStatus,
    note: String,
    outputs: Outputs,
    commands: Vec<String>,
    fingerprint: Option<String>,
    started_at: String,
    duration: std::time::Duration,
}

/// Report a finished stage and record it (a dry run records nothing).
fn finish_stage(cx: &mut Ctx, mut f: Finished) -> miette::Result<()> {
    if let (Some(signal), StageStatus::Failed) = (crate::tool::children::interrupted(), f.status) {
        f.note = format!(
            "interrupted by {}: {}",
            crate::tool::children::signal_name(signal),
            f.note
        );
    }
    cx.reporter().emit(Event::StageFinished {
        stage: f.name,
        status: f.status,
        note: f.note.clone(),
        duration: f.duration,
    });
    cx.report.stages.push(StageReport {
        name: f.name.to_string(),
        status: f.status,
        note: f.note.clone(),
        duration_ms: f.duration.as_millis() as u64,
        commands: f.commands,
    });
    if cx.cfg.dry_run || f.status == StageStatus::Planned {
        return Ok(());
    }
    cx.state.stages.insert(
        f.name.to_string(),
        StageRecord {
            status: f.status,
            fingerprint: f.fingerprint,
            outputs: f.outputs,
            note: Some(f.note),
            started_at: Some(f.started_at),
            finished_at: Some(state::now()),
            duration_ms: Some(f.duration.as_millis() as u64),
        },
    );
    cx.save()
}

/// A stage that does not run at all in this pipeline (and why).
fn skip_stage(cx: &mut Ctx, name: &'static str, why: &str) -> miette::Result<()> {
    finish_stage(
        cx,
        Finished {
            name,
            status: StageStatus::Skipped,
            note: why.to_string(),
            outputs: Outputs::default(),
            commands: Vec::new(),
            fingerprint: None,
            started_at: state::now(),
            duration: std::time::Duration::ZERO,
        },
    )
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

pub const UP_TO_DATE: &str = "nothing to do: flake.lock is up to date and already on the remote";

/// Run `bump` or `release`. Returns the report; on failure, the report is
/// filled in and the error returned alongside it.
pub async fn run(cfg: Config, reporter: Reporter) -> (Report, Option<miette::Report>) {
    let started = Instant::now();
    let mut report = Report::new(cfg.mode.as_str(), cfg.dry_run);
    report.flake = cfg.flake.display().to_string();
    report.image = cfg.image.to_string();
    report.state_file = cfg.state_dir.join(state::STATE_FILE).display().to_string();
    report.log_file = cfg.log_path().display().to_string();

    let result = run_inner(cfg, reporter, &mut report).await;
    report.duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(outcome) => {
            report.outcome = outcome.as_str().to_string();
            (report, None)
        }
        Err(err) => {
            report.outcome = Outcome::Failure.as_str().into();
            report.error = Some(ErrorReport {
                message: crate::diagnostic::message(&err),
                help: err.help().map(|h| h.to_string()),
            });
            (report, Some(err))
        }
    }
}

async fn run_inner(
    cfg: Config,
    reporter: Reporter,
    report: &mut Report,
) -> miette::Result<Outcome> {
    // Auth files of runs that were killed (kill -9 skips every cleanup).
    crate::auth::remove_stale_auth_files(&std::env::temp_dir());
    // The run lock and the state (not in a dry run: it changes nothing).
    let _lock = if cfg.dry_run {
        None
    } else {
        Some(state::lock(&cfg.state_dir, &cfg.flake)?)
    };
    let mut saved = if cfg.reset_state {
        State::default()
    } else {
        match state::load(&cfg.state_dir) {
            Ok(state) => state,
            Err(err) if cfg.dry_run => {
                reporter.info(format!("warning: {err} (ignored in a dry run)"));
                State::default()
            }
            Err(err) => return Err(err.into()),
        }
    };
    let mode = cfg.mode;
    let resume = saved.command.as_deref() == Some(mode.as_str())
        && !Outcome::finished(saved.outcome.as_deref());
    if !cfg.dry_run {
        if !resume {
            saved.stages.clear();
        }
        saved.command = Some(mode.as_str().to_string());
        saved.started_at = Some(state::now());
        saved.finished_at = None;
        saved.outcome = None;
    }

    // From here on SIGINT, SIGTERM and SIGHUP stop the run cleanly.
    let signals = if cfg.dry_run {
        None
    } else {
        crate::tool::children::Signals::catch().ok()
    };
    let mut runner = Runner::new(reporter);
    if !cfg.dry_run {
        runner = runner.with_log(&cfg.log_path()).into_diagnostic()?;
    }
    let mut cx = Ctx {
        cfg,
        runner,
        state: saved,
        resume,
        nix: None,
        skopeo: None,
        git: None,
        branch: None,
        upstream: None,
        lock_text: String::new(),
        lock: None,
        up_to_date: false,
        changes: Vec::new(),
        date: None,
        tags: Vec::new(),
        eval: None,
        archive: None,
        digest: None,
        commit: None,
        login: None,
        destination: None,
        dry_flake: None,
        tag_states: None,
        held_back: Vec::new(),
        report: std::mem::replace(report, Report::new(mode.as_str(), false)),
    };
    cx.save()?;
    if resume {
        cx.reporter()
            .info(format!("resuming the unfinished {} run", mode.as_str()));
    }

    let result = match signals {
        Some(signals) => stages_until_interrupted(&mut cx, signals).await,
        None => stages(&mut cx).await,
    };
    let interrupted = crate::tool::children::interrupted();
    let outcome = match &result {
        Ok(_) if cx.cfg.dry_run => Outcome::DryRun,
        Ok(_) if cx.up_to_date => Outcome::UpToDate,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    if !cx.cfg.dry_run {
        if mode == Mode::Bump && result.is_ok() {
            cx.state.pending_bump = None;
        }
        if let Some(signal) = interrupted {
            // The stage that was running when the signal came.
            let note = format!(
                "interrupted by {}",
                crate::tool::children::signal_name(signal)
            );
            for record in cx.state.stages.values_mut() {
                if record.status == StageStatus::Running {
                    record.status = StageStatus::Failed;
                    record.note = Some(note.clone());
                    record.finished_at = Some(state::now());
                }
            }
        }
        cx.state.outcome = Some(
            if interrupted.is_some() {
                Outcome::Interrupted
            } else {
                outcome
            }
            .as_str()
            .to_string(),
        );
        cx.state.finished_at = Some(state::now());
        cx.save()?;
    }
    // Tags a rollback holds were not written.
    let held = std::mem::take(&mut cx.held_back);
    cx.report
        .tags
        .retain(|t| !held.iter().any(|h| h.as_str() == t));
    cx.report.digest = cx.digest.clone();
    cx.report.commit = cx.commit.clone();
    cx.report.changes = cx.changes.clone();
    if let Some(eval) = &cx.eval {
        cx.report.drv_path = Some(eval.drv_path.to_string());
        cx.report.out_path = Some(eval.out_path.to_string());
    }
    *report = std::mem::replace(&mut cx.report, Report::new(mode.as_str(), false));
    result.map(|_| outcome)
}

/// The stages, until a signal: then what runnerctl started gets the signal
/// and [`GRACE`](crate::tool::children::GRACE) to end (the stage sees its
/// command fail and no new command starts), what remains is killed, and
/// the run ends as [`Interrupted`](crate::tool::children::Interrupted).
async fn stages_until_interrupted(
    cx: &mut Ctx,
    mut signals: crate::tool::children::Signals,
) -> miette::Result<()> {
    use crate::tool::children;
    let work = stages(cx);
    tokio::pin!(work);
    let signal = tokio::select! {
        biased;
        signal = signals.recv() => signal,
        result = &mut work => return result,
    };
    if tokio::time::timeout(children::GRACE, &mut work)
        .await
        .is_err()
    {
        children::signal_all(libc::SIGKILL);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut work).await;
    }
    children::wait_for_descendants(std::time::Duration::from_secs(2));
    Err(children::Interrupted { signal }.into())
}

async fn stages(cx: &mut Ctx) -> miette::Result<()> {
    run_stage(cx, &stage::preflight::Preflight).await?;
    if cx.cfg.mode == Mode::Promote {
        return run_stage(cx, &stage::promote::Promote::default()).await;
    }
    if cx.cfg.mode == Mode::Bump {
        run_stage(cx, &stage::update::Update).await?;
        if cx.up_to_date {
            for name in ["build", "verify", "smoke", "push", "commit", "git-push"] {
                skip_stage(cx, name, UP_TO_DATE)?;
            }
            return Ok(());
        }
    }
    run_stage(cx, &stage::build::Build).await?;
    if cx.cfg.verify.enabled {
        run_stage(cx, &stage::verify::Verify).await?;
    } else {
        skip_stage(cx, "verify", "disabled by --no-verify")?;
    }
    if cx.cfg.smoke.mode == crate::cli::SmokeMode::Never {
        skip_stage(cx, "smoke", "disabled by --smoke never")?;
    } else {
        run_stage(cx, &stage::smoke::Smoke::default()).await?;
    }
    run_stage(cx, &stage::push::Push).await?;
    if cx.cfg.mode == Mode::Bump {
        run_stage(cx, &stage::commit::Commit).await?;
        if cx.cfg.git_push {
            run_stage(cx, &stage::git_push::GitPush).await?;
        } else {
            skip_stage(cx, "git-push", "disabled by --no-git-push")?;
        }
    }
    Ok(())
}
