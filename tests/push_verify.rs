//! The push and verify stages in detail: the archive is read once, extra
//! tags are manifest-only writes, a bump uploads only the changed layer,
//! `oci:` destinations get tags through their index, the `nix-<hash>` tag
//! can be turned off, and the verify checks are data.

mod common;

use std::time::Duration;

use common::{report_stage, Run, RunOutput, World, DAY, IMAGE_REPO};

const TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_archive_is_read_once_and_extra_tags_are_manifest_writes() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    let out = w.run(&["bump", "--no-git-push"]);
    out.assert_success();

    // runnerctl uploads the blobs itself (issue 15): no skopeo copy.
    let copies = w.skopeo_copies();
    assert!(copies.is_empty(), "{copies:?}");
    // Every tag is there at one digest, and the other three were PUTs.
    let latest = w.registry.digest(IMAGE_REPO, "latest").expect("latest");
    let tags = w.registry.tags(IMAGE_REPO);
    assert_eq!(tags.len(), 4, "{tags:?}");
    for tag in &tags {
        assert_eq!(
            w.registry.digest(IMAGE_REPO, tag).as_deref(),
            Some(latest.as_str()),
            "{tag}"
        );
    }
    assert!(tags.iter().any(|t| t.starts_with("nix-")), "{tags:?}");
    assert_eq!(w.registry.manifest_put_count(), 4);
    assert_eq!(w.registry.blob_upload_count(), 5, "4 layers and the config");
    let manifest = w.registry.manifest(IMAGE_REPO, "latest").expect("manifest");
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
}

#[test]
fn a_zstd_push_is_verified_retagged_and_pulled_like_a_gzip_one() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    let out = w.run(&["bump", "--no-git-push", "--compression", "zstd", "--json"]);
    out.assert_success();
    let report = out.json();
    let push = report_stage(&report, "push");
    assert!(
        push["note"]
            .as_str()
            .is_some_and(|n| n.contains("(zstd-3)")),
        "{push}"
    );
    let latest = w.registry.digest(IMAGE_REPO, "latest").expect("latest");
    let manifest = w.registry.manifest(IMAGE_REPO, "latest").expect("manifest");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 4);
    for layer in layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    // Every tag at the one digest; the extra ones were manifest PUTs.
    for tag in w.registry.tags(IMAGE_REPO) {
        assert_eq!(w.registry.digest(IMAGE_REPO, &tag), Some(latest.clone()));
    }
    assert_eq!(w.registry.blob_upload_count(), 5);
    // A retag of the zstd image: one manifest PUT, no blob.
    let (uploads, puts) = (
        w.registry.blob_upload_count(),
        w.registry.manifest_put_count(),
    );
    w.run(&["release", "--tag", "latest", "--tag", "stable"])
        .assert_success();
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "stable").as_deref(),
        Some(latest.as_str())
    );
    assert_eq!(w.registry.blob_upload_count(), uploads);
    assert_eq!(w.registry.manifest_put_count() - puts, 1);
    // skopeo pulls it, checking each blob's digest and decompressing it:
    // the layers it writes are the config's diff_ids.
    let dir = tempfile::tempdir().expect("tempdir");
    let authfile = dir.path().join("auth.json");
    w.registry.write_authfile(&authfile);
    let pulled = dir.path().join("pulled");
    common::run_checked(
        std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg("--dest-decompress")
            .arg("--authfile")
            .arg(&authfile)
            .arg(format!(
                "docker://{}",
                w.registry.image_ref(IMAGE_REPO, "latest")
            ))
            .arg(format!("dir:{}", pulled.display())),
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(pulled.join(name)).expect("read")).expect("json")
    };
    let pulled_manifest = read("manifest.json");
    let config_digest = pulled_manifest["config"]["digest"].as_str().expect("cfg");
    let config = read(config_digest.trim_start_matches("sha256:"));
    assert_eq!(
        pulled_manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["digest"].clone())
            .collect::<Vec<_>>(),
        *config["rootfs"]["diff_ids"].as_array().expect("diff_ids")
    );
}

