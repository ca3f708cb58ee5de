//! smoke: run the built image as a job container (see `image::smoke`)
//! before anything is pushed, where a container engine is at hand.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::cli::SmokeMode;
use crate::image::{archive, smoke};
use crate::pipeline::{Ctx, Missing};
use crate::tool::engine::Engine;

pub struct Smoke;

const NO_ENGINE: &str =
    "skipped: no container engine (podman or docker) on PATH (--smoke always requires one)";

#[derive(Debug, Error, Diagnostic)]
#[error("--smoke always, but neither podman nor docker is on PATH")]
#[diagnostic(
    code(runnerctl::smoke::no_engine),
    help("install podman (or docker), or run with --smoke auto to skip the smoke test where there is no engine")
)]
pub struct NoEngine;

impl Smoke {
    /// The engine this run uses, or why it does not run.
    pub fn engine(cx: &Ctx) -> Result<Option<Engine>, NoEngine> {
        match (cx.cfg.smoke.mode, Engine::find()) {
            (SmokeMode::Never, _) => Ok(None),
            (_, Some(engine)) => Ok(Some(engine)),
            (SmokeMode::Always, None) => Err(NoEngine),
            (SmokeMode::Auto, None) => Ok(None),
        }
    }

    /// What the engine loads: the built archive as it is (podman and docker
    /// read gzip too), or the file a stream script wrote.
    async fn archive(cx: &mut Ctx) -> miette::Result<PathBuf> {
        if let Some(archive) = &cx.archive {
            return Ok(archive.clone());
        }
        let eval = cx.eval.clone().ok_or(Missing {
            what: "the out path",
        })?;
        let out = Path::new(eval.out_path.as_str());
        if archive::detect(out)? != archive::ArchiveKind::Script {
            return Ok(out.to_path_buf());
        }
        let file = archive::prepare(
            &cx.runner,
            out,
            &eval.out_path.hash_part(),
            &cx.cfg.cache_dir(),
        )
        .await?;
        cx.archive = Some(file.clone());
        Ok(file)
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
        if Self::engine(cx)?.is_none() {
            return Ok(Check::Done(Done::new(NO_ENGINE)));
        }
        // An image already published passed before it left.
        if let Some(digest) = super::push::Push::published(cx).await? {
            return Ok(Check::Done(Done::new(format!(
                "already published as {digest}"
            ))));
        }
        Ok(Check::Todo("run the image as a job container".into()))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let archive = match &cx.eval {
            Some(eval) => PathBuf::from(eval.out_path.as_str()),
            None => PathBuf::from("ARCHIVE"),
        };
        match Self::engine(cx) {
            Ok(Some(engine)) => smoke::plan(&engine, &archive, &cx.cfg.smoke.checks),
            Ok(None) | Err(_) => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let engine = Self::engine(cx)?;
        Ok(match engine {
            Some(engine) => format!(
                "would run {} check(s) in {}: {}",
                cx.cfg.smoke.checks.len(),
                engine.name(),
                cx.cfg.smoke.checks.join("; ")
            ),
            None => NO_ENGINE.to_string(),
        })
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let Some(engine) = Self::engine(cx)? else {
            return Ok(Done::new(NO_ENGINE));
        };
        let archive = Self::archive(cx).await?;
        let passed = smoke::run(&cx.runner, &engine, &archive, None, &cx.cfg.smoke.checks).await?;
        Ok(Done::new(format!(
            "{} check(s) passed in a {} job container",
            passed.checks, passed.engine
        )))
    }
}
