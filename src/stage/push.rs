//! push: send only what the destination lacks.
//!
//! - An out path already published (the `nix-<hash>` tag, or the saved
//!   state) is only retagged: nothing is read, compressed or uploaded.
//! - Otherwise the image is written as an OCI layout that reuses every
//!   layer the destination already has (matched by diff_id), compressing
//!   only new layers. For an `oci:` destination that layout *is* the
//!   destination; for a registry, skopeo copies it once and asks the
//!   registry before sending each blob.
//! - Every other tag is a manifest-only copy; tags already at the digest
//!   are skipped.

use std::path::{Path, PathBuf};

use super::{Check, Done, Stage};
use crate::image::reference::{ImageRef, Tag};
use crate::image::{archive, layout};
use crate::pipeline::{Ctx, Missing};
use crate::progress::{Event, PushEvent};
use crate::state::{self, ImageRecord, Outputs};
use crate::tool::skopeo::{sha256_digest, CopyOpts, RETRY_TIMES};

pub struct Push;

/// A tag and what it points at now (None: absent).
#[derive(Debug, Clone)]
pub struct TagState {
    pub tag: Tag,
    pub digest: Option<String>,
    pub manifest: Option<String>,
}

impl Push {
    fn authfile(cx: &Ctx) -> Option<&Path> {
        cx.authfile.as_ref().map(|a| a.path())
    }

    /// The content-addressed tag for the out path, if enabled.
    fn nix_tag(cx: &Ctx) -> Option<Tag> {
        if !cx.cfg.nix_tag {
            return None;
        }
        let eval = cx.eval.as_ref()?;
        format!("nix-{}", eval.out_path.hash_part()).parse().ok()
    }

    /// Every tag to write: the requested ones, then the `nix-` tag.
    fn all_tags(cx: &Ctx) -> Vec<Tag> {
        let mut tags = cx.tags.clone();
        if let Some(tag) = Self::nix_tag(cx) {
            tags.push(tag);
        }
        tags
    }

