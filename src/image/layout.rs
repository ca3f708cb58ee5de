//! Writing an image into an OCI layout without redoing known work.
//!
//! The docker-archive's config lists every layer's `diff_id` (the sha256 of
//! the uncompressed tar). An image already at the destination maps its
//! diff_ids to compressed blobs, in the same order as its manifest's
//! `layers`. A layer whose diff_id is already known needs neither
//! compressing nor uploading: its descriptor is reused and its blob is not
//! even written locally (skopeo asks the registry for it and finds it
//! there). Only new layers are compressed, in parallel, as streams.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::codec::Codec;
use crate::digest::{hex, sha256_digest};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub use super::codec::OCI_LAYER_GZIP;
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Error, Diagnostic)]
pub enum LayoutError {
    #[error("could not read the image archive {}: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::layout::archive),
        help("the build output is not a docker-archive runnerctl understands; check --attr")
    )]
    Archive { path: PathBuf, reason: String },

    #[error("{} cannot be the OCI layout to write: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::layout::not_a_layout),
        help("pass --image oci:DIR with a DIR that is absent, empty or an OCI layout (it has an `oci-layout` file); nothing was written")
    )]
    NotALayout { path: PathBuf, reason: String },

    #[error("the OCI layout's index is damaged: {reason}")]
    #[diagnostic(
        code(runnerctl::layout::bad_index),
        help("restore {} (it lists the layout's tags; runnerctl will not replace it and drop them), or remove the layout to start afresh; nothing was written", path.display())
    )]
    BadIndex { path: PathBuf, reason: String },

    #[error("could not write the OCI layout {}", path.display())]
    #[diagnostic(
        code(runnerctl::layout::write),
        help("check free space and permissions there")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A content descriptor (OCI image spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ArchiveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigRootFs {
    rootfs: RootFs,
}

/// diff_id → the compressed blob that holds it somewhere already.
pub type ReuseMap = HashMap<String, Descriptor>;

/// Record what an existing image's config and manifest say.
pub fn learn(map: &mut ReuseMap, manifest: &[u8], config: &[u8]) {
    let (Ok(manifest), Ok(config)) = (
        serde_json::from_slice::<Manifest>(manifest),
        serde_json::from_slice::<ConfigRootFs>(config),
    ) else {
        return;
    };
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return;
    }
    for (diff_id, layer) in config.rootfs.diff_ids.into_iter().zip(manifest.layers) {
        // Docker's and OCI's gzip types are one OCI type in a new manifest.
        let media_type = if layer.media_type.ends_with("zstd") {
            super::codec::OCI_LAYER_ZSTD
        } else {
            OCI_LAYER_GZIP
        };
        map.entry(diff_id).or_insert(Descriptor {
            media_type: media_type.to_string(),
            digest: layer.digest,
            size: layer.size,
            annotations: None,
        });
    }
}

/// One layer inside the docker-archive: where its bytes are.
#[derive(Debug, Clone)]
struct LayerEntry {
    offset: u64,
    size: u64,
    diff_id: String,
}

/// What writing the layout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub manifest_digest: String,
    /// The manifest's bytes, for writing further tags.
    pub manifest_bytes: Vec<u8>,
    pub manifest: Descriptor,
    pub layers: usize,
    pub reused: usize,
    /// Layers compressed now, and their compressed bytes.
    pub compressed: usize,
    pub compressed_bytes: u64,
}

/// A docker-archive, indexed: its config and where each layer's bytes are.
/// Scanning reads only tar headers and the small JSON files.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub path: PathBuf,
    config: Vec<u8>,
    layers: Vec<LayerEntry>,
}

impl Scanned {
    pub fn new(archive: &Path) -> Result<Scanned, LayoutError> {
        let (config, layers) = scan(archive)?;
        Ok(Scanned {
            path: archive.to_path_buf(),
            config,
            layers,
        })
    }

    /// The layers' diff_ids, in order.
    pub fn diff_ids(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.diff_id.as_str())
    }

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The image's config, as the archive holds it.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Layer `i`: where its bytes are in the archive (offset, size), and
    /// its diff_id.
    pub fn layer(&self, i: usize) -> Option<(u64, u64, &str)> {
        self.layers
            .get(i)
            .map(|l| (l.offset, l.size, l.diff_id.as_str()))
    }
}

