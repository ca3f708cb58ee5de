//! Reliability: bad input. Every case ends with exit 1, a miette diagnostic
//! on stderr (human and `--json` runs alike), no panic, and nothing changed:
//! flake.lock bytes, the clone's refs, index and working tree, the remote's
//! refs and the registry are compared before and after, and no command
//! that changes anything ran.
//!
//! Issue 5, section 5. The README's "Reliability" table names these tests.

mod common;
mod fault_support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;
use fault_support::*;
// The fault world (the common one with hooks), not common::World.
use fault_support::World;

/// Runs `args` twice (human, then `--json`); both must be refused with a
/// diagnostic `code` that mentions every phrase, and change nothing.
/// Returns the human run.
fn refused(w: &World, args: &[String], code: &str, phrases: &[&str]) -> RunOutput {
    let before = Snapshot::take(&w.repo, Some(&w.registry));
    let human = w.run(args);
    let mut json_args = args.to_vec();
    json_args.push("--json".into());
    let json = w.run(&json_args);
    for out in [&human, &json] {
        assert_diagnostic(out, code);
        assert_stderr_mentions(out, phrases);
    }
    let doc = json.json();
    assert_eq!(doc["outcome"], "failure", "{json}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert_eq!(
        Snapshot::take(&w.repo, Some(&w.registry)),
        before,
        "a refused run changed something\n{human}"
    );
    assert_eq!(w.changing_calls(), Vec::<String>::new(), "{human}");
    assert_eq!(w.registry.blob_upload_count(), 0);
    assert_eq!(w.registry.manifest_put_count(), 0);
    human
}

/// Commits `text` as flake.lock (the clone stays clean).
fn commit_lock(w: &World, text: &str) {
    fs::write(w.repo.path().join("flake.lock"), text).expect("write flake.lock");
    w.repo.git(&["add", "flake.lock"]);
    w.repo
        .git(&["commit", "--quiet", "-m", "flake.lock: hand-edited"]);
}

// ---------------------------------------------------------------------------
// flake.lock
// ---------------------------------------------------------------------------

#[test]
fn flake_lock_that_is_not_json_shows_line_column_and_snippet() {
    let w = World::new();
    let text = String::from_utf8(w.repo.lock_bytes()).expect("utf-8 lock");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(
        lines[4].contains("\"lastModified\""),
        "line 5: {}",
        lines[4]
    );
    lines[4] = "        \"lastModified\": oops,".to_string();
    let broken = lines.join("\n") + "\n";
    commit_lock(&w, &broken);

    let out = refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::flake_lock::json",
        &[
            "flake.lock is not valid JSON",
            // The help: restore the lock.
            "restore it with `git checkout -- flake.lock` or regenerate it with `nix flake lock`",
        ],
    );
    // `flake.lock:LINE:COLUMN: message`, the column of `oops`.
    let column = lines[4].find("oops").expect("oops") + 1;
    let at = format!("flake.lock:5:{column}: expected value");
    assert!(out.stderr.contains(&at), "no {at:?}\n{out}");
    // The snippet: line 5 with its number in the gutter, and a label.
    let snippet = out
        .stderr
        .lines()
        .find(|l| l.contains("\"lastModified\": oops,"))
        .unwrap_or_else(|| panic!("no source snippet\n{out}"));
    assert!(
        snippet.trim_start().starts_with("5 "),
        "the snippet line has no line number: {snippet:?}\n{out}"
    );
    assert!(out.stderr.contains("expected value"), "{out}");
}

#[test]
fn flake_lock_version_runnerctl_does_not_know() {
    let w = World::new();
    let mut lock = w.repo.lock_json();
    lock["version"] = 99.into();
    commit_lock(
        &w,
        &(serde_json::to_string_pretty(&lock).expect("json") + "\n"),
    );
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::flake_lock::unsupported_version",
        &["unsupported flake.lock version 99", "5, 6 and 7"],
    );
}

#[test]
fn input_missing_from_the_root() {
    let w = World::new();
    refused(
        &w,
        &w.bump_args(&["--input", "nosuch"]),
        "runnerctl::flake_lock::input_not_in_root",
        &[
            "the flake has no input named `nosuch`",
            "the flake's inputs are: nixpkgs",
            "--input NAME",
        ],
    );
}

