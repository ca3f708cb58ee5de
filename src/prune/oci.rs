//! Prune on an `oci:` layout: the tags are index.json's entries (their
//! `org.opencontainers.image.ref.name`), a delete removes every entry with
//! that digest (`layout::remove_manifest`), and the blobs nothing
//! references any more are removed afterwards (the layout's own garbage
//! collection).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex as Index, ANNOTATION_REF_NAME as REF_NAME};

use crate::image::layout::LayoutError;

fn werr(dir: &Path) -> impl Fn(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Write {
        path: dir.to_path_buf(),
        source,
    }
}

fn bad_index(dir: &Path, reason: String) -> LayoutError {
    LayoutError::BadIndex {
        path: dir.join("index.json"),
        reason,
    }
}

/// index.json, or None when the layout does not exist yet.
fn read_index(dir: &Path) -> Result<Option<Index>, LayoutError> {
    let path = dir.join("index.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| bad_index(dir, format!("{} does not parse ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(werr(dir)(e)),
    }
}

fn blob_path(dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| dir.join("blobs/sha256").join(hex))
}

/// (tag, digest) for every index entry; "" for an entry without a name.
pub fn tags(dir: &Path) -> Result<Vec<(String, String)>, LayoutError> {
    let Some(index) = read_index(dir)? else {
        return Ok(Vec::new());
    };
    Ok(index
        .manifests()
        .iter()
        .map(|d| {
            let name = d
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
                .unwrap_or_default();
            (name, d.digest().to_string())
        })
        .collect())
}

/// What a blob references: an index's manifests, a manifest's config and
/// layers (and its subject, if any). Unreadable or non-JSON blobs
/// reference nothing.
fn references(dir: &Path, digest: &str) -> Vec<String> {
    let Some(bytes) = blob_path(dir, digest).and_then(|p| std::fs::read(p).ok()) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let digest_of =
        |v: &serde_json::Value| v.get("digest").and_then(|d| d.as_str()).map(String::from);
    let mut out = Vec::new();
    for key in ["manifests", "layers", "blobs"] {
        if let Some(list) = value.get(key).and_then(|l| l.as_array()) {
            out.extend(list.iter().filter_map(digest_of));
        }
    }
    for key in ["config", "subject"] {
        if let Some(d) = value.get(key).and_then(digest_of) {
            out.push(d);
        }
    }
    out
}

/// The manifests an index references (empty for an image manifest).
pub fn children(dir: &Path, digest: &str) -> Vec<String> {
    let Some(bytes) = blob_path(dir, digest).and_then(|p| std::fs::read(p).ok()) else {
        return Vec::new();
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .map(|list| {
            list.iter()
                .filter_map(|d| d.get("digest").and_then(|d| d.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Remove the blobs that nothing reachable from index.json references.
/// Only files named by a sha256 digest are considered (a push's temp files
/// start with a dot). Returns how many were removed and their bytes.
pub fn collect_garbage(dir: &Path) -> Result<(usize, u64), LayoutError> {
    let Some(index) = read_index(dir)? else {
        return Ok((0, 0));
    };
    let mut reachable = BTreeSet::new();
    let mut queue: Vec<String> = index
        .manifests()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    while let Some(digest) = queue.pop() {
        if reachable.insert(digest.clone()) {
            queue.extend(references(dir, &digest));
        }
    }
    let blobs = dir.join("blobs/sha256");
    let entries = match std::fs::read_dir(&blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(werr(dir)(e)),
    };
    let (mut removed, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(werr(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if reachable.contains(&format!("sha256:{name}")) {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                bytes += size;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(dir)(e)),
        }
    }
    Ok((removed, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_digest;

    fn put(dir: &Path, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        std::fs::write(blob_path(dir, &digest).unwrap(), bytes).unwrap();
        digest
    }

    #[test]
    fn delete_then_collect_removes_only_unreferenced_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        let shared = put(dir, b"shared layer");
        let own = put(dir, b"old layer");
        let config_old = put(dir, b"{\"old\":1}");
        let config_new = put(dir, b"{\"new\":1}");
        let manifest = |config: &str, layers: &[&str]| {
            serde_json::json!({"schemaVersion":2,"config":{"mediaType":"c","digest":config,"size":1},
                "layers": layers.iter().map(|l| serde_json::json!({"mediaType":"l","digest":l,"size":1})).collect::<Vec<_>>()})
            .to_string()
        };
        let old = put(dir, manifest(&config_old, &[&shared, &own]).as_bytes());
        let new = put(dir, manifest(&config_new, &[&shared]).as_bytes());
        let entry = |d: &str, tag: &str| serde_json::json!({"mediaType":"m","digest":d,"size":1,"annotations":{REF_NAME:tag}});
        let index = serde_json::json!({"schemaVersion":2,"manifests":[entry(&old,"20260101"), entry(&old,"nix-x"), entry(&new,"latest")]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("blobs/sha256/.layer-tmp"), b"in flight").unwrap();

        assert_eq!(tags(dir).unwrap().len(), 3);
        assert_eq!(crate::image::layout::remove_manifest(dir, &old).unwrap(), 2);
        assert_eq!(crate::image::layout::remove_manifest(dir, &old).unwrap(), 0);
        assert_eq!(
            tags(dir).unwrap(),
            vec![("latest".to_string(), new.clone())]
        );
        let (removed, _) = collect_garbage(dir).unwrap();
        assert_eq!(removed, 3, "old manifest, its config and its own layer");
        for kept in [&shared, &config_new, &new] {
            assert!(blob_path(dir, kept).unwrap().is_file(), "{kept}");
        }
        assert!(!blob_path(dir, &own).unwrap().exists());
        assert!(dir.join("blobs/sha256/.layer-tmp").exists());
    }
}
