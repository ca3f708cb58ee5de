//! Candidate → promote → rollback against the real registry: `--hold`
//! pushes only the content tag and the candidate tag, `promote` and
//! `rollback` move tags with manifest PUTs of bytes the registry already
//! holds (0 blob uploads, asserted on the registry's log), and a release
//! without `--hold` does not undo a rollback.

mod common;

use std::time::Duration;

use common::{Run, RunOutput, IMAGE_REPO};

const TIMEOUT: Duration = Duration::from_secs(300);

/// The registry world of tests/common, with what these tests ask of it.
struct World(common::World);

common::deref_to_world!(World, 0);

impl World {
    fn new() -> Self {
        World(common::World::new())
    }

    /// A bump to a new nixpkgs commit `days` after the start; its date tag.
    fn bump_to_day(&mut self, days: i64, extra: &[&str]) -> String {
        self.upstream_commit(days);
        let mut args = vec!["bump", "--no-git-push", "--json"];
        args.extend(extra);
        let out = self.run(&args);
        out.assert_success();
        out.json()["date"].as_str().expect("date tag").to_string()
    }

    /// runnerctl with the default destination, the checkout's OCI layout.
    fn local(&self, args: &[&str]) -> RunOutput {
        Run::new(args.to_vec())
            .in_repo(&self.repo)
            .timeout(TIMEOUT)
            .run()
    }

    fn digest(&self, tag: &str) -> Option<String> {
        self.registry.digest(IMAGE_REPO, tag)
    }

