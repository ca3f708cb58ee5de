//! promote: move the floating tags to the image a `--hold` run pushed for
//! this checkout's flake.lock. The out path is evaluated, not built; the
//! image is found by its `nix-<hash>` tag; every move is a manifest PUT of
//! the bytes the destination already holds, so no blob is uploaded and no
//! archive is read.

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::image::destination::{describe_moves, Manifest, TagMove};
use crate::pipeline::{Ctx, Missing};
use crate::progress::{Event, PushEvent};
use crate::state::Outputs;

/// The stage; it keeps what its check found at the destination, so the
/// move asks the registry no second time.
#[derive(Default)]
pub struct Promote {
    surveyed: std::cell::RefCell<Option<Survey>>,
}

#[derive(Debug, Error, Diagnostic)]
#[error("this flake.lock's image is not at the destination; run `runnerctl release --hold` first (no tag {tag} in {image})")]
#[diagnostic(
    code(runnerctl::promote::not_held),
    help("promote moves tags to an image that is already pushed: `runnerctl release --hold` builds, checks and pushes it as {tag} and the candidate tag, without moving the floating tags")
)]
pub struct NotHeld {
    pub tag: String,
    pub image: String,
}

/// What promote found at the destination.
#[derive(Clone)]
struct Survey {
    /// The image held for this flake.lock (its `nix-<hash>` tag).
    held: Manifest,
    /// The floating tags not at it yet.
    moves: Vec<TagMove>,
    /// Where the candidate tag points, when that is another image.
    stray: Option<String>,
}

impl Promote {
    /// The held image and the tags that do not point at it yet.
    async fn survey(cx: &mut Ctx) -> miette::Result<Survey> {
        if cx.eval.is_none() {
            let nix = cx.nix()?.clone();
            let flake = cx.eval_flake();
            let eval = nix.eval(&cx.runner, &flake, &cx.cfg.attr).await?;
            cx.eval = Some(eval);
        }
        let eval = cx.eval.as_ref().ok_or(Missing {
            what: "the out path",
        })?;
        let nix_tag = format!("nix-{}", eval.out_path.hash_part());
        let destination = cx.destination()?;
        let held = destination.manifest(&nix_tag)?.ok_or_else(|| NotHeld {
            tag: nix_tag.clone(),
            image: cx.cfg.image.to_string(),
        })?;
        // The candidate is what a test job ran: promoting another image
        // publishes one that job did not see.
        let candidate = destination
            .manifest(cx.cfg.candidate_tag.as_str())?
            .map(|m| m.digest);
        let stray = candidate.filter(|d| *d != held.digest);
        let moves = destination.moves(cx.tags.iter().map(|t| t.as_str()), &held.digest)?;
        Ok(Survey { held, moves, stray })
    }

    /// What the check found (or survey now).
    async fn surveyed(&self, cx: &mut Ctx) -> miette::Result<Survey> {
        let found = self.surveyed.borrow_mut().take();
        match found {
            Some(survey) => Ok(survey),
            None => Self::survey(cx).await,
        }
    }

    fn outputs(cx: &Ctx, digest: &str) -> Outputs {
        Outputs {
            digest: Some(digest.to_string()),
            tags: cx.tags.iter().map(|t| t.to_string()).collect(),
            out_path: cx.eval.as_ref().map(|e| e.out_path.to_string()),
            ..Outputs::default()
        }
    }
}

impl Stage for Promote {
    fn name(&self) -> &'static str {
        "promote"
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        let survey = Self::survey(cx).await?;
        *self.surveyed.borrow_mut() = Some(survey.clone());
        let Survey { held, moves, stray } = survey;
        if let Some(candidate) = stray {
            cx.reporter().emit(Event::Warning(format!(
                "{} points at {candidate}, not at this flake.lock's image {}: \
                 a job that tested the candidate tested another image",
                cx.cfg.candidate_tag, held.digest
            )));
        }
        if moves.is_empty() {
            cx.digest = Some(held.digest.clone());
            let tags: Vec<String> = cx.tags.iter().map(|t| t.to_string()).collect();
            return Ok(Check::Done(
                Done::new(format!("{} already at {}", tags.join(", "), held.digest))
                    .with(Self::outputs(cx, &held.digest)),
            ));
        }
        Ok(Check::Todo(describe_moves(&moves, &held.digest)))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let Ok(destination) = cx.destination() else {
            return Vec::new();
        };
        cx.tags
            .iter()
            .map(|tag| destination.describe_retag(&cx.cfg.image, tag.as_str(), "nix-<hash>"))
            .collect()
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let Survey { held, moves, .. } = self.surveyed(cx).await?;
        Ok(format!(
            "would move {}",
            describe_moves(&moves, &held.digest)
        ))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let Survey { held, moves, .. } = self.surveyed(cx).await?;
        let destination = cx.destination()?;
        for m in &moves {
            cx.reporter().emit(Event::Command {
                command: destination.describe_retag(&cx.cfg.image, &m.tag, &held.digest),
            });
            destination.retag(&m.tag, &held)?;
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: m.tag.clone(),
                skipped: false,
            }));
        }
        cx.digest = Some(held.digest.clone());
        // The floating tags follow flake.lock again.
        cx.state.rollback = None;
        Ok(
            Done::new(format!("moved {}", describe_moves(&moves, &held.digest)))
                .with(Self::outputs(cx, &held.digest)),
        )
    }
}
