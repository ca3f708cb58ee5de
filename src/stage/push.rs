//! push: send only what the destination lacks (see
//! [`Destination`](crate::image::destination::Destination) for how).
//!
//! - An out path already published (its `nix-<hash>` tag, or the saved
//!   state) is only retagged: nothing is read, compressed or uploaded.
//! - Otherwise the destination gets the image once, reusing the layers it
//!   has; every other tag is a manifest PUT of the same bytes, and tags
//!   already at the digest are skipped.
//! - With several systems, each image goes up under its own `nix-<hash>`
//!   tag first; only when every one of them is there, read back by digest,
//!   does the index over them go up, and only once the index reads back
//!   naming every system do the date and floating tags move to it. A
//!   failure anywhere leaves the floating tags where they were.
//! - Temporary files (a decompressed or streamed archive, the layout) are
//!   removed once the push is done.

use super::build::{Built, Image};
use super::preflight::Prepared;
use super::tags::{index_tag, Survey};
use super::{Check, Ctx, Done, Stage};
use crate::image::destination::index::{self, IndexError};
use crate::image::destination::{clean_cache, Manifest, Pushed as Sent, TagState, Upload};
use crate::image::reference::Tag;
use crate::progress::{Event, PushEvent};
use crate::state::{self, ImageRecord, Outputs};

/// The stage: the built images, and the survey of the destination the
/// stages before it shared.
pub struct Push<'a, 'b> {
    pub prepared: &'a Prepared,
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
}

/// What the push did: the digest the tags point at (the index's, with
/// several systems; none in a dry run), and each system's image.
pub struct Pushed {
    pub digest: Option<String>,
    /// With several systems: each one and its image's digest.
    pub systems: Vec<(String, String)>,
}

/// Several systems' images, found at the destination: the index over
/// them, its content tag, and each system with its image's digest.
struct Indexed {
    tag: Tag,
    index: Manifest,
    systems: Vec<(String, String)>,
}

/// One image got to the destination (or was found there).
struct Published {
    digest: String,
    /// Its manifest, when the push kept the bytes it sent or found.
    manifest: Option<Manifest>,
    /// What happened, for the stage's note.
    note: String,
}

impl Published {
    /// Nothing was written (every tag is held back by a rollback).
    fn nothing(note: &str) -> Published {
        Published {
            digest: String::new(),
            manifest: None,
            note: note.to_string(),
        }
    }
}

impl Push<'_, '_> {
    /// Record `digest` as the image of the out path at `at`.
    fn remember(&self, cx: &mut Ctx, at: usize, digest: &str, tags: &[Tag]) {
        let Some(image) = self.built.images.get(at) else {
            return;
        };
        cx.state.images.insert(
            image.eval.out_path.to_string(),
            ImageRecord {
                image: cx.cfg.image.to_string(),
                digest: digest.to_string(),
                tags: self.survey.written(tags),
                pushed_at: state::now(),
            },
        );
    }

    /// The stage's result, with what the state records.
    fn done(
        &self,
        note: String,
        digest: &str,
        tags: &[Tag],
        systems: Vec<(String, String)>,
    ) -> Done<Pushed> {
        let outputs = Outputs {
            digest: Some(digest.to_string()),
            tags: self.survey.written(tags),
            systems: systems.iter().map(|(s, d)| format!("{s} {d}")).collect(),
            out_path: self
                .built
                .images
                .first()
                .map(|i| i.eval.out_path.to_string()),
            ..Outputs::default()
        };
        let pushed = Pushed {
            digest: Some(digest.to_string()),
            systems,
        };
        Done::new(note, pushed).with(outputs)
    }

