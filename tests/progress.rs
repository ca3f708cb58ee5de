//! Progress and output: the internal-json parser on recorded Nix 2.8 and 2.26
//! streams, plain output without escape codes, the `--json` document's
//! shape, and the live build bar under a pseudo-terminal.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{git, write_executable, Run, RunnerRepo, StandInNixpkgs, DAY, T0};
use runnerctl::progress::nix_log::{parse_line, BuildProgress, NixMsg};

/// Recorded `nix build --log-format internal-json` streams (stderr, `@nix`
/// lines only) of the same two builds, by Nix version: a chain a → b → c,
/// and a builder that prints 30 lines and fails with exit code 3. Nix 2.26
/// adds `parent` to every `start`, `raw_msg` to errors and the "will be
/// built" notices as `msg` actions; the activity and result types are the
/// same.
const RECORDINGS: [Recording; 2] = [
    Recording {
        nix: "2.8",
        chain: include_str!("data/nix-2.8-build-chain.log"),
        failure: include_str!("data/nix-2.8-build-failure.log"),
    },
    Recording {
        nix: "2.26",
        chain: include_str!("data/nix-2.26-build-chain.log"),
        failure: include_str!("data/nix-2.26-build-failure.log"),
    },
];

struct Recording {
    nix: &'static str,
    chain: &'static str,
    failure: &'static str,
}

fn fold(stream: &str) -> (BuildProgress, Vec<String>) {
    let mut progress = BuildProgress::default();
    let mut lines = Vec::new();
    for line in stream.lines() {
        let msg = parse_line(line).unwrap_or_else(|| panic!("not an @nix line: {line}"));
        progress.apply(&msg);
        if let Some(text) = msg.text() {
            lines.push(text);
        }
    }
    (progress, lines)
}

#[test]
fn recorded_chain_build_counts_three_of_three() {
    for rec in RECORDINGS {
        let nix = rec.nix;
        let (progress, lines) = fold(rec.chain);
        assert_eq!((progress.done, progress.expected), (3, 3), "nix {nix}");
        assert_eq!(progress.current.as_deref(), Some("chain-c"), "nix {nix}");
        assert_eq!(
            (progress.downloads_done, progress.downloads_expected),
            (0, 0),
            "nix {nix}"
        );
        // Builder output and the "building" notices, in order, nothing talkative.
        let building: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("building chain-"))
            .collect();
        assert_eq!(
            building,
            ["building chain-a", "building chain-b", "building chain-c"],
            "nix {nix}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("querying info")),
            "nix {nix}: {lines:?}"
        );
    }
}

#[test]
fn recorded_chain_progress_is_monotonic() {
    for rec in RECORDINGS {
        let mut progress = BuildProgress::default();
        let mut seen = Vec::new();
        for line in rec.chain.lines() {
            if let Some(msg) = parse_line(line) {
                progress.apply(&msg);
                if seen.last() != Some(&progress.done) {
                    seen.push(progress.done);
                }
            }
        }
        assert_eq!(seen, [0, 1, 2, 3], "nix {}", rec.nix);
    }
}

#[test]
fn recorded_failure_keeps_the_builder_output_and_a_plain_error() {
    for rec in RECORDINGS {
        let nix = rec.nix;
        let (_, lines) = fold(rec.failure);
        assert!(
            lines.iter().any(|l| l == "compile step 30"),
            "nix {nix}: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "error: missing node"),
            "nix {nix}"
        );
        let error = lines
            .iter()
            .find(|l| l.contains("failed with exit code 3"))
            .unwrap_or_else(|| panic!("nix {nix}: no error msg in {lines:?}"));
        assert!(
            error.starts_with("error: builder for '/nix/store/"),
            "nix {nix}: {error}"
        );
        assert!(
            !lines.iter().any(|l| l.contains('\u{1b}')),
            "nix {nix}: ANSI left in {lines:?}"
        );
        let msgs = rec
            .failure
            .lines()
            .filter_map(parse_line)
            .filter(|m| matches!(m, NixMsg::Msg { .. }))
            .count();
        assert!(msgs >= 1, "nix {nix}");
    }
}

/// The recordings really are from the Nix versions they are named after:
/// 2.26 marks every `start` with its parent activity, 2.8 does not.
#[test]
fn recordings_carry_their_versions_marks() {
    let starts = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .filter_map(|l| l.strip_prefix("@nix "))
            .map(|j| serde_json::from_str::<serde_json::Value>(j).expect("json"))
            .filter(|v| v["action"] == "start")
            .collect()
    };
    for rec in RECORDINGS {
        let with_parent = starts(rec.chain)
            .iter()
            .filter(|v| v.get("parent").is_some())
            .count();
        match rec.nix {
            "2.8" => assert_eq!(with_parent, 0),
            _ => assert_eq!(with_parent, starts(rec.chain).len()),
        }
    }
}

