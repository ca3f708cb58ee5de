//! The layout side of the destination, on temporary directories.

use super::*;
use crate::image::layout::{Descriptor, Index, OCI_INDEX, OCI_MANIFEST, REF_NAME};
use crate::progress::Reporter;

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

/// A manifest blob (no layers: the index is all these tests read).
fn manifest_bytes(config: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"sha256:{config}","size":1}},"layers":[]}}"#
    )
    .into_bytes()
}

/// A layout holding two manifests: `a` tagged nix-a and latest, `b` tagged
/// old. Returns the directory and the two digests.
fn layout() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut manifests = Vec::new();
    let mut digests = Vec::new();
    for (config, tags) in [("c1", &["nix-a", "latest"][..]), ("c2", &["old"][..])] {
        let bytes = manifest_bytes(config);
        let digest = sha256_digest(&bytes);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &bytes).unwrap();
        for t in tags {
            manifests.push(Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                annotations: Some([(REF_NAME.to_string(), t.to_string())].into()),
            });
        }
        digests.push(digest);
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests,
    };
    std::fs::write(
        dir.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let b = digests.pop().unwrap();
    let a = digests.pop().unwrap();
    (dir, a, b)
}

fn open(dir: &Path) -> Destination {
    let image = ImageRef::Oci {
        dir: dir.to_path_buf(),
    };
    connect(
        &image,
        &Access {
            credentials: &Credentials::None,
            tls_verify: true,
            timeout: std::time::Duration::from_secs(1),
        },
    )
    .unwrap()
    .destination
}

fn record(image: &str, digest: &str) -> ImageRecord {
    ImageRecord {
        image: image.into(),
        digest: digest.into(),
        tags: Vec::new(),
        pushed_at: String::new(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tag_states_name_each_tag_in_order() {
    let (dir, a, _) = layout();
    let dest = open(dir.path());
    let runner = Runner::new(Reporter::silent());
    let states = dest
        .tag_states(&runner, &[tag("latest"), tag("absent"), tag("nix-a")])
        .await
        .unwrap();
    let seen: Vec<(&str, Option<&str>)> = states
        .iter()
        .map(|s| (s.tag.as_str(), s.digest.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("latest", Some(a.as_str())),
            ("absent", None),
            ("nix-a", Some(a.as_str()))
        ]
    );
    let manifest = states[0].manifest.as_deref().unwrap();
    assert_eq!(sha256_digest(manifest.as_bytes()), a);
}

#[tokio::test(flavor = "current_thread")]
async fn published_from_the_record_or_the_nix_tag() {
    let (dir, a, b) = layout();
    let dest = open(dir.path());
    let image = dest.image().to_string();
    let runner = Runner::new(Reporter::silent());
    let states = dest
        .tag_states(&runner, &[tag("nix-a"), tag("old")])
        .await
        .unwrap();
    let nix = tag("nix-a");
    // No record: the nix- tag tells.
    assert_eq!(dest.published(&states, Some(&nix), None), Some(a.clone()));
    assert_eq!(dest.published(&states, None, None), None);
    // The record for this image wins over the nix- tag.
    let mine = record(&image, &b);
    assert_eq!(dest.published(&states, Some(&nix), Some(&mine)), Some(b));
    // A record for another image is ignored.
    let other = record("oci:/elsewhere", "sha256:0");
    assert_eq!(dest.published(&states, Some(&nix), Some(&other)), Some(a));
    // A recorded digest no tag points at is known, not published.
    let gone = record(&image, "sha256:0");
    assert_eq!(dest.published(&states, Some(&nix), Some(&gone)), None);
    assert_eq!(
        dest.known_digest(&states, Some(&nix), Some(&gone))
            .as_deref(),
        Some("sha256:0")
    );
}

#[test]
fn retag_points_a_tag_at_a_held_manifest() {
    let (dir, a, b) = layout();
    let dest = open(dir.path());
    let held = dest.manifest(&b).unwrap().unwrap();
    assert_eq!(held.digest, b);
    // A new tag, and a tag that moves.
    dest.retag("stable", &held).unwrap();
    dest.retag("latest", &held).unwrap();
    assert_eq!(dest.manifest("stable").unwrap().unwrap().digest, b);
    assert_eq!(dest.manifest("latest").unwrap().unwrap().digest, b);
    assert_eq!(dest.manifest("nix-a").unwrap().unwrap().digest, a);
    assert!(dest
        .moves(["stable", "latest", "old"], &b)
        .unwrap()
        .is_empty());
    let moves = dest.moves(["nix-a", "none"], &b).unwrap();
    assert_eq!(
        describe_moves(&moves, "X"),
        format!("nix-a: {a} → X; none: (absent) → X")
    );
}

#[test]
fn delete_drops_every_entry_of_the_digest_only() {
    let (dir, a, b) = layout();
    let dest = open(dir.path());
    assert!(dest.delete(&a).unwrap());
    assert_eq!(dest.manifest("nix-a").unwrap(), None);
    assert_eq!(dest.manifest("latest").unwrap(), None);
    assert_eq!(dest.manifest(&a).unwrap(), None);
    // The other image keeps its tag.
    assert_eq!(dest.manifest("old").unwrap().unwrap().digest, b);
    // Gone already: nothing to delete, the index is not rewritten.
    let before = std::fs::read(dir.path().join("index.json")).unwrap();
    assert!(!dest.delete(&a).unwrap());
    assert_eq!(
        std::fs::read(dir.path().join("index.json")).unwrap(),
        before
    );
}

#[test]
fn layout_plan_names_every_tag() {
    let (dir, _, _) = layout();
    let dest = open(dir.path());
    let plan = dest.plan("/nix/store/x-image", &[tag("nix-x"), tag("latest")]);
    assert_eq!(
        plan,
        vec![format!(
            "(built in) write /nix/store/x-image into the OCI layout {} as nix-x, latest, reusing the layers it already has",
            dir.path().display()
        )]
    );
    assert!(dest.plan("/nix/store/x-image", &[]).is_empty());
}
