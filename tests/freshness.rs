//! `runnerctl status --max-age DAYS` against the real docker-registry:
//! images whose config's created date (label or field) the fixture sets,
//! and the last push recorded in state.json. Issue 14.

mod common;
mod prune_support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{date_tag, new_tempdir, Registry, Run, RunOutput, IMAGE_REPO};
use prune_support::{Image, Pusher};

/// `YYYY-MM-DD` and `YYYYMMDD` of the day `days` before today (UTC).
fn day(days: i64) -> (String, String) {
    let tag = date_tag(time::OffsetDateTime::now_utc().unix_timestamp() - days * 86_400);
    (format!("{}-{}-{}", &tag[..4], &tag[4..6], &tag[6..]), tag)
}

fn status(dir: &Path, registry: Option<&Registry>, args: &[&str]) -> RunOutput {
    let state = dir.join("state").display().to_string();
    let mut all: Vec<String> = vec!["status".into(), "--state-dir".into(), state];
    all.extend(args.iter().map(|s| s.to_string()));
    let mut run = Run::new(all).cwd(dir).timeout(Duration::from_secs(120));
    if let Some(registry) = registry {
        run = run
            .arg("--image")
            .arg(format!("docker://{}/{IMAGE_REPO}", registry.host()))
            .arg("--tls-verify")
            .arg("false")
            .env("RUNNERCTL_REGISTRY_USER", registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", registry.password());
    }
    run.run()
}

fn publish(pusher: &Pusher, image: &Image) {
    pusher.push(image, &["latest"]);
}

#[test]
fn max_age_fails_on_a_stale_registry_image_and_passes_on_a_fresh_one() {
    let registry = Registry::new();
    let pusher = Pusher::new(&registry);
    let dir = new_tempdir("freshness");
    let (stale_day, _) = day(45);
    publish(
        &pusher,
        &Image::new("stale", &format!("{stale_day}T04:17:00Z")),
    );

    let out = status(dir.path(), Some(&registry), &["--max-age", "14", "--json"]);
    out.assert_code(1);
    let expected = format!("latest was built from nixpkgs of {stale_day}, 45 days ago (limit 14)");
    assert!(
        out.stderr.contains(&expected) && out.stderr.contains("runnerctl::status::stale"),
        "{out}"
    );
    let doc = out.json();
    assert_eq!(doc["freshness"]["age_days"], 45, "{out}");
    assert_eq!(doc["freshness"]["date"], stale_day.as_str());
    assert_eq!(doc["freshness"]["fresh"], false);
    assert_eq!(
        doc["freshness"]["source"],
        "label org.opencontainers.image.created"
    );
    assert_eq!(doc["error"]["message"], expected.as_str());
    assert!(!out.stdout.contains(registry.password()) && !out.stderr.contains(registry.password()));

    // A fresh image: exit 0 with the age.
    let (fresh_day, _) = day(2);
    publish(
        &pusher,
        &Image::new("fresh", &format!("{fresh_day}T04:17:00Z")),
    );
    let out = status(dir.path(), Some(&registry), &["--max-age", "14", "--json"]);
    out.assert_success();
    let doc = out.json();
    assert_eq!(doc["freshness"]["age_days"], 2, "{out}");
    assert_eq!(doc["freshness"]["fresh"], true);
    let human = status(dir.path(), Some(&registry), &["--max-age", "14"]);
    human.assert_success();
    assert!(
        human.stdout.contains(&format!(
            "latest was built from nixpkgs of {fresh_day}, 2 days ago (limit 14)"
        )),
        "{human}"
    );

    // Without the label, the config's created.
    let (created_day, _) = day(20);
    publish(
        &pusher,
        &Image::with_labels("unlabelled", &format!("{created_day}T00:00:00Z"), false),
    );
    let out = status(dir.path(), Some(&registry), &["--max-age", "30", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["freshness"]["source"], "config created", "{out}");
    assert_eq!(out.json()["freshness"]["age_days"], 20);
    let out = status(dir.path(), Some(&registry), &["--max-age", "19"]);
    out.assert_code(1);

    // A tag the registry does not have.
    let out = status(
        dir.path(),
        Some(&registry),
        &["--max-age", "19", "--tag", "stable"],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("runnerctl::status::no_image"), "{out}");
}

#[test]
fn without_image_the_last_recorded_push_gives_the_date() {
    let dir = new_tempdir("freshness");
    let out = status(dir.path(), None, &["--max-age", "14"]);
    out.assert_code(1);
    assert!(out.stderr.contains("runnerctl::status::no_push"), "{out}");

    let (old_iso, old_tag) = day(40);
    let (new_iso, new_tag) = day(16);
    let state = serde_json::json!({
        "version": 1,
        "command": "bump",
        "outcome": "success",
        "images": {
            "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-image.tar": {
                "image": "oci:/tmp/x", "digest": "sha256:aa", "tags": ["nix-a", old_tag, "latest"], "pushed_at": "2026-01-01T00:00:00Z"
            },
            "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-image.tar": {
                "image": "oci:/tmp/x", "digest": "sha256:bb", "tags": ["nix-b", new_tag, "latest"], "pushed_at": "2026-02-01T00:00:00Z"
            }
        }
    });
    fs::create_dir_all(dir.path().join("state")).unwrap();
    fs::write(dir.path().join("state/state.json"), state.to_string()).unwrap();
    let out = status(dir.path(), None, &["--max-age", "14", "--json"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "{new_tag} was built from nixpkgs of {new_iso}, 16 days ago (limit 14)"
        )),
        "{out}"
    );
    assert_eq!(
        out.json()["freshness"]["source"],
        "state: date tag of the last push"
    );
    let out = status(dir.path(), None, &["--max-age", "16", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["freshness"]["age_days"], 16);
    assert_ne!(old_iso, new_iso);
}

#[test]
fn max_age_reads_an_oci_layout_too() {
    let dir = new_tempdir("freshness");
    let layout = dir.path().join("oci");
    let (created, _) = day(30);
    let image = Image::new("layout", &format!("{created}T00:00:00Z"));
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for bytes in [&image.layer, &image.config, &image.manifest] {
        fs::write(blobs.join(&prune_support::sha256(bytes)[7..]), bytes).unwrap();
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.digest, "size": image.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let image_ref = format!("oci:{}", layout.display());
    let out = status(dir.path(), None, &["--max-age", "7", "--image", &image_ref]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "latest was built from nixpkgs of {created}, 30 days ago (limit 7)"
        )),
        "{out}"
    );
    let out = status(
        dir.path(),
        None,
        &["--max-age", "30", "--image", &image_ref, "--json"],
    );
    out.assert_success();
    assert_eq!(out.json()["freshness"]["age_days"], 30);
}
