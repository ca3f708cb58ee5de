//! Small images pushed straight to a registry (blob uploads and manifest
//! PUTs), to set up repositories without building images.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;

use crate::common::{Registry, IMAGE_REPO};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A content tag that looks like runnerctl's: `nix-` and 32 nix-base32
/// characters, from `seed`.
pub fn content_tag(seed: &str) -> String {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let hash = sha2::Sha256::digest(seed.as_bytes());
    let tail: String = hash
        .iter()
        .take(32)
        .map(|b| alphabet[(*b as usize) % 32] as char)
        .collect();
    format!("nix-{tail}")
}

/// A small image: a gzipped tar layer holding one file, a config with
/// `created` and labels.
pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    pub fn new(seed: &str, created: &str) -> Image {
        Image::with_labels(seed, created, true)
    }

    /// With `labelled` false, the config has no org.opencontainers.image.created label.
    pub fn with_labels(seed: &str, created: &str, labelled: bool) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("image {seed}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("etc/{seed}"), content.as_bytes())
            .expect("tar entry");
        let tar = tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let layer = gz.finish().expect("gzip");
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Cmd": ["/bin/sh"],
                "Labels": if labelled {
                    serde_json::json!({"org.opencontainers.image.created": created, "seed": seed})
                } else {
                    serde_json::json!({"seed": seed})
                }
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Image {
            digest: sha256(&manifest),
            config,
            layer,
            manifest,
        }
    }
}

/// Writes to the registry directly (blob uploads, manifest PUTs), to set
/// up repositories without building images.
pub struct Pusher {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Pusher {
    pub fn new(registry: &Registry) -> Pusher {
        Pusher {
            base: format!("http://{}/v2/{IMAGE_REPO}", registry.host()),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    registry.user(),
                    registry.password()
                ))
            ),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    pub fn blob(&self, bytes: &[u8]) {
        let started = self
            .agent
            .post(&format!("{}/blobs/uploads/", self.base))
            .set("Authorization", &self.auth)
            .call()
            .unwrap_or_else(|e| panic!("POST blobs/uploads: {e}"));
        let location = started.header("Location").expect("upload Location");
        let url = if location.starts_with("http") {
            location.to_string()
        } else {
            format!("http://{}{location}", self.base.split('/').nth(2).unwrap())
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        self.agent
            .put(&format!("{url}{sep}digest={}", sha256(bytes)))
            .set("Authorization", &self.auth)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT blob: {e}"));
    }

    pub fn manifest(&self, reference: &str, bytes: &[u8], media_type: &str) {
        self.agent
            .put(&format!("{}/manifests/{reference}", self.base))
            .set("Authorization", &self.auth)
            .set("Content-Type", media_type)
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("PUT manifest {reference}: {e}"));
    }

    /// Push `image` under `tags`.
    pub fn push(&self, image: &Image, tags: &[&str]) {
        self.blob(&image.layer);
        self.blob(&image.config);
        for tag in tags {
            self.manifest(
                tag,
                &image.manifest,
                "application/vnd.oci.image.manifest.v1+json",
            );
        }
    }
}