#[test]
fn a_bump_uploads_only_the_changed_layer_and_reuses_the_rest() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    w.run(&["bump", "--no-git-push"]).assert_success();
    let first = w.registry.digest(IMAGE_REPO, "latest").expect("latest");
    let uploads = w.registry.blob_upload_count();
    let puts = w.registry.manifest_put_count();

    w.nixpkgs.commit(w.base + 2 * DAY);
    let out = w.run(&["bump", "--no-git-push", "--json"]);
    out.assert_success();
    let report = out.json();
    let second = w.registry.digest(IMAGE_REPO, "latest").expect("latest");
    assert_ne!(first, second);
    assert_eq!(report["digest"], second.as_str());
    // The fixture's nixpkgs layer changed; the other three are reused: one
    // layer and the config go up, and four manifests (three tags and the
    // new date tag share the new digest; the old date tag stays).
    assert_eq!(w.registry.blob_upload_count() - uploads, 2);
    assert_eq!(w.registry.manifest_put_count() - puts, 4);
    assert!(w.skopeo_copies().is_empty(), "no skopeo copy");
    let push = report_stage(&report, "push");
    assert!(
        push["note"]
            .as_str()
            .is_some_and(|n| n.contains("3 of 4 layers already in the registry")),
        "{push}"
    );
}

#[test]
fn a_new_tag_for_a_published_image_is_only_a_retag() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    w.run(&["bump", "--no-git-push"]).assert_success();
    let digest = w.registry.digest(IMAGE_REPO, "latest").expect("latest");
    let (uploads, copies) = (w.registry.blob_upload_count(), w.skopeo_copies().len());
    let puts = w.registry.manifest_put_count();

    let out = w.run(&["release", "--tag", "latest", "--tag", "stable"]);
    out.assert_success();
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "stable").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        w.registry.blob_upload_count(),
        uploads,
        "no blob for a retag"
    );
    assert_eq!(
        w.skopeo_copies().len(),
        copies,
        "no skopeo copy for a retag"
    );
    assert_eq!(w.registry.manifest_put_count() - puts, 1, "one PUT: stable");
    assert!(
        // The content tag is looked at first (issue 10: `nix-<hash>` is
        // written first and the floating tags last).
        out.stdout.contains("already there as nix-") && out.stdout.contains("tagged stable"),
        "{}",
        out.stdout
    );
}

#[test]
fn no_nix_tag_means_no_content_addressed_tag() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    w.run(&["bump", "--no-git-push", "--no-nix-tag"])
        .assert_success();
    let tags = w.registry.tags(IMAGE_REPO);
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert!(!tags.iter().any(|t| t.starts_with("nix-")), "{tags:?}");
}

#[test]
fn oci_destinations_get_tags_through_the_index_and_reuse_their_blobs() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    let layout = tempfile::tempdir().expect("tempdir");
    let dest = format!("oci:{}", layout.path().display());
    let run = |args: &[&str]| {
        Run::new(args)
            .in_repo(&w.repo)
            .shims(&w.shims)
            .timeout(TIMEOUT)
            .run()
    };
    run(&["bump", "--no-git-push", "--image", &dest]).assert_success();
    let blobs = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("blobs/sha256"))
            .expect("blobs")
            .count()
    };
    assert_eq!(blobs(layout.path()), 6, "4 layers, config, manifest");
    assert!(
        w.skopeo_copies().is_empty(),
        "an oci: layout is written by runnerctl itself"
    );

    // A new tag: only index.json changes.
    let before = blobs(layout.path());
    run(&["release", "--image", &dest, "--tag", "extra"]).assert_success();
    assert_eq!(blobs(layout.path()), before);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).expect("index"))
            .expect("json");
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(
        names.contains(&"extra") && names.contains(&"latest"),
        "{names:?}"
    );

    // A bump: one new layer blob, a new config and manifest.
    w.nixpkgs.commit(w.base + 2 * DAY);
    run(&["bump", "--no-git-push", "--image", &dest]).assert_success();
    assert_eq!(blobs(layout.path()), before + 3);
    // skopeo reads the result.
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", &format!("{dest}:latest")])
        .output()
        .expect("skopeo inspect");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
}

