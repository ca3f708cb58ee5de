//! The registry upload through skopeo, kept for a user's trust policy
//! (--policy): runnerctl does not evaluate containers policies, skopeo
//! does, so with one the image goes through `skopeo copy`, which applies
//! it. Without one, [`Registry::upload`] sends the blobs itself.
//!
//! The image is written as an OCI layout in the cache that reuses every
//! layer the repository already has (matched by diff_id), compressing
//! only new layers; skopeo copies it once and asks the registry before
//! sending each blob. When the repository has none of the layers, the
//! archive goes to skopeo directly, which compresses while it uploads.

use std::path::Path;

use super::registry::Registry;
use super::{write_layout, Manifest, NotThere, Pushed, Tools, Upload};
use crate::digest::sha256_digest;
use crate::image::layout as oci;
use crate::image::reference::Tag;
use crate::progress::{Event, PushEvent};
use crate::state::StateError;
use crate::tool::skopeo::{CopyOpts, RETRY_TIMES};
use crate::tool::Runner;

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

    /// Upload the image to the first tag: through an OCI layout that reuses
    /// what the repository has, or, when it has none of the layers,
    /// straight from the archive (skopeo compresses while it uploads).
    pub(super) async fn upload_with_skopeo(
        &self,
        runner: &Runner,
        tools: &Tools,
        up: &Upload<'_>,
    ) -> miette::Result<Pushed> {
        let reporter = runner.reporter();
        let first = up.first.clone();
        let scanned = oci::Scanned::new(up.archive)?;
        let reuse = self.reuse(runner, tools, up.states).await?;
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
                let config = serde_json::from_slice::<oci::Manifest>(&bytes)
                    .map(|m| m.config.size)
                    .unwrap_or(0);
                let new = source.new.unwrap_or((0, 0));
                let total = new.1 + config + bytes.len() as u64;
                (Some(bytes), new.0 + 1, total)
            }
            None => {
                let fetched = self.client.manifest(&digest)?.map(|(b, _)| b);
                let (blobs, bytes) = fetched
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<oci::Manifest>(b).ok())
                    .map(|m| {
                        let layers: u64 = m.layers.iter().map(|l| l.size).sum();
                        (m.layers.len() + 1, layers + m.config.size)
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

    /// The upload's lines for the plan: the layout write and the `skopeo
    /// copy` [`upload`](Self::upload) runs.
    pub(super) fn skopeo_plan(&self, tools: &Tools, out: &str, first: &Tag) -> Vec<String> {
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
