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

use std::path::{Path, PathBuf};

use super::tags::{self, all_tags, written_tags};
use super::{Check, Done, Stage};
use crate::image::archive;
use crate::image::destination::{clean_cache, Missing, Pushed, Upload};
use crate::image::reference::Tag;
use crate::pipeline::Ctx;
use crate::progress::{Event, PushEvent};
use crate::state::{self, ImageRecord, Outputs};

pub struct Push;

impl Push {
    fn outputs(cx: &Ctx, digest: &str) -> Outputs {
        Outputs {
            digest: Some(digest.to_string()),
            tags: written_tags(cx),
            out_path: cx.eval.as_ref().map(|e| e.out_path.to_string()),
            ..Outputs::default()
        }
    }

    /// Record the digest as this run's and as the out path's image.
    fn remember(cx: &mut Ctx, digest: &str) {
        cx.digest = Some(digest.to_string());
        if let Some(eval) = &cx.eval {
            cx.state.images.insert(
                eval.out_path.to_string(),
                ImageRecord {
                    image: cx.cfg.image.to_string(),
                    digest: digest.to_string(),
                    tags: written_tags(cx),
                    pushed_at: state::now(),
                },
            );
        }
    }

    /// The uncompressed docker-archive for the out path.
    async fn archive(cx: &mut Ctx) -> miette::Result<(PathBuf, String)> {
        let eval = cx.eval.clone().ok_or(Missing {
            what: "the out path",
        })?;
        let hash = eval.out_path.hash_part();
        if let Some(archive) = &cx.archive {
            return Ok((archive.clone(), hash));
        }
        let out = Path::new(eval.out_path.as_str());
        let archive = archive::prepare(&cx.runner, out, &hash, &cx.cfg.cache_dir()).await?;
        cx.archive = Some(archive.clone());
        Ok((archive, hash))
    }
}

impl Stage for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        cx.eval.as_ref().map(|e| e.out_path.to_string())
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        let states = tags::states(cx).await?;
        let Some(digest) = tags::known(cx, &states)? else {
            return Ok(Check::Todo("this out path was never pushed".into()));
        };
        if !states.iter().all(|s| s.digest.as_deref() == Some(&digest)) {
            return Ok(Check::Todo(
                "some tags are missing or point elsewhere".into(),
            ));
        }
        for s in &states {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let names: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();
        Self::remember(cx, &digest);
        Ok(Check::Done(
            Done::new(format!("tags {} already at {digest}", names.join(", ")))
                .with(Self::outputs(cx, &digest)),
        ))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let out = cx.eval.as_ref().map(|e| e.out_path.to_string());
        match cx.destination() {
            Ok(d) => d.plan(out.as_deref().unwrap_or("<built image>"), &all_tags(cx)),
            Err(_) => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let tags: Vec<String> = all_tags(cx).iter().map(|t| t.to_string()).collect();
        Ok(format!(
            "would push {} as {}",
            cx.cfg.image,
            tags.join(", ")
        ))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let states = tags::states(cx).await?;
        // From here on the destination changes: ask again next time.
        cx.tag_states = None;
        let known = tags::known(cx, &states)?;
        let found = known.and_then(|d| {
            states
                .iter()
                .find(|s| s.digest.as_deref() == Some(d.as_str()))
        });

        // 1. Get the image there once (or find it there already).
        let pushed = match found {
            Some(s) => Pushed::found(s),
            None => {
                let (archive, name) = Self::archive(cx).await?;
                let upload = Upload {
                    archive: &archive,
                    name: &name,
                    states: &states,
                };
                cx.destination()?.upload(&cx.runner, &upload).await?
            }
        };
        let digest = pushed.digest.clone();
        // Remember the digest as soon as it exists, and save it, so a run
        // killed during the retags resumes with only the missing tags (the
        // rerun's own upload could give another manifest, an OCI one
        // instead of skopeo's docker one, and move the tags already there).
        Self::remember(cx, &digest);
        cx.save()?;

        // 2. Every other tag: a retag, unless it is there already.
        let (skipped, lagging): (Vec<_>, Vec<_>) = states
            .iter()
            .filter(|s| !pushed.tagged.contains(&s.tag))
            .partition(|s| s.digest.as_deref() == Some(&digest));
        for s in &skipped {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let lagging: Vec<Tag> = lagging.into_iter().map(|s| s.tag.clone()).collect();
        cx.destination()?
            .retag_all(cx.reporter(), &pushed, &lagging)?;
        let mut written: Vec<String> = lagging.iter().map(|t| t.to_string()).collect();
        written.sort();
        let mut note = format!("{digest}: {}", pushed.how);
        if !written.is_empty() {
            note.push_str(&format!("; tagged {}", written.join(", ")));
        }
        if !skipped.is_empty() {
            let skipped: Vec<String> = skipped.iter().map(|s| s.tag.to_string()).collect();
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        clean_cache(&cx.cfg.cache_dir());
        Ok(Done::new(note).with(Self::outputs(cx, &digest)))
    }
}