/// Index the docker-archive: config bytes and where each layer is.
fn scan(archive: &Path) -> Result<(Vec<u8>, Vec<LayerEntry>), LayoutError> {
    let bad = |reason: String| LayoutError::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let file = File::open(archive).map_err(|e| bad(e.to_string()))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    let mut positions: HashMap<String, (u64, u64)> = HashMap::new();
    let mut jsons: HashMap<String, Vec<u8>> = HashMap::new();
    for entry in tar.entries_with_seek().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if name.ends_with(".json") && entry.size() < 16 * 1024 * 1024 {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| bad(e.to_string()))?;
            jsons.insert(name, buf);
        } else {
            positions.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    let manifest: Vec<ArchiveManifest> = serde_json::from_slice(
        jsons
            .get("manifest.json")
            .ok_or_else(|| bad("no manifest.json".into()))?,
    )
    .map_err(|e| bad(format!("manifest.json: {e}")))?;
    let image = manifest
        .into_iter()
        .next()
        .ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let config = jsons
        .remove(image.config.trim_start_matches("./"))
        .ok_or_else(|| bad(format!("config {} is missing", image.config)))?;
    let rootfs: ConfigRootFs =
        serde_json::from_slice(&config).map_err(|e| bad(format!("config: {e}")))?;
    if rootfs.rootfs.diff_ids.len() != image.layers.len() {
        return Err(bad(
            "the config's diff_ids and the layers differ in number".into()
        ));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in image.layers.iter().zip(rootfs.rootfs.diff_ids) {
        let (offset, size) = positions
            .get(name.trim_start_matches("./"))
            .copied()
            .ok_or_else(|| bad(format!("layer {name} is missing")))?;
        layers.push(LayerEntry {
            offset,
            size,
            diff_id,
        });
    }
    Ok((config, layers))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compress one layer into `blobs/sha256/<digest>` (temp file + rename).
fn compress_layer(
    archive: &Path,
    entry: &LayerEntry,
    blobs: &Path,
    codec: Codec,
) -> std::io::Result<Descriptor> {
    let mut file = File::open(archive)?;
    file.seek(SeekFrom::Start(entry.offset))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file.take(entry.size));
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .tempfile_in(blobs)?;
    let mut head = [0u8; 2];
    let n = reader.read(&mut head)?;
    let mut out = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, tmp.reopen()?),
        hash: Sha256::new(),
        size: 0,
    };
    let passthrough = super::archive::is_gzip(&head[..n]);
    if passthrough {
        // Already gzip: use the bytes as they are.
        out.write_all(&head[..n])?;
        std::io::copy(&mut reader, &mut out)?;
    } else {
        let mut enc = codec.encoder(&mut out)?;
        enc.write_all(&head[..n])?;
        std::io::copy(&mut reader, &mut enc)?;
        enc.finish()?;
    }
    out.flush()?;
    let Hashing { inner, hash, size } = out;
    drop(inner);
    let digest = hex(&hash.finalize());
    tmp.as_file().sync_all()?;
    tmp.persist(blobs.join(&digest)).map_err(|e| e.error)?;
    Ok(Descriptor {
        media_type: if passthrough {
            OCI_LAYER_GZIP
        } else {
            codec.media_type()
        }
        .to_string(),
        digest: format!("sha256:{digest}"),
        size,
        annotations: None,
    })
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let digest = sha256_digest(bytes);
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    if !path.exists() {
        let mut tmp = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(blobs)?;
        tmp.write_all(bytes)?;
        tmp.persist(&path).map_err(|e| e.error)?;
    }
    Ok(digest)
}

