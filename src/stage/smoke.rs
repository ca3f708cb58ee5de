//! smoke: run the built image as a job container (see `image::smoke`)
//! before anything is pushed, where a container engine is at hand.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::cli::SmokeMode;
use crate::image::{archive, smoke};
use crate::pipeline::Ctx;
use crate::tool::engine::Engine;

/// The stage; it remembers the engine its check picked, so `info` runs
/// once per run.
#[derive(Default)]
pub struct Smoke {
    picked: std::cell::RefCell<Option<Pick>>,
}

const NO_ENGINE: &str =
    "skipped: no container engine (podman or docker) on PATH (--smoke always requires one)";

#[derive(Debug, Error, Diagnostic)]
#[error("--smoke always, but neither podman nor docker is on PATH")]
#[diagnostic(
    code(runnerctl::smoke::no_engine),
    help("install podman (or docker), or run with --smoke auto to skip the smoke test where there is no engine")
)]
pub struct NoEngine;

#[derive(Debug, Error, Diagnostic)]
#[error("--smoke always, but no container engine works here: {reasons}")]
#[diagnostic(
    code(runnerctl::smoke::engine_unusable),
    help("make `podman info` (or `docker info`) work for this user, e.g. start the docker daemon; or run with --smoke auto to skip the smoke test where no engine works")
)]
pub struct EngineUnusable {
    pub reasons: String,
}

/// Which engine a smoke run uses, or why it skips.
#[derive(Clone)]
enum Pick {
    Use(Engine),
    Skip(String),
}

impl Smoke {
    /// The engines this run may use: none with `--smoke never`; an error
    /// with `--smoke always` and none on PATH (preflight calls this, so
    /// that fails before the build).
    pub fn engines(cx: &Ctx) -> Result<Vec<Engine>, NoEngine> {
        let found = Engine::on_path();
        match cx.cfg.smoke.mode {
            SmokeMode::Never => Ok(Vec::new()),
            SmokeMode::Always if found.is_empty() => Err(NoEngine),
            _ => Ok(found),
        }
    }

    /// The engine the check picked (or pick now).
    async fn picked(&self, cx: &Ctx) -> miette::Result<Pick> {
        if let Some(pick) = self.picked.borrow().clone() {
            return Ok(pick);
        }
        let pick = Self::pick(cx).await?;
        *self.picked.borrow_mut() = Some(pick.clone());
        Ok(pick)
    }

    /// The first engine on PATH that works (`info` succeeds). With
    /// `--smoke auto` none means a skip, with a note that says why.
    async fn pick(cx: &Ctx) -> miette::Result<Pick> {
        let engines = Self::engines(cx)?;
        if engines.is_empty() {
            return Ok(Pick::Skip(NO_ENGINE.to_string()));
        }
        let mut reasons = Vec::new();
        for engine in engines {
            let out = cx.runner.run_unchecked(&engine.info()).await?;
            if out.success() {
                return Ok(Pick::Use(engine));
            }
            let why = out
                .stderr_tail
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .cloned()
                .unwrap_or_else(|| "no output".into());
            reasons.push(format!("`{} info` failed ({why})", engine.name()));
        }
        let reasons = reasons.join("; ");
        if cx.cfg.smoke.mode == SmokeMode::Always {
            return Err(EngineUnusable { reasons }.into());
        }
        Ok(Pick::Skip(format!(
            "skipped: no container engine works here: {reasons} (--smoke always makes this an error)"
        )))
    }
}

impl Stage for Smoke {
    fn name(&self) -> &'static str {
        "smoke"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        cx.eval.as_ref().map(|e| e.out_path.to_string())
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        // An image already published passed before it left: no engine is
        // asked.
        if let Some(digest) = super::tags::published(cx).await? {
            return Ok(Check::Done(Done::new(format!(
                "already published as {digest}"
            ))));
        }
        if let Pick::Skip(why) = self.picked(cx).await? {
            return Ok(Check::Done(Done::new(why)));
        }
        Ok(Check::Todo("run the image as a job container".into()))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let archive = match &cx.eval {
            Some(eval) => PathBuf::from(eval.out_path.as_str()),
            None => PathBuf::from("ARCHIVE"),
        };
        match self.picked.borrow().as_ref() {
            Some(Pick::Use(engine)) => smoke::plan(engine, &archive, &cx.cfg.smoke.checks),
            _ => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        Ok(match self.picked(cx).await? {
            Pick::Use(engine) => format!(
                "would run {} check(s) in {}: {}",
                cx.cfg.smoke.checks.len(),
                engine.name(),
                cx.cfg.smoke.checks.join("; ")
            ),
            Pick::Skip(why) => why,
        })
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let engine = match self.picked(cx).await? {
            Pick::Use(engine) => engine,
            Pick::Skip(why) => return Ok(Done::new(why)),
        };
        // podman and docker read gzip too.
        let archive = cx.readable_archive().await?;
        // The name the archive carries (dockerTools: `nixos:DATE`) is left
        // in the engine as it was before.
        let names = archive::repo_tags(&archive)?;
        let passed = smoke::run(
            &cx.runner,
            &engine,
            &archive,
            names.first().map(String::as_str),
            &cx.cfg.smoke.checks,
        )
        .await?;
        Ok(Done::new(format!(
            "{} check(s) passed in a {} job container",
            passed.checks, passed.engine
        )))
    }
}