fn assert_plain(text: &str, what: &str) {
    assert!(!text.contains('\u{1b}'), "escape codes in {what}:\n{text}");
}

/// Keys of a JSON object, recursively for the stage rows.
fn shape(doc: &serde_json::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let top = doc.as_object().expect("object").keys().cloned().collect();
    let stages = doc["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .flat_map(|s| s.as_object().expect("stage").keys().cloned())
        .collect();
    (top, stages)
}

#[test]
fn plain_output_and_json_shape_across_success_noop_and_failure() {
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    nixpkgs.commit(T0 + 2 * DAY);

    // Success, human output, no TTY: no escape codes anywhere.
    let human = Run::new(["bump"]).in_repo(&repo).run();
    human.assert_success();
    assert_plain(&human.stdout, "stdout");
    assert_plain(&human.stderr, "stderr");
    assert!(
        human.stdout.contains("runnerctl bump: success"),
        "{}",
        human.stdout
    );
    // Plain progress lines are timestamped.
    assert!(
        human
            .stderr
            .lines()
            .any(|l| l.starts_with('[') && l.contains("] build: ")),
        "{}",
        human.stderr
    );

    // No-op, --json: stdout is exactly one JSON document.
    let noop = Run::new(["bump", "--json"]).in_repo(&repo).run();
    noop.assert_success();
    let noop_doc: serde_json::Value =
        serde_json::from_str(&noop.stdout).expect("one JSON document on stdout");
    assert_eq!(noop_doc["outcome"], "up-to-date");
    assert_eq!(noop_doc["schema_version"], 1);

    // Failure, --json: same shape, outcome and error filled in.
    let fail = Run::new(["release", "--json", "--attr", "nixos-nonode"])
        .in_repo(&repo)
        .run();
    assert_eq!(fail.code, Some(1), "{}", fail.stderr);
    let fail_doc: serde_json::Value = serde_json::from_str(&fail.stdout).expect("JSON on failure");
    assert_eq!(fail_doc["outcome"], "failure");
    assert!(fail_doc["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("bin/node")));
    assert_plain(&fail.stderr, "failure stderr");
    assert!(fail.stderr.contains("bin/node"), "{}", fail.stderr);

    // Success in --json too (a new upstream commit), then compare shapes.
    nixpkgs.commit(T0 + 3 * DAY);
    let ok = Run::new(["bump", "--json"]).in_repo(&repo).run();
    ok.assert_success();
    let ok_doc: serde_json::Value = serde_json::from_str(&ok.stdout).expect("JSON on success");
    assert_eq!(ok_doc["outcome"], "success");
    assert!(ok_doc["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
    assert!(ok_doc["commit"].as_str().is_some_and(|c| c.len() == 40));
    assert_eq!(shape(&ok_doc), shape(&noop_doc));
    assert_eq!(shape(&ok_doc), shape(&fail_doc));
    let names: Vec<&str> = ok_doc["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "preflight",
            "update",
            "build",
            "verify",
            "smoke",
            "push",
            "commit",
            "git-push"
        ]
    );

    // status --json parses and is plain too.
    let status = Run::new(["status", "--json"]).in_repo(&repo).run();
    status.assert_success();
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(doc["state"]["stages"]["push"]["status"], "done");
}

#[test]
fn help_version_and_completions() {
    let help = Run::new(["bump", "--help"]).run();
    help.assert_success();
    assert_plain(&help.stdout, "help");
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
    for flag in [
        "--flake",
        "--attr",
        "--input",
        "--image",
        "--tag",
        "--tls-verify",
        "--commit-message",
        "--no-git-push",
        "--dry-run",
        "--state-dir",
        "--json",
    ] {
        assert!(help.stdout.contains(flag), "--help lacks {flag}");
    }
    let version = Run::new(["--version"]).run();
    version.assert_success();
    // `runnerctl 0.1.0 (<git revision>)`: this checkout's revision.
    let rev = git(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["rev-parse", "--short=12", "HEAD"],
    );
    assert_eq!(
        version.stdout.trim(),
        format!("runnerctl {} ({rev})", env!("CARGO_PKG_VERSION"))
    );
    let completions = Run::new(["completions", "bash"]).run();
    completions.assert_success();
    assert!(
        completions.stdout.contains("_runnerctl"),
        "{}",
        completions.stdout
    );
    let usage = Run::new(["bump", "--no-such-flag"]).run();
    assert_eq!(usage.code, Some(2), "usage errors exit 2");
}

#[test]
fn build_bar_reaches_done_of_expected_under_a_pty() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("`script` (util-linux/bsdutils) is needed for the pseudo-terminal test");
    }
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    // A new upstream commit at a time no earlier run used makes the image
    // derivation new, so Nix really builds it.
    let when = common::fresh_time() + DAY;
    nixpkgs.commit(when);
    let screen = bump_under_a_pty(&repo, "");
    assert!(
        screen.contains('\u{1b}'),
        "no live drawing under a pty:\n{screen}"
    );
    assert!(
        screen.contains("[1/1 derivations]"),
        "the build bar did not reach 1/1:\n{screen}"
    );

    // The same terminal with NO_COLOR: plain lines, no escape codes.
    nixpkgs.commit(when + DAY);
    let screen = bump_under_a_pty(&repo, "1");
    assert!(
        !screen.contains('\u{1b}'),
        "escape codes with NO_COLOR:\n{screen}"
    );
    assert!(
        screen.contains("] build: "),
        "plain progress lines expected:\n{screen}"
    );
}

/// `runnerctl bump --no-git-push` under `script` (a pseudo-terminal), as a
/// person at a terminal would run it (not CI), with NO_COLOR set to
/// `no_color`. Returns everything the terminal received.
fn bump_under_a_pty(repo: &RunnerRepo, no_color: &str) -> String {
    let typescript = tempfile::NamedTempFile::new().expect("typescript");
    let command = format!("{} bump --no-git-push", env!("CARGO_BIN_EXE_runnerctl"));
    let out = Run::program(
        "script",
        [
            "-qfec",
            command.as_str(),
            &typescript.path().display().to_string(),
        ],
    )
    .in_repo(repo)
    .env("TERM", "xterm-256color")
    .env("CI", "")
    .env("NO_COLOR", no_color)
    .run();
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    String::from_utf8_lossy(&std::fs::read(typescript.path()).expect("read typescript"))
        .into_owned()
}

#[test]
fn a_failure_shows_the_tail_and_where_the_full_log_is() {
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    nixpkgs.commit(T0 + 9 * DAY);
    // A skopeo whose reads fail with 30 lines of output (runnerctl asks
    // skopeo what the tags point at; it uploads itself): the diagnostic
    // shows the last 20 and names the log that has them all.
    let shim_dir = tempfile::tempdir().expect("shim dir");
    let shim = shim_dir.path().join("skopeo");
    write_executable(
        &shim,
        "#!/bin/sh\ncase \"$1\" in inspect) for i in $(seq 1 30); do echo \"skopeo line $i\" >&2; done; exit 1;; esac\nexec /usr/bin/skopeo \"$@\"\n",
    );
    let path = format!(
        "{}:{}",
        shim_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let registry = common::Registry::new();
    let out = Run::new([
        "release",
        "--image",
        &format!("docker://{}/x/y", registry.host()),
        "--tls-verify",
        "false",
    ])
    .in_repo(&repo)
    .env("PATH", &path)
    .env("RUNNERCTL_REGISTRY_USER", registry.user())
    .env("RUNNERCTL_REGISTRY_PASSWORD", registry.password())
    .run();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("skopeo line 30") && out.stderr.contains("skopeo line 11"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("skopeo line 10\n"),
        "more than 20 lines:\n{}",
        out.stderr
    );
    let log = repo.path().join(".runnerctl/logs/release.log");
    assert!(
        out.stderr.contains(&log.display().to_string()),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("skopeo line 1\n") && text.contains("skopeo line 30"),
        "{text}"
    );
}

#[test]
fn quiet_keeps_errors_only_and_verbose_streams_child_output() {
    let mut nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    nixpkgs.commit(T0 + 11 * DAY);
    let verbose = Run::new(["bump", "-v", "--no-git-push"])
        .in_repo(&repo)
        .run();
    verbose.assert_success();
    // Every command and the children's own output.
    assert!(
        verbose.stderr.contains("$ nix flake update"),
        "{}",
        verbose.stderr
    );
    assert!(verbose.stderr.contains("  nix: "), "{}", verbose.stderr);

    let quiet = Run::new(["bump", "-q", "--no-git-push"])
        .in_repo(&repo)
        .run();
    quiet.assert_success();
    assert_eq!(quiet.stdout, "", "quiet success prints nothing");
    assert_eq!(quiet.stderr, "", "quiet success prints nothing");

    let failing = Run::new(["release", "-q", "--attr", "nixos-nonode"])
        .in_repo(&repo)
        .run();
    assert_eq!(failing.code, Some(1));
    assert_eq!(failing.stdout, "");
    assert!(
        failing.stderr.contains("bin/node"),
        "errors still show: {}",
        failing.stderr
    );
    assert!(
        !failing.stderr.contains("] verify:"),
        "no progress lines: {}",
        failing.stderr
    );
}
