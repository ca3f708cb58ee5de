//! Runs the stages in order: check → act → record. Resumes an interrupted
//! run, and in a dry run collects the plan instead of acting.

use std::time::Instant;

use miette::IntoDiagnostic;

use crate::config::{Config, Mode};
use crate::progress::{Event, Reporter};
use crate::report::{ErrorReport, Outcome, Report, StageReport, SystemReport};
use crate::stage::build::{Build, Built};
use crate::stage::commit::Commit;
use crate::stage::git_push::GitPush;
use crate::stage::preflight::{Preflight, Prepared};
use crate::stage::promote::Promote;
use crate::stage::push::Push;
use crate::stage::smoke::Smoke;
use crate::stage::tags::Survey;
use crate::stage::update::Update;
use crate::stage::verify::Verify;
use crate::stage::{self, Check, Ctx, Stage};
use crate::state::{self, Outputs, StageRecord, StageStatus, State};
use crate::tool::nix::Evaluated;
use crate::tool::Runner;

/// Run one stage: check, then act (or plan, in a dry run), and record how
/// it ended. Returns what it produced; None for a planned stage whose
/// output is not known in a dry run is not a thing: `dry_run` says what
/// the stage would produce.
async fn run_stage<S: Stage>(cx: &mut Ctx, mut stage: S) -> miette::Result<S::Output> {
    let name = stage.name();
    let started = Instant::now();
    let started_at = state::now();
    cx.reporter().emit(Event::StageStarted { stage: name });
    let fingerprint = stage.fingerprint(cx);

    let result: miette::Result<(StageStatus, stage::Done<S::Output>, Vec<String>)> = async {
        match stage.check(cx).await? {
            Check::Done(done) => Ok((StageStatus::Skipped, done, Vec::new())),
            Check::Todo(_, found) if cx.cfg.dry_run && stage.read_only() => {
                let done = stage.run(cx, found).await?;
                Ok((StageStatus::Done, done, Vec::new()))
            }
            Check::Todo(_, found) if cx.cfg.dry_run => {
                let plan = stage.plan(cx, &found);
                let done = stage.dry_run(cx, found).await?;
                Ok((StageStatus::Planned, done, plan))
            }
            Check::Todo(_, found) => {
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
                let done = stage.run(cx, found).await?;
                Ok((StageStatus::Done, done, Vec::new()))
            }
        }
    }
    .await;

    let finished = |status, note: &str, outputs, commands| Finished {
        name,
        status,
        note: first_line(note),
        outputs,
        commands,
        fingerprint: fingerprint.clone(),
        started_at: started_at.clone(),
        duration: started.elapsed(),
    };
    match result {
        Ok((status, done, commands)) => {
            finish_stage(cx, finished(status, &done.note, done.outputs, commands))?;
            Ok(done.value)
        }
        Err(err) => {
            let note = err.to_string();
            finish_stage(
                cx,
                finished(StageStatus::Failed, &note, Outputs::default(), Vec::new()),
            )?;
            Err(err)
        }
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
            report.outcome = outcome;
            (report, None)
        }
        Err(err) => {
            report.outcome = Outcome::Failure;
            report.error = Some(ErrorReport::of(&err));
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
    let resume = saved.command == Some(mode.into()) && !Outcome::finished(saved.outcome);
    if !cfg.dry_run {
        if !resume {
            saved.stages.clear();
        }
        saved.command = Some(mode.into());
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
        Ok(outcome) => *outcome,
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
        cx.state.outcome = Some(match interrupted {
            Some(_) => Outcome::Interrupted,
            None => outcome,
        });
        cx.state.finished_at = Some(state::now());
        cx.save()?;
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
) -> miette::Result<Outcome> {
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

/// The stages, each taking what the ones before it produced. What the
/// report shows is filled in as it becomes known, so a failed run reports
/// what it got to.
async fn stages(cx: &mut Ctx) -> miette::Result<Outcome> {
    let prepared = run_stage(cx, Preflight).await?;
    let checkout = cx.cfg.flake.clone();
    if cx.cfg.mode == Mode::Promote {
        let promoted = run_stage(
            cx,
            Promote {
                prepared: &prepared,
                target: &prepared.target,
                flake: &checkout,
            },
        )
        .await?;
        report_built(&mut cx.report, &promoted.built);
        cx.report.digest = Some(promoted.digest);
        return Ok(Outcome::Success);
    }
    let updated = match cx.cfg.mode {
        Mode::Bump => Some(
            run_stage(
                cx,
                Update {
                    prepared: &prepared,
                },
            )
            .await?,
        ),
        _ => None,
    };
    if let Some(updated) = &updated {
        cx.report.changes = updated.changes.clone();
        if updated.up_to_date {
            for name in ["build", "verify", "smoke", "push", "commit", "git-push"] {
                skip_stage(cx, name, UP_TO_DATE)?;
            }
            return Ok(Outcome::UpToDate);
        }
    }
    let (target, flake) = match &updated {
        Some(updated) => (&updated.target, updated.flake(&checkout)),
        None => (&prepared.target, checkout.as_path()),
    };
    let mut survey = Survey::new(&prepared, target);
    let published = publish(cx, &prepared, flake, &mut survey).await;
    // Tags a rollback holds were not written.
    let held = survey.held_back();
    cx.report
        .tags
        .retain(|t| !held.iter().any(|h| h.as_str() == t));
    let digest = published?;
    let Some(updated) = &updated else {
        return Ok(Outcome::Success);
    };
    let committed = run_stage(
        cx,
        Commit {
            git: &prepared.git,
            updated,
            digest: digest.as_deref(),
        },
    )
    .await?;
    cx.report.commit = committed.commit.clone();
    match &prepared.upstream {
        Some(upstream) => {
            let pushed = run_stage(
                cx,
                GitPush {
                    git: &prepared.git,
                    upstream,
                    commit: committed.commit.as_deref(),
                    would_change: updated.would_change(),
                },
            )
            .await?;
            if let Some(commit) = pushed.commit {
                cx.report.commit = Some(commit);
            }
        }
        None => skip_stage(cx, "git-push", "disabled by --no-git-push")?,
    }
    Ok(Outcome::Success)
}

/// build → verify → smoke → push: the image, from the flake to the
/// destination. Returns the digest the tags point at (none in a dry run).
async fn publish(
    cx: &mut Ctx,
    prepared: &Prepared,
    flake: &std::path::Path,
    survey: &mut Survey<'_>,
) -> miette::Result<Option<String>> {
    let mut built: Built = run_stage(
        cx,
        Build {
            prepared,
            flake,
            survey,
        },
    )
    .await?;
    report_built(&mut cx.report, &built);
    if cx.cfg.verify.enabled {
        run_stage(
            cx,
            Verify {
                prepared,
                built: &mut built,
                survey,
            },
        )
        .await?;
    } else {
        skip_stage(cx, "verify", "disabled by --no-verify")?;
    }
    if cx.cfg.smoke.mode == crate::cli::SmokeMode::Never {
        skip_stage(cx, "smoke", "disabled by --smoke never")?;
    } else {
        run_stage(
            cx,
            Smoke {
                built: &mut built,
                survey,
            },
        )
        .await?;
    }
    let pushed = run_stage(
        cx,
        Push {
            prepared,
            built: &mut built,
            survey,
        },
    )
    .await?;
    cx.report.digest = pushed.digest.clone();
    for (system, digest) in pushed.systems {
        if let Some(entry) = cx.report.systems.iter_mut().find(|s| s.system == system) {
            entry.digest = Some(digest);
        }
    }
    Ok(pushed.digest)
}

fn report_built(report: &mut Report, built: &Built) {
    match built.images.as_slice() {
        [single] => report_eval(report, &single.eval),
        images => {
            report.systems = images
                .iter()
                .map(|i| SystemReport {
                    system: i.system.as_ref().map(|s| s.to_string()).unwrap_or_default(),
                    drv_path: i.eval.drv_path.to_string(),
                    out_path: i.eval.out_path.to_string(),
                    digest: None,
                })
                .collect()
        }
    }
}

fn report_eval(report: &mut Report, eval: &Evaluated) {
    report.drv_path = Some(eval.drv_path.to_string());
    report.out_path = Some(eval.out_path.to_string());
}
