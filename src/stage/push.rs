//! push: send only what the destination lacks.
//!
//! - An out path already published (the `nix-<hash>` tag, or the saved
//!   state) is only retagged: nothing is read, compressed or uploaded.
//! - Otherwise the image is written as an OCI layout that reuses every
//!   layer the destination already has (matched by diff_id), compressing
//!   only new layers. For an `oci:` destination that layout *is* the
//!   destination; for a registry, skopeo copies it once and asks the
//!   registry before sending each blob.
//!   When the repository has none of the layers, the archive goes to skopeo
//!   directly, which compresses while it uploads.
//! - Every other tag is a manifest PUT of the same bytes; tags already at
//!   the digest are skipped.
//! - Temporary files (a decompressed or streamed archive, the layout) are
//!   removed once the push is done.

use std::path::Path;

use super::build::Built;
use super::preflight::Prepared;
use super::target::Target;
use super::{Check, Ctx, Done, Stage};
use crate::config::Config;
use crate::digest::sha256_digest;
use crate::image::destination::{Destination, Manifest};
use crate::image::layout;
use crate::image::reference::{ImageRef, Tag};
use crate::image::registry::Registry as RegistryClient;
use crate::progress::{Event, PushEvent};
use crate::rollback::{self, ROLLED_BACK};
use crate::state::{self, ImageRecord, Outputs};
use crate::tool::nix::Evaluated;
use crate::tool::skopeo::{config_args, inspect_args, CopyOpts, RETRY_TIMES};

/// The stage: the built image, the tags it gets, and the survey of the
/// destination the stages before it shared.
pub struct Push<'a, 'b> {
    pub prepared: &'a Prepared,
    pub target: &'a Target,
    pub built: &'a mut Built,
    pub survey: &'a mut Survey<'b>,
}

/// What the push did: the digest the tags point at (none in a dry run).
pub struct Pushed {
    pub digest: Option<String>,
}

/// Where this run's tags point at the destination, asked once per run and
/// shared by the stages that ask whether the image is already published
/// (build, verify, smoke) and by push, until push changes it.
pub struct Survey<'a> {
    prepared: &'a Prepared,
    target: &'a Target,
    states: Option<Vec<TagState>>,
    /// Floating tags a rollback holds where they are.
    held_back: Vec<Tag>,
}

/// A tag and what it points at now (None: absent).
#[derive(Debug, Clone)]
pub struct TagState {
    pub tag: Tag,
    pub digest: Option<String>,
    pub manifest: Option<String>,
}

