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
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, ANNOTATION_REF_NAME as REF_NAME,
    SCHEMA_VERSION,
};
use sha2::Digest as _;
use thiserror::Error;

use super::archive::{self, normalize};
use super::codec::Codec;
use crate::digest::{hex, sha256_digest, Hashing};

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

/// An OCI document runnerctl writes, as bytes (oci-spec types have no
/// other way to fail here).
fn to_json<T: serde::Serialize>(doc: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec(doc).map_err(std::io::Error::other)
}

/// The descriptor of content runnerctl has just hashed.
pub fn descriptor(media_type: MediaType, digest: &str, size: u64) -> std::io::Result<Descriptor> {
    let digest = oci_spec::image::Digest::try_from(digest).map_err(std::io::Error::other)?;
    Ok(Descriptor::new(media_type, size, digest))
}

/// diff_id → the compressed blob that holds it somewhere already.
pub type ReuseMap = HashMap<String, Descriptor>;

/// Record what an existing image's config and manifest say (an OCI or a
/// Docker schema 2 manifest; only read, never written back).
pub fn learn(map: &mut ReuseMap, manifest: &[u8], config: &[u8]) {
    let (Ok(manifest), Ok(config)) = (
        serde_json::from_slice::<ImageManifest>(manifest),
        serde_json::from_slice::<ImageConfiguration>(config),
    ) else {
        return;
    };
    let diff_ids = config.rootfs().diff_ids();
    if manifest.layers().len() != diff_ids.len() {
        return;
    }
    for (diff_id, layer) in diff_ids.iter().zip(manifest.layers()) {
        // Docker's and OCI's gzip types are one OCI type in a new manifest;
        // a zstd layer stays zstd.
        let media_type = if layer.media_type().to_string().ends_with("zstd") {
            MediaType::ImageLayerZstd
        } else {
            MediaType::ImageLayerGzip
        };
        map.entry(diff_id.clone())
            .or_insert_with(|| Descriptor::new(media_type, layer.size(), layer.digest().clone()));
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
        let name = normalize(
            &entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy(),
        );
        if !archive::keep_json(&mut entry, &name, &mut jsons).map_err(|e| bad(e.to_string()))? {
            positions.insert(name, (entry.raw_file_position(), entry.size()));
        }
    }
    let contents = archive::contents(jsons).map_err(bad)?;
    let diff_ids = contents.config.rootfs().diff_ids();
    if diff_ids.len() != contents.layers.len() {
        return Err(bad(
            "the config's diff_ids and the layers differ in number".into()
        ));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in contents.layers.iter().zip(diff_ids) {
        let (offset, size) = positions
            .get(name)
            .copied()
            .ok_or_else(|| bad(format!("layer {name} is missing")))?;
        layers.push(LayerEntry {
            offset,
            size,
            diff_id: diff_id.clone(),
        });
    }
    let config = contents.config_bytes;
    Ok((config, layers))
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
    let mut out = Hashing::new(BufWriter::with_capacity(256 * 1024, tmp.reopen()?));
    let passthrough = super::archive::is_gzip(&head[..n]);
    let layer = std::io::Cursor::new(head[..n].to_vec()).chain(reader);
    if passthrough {
        // Already gzip: use the bytes as they are.
        std::io::copy(&mut { layer }, &mut out)?;
    } else {
        std::io::copy(&mut codec.compress(layer)?, &mut out)?;
    }
    out.flush()?;
    let Hashing { inner, hash, size } = out;
    drop(inner);
    let digest = hex(&hash.finalize());
    tmp.as_file().sync_all()?;
    tmp.persist(blobs.join(&digest)).map_err(|e| e.error)?;
    let media_type = if passthrough {
        MediaType::ImageLayerGzip
    } else {
        codec.oci_media_type()
    };
    descriptor(media_type, &format!("sha256:{digest}"), size)
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
    let Ok(index) = serde_json::from_slice::<ImageIndex>(&index) else {
        return;
    };
    let blob = |digest: &str| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .ok()
    };
    for desc in index.manifests() {
        let Some(manifest) = blob(desc.digest().as_ref()) else {
            continue;
        };
        let Ok(parsed) = serde_json::from_slice::<ImageManifest>(&manifest) else {
            continue;
        };
        let Some(config) = blob(parsed.config().digest().as_ref()) else {
            continue;
        };
        // Only layers whose blob is really in this layout.
        let mut local = ReuseMap::new();
        learn(&mut local, &manifest, &config);
        for (diff_id, d) in local {
            if dir.join("blobs/sha256").join(d.digest().digest()).is_file() {
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
    let marker = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(|e| werr(std::io::Error::other(e)))?;
    std::fs::write(dir.join("oci-layout"), to_json(&marker).map_err(werr)?).map_err(werr)?;

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
                        on_layer(false, desc.size());
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
                compressed_bytes += desc.size();
                descriptors.push(desc);
            }
        }
    }

    // The manifest is serialised once; its digest is that of these bytes,
    // and these bytes are what gets written, uploaded and retagged.
    let config_digest = write_blob(&blobs, config).map_err(werr)?;
    let config_desc =
        descriptor(MediaType::ImageConfig, &config_digest, config.len() as u64).map_err(werr)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(descriptors)
        .build()
        .map_err(|e| werr(std::io::Error::other(e)))?;
    let manifest_bytes = to_json(&manifest).map_err(werr)?;
    let manifest_digest = write_blob(&blobs, &manifest_bytes).map_err(werr)?;
    let manifest_desc = descriptor(
        MediaType::ImageManifest,
        &manifest_digest,
        manifest_bytes.len() as u64,
    )
    .map_err(werr)?;

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
fn read_index(dir: &Path) -> std::io::Result<ImageIndex> {
    let path = dir.join("index.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<ImageIndex>(&bytes)
            .map_err(|e| std::io::Error::other(format!("{} does not parse ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(Vec::new())
            .build()
            .map_err(std::io::Error::other),
        Err(e) => Err(e),
    }
}

/// The tag an index entry names, if any.
fn ref_name(desc: &Descriptor) -> Option<&String> {
    desc.annotations().as_ref().and_then(|a| a.get(REF_NAME))
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
    let mut manifests = index.manifests().clone();
    manifests.retain(|d| !ref_name(d).is_some_and(|n| tags.contains(n)));
    for tag in tags {
        let mut desc = manifest.clone();
        desc.set_annotations(Some([(REF_NAME.to_string(), tag.clone())].into()));
        manifests.push(desc);
    }
    index.set_manifests(manifests);
    write_index(dir, &index)
}

/// Replace the layout's index.json atomically.
fn write_index(dir: &Path, index: &ImageIndex) -> std::io::Result<()> {
    let bytes = to_json(index)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".index-")
        .tempfile_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join("index.json")).map_err(|e| e.error)?;
    Ok(())
}

/// Store a manifest or an index the layout may not hold yet, and point
/// `tags` at it.
pub fn put_manifest(
    dir: &Path,
    bytes: &[u8],
    media_type: &str,
    tags: &[String],
) -> Result<(), LayoutError> {
    let werr = |source: std::io::Error| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let digest = write_blob(&dir.join("blobs/sha256"), bytes).map_err(werr)?;
    let digest = oci_spec::image::Digest::try_from(digest.as_str())
        .map_err(|e| werr(std::io::Error::other(e)))?;
    let desc = Descriptor::new(MediaType::from(media_type), bytes.len() as u64, digest);
    set_tags(dir, &desc, tags).map_err(werr)
}

/// Add `tags` for a manifest the layout already holds (by digest).
pub fn add_tags(dir: &Path, digest: &str, tags: &[String]) -> Result<(), LayoutError> {
    let werr = |source: std::io::Error| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let mut desc = read_index(dir)
        .map_err(werr)?
        .manifests()
        .iter()
        .find(|d| d.digest().as_ref() == digest)
        .cloned()
        .ok_or_else(|| {
            werr(std::io::Error::other(format!(
                "{digest} is not in the layout's index"
            )))
        })?;
    desc.set_annotations(None);
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
    let mut manifests = index.manifests().clone();
    manifests.retain(|d| d.digest().as_ref() != digest);
    let removed = index.manifests().len() - manifests.len();
    if removed > 0 {
        index.set_manifests(manifests);
        write_index(dir, &index).map_err(werr)?;
    }
    Ok(removed)
}

/// Whether the layout's index lists a manifest with this digest.
pub fn has_manifest(dir: &Path, digest: &str) -> bool {
    read_index(dir).is_ok_and(|index| {
        index
            .manifests()
            .iter()
            .any(|d| d.digest().as_ref() == digest)
    })
}

/// The digest an OCI layout's index gives a tag, if any.
pub fn tag_digest(dir: &Path, tag: &str) -> Option<String> {
    let index = std::fs::read(dir.join("index.json")).ok()?;
    let index: ImageIndex = serde_json::from_slice(&index).ok()?;
    index
        .manifests()
        .iter()
        .find(|d| ref_name(d).is_some_and(|n| n == tag))
        .map(|d| d.digest().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_diff_ids_in_manifest_order() {
        // oci-spec checks what it reads: digests are real sha256 digests, and
        // a config names its architecture and os.
        let (c, g1, g2) = (
            format!("sha256:{}", "c".repeat(64)),
            format!("sha256:{}", "1".repeat(64)),
            format!("sha256:{}", "2".repeat(64)),
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{c}","size":1}},
            "layers":[{{"mediaType":"l","digest":"{g1}","size":10}},{{"mediaType":"l","digest":"{g2}","size":20}}]}}"#
        );
        let manifest = manifest.as_bytes();
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:u1","sha256:u2"]}}"#;
        let mut map = ReuseMap::new();
        learn(&mut map, manifest, config);
        assert_eq!(map["sha256:u1"].digest().as_ref(), g1);
        assert_eq!(map["sha256:u2"].size(), 20);
        // Mismatched counts teach nothing.
        let mut other = ReuseMap::new();
        learn(
            &mut other,
            manifest,
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:u1"]}}"#,
        );
        assert!(other.is_empty());
    }
}
