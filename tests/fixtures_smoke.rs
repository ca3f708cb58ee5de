//! Sanity checks for the test fixtures themselves (tests/common): the
//! fixture flake builds real docker-archives that skopeo and the registry
//! accept, and the helpers observe what runnerctl's tests need.

mod common;
mod engine_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn fixture_image_builds_and_pushes_to_the_registry() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    assert_eq!(repo.nixpkgs_node(), "nixpkgs");
    assert_eq!(repo.locked_nixpkgs_rev(), nixpkgs.rev());
    assert_eq!(repo.locked_nixpkgs_last_modified(), T0);
    assert_eq!(repo.status(), "", "fixture clone must be clean");
    assert_eq!(repo.head(), repo.remote_head());
    assert_eq!(
        repo.git(&["rev-parse", "--abbrev-ref", "main@{upstream}"]),
        "origin/main"
    );

    let out = repo.build("nixos");
    let meta = fs::metadata(&out).expect("stat the built image");
    assert!(meta.is_file(), "{} must be a file", out.display());

    let image = DockerArchive::read(&out);
    assert_eq!(image.manifest[0]["RepoTags"][0], "nixos:latest");
    assert_eq!(image.layers.len(), 4);
    assert_eq!(image.layer_digests, image.diff_ids());
    for f in [
        "bin/bash",
        "bin/nix",
        "bin/node",
        "bin/git",
        "bin/curl",
        "etc/nix/nix.conf",
        "etc/ssl/certs/ca-bundle.crt",
    ] {
        assert!(
            image.files.contains(f),
            "image lacks {f}: {:?}",
            image.files
        );
    }
    assert!(image
        .file_text("etc/nix/nix.conf")
        .expect("nix.conf")
        .contains("experimental-features = nix-command flakes"));
    let cfg = &image.config;
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["/bin/bash"]));
    let env = cfg["config"]["Env"].as_array().expect("Env");
    for var in [
        "PATH=/bin",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
        "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
        "HOME=/root",
    ] {
        assert!(env.iter().any(|e| e == var), "Env lacks {var}: {env:?}");
    }
    assert_eq!(cfg["architecture"], "amd64");
    assert_eq!(cfg["os"], "linux");
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");

    let registry = Registry::new();
    assert!(registry.tags(IMAGE_REPO).is_empty());
    assert_eq!(registry.digest(IMAGE_REPO, "latest"), None);
    skopeo_push(&registry, &out, IMAGE_REPO, "latest");
    assert_eq!(registry.tags(IMAGE_REPO), vec!["latest".to_string()]);
    let digest = registry
        .digest(IMAGE_REPO, "latest")
        .expect("tag latest after push");
    assert!(digest.starts_with("sha256:"), "{digest}");
    // 4 layers + config.
    assert_eq!(registry.blob_upload_count(), 5, "{}", registry.log());

    // Pushing the same image again (via an authfile this time) uploads
    // nothing: skopeo finds every blob already there.
    let authfile = tempfile::NamedTempFile::new().expect("temp authfile");
    registry.write_authfile(authfile.path());
    let ok = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--authfile={}", authfile.path().display()))
        .arg(format!("docker-archive:{}", out.display()))
        .arg(format!(
            "docker://{}",
            registry.image_ref(IMAGE_REPO, "2023-11-14")
        ))
        .status()
        .expect("run skopeo");
    assert!(ok.success());
    assert_eq!(registry.blob_upload_count(), 5);
    assert_eq!(registry.digest(IMAGE_REPO, "2023-11-14"), Some(digest));

    // The archive is also accepted by the oci: transport.
    let oci = tempfile::tempdir().expect("temp oci dir");
    let status = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("docker-archive:{}", out.display()))
        .arg(format!("oci:{}:latest", oci.path().display()))
        .status()
        .expect("run skopeo");
    assert!(status.success());
    assert!(oci.path().join("index.json").is_file());
}