/// Reuse what the layout at `dir` already holds: its manifests' layers.
pub fn learn_from_layout(dir: &Path, map: &mut ReuseMap) {
    let Ok(index) = std::fs::read(dir.join("index.json")) else {
        return;
    };
    let Ok(index) = serde_json::from_slice::<Index>(&index) else {
        return;
    };
    let blob = |digest: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .ok()
    };
    for desc in index.manifests {
        let Some(manifest) = blob(&desc.digest) else {
            continue;
        };
        let Ok(parsed) = serde_json::from_slice::<Manifest>(&manifest) else {
            continue;
        };
        let Some(config) = blob(&parsed.config.digest) else {
            continue;
        };
        // Only layers whose blob is really in this layout.
        let mut local = ReuseMap::new();
        learn(&mut local, &manifest, &config);
        for (diff_id, d) in local {
            if dir
                .join("blobs/sha256")
                .join(d.digest.trim_start_matches("sha256:"))
                .is_file()
            {
                map.entry(diff_id).or_insert(d);
            }
        }
    }
}

/// Write the image from `archive` into the OCI layout `dir`, reusing blobs
/// from `reuse`. Tags in `tags` are pointed at the image in index.json
/// (other entries are kept). `on_layer(reused, bytes)` reports progress.
pub fn write(
    scanned: &Scanned,
    dir: &Path,
    reuse: &ReuseMap,
    tags: &[String],
    codec: Codec,
    on_layer: &(dyn Fn(bool, u64) + Sync),
) -> Result<Written, LayoutError> {
    let werr = |source: std::io::Error| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let (archive, config, layers) = (scanned.path.as_path(), &scanned.config, &scanned.layers);
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(werr)?;
    std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").map_err(werr)?;

    // Compress the layers nobody has yet, in parallel.
    let todo: Vec<usize> = (0..layers.len())
        .filter(|i| !reuse.contains_key(&layers[*i].diff_id))
        .collect();
    let results: Mutex<HashMap<usize, Descriptor>> = Mutex::new(HashMap::new());
    let failure: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = todo.get(k) else { break };
                match compress_layer(archive, &layers[i], &blobs, codec) {
                    Ok(desc) => {
                        on_layer(false, desc.size);
                        if let Ok(mut r) = results.lock() {
                            r.insert(i, desc);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(werr(e));
    }
    let mut results = results.into_inner().unwrap_or_default();
    let mut descriptors = Vec::with_capacity(layers.len());
    let mut compressed_bytes = 0;
    for (i, layer) in layers.iter().enumerate() {
        match reuse.get(&layer.diff_id) {
            Some(desc) => {
                on_layer(true, 0);
                descriptors.push(desc.clone());
            }
            None => {
                let desc = results
                    .remove(&i)
                    .ok_or_else(|| werr(std::io::Error::other("a layer was not compressed")))?;
                compressed_bytes += desc.size;
                descriptors.push(desc);
            }
        }
    }

    let config_digest = write_blob(&blobs, config).map_err(werr)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor {
            media_type: OCI_CONFIG.to_string(),
            digest: config_digest,
            size: config.len() as u64,
            annotations: None,
        },
        layers: descriptors,
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| werr(std::io::Error::other(e)))?;
    let manifest_digest = write_blob(&blobs, &manifest_bytes).map_err(werr)?;
    let manifest_desc = Descriptor {
        media_type: OCI_MANIFEST.to_string(),
        digest: manifest_digest.clone(),
        size: manifest_bytes.len() as u64,
        annotations: None,
    };

    set_tags(dir, &manifest_desc, tags).map_err(werr)?;

    Ok(Written {
        manifest_bytes,
        manifest_digest,
        manifest: manifest_desc,
        layers: layers.len(),
        reused: layers.len() - todo.len(),
        compressed: todo.len(),
        compressed_bytes,
    })
}

/// The layout's index.json; an empty index when there is none. One that
/// does not parse is an error: replacing it would drop its tags.
fn read_index(dir: &Path) -> std::io::Result<Index> {
    let path = dir.join("index.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes)
            .map_err(|e| std::io::Error::other(format!("{} does not parse ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
        }),
        Err(e) => Err(e),
    }
}

/// Is `dir` fit to be written as an OCI layout? Absent, empty, or a layout
/// (an `oci-layout` file) whose index.json, if any, parses. Anything else
/// holds someone's files, which the push would overwrite.
pub fn check_destination(dir: &Path) -> Result<(), LayoutError> {
    let refuse = |reason: &str| LayoutError::NotALayout {
        path: dir.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(&e.to_string())),
    };
    if !meta.is_dir() {
        return Err(refuse("it is not a directory"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| refuse(&e.to_string()))?;
    if entries.next().is_none() {
        return Ok(());
    }
    if !dir.join("oci-layout").is_file() {
        return Err(refuse(
            "it is not empty and has no `oci-layout` file, so it is not an OCI layout",
        ));
    }
    read_index(dir)
        .map(|_| ())
        .map_err(|e| LayoutError::BadIndex {
            path: dir.join("index.json"),
            reason: e.to_string(),
        })
}

/// Point `tags` at `manifest` in the layout's index.json (other entries are
/// kept), replacing the file atomically.
fn set_tags(dir: &Path, manifest: &Descriptor, tags: &[String]) -> std::io::Result<()> {
    let mut index = read_index(dir)?;
    index.manifests.retain(|d| {
        let name = d.annotations.as_ref().and_then(|a| a.get(REF_NAME));
        !name.is_some_and(|n| tags.contains(n))
    });
    for tag in tags {
        let mut desc = manifest.clone();
        desc.annotations = Some([(REF_NAME.to_string(), tag.clone())].into_iter().collect());
        index.manifests.push(desc);
    }
    write_index(dir, &index)
}

/// Replace the layout's index.json atomically.
fn write_index(dir: &Path, index: &Index) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(index).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".index-")
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join("index.json")).map_err(|e| e.error)?;
    Ok(())
}

