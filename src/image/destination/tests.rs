//! The layout side of the destination, on temporary directories.

use super::*;
use crate::progress::Reporter;
use oci_spec::image::{
    Descriptor, Digest, ImageIndexBuilder, MediaType, ANNOTATION_REF_NAME as REF_NAME,
};

fn tag(name: &str) -> Tag {
    name.parse().unwrap()
}

/// What a registry would need; a layout uses none of it.
fn tools() -> Tools {
    Tools {
        skopeo: Skopeo {
            path: "skopeo".into(),
            policy: "policy.json".into(),
            user_policy: false,
            timeout: std::time::Duration::from_secs(1),
        },
        authfile: None,
        cache_dir: "cache".into(),
        state_dir: "state".into(),
    }
}

/// A manifest blob (no layers: the index is all these tests read).
fn manifest_bytes(config: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"sha256:{config}","size":1}},"layers":[]}}"#,
        MediaType::ImageManifest
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
            let mut desc = Descriptor::new(
                MediaType::ImageManifest,
                bytes.len() as u64,
                Digest::try_from(digest.as_str()).unwrap(),
            );
            desc.set_annotations(Some([(REF_NAME.to_string(), t.to_string())].into()));
            manifests.push(desc);
        }
        digests.push(digest);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .unwrap();
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
        .tag_states(
            &runner,
            &tools(),
            &[tag("latest"), tag("absent"), tag("nix-a")],
        )
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
        .tag_states(&runner, &tools(), &[tag("nix-a"), tag("old")])
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
    let plan = dest.plan(
        &tools(),
        "/nix/store/x-image",
        &[tag("nix-x"), tag("latest")],
        crate::image::codec::Codec::default(),
    );
    assert_eq!(
        plan,
        vec![format!(
            "(built in) write /nix/store/x-image into the OCI layout {} as nix-x, latest, reusing the layers it already has",
            dir.path().display()
        )]
    );
    assert!(dest
        .plan(
            &tools(),
            "/nix/store/x-image",
            &[],
            crate::image::codec::Codec::default()
        )
        .is_empty());
}

/// A registry that answers `GET /v2/` and deletes a manifest once; it
/// records each request's method and path.
fn fake_registry() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut deleted = false;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
                // A TLS handshake: this registry speaks plain HTTP.
                if head.first() == Some(&0x16) {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let line: Vec<&str> = text.lines().next().unwrap_or("").split(' ').collect();
            if line.len() < 2 || head.first() == Some(&0x16) {
                continue;
            }
            let request = format!("{} {}", line[0], line[1]);
            let status = match line[0] {
                "DELETE" if !deleted => {
                    deleted = true;
                    "202 Accepted"
                }
                "DELETE" => "404 Not Found",
                _ => "200 OK",
            };
            log.lock().unwrap().push(request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (host, seen)
}

#[test]
fn registry_delete_is_a_delete_of_the_manifest() {
    let (host, seen) = fake_registry();
    let image: ImageRef = format!("docker://{host}/team/runner").parse().unwrap();
    let client = RegistryClient::new(
        &host,
        "team/runner",
        &Credentials::None,
        false,
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let dest = Destination::Registry(Registry::new(Arc::new(client), image, false));
    let digest = format!("sha256:{}", "a".repeat(64));
    assert!(dest.delete(&digest).unwrap());
    // Gone already.
    assert!(!dest.delete(&digest).unwrap());
    let deletes: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("DELETE"))
        .cloned()
        .collect();
    let expected = format!("DELETE /v2/team/runner/manifests/{digest}");
    assert_eq!(deletes, vec![expected.clone(), expected]);
}