#[test]
fn a_new_nixpkgs_commit_changes_exactly_one_layer() {
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    let before_path = repo.build("nixos");
    let before = DockerArchive::read(&before_path);

    let rev = nixpkgs.commit(T0 + DAY);
    repo.update_nixpkgs();
    assert_eq!(repo.locked_nixpkgs_rev(), rev);
    assert_eq!(repo.locked_nixpkgs_last_modified(), T0 + DAY);
    let after_path = repo.build("nixos");
    let after = DockerArchive::read(&after_path);

    let (b, a) = (before.diff_ids(), after.diff_ids());
    assert_eq!(b.len(), a.len());
    let changed: Vec<usize> = (0..b.len()).filter(|&i| b[i] != a[i]).collect();
    assert_eq!(changed, vec![b.len() - 1], "before {b:?}\nafter {a:?}");
    assert_eq!(after.config["created"], "2023-11-15T22:13:20Z");
    let input = after.file_text("etc/nixpkgs-input").expect("nixpkgs layer");
    assert!(input.contains(&rev), "{input}");

    // Pushing the new image over the old one uploads only the changed layer
    // and the config.
    let registry = Registry::new();
    skopeo_push(&registry, &before_path, IMAGE_REPO, "latest");
    let first = registry.digest(IMAGE_REPO, "latest");
    let uploads = registry.blob_upload_count();
    skopeo_push(&registry, &after_path, IMAGE_REPO, "latest");
    assert_eq!(registry.blob_upload_count() - uploads, 2);
    assert_ne!(registry.digest(IMAGE_REPO, "latest"), first);
}

#[test]
fn variants_gz_nonode_and_stream() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    let plain_path = repo.build("nixos");
    let plain = DockerArchive::read(&plain_path);

    let gz_path = repo.build("nixos-gz");
    assert!(gz_path.to_string_lossy().ends_with(".tar.gz"));
    let gz_bytes = fs::read(&gz_path).expect("read gz image");
    assert_eq!(&gz_bytes[..2], &[0x1f, 0x8b], "gzip magic");
    let gz = DockerArchive::read(&gz_path);
    assert_eq!(gz.diff_ids(), plain.diff_ids());

    let nonode = DockerArchive::read(&repo.build("nixos-nonode"));
    assert!(!nonode.files.contains("bin/node"));
    assert!(nonode.files.contains("bin/bash"));
    assert_eq!(nonode.layers.len(), 3);
    assert_eq!(nonode.diff_ids()[..2], plain.diff_ids()[..2]);

    let script = repo.build("nixos-stream");
    let mode = fs::metadata(&script)
        .expect("stat stream script")
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "stream script must be executable");
    let out = Command::new(&script)
        .output()
        .expect("run the stream script");
    assert!(out.status.success());
    let plain_bytes = fs::read(&plain_path).expect("read plain image");
    assert_eq!(out.stdout, plain_bytes, "stream output = plain archive");
    let streamed = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(streamed.path(), &out.stdout).expect("write streamed archive");
    let inspect = Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--raw"])
        .arg(format!("docker-archive:{}", streamed.path().display()))
        .output()
        .expect("run skopeo inspect");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // aarch64 evaluates (it is not built here).
    let drv = run_checked(nix_cmd(repo.path(), repo.nix_env()).args([
        "eval",
        "--raw",
        ".#packages.aarch64-linux.nixos.drvPath",
    ]));
    assert!(drv.ends_with("nixos-image.tar.drv"), "{drv}");
}

#[test]
fn shadowed_nixpkgs_input_gets_node_nixpkgs_2() {
    let mut nixpkgs = StandInNixpkgs::new();
    let old = nixpkgs.rev();
    nixpkgs.commit(T0 + DAY);
    let repo = RunnerRepo::with_shadowed_nixpkgs(&nixpkgs, &old);
    assert_eq!(repo.nixpkgs_node(), "nixpkgs_2");
    let lock = repo.lock_json();
    assert_eq!(lock["nodes"]["nixpkgs"]["locked"]["rev"], old.as_str());
    assert_eq!(lock["nodes"]["base"]["inputs"]["nixpkgs"], "nixpkgs");
    assert_eq!(repo.locked_nixpkgs_rev(), nixpkgs.rev());

    let rev = nixpkgs.commit(T0 + 2 * DAY);
    repo.update_nixpkgs();
    let lock = repo.lock_json();
    assert_eq!(lock["nodes"]["nixpkgs_2"]["locked"]["rev"], rev.as_str());
    assert_eq!(lock["nodes"]["nixpkgs"]["locked"]["rev"], old.as_str());
    assert_eq!(repo.root_input_node("nixpkgs"), "nixpkgs_2");
}

