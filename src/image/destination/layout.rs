//! The OCI layout destination: a directory whose index.json names the
//! tags. An upload writes the image in place, every tag at once, reusing
//! the blobs the layout already has.

use std::path::PathBuf;

use super::{write_layout, Manifest, Pushed, TagState, Upload};
use crate::digest::sha256_digest;
use crate::image::layout as oci;
use crate::image::reference::{ImageRef, Tag};
use crate::progress::{Event, PushEvent, Reporter};

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// The manifest at a tag or a `sha256:` digest the index lists.
    pub(super) fn manifest(&self, reference: &str) -> Option<Manifest> {
        let dir = &self.dir;
        let by_digest = reference.starts_with("sha256:");
        let digest = if by_digest {
            reference.to_string()
        } else {
            oci::tag_digest(dir, reference)?
        };
        let hex = digest.trim_start_matches("sha256:");
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).ok()?;
        let manifest = Manifest::from_bytes(bytes);
        // A tag names a manifest; a digest may be a layer or a config blob,
        // which is not an image.
        let indexed = !by_digest || oci::has_manifest(dir, &manifest.digest);
        indexed.then_some(manifest)
    }

    /// A blob of the layout by digest (None: absent or not a digest).
    pub(super) fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        std::fs::read(self.dir.join("blobs/sha256").join(hex)).ok()
    }

    pub(super) fn tag_states(&self, tags: &[Tag]) -> Vec<TagState> {
        tags.iter()
            .map(|tag| {
                let manifest = oci::tag_digest(&self.dir, tag.as_str()).and_then(|d| {
                    std::fs::read_to_string(
                        self.dir
                            .join("blobs/sha256")
                            .join(d.trim_start_matches("sha256:")),
                    )
                    .ok()
                });
                TagState {
                    tag: tag.clone(),
                    digest: manifest.as_ref().map(|m| sha256_digest(m.as_bytes())),
                    manifest,
                }
            })
            .collect()
    }

    /// The layout is the destination: write it in place, all tags at once,
    /// reusing its blobs.
    pub(super) fn upload(&self, reporter: &Reporter, up: &Upload) -> miette::Result<Pushed> {
        let mut reuse = oci::ReuseMap::new();
        oci::learn_from_layout(&self.dir, &mut reuse);
        let scanned = oci::Scanned::new(up.archive)?;
        let all: Vec<String> = up.states.iter().map(|s| s.tag.to_string()).collect();
        let written = write_layout(reporter, &scanned, &self.dir, &reuse, &all, up.codec)?;
        for s in up.states {
            reporter.emit(Event::Push(PushEvent::TagWritten {
                tag: s.tag.to_string(),
                skipped: s.digest.as_deref() == Some(written.manifest_digest.as_str()),
            }));
        }
        let how = format!(
            "wrote {} as {}; {} of {} layers reused, {} compressed ({} bytes)",
            ImageRef::Oci {
                dir: self.dir.clone()
            },
            all.join(", "),
            written.reused,
            written.layers,
            written.compressed,
            written.compressed_bytes
        );
        Ok(Pushed {
            digest: written.manifest_digest,
            manifest: Some(Manifest::from_bytes(written.manifest_bytes)),
            how,
            tagged: up.states.iter().map(|s| s.tag.clone()).collect(),
        })
    }

    pub(super) fn plan(&self, out: &str, tags: &[Tag]) -> String {
        format!(
            "(built in) write {out} into the OCI layout {} as {}, reusing the layers it already has",
            self.dir.display(),
            tags.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        )
    }
}