/// Add `tags` for a manifest the layout already holds (by digest).
pub fn add_tags(dir: &Path, digest: &str, tags: &[String]) -> Result<(), LayoutError> {
    let werr = |source: std::io::Error| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut desc = read_index(dir)
        .map_err(werr)?
        .manifests
        .into_iter()
        .find(|d| d.digest == digest)
        .ok_or_else(|| {
            werr(std::io::Error::other(format!(
                "{digest} is not in the layout's index"
            )))
        })?;
    desc.annotations = None;
    set_tags(dir, &desc, tags).map_err(werr)
}

/// Drop every index entry for the manifest `digest` (its tags and an
/// untagged entry alike); the blobs stay. Returns how many entries went.
pub fn remove_manifest(dir: &Path, digest: &str) -> Result<usize, LayoutError> {
    let werr = |source: std::io::Error| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut index = read_index(dir).map_err(werr)?;
    let before = index.manifests.len();
    index.manifests.retain(|d| d.digest != digest);
    let removed = before - index.manifests.len();
    if removed > 0 {
        write_index(dir, &index).map_err(werr)?;
    }
    Ok(removed)
}

/// Whether the layout's index lists a manifest with this digest.
pub fn has_manifest(dir: &Path, digest: &str) -> bool {
    read_index(dir).is_ok_and(|index| index.manifests.iter().any(|d| d.digest == digest))
}

/// The digest an OCI layout's index gives a tag, if any.
pub fn tag_digest(dir: &Path, tag: &str) -> Option<String> {
    let index = std::fs::read(dir.join("index.json")).ok()?;
    let index: Index = serde_json::from_slice(&index).ok()?;
    index
        .manifests
        .into_iter()
        .find(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == tag)
        })
        .map(|d| d.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_diff_ids_in_manifest_order() {
        let manifest = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:c","size":1},
            "layers":[{"mediaType":"l","digest":"sha256:g1","size":10},{"mediaType":"l","digest":"sha256:g2","size":20}]}"#;
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:u1","sha256:u2"]}}"#;
        let mut map = ReuseMap::new();
        learn(&mut map, manifest, config);
        assert_eq!(map["sha256:u1"].digest, "sha256:g1");
        assert_eq!(map["sha256:u2"].size, 20);
        // Mismatched counts teach nothing.
        let mut other = ReuseMap::new();
        learn(
            &mut other,
            manifest,
            br#"{"rootfs":{"diff_ids":["sha256:u1"]}}"#,
        );
        assert!(other.is_empty());
    }
}
