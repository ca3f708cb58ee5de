//! `runnerctl prune` on `oci:` layouts (index entries, then the blobs
//! nothing references), and bad input refused before anything changes.
//! Issue 14; the registry cases are in tests/prune.rs.

mod common;
mod prune_support;

use std::fs;
use std::path::{Path, PathBuf};

use common::{new_tempdir, Run, RunOutput};
use prune_support::*;

#[test]
fn prune_on_an_oci_layout_removes_index_entries_and_unreferenced_blobs() {
    let tmp = new_tempdir("prune-oci");
    let dir: PathBuf = tmp.path().join("oci");
    let (d1, d2, d15, d3) = (days_ago(30), days_ago(20), days_ago(15), days_ago(10));
    let image = |seed: &str| Image::new(seed, "2026-01-01T00:00:00Z");
    // x: an old date; y: older but rolled back to; v: 15 days old; z: the
    // newest, under latest; w: a content tag alone.
    let (x, y, v, z, w) = (image("x"), image("y"), image("v"), image("z"), image("w"));
    write_layout(
        &dir,
        &[
            (&x, vec![d1.clone(), content_tag("x")]),
            (&y, vec![d2.clone(), content_tag("y"), "rolled-back".into()]),
            (&v, vec![d15.clone(), content_tag("v")]),
            (
                &z,
                vec![
                    d3.clone(),
                    content_tag("z"),
                    "latest".into(),
                    "unstable".into(),
                ],
            ),
            (&w, vec![content_tag("w")]),
        ],
    );
    let state = tmp.path().join("state");
    let image = format!("oci:{}", dir.display());
    let prune = |extra: &[&str]| {
        let mut args = vec!["prune", "--keep", "1", "--image", &image, "--state-dir"];
        let state = state.display().to_string();
        args.push(&state);
        args.extend(extra);
        Run::new(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .timeout(TIMEOUT)
            .run()
    };
    let digests = |out: &RunOutput| -> Vec<String> {
        out.json()["deletes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let index_before = fs::read(dir.join("index.json")).unwrap();
    let dry = prune(&["--dry-run"]);
    dry.assert_success();
    assert!(
        dry.stdout.contains(&d1) && dry.stdout.contains("rolled-back"),
        "{dry}"
    );
    // --keep-days keeps what either rule keeps: v is 15 days old.
    let dry = prune(&["--dry-run", "--keep-days", "16", "--json"]);
    dry.assert_success();
    assert_eq!(digests(&dry), [x.digest.clone(), w.digest.clone()], "{dry}");
    let dry = prune(&["--dry-run", "--keep-days", "14", "--json"]);
    assert_eq!(
        digests(&dry),
        [x.digest.clone(), v.digest.clone(), w.digest.clone()],
        "{dry}"
    );
    assert_eq!(fs::read(dir.join("index.json")).unwrap(), index_before);
    assert!(blob_exists(&dir, &x.layer));
    assert!(
        !state.join("state.json").exists(),
        "a dry run records nothing"
    );

    let out = prune(&["--json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["deleted"], 3, "{out}");
    assert_eq!(
        report["blobs_removed"], 9,
        "x's, v's and w's manifest, config and layer"
    );
    let mut expected = set(&[&d2, "rolled-back", &d3, "latest", "unstable"]);
    expected.insert(content_tag("y"));
    expected.insert(content_tag("z"));
    assert_eq!(layout_tags(&dir), expected);
    for gone in [&x, &v, &w] {
        for bytes in [&gone.layer, &gone.config, &gone.manifest] {
            assert!(!blob_exists(&dir, bytes));
        }
    }
    for image in [&y, &z] {
        for bytes in [&image.layer, &image.config, &image.manifest] {
            assert!(blob_exists(&dir, bytes));
        }
    }
    common::run_checked(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:latest", dir.display())),
    );
    assert_eq!(
        recorded_deletes(&state),
        [&x, &v, &w]
            .iter()
            .map(|i| (i.digest.clone(), "deleted".to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(state_json(&state)["prune"]["blobs_removed"], 9);
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    let tmp = new_tempdir("prune-bad");
    let dir = tmp.path().join("oci");
    let old = Image::new("old", "2026-01-01T00:00:00Z");
    write_layout(&dir, &[(&old, vec![days_ago(400)])]);
    let index = fs::read(dir.join("index.json")).unwrap();
    let state = tmp.path().join("state").display().to_string();
    let image = format!("oci:{}", dir.display());
    let run = |args: &[&str]| {
        let mut all = vec!["prune", "--image", &image, "--state-dir", &state];
        all.extend(args);
        Run::new(all.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .timeout(TIMEOUT)
            .run()
    };
    // Usage errors: exit 2, with --json a failure document too.
    let out = run(&[]);
    out.assert_code(2);
    assert!(out.stderr.contains("--keep"), "{out}");
    let out = run(&["--keep", "0", "--json"]);
    out.assert_code(2);
    assert_eq!(out.json()["command"], "prune");
    assert_eq!(out.json()["outcome"], "failure");
    // A {date} template is no floating tag.
    let out = run(&["--keep", "1", "--tag", "nightly-{date}", "--json"]);
    out.assert_code(1);
    assert!(out.stderr.contains("runnerctl::prune::bad_tag"), "{out}");
    assert!(out.json()["error"]["help"]
        .as_str()
        .unwrap()
        .contains("--tag"));
    // Not an OCI layout.
    let not_layout = tmp.path().join("notes");
    fs::create_dir_all(&not_layout).unwrap();
    fs::write(not_layout.join("todo.txt"), "mine").unwrap();
    let out = Run::new([
        "prune",
        "--keep",
        "1",
        "--image",
        &format!("oci:{}", not_layout.display()),
        "--state-dir",
        &state,
    ])
    .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("runnerctl::layout::not_a_layout"),
        "{out}"
    );
    assert_eq!(
        fs::read(dir.join("index.json")).unwrap(),
        index,
        "nothing changed"
    );
    assert!(!Path::new(&state).join("state.json").exists());
}