    /// Where every tag points now, asked once per run (cached in the
    /// context until the push changes it).
    async fn tag_states(cx: &mut Ctx) -> miette::Result<Vec<TagState>> {
        if let Some(states) = &cx.tag_states {
            return Ok(states.clone());
        }
        let skopeo = cx.skopeo()?.clone();
        let mut states = Vec::new();
        for tag in Self::all_tags(cx) {
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
                        .manifest(
                            &cx.runner,
                            &cx.cfg.image.at_tag(&tag),
                            Self::authfile(cx),
                            cx.cfg.tls_verify,
                            true,
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
        cx.tag_states = Some(states.clone());
        Ok(states)
    }

    /// The digest this out path was pushed as: from the state, or from the
    /// destination's `nix-<hash>` tag.
    fn known_digest(cx: &Ctx, states: &[TagState]) -> Option<String> {
        let out = cx.eval.as_ref()?.out_path.to_string();
        if let Some(record) = cx.state.images.get(&out) {
            if record.image == cx.cfg.image.to_string() {
                return Some(record.digest.clone());
            }
        }
        let nix_tag = Self::nix_tag(cx)?;
        states
            .iter()
            .find(|s| s.tag == nix_tag)
            .and_then(|s| s.digest.clone())
    }

    /// The digest this out path is already published as, if the
    /// destination has it under some tag: then nothing needs building,
    /// verifying or uploading, at most retagging.
    pub async fn published(cx: &mut Ctx) -> miette::Result<Option<String>> {
        if cx.eval.is_none() {
            return Ok(None);
        }
        let states = Self::tag_states(cx).await?;
        Ok(Self::known_digest(cx, &states).filter(|d| {
            states
                .iter()
                .any(|s| s.digest.as_deref() == Some(d.as_str()))
        }))
    }

    fn outputs(cx: &Ctx, digest: &str) -> Outputs {
        Outputs {
            digest: Some(digest.to_string()),
            tags: Self::all_tags(cx).iter().map(|t| t.to_string()).collect(),
            out_path: cx.eval.as_ref().map(|e| e.out_path.to_string()),
            ..Outputs::default()
        }
    }

    fn remember(cx: &mut Ctx, digest: &str) {
        if let Some(eval) = &cx.eval {
            cx.state.images.insert(
                eval.out_path.to_string(),
                ImageRecord {
                    image: cx.cfg.image.to_string(),
                    digest: digest.to_string(),
                    tags: Self::all_tags(cx).iter().map(|t| t.to_string()).collect(),
                    pushed_at: state::now(),
                },
            );
        }
    }

    fn copy_opts<'a>(
        cx: &'a Ctx,
        from_registry: bool,
        digestfile: Option<&'a Path>,
    ) -> CopyOpts<'a> {
        CopyOpts {
            authfile: Self::authfile(cx),
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
    async fn registry_reuse(cx: &Ctx, states: &[TagState]) -> miette::Result<layout::ReuseMap> {
        let skopeo = cx.skopeo()?;
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
                .config(
                    &cx.runner,
                    &cx.cfg.image.at_tag(&s.tag),
                    Self::authfile(cx),
                    cx.cfg.tls_verify,
                    true,
                )
                .await?;
            if let Some(config) = config {
                layout::learn(&mut map, manifest.as_bytes(), config.as_bytes());
            }
        }
        Ok(map)
    }

    /// Write the image as an OCI layout at `dir`, reusing `reuse`.
    async fn write_layout(
        cx: &mut Ctx,
        dir: &Path,
        reuse: &layout::ReuseMap,
        tags: &[String],
    ) -> miette::Result<layout::Written> {
        let eval = cx.eval.clone().ok_or(Missing {
            what: "the out path",
        })?;
        let archive = match &cx.archive {
            Some(a) => a.clone(),
            None => {
                archive::prepare(
                    &cx.runner,
                    Path::new(eval.out_path.as_str()),
                    &eval.out_path.hash_part(),
                    &cx.cfg.cache_dir(),
                )
                .await?
            }
        };
        cx.archive = Some(archive.clone());
        let reporter = cx.reporter().clone();
        let total = layout::layer_count(&archive).unwrap_or(0);
        reporter.emit(Event::Push(PushEvent::LayersPlanned { total }));
        let on_layer = move |skipped: bool, bytes: u64| {
            reporter.emit(Event::Push(PushEvent::LayerChecked { skipped, bytes }));
        };
        Ok(layout::write(&archive, dir, reuse, tags, &on_layer)?)
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
        let states = Self::tag_states(cx).await?;
        let Some(digest) = Self::known_digest(cx, &states) else {
            return Ok(Check::Todo("this out path was never pushed".into()));
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
            cx.digest = Some(digest.clone());
            Self::remember(cx, &digest);
            return Ok(Check::Done(
                Done::new(format!("tags {} already at {digest}", names.join(", ")))
                    .with(Self::outputs(cx, &digest)),
            ));
        }
        Ok(Check::Todo(
            "some tags are missing or point elsewhere".into(),
        ))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let Some(skopeo) = &cx.skopeo else {
            return Vec::new();
        };
        let tags = Self::all_tags(cx);
        let Some(first) = tags.first() else {
            return Vec::new();
        };
        let out = cx
            .eval
            .as_ref()
            .map(|e| e.out_path.to_string())
            .unwrap_or_else(|| "<built image>".into());
        match &cx.cfg.image {
            ImageRef::Oci { dir } => vec![format!(
                "(built in) write {out} into the OCI layout {} as {}, reusing the layers it already has",
                dir.display(),
                tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
            )],
            ImageRef::Docker { .. } => {
                let layout_dir = cx.cfg.cache_dir().join("layout");
                let mut cmds = vec![
                    format!("(built in) write {out} as an OCI layout in {}, reusing layers the registry has", layout_dir.display()),
                    skopeo
                        .cmd(crate::tool::skopeo::copy_args(
                            &format!("oci:{}:{first}", layout_dir.display()),
                            &cx.cfg.image.at_tag(first),
                            &Self::copy_opts(cx, false, Some(&cx.cfg.state_dir.join("digest"))),
                        ))
                        .display(),
                ];
                for tag in &tags[1..] {
                    cmds.push(
                        skopeo
                            .cmd(crate::tool::skopeo::copy_args(&cx.cfg.image.at_tag(first), &cx.cfg.image.at_tag(tag), &Self::copy_opts(cx, true, None)))
                            .display(),
                    );
                }
                cmds
            }
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let tags: Vec<String> = Self::all_tags(cx).iter().map(|t| t.to_string()).collect();
        Ok(format!(
            "would push {} as {}",
            cx.cfg.image,
            tags.join(", ")
        ))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let states = Self::tag_states(cx).await?;
        // From here on the destination changes: ask again next time.
        cx.tag_states = None;
        let known = Self::known_digest(cx, &states);
        let skopeo = cx.skopeo()?.clone();
        let all: Vec<String> = states.iter().map(|s| s.tag.to_string()).collect();

        // 1. Get the image there once (or find it there already).
        let existing = known.as_ref().and_then(|d| {
            states
                .iter()
                .find(|s| s.digest.as_deref() == Some(d.as_str()))
        });
        let (source, digest, how) = match (existing, known.clone(), &cx.cfg.image) {
            (Some(s), Some(digest), _) => {
                (s.tag.clone(), digest, format!("already there as {}", s.tag))
            }
            (_, _, ImageRef::Oci { dir }) => {
                // The layout is the destination: write it in place, all tags
                // at once, reusing its blobs.
                let dir = dir.clone();
                let mut reuse = layout::ReuseMap::new();
                layout::learn_from_layout(&dir, &mut reuse);
                let written = Self::write_layout(cx, &dir, &reuse, &all).await?;
                for s in &states {
                    cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                        tag: s.tag.to_string(),
                        skipped: s.digest.as_deref() == Some(written.manifest_digest.as_str()),
                    }));
                }
                cx.digest = Some(written.manifest_digest.clone());
                Self::remember(cx, &written.manifest_digest);
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
                return Ok(Done::new(note).with(Self::outputs(cx, &written.manifest_digest)));
            }
            (_, _, ImageRef::Docker { .. }) => {
                let first = states
                    .first()
                    .map(|s| s.tag.clone())
                    .ok_or(Missing { what: "a tag" })?;
                let reuse = Self::registry_reuse(cx, &states).await?;
                let eval = cx.eval.clone().ok_or(Missing {
                    what: "the out path",
                })?;
                let layout_dir: PathBuf = cx
                    .cfg
                    .cache_dir()
                    .join(format!("layout-{}", eval.out_path.hash_part()));
                let written =
                    Self::write_layout(cx, &layout_dir, &reuse, &[first.to_string()]).await?;
                let digest = written.manifest_digest.clone();
                let how = format!(
                    "uploaded as {first}; {} of {} layers already in the registry, {} new ({} bytes compressed)",
                    written.reused, written.layers, written.compressed, written.compressed_bytes
                );
                if states
                    .iter()
                    .any(|s| s.tag == first && s.digest.as_deref() == Some(digest.as_str()))
                {
                    (first, digest, "already there".to_string())
                } else {
                    let digestfile = tempfile::Builder::new()
                        .prefix(".digest-")
                        .tempfile_in(&cx.cfg.state_dir)
                        .map_err(|source| state::StateError::Io {
                            path: cx.cfg.state_dir.clone(),
                            source,
                        })?;
                    let src = format!("oci:{}:{first}", layout_dir.display());
                    skopeo
                        .copy(
                            &cx.runner,
                            &src,
                            &cx.cfg.image.at_tag(&first),
                            &Self::copy_opts(cx, false, Some(digestfile.path())),
                        )
                        .await?;
                    let pushed = std::fs::read_to_string(digestfile.path())
                        .map(|d| d.trim().to_string())
                        .unwrap_or_default();
                    if pushed.starts_with("sha256:") && pushed != digest {
                        cx.reporter().info(format!(
                            "warning: the registry reports {pushed}, the layout has {digest}"
                        ));
                    }
                    cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                        tag: first.to_string(),
                        skipped: false,
                    }));
                    // The local layout is no longer needed.
                    let _ = std::fs::remove_dir_all(&layout_dir);
                    (first, digest, how)
                }
            }
        };
        // Remember the digest as soon as it exists, so a resumed run only
        // retags.
        cx.digest = Some(digest.clone());
        Self::remember(cx, &digest);

        // 2. Every other tag: a manifest-only copy. One at a time: the
        // registry's filesystem storage rewrites the digest's revision link
        // on every manifest PUT, and concurrent retags of one digest race
        // there (seen as sporadic 500s).
        let mut skipped = Vec::new();
        let mut written = Vec::new();
        for s in &states {
            if s.tag == source {
                continue;
            }
            if s.digest.as_deref() == Some(digest.as_str()) {
                skipped.push(s.tag.to_string());
                cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                    tag: s.tag.to_string(),
                    skipped: true,
                }));
                continue;
            }
            skopeo
                .copy(
                    &cx.runner,
                    &cx.cfg.image.at_tag(&source),
                    &cx.cfg.image.at_tag(&s.tag),
                    &Self::copy_opts(cx, true, None),
                )
                .await?;
            cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: false,
            }));
            written.push(s.tag.to_string());
        }
        written.sort();
        let mut note = format!("{digest}: {how}");
        if !written.is_empty() {
            note.push_str(&format!("; tagged {}", written.join(", ")));
        }
        if !skipped.is_empty() {
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        Ok(Done::new(note).with(Self::outputs(cx, &digest)))
    }
}