#[test]
fn remote_can_move_under_the_clone() {
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    let head = repo.head();
    assert_eq!(repo.commit_count_on_remote(), 2);

    repo.push_unrelated_readme_commit();
    assert_ne!(repo.remote_head(), head);
    assert_eq!(repo.head(), head, "the working clone is not touched");
    assert_eq!(repo.commit_count_on_remote(), 3);

    let rev = nixpkgs.commit(T0 + DAY);
    repo.push_remote_lock_update();
    assert_eq!(repo.commit_count_on_remote(), 4);
    let subjects = repo.remote_log_subjects();
    assert_eq!(subjects[0], "flake.lock: update nixpkgs (elsewhere)");
    assert_eq!(subjects[1], "README: mention the registry");
    let remote_lock = git(repo.remote_path(), &["show", "refs/heads/main:flake.lock"]);
    assert!(remote_lock.contains(&rev));

    repo.push_reformatted_lock();
    assert_eq!(repo.commit_count_on_remote(), 5);
}

#[test]
fn registry_stops_and_restarts_on_the_same_port() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    let image = repo.build("nixos");
    let mut registry = Registry::new();
    let host = registry.host();
    skopeo_push(&registry, &image, IMAGE_REPO, "latest");
    let digest = registry.digest(IMAGE_REPO, "latest");

    registry.stop();
    assert!(registry.request("GET", "/v2/", &[], false).is_err());
    registry.start();
    assert_eq!(registry.host(), host);
    assert_eq!(registry.digest(IMAGE_REPO, "latest"), digest);
    let ping = registry
        .request("GET", "/v2/", &[], true)
        .expect("GET /v2/");
    assert_eq!(ping.status, 200);
}

#[test]
fn shims_log_calls_and_fail_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = dir.path().join("remote.git");
    let work = dir.path().join("work");
    git(dir.path(), &["init", "--quiet", "--bare", "remote.git"]);
    git(
        dir.path(),
        &["init", "--quiet", "--initial-branch=main", "work"],
    );
    git(&work, &["commit", "--quiet", "--allow-empty", "-m", "x"]);
    git(
        &work,
        &["remote", "add", "origin", &remote.display().to_string()],
    );

    let mut shims = PathShims::new();
    shims
        .log_calls("git")
        .fail_once("git", &["push"], 7, "fatal: injected push failure");
    let push = || {
        Run::program("git", ["push", "--quiet", "origin", "main"])
            .cwd(&work)
            .shims(&shims)
            .run()
    };
    let first = push();
    first.assert_code(7);
    assert!(first.stderr.contains("injected push failure"), "{first}");
    push().assert_success();
    assert_eq!(shims.count("git", &["push"]), 2);
    assert_eq!(shims.faults_fired("git"), 1);
    assert_eq!(
        shims.calls("git")[0],
        vec!["push", "--quiet", "origin", "main"]
    );

    let slow = Run::program("sh", ["-c", "sleep 30"])
        .timeout(Duration::from_millis(300))
        .run();
    assert!(slow.timed_out && slow.code.is_none(), "{slow:?}");
}

#[test]
fn the_runnable_fixture_carries_the_extra_ca_and_follows_its_nixpkgs_input() {
    let mut nixpkgs = StandInNixpkgs::new();
    let ca = "-----BEGIN CERTIFICATE-----\nrunnerctl fixture check\n-----END CERTIFICATE-----\n";
    let repo = engine_support::runnable_repo(&nixpkgs, Some(ca));

    let good_path = repo.build("nixos");
    let good = DockerArchive::read(&good_path);
    for f in [
        "bin/bash", "bin/node", "bin/nix", "bin/git", "bin/curl", "bin/tail",
    ] {
        assert!(good.files.contains(f), "nixos lacks {f}");
    }
    assert_eq!(
        good.file_text("etc/nixpkgs-input").as_deref(),
        Some(format!("{}\n", nixpkgs.rev()).as_str())
    );
    let bundle = good
        .file_text("etc/ssl/certs/ca-bundle.crt")
        .expect("CA bundle");
    assert!(
        bundle.ends_with(ca),
        "the extra CA is not at the end of the bundle"
    );
    assert!(bundle.len() > ca.len(), "the host's CAs are missing");

    // The broken variants are checked by what they do: tests/smoke.rs and
    // tests/act_job.rs.

    // A new nixpkgs commit makes a new image.
    let rev = nixpkgs.commit(T0 + DAY);
    repo.update_nixpkgs();
    let updated_path = repo.build("nixos");
    assert_ne!(updated_path, good_path);
    let updated = DockerArchive::read(&updated_path);
    assert_eq!(
        updated.file_text("etc/nixpkgs-input").as_deref(),
        Some(format!("{rev}\n").as_str())
    );
}
