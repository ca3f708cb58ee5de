//! Shared fixtures for runnerctl's integration tests (`mod common;`).
//!
//! Everything here runs real tools: Debian's Nix 2.8 (single-user, as root,
//! offline), git, skopeo and `/usr/bin/docker-registry`. Each helper owns its
//! own temporary directories, so tests can run in parallel.
//!
//! - [`nix_env`]: the environment every `nix` call in the tests must use.
//! - [`StandInNixpkgs`]: a tiny local flake standing in for nixpkgs.
//! - [`RunnerRepo`]: a clone of the fixture runner flake with a bare remote.
//! - [`Registry`]: a private docker-registry with htpasswd (or token) auth.
//! - [`PathShims`]: logging and fault-injecting wrappers to put first on PATH.
//! - [`Run`]: runs the runnerctl binary with a timeout.
//! - [`DockerArchive`]: reads a docker-archive (plain or gzip) for assertions.
//! - [`World`]: all of the above together, as pipeline tests use them.
//! - [`TcpService`]: a TCP server of the test's own (token server, proxy).
//!
//! One file per topic: `nix.rs`, `repo.rs`, `registry.rs`, `shims.rs`,
//! `run.rs`, `archive.rs`, `world.rs`, `tcp.rs`; this file keeps the constants and the helpers
//! that run commands.
// Each test binary that declares this module uses a different part of it:
// with the module split by topic, every file still has items that some of
// those binaries leave unused, so the lint is off here (items that no
// binary uses are removed by hand).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

/// The stand-in nixpkgs flake; `@PAYLOAD@` is replaced per commit.
pub const NIXPKGS_FLAKE_NIX: &str = include_str!("../../demo/nixpkgs/flake.nix");
/// The fixture runner flake; `@NIXPKGS_URL@` is replaced by the stand-in's URL.
pub const RUNNER_FLAKE_NIX: &str = include_str!("../../demo/runner/flake.nix");
/// The builder script the runner flake's derivations run.
pub const RUNNER_BUILD_IMAGE_SH: &str = include_str!("../../demo/runner/build-image.sh");
/// A flake with its own `nixpkgs` input, used to shift the runner's node name.
pub const BASE_FLAKE_NIX: &str = include_str!("../fixtures/base/flake.nix");

/// Commit time of the stand-in's first commit (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000;
/// One day, for moving `lastModified` forward in readable steps.
pub const DAY: i64 = 86_400;

/// The system the fixture images are built for on this machine.
pub const SYSTEM: &str = "x86_64-linux";
/// Repository the tests push to, as runnerctl's default target does.
pub const IMAGE_REPO: &str = "infra/runners/nixos";

const GIT_NAME: &str = "runnerctl tests";
const GIT_EMAIL: &str = "tests@runnerctl.invalid";

mod nix;
#[allow(unused_imports)] // each test binary uses a different part
pub use nix::*;
mod repo;
#[allow(unused_imports)] // each test binary uses a different part
pub use repo::*;
mod registry;
#[allow(unused_imports)] // each test binary uses a different part
pub use registry::*;
mod shims;
#[allow(unused_imports)] // each test binary uses a different part
pub use shims::*;
mod run;
#[allow(unused_imports)] // each test binary uses a different part
pub use run::*;
mod archive;
#[allow(unused_imports)] // each test binary uses a different part
pub use archive::*;
mod world;
#[allow(unused_imports)] // each test binary uses a different part
pub use world::*;
mod tcp;
#[allow(unused_imports)] // each test binary uses a different part
pub use tcp::*;

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Runs `cmd`, panics with its argv, status and output unless it exits 0, and
/// returns its stdout.
pub fn run_checked(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not start {desc}: {e}"));
    if !out.status.success() {
        panic!(
            "{desc} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `input` on its stdin and returns its output (stdout and
/// stderr captured), whatever its exit status. Panics if it cannot start.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {desc}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A child that exits without reading closes the pipe: its output says why.
    let _ = stdin.write_all(input);
    drop(stdin);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{desc} did not finish: {e}"))
}

/// Environment for git commands run by the fixtures: a fixed identity and no
/// global or system configuration.
pub fn git_env() -> Vec<(String, String)> {
    [
        ("GIT_AUTHOR_NAME", GIT_NAME),
        ("GIT_AUTHOR_EMAIL", GIT_EMAIL),
        ("GIT_COMMITTER_NAME", GIT_NAME),
        ("GIT_COMMITTER_EMAIL", GIT_EMAIL),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_TERMINAL_PROMPT", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A `git` command in `dir` with [`git_env`] applied.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .envs(git_env())
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    cmd
}

/// Runs `git args…` in `dir` and returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run_checked(git_cmd(dir).args(args)).trim().to_string()
}

/// Commits everything in `dir` with author and committer date `at_unix_secs`.
fn git_commit_all(dir: &Path, at_unix_secs: i64, message: &str) -> String {
    git(dir, &["add", "--all"]);
    let date = format!("@{at_unix_secs} +0000");
    run_checked(
        git_cmd(dir)
            .args(["commit", "--quiet", "--allow-empty", "-m", message])
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date),
    );
    git(dir, &["rev-parse", "HEAD"])
}

pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("could not create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()))
}

/// Writes a script (or any program) to `path`, mode 755.
pub fn write_executable(path: &Path, contents: impl AsRef<[u8]>) {
    write_file(path, contents);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("could not chmod {}: {e}", path.display()));
}

/// Every regular file below `dir` (following no symlinks).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

pub fn new_tempdir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("runnerctl-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("could not create a temporary directory for {what}: {e}"))
}

/// Quotes `s` for a POSIX shell script.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The UTC date of a Unix time.
pub fn utc_date(secs: i64) -> time::Date {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or_else(|e| panic!("bad timestamp {secs}: {e}"))
        .date()
}

/// `YYYYMMDD` of a Unix time, UTC: what runnerctl's `{date}` must be.
pub fn date_tag(secs: i64) -> String {
    let d = utc_date(secs);
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

/// runnerctl's default commit subject, before the date tag.
pub const DEFAULT_SUBJECT_PREFIX: &str = "chore(ci): Update nixos to ";

/// The default commit subject for a date tag.
pub fn bump_subject(date: &str) -> String {
    format!("{DEFAULT_SUBJECT_PREFIX}{date}")
}

/// `nix-<hash>`: the content-addressed tag of an out path.
pub fn nix_tag(out_path: &str) -> String {
    let name = Path::new(out_path)
        .file_name()
        .unwrap_or_else(|| panic!("no file name in {out_path}"))
        .to_string_lossy()
        .into_owned();
    let (hash, _) = name
        .split_once('-')
        .unwrap_or_else(|| panic!("{out_path} is not a store path"));
    assert_eq!(hash.len(), 32, "{out_path}");
    format!("nix-{hash}")
}