    /// Get one image to the destination under the first of `states` (or
    /// find it there), then point the rest of `states` at it.
    async fn publish_image(
        &mut self,
        cx: &mut Ctx,
        at: usize,
        states: &[TagState],
        reuse_from: &[TagState],
    ) -> miette::Result<Published> {
        let image: &mut Image = match self.built.images.get_mut(at) {
            Some(image) => image,
            None => return Ok(Published::nothing("")),
        };
        let known = self.survey.known(cx, &image.eval, states);
        let found = known.and_then(|d| {
            states
                .iter()
                .find(|s| s.digest.as_deref() == Some(d.as_str()))
        });
        let destination = &self.prepared.destination;
        let sent = match (found, states.first()) {
            (Some(s), _) => Sent::found(s),
            (None, Some(first)) => {
                let archive = image.uncompressed_archive(cx).await?;
                let upload = Upload {
                    archive: &archive,
                    first: &first.tag,
                    name: &image.eval.out_path.hash_part(),
                    states,
                    reuse_from,
                    codec: cx.cfg.codec,
                };
                destination
                    .upload(&cx.runner, &self.prepared.tools, &upload)
                    .await?
            }
            // Every tag is held back by a rollback: nothing to write.
            (None, None) => return Ok(Published::nothing("no tag to write")),
        };
        let label = image.label();
        let digest = sent.digest.clone();
        // Remember the digest as soon as it exists, and save it, so a run
        // killed during the retags resumes with only the missing tags (the
        // rerun's own upload could give another manifest, an OCI one
        // instead of skopeo's docker one, and move the tags already there).
        let tags: Vec<Tag> = states.iter().map(|s| s.tag.clone()).collect();
        self.remember(cx, at, &digest, &tags);
        cx.save()?;
        let note = self
            .prepared
            .destination
            .retag_states(cx.reporter(), &sent, states)?;
        Ok(Published {
            note: format!("{label}{digest}: {}{note}", sent.how),
            digest,
            manifest: sent.manifest,
        })
    }

    /// Several systems: the index over their images, from the manifests
    /// the destination holds for them (None: some image is not there yet),
    /// and each system with its image's digest.
    async fn index(&mut self, cx: &Ctx) -> miette::Result<Option<Indexed>> {
        let mut entries = Vec::new();
        let mut systems = Vec::new();
        for image in &self.built.images {
            let tags = self.survey.image_tags(&cx.cfg, &image.eval);
            let states = self.survey.states(cx, &tags).await?;
            let Some(digest) = self.survey.known(cx, &image.eval, &states) else {
                return Ok(None);
            };
            let manifest = match states.iter().find(|s| s.digest.as_deref() == Some(&digest)) {
                Some(TagState {
                    manifest: Some(m), ..
                }) => Manifest::from_bytes(m.clone().into_bytes()),
                _ => return Ok(None),
            };
            let Some(system) = &image.system else {
                return Ok(None);
            };
            entries.push((manifest, system.platform()));
            systems.push((system.to_string(), digest));
        }
        Ok(Some(Indexed {
            tag: index_tag(self.built.images.iter().map(|i| &i.eval))?,
            index: index::build(&entries)?,
            systems,
        }))
    }

    /// Several systems: every image up under its content tag, then the
    /// index, then the date and floating tags.
    async fn run_multi(&mut self, cx: &mut Ctx) -> miette::Result<Done<Pushed>> {
        let mut notes = Vec::new();
        let mut systems = Vec::new();
        let mut entries = Vec::new();
        // What the date and floating tags name now (the last index): its
        // images' layers need not be sent again.
        let current = self.survey.publish_tags(&cx.cfg, None);
        let before = self.survey.states(cx, &current).await?;
        for at in 0..self.built.images.len() {
            let eval = self.built.images[at].eval.clone();
            let tags = self.survey.image_tags(&cx.cfg, &eval);
            let states = self.survey.states(cx, &tags).await?;
            let Published {
                digest,
                manifest,
                note,
            } = self.publish_image(cx, at, &states, &before).await?;
            notes.push(note);
            let image = &self.built.images[at];
            let system = image
                .system
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            // The manifest the push just sent or found (asked for only when
            // the push did not keep its bytes).
            let manifest = match manifest {
                Some(manifest) => manifest,
                None => self
                    .prepared
                    .destination
                    .manifest(&digest)?
                    .ok_or_else(|| IndexError::MissingManifest {
                        platform: system.clone(),
                        digest: digest.clone(),
                        image: cx.cfg.image.to_string(),
                    })?,
            };
            if let Some(s) = &image.system {
                entries.push((manifest, s.platform()));
            }
            systems.push((system, digest));
        }
        // The destination changed: the tags are asked again.
        self.survey.forget();
        let content = index_tag(self.built.images.iter().map(|i| &i.eval))?;
        let index = index::build(&entries)?;
        // The index under its content tag, checked; then the other tags.
        let tags = self.survey.publish_tags(&cx.cfg, Some(content));
        let states = self.survey.states(cx, &tags).await?;
        let destination = &self.prepared.destination;
        let sent = destination.publish_index(cx.reporter(), &index, &systems, &states)?;
        let tail = destination.retag_states(cx.reporter(), &sent, &states)?;
        notes.push(format!("{}: {}{tail}", index.digest, sent.how));
        clean_cache(&cx.cfg.cache_dir());
        Ok(self.done(notes.join("; "), &index.digest, &tags, systems))
    }
}

