//! One tag, two architectures, against the real registry and real Nix:
//! `--system x86_64-linux,aarch64-linux` builds the fixture's
//! `packages.aarch64-linux.nixos` on this x86_64 machine through
//! `extra-platforms = aarch64-linux` (its builder is `/bin/sh`, which Nix
//! does not inspect), pushes each image by its own `nix-<hash>` tag, and
//! only then an OCI index under the date and floating tags.

mod common;

use std::path::Path;

use common::{RunOutput, IMAGE_REPO};

const SYSTEMS: &str = "x86_64-linux,aarch64-linux";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct World(common::World);

common::deref_to_world!(World, 0);

impl World {
    fn new() -> Self {
        World(common::World::new())
    }

    /// A world whose runner flake is the fixture's, edited by `edit`.
    fn with_flake(edit: impl Fn(&str) -> String) -> Self {
        let base = common::fresh_time();
        let nixpkgs = common::StandInNixpkgs::new_at(base);
        let flake = edit(common::RUNNER_FLAKE_NIX);
        let repo = common::RunnerRepo::with_flake(
            &nixpkgs,
            &flake,
            &[("build-image.sh", common::RUNNER_BUILD_IMAGE_SH.as_bytes())],
        );
        World(common::World::assemble(
            nixpkgs,
            repo,
            base,
            common::Registry::new(),
        ))
    }

    /// runnerctl with this machine's Nix able to build aarch64-linux.
    fn run_multi(&self, args: &[&str]) -> RunOutput {
        let image = self.image();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--image", &image, "--tls-verify", "false"]);
        let config = self
            .repo
            .nix_env()
            .iter()
            .find(|(k, _)| k == "NIX_CONFIG")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.prepare(common::Run::new(all).in_repo(&self.repo))
            .env(
                "NIX_CONFIG",
                format!("{config}extra-platforms = aarch64-linux\n"),
            )
            .run()
    }

    /// The raw manifest or index at `reference`, as JSON.
    fn raw(&self, reference: &str) -> Option<serde_json::Value> {
        let accept = format!(
            "{INDEX}, application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json"
        );
        let response = self
            .registry
            .request(
                "GET",
                &format!("/v2/{IMAGE_REPO}/manifests/{reference}"),
                &[("Accept", &accept)],
                true,
            )
            .expect("registry answers");
        (response.status == 200).then(|| serde_json::from_slice(&response.body).expect("JSON"))
    }

    /// `skopeo copy --all` of `tag` into a fresh OCI layout: every image an
    /// index lists must be there to pull.
    fn copy_all(&self, tag: &str) {
        let layout = common::new_tempdir("copy-all");
        let copy = std::process::Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!(
                "--src-creds={}:{}",
                self.registry.user(),
                self.registry.password()
            ))
            .arg(self.reference(tag))
            .arg(format!("oci:{}:{tag}", layout.path().display()))
            .output()
            .expect("skopeo runs");
        assert!(copy.status.success(), "{copy:?}");
    }

    fn reference(&self, tag: &str) -> String {
        format!("docker://{}/{IMAGE_REPO}:{tag}", self.registry.host())
    }
}

