//! Offline Nix for the tests that evaluate `nix/` and `flake.nix` against the
//! stand-in package set in `tests/nix/`.
//!
//! Every command runs with its own configuration: no substituters, no
//! sandbox, no build users and an empty flake registry, so nothing reaches
//! for the network and the user's own Nix configuration plays no part.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use serde_json::Value;

/// What flake.nix's `crateSource` (nix/source.nix) must hold at its top
/// level: the crate and nothing else, in byte order.
pub const CRATE_SOURCE: &[&str] = &[
    "Cargo.lock",
    "Cargo.toml",
    "build.rs",
    "demo",
    "proptest-regressions",
    "src",
    "tests",
];

/// What `evalTestSource` holds besides [`CRATE_SOURCE`]: the offline
/// integration tests also read the flake, nix/, the justfile and workflows.
pub const EVAL_TEST_EXTRA: &[&str] = &["flake.nix", "flake.lock", "nix", "justfile", ".forgejo"];

/// The repository root: every `tests/nix/*.nix` path is relative to it.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The environment variable the `eval-*.nix` entry points read their
/// argument from (as JSON), because Nix 2.8's `nix eval` cannot pass
/// arguments to a file.
const ARGS_VAR: &str = "RUNNERCTL_TEST_EVAL_ARGS";

/// A Nix configuration for offline use, with its flake registry in a
/// temporary directory that lives as long as this value.
pub struct OfflineNix {
    dir: tempfile::TempDir,
    config: String,
}

/// A fresh Nix state directory is set up by the first command that opens
/// the store; two doing so at once can trip over each other's symlinks. The
/// tests of one crate run in parallel, so the first one warms the store up
/// while the others wait.
static STORE_READY: Once = Once::new();

impl OfflineNix {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory for the flake registry");
        let registry = dir.path().join("registry.json");
        std::fs::write(&registry, r#"{"flakes":[],"version":2}"#)
            .expect("write the empty flake registry");
        let config = format!(
            "experimental-features = nix-command flakes\n\
             sandbox = false\n\
             substituters =\n\
             build-users-group =\n\
             flake-registry = {}\n",
            registry.display()
        );
        let nix = OfflineNix { dir, config };
        STORE_READY.call_once(|| {
            run(&mut nix.command(["eval", "--impure", "--json", "--expr", "null"]));
        });
        nix
    }

    /// A scratch directory that is removed with this value.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `nix ARGS…`, run from the repository root with the offline configuration.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new("nix");
        command
            .args(args)
            .env("NIX_CONFIG", &self.config)
            .current_dir(repo_root());
        command
    }

    /// Nix's (major, minor) version, from `nix --version`.
    pub fn version(&self) -> (u32, u32) {
        let output = run(&mut self.command(["--version"]));
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.split_whitespace().last().unwrap_or_default();
        let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) => (major, minor),
            _ => panic!("cannot read a version from `nix --version`: {text}"),
        }
    }

    /// `import ./tests/nix/<file> <args>` evaluated to JSON.
    pub fn eval_file(&self, file: &str, args: &Value) -> Value {
        let expr = format!(
            "import ./tests/nix/{file} (builtins.fromJSON (builtins.getEnv \"{ARGS_VAR}\"))"
        );
        let mut command = self.command(["eval", "--impure", "--json", "--expr", &expr]);
        command.env(ARGS_VAR, args.to_string());
        json_output(&mut command)
    }
}

/// Runs `command`, which must fail, and returns its stderr. Panics with its
/// stdout when it succeeds instead.
pub fn failure_stderr(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|err| {
        panic!("could not start {command:?}: {err} (these tests need Nix: apt-get install nix-bin)")
    });
    assert!(
        !output.status.success(),
        "{command:?} succeeded, but it must fail:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a prepared command and returns its stdout parsed as JSON. Panics
/// with the command's stderr when it cannot start, fails, or prints
/// something that is not JSON.
pub fn json_output(command: &mut Command) -> Value {
    let output = run(command);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{command:?} printed no JSON ({err}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs `command` to completion and returns its output if it exited 0.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|err| {
        panic!("could not start {command:?}: {err} (these tests need Nix: apt-get install nix-bin)")
    });
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The path of a stand-in package, as `tests/nix/stubs.nix` makes it.
pub fn stub_path(name: &str) -> String {
    format!("/nix/store/00000000000000000000000000000000-{name}")
}

/// Follows `keys` into a JSON value, naming the missing key on failure.
pub fn at<'a>(value: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().fold(value, |current, key| {
        current
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}` on the way to {keys:?} in {current:#}"))
    })
}

/// The string at `keys`.
pub fn str_at<'a>(value: &'a Value, keys: &[&str]) -> &'a str {
    at(value, keys)
        .as_str()
        .unwrap_or_else(|| panic!("{keys:?} is not a string"))
}

/// The array at `keys`.
pub fn array_at<'a>(value: &'a Value, keys: &[&str]) -> &'a [Value] {
    at(value, keys)
        .as_array()
        .unwrap_or_else(|| panic!("{keys:?} is not a list"))
}

/// Copies `relative` (a file or a directory tree) from the repository into `dest`.
pub fn copy_from_repo(relative: &str, dest: &Path) {
    copy_tree(&repo_root().join(relative), &dest.join(relative));
}

/// Copies the tree at `from` (a file or a directory, e.g. a store path) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    copy_tree(from, to);
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap_or_else(|err| panic!("create {}: {err}", to.display()));
        let entries =
            std::fs::read_dir(from).unwrap_or_else(|err| panic!("read {}: {err}", from.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|err| panic!("read {}: {err}", from.display()));
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("create {}: {err}", parent.display()));
        }
        std::fs::copy(from, to)
            .unwrap_or_else(|err| panic!("copy {} to {}: {err}", from.display(), to.display()));
    }
}

/// `path` as a `path:` flake reference.
pub fn path_flake(path: &Path) -> String {
    format!("path:{}", PathBuf::from(path).display())
}