#[test]
fn verify_checks_are_data() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    // An extra required path the image lacks: named, nothing pushed.
    let out = w.run(&["release", "--verify-require", "bin/jq,etc/os-release"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("/bin/jq") && out.stderr.contains("/etc/os-release"),
        "{}",
        out.stderr
    );
    assert!(w.registry.tags(IMAGE_REPO).is_empty());

    // Through the environment, the same.
    let env_out = Run::new([
        "release",
        "--image",
        &format!("docker://{}/{IMAGE_REPO}", w.registry.host()),
        "--tls-verify",
        "false",
    ])
    .in_repo(&w.repo)
    .env("RUNNERCTL_REGISTRY_USER", w.registry.user())
    .env("RUNNERCTL_REGISTRY_PASSWORD", w.registry.password())
    .env("RUNNERCTL_VERIFY_REQUIRE", "bin/jq")
    .timeout(TIMEOUT)
    .run();
    env_out.assert_code(1);
    assert!(env_out.stderr.contains("/bin/jq"), "{}", env_out.stderr);

    // The image without /bin/sh and /usr/bin/env (what `#!` lines and
    // job scripts need) fails by default, naming both.
    let noshebang = w.run(&["release", "--attr", "nixos-noshebang"]);
    noshebang.assert_code(1);
    for path in ["missing /bin/sh", "missing /usr/bin/env"] {
        assert!(
            noshebang.stderr.contains(path),
            "{path}\n{}",
            noshebang.stderr
        );
    }
    assert!(
        !noshebang.stderr.contains("missing /bin/bash"),
        "{}",
        noshebang.stderr
    );

    // The image without node: fails by default, passes when the defaults
    // are replaced by paths it has, or with --no-verify.
    let nonode = w.run(&["release", "--attr", "nixos-nonode"]);
    nonode.assert_code(1);
    assert!(nonode.stderr.contains("/bin/node"), "{}", nonode.stderr);
    let stage = |out: &RunOutput, name: &str| report_stage(&out.json(), name);
    let replaced = w.run(&[
        "release",
        "--attr",
        "nixos-nonode",
        "--verify-no-defaults",
        "--verify-require",
        "bin/bash,bin/nix",
        "--json",
    ]);
    replaced.assert_success();
    assert_eq!(stage(&replaced, "verify")["status"], "done");
    // --no-verify: on a fresh state dir without the nix- tag the image is
    // not known as published, so only the flag can skip verify.
    let fresh = tempfile::tempdir().expect("state dir");
    let state_dir = fresh.path().display().to_string();
    let skipped = w.run(&[
        "release",
        "--attr",
        "nixos-nonode",
        "--no-verify",
        "--no-nix-tag",
        "--tag",
        "novfy",
        "--state-dir",
        &state_dir,
        "--json",
    ]);
    skipped.assert_success();
    let verify = stage(&skipped, "verify");
    assert_eq!(verify["status"], "skipped");
    assert!(
        verify["note"]
            .as_str()
            .is_some_and(|n| n.contains("--no-verify")),
        "{verify}"
    );
    assert!(w.registry.digest(IMAGE_REPO, "novfy").is_some());
}

#[test]
fn verify_reads_gzip_and_stream_images_and_runs_in_a_dry_run() {
    let mut w = World::new();
    w.nixpkgs.commit(w.base + DAY);
    for attr in ["nixos-gz", "nixos-stream"] {
        let out = w.run(&["release", "--attr", attr, "--json", "--tag", attr]);
        out.assert_success();
        let report = out.json();
        let verify = report_stage(&report, "verify");
        assert_eq!(verify["status"], "done", "{attr}: {verify}");
        // The decompressed or streamed archive does not outlive the push.
        let cache = w.repo.path().join(".runnerctl/cache");
        let left: Vec<_> = std::fs::read_dir(&cache)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{attr}: left in the cache: {left:?}");
    }
    // The plain image, built but not pushed: a dry run verifies it.
    let built = w.repo.build("nixos-nonode");
    assert!(built.exists());
    let dry = w.run(&["release", "--attr", "nixos-nonode", "--dry-run"]);
    dry.assert_code(1);
    assert!(dry.stderr.contains("/bin/node"), "{}", dry.stderr);
    assert!(w
        .registry
        .tags(IMAGE_REPO)
        .iter()
        .all(|t| t == "nixos-gz" || t == "nixos-stream" || t.starts_with("nix-")));
}