/// The platforms an index lists, as `os/architecture`, with each digest.
fn platforms(index: &serde_json::Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .expect("an index lists manifests")
        .iter()
        .map(|m| {
            (
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or("?"),
                    m["platform"]["architecture"].as_str().unwrap_or("?")
                ),
                m["digest"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

#[test]
fn two_systems_go_under_latest_as_one_index_and_a_rerun_does_nothing() {
    let w = World::new();
    let out = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    out.assert_success();
    let report = out.json();
    // One progress line per system's image.
    for system in ["x86_64-linux", "aarch64-linux"] {
        assert!(
            out.stderr.contains(&format!("build: {system}: building")),
            "{out}"
        );
        assert!(
            out.stderr.contains(&format!("build: {system}: built")),
            "{out}"
        );
    }
    let systems = report["systems"].as_array().expect("systems in --json");
    assert_eq!(systems.len(), 2, "{report:#}");

    // latest is an index with exactly two manifests, amd64 and arm64.
    let latest = w.raw("latest").expect("latest exists");
    assert_eq!(latest["mediaType"], INDEX, "{latest:#}");
    let listed = platforms(&latest);
    let names: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"], "{latest:#}");
    assert_eq!(
        report["digest"].as_str(),
        w.registry.digest(IMAGE_REPO, "latest").as_deref(),
        "--json names the index's digest"
    );
    // Each system's image keeps its own content tag, at the listed digest,
    // and declares its own architecture.
    for (system, (platform, digest)) in systems.iter().zip(&listed) {
        let out_path = system["out_path"].as_str().expect("out path");
        let hash = Path::new(out_path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .expect("store hash");
        let tag = format!("nix-{hash}");
        assert_eq!(
            w.registry.digest(IMAGE_REPO, &tag).as_deref(),
            Some(digest.as_str()),
            "{tag} ({platform})"
        );
        assert_eq!(system["digest"].as_str(), Some(digest.as_str()));
    }
    // The date tag is the index too.
    let date = report["date"].as_str().expect("date");
    assert_eq!(
        w.registry.digest(IMAGE_REPO, date),
        w.registry.digest(IMAGE_REPO, "latest")
    );

    // skopeo picks the arm64 image for an arm64 host.
    let config = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            "--raw",
            "--override-arch",
            "arm64",
            "--override-os",
            "linux",
            "--tls-verify=false",
        ])
        .arg(format!(
            "--creds={}:{}",
            w.registry.user(),
            w.registry.password()
        ))
        .arg(w.reference("latest"))
        .output()
        .expect("skopeo runs");
    assert!(config.status.success(), "{config:?}");
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).expect("config JSON");
    assert_eq!(config["architecture"], "arm64");

    // skopeo copy --all of latest to an OCI layout: both images come along.
    w.copy_all("latest");

    // status names each system's image and the index.
    let status = common::Run::new(["status"]).in_repo(&w.repo).run();
    status.assert_success();
    for (system, (_, digest)) in ["x86_64-linux", "aarch64-linux"].iter().zip(&listed) {
        assert!(
            status.stdout.contains(&format!("system {system} {digest}")),
            "{status}"
        );
    }
    assert!(
        status.stdout.contains(&format!(
            "digest {}",
            report["digest"].as_str().unwrap_or("?")
        )),
        "{status}"
    );

    // A rerun: nothing built, nothing uploaded, no tag written.
    let builds = w.nix_builds();
    let puts = w.registry.manifest_put_count();
    let again = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    again.assert_success();
    assert_eq!(w.nix_builds(), builds, "a rerun builds nothing");
    assert_eq!(
        w.registry.manifest_put_count(),
        puts,
        "a rerun writes no tag"
    );
    assert_eq!(again.json()["digest"], report["digest"]);
    // The rerun's report and the saved state still name each system's
    // image.
    assert_eq!(again.json()["systems"], report["systems"], "{again}");
    let status = common::Run::new(["status"]).in_repo(&w.repo).run();
    status.assert_success();
    for (system, (_, digest)) in ["x86_64-linux", "aarch64-linux"].iter().zip(&listed) {
        assert!(
            status.stdout.contains(&format!("system {system} {digest}")),
            "after the rerun: {status}"
        );
    }
}

#[test]
fn an_aarch64_image_that_declares_amd64_is_stopped_and_no_floating_tag_moves() {
    let w = World::with_flake(|flake| {
        flake.replace(
            "goArch = { x86_64-linux = \"amd64\"; aarch64-linux = \"arm64\"; };",
            "goArch = { x86_64-linux = \"amd64\"; aarch64-linux = \"amd64\"; };",
        )
    });
    let out = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    out.assert_code(1);
    let message = out.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(
            "aarch64-linux: config: the image declares linux/amd64, but it was built for aarch64-linux, which is linux/arm64"
        ),
        "{out}"
    );
    // verify stops the run before the push: no image, no tag at all.
    let tags = w.registry.tags(IMAGE_REPO);
    assert!(tags.is_empty(), "nothing may be pushed: {tags:?}");
    assert_eq!(w.registry.blob_upload_count(), 0);
}

#[test]
fn a_failed_aarch64_build_moves_nothing_and_the_rerun_builds_only_aarch64() {
    let marker = common::new_tempdir("allow");
    let allow = marker.path().join("allow-aarch64");
    let allow_text = allow.display().to_string();
    let w = World::with_flake(|flake| {
        // The aarch64 image's builder fails until the marker file exists
        // (the sandbox is off, so it can look).
        flake.replace(
            "builder = \"/bin/sh\";\n          args = [ ./build-image.sh ];",
            &format!(
                "builder = \"/bin/sh\";\n          args = if system == \"aarch64-linux\" then [ \"-c\" \"test -e {allow_text} && exec /bin/sh $0\" ./build-image.sh ] else [ ./build-image.sh ];"
            ),
        )
    });
    let first = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    first.assert_code(1);
    assert_eq!(w.registry.digest(IMAGE_REPO, "latest"), None, "{first}");
    let tags = w.registry.tags(IMAGE_REPO);
    assert!(!tags.iter().any(|t| !t.starts_with("nix-")), "{tags:?}");

    std::fs::write(&allow, "").expect("marker");
    let builds_before = w
        .shims
        .calls("nix")
        .into_iter()
        .filter(|a| a.first().map(String::as_str) == Some("build"))
        .count();
    let second = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    second.assert_success();
    let builds: Vec<Vec<String>> = w
        .shims
        .calls("nix")
        .into_iter()
        .filter(|a| a.first().map(String::as_str) == Some("build"))
        .collect();
    let rerun: Vec<&Vec<String>> = builds[builds_before..].iter().collect();
    assert!(
        second.stderr.contains("build: aarch64-linux: built"),
        "{second}"
    );
    assert!(!second.stderr.contains("build: x86_64-linux:"), "{second}");
    assert_eq!(rerun.len(), 1, "one nix build in the rerun: {rerun:?}");
    assert!(
        rerun[0]
            .iter()
            .any(|a| a.ends_with("#packages.aarch64-linux.nixos")),
        "{rerun:?}"
    );
    assert!(
        !rerun[0].iter().any(|a| a.contains("x86_64-linux")),
        "x86_64 is not rebuilt: {rerun:?}"
    );
    let build_note = second.json()["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "build").cloned())
        .expect("build stage");
    assert!(
        build_note["note"]
            .as_str()
            .unwrap_or_default()
            .contains("x86_64-linux: already in the store"),
        "{build_note:#}"
    );
    let latest = w.raw("latest").expect("latest after the rerun");
    assert_eq!(platforms(&latest).len(), 2, "{latest:#}");
}

#[test]
fn promote_and_rollback_move_floating_tags_to_an_index_and_warn_about_a_single_arch_target() {
    let mut w = World::new();
    // An image from before multi-arch: this machine's system only.
    let single = w.run_multi(&["release", "--json"]);
    single.assert_success();
    let old_date = single.json()["date"].as_str().expect("date").to_string();
    let old = w.registry.digest(IMAGE_REPO, "latest").expect("latest");

    // A held multi-arch bump, then promote.
    w.upstream_commit(1);
    let held = w.run_multi(&[
        "bump",
        "--no-git-push",
        "--hold",
        "--system",
        SYSTEMS,
        "--json",
    ]);
    held.assert_success();
    let index = w
        .registry
        .digest(IMAGE_REPO, "candidate")
        .expect("candidate");
    assert_eq!(w.raw("candidate").expect("candidate")["mediaType"], INDEX);
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "latest"),
        Some(old.clone()),
        "--hold moves nothing"
    );
    let promoted = w.run_multi(&["promote", "--system", SYSTEMS, "--json"]);
    promoted.assert_success();
    assert_eq!(promoted.json()["digest"].as_str(), Some(index.as_str()));
    for tag in ["latest", "unstable"] {
        assert_eq!(
            w.registry.digest(IMAGE_REPO, tag).as_deref(),
            Some(index.as_str()),
            "{tag}"
        );
    }

    // Back to the single-arch image: allowed, with a warning naming the
    // system it has no image for.
    let back = w.run_multi(&["rollback", &old_date, "--system", SYSTEMS, "--json"]);
    back.assert_success();
    assert_eq!(w.registry.digest(IMAGE_REPO, "latest"), Some(old.clone()));
    let note = back.json()["stages"][0]["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.contains(&format!(
            "{old_date} has no image for aarch64-linux (it is for linux/amd64)"
        )),
        "{back}"
    );
    // And forward again to the index: no warning.
    let forward = w.run_multi(&["rollback", "candidate", "--system", SYSTEMS, "--json"]);
    forward.assert_success();
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "latest").as_deref(),
        Some(index.as_str())
    );
    let note = forward.json()["stages"][0]["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!note.contains("warning"), "{forward}");
}

