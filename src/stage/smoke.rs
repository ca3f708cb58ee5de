//! smoke: run the built image as a job container (see `image::smoke`)
//! before anything is pushed, where a container engine is at hand.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use super::build::Built;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::cli::SmokeMode;
use crate::config::Config;
use crate::image::{archive, smoke};
use crate::system::System;
use crate::tool::engine::Engine;

/// The stage, on the built image.
pub struct Smoke<'a, 'b> {
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
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
enum Pick {
    Use(Engine),
    Skip(String),
}

/// The engines this run may use: none with `--smoke never`; an error with
/// `--smoke always` and none on PATH (preflight calls this, so that fails
/// before the build).
pub fn engines(cfg: &Config) -> Result<Vec<Engine>, NoEngine> {
    let found = Engine::on_path();
    match cfg.smoke.mode {
        SmokeMode::Never => Ok(Vec::new()),
        SmokeMode::Always if found.is_empty() => Err(NoEngine),
        _ => Ok(found),
    }
}

impl Smoke<'_, '_> {
    /// The first engine on PATH that works (`info` succeeds). With
    /// `--smoke auto` none means a skip, with a note that says why.
    async fn pick(cx: &Ctx) -> miette::Result<Pick> {
        let engines = engines(&cx.cfg)?;
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

/// The images an engine here runs natively: this machine's (no --system),
/// or those whose system is this machine's.
fn native(built: &Built) -> (Vec<usize>, Vec<String>) {
    let host = System::host();
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    for (i, image) in built.images.iter().enumerate() {
        match &image.system {
            Some(system) if Some(system) != host.as_ref() => skipped.push(system.to_string()),
            _ => run.push(i),
        }
    }
    (run, skipped)
}

impl Stage for Smoke<'_, '_> {
    type Output = ();
    /// The engine to run the images in, and which images (by position).
    type Found = (Engine, Vec<usize>, Vec<String>);

    fn name(&self) -> &'static str {
        "smoke"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        Some(self.built.fingerprint())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<(), Self::Found>> {
        // An image already published passed before it left: no engine is
        // asked.
        let mut published = Vec::new();
        for image in &self.built.images {
            match self.survey.published(cx, &image.eval).await? {
                Some(digest) => published.push(format!("{}{digest}", image.label())),
                None => break,
            }
        }
        if published.len() == self.built.images.len() {
            return Ok(Check::Done(Done::new(
                format!("already published as {}", published.join("; ")),
                (),
            )));
        }
        let (run, skipped) = native(self.built);
        if run.is_empty() {
            return Ok(Check::Done(Done::new(
                format!(
                    "skipped: no image for this machine's system to run here ({} would need emulation)",
                    skipped.join(", ")
                ),
                (),
            )));
        }
        match Self::pick(cx).await? {
            Pick::Skip(why) => Ok(Check::Done(Done::new(why, ()))),
            Pick::Use(engine) => Ok(Check::Todo(
                "run the image as a job container".into(),
                (engine, run, skipped),
            )),
        }
    }

    fn plan(&self, cx: &Ctx, (engine, run, _): &Self::Found) -> Vec<String> {
        run.iter()
            .filter_map(|i| self.built.images.get(*i))
            .flat_map(|image| {
                let archive = PathBuf::from(image.eval.out_path.as_str());
                smoke::plan(engine, &archive, &cx.cfg.smoke.checks)
            })
            .collect()
    }

    async fn dry_run(
        &mut self,
        cx: &mut Ctx,
        (engine, _, skipped): Self::Found,
    ) -> miette::Result<Done<()>> {
        let mut note = format!(
            "would run {} check(s) in {}: {}",
            cx.cfg.smoke.checks.len(),
            engine.name(),
            cx.cfg.smoke.checks.join("; ")
        );
        if !skipped.is_empty() {
            note.push_str(&format!(
                " (not {}: not this machine's system)",
                skipped.join(", ")
            ));
        }
        Ok(Done::new(note, ()))
    }

    async fn run(
        &mut self,
        cx: &mut Ctx,
        (engine, run, skipped): Self::Found,
    ) -> miette::Result<Done<()>> {
        let mut notes = Vec::new();
        for i in run {
            let Some(image) = self.built.images.get_mut(i) else {
                continue;
            };
            // podman and docker read gzip too.
            let archive = image.readable_archive(cx).await?;
            // The name the archive carries (dockerTools: `nixos:DATE`) is
            // left in the engine as it was before.
            let names = archive::repo_tags(&archive)?;
            let passed = smoke::run(
                &cx.runner,
                &engine,
                &archive,
                names.first().map(String::as_str),
                &cx.cfg.smoke.checks,
            )
            .await?;
            notes.push(format!(
                "{}{} check(s) passed in a {} job container",
                image.label(),
                passed.checks,
                passed.engine
            ));
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "skipped {}: not this machine's system",
                skipped.join(", ")
            ));
        }
        Ok(Done::new(notes.join("; "), ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::build::Image;
    use crate::store::NixPath;
    use crate::tool::nix::Evaluated;

    fn image(system: Option<&str>, hash: char) -> Image {
        let hash: String = std::iter::repeat_n(hash, 32).collect();
        Image::new(
            system.map(|s| s.parse().expect("system")),
            Evaluated {
                drv_path: NixPath::parse(&format!("/nix/store/{hash}-image.drv")).expect("drv"),
                out_path: NixPath::parse(&format!("/nix/store/{hash}-image.tar")).expect("out"),
            },
        )
    }

    #[test]
    fn only_this_machines_system_runs_and_the_others_are_named() {
        let host = System::host().expect("a Linux system runnerctl knows");
        let other = if host.as_str() == "aarch64-linux" {
            "x86_64-linux"
        } else {
            "aarch64-linux"
        };
        let built = Built {
            images: vec![image(Some(other), 'a'), image(Some(host.as_str()), 'b')],
        };
        assert_eq!(native(&built), (vec![1], vec![other.to_string()]));
        // Without --system the one image is this machine's.
        let single = Built {
            images: vec![image(None, 'c')],
        };
        assert_eq!(native(&single), (vec![0], Vec::<String>::new()));
    }
}