/// Nix 2.8 records `lastModified` for every input type it can lock (git,
/// github, tarball, and `path:`, whose mtime it takes); the `file` type of
/// newer Nix locks `{narHash, type, url}` only. This lock has such an input.
#[test]
fn input_with_no_last_modified() {
    let w = World::new();
    let mut lock = w.repo.lock_json();
    lock["nodes"]["blob"] = serde_json::json!({
        "flake": false,
        "locked": {
            "narHash": "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "type": "file",
            "url": "https://example.org/blob.txt"
        },
        "original": { "type": "file", "url": "https://example.org/blob.txt" }
    });
    lock["nodes"]["root"]["inputs"]["blob"] = "blob".into();
    commit_lock(
        &w,
        &(serde_json::to_string_pretty(&lock).expect("json") + "\n"),
    );
    refused(
        &w,
        &w.bump_args(&["--input", "blob"]),
        "runnerctl::flake_lock::no_last_modified",
        &[
            "input `blob` (node `blob`) has no lastModified time",
            "of type `file`",
            "--input NAME",
        ],
    );
}

// ---------------------------------------------------------------------------
// The state file
// ---------------------------------------------------------------------------

fn write_state(w: &World, text: &str) {
    fs::create_dir_all(w.state_dir()).expect("state dir");
    fs::write(w.state_path(), text).expect("write state.json");
}

#[test]
fn corrupt_state_file_offers_reset_state_and_reset_state_works() {
    let w = World::new();
    for text in [
        "{\"version\": 1, \"stages\": {\"build\": {\"status\": ",
        "\u{0}\u{1}garbage",
        "",
        "[]",
        "{\"version\": 1, \"stages\": 3}",
        "{\"version\": 1, \"stages\": {\"build\": {\"status\": \"exploded\"}}}",
        "{\"stages\": {}}",
    ] {
        write_state(&w, text);
        refused(
            &w,
            &w.bump_args(&[]),
            "runnerctl::state::corrupt",
            &["the state file", "is corrupt", "--reset-state"],
        );
        // Left as it was, for a person to look at.
        assert_eq!(fs::read_to_string(w.state_path()).expect("state"), text);
        // `status` reads it the same way.
        let status = w.run(&["status".into()]);
        assert_diagnostic(&status, "runnerctl::state::corrupt");
    }
    let out = w.bump(&["--reset-state"]);
    out.assert_success();
    w.assert_bumped();
}

#[test]
fn state_file_from_an_unknown_version_offers_reset_state() {
    let w = World::new();
    write_state(&w, "{\"version\": 2, \"stages\": {}, \"future\": true}\n");
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::state::version",
        &["has version 2", "knows version 1", "--reset-state"],
    );
    assert!(fs::read_to_string(w.state_path())
        .expect("state")
        .contains("\"future\""));
    let out = w.bump(&["--reset-state"]);
    out.assert_success();
    w.assert_bumped();
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[test]
fn tag_templates_that_yield_invalid_oci_tags() {
    let w = World::new();
    let long = "a".repeat(129);
    // Every template is expanded with a sample date before anything runs.
    const INVALID: &str = "runnerctl::tag::invalid_expansion";
    let cases: &[(&str, &str, &str)] = &[
        ("bad tag", INVALID, "it contains ` ` at position 3"),
        ("-x", INVALID, "it starts with `-`"),
        (".x", INVALID, "it starts with `.`"),
        ("", INVALID, "it is empty"),
        (&long, INVALID, "more than the 128 allowed"),
        (
            "v{date}+1",
            "runnerctl::tag::invalid_expansion",
            "produced `v19700101+1`",
        ),
        (
            "{rev}",
            "runnerctl::tag::unknown_placeholder",
            "unknown placeholder `{rev}`",
        ),
        (
            "{date",
            "runnerctl::tag::unmatched_brace",
            "has an unmatched `{`",
        ),
    ];
    for (tag, code, phrase) in cases {
        // `--tag=VALUE`, so that `-x` is a value, not an option.
        refused(
            &w,
            &w.bump_args(&[&format!("--tag={tag}")]),
            code,
            &[phrase],
        );
    }
    // RUNNERCTL_TAGS goes through the same check.
    let mut w = w;
    w.extra_env
        .push(("RUNNERCTL_TAGS".into(), "latest,bad tag".into()));
    refused(&w, &w.bump_args(&[]), INVALID, &["`bad tag`"]);
}