/// Every blob (layers and config) of the images an index lists.
fn blobs_of(w: &World, index: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut blobs = std::collections::BTreeSet::new();
    for (_, digest) in platforms(index) {
        let manifest = w.raw(&digest).expect("listed manifest");
        blobs.insert(
            manifest["config"]["digest"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        );
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            blobs.insert(layer["digest"].as_str().unwrap_or("?").to_string());
        }
    }
    blobs
}

#[test]
fn a_bump_that_changes_one_layer_per_system_uploads_only_the_new_blobs() {
    let mut w = World::new();
    w.run_multi(&["release", "--system", SYSTEMS])
        .assert_success();
    let before = blobs_of(&w, &w.raw("latest").expect("latest"));
    let uploads = w.registry.blob_upload_count();
    // A new nixpkgs commit changes exactly the last layer of each image
    // (and so each config).
    w.upstream_commit(1);
    let out = w.run_multi(&["bump", "--no-git-push", "--system", SYSTEMS, "--json"]);
    out.assert_success();
    let latest = w.raw("latest").expect("latest");
    assert_eq!(platforms(&latest).len(), 2);
    let new: Vec<String> = blobs_of(&w, &latest).difference(&before).cloned().collect();
    // Two configs, and the changed layer of each system (the fixture's is
    // the same bytes on both, so one blob).
    assert!((3..=4).contains(&new.len()), "{new:?}");
    assert_eq!(
        w.registry.blob_upload_count() - uploads,
        new.len(),
        "only the new blobs are uploaded: {new:?}\n{out}"
    );
}

