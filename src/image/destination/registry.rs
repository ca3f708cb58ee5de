//! The registry destination: runnerctl's registry client for manifests
//! and blobs (one per run, so it authenticates once).
//!
//! An upload compresses the layers the repository lacks (matched by
//! diff_id against the images at the run's tags) on every core and streams
//! each to the registry as it is compressed ([`upload::push`]); the config,
//! the manifest and the first tag follow. skopeo only reads what the tags
//! point at, and uploads when the user gave a trust policy (--policy),
//! which only skopeo applies: then the image goes as an OCI layout in the
//! cache that reuses every layer the repository has, or as the archive
//! itself when it has none of them.

use std::path::Path;
use std::sync::Arc;

use oci_spec::image::ImageManifest;

use super::{index, write_layout, Manifest, NotThere, Pushed, TagState, Tools, Upload};
use crate::digest::sha256_digest;
use crate::image::codec::Codec;
use crate::image::layout as oci;
use crate::image::reference::{ImageRef, Tag};
use crate::image::registry::Registry as RegistryClient;
use crate::image::upload;
use crate::progress::{Event, PushEvent};
use crate::state::StateError;
use crate::tool::skopeo::{CopyOpts, RETRY_TIMES};
use crate::tool::Runner;

/// The upload's journal in the state dir: the blobs an interrupted upload
/// sent, for the next run to find with `HEAD` instead of sending again.
pub const JOURNAL: &str = "upload-journal";

pub struct Registry {
    pub(super) client: Arc<RegistryClient>,
    pub(super) image: ImageRef,
    tls_verify: bool,
}

impl Registry {
    /// The registry client, for what only prune and status ask of a
    /// registry (every tag, in pages; a tag's digest; a config blob).
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }
}

/// How the image reaches skopeo.
struct Source {
    /// skopeo's source reference.
    src: String,
    /// The manifest runnerctl wrote (None: skopeo makes it).
    manifest: Option<Vec<u8>>,
    how: String,
    /// The temporary layout to remove afterwards.
    layout_dir: Option<std::path::PathBuf>,
    /// New layers written and their compressed bytes (from a layout).
    new: Option<(usize, u64)>,
}

impl Registry {
    pub(super) fn new(client: Arc<RegistryClient>, image: ImageRef, tls_verify: bool) -> Registry {
        Registry {
            client,
            image,
            tls_verify,
        }
    }

    pub(super) fn manifest(&self, reference: &str) -> miette::Result<Option<Manifest>> {
        Ok(self
            .client
            .manifest(reference)?
            .map(|(bytes, media_type)| Manifest::new(bytes, media_type)))
    }

