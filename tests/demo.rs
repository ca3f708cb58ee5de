//! `runnerctl demo` — the README's first command — really bumps, twice.

mod common;

use common::Run;

#[test]
fn demo_bumps_end_to_end_and_the_second_run_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let out = Run::new([
        "demo",
        "--dir",
        &workspace.display().to_string(),
        "--progress",
        "plain",
    ])
    .run();
    out.assert_success();
    assert!(out.stdout.contains("1st bump: success"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("2nd bump: up-to-date (0 stages did work)"),
        "{}",
        out.stdout
    );

    // The bare remote has the bump commit, and the OCI layout the tags.
    let remote = workspace.join("remote.git");
    let log = std::process::Command::new("git")
        .args([
            "--git-dir",
            &remote.display().to_string(),
            "log",
            "--format=%s",
            "main",
        ])
        .output()
        .expect("git log");
    let subjects = String::from_utf8_lossy(&log.stdout);
    assert!(
        subjects
            .lines()
            .next()
            .is_some_and(|s| s == "chore(ci): Update nixos to 20260702"),
        "{subjects}"
    );
    let layout = workspace.join("runner/.runnerctl/oci");
    for tag in ["latest", "unstable", "20260702"] {
        let inspect = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:{tag}", layout.display())])
            .output()
            .expect("skopeo");
        assert!(
            inspect.status.success(),
            "{tag}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
    }
}