impl<'a> Survey<'a> {
    pub fn new(prepared: &'a Prepared, target: &'a Target) -> Survey<'a> {
        Survey {
            prepared,
            target,
            states: None,
            held_back: Vec::new(),
        }
    }

    /// The floating tags a rollback holds where they are (known once the
    /// tags were asked).
    pub fn held_back(&self) -> &[Tag] {
        &self.held_back
    }

    /// The content-addressed tag for the out path, if enabled.
    fn nix_tag(cfg: &Config, eval: &Evaluated) -> Option<Tag> {
        if !cfg.nix_tag {
            return None;
        }
        format!("nix-{}", eval.out_path.hash_part()).parse().ok()
    }

    /// Every tag to write, in the order they are written: the
    /// content-addressed `nix-` tag first, then the tags that name this
    /// date, the floating ones (`latest`, `unstable`) last. A push that
    /// fails midway then never leaves a floating tag alone on a new image.
    fn all_tags(&self, cfg: &Config, eval: &Evaluated) -> Vec<Tag> {
        let mut tags: Vec<Tag> = Self::nix_tag(cfg, eval).into_iter().collect();
        if cfg.hold {
            // Held: the floating tags wait for `runnerctl promote`.
            tags.push(cfg.candidate_tag.clone());
            return tags;
        }
        let (fixed, floating): (Vec<Tag>, Vec<Tag>) = self
            .target
            .tags
            .iter()
            .cloned()
            .partition(|t| self.target.dated(t));
        tags.extend(fixed);
        tags.extend(floating);
        tags
    }

    /// The tags this push points at the image: all of them but those a
    /// rollback holds.
    fn written_tags(&self, cfg: &Config, eval: &Evaluated) -> Vec<String> {
        self.all_tags(cfg, eval)
            .iter()
            .filter(|t| !self.held_back.contains(t))
            .map(|t| t.to_string())
            .collect()
    }

    /// Where every tag points now, asked once per run (kept until the push
    /// changes it).
    async fn tag_states(&mut self, cx: &Ctx, eval: &Evaluated) -> miette::Result<Vec<TagState>> {
        if let Some(states) = &self.states {
            return Ok(states.clone());
        }
        let skopeo = &self.prepared.skopeo;
        let authfile = self.prepared.authfile.as_ref().map(|a| a.path());
        let mut states = Vec::new();
        for tag in self.all_tags(&cx.cfg, eval) {
            let manifest = match &cx.cfg.image {
                ImageRef::Oci { dir } => layout::tag_digest(dir, tag.as_str()).and_then(|d| {
                    std::fs::read_to_string(
                        dir.join("blobs/sha256")
                            .join(d.trim_start_matches("sha256:")),
                    )
                    .ok()
                }),
                ImageRef::Docker { .. } => {
                    skopeo
                        .inspect(
                            &cx.runner,
                            inspect_args(
                                &cx.cfg.image.at_tag(&tag),
                                authfile,
                                cx.cfg.tls_verify,
                                true,
                            ),
                        )
                        .await?
                }
            };
            let digest = manifest.as_ref().map(|m| sha256_digest(m.as_bytes()));
            states.push(TagState {
                tag,
                digest,
                manifest,
            });
        }
        let held = self.held(&cx.cfg, &states)?;
        if let Some(first) = held.first() {
            if self.held_back.is_empty() {
                let names: Vec<String> = held.iter().map(|s| s.tag.to_string()).collect();
                let digest = first.digest.as_deref().unwrap_or_default();
                cx.reporter()
                    .emit(Event::Warning(rollback::held_warning(&names, digest)));
            }
            self.held_back = held.iter().map(|s| s.tag.clone()).collect();
        }
        let states: Vec<TagState> = states
            .into_iter()
            .filter(|s| !self.held_back.contains(&s.tag))
            .collect();
        self.states = Some(states.clone());
        Ok(states)
    }

    /// The floating tags a rollback holds (see [`rollback::held`]); none
    /// with --hold, which moves no floating tag anyway.
    fn held(&self, cfg: &Config, states: &[TagState]) -> miette::Result<Vec<TagState>> {
        if cfg.hold {
            return Ok(Vec::new());
        }
        let marker = self
            .prepared
            .destination
            .manifest(ROLLED_BACK)?
            .map(|m| m.digest);
        let floating = states
            .iter()
            .filter(|s| self.target.tags.contains(&s.tag) && !self.target.dated(&s.tag));
        Ok(rollback::held(marker.as_deref(), floating, |s| {
            s.digest.as_deref()
        }))
    }

    /// The digest this out path was pushed as: from the state, or from the
    /// destination's `nix-<hash>` tag.
    fn known_digest(cx: &Ctx, eval: &Evaluated, states: &[TagState]) -> Option<String> {
        let out = eval.out_path.to_string();
        if let Some(record) = cx.state.images.get(&out) {
            if record.image == cx.cfg.image.to_string() {
                return Some(record.digest.clone());
            }
        }
        let nix_tag = Self::nix_tag(&cx.cfg, eval)?;
        states
            .iter()
            .find(|s| s.tag == nix_tag)
            .and_then(|s| s.digest.clone())
    }

    /// The digest this out path is already published as, if the
    /// destination has it under some tag: then nothing needs building,
    /// verifying or uploading, at most retagging.
    pub async fn published(
        &mut self,
        cx: &Ctx,
        eval: &Evaluated,
    ) -> miette::Result<Option<String>> {
        let states = self.tag_states(cx, eval).await?;
        Ok(Self::known_digest(cx, eval, &states).filter(|d| {
            states
                .iter()
                .any(|s| s.digest.as_deref() == Some(d.as_str()))
        }))
    }
}