impl Stage for Push<'_, '_> {
    type Output = Pushed;
    type Found = ();

    fn name(&self) -> &'static str {
        "push"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        Some(self.built.fingerprint())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Pushed, ()>> {
        let (digest, tags, systems) = if self.built.multi() {
            let Some(indexed) = self.index(cx).await? else {
                return Ok(Check::Todo(
                    "some systems' images are not pushed".into(),
                    (),
                ));
            };
            (
                indexed.index.digest,
                self.survey.publish_tags(&cx.cfg, Some(indexed.tag)),
                indexed.systems,
            )
        } else {
            let Some(image) = self.built.images.first() else {
                return Ok(Check::Todo("no image".into(), ()));
            };
            let eval = image.eval.clone();
            let tags = self.survey.image_tags(&cx.cfg, &eval);
            let states = self.survey.states(cx, &tags).await?;
            let Some(digest) = self.survey.known(cx, &eval, &states) else {
                return Ok(Check::Todo("this out path was never pushed".into(), ()));
            };
            (digest, tags, Vec::new())
        };
        let states = self.survey.states(cx, &tags).await?;
        if !states.iter().all(|s| s.digest.as_deref() == Some(&digest)) {
            return Ok(Check::Todo(
                "some tags are missing or point elsewhere".into(),
                (),
            ));
        }
        for s in &states {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: true,
            }));
        }
        let names: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();
        if !self.built.multi() {
            self.remember(cx, 0, &digest, &tags);
        }
        let note = format!("tags {} already at {digest}", names.join(", "));
        Ok(Check::Done(self.done(note, &digest, &tags, systems)))
    }

    fn plan(&self, cx: &Ctx, _: &()) -> Vec<String> {
        let mut plan = Vec::new();
        for image in &self.built.images {
            let tags = self.survey.image_tags(&cx.cfg, &image.eval);
            plan.extend(self.prepared.destination.plan(
                &self.prepared.tools,
                image.eval.out_path.as_str(),
                &tags,
                cx.cfg.codec,
            ));
        }
        if self.built.multi() {
            plan.push(
                "(built in) check each system's manifest by digest, PUT the OCI image index over them, read it back, then move the date and floating tags to it".into(),
            );
        }
        plan
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Pushed>> {
        let tags: Vec<String> = if self.built.multi() {
            let content = index_tag(self.built.images.iter().map(|i| &i.eval)).ok();
            let mut tags: Vec<String> = self
                .built
                .images
                .iter()
                .flat_map(|i| self.survey.image_tags(&cx.cfg, &i.eval))
                .map(|t| t.to_string())
                .collect();
            tags.extend(
                self.survey
                    .publish_tags(&cx.cfg, content)
                    .iter()
                    .map(|t| format!("{t} (index)")),
            );
            tags
        } else {
            self.built
                .images
                .first()
                .map(|i| self.survey.image_tags(&cx.cfg, &i.eval))
                .unwrap_or_default()
                .iter()
                .map(|t| t.to_string())
                .collect()
        };
        let note = format!("would push {} as {}", cx.cfg.image, tags.join(", "));
        Ok(Done::new(
            note,
            Pushed {
                digest: None,
                systems: Vec::new(),
            },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Pushed>> {
        if self.built.multi() {
            return self.run_multi(cx).await;
        }
        let eval = match self.built.images.first() {
            Some(image) => image.eval.clone(),
            None => {
                return Ok(Done::new(
                    "no image",
                    Pushed {
                        digest: None,
                        systems: Vec::new(),
                    },
                ))
            }
        };
        let tags = self.survey.image_tags(&cx.cfg, &eval);
        let states = self.survey.states(cx, &tags).await?;
        // From here on the destination changes.
        self.survey.forget();
        let published = self.publish_image(cx, 0, &states, &[]).await?;
        clean_cache(&cx.cfg.cache_dir());
        Ok(self.done(published.note, &published.digest, &tags, Vec::new()))
    }
}