    /// The options of every `skopeo copy` to the registry: from a local
    /// source, keeping the digest unless skopeo makes the manifest.
    fn copy_opts<'a>(
        &self,
        tools: &'a Tools,
        preserve: bool,
        digestfile: &'a Path,
    ) -> CopyOpts<'a> {
        CopyOpts {
            authfile: tools.authfile(),
            tls_verify: self.tls_verify,
            src_is_registry: false,
            dst_is_registry: true,
            digestfile: Some(digestfile),
            retry_times: RETRY_TIMES,
            preserve_digests: preserve,
        }
    }

    /// skopeo's source for an OCI layout at `dir` under `tag`.
    fn layout_src(dir: &Path, tag: &Tag) -> String {
        format!("oci:{}:{tag}", dir.display())
    }

    pub(super) async fn tag_states(
        &self,
        runner: &Runner,
        tools: &Tools,
        tags: &[Tag],
    ) -> miette::Result<Vec<TagState>> {
        let mut states = Vec::new();
        for tag in tags {
            let manifest = tools
                .skopeo
                .manifest(
                    runner,
                    &self.image.at_tag(tag),
                    tools.authfile(),
                    self.tls_verify,
                )
                .await?;
            states.push(TagState {
                tag: tag.clone(),
                digest: manifest.as_ref().map(|m| sha256_digest(m.as_bytes())),
                manifest,
            });
        }
        Ok(states)
    }

    /// Learn the layers of the image manifest `digest` (its config read by
    /// runnerctl's client).
    fn learn_by_digest(&self, map: &mut oci::ReuseMap, digest: &str) -> miette::Result<()> {
        let Some((manifest, _)) = self.client.manifest(digest)? else {
            return Ok(());
        };
        let Ok(parsed) = serde_json::from_slice::<ImageManifest>(&manifest) else {
            return Ok(());
        };
        let config_digest = parsed.config().digest().to_string();
        if let Some(config) = self.client.blob(&config_digest, 4 * 1024 * 1024)? {
            oci::learn(map, &manifest, &config);
        }
        Ok(())
    }

    /// What the registry's current images teach about layers: diff_id →
    /// compressed blob already in this repository.
    async fn reuse(
        &self,
        runner: &Runner,
        tools: &Tools,
        states: &[TagState],
    ) -> miette::Result<oci::ReuseMap> {
        let mut map = oci::ReuseMap::new();
        let mut seen = Vec::new();
        for s in states {
            let (Some(digest), Some(manifest)) = (&s.digest, &s.manifest) else {
                continue;
            };
            if seen.contains(digest) {
                continue;
            }
            seen.push(digest.clone());
            // An index: what each of its images has (another system's
            // layers are no use, but asking is cheaper than uploading).
            let children = index::listed(manifest.as_bytes());
            if !children.is_empty() {
                for child in children {
                    if !seen.contains(&child) {
                        self.learn_by_digest(&mut map, &child)?;
                        seen.push(child);
                    }
                }
                continue;
            }
            let config = tools
                .skopeo
                .config(
                    runner,
                    &self.image.at_tag(&s.tag),
                    tools.authfile(),
                    self.tls_verify,
                )
                .await?;
            if let Some(config) = config {
                oci::learn(&mut map, manifest.as_bytes(), config.as_bytes());
            }
        }
        Ok(map)
    }

    /// Upload the image to the first tag with runnerctl's own pipeline
    /// ([`upload::push`]): the layers the repository lacks are compressed
    /// on every core and streamed up as they are compressed; the config
    /// and the manifest follow. Layers it has are reused by diff_id; blobs
    /// a killed earlier upload sent are found through the journal in the
    /// state dir.
    pub(super) async fn upload(
        &self,
        runner: &Runner,
        tools: &Tools,
        up: &Upload<'_>,
    ) -> miette::Result<Pushed> {
        if tools.skopeo.user_policy {
            return self.upload_with_skopeo(runner, tools, up).await;
        }
        let reporter = runner.reporter();
        let first = up.first.clone();
        let scanned = oci::Scanned::new(up.archive)?;
        let known: Vec<TagState> = up.states.iter().chain(up.reuse_from).cloned().collect();
        let reuse = self.reuse(runner, tools, &known).await?;
        reporter.emit(Event::Push(PushEvent::LayersPlanned {
            total: scanned.layer_count(),
        }));
        let journal = tools.state_dir.join(JOURNAL);
        let current = up
            .states
            .iter()
            .find(|s| s.tag == first)
            .and_then(|s| s.digest.clone());
        // On a thread of its own: the runtime stays free to see a signal
        // (the pipeline stops on SIGTERM or SIGINT without waiting for the
        // upload to end).
        let (client, codec, tag) = (self.client.clone(), up.codec, first.to_string());
        let progress = reporter.clone();
        let task = tokio::task::spawn_blocking(move || {
            let plan = upload::Plan {
                scanned: &scanned,
                reuse: &reuse,
                codec,
                journal: Some(&journal),
                workers: 0,
                current: current.as_deref(),
            };
            let on_layer = |skipped: bool, bytes: u64| {
                progress.emit(Event::Push(PushEvent::LayerChecked { skipped, bytes }));
            };
            upload::push(&client, &plan, &tag, &on_layer).map(|done| (done, scanned))
        });
        let (done, scanned) = task.await.map_err(|e| upload::UploadError::Read {
            path: up.archive.to_path_buf(),
            index: 0,
            source: std::io::Error::other(format!("the upload thread ended: {e}")),
        })??;
        let config = scanned.config().len() as u64;
        let blobs = done.sent + usize::from(done.config_sent) + usize::from(done.manifest_put);
        let bytes = done.sent_bytes
            + if done.config_sent { config } else { 0 }
            + if done.manifest_put {
                done.manifest_bytes.len() as u64
            } else {
                0
            };
        reporter.emit(Event::Push(PushEvent::Uploaded { blobs, bytes }));
        reporter.emit(Event::Push(PushEvent::TagWritten {
            tag: first.to_string(),
            skipped: !done.manifest_put,
        }));
        let how = if done.manifest_put {
            let mut how = format!(
                "uploaded as {first} ({}); {} of {} layers already in the registry, {} new ({} bytes compressed)",
                up.codec.key(),
                done.reused,
                done.layers,
                done.sent,
                done.sent_bytes
            );
            if done.resumed > 0 {
                how.push_str(&format!(
                    ", {} sent by an interrupted push before",
                    done.resumed
                ));
            }
            if done.retried > 0 {
                how.push_str(&format!(", {} retried once", done.retried));
            }
            how
        } else {
            format!("{first} already there")
        };
        Ok(Pushed {
            digest: done.manifest_digest,
            manifest: Some(Manifest::from_bytes(done.manifest_bytes)),
            how,
            tagged: vec![first],
        })
    }

    /// The upload through skopeo, kept for a user's trust policy
    /// (--policy): runnerctl does not evaluate containers policies, skopeo
    /// does. Through an OCI layout that reuses what the repository has,
    /// or, when it has none of the layers, straight from the archive
    /// (skopeo compresses while it uploads).
    async fn upload_with_skopeo(
        &self,
        runner: &Runner,
        tools: &Tools,
        up: &Upload<'_>,
    ) -> miette::Result<Pushed> {
        let reporter = runner.reporter();
        let first = up.first.clone();
        let scanned = oci::Scanned::new(up.archive)?;
        let known: Vec<TagState> = up.states.iter().chain(up.reuse_from).cloned().collect();
        let reuse = self.reuse(runner, tools, &known).await?;
        let reusable = scanned
            .diff_ids()
            .filter(|d| reuse.contains_key(*d))
            .count();
        let digestfile = tempfile::Builder::new()
            .prefix(".digest-")
            .tempfile_in(&tools.state_dir)
            .map_err(|source| StateError::Io {
                path: tools.state_dir.clone(),
                source,
            })?;
        let source = if reusable == 0 {
            reporter.emit(Event::Push(PushEvent::LayersPlanned {
                total: scanned.layer_count(),
            }));
            Source {
                src: format!("docker-archive:{}", up.archive.display()),
                manifest: None,
                how: format!(
                    "uploaded as {first}; none of its {} layers were in the registry yet",
                    scanned.layer_count()
                ),
                layout_dir: None,
                new: None,
            }
        } else {
            let dir = tools.cache_dir.join(format!("layout-{}", up.name));
            let written = write_layout(
                reporter,
                &scanned,
                &dir,
                &reuse,
                &[first.to_string()],
                up.codec,
            )?;
            if up.states.iter().any(|s| {
                s.tag == first && s.digest.as_deref() == Some(written.manifest_digest.as_str())
            }) {
                return Ok(Pushed {
                    digest: written.manifest_digest,
                    manifest: Some(Manifest::from_bytes(written.manifest_bytes)),
                    how: format!("{first} already there"),
                    tagged: vec![first],
                });
            }
            Source {
                src: Self::layout_src(&dir, &first),
                how: format!(
                    "uploaded as {first}; {} of {} layers already in the registry, {} new ({} bytes compressed)",
                    written.reused, written.layers, written.compressed, written.compressed_bytes
                ),
                manifest: Some(written.manifest_bytes),
                layout_dir: Some(dir),
                new: Some((written.compressed, written.compressed_bytes)),
            }
        };
        // From the layout the manifest must arrive as written; from the
        // archive skopeo makes it.
        let opts = self.copy_opts(tools, source.layout_dir.is_some(), digestfile.path());
        // What skopeo may have to send: the new layers, or the whole archive
        // (it compresses while it uploads); its timeout allows for that.
        let upload_bytes = match source.new {
            Some((_, bytes)) => bytes,
            None => std::fs::metadata(up.archive).map(|m| m.len()).unwrap_or(0),
        };
        let dst = self.image.at_tag(&first);
        tools
            .skopeo
            .copy(runner, &source.src, &dst, &opts, upload_bytes)
            .await?;
        let reported = std::fs::read_to_string(digestfile.path())
            .map(|d| d.trim().to_string())
            .unwrap_or_default();
        let digest = match &source.manifest {
            Some(bytes) => sha256_digest(bytes),
            None if reported.starts_with("sha256:") => reported.clone(),
            None => self
                .manifest(first.as_str())?
                .map(|m| m.digest)
                .ok_or_else(|| NotThere {
                    reference: first.to_string(),
                })?,
        };
        // What went over the wire: the new layers, the config and the
        // manifest. From the archive, skopeo made the manifest: fetch it
        // (the retags need its bytes anyway).
        let (manifest, blobs, bytes) = match source.manifest {
            Some(bytes) => {
                let config = serde_json::from_slice::<ImageManifest>(&bytes)
                    .map(|m| m.config().size())
                    .unwrap_or(0);
                let new = source.new.unwrap_or((0, 0));
                let total = new.1 + config + bytes.len() as u64;
                (Some(bytes), new.0 + 1, total)
            }
            None => {
                let fetched = self.client.manifest(&digest)?.map(|(b, _)| b);
                let (blobs, bytes) = fetched
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<ImageManifest>(b).ok())
                    .map(|m| {
                        let layers: u64 = m.layers().iter().map(|l| l.size()).sum();
                        (m.layers().len() + 1, layers + m.config().size())
                    })
                    .unwrap_or((0, 0));
                let total = bytes + fetched.as_ref().map(|b| b.len() as u64).unwrap_or(0);
                (fetched, blobs, total)
            }
        };
        reporter.emit(Event::Push(PushEvent::Uploaded { blobs, bytes }));
        if reported.starts_with("sha256:") && reported != digest {
            reporter.info(format!(
                "warning: the registry reports {reported}, runnerctl computed {digest}"
            ));
        }
        if let Some(dir) = source.layout_dir {
            // The local layout is no longer needed.
            let _ = std::fs::remove_dir_all(dir);
        }
        reporter.emit(Event::Push(PushEvent::TagWritten {
            tag: first.to_string(),
            skipped: false,
        }));
        Ok(Pushed {
            digest,
            manifest: manifest.map(Manifest::from_bytes),
            how: source.how,
            tagged: vec![first],
        })
    }

    /// The upload's lines for the plan.
    pub(super) fn plan(&self, tools: &Tools, out: &str, first: &Tag, codec: Codec) -> Vec<String> {
        if tools.skopeo.user_policy {
            return self.skopeo_plan(tools, out, first);
        }
        vec![format!(
            "(built in) push {out} to {} as {first}: the layers the registry lacks compressed ({}) on every core and uploaded as they are compressed, then the config and the manifest",
            self.image,
            codec.key()
        )]
    }

    fn skopeo_plan(&self, tools: &Tools, out: &str, first: &Tag) -> Vec<String> {
        let layout_dir = tools.cache_dir.join("layout");
        let digestfile = tools.state_dir.join("digest");
        let copy = tools
            .skopeo
            .copy_cmd(
                &Self::layout_src(&layout_dir, first),
                &self.image.at_tag(first),
                &self.copy_opts(tools, true, &digestfile),
                0,
            )
            .display();
        vec![
            format!(
                "(built in) write {out} as an OCI layout in {}, reusing the layers the registry has (if it has none: skopeo copy docker-archive:… instead)",
                layout_dir.display()
            ),
            copy,
        ]
    }
}
