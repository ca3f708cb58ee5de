//! The registry destination: runnerctl's registry client for manifests
//! (one per run, so it authenticates once) and for the blobs.
//!
//! An upload compresses the layers the repository lacks (matched by
//! diff_id against the images at the run's tags) on every core and streams
//! each to the registry as it is compressed ([`upload::push`]); the config,
//! the manifest and the first tag follow. skopeo only reads what the tags
//! point at, and uploads when the user gave a trust policy (--policy),
//! which only skopeo applies (see skopeo_copy.rs).

use std::sync::Arc;

use super::{Manifest, Pushed, TagState, Tools, Upload};
use crate::digest::sha256_digest;
use crate::image::codec::Codec;
use crate::image::layout as oci;
use crate::image::reference::{ImageRef, Tag};
use crate::image::registry::Registry as RegistryClient;
use crate::image::upload;
use crate::progress::{Event, PushEvent};
use crate::tool::Runner;

/// The upload's journal in the state dir: the blobs an interrupted upload
/// sent, for the next run to find with `HEAD` instead of sending again.
pub const JOURNAL: &str = "upload-journal";

pub struct Registry {
    pub(super) client: Arc<RegistryClient>,
    pub(super) image: ImageRef,
    pub(super) tls_verify: bool,
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

    /// What the registry's current images teach about layers: diff_id →
    /// compressed blob already in this repository.
    pub(super) async fn reuse(
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
        let reuse = self.reuse(runner, tools, up.states).await?;
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
                chunk: 0,
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
}
