//! push: send only what the destination lacks (see
//! [`Destination`](crate::image::destination::Destination) for how).
//!
//! - An out path already published (the `nix-<hash>` tag, or the saved
//!   state) is only retagged: nothing is read, compressed or uploaded.
//! - Otherwise the destination gets the image once, reusing the layers it
//!   has; every other tag is a manifest PUT of the same bytes, and tags
//!   already at the digest are skipped.
//! - Temporary files (a decompressed or streamed archive, the layout) are
//!   removed once the push is done.

use super::build::Built;
use super::preflight::Prepared;
use super::tags::Survey;
use super::{Check, Ctx, Done, Stage};
use crate::image::destination::{clean_cache, Pushed as Sent, TagState, Upload};
use crate::image::reference::Tag;
use crate::progress::{Event, PushEvent};
use crate::state::{self, ImageRecord, Outputs};

/// The stage: the built image, and the survey of the destination the
/// stages before it shared.
pub struct Push<'a, 'b> {
    pub prepared: &'a Prepared,
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
}

/// What the push did: the digest the tags point at (none in a dry run).
pub struct Pushed {
    pub digest: Option<String>,
}

impl Push<'_, '_> {
    /// Record the digest as the out path's image, and the stage's result.
    fn done(&self, cx: &mut Ctx, note: String, digest: &str) -> Done<Pushed> {
        self.remember(cx, digest);
        let outputs = Outputs {
            digest: Some(digest.to_string()),
            tags: self.survey.written_tags(&cx.cfg, &self.built.eval),
            out_path: Some(self.built.eval.out_path.to_string()),
            ..Outputs::default()
        };
        let digest = Some(digest.to_string());
        Done::new(note, Pushed { digest }).with(outputs)
    }

    fn remember(&self, cx: &mut Ctx, digest: &str) {
        let tags = self.survey.written_tags(&cx.cfg, &self.built.eval);
        cx.state.images.insert(
            self.built.eval.out_path.to_string(),
            ImageRecord {
                image: cx.cfg.image.to_string(),
                digest: digest.to_string(),
                tags,
                pushed_at: state::now(),
            },
        );
    }
}

impl Stage for Push<'_, '_> {
    type Output = Pushed;
    /// Where the tags point now.
    type Found = Vec<TagState>;

    fn name(&self) -> &'static str {
        "push"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        Some(self.built.eval.out_path.to_string())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Pushed, Vec<TagState>>> {
        let states = self.survey.states(cx, &self.built.eval).await?;
        let Some(digest) = self.survey.known(cx, &self.built.eval, &states) else {
            return Ok(Check::Todo("this out path was never pushed".into(), states));
        };
        if !states.iter().all(|s| s.digest.as_deref() == Some(&digest)) {
            return Ok(Check::Todo(
                "some tags are missing or point elsewhere".into(),
                states,
            ));
        }
        for s in &states {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let names: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();
        let note = format!("tags {} already at {digest}", names.join(", "));
        Ok(Check::Done(self.done(cx, note, &digest)))
    }

    fn plan(&self, cx: &Ctx, _: &Vec<TagState>) -> Vec<String> {
        let tags = self.survey.all_tags(&cx.cfg, &self.built.eval);
        self.prepared.destination.plan(
            &self.prepared.tools,
            self.built.eval.out_path.as_str(),
            &tags,
            cx.cfg.codec,
        )
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: Vec<TagState>) -> miette::Result<Done<Pushed>> {
        let tags: Vec<String> = self
            .survey
            .all_tags(&cx.cfg, &self.built.eval)
            .iter()
            .map(|t| t.to_string())
            .collect();
        let note = format!("would push {} as {}", cx.cfg.image, tags.join(", "));
        Ok(Done::new(note, Pushed { digest: None }))
    }

    async fn run(&mut self, cx: &mut Ctx, states: Vec<TagState>) -> miette::Result<Done<Pushed>> {
        // From here on the destination changes.
        self.survey.forget();
        let known = self.survey.known(cx, &self.built.eval, &states);
        let found = known.and_then(|d| {
            states
                .iter()
                .find(|s| s.digest.as_deref() == Some(d.as_str()))
        });
        let destination = &self.prepared.destination;

        // 1. Get the image there once (or find it there already).
        let sent = match (found, states.first()) {
            (Some(s), _) => Sent::found(s),
            (None, Some(first)) => {
                let archive = self.built.uncompressed_archive(cx).await?;
                let upload = Upload {
                    archive: &archive,
                    first: &first.tag,
                    name: &self.built.eval.out_path.hash_part(),
                    states: &states,
                    codec: cx.cfg.codec,
                };
                destination
                    .upload(&cx.runner, &self.prepared.tools, &upload)
                    .await?
            }
            // Every tag is held back by a rollback: nothing to write.
            (None, None) => return Ok(Done::new("no tag to write", Pushed { digest: None })),
        };
        let digest = sent.digest.clone();
        // Remember the digest as soon as it exists, and save it, so a run
        // killed during the retags resumes with only the missing tags (the
        // rerun's own upload could give another manifest, an OCI one
        // instead of skopeo's docker one, and move the tags already there).
        self.remember(cx, &digest);
        cx.save()?;

        // 2. Every other tag: a retag, unless it is there already.
        let (skipped, lagging): (Vec<_>, Vec<_>) = states
            .iter()
            .filter(|s| !sent.tagged.contains(&s.tag))
            .partition(|s| s.digest.as_deref() == Some(&digest));
        for s in &skipped {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let lagging: Vec<Tag> = lagging.into_iter().map(|s| s.tag.clone()).collect();
        destination.retag_all(cx.reporter(), &sent, &lagging)?;
        let mut written: Vec<String> = lagging.iter().map(|t| t.to_string()).collect();
        written.sort();
        let mut note = format!("{digest}: {}", sent.how);
        if !written.is_empty() {
            note.push_str(&format!("; tagged {}", written.join(", ")));
        }
        if !skipped.is_empty() {
            let skipped: Vec<String> = skipped.iter().map(|s| s.tag.to_string()).collect();
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        clean_cache(&cx.cfg.cache_dir());
        Ok(self.done(cx, note, &digest))
    }
}