    fn tags(&self) -> Vec<String> {
        let mut tags = self.registry.tags(IMAGE_REPO);
        tags.sort();
        tags
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn hold_pushes_the_candidate_and_promote_moves_the_floating_tags_with_manifest_puts_only() {
    let mut w = World::new();
    let date = w.bump_to_day(1, &["--hold"]);

    // Held: the content tag and the candidate, no floating tag.
    let tags = w.tags();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert!(tags.contains(&"candidate".to_string()), "{tags:?}");
    let nix_tag = tags
        .iter()
        .find(|t| t.starts_with("nix-"))
        .expect("a nix- tag")
        .clone();
    let candidate = w.digest("candidate").expect("candidate digest");
    assert_eq!(w.digest(&nix_tag).as_deref(), Some(candidate.as_str()));
    // bump --hold still committed flake.lock.
    assert!(
        w.repo.git(&["log", "-1", "--format=%s"]).contains(&date),
        "the bump commit names {date}"
    );

    let blobs = w.registry.blob_upload_count();
    let builds = w.nix_builds();
    let copies = w.shims.count("skopeo", &["copy"]);
    let out = w.run(&["promote", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["outcome"], "success", "{out}");
    for tag in ["latest", "unstable", date.as_str()] {
        assert_eq!(
            w.digest(tag).as_deref(),
            Some(candidate.as_str()),
            "{tag} after promote\n{out}"
        );
    }
    assert_eq!(
        w.registry.blob_upload_count(),
        blobs,
        "promote uploads no blob"
    );
    assert_eq!(w.nix_builds(), builds, "promote builds nothing");
    assert_eq!(
        w.shims.count("skopeo", &["copy"]),
        copies,
        "promote copies no image"
    );
    let puts = sorted(w.registry.manifest_puts_by_ref());
    for tag in ["latest", "unstable", date.as_str()] {
        assert!(puts.iter().any(|r| r == tag), "a PUT of {tag}: {puts:?}");
    }

    // Idempotent: a second promote changes nothing.
    let puts_before = w.registry.manifest_put_count();
    let again = w.run(&["promote", "--json"]);
    again.assert_success();
    assert_eq!(w.registry.manifest_put_count(), puts_before, "{again}");
    assert_eq!(again.json()["stages"][1]["status"], "skipped", "{again}");

    // The state records the promote stage, and status shows it.
    let status = Run::new(["status", "--json"]).in_repo(&w.repo).run();
    status.assert_success();
    let state = &status.json()["state"];
    assert_eq!(state["command"], "promote", "{status}");
    assert_eq!(state["stages"]["promote"]["status"], "skipped", "{status}");
    assert_eq!(
        state["stages"]["promote"]["outputs"]["digest"],
        candidate.as_str(),
        "{status}"
    );
    let human = Run::new(["status"]).in_repo(&w.repo).run();
    human.assert_success();
    assert!(
        human
            .stdout
            .lines()
            .any(|l| l.contains(" promote ") && l.contains("skipped")),
        "{human}"
    );
}

#[test]
fn promote_without_a_held_image_fails_and_changes_nothing() {
    let w = World::new();
    let out = w.run(&["promote"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "this flake.lock's image is not at the destination; run `runnerctl release --hold` first"
        ),
        "{out}"
    );
    assert!(w.tags().is_empty(), "{:?}", w.tags());
    assert_eq!(w.registry.manifest_put_count(), 0);
    assert_eq!(w.nix_builds(), 0, "promote never builds");
}

#[test]
fn rollback_moves_latest_back_and_a_release_without_hold_does_not_undo_it() {
    let mut w = World::new();
    let first = w.bump_to_day(1, &[]);
    let second = w.bump_to_day(2, &[]);
    let old = w.digest(&first).expect("first image");
    let new = w.digest(&second).expect("second image");
    assert_ne!(old, new);
    assert_eq!(w.digest("latest").as_deref(), Some(new.as_str()));

    // A dry run names each move and changes nothing.
    let puts = w.registry.manifest_put_count();
    let plan = w.run(&["rollback", &first, "--dry-run"]);
    plan.assert_success();
    for tag in ["latest", "unstable"] {
        assert!(
            plan.stdout.contains(&format!("{tag}: {new} → {old}")),
            "{tag} in the plan:\n{plan}"
        );
    }
    assert_eq!(w.registry.manifest_put_count(), puts);
    assert_eq!(w.digest("latest").as_deref(), Some(new.as_str()));

    // The rollback itself: no flake, state under $XDG_STATE_HOME.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let xdg = elsewhere.path().join("state");
    let blobs = w.registry.blob_upload_count();
    let out = w
        .prepare(
            Run::new([
                "rollback",
                first.as_str(),
                "--image",
                &w.image(),
                "--tls-verify",
                "false",
            ])
            .cwd(elsewhere.path())
            .env("XDG_STATE_HOME", xdg.display().to_string()),
        )
        .run();
    out.assert_success();
    for tag in ["latest", "unstable", "rolled-back"] {
        assert_eq!(w.digest(tag).as_deref(), Some(old.as_str()), "{tag}\n{out}");
    }
    assert_eq!(w.digest(&second).as_deref(), Some(new.as_str()));
    assert_eq!(
        w.registry.blob_upload_count(),
        blobs,
        "rollback uploads no blob"
    );
    // The manifest is the first image's own bytes.
    assert_eq!(
        w.registry.manifest(IMAGE_REPO, "latest"),
        w.registry.manifest(IMAGE_REPO, &first)
    );
    let status = Run::new([
        "status",
        "--state-dir",
        &xdg.join("runnerctl").display().to_string(),
    ])
    .cwd(elsewhere.path())
    .run();
    status.assert_success();
    assert!(
        status
            .stdout
            .contains(&format!("rolled back to {first} ({old}) since")),
        "{status}"
    );

    // The next bump without --hold pushes its image and date tag and
    // commits, but leaves the rolled-back tags, and says how to move them.
    let third = w.bump_to_day(3, &[]);
    let newest = w.digest(&third).expect("third image");
    assert_eq!(w.digest("latest").as_deref(), Some(old.as_str()));
    assert_eq!(w.digest("unstable").as_deref(), Some(old.as_str()));
    let log = w.repo.git(&["log", "-1", "--format=%s"]);
    assert!(log.contains(&third), "{log}");

    // promote moves them on, and the marker no longer holds anything.
    let promoted = w.run(&["promote"]);
    promoted.assert_success();
    assert_eq!(w.digest("latest").as_deref(), Some(newest.as_str()));
    let fourth = w.bump_to_day(4, &[]);
    assert_eq!(
        w.digest("latest"),
        w.digest(&fourth),
        "latest follows again"
    );
}

#[test]
fn a_rollback_warning_names_promote() {
    let mut w = World::new();
    let first = w.bump_to_day(1, &[]);
    w.bump_to_day(2, &[]);
    w.run(&["rollback", &first]).assert_success();
    w.upstream_commit(3);
    let out = w.run(&["bump", "--no-git-push"]);
    out.assert_success();
    assert!(
        out.stderr.contains("rolled back") && out.stderr.contains("runnerctl promote"),
        "{out}"
    );
}

#[test]
fn rollback_by_digest_and_to_unknown_targets() {
    let mut w = World::new();
    let first = w.bump_to_day(1, &[]);
    w.bump_to_day(2, &[]);
    let old = w.digest(&first).expect("first image");
    let before: Vec<(String, Option<String>)> = w
        .tags()
        .into_iter()
        .map(|t| (w.digest(&t), t))
        .map(|(d, t)| (t, d))
        .collect();
    let puts = w.registry.manifest_put_count();

    for target in ["19990101".to_string(), format!("sha256:{}", "0".repeat(64))] {
        let out = w.run(&["rollback", &target]);
        out.assert_code(1);
        assert!(out.stderr.contains("is not at"), "{out}");
        assert!(out.stderr.contains("nothing was changed"), "{out}");
    }
    let bad = w.run(&["rollback", "sha256:xyz"]);
    bad.assert_code(1);
    assert!(
        bad.stderr.contains("neither a tag nor a sha256: digest"),
        "{bad}"
    );
    let after: Vec<(String, Option<String>)> = w
        .tags()
        .into_iter()
        .map(|t| (w.digest(&t), t))
        .map(|(d, t)| (t, d))
        .collect();
    assert_eq!(before, after);
    assert_eq!(w.registry.manifest_put_count(), puts);

    // A digest, and only the tag asked for.
    let out = w.run(&["rollback", &old, "--tag", "unstable", "--json"]);
    out.assert_success();
    assert_eq!(out.json()["digest"], old.as_str(), "{out}");
    assert_eq!(w.digest("unstable").as_deref(), Some(old.as_str()));
    assert_ne!(w.digest("latest").as_deref(), Some(old.as_str()));
}

#[test]
fn promote_warns_when_the_candidate_is_another_image() {
    let mut w = World::new();
    w.bump_to_day(1, &["--hold"]);
    let candidate = w.digest("candidate").expect("candidate");
    let date = w.bump_to_day(2, &[]);
    let current = w.digest(&date).expect("second image");
    let out = w.run(&["promote"]);
    out.assert_success();
    assert!(
        out.stderr.contains(&format!(
            "candidate points at {candidate}, not at this flake.lock's image {current}"
        )),
        "{out}"
    );
}

#[test]
fn hold_refuses_contradicting_options_before_anything_runs() {
    let w = World::new();
    let out = w.run(&["release", "--hold", "--no-nix-tag"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("--hold needs the content tag nix-<hash>"),
        "{out}"
    );
    let out = w.run(&["release", "--hold", "--candidate-tag", "latest"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("the candidate tag `latest` is also one of the floating tags"),
        "{out}"
    );
    assert!(w.tags().is_empty());
    assert_eq!(w.nix_builds(), 0);
}

/// Tag → digest in an OCI layout's index.json.
fn layout_tags(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index.json parses");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|d| {
            Some((
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()?
                    .to_string(),
                d["digest"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn hold_promote_and_rollback_in_an_oci_layout() {
    let mut w = World::new();
    let layout = w.repo.path().join(".runnerctl/oci");
    w.upstream_commit(1);
    let first = w.local(&["bump", "--no-git-push", "--json"]);
    first.assert_success();
    let first_date = first.json()["date"].as_str().expect("date").to_string();
    w.upstream_commit(2);
    let held = w.local(&["bump", "--no-git-push", "--hold", "--json"]);
    held.assert_success();
    let tags = layout_tags(&layout);
    let candidate = tags["candidate"].clone();
    assert_ne!(tags["latest"], candidate, "{tags:?}");

    w.local(&["promote"]).assert_success();
    let tags = layout_tags(&layout);
    assert_eq!(tags["latest"], candidate, "{tags:?}");
    assert_eq!(tags["unstable"], candidate, "{tags:?}");

    let out = w.local(&["rollback", &first_date, "-C", "."]);
    out.assert_success();
    let tags = layout_tags(&layout);
    assert_eq!(tags["latest"], tags[&first_date], "{tags:?}\n{out}");
    assert_eq!(tags["rolled-back"], tags[&first_date], "{tags:?}");
    assert_eq!(tags["candidate"], candidate);
}
