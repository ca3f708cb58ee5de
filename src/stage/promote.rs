//! promote: move the floating tags to the image a `--hold` run pushed for
//! this checkout's flake.lock. The out path is evaluated, not built; the
//! image is found by its `nix-<hash>` tag; every move is a manifest PUT of
//! the bytes the destination already holds, so no blob is uploaded and no
//! archive is read.

use miette::Diagnostic;
use thiserror::Error;

use std::path::Path;

use super::build::{Built, Image};
use super::preflight::Prepared;
use super::tags::{index_tag, nix_tag};
use super::target::Target;
use super::{Check, Ctx, Done, Stage};
use crate::image::destination::{describe_moves, Manifest, TagMove};
use crate::progress::{Event, PushEvent};
use crate::state::Outputs;

/// The stage: the checkout's flake.lock and its tags.
pub struct Promote<'a> {
    pub prepared: &'a Prepared,
    pub target: &'a Target,
    pub flake: &'a Path,
}

/// The image the floating tags point at now.
pub struct Promoted {
    pub digest: String,
    pub built: Built,
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
pub struct Survey {
    /// The image (with --system, each system's) of this flake.lock.
    built: Built,
    /// The image held for this flake.lock (its `nix-<hash>` tag; with
    /// several systems, the index over them).
    held: Manifest,
    /// The floating tags not at it yet.
    moves: Vec<TagMove>,
    /// Where the candidate tag points, when that is another image.
    stray: Option<String>,
}

impl Promote<'_> {
    /// The held image and the tags that do not point at it yet.
    async fn survey(&self, cx: &Ctx) -> miette::Result<Survey> {
        let mut images = Vec::new();
        for (index, (system, attr)) in cx.cfg.builds().into_iter().enumerate() {
            let eval = self.prepared.eval(cx, self.flake, index, &attr).await?;
            images.push(Image::new(system, eval));
        }
        let content = match images.as_slice() {
            [single] => nix_tag(&single.eval)?,
            several => index_tag(several.iter().map(|i| &i.eval))?,
        };
        let nix_tag = content.to_string();
        let built = Built { images };
        let destination = &self.prepared.destination;
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
        let moves = destination.moves(self.target.tags.iter().map(|t| t.as_str()), &held.digest)?;
        Ok(Survey {
            built,
            held,
            moves,
            stray,
        })
    }

    fn done(&self, note: String, held: &Manifest, built: Built) -> Done<Promoted> {
        let outputs = Outputs {
            digest: Some(held.digest.clone()),
            tags: self.target.tags.iter().map(|t| t.to_string()).collect(),
            out_path: built.images.first().map(|i| i.eval.out_path.to_string()),
            ..Outputs::default()
        };
        Done::new(
            note,
            Promoted {
                digest: held.digest.clone(),
                built,
            },
        )
        .with(outputs)
    }
}

impl Stage for Promote<'_> {
    type Output = Promoted;
    type Found = Survey;

    fn name(&self) -> &'static str {
        "promote"
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Promoted, Survey>> {
        let survey = self.survey(cx).await?;
        if let Some(candidate) = &survey.stray {
            cx.reporter().emit(Event::Warning(format!(
                "{} points at {candidate}, not at this flake.lock's image {}: \
                 a job that tested the candidate tested another image",
                cx.cfg.candidate_tag, survey.held.digest
            )));
        }
        if survey.moves.is_empty() {
            let tags: Vec<String> = self.target.tags.iter().map(|t| t.to_string()).collect();
            let note = format!("{} already at {}", tags.join(", "), survey.held.digest);
            return Ok(Check::Done(self.done(note, &survey.held, survey.built)));
        }
        Ok(Check::Todo(
            describe_moves(&survey.moves, &survey.held.digest),
            survey,
        ))
    }

    fn plan(&self, cx: &Ctx, _: &Survey) -> Vec<String> {
        let destination = &self.prepared.destination;
        self.target
            .tags
            .iter()
            .map(|tag| destination.describe_retag(&cx.cfg.image, tag.as_str(), "nix-<hash>"))
            .collect()
    }

    async fn dry_run(&mut self, _cx: &mut Ctx, survey: Survey) -> miette::Result<Done<Promoted>> {
        let note = format!(
            "would move {}",
            describe_moves(&survey.moves, &survey.held.digest)
        );
        Ok(Done::new(
            note,
            Promoted {
                digest: survey.held.digest,
                built: survey.built,
            },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, survey: Survey) -> miette::Result<Done<Promoted>> {
        let Survey {
            built, held, moves, ..
        } = survey;
        let destination = &self.prepared.destination;
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
        // The floating tags follow flake.lock again.
        cx.state.rollback = None;
        let note = format!("moved {}", describe_moves(&moves, &held.digest));
        Ok(self.done(note, &held, built))
    }
}