impl Push<'_, '_> {
    fn eval(&self) -> &Evaluated {
        &self.built.eval
    }

    fn authfile(&self) -> Option<&Path> {
        self.prepared.authfile.as_ref().map(|a| a.path())
    }

    fn outputs(&self, cx: &Ctx, digest: &str) -> Outputs {
        Outputs {
            digest: Some(digest.to_string()),
            tags: self.survey.written_tags(&cx.cfg, self.eval()),
            out_path: Some(self.eval().out_path.to_string()),
            ..Outputs::default()
        }
    }

    fn remember(&self, cx: &mut Ctx, digest: &str) {
        let tags = self.survey.written_tags(&cx.cfg, self.eval());
        cx.state.images.insert(
            self.eval().out_path.to_string(),
            ImageRecord {
                image: cx.cfg.image.to_string(),
                digest: digest.to_string(),
                tags,
                pushed_at: state::now(),
            },
        );
    }

    fn done(&self, cx: &Ctx, note: String, digest: &str) -> Done<Pushed> {
        Done::new(
            note,
            Pushed {
                digest: Some(digest.to_string()),
            },
        )
        .with(self.outputs(cx, digest))
    }

    fn copy_opts<'a>(
        &'a self,
        cx: &Ctx,
        from_registry: bool,
        digestfile: Option<&'a Path>,
    ) -> CopyOpts<'a> {
        CopyOpts {
            authfile: self.authfile(),
            tls_verify: cx.cfg.tls_verify,
            src_is_registry: from_registry,
            dst_is_registry: true,
            digestfile,
            retry_times: RETRY_TIMES,
            preserve_digests: true,
        }
    }

    /// What the registry's current images teach about layers: diff_id →
    /// compressed blob already in this repository.
    async fn registry_reuse(
        &self,
        cx: &Ctx,
        states: &[TagState],
    ) -> miette::Result<layout::ReuseMap> {
        let skopeo = &self.prepared.skopeo;
        let mut map = layout::ReuseMap::new();
        let mut seen = Vec::new();
        for s in states {
            let (Some(digest), Some(manifest)) = (&s.digest, &s.manifest) else {
                continue;
            };
            if seen.contains(digest) {
                continue;
            }
            seen.push(digest.clone());
            let config = skopeo
                .inspect(
                    &cx.runner,
                    config_args(
                        &cx.cfg.image.at_tag(&s.tag),
                        self.authfile(),
                        cx.cfg.tls_verify,
                        true,
                    ),
                )
                .await?;
            if let Some(config) = config {
                layout::learn(&mut map, manifest.as_bytes(), config.as_bytes());
            }
        }
        Ok(map)
    }

    /// Write the image as an OCI layout at `dir`, reusing `reuse`.
    fn write_layout(
        cx: &Ctx,
        archive: &layout::Scanned,
        dir: &Path,
        reuse: &layout::ReuseMap,
        tags: &[String],
    ) -> miette::Result<layout::Written> {
        let reporter = cx.reporter().clone();
        reporter.emit(Event::Push(PushEvent::LayersPlanned {
            total: archive.layer_count(),
        }));
        let on_layer = move |skipped: bool, bytes: u64| {
            reporter.emit(Event::Push(PushEvent::LayerChecked { skipped, bytes }));
        };
        Ok(layout::write(archive, dir, reuse, tags, &on_layer)?)
    }

    /// Upload the image to `first` on the registry: through an OCI layout
    /// that reuses what the repository has, or, when it has none of the
    /// layers, straight from the archive (skopeo compresses while it
    /// uploads). Returns the digest, the manifest and what happened.
    async fn upload(
        &mut self,
        cx: &Ctx,
        client: &RegistryClient,
        states: &[TagState],
        first: &Tag,
    ) -> miette::Result<(String, Option<Vec<u8>>, String)> {
        let skopeo = &self.prepared.skopeo;
        let archive = self.built.uncompressed_archive(cx).await?;
        let scanned = layout::Scanned::new(&archive)?;
        let reuse = self.registry_reuse(cx, states).await?;
        let reusable = scanned
            .diff_ids()
            .filter(|d| reuse.contains_key(*d))
            .count();
        let digestfile = tempfile::Builder::new()
            .prefix(".digest-")
            .tempfile_in(&cx.cfg.state_dir)
            .map_err(|source| state::StateError::Io {
                path: cx.cfg.state_dir.clone(),
                source,
            })?;
        let dst = cx.cfg.image.at_tag(first);
        let mut written_new: Option<(usize, u64)> = None;
        let (src, manifest, how, layout_dir) = if reusable == 0 {
            cx.reporter().emit(Event::Push(PushEvent::LayersPlanned {
                total: scanned.layer_count(),
            }));
            let how = format!(
                "uploaded as {first}; none of its {} layers were in the registry yet",
                scanned.layer_count()
            );
            (
                format!("docker-archive:{}", archive.display()),
                None,
                how,
                None,
            )
        } else {
            let dir = cx
                .cfg
                .cache_dir()
                .join(format!("layout-{}", self.eval().out_path.hash_part()));
            let written = Self::write_layout(cx, &scanned, &dir, &reuse, &[first.to_string()])?;
            let how = format!(
                "uploaded as {first}; {} of {} layers already in the registry, {} new ({} bytes compressed)",
                written.reused, written.layers, written.compressed, written.compressed_bytes
            );
            written_new = Some((written.compressed, written.compressed_bytes));
            if states.iter().any(|s| {
                s.tag == *first && s.digest.as_deref() == Some(written.manifest_digest.as_str())
            }) {
                return Ok((
                    written.manifest_digest,
                    Some(written.manifest_bytes),
                    format!("{first} already there"),
                ));
            }
            (
                format!("oci:{}:{first}", dir.display()),
                Some(written.manifest_bytes),
                how,
                Some(dir),
            )
        };
        let mut opts = self.copy_opts(cx, false, Some(digestfile.path()));
        // From the layout the manifest must arrive as written; from the
        // archive skopeo makes it.
        opts.preserve_digests = layout_dir.is_some();
        // What skopeo may have to send: the new layers, or the whole archive
        // (it compresses while it uploads); its timeout allows for that.
        let upload_bytes = match written_new {
            Some((_, bytes)) => bytes,
            None => std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0),
        };
        skopeo
            .copy(&cx.runner, &src, &dst, &opts, upload_bytes)
            .await?;
        let reported = std::fs::read_to_string(digestfile.path())
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        let digest = match &manifest {
            Some(bytes) => sha256_digest(bytes),
            None if reported.starts_with("sha256:") => reported.clone(),
            None => self
                .prepared
                .destination
                .manifest(first.as_str())?
                .map(|m| m.digest)
                .ok_or_else(|| NotThere {
                    tag: first.to_string(),
                })?,
        };
        // What went over the wire: the new layers, the config and the
        // manifest. From the archive, skopeo made the manifest: fetch it
        // (the retags need its bytes anyway).
        let (manifest, blobs, bytes) = match (manifest, &cx.cfg.image) {
            (Some(bytes), _) => {
                let config = serde_json::from_slice::<oci_spec::image::ImageManifest>(&bytes)
                    .map(|m| m.config().size())
                    .unwrap_or(0);
                let new = written_new.unwrap_or((0, 0));
                (
                    Some(bytes.clone()),
                    new.0 + 1,
                    new.1 + config + bytes.len() as u64,
                )
            }
            (None, ImageRef::Docker { .. }) => {
                let fetched = client.manifest(&digest)?.map(|(b, _)| b);
                let (blobs, bytes) = fetched
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<oci_spec::image::ImageManifest>(b).ok())
                    .map(|m| {
                        let layers: u64 = m.layers().iter().map(|l| l.size()).sum();
                        (m.layers().len() + 1, layers + m.config().size())
                    })
                    .unwrap_or((0, 0));
                let total = bytes + fetched.as_ref().map(|b| b.len() as u64).unwrap_or(0);
                (fetched, blobs, total)
            }
            (None, ImageRef::Oci { .. }) => (None, 0, 0),
        };
        cx.reporter()
            .emit(Event::Push(PushEvent::Uploaded { blobs, bytes }));
        if reported.starts_with("sha256:") && reported != digest {
            cx.reporter().info(format!(
                "warning: the registry reports {reported}, runnerctl computed {digest}"
            ));
        }
        if let Some(dir) = layout_dir {
            // The local layout is no longer needed.
            let _ = std::fs::remove_dir_all(dir);
        }
        cx.reporter().emit(Event::Push(PushEvent::TagWritten {
            tag: first.to_string(),
            skipped: false,
        }));
        Ok((digest, manifest, how))
    }

    /// Drop what the cache holds for pushed images: decompressed or
    /// streamed archives and layouts. A later run that needs them again
    /// makes them again.
    fn clean_cache(cx: &Ctx) {
        let Ok(entries) = std::fs::read_dir(cx.cfg.cache_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with("-image.tar") {
                let _ = std::fs::remove_file(entry.path());
            } else if name.starts_with("layout-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
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
        Some(self.eval().out_path.to_string())
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Pushed, Vec<TagState>>> {
        let states = self.survey.tag_states(cx, &self.built.eval).await?;
        let Some(digest) = Survey::known_digest(cx, self.eval(), &states) else {
            return Ok(Check::Todo("this out path was never pushed".into(), states));
        };
        if states
            .iter()
            .all(|s| s.digest.as_deref() == Some(digest.as_str()))
        {
            for s in &states {
                cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                    tag: s.tag.to_string(),
                    skipped: true,
                }));
            }
            let names: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();
            self.remember(cx, &digest);
            let note = format!("tags {} already at {digest}", names.join(", "));
            return Ok(Check::Done(self.done(cx, note, &digest)));
        }
        Ok(Check::Todo(
            "some tags are missing or point elsewhere".into(),
            states,
        ))
    }

    fn plan(&self, cx: &Ctx, _: &Vec<TagState>) -> Vec<String> {
        let skopeo = &self.prepared.skopeo;
        let tags = self.survey.all_tags(&cx.cfg, self.eval());
        let Some(first) = tags.first() else {
            return Vec::new();
        };
        let out = self.eval().out_path.to_string();
        match &cx.cfg.image {
            ImageRef::Oci { dir } => vec![format!(
                "(built in) write {out} into the OCI layout {} as {}, reusing the layers it already has",
                dir.display(),
                tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
            )],
            ImageRef::Docker { .. } => {
                let layout_dir = cx.cfg.cache_dir().join("layout");
                let digestfile = cx.cfg.state_dir.join("digest");
                let mut cmds = vec![
                    format!(
                        "(built in) write {out} as an OCI layout in {}, reusing the layers the registry has (if it has none: skopeo copy docker-archive:… instead)",
                        layout_dir.display()
                    ),
                    skopeo
                        .copy_cmd(
                            &format!("oci:{}:{first}", layout_dir.display()),
                            &cx.cfg.image.at_tag(first),
                            &self.copy_opts(cx, false, Some(&digestfile)),
                            0,
                        )
                        .display(),
                ];
                let destination = &self.prepared.destination;
                for tag in &tags[1..] {
                    cmds.push(format!(
                        "(built in) {}  (the same manifest: a retag, no blob is sent)",
                        destination.describe_retag(&cx.cfg.image, tag.as_str(), "DIGEST")
                    ));
                }
                cmds
            }
        }
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: Vec<TagState>) -> miette::Result<Done<Pushed>> {
        let tags: Vec<String> = self
            .survey
            .all_tags(&cx.cfg, self.eval())
            .iter()
            .map(|t| t.to_string())
            .collect();
        Ok(Done::new(
            format!("would push {} as {}", cx.cfg.image, tags.join(", ")),
            Pushed { digest: None },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, states: Vec<TagState>) -> miette::Result<Done<Pushed>> {
        // From here on the destination changes: ask again next time.
        self.survey.states = None;
        let known = Survey::known_digest(cx, self.eval(), &states);
        let all: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();

        // 1. Get the image there once (or find it there already).
        let existing = known
            .as_ref()
            .and_then(|d| {
                states
                    .iter()
                    .find(|s| s.digest.as_deref() == Some(d.as_str()))
            })
            .cloned();
        let destination = &self.prepared.destination;
        let (source, digest, manifest, how) = match (existing, destination) {
            (Some(s), _) => {
                let digest = s.digest.clone().unwrap_or_default();
                let how = format!("already there as {}", s.tag);
                (s.tag, digest, s.manifest.map(String::into_bytes), how)
            }
            (None, Destination::Layout { dir }) => {
                // The layout is the destination: write it in place, all tags
                // at once, reusing its blobs.
                let dir = dir.clone();
                let mut reuse = layout::ReuseMap::new();
                layout::learn_from_layout(&dir, &mut reuse);
                let archive = self.built.uncompressed_archive(cx).await?;
                let scanned = layout::Scanned::new(&archive)?;
                let written = Self::write_layout(cx, &scanned, &dir, &reuse, &all)?;
                for s in &states {
                    cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                        tag: s.tag.to_string(),
                        skipped: s.digest.as_deref() == Some(written.manifest_digest.as_str()),
                    }));
                }
                self.remember(cx, &written.manifest_digest);
                let note = format!(
                    "{}: wrote {} as {}; {} of {} layers reused, {} compressed ({} bytes)",
                    written.manifest_digest,
                    cx.cfg.image,
                    all.join(", "),
                    written.reused,
                    written.layers,
                    written.compressed,
                    written.compressed_bytes
                );
                Self::clean_cache(cx);
                return Ok(self.done(cx, note, &written.manifest_digest));
            }
            (None, Destination::Registry { client }) => {
                let client = client.clone();
                let Some(first) = states.first().map(|s| s.tag.clone()) else {
                    return Ok(Done::new("no tag to push", Pushed { digest: None }));
                };
                let (digest, manifest, how) = self.upload(cx, &client, &states, &first).await?;
                (first, digest, manifest, how)
            }
        };
        // Remember the digest as soon as it exists, and save it, so a run
        // killed during the retags resumes with only the missing tags (the
        // rerun's own upload could give another manifest, an OCI one
        // instead of skopeo's docker one, and move the tags already there).
        self.remember(cx, &digest);
        cx.save()?;

        // 2. Every other tag: a manifest-only PUT of the same bytes (the
        // registry checks that it has every blob). One at a time: the
        // registry's filesystem storage rewrites the digest's revision link
        // on every manifest PUT, and concurrent writes race there.
        let mut skipped = Vec::new();
        let mut written = Vec::new();
        let lagging: Vec<&TagState> = states
            .iter()
            .filter(|s| s.tag != source)
            .filter(|s| {
                let there = s.digest.as_deref() == Some(digest.as_str());
                if there {
                    skipped.push(s.tag.to_string());
                }
                !there
            })
            .collect();
        for tag in &skipped {
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: tag.clone(),
                skipped: true,
            }));
        }
        if !lagging.is_empty() {
            let destination = &self.prepared.destination;
            let manifest = match manifest {
                Some(bytes) => Manifest::from_bytes(bytes),
                None => destination.manifest(&digest)?.ok_or_else(|| NotThere {
                    tag: digest.clone(),
                })?,
            };
            for s in lagging {
                cx.reporter().emit(Event::Command {
                    command: destination.describe_retag(&cx.cfg.image, s.tag.as_str(), &digest),
                });
                destination.retag(s.tag.as_str(), &manifest)?;
                cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                    tag: s.tag.to_string(),
                    skipped: false,
                }));
                written.push(s.tag.to_string());
            }
        }
        written.sort();
        let mut note = format!("{digest}: {how}");
        if !written.is_empty() {
            note.push_str(&format!("; tagged {}", written.join(", ")));
        }
        if !skipped.is_empty() {
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        Self::clean_cache(cx);
        Ok(self.done(cx, note, &digest))
    }
}

/// The registry did not show the manifest runnerctl just pushed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("the registry does not show {tag} right after the push")]
#[diagnostic(
    code(runnerctl::push::not_there),
    help("the registry accepted the upload but does not serve it back (a proxy or cache in between?); run again: the push resumes")
)]
pub struct NotThere {
    pub tag: String,
}