#[test]
fn an_unknown_system_or_systems_without_content_tags_are_refused_before_anything_runs() {
    let w = World::new();
    let unknown = w.run_multi(&["release", "--system", "x86_64-linux,x86_64-darwin"]);
    assert_ne!(unknown.code, Some(0), "{unknown}");
    assert!(
        unknown.stderr.contains("runnerctl::config::system"),
        "{unknown}"
    );
    assert!(unknown.stderr.contains("x86_64-darwin"), "{unknown}");
    let untagged = w.run_multi(&["release", "--system", SYSTEMS, "--no-nix-tag"]);
    assert_ne!(untagged.code, Some(0), "{untagged}");
    assert!(
        untagged
            .stderr
            .contains("runnerctl::config::systems_without_nix_tag"),
        "{untagged}"
    );
    // A system the flake has no package for: named before anything runs.
    let absent = w.run_multi(&["release", "--system", "x86_64-linux,riscv64-linux"]);
    assert_eq!(absent.code, Some(1), "{absent}");
    assert!(
        absent
            .stderr
            .contains("the flake has no output `packages.riscv64-linux.nixos`"),
        "{absent}"
    );
    assert_eq!(w.nix_builds(), 0, "nothing was built");
    assert!(w.registry.tags(IMAGE_REPO).is_empty(), "nothing was pushed");
}

#[test]
fn prune_keeps_every_manifest_a_kept_index_lists() {
    let mut w = World::new();
    let first = w.run_multi(&["release", "--system", SYSTEMS, "--json"]);
    first.assert_success();
    let old_index = w.raw("latest").expect("latest");
    w.upstream_commit(1);
    let second = w.run_multi(&["bump", "--no-git-push", "--system", SYSTEMS, "--json"]);
    second.assert_success();
    let new_index = w.raw("latest").expect("latest");
    let repo = w.repo.path().display().to_string();
    let out = w.run_multi(&["prune", "--keep", "1", "-C", &repo, "--json"]);
    out.assert_success();

    // The kept index's images are all still there, by digest and by their
    // content tags; the older index's are gone.
    for (platform, digest) in platforms(&new_index) {
        assert!(w.raw(&digest).is_some(), "{platform} {digest}\n{out}");
    }
    for (platform, digest) in platforms(&old_index) {
        assert!(
            w.raw(&digest).is_none(),
            "{platform} {digest} was pruned\n{out}"
        );
    }
    for system in second.json()["systems"].as_array().expect("systems") {
        let hash = system["out_path"]
            .as_str()
            .and_then(|p| p.strip_prefix("/nix/store/"))
            .and_then(|n| n.split('-').next())
            .expect("hash");
        assert!(
            w.registry
                .digest(IMAGE_REPO, &format!("nix-{hash}"))
                .is_some(),
            "{system}"
        );
    }
    // And latest still pulls for every platform.
    w.copy_all("latest");
}
