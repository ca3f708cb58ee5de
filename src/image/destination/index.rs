//! The OCI image index over one image per system: written by runnerctl
//! (so its bytes are its own), and read back to check that it names every
//! system before a floating tag moves to it.

use miette::Diagnostic;
use oci_spec::image::{
    Arch, DescriptorBuilder, Digest, ImageIndex, ImageIndexBuilder, MediaType, Os, PlatformBuilder,
};
use thiserror::Error;

use super::Manifest;
use crate::system::Platform;

#[derive(Debug, Error, Diagnostic)]
pub enum IndexError {
    #[error("could not make the image index: {reason}")]
    #[diagnostic(
        code(runnerctl::index::build),
        help("a manifest runnerctl was to list is malformed (its digest or media type); push again, and report this if it persists")
    )]
    Build { reason: String },

    #[error("the manifest for {platform} ({digest}) is not in {image}, so no index is written and no floating tag moves")]
    #[diagnostic(
        code(runnerctl::index::missing_manifest),
        help("the registry lost or never kept a manifest pushed by digest (a cleanup rule, or a registry that drops untagged manifests?); run again: the system's image is pushed again under its nix-<hash> tag")
    )]
    MissingManifest {
        platform: String,
        digest: String,
        image: String,
    },

    #[error("the index read back from {image} as {tag} does not name {missing}; no floating tag was moved")]
    #[diagnostic(
        code(runnerctl::index::incomplete),
        help("the registry stored another index than the one sent (Forgejo and Gitea registries have been seen to answer 500 or keep an older version on multi-arch pushes); run again, and check the registry's logs if it persists")
    )]
    Incomplete {
        image: String,
        tag: String,
        missing: String,
    },
}

/// An index listing each manifest with its platform, as bytes.
pub fn build(entries: &[(Manifest, Platform)]) -> Result<Manifest, IndexError> {
    let bad = |reason: String| IndexError::Build { reason };
    let mut manifests = Vec::new();
    for (manifest, platform) in entries {
        let mut p = PlatformBuilder::default();
        p = p
            .architecture(Arch::from(platform.architecture))
            .os(Os::from(platform.os));
        if let Some(variant) = platform.variant {
            p = p.variant(variant.to_string());
        }
        let platform = p.build().map_err(|e| bad(e.to_string()))?;
        let digest = Digest::try_from(manifest.digest.as_str()).map_err(|e| bad(e.to_string()))?;
        let descriptor = DescriptorBuilder::default()
            .media_type(MediaType::from(manifest.media_type.as_str()))
            .digest(digest)
            .size(manifest.bytes.len() as u64)
            .platform(platform)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        manifests.push(descriptor);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let bytes = serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?;
    Ok(Manifest::from_bytes(bytes))
}

/// The digests an index lists (empty if the bytes are not an index).
pub fn listed(bytes: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ImageIndex>(bytes)
        .map(|index| {
            index
                .manifests()
                .iter()
                .map(|d| d.digest().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The platforms an index lists, as `os/architecture` (empty if the
/// bytes are not an index).
pub fn platforms(bytes: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ImageIndex>(bytes)
        .map(|index| {
            index
                .manifests()
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect()
        })
        .unwrap_or_default()
}

/// Is this manifest an index (OCI image index or Docker manifest list)?
pub fn is_index(manifest: &Manifest) -> bool {
    manifest.media_type == "application/vnd.oci.image.index.v1+json"
        || manifest.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_lists_each_manifest_with_its_platform() {
        let a = Manifest::from_bytes(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                .to_vec(),
        );
        let b = Manifest::from_bytes(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
                .to_vec(),
        );
        let amd64 = "x86_64-linux"
            .parse::<crate::system::System>()
            .unwrap()
            .platform();
        let arm64 = "aarch64-linux"
            .parse::<crate::system::System>()
            .unwrap()
            .platform();
        let index = build(&[(a.clone(), amd64), (b.clone(), arm64)]).unwrap();
        assert!(is_index(&index));
        assert_eq!(listed(&index.bytes), [a.digest.clone(), b.digest.clone()]);
        let json: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!(json["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(json["manifests"][1]["platform"]["architecture"], "arm64");
        assert_eq!(json["manifests"][1]["platform"]["os"], "linux");
        assert_eq!(
            json["manifests"][1]["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(json["manifests"][0]["size"], a.bytes.len());
        assert!(!is_index(&a));
    }
}