#[test]
fn image_references_that_do_not_parse() {
    let w = World::new();
    let host = w.registry.host();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{host}/{IMAGE_REPO}"),
            "runnerctl::image_ref::missing_transport",
        ),
        (
            format!("http://{host}/{IMAGE_REPO}"),
            "runnerctl::image_ref::unknown_transport",
        ),
        ("docker://".to_string(), "runnerctl::image_ref::empty_host"),
        (
            format!("docker://{host}"),
            "runnerctl::image_ref::empty_path",
        ),
        (
            format!("docker://{host}/Infra/nixos"),
            "runnerctl::image_ref::uppercase_path",
        ),
        (
            format!("docker://{host}/{IMAGE_REPO}:latest"),
            "runnerctl::image_ref::tag_not_allowed",
        ),
        (
            format!("docker://{host}/{IMAGE_REPO}@sha256:{}", "0".repeat(64)),
            "runnerctl::image_ref::digest_not_allowed",
        ),
        (
            format!("docker://{host}/infra//nixos"),
            "runnerctl::image_ref::invalid_path",
        ),
        (
            "docker://bad_host:99999/x".to_string(),
            "runnerctl::image_ref::invalid_host",
        ),
        ("oci:".to_string(), "runnerctl::image_ref::empty_oci_dir"),
    ];
    for (image, code) in &cases {
        refused(&w, &w.bump_args_to(image, &[]), code, &["image reference"]);
    }
}

// ---------------------------------------------------------------------------
// The working tree and the branch
// ---------------------------------------------------------------------------

#[test]
fn uncommitted_changes_to_flake_lock_flake_nix_or_nix_dir_are_refused() {
    let w = World::new();
    // A tracked file under nix/, on the remote too.
    fs::create_dir_all(w.repo.path().join("nix")).expect("mkdir nix");
    fs::write(w.repo.path().join("nix/module.nix"), "{ }\n").expect("write");
    w.repo.git(&["add", "nix/module.nix"]);
    w.repo
        .git(&["commit", "--quiet", "-m", "nix: add a module"]);
    w.repo.git(&["push", "--quiet", "origin", "main"]);

    let edit = |path: &str, stage: bool| {
        let p = w.repo.path().join(path);
        let mut text = fs::read_to_string(&p).expect("read");
        text.push('\n');
        fs::write(&p, text).expect("write");
        if stage {
            w.repo.git(&["add", path]);
        }
    };
    for (path, stage) in [
        ("flake.nix", false),
        ("flake.nix", true),
        ("nix/module.nix", false),
        ("flake.lock", false),
        ("flake.lock", true),
    ] {
        edit(path, stage);
        // The headline names the guarded paths; the lines after it name the
        // changed file as `git status --porcelain` does.
        let line = format!("{} {path}", if stage { "M " } else { " M" });
        let out = refused(
            &w,
            &w.bump_args(&[]),
            "runnerctl::preflight::dirty",
            &[
                "uncommitted changes in the flake's tracked files:",
                "git stash",
            ],
        );
        assert!(
            squash(&out.stderr).contains(&squash(&format!("files: {}", line.trim()))),
            "the diagnostic does not list {line:?}\n{out}"
        );
        w.repo.git(&["reset", "--quiet", "--hard", "HEAD"]);
    }
}

#[test]
fn unrelated_changes_are_fine_and_only_flake_lock_is_committed() {
    let mut w = World::new();
    let readme = w.repo.path().join("README.md");
    let mut text = fs::read_to_string(&readme).expect("README");
    text.push_str("\nA local note, not for the bump commit.\n");
    fs::write(&readme, &text).expect("write README");
    fs::create_dir_all(w.repo.path().join("docs")).expect("mkdir docs");
    fs::write(w.repo.path().join("docs/staged.md"), "staged\n").expect("write");
    w.repo.git(&["add", "docs/staged.md"]);
    fs::write(w.repo.path().join("scratch.txt"), "untracked\n").expect("write");
    let status = w.repo.git(&["status", "--porcelain"]);

    // The README and the staged file are tracked, so Nix would see them:
    // refused without --allow-dirty (issue 10, finding 5).
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::preflight::dirty",
        &["README.md", "docs/staged.md", "--allow-dirty"],
    );
    let out = w.bump(&["--allow-dirty"]);
    out.assert_success();
    assert_stderr_mentions(&out, &["--allow-dirty", "not what is committed"]);
    // Nix 2.8 and 2.26 both warn that the tree is dirty; runnerctl shows
    // that once, as a warning, and the bump still succeeds.
    let dirty = format!(
        "warning: nix: Git tree '{}' is dirty",
        w.repo.path().display()
    );
    assert_eq!(out.stderr.matches(&dirty).count(), 1, "{out}");
    w.expect_clean_tree = false;
    w.assert_bumped();
    // The bump commit has flake.lock and nothing else (assert_bumped), and
    // the unrelated changes are still there, as they were.
    assert_eq!(w.repo.git(&["status", "--porcelain"]), status);
    assert_eq!(fs::read_to_string(&readme).expect("README"), text);
    assert_eq!(
        w.repo.git(&["diff", "--cached", "--name-only"]),
        "docs/staged.md"
    );
    let tree = git(
        w.repo.remote_path(),
        &["ls-tree", "-r", "--name-only", "main"],
    );
    assert!(!tree.contains("docs/staged.md") && !tree.contains("scratch.txt"));
}

