//! push: upload the image once, write every other tag as a manifest-only
//! copy, skip tags already at the digest, and remember the digest under a
//! content-addressed `nix-<hash>` tag.

use std::path::Path;

use super::{Check, Done, Stage};
use crate::image::archive;
use crate::image::reference::{ImageRef, Tag};
use crate::pipeline::{Ctx, Missing};
use crate::progress::{Event, PushEvent};
use crate::state::{self, ImageRecord, Outputs};
use crate::tool::skopeo::{CopyOpts, RETRY_TIMES};

pub struct Push;

/// A tag and the digest it points at now (None: absent).
#[derive(Debug, Clone)]
pub struct TagState {
    pub tag: Tag,
    pub digest: Option<String>,
}

impl Push {
    fn is_registry(cx: &Ctx) -> bool {
        matches!(cx.cfg.image, ImageRef::Docker { .. })
    }

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

    async fn digest_of(cx: &Ctx, tag: &Tag) -> miette::Result<Option<String>> {
        let reference = cx.cfg.image.at_tag(tag);
        Ok(cx
            .skopeo()?
            .digest(
                &cx.runner,
                &reference,
                Self::authfile(cx),
                cx.cfg.tls_verify,
                Self::is_registry(cx),
            )
            .await?)
    }

    /// Where every tag points now, asked once per run (cached in the
    /// context until the push changes it).
    async fn tag_states(cx: &mut Ctx) -> miette::Result<Vec<TagState>> {
        if let Some(states) = &cx.tag_states {
            return Ok(states.clone());
        }
        let mut states = Vec::new();
        for tag in Self::all_tags(cx) {
            let digest = Self::digest_of(cx, &tag).await?;
            states.push(TagState { tag, digest });
        }
        cx.tag_states = Some(states.clone());
        Ok(states)
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

    /// The digest this out path was pushed as: from the state, or from the
    /// registry's `nix-<hash>` tag.
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
        let registry = Self::is_registry(cx);
        CopyOpts {
            authfile: Self::authfile(cx),
            tls_verify: cx.cfg.tls_verify,
            src_is_registry: from_registry && registry,
            dst_is_registry: registry,
            digestfile,
            retry_times: if registry { RETRY_TIMES } else { 0 },
        }
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
        let archive = match &cx.eval {
            Some(eval) => format!("docker-archive:{}", eval.out_path),
            None => "docker-archive:<built image>".to_string(),
        };
        let digestfile = cx.cfg.state_dir.join("digest");
        let mut cmds = vec![skopeo
            .cmd(crate::tool::skopeo::copy_args(
                &archive,
                &cx.cfg.image.at_tag(first),
                &Self::copy_opts(cx, false, Some(&digestfile)),
            ))
            .display()];
        for tag in &tags[1..] {
            cmds.push(
                skopeo
                    .cmd(crate::tool::skopeo::copy_args(
                        &cx.cfg.image.at_tag(first),
                        &cx.cfg.image.at_tag(tag),
                        &Self::copy_opts(cx, true, None),
                    ))
                    .display(),
            );
        }
        cmds
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
        // From here on the registry changes: ask again next time.
        cx.tag_states = None;
        let known = Self::known_digest(cx, &states);
        let skopeo = cx.skopeo()?.clone();

        // The source for the manifest-only copies: a tag already at the
        // known digest, or the one we upload to now.
        let existing = known.as_ref().and_then(|d| {
            states
                .iter()
                .find(|s| s.digest.as_deref() == Some(d.as_str()))
        });
        let (source, digest, uploaded) = match (existing, known.clone()) {
            (Some(s), Some(digest)) => (s.tag.clone(), digest, false),
            _ => {
                let eval = cx.eval.clone().ok_or(Missing {
                    what: "the out path",
                })?;
                let archive = archive::prepare(
                    &cx.runner,
                    Path::new(eval.out_path.as_str()),
                    &eval.out_path.hash_part(),
                    &cx.cfg.cache_dir(),
                )
                .await?;
                cx.archive = Some(archive.clone());
                let first = states
                    .first()
                    .map(|s| s.tag.clone())
                    .ok_or(Missing { what: "a tag" })?;
                state::ensure_dir(&cx.cfg.state_dir).map_err(|source| state::StateError::Io {
                    path: cx.cfg.state_dir.clone(),
                    source,
                })?;
                let digestfile = tempfile::Builder::new()
                    .prefix(".digest-")
                    .tempfile_in(&cx.cfg.state_dir)
                    .map_err(|source| state::StateError::Io {
                        path: cx.cfg.state_dir.clone(),
                        source,
                    })?;
                let src = format!("docker-archive:{}", archive.display());
                skopeo
                    .copy(
                        &cx.runner,
                        &src,
                        &cx.cfg.image.at_tag(&first),
                        &Self::copy_opts(cx, false, Some(digestfile.path())),
                    )
                    .await?;
                let digest = std::fs::read_to_string(digestfile.path())
                    .map(|d| d.trim().to_string())
                    .unwrap_or_default();
                let digest = if digest.starts_with("sha256:") {
                    digest
                } else {
                    Self::digest_of(cx, &first).await?.ok_or(Missing {
                        what: "the pushed digest",
                    })?
                };
                cx.reporter().emit(Event::Push(PushEvent::TagWritten {
                    tag: first.to_string(),
                    skipped: false,
                }));
                (first, digest, true)
            }
        };
        // Remember the digest as soon as it exists, so a resumed run only
        // retags.
        cx.digest = Some(digest.clone());
        Self::remember(cx, &digest);

        let mut written = Vec::new();
        let mut skipped = Vec::new();
        for s in &states {
            if s.tag == source && uploaded {
                written.push(s.tag.to_string());
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
        let mut note = format!("{digest}: ");
        if uploaded {
            note.push_str(&format!("uploaded as {}", source));
        } else {
            note.push_str(&format!("already in the registry as {}", source));
        }
        let retagged: Vec<&String> = written
            .iter()
            .filter(|t| **t != source.to_string())
            .collect();
        if !retagged.is_empty() {
            note.push_str(&format!(
                "; tagged {}",
                retagged
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !skipped.is_empty() {
            note.push_str(&format!("; skipped {} (already there)", skipped.join(", ")));
        }
        Ok(Done::new(note).with(Self::outputs(cx, &digest)))
    }
}