#[test]
fn detached_head_is_refused() {
    let w = World::new();
    w.repo.git(&["checkout", "--quiet", "--detach", "HEAD"]);
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::preflight::detached",
        &["HEAD is detached", "git switch main", "--no-git-push"],
    );
}

#[test]
fn branch_without_upstream_is_refused_unless_no_git_push() {
    let w = World::new();
    w.repo.git(&["branch", "--unset-upstream"]);
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::preflight::no_upstream",
        &[
            "branch `main` has no upstream to push to",
            "git branch --set-upstream-to=origin/main",
            "--no-git-push",
        ],
    );

    let out = w.bump(&["--no-git-push"]);
    out.assert_success();
    // Committed locally (flake.lock only), pushed nothing to git, and the
    // image is in the registry.
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert_eq!(
        w.repo.git(&["log", "-1", "--format=%s"]),
        bump_subject(&w.date())
    );
    assert_eq!(w.repo.git(&["rev-parse", "HEAD^"]), w.initial_remote_head);
    assert_eq!(
        w.repo.git(&["show", "--format=", "--name-only", "HEAD"]),
        "flake.lock"
    );
    assert_eq!(w.repo.status(), "");
    assert!(w.git_pushes().is_empty());
    let digest = w.registry.digest(IMAGE_REPO, "latest").expect("pushed");
    assert_eq!(
        w.registry.digest(IMAGE_REPO, &w.date()).as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(w.stage_status("git-push").as_deref(), Some("skipped"));
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

#[test]
fn nix_skopeo_or_git_missing_from_path_is_named_with_how_to_install_it() {
    let w = World::new();
    let real = |tool: &str| {
        find_on_path(tool, Path::new("/nonexistent"))
            .unwrap_or_else(|| panic!("{tool} is not installed"))
    };
    for (missing, hint) in [
        ("nix", "apt-get install nix-bin"),
        ("skopeo", "apt-get install skopeo"),
        ("git", "apt-get install git"),
    ] {
        let bin = tempfile::tempdir().expect("bin dir");
        for tool in ["nix", "skopeo", "git"] {
            if tool != missing {
                symlink(real(tool), bin.path().join(tool)).expect("symlink");
            }
        }
        let args = w.bump_args(&[]);
        let before = Snapshot::take(&w.repo, Some(&w.registry));
        let mut env = w.env();
        env.retain(|(k, _)| k != "PATH");
        env.push(("PATH".into(), bin.path().display().to_string()));
        let out = Spawned::start(&args, w.repo.path(), &env).wait(Duration::from_secs(60));
        assert_diagnostic(&out, "runnerctl::preflight::tool");
        assert_stderr_mentions(&out, &[&format!("`{missing}` was not found on PATH"), hint]);
        assert_eq!(Snapshot::take(&w.repo, Some(&w.registry)), before);
    }
}

// ---------------------------------------------------------------------------
// Fuzz: the state-file reader, through the binary
// ---------------------------------------------------------------------------

/// A state.json as a finished bump writes it.
const REAL_STATE: &str = r#"{
  "version": 1,
  "command": "bump",
  "started_at": "2026-11-27T19:02:15.316044032Z",
  "finished_at": "2026-11-27T19:02:16.265643232Z",
  "outcome": "success",
  "stages": {
    "build": {
      "status": "done",
      "outputs": {
        "drv_path": "/nix/store/qqlm8wla3y27y1dzh947sbsliy6mr9pc-nixos-image.tar.drv",
        "out_path": "/nix/store/y87zl49sgnlmad5aa2zn9crxrp474iyq-nixos-image.tar"
      },
      "note": "built /nix/store/y87zl49sgnlmad5aa2zn9crxrp474iyq-nixos-image.tar",
      "started_at": "2026-11-27T19:02:15.510482279Z",
      "finished_at": "2026-11-27T19:02:15.811369328Z",
      "duration_ms": 300
    },
    "push": {
      "status": "done",
      "fingerprint": "/nix/store/y87zl49sgnlmad5aa2zn9crxrp474iyq-nixos-image.tar",
      "outputs": {
        "digest": "sha256:fdf91d2330da78119347a2fa3aecef436d52896fe5da13195a08ff4b2108cf57",
        "tags": ["latest", "unstable", "20240306"]
      },
      "note": "pushed ✔ ünïcode",
      "duration_ms": 358
    },
    "update": {
      "status": "running",
      "outputs": { "lock_hash": "9d01f44c", "changes": ["nixpkgs: a → b"] }
    }
  },
  "images": {
    "/nix/store/y87zl49sgnlmad5aa2zn9crxrp474iyq-nixos-image.tar": {
      "image": "docker://127.0.0.1:39775/infra/runners/nixos",
      "digest": "sha256:fdf91d2330da78119347a2fa3aecef436d52896fe5da13195a08ff4b2108cf57",
      "tags": ["latest"],
      "pushed_at": "2026-11-27T19:02:15.980535245Z"
    }
  }
}
"#;

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl proptest::strategy::Strategy<Value = Edit> {
    use proptest::prelude::*;
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\",:0123456789-.e \n\\atn".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    const KEYS: &[&str] = &[
        "status",
        "outputs",
        "fingerprint",
        "note",
        "started_at",
        "finished_at",
        "duration_ms",
        "digest",
        "tags",
        "commit",
        "changes",
        "image",
        "pushed_at",
        "build",
        "push",
        "version",
        "",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "done", "running", "failed", "skipped", "planned", "pending", "exploded", ""
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Text for state.json: a mutated real one, a state of random shape with a
/// plausible version, or JSON-like noise.
fn state_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let mutated = prop::collection::vec(edit(), 1..8).prop_map(|edits| {
        let mut bytes = REAL_STATE.as_bytes().to_vec();
        for e in edits {
            match e {
                Edit::Replace(i, b) => {
                    let n = bytes.len().max(1);
                    if let Some(slot) = bytes.get_mut(i % n) {
                        *slot = b;
                    }
                }
                Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Edit::Delete(i) => {
                    if !bytes.is_empty() {
                        bytes.remove(i % bytes.len());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let version = prop_oneof![
        Just(serde_json::json!(1)),
        Just(serde_json::json!(0)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1.0)),
        Just(serde_json::json!("1")),
        Just(serde_json::json!(u64::MAX)),
        any::<u32>().prop_map(serde_json::Value::from),
    ];
    let shaped = (version, json_value(), json_value(), json_value()).prop_map(
        |(version, stages, images, extra)| {
            serde_json::json!({
                "version": version,
                "stages": stages,
                "images": images,
                "outcome": extra,
            })
            .to_string()
        },
    );
    let noise = "[{}\\[\\]\":, \n0-9a-z\\\\]{0,200}";
    prop_oneof![mutated, shaped, noise.prop_map(|s: String| s)]
}

/// `runnerctl status` (and `bump`, which stops at the state file before
/// running anything) on generated state files: exit 0, or exit 1 with a
/// `runnerctl::state::…` diagnostic; never a panic. The unit test in
/// src/state.rs only feeds random strings to `parse` and never renders the
/// diagnostic; this goes through the binary and miette's renderer.
#[test]
fn state_file_reader_never_panics_on_generated_files() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let dir = tempfile::tempdir().expect("tempdir");
    let flake = dir.path().join("flake");
    fs::create_dir_all(&flake).expect("flake dir");
    fs::write(flake.join("flake.nix"), "{ outputs = _: { }; }\n").expect("flake.nix");
    let state_dir = dir.path().join("state");
    fs::create_dir_all(&state_dir).expect("state dir");
    let flake_arg = flake.display().to_string();
    let state_arg = state_dir.display().to_string();

    // FUZZ_CASES=N for a longer hunt.
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(160);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    runner
        .run(&(state_text(), 0..3u8), |(text, mode)| {
            fs::write(state_dir.join("state.json"), &text).expect("write state.json");
            let args: Vec<&str> = match mode {
                0 => vec!["status", "-C", &flake_arg, "--state-dir", &state_arg],
                1 => vec![
                    "status",
                    "--json",
                    "-C",
                    &flake_arg,
                    "--state-dir",
                    &state_arg,
                ],
                // No nix on PATH: if the state file is accepted, bump stops
                // at the tool check; it reads the state file first.
                _ => vec!["bump", "-C", &flake_arg, "--state-dir", &state_arg],
            };
            let out = Run::new(&args)
                .env("PATH", "/nonexistent")
                .timeout(Duration::from_secs(20))
                .run();
            prop_assert!(!out.stderr.contains("panicked"), "panic on {text:?}\n{out}");
            let ok = out.code == Some(0) && mode < 2;
            let refused = out.code == Some(1)
                && out.stderr.lines().any(|l| {
                    l.trim().starts_with("runnerctl::state::")
                        || (mode == 2 && l.trim() == "runnerctl::preflight::tool")
                });
            prop_assert!(ok || refused, "unexpected result on {text:?}\n{out}");
            if mode == 1 && ok {
                let doc: serde_json::Value = serde_json::from_str(&out.stdout)
                    .map_err(|e| TestCaseError::fail(format!("status --json: {e}\n{out}")))?;
                prop_assert_eq!(&doc["exists"], &serde_json::json!(true));
            }
            let key = match out
                .stderr
                .lines()
                .find(|l| l.trim().starts_with("runnerctl::"))
            {
                Some(code) => code.trim().to_string(),
                None => format!("exit {:?}", out.code),
            };
            *outcomes.borrow_mut().entry(key).or_default() += 1;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The generators reach both sides of the reader.
    let outcomes = outcomes.into_inner();
    eprintln!("state fuzz outcomes: {outcomes:?}");
    assert!(
        outcomes.get("exit Some(0)").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains_key("runnerctl::state::corrupt"),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains_key("runnerctl::state::version"),
        "{outcomes:?}"
    );
}

// ---------------------------------------------------------------------------
// Issue 10: silent data loss and late checks
// ---------------------------------------------------------------------------

#[test]
fn uncommitted_builder_script_is_refused() {
    let w = World::new();
    let script = w.repo.path().join("build-image.sh");
    let mut text = fs::read_to_string(&script).expect("build-image.sh");
    text.push_str("\n# a local change that is not committed\n");
    fs::write(&script, &text).expect("write");
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::preflight::dirty",
        &["build-image.sh", "commit or stash"],
    );
    assert_eq!(fs::read_to_string(&script).expect("read"), text);
}

#[test]
fn oci_destinations_that_are_not_layouts_are_refused() {
    let w = World::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A directory of the user's with an index.json, but no oci-layout.
    let users = tmp.path().join("users");
    fs::create_dir_all(&users).expect("mkdir");
    fs::write(users.join("index.json"), "{\"mine\": true}\n").expect("write");
    refused(
        &w,
        &w.bump_args_to(&format!("oci:{}", users.display()), &[]),
        "runnerctl::layout::not_a_layout",
        &["oci-layout", "nothing was written"],
    );
    assert_eq!(
        fs::read_to_string(users.join("index.json")).expect("read"),
        "{\"mine\": true}\n"
    );
    // A real layout whose index.json is truncated.
    let layout = tmp.path().join("layout");
    fs::create_dir_all(&layout).expect("mkdir");
    fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .expect("write");
    let truncated = "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci";
    fs::write(layout.join("index.json"), truncated).expect("write");
    refused(
        &w,
        &w.bump_args_to(&format!("oci:{}", layout.display()), &[]),
        "runnerctl::layout::bad_index",
        &["index.json", "does not parse"],
    );
    assert_eq!(
        fs::read_to_string(layout.join("index.json")).expect("read"),
        truncated
    );
    // A file.
    let file = tmp.path().join("a-file");
    fs::write(&file, "not a directory\n").expect("write");
    refused(
        &w,
        &w.bump_args_to(&format!("oci:{}", file.display()), &[]),
        "runnerctl::layout::not_a_layout",
        &["not a directory"],
    );
}

#[test]
fn a_state_dir_that_holds_the_repository_is_refused() {
    let w = World::new();
    let ignore = w.repo.path().join(".gitignore");
    let ignore_before = fs::read(&ignore).ok();
    for dir in [".", "..", "/"] {
        refused(
            &w,
            &w.bump_args(&["--state-dir", dir]),
            "runnerctl::config::state_dir",
            &["is the flake's directory or contains it"],
        );
    }
    assert_eq!(
        fs::read(&ignore).ok(),
        ignore_before,
        "no catch-all .gitignore in the repository"
    );
}

#[test]
fn unknown_update_input_is_refused_listing_the_inputs() {
    let w = World::new();
    refused(
        &w,
        &w.bump_args(&["--update-input", "nixpkgss"]),
        "runnerctl::preflight::update_input",
        &["`nixpkgss`", "the flake's inputs are:", "nixpkgs"],
    );
}

#[test]
fn a_bad_attr_or_an_unreachable_remote_is_found_before_anything_changes() {
    let w = World::new();
    refused(
        &w,
        &w.bump_args(&["--attr", "nosuch"]),
        "runnerctl::preflight::attr",
        &["no output `nosuch`", "nix flake show"],
    );
    let url = w.repo.git(&["remote", "get-url", "origin"]);
    w.repo
        .git(&["remote", "set-url", "origin", "/nonexistent/remote.git"]);
    refused(
        &w,
        &w.bump_args(&[]),
        "runnerctl::preflight::remote",
        &["did not answer `git ls-remote`", "--no-git-push"],
    );
    w.repo.git(&["remote", "set-url", "origin", &url]);
}

/// `release --image … --tls-verify=false EXTRA…`
fn release_args(w: &World, extra: &[&str]) -> Vec<String> {
    let mut args = w.bump_args(extra);
    args[0] = "release".into();
    args
}

#[test]
fn a_release_evaluates_once_and_tells_a_missing_output_from_a_broken_one() {
    let w = World::new();
    refused(
        &w,
        &release_args(&w, &["--attr", "nosuch"]),
        "runnerctl::preflight::attr",
        &["no output `nosuch`", "nix flake show"],
    );
    // An output that is there but does not evaluate: nix's own error, and
    // what to try, not "no such output".
    let flake = w.repo.path().join("flake.nix");
    let text = fs::read_to_string(&flake).expect("flake.nix");
    let broken = text.replacen(
        "packages = genAttrs systems (system: {",
        "packages = genAttrs systems (system: {\n        broken = throw \"broken on purpose\";",
        1,
    );
    assert_ne!(broken, text, "the fixture's packages line moved");
    fs::write(&flake, broken).expect("write flake.nix");
    w.repo.git(&["commit", "-qam", "a broken output"]);
    for args in [
        release_args(&w, &["--attr", "broken"]),
        w.bump_args(&["--attr", "broken", "--no-git-push"]),
    ] {
        let out = w.run(&args);
        out.assert_code(1);
        assert_diagnostic(&out, "runnerctl::preflight::eval");
        assert_stderr_mentions(
            &out,
            &["`broken` does not evaluate", "broken on purpose", "drvPath"],
        );
        assert!(
            !out.stderr.contains("no output `broken`"),
            "a broken output is not a missing one:\n{}",
            out.stderr
        );
        assert_eq!(w.registry.blob_upload_count(), 0);
        assert_eq!(w.changing_calls(), Vec::<String>::new());
    }
    // A good release evaluates the output once (preflight), not again in
    // the build stage.
    let out = w.run(&release_args(&w, &["--smoke", "never"]));
    out.assert_code(0);
    let evals: Vec<Vec<String>> = w
        .shims
        .calls("nix")
        .into_iter()
        .filter(|argv| argv.first().map(String::as_str) == Some("eval"))
        .collect();
    let this_run: Vec<_> = evals
        .iter()
        .filter(|a| a.iter().any(|x| x.ends_with("#nixos")))
        .collect();
    assert_eq!(this_run.len(), 1, "{evals:#?}");
}

#[test]
fn last_modified_outside_1970_to_9999_is_rejected_not_clamped() {
    let w = World::new();
    let node = w.repo.nixpkgs_node().to_string();
    for value in [1_i64, 253_402_300_800] {
        let mut lock = w.repo.lock_json();
        lock["nodes"][&node]["locked"]["lastModified"] = serde_json::json!(value);
        commit_lock(&w, &serde_json::to_string_pretty(&lock).expect("json"));
        refused(
            &w,
            &w.bump_args(&[]),
            "runnerctl::flake_lock::last_modified_range",
            &[&format!("node `{node}`"), &format!("lastModified {value}")],
        );
    }
}
