//! Shared fixtures for runnerctl's integration tests (`mod common;`).
//!
//! Everything here runs real tools: Debian's Nix 2.8 (single-user, as root,
//! offline), git, skopeo and `/usr/bin/docker-registry`. Each helper owns its
//! own temporary directories, so tests can run in parallel.
//!
//! - [`nix_env`]: the environment every `nix` call in the tests must use.
//! - [`StandInNixpkgs`]: a tiny local flake standing in for nixpkgs.
//! - [`RunnerRepo`]: a clone of the fixture runner flake with a bare remote.
//! - [`Registry`]: a private docker-registry with htpasswd auth.
//! - [`PathShims`]: logging and fault-injecting wrappers to put first on PATH.
//! - [`Run`]: runs the runnerctl binary with a timeout.
//! - [`DockerArchive`]: reads a docker-archive (plain or gzip) for assertions.
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

fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("could not create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("could not read {}: {e}", path.display()))
}

fn make_executable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("could not chmod {}: {e}", path.display()));
}

fn new_tempdir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("runnerctl-{what}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("could not create a temporary directory for {what}: {e}"))
}

/// Quotes `s` for a POSIX shell script.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `YYYYMMDD` of a Unix time, UTC: what runnerctl's `{date}` must be.
pub fn date_tag(secs: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or_else(|e| panic!("bad timestamp {secs}: {e}"))
        .date();
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
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

// ---------------------------------------------------------------------------
// Nix
// ---------------------------------------------------------------------------

/// Environment that makes Debian's Nix 2.8 work single-user as root, offline
/// and fast. Writes `flake-registry.json` and an empty user `nix.conf` into
/// `tmp` and points Nix's caches at `tmp/cache`.
///
/// - `NIX_CONFIG` (honoured by Nix 2.8) enables flakes, turns the sandbox
///   off, empties `substituters` (the default, cache.nixos.org, would be
///   queried for every output path), empties `build-users-group` (builds run
///   as root, no nixbld users needed), points `flake-registry` at an empty
///   local file (the default is fetched from GitHub) and sets
///   `tarball-ttl = 0` so branch heads are never served from cache.
/// - `NIX_USER_CONF_FILES` shuts out `~/.config/nix/nix.conf`.
/// - `XDG_CACHE_HOME` keeps Nix's fetcher and eval caches per test.
///
/// `/etc/nix/nix.conf` is still read (Debian's only sets `sandbox = false`);
/// `NIX_CONFIG` overrides it.
pub fn nix_env(tmp: &Path) -> Vec<(String, String)> {
    let registry = tmp.join("flake-registry.json");
    write_file(&registry, r#"{"flakes":[],"version":2}"#);
    let user_conf = tmp.join("nix-user.conf");
    write_file(&user_conf, "");
    let cache = tmp.join("cache");
    fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("could not create {}: {e}", cache.display()));
    let config = format!(
        "experimental-features = nix-command flakes\n\
         sandbox = false\n\
         substituters =\n\
         build-users-group =\n\
         flake-registry = {}\n\
         tarball-ttl = 0\n\
         connect-timeout = 5\n",
        registry.display()
    );
    vec![
        ("NIX_CONFIG".to_string(), config),
        (
            "NIX_USER_CONF_FILES".to_string(),
            user_conf.display().to_string(),
        ),
        ("XDG_CACHE_HOME".to_string(), cache.display().to_string()),
    ]
}

/// A `nix` command in `dir` with `env` (from [`nix_env`]) applied.
pub fn nix_cmd(dir: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new("nix");
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .envs(git_env());
    cmd
}

/// `nix build --no-link --json INSTALLABLE` in `dir`; returns the `out` path.
pub fn nix_build(dir: &Path, env: &[(String, String)], installable: &str) -> PathBuf {
    let stdout = run_checked(nix_cmd(dir, env).args(["build", "--no-link", "--json", installable]));
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("nix build --json printed invalid JSON ({e}): {stdout}"));
    let out = json
        .get(0)
        .and_then(|b| b.pointer("/outputs/out"))
        .and_then(|o| o.as_str())
        .unwrap_or_else(|| panic!("nix build --json has no outputs.out: {stdout}"));
    PathBuf::from(out)
}

// ---------------------------------------------------------------------------
// Stand-in nixpkgs
// ---------------------------------------------------------------------------

/// A git repository (branch `main`) holding the stand-in nixpkgs flake.
/// Every [`commit`](Self::commit) changes `lib.payload` and moves
/// `lastModified` to the given time.
pub struct StandInNixpkgs {
    dir: TempDir,
    generation: u32,
}

impl StandInNixpkgs {
    /// A stand-in whose first commit is at [`T0`].
    pub fn new() -> Self {
        Self::new_at(T0)
    }

    /// A stand-in whose first commit is at `at_unix_secs`.
    pub fn new_at(at_unix_secs: i64) -> Self {
        let dir = new_tempdir("nixpkgs");
        git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
        let mut this = StandInNixpkgs { dir, generation: 0 };
        this.commit(at_unix_secs);
        this
    }

    /// Makes a new commit on `main` dated `at_unix_secs` (author and
    /// committer), so the locked `lastModified` becomes `at_unix_secs`.
    /// Returns the new rev.
    pub fn commit(&mut self, at_unix_secs: i64) -> String {
        self.generation += 1;
        let payload = format!("stand-in nixpkgs generation {}", self.generation);
        write_file(
            &self.dir.path().join("flake.nix"),
            NIXPKGS_FLAKE_NIX.replace("@PAYLOAD@", &payload),
        );
        git_commit_all(
            self.dir.path(),
            at_unix_secs,
            &format!("nixpkgs: generation {}", self.generation),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `git+file:///…?ref=main`, what the runner flake's input uses.
    pub fn url(&self) -> String {
        format!("git+file://{}?ref=main", self.path().display())
    }

    /// The URL pinned to `rev`.
    pub fn url_at(&self, rev: &str) -> String {
        format!("git+file://{}?ref=main&rev={rev}", self.path().display())
    }

    /// Current rev of `main`.
    pub fn rev(&self) -> String {
        git(self.path(), &["rev-parse", "main"])
    }

    /// Committer time of `main`, which Nix reports as `lastModified`.
    pub fn last_modified(&self) -> i64 {
        let s = git(self.path(), &["log", "-1", "--format=%ct", "main"]);
        s.parse()
            .unwrap_or_else(|e| panic!("git log printed a bad commit time {s:?}: {e}"))
    }

    /// The payload string of the current commit.
    pub fn payload(&self) -> String {
        format!("stand-in nixpkgs generation {}", self.generation)
    }
}

impl Default for StandInNixpkgs {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// Runner repository
// ---------------------------------------------------------------------------

/// The line of the runner flake after which extra inputs are inserted.
const NIXPKGS_INPUT_LINE: &str = "  inputs.nixpkgs.url = \"@NIXPKGS_URL@\";\n";

/// A working clone of the fixture runner flake, with an initial `flake.lock`
/// committed and pushed to a bare remote (`main` tracks `origin/main`).
pub struct RunnerRepo {
    root: TempDir,
    work: PathBuf,
    remote: PathBuf,
    nix_env: Vec<(String, String)>,
    nixpkgs_node: String,
    // Keeps the `base` flake of the shadowed variant alive.
    _base: Option<TempDir>,
}

impl RunnerRepo {
    /// The plain fixture: one input, `nixpkgs`, whose lock node is `nixpkgs`.
    pub fn new(nixpkgs: &StandInNixpkgs) -> Self {
        Self::create(
            nixpkgs,
            None,
            RUNNER_FLAKE_NIX,
            &[("build-image.sh", RUNNER_BUILD_IMAGE_SH.as_bytes())],
        )
    }

    /// Like [`new`](Self::new) with another fixture flake (which must have
    /// the runner flake's `nixpkgs` input line) and the files beside it
    /// (path relative to the repo, contents), e.g. the runnable fixture.
    pub fn with_flake(nixpkgs: &StandInNixpkgs, flake_nix: &str, files: &[(&str, &[u8])]) -> Self {
        Self::create(nixpkgs, None, flake_nix, files)
    }

    /// The fixture with a second input `base` (a flake whose own `nixpkgs`
    /// input is pinned to `base_nixpkgs_rev`, an older stand-in commit).
    /// Nix 2.8 then names `base`'s node `nixpkgs` and the root's `nixpkgs`
    /// input resolves to the node **`nixpkgs_2`** (checked against the
    /// generated flake.lock; see [`nixpkgs_node`](Self::nixpkgs_node)).
    pub fn with_shadowed_nixpkgs(nixpkgs: &StandInNixpkgs, base_nixpkgs_rev: &str) -> Self {
        Self::create(
            nixpkgs,
            Some(base_nixpkgs_rev),
            RUNNER_FLAKE_NIX,
            &[("build-image.sh", RUNNER_BUILD_IMAGE_SH.as_bytes())],
        )
    }

    fn create(
        nixpkgs: &StandInNixpkgs,
        base_rev: Option<&str>,
        flake_nix: &str,
        files: &[(&str, &[u8])],
    ) -> Self {
        let root = new_tempdir("runner");
        let work = root.path().join("work");
        let remote = root.path().join("remote.git");
        let nix_env = nix_env(&root.path().join("nix"));

        let mut flake = flake_nix.to_string();
        assert!(
            flake.contains(NIXPKGS_INPUT_LINE),
            "fixture flake.nix lost the line {NIXPKGS_INPUT_LINE:?}"
        );
        let base = base_rev.map(|rev| {
            let base = new_tempdir("base");
            git(base.path(), &["init", "--quiet", "--initial-branch=main"]);
            write_file(
                &base.path().join("flake.nix"),
                BASE_FLAKE_NIX.replace("@NIXPKGS_URL@", &nixpkgs.url_at(rev)),
            );
            git_commit_all(base.path(), T0, "base: init");
            let line = format!(
                "{NIXPKGS_INPUT_LINE}  inputs.base.url = \"git+file://{}?ref=main\";\n",
                base.path().display()
            );
            flake = flake.replace(NIXPKGS_INPUT_LINE, &line);
            base
        });
        let flake = flake.replace("@NIXPKGS_URL@", &nixpkgs.url());

        git(
            root.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                "remote.git",
            ],
        );
        git(
            root.path(),
            &["init", "--quiet", "--initial-branch=main", "work"],
        );
        git(&work, &["config", "user.name", GIT_NAME]);
        git(&work, &["config", "user.email", GIT_EMAIL]);
        git(&work, &["config", "commit.gpgsign", "false"]);
        write_file(&work.join("flake.nix"), flake);
        for (path, contents) in files {
            write_file(&work.join(path), contents);
        }
        write_file(&work.join(".gitignore"), "result\nresult-*\n");
        write_file(
            &work.join("README.md"),
            "# runner image\n\nFixture runner flake for runnerctl's tests.\n",
        );
        git_commit_all(&work, T0, "runner: init");

        run_checked(nix_cmd(&work, &nix_env).args(["flake", "lock"]));
        git_commit_all(&work, T0, "flake.lock: init");

        let remote_str = remote.display().to_string();
        git(&work, &["remote", "add", "origin", &remote_str]);
        git(
            &work,
            &["push", "--quiet", "--set-upstream", "origin", "main"],
        );

        let expected = if base_rev.is_some() {
            "nixpkgs_2"
        } else {
            "nixpkgs"
        };
        let repo = RunnerRepo {
            root,
            work,
            remote,
            nix_env,
            nixpkgs_node: expected.to_string(),
            _base: base,
        };
        let actual = repo.root_input_node("nixpkgs");
        assert_eq!(
            actual, expected,
            "nix flake lock named the root nixpkgs node {actual:?}, fixtures expect {expected:?}"
        );
        repo
    }

    /// The working clone.
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// The bare remote (`origin`).
    pub fn remote_path(&self) -> &Path {
        &self.remote
    }

    /// The [`nix_env`] this repo was locked with; pass it to runnerctl.
    pub fn nix_env(&self) -> &[(String, String)] {
        &self.nix_env
    }

    /// Name of the flake.lock node that `root.inputs.nixpkgs` resolves to:
    /// `"nixpkgs"` for [`new`](Self::new), `"nixpkgs_2"` for
    /// [`with_shadowed_nixpkgs`](Self::with_shadowed_nixpkgs).
    pub fn nixpkgs_node(&self) -> &str {
        &self.nixpkgs_node
    }

    pub fn lock_bytes(&self) -> Vec<u8> {
        read_file(&self.work.join("flake.lock"))
    }

    pub fn lock_json(&self) -> serde_json::Value {
        let bytes = self.lock_bytes();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "flake.lock is not JSON ({e}):\n{}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// The node `root.inputs.<input>` names in the working tree's flake.lock
    /// (a plain string; `follows` lists are not expected in these fixtures).
    pub fn root_input_node(&self, input: &str) -> String {
        let lock = self.lock_json();
        let root = lock["root"].as_str().unwrap_or("root");
        lock["nodes"][root]["inputs"][input]
            .as_str()
            .unwrap_or_else(|| panic!("flake.lock has no plain root input {input:?}: {lock:#}"))
            .to_string()
    }

    /// `locked.rev` of the nixpkgs node in the working tree's flake.lock.
    pub fn locked_nixpkgs_rev(&self) -> String {
        self.locked_nixpkgs_field("rev")
            .as_str()
            .unwrap_or_else(|| panic!("nixpkgs node has no locked.rev"))
            .to_string()
    }

    /// `locked.lastModified` of the nixpkgs node in the working tree's flake.lock.
    pub fn locked_nixpkgs_last_modified(&self) -> i64 {
        self.locked_nixpkgs_field("lastModified")
            .as_i64()
            .unwrap_or_else(|| panic!("nixpkgs node has no locked.lastModified"))
    }

    fn locked_nixpkgs_field(&self, field: &str) -> serde_json::Value {
        let lock = self.lock_json();
        lock["nodes"][self.nixpkgs_node.as_str()]["locked"][field].clone()
    }

    /// Rev of HEAD in the working clone.
    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Rev of `refs/heads/main` in the bare remote.
    pub fn remote_head(&self) -> String {
        git(&self.remote, &["rev-parse", "refs/heads/main"])
    }

    /// Subjects of the remote's `main`, newest first.
    pub fn remote_log_subjects(&self) -> Vec<String> {
        git(&self.remote, &["log", "--format=%s", "refs/heads/main"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn commit_count_on_remote(&self) -> usize {
        let n = git(&self.remote, &["rev-list", "--count", "refs/heads/main"]);
        n.parse()
            .unwrap_or_else(|e| panic!("git rev-list --count printed {n:?}: {e}"))
    }

    /// `git status --porcelain` of the working clone (empty when clean).
    pub fn status(&self) -> String {
        git(&self.work, &["status", "--porcelain"])
    }

    /// Runs `git args…` in the working clone.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Makes the remote move: clones it, lets `change` edit the clone,
    /// commits everything with `message` and pushes. Returns the new remote
    /// head. The working clone is not touched.
    pub fn push_from_second_clone(&self, message: &str, change: impl FnOnce(&Path)) -> String {
        let scratch = tempfile::Builder::new()
            .prefix("other-clone-")
            .tempdir_in(self.root.path())
            .unwrap_or_else(|e| panic!("could not create a dir for a second clone: {e}"));
        let other = scratch.path().join("clone");
        let other_str = other.display().to_string();
        let remote_str = self.remote.display().to_string();
        git(
            scratch.path(),
            &["clone", "--quiet", &remote_str, &other_str],
        );
        change(&other);
        git(&other, &["add", "--all"]);
        git(&other, &["commit", "--quiet", "-m", message]);
        git(&other, &["push", "--quiet", "origin", "main"]);
        self.remote_head()
    }

    /// The remote moves with a commit that only touches README.md.
    pub fn push_unrelated_readme_commit(&self) -> String {
        self.push_from_second_clone("README: mention the registry", |dir| {
            let readme = dir.join("README.md");
            let mut text = String::from_utf8_lossy(&read_file(&readme)).into_owned();
            text.push_str("\nImages are pushed to the private registry.\n");
            write_file(&readme, text);
        })
    }

    /// The remote moves with a commit that updates flake.lock to the
    /// stand-in's current `main` (as if another runner already bumped it).
    pub fn push_remote_lock_update(&self) -> String {
        let env = self.nix_env.clone();
        self.push_from_second_clone("flake.lock: update nixpkgs (elsewhere)", |dir| {
            run_checked(nix_cmd(dir, &env).args(["flake", "lock", "--update-input", "nixpkgs"]));
        })
    }

    /// The remote moves with a commit that rewrites flake.lock without
    /// changing what it locks (reformatted JSON), so a flake.lock commit made
    /// by runnerctl conflicts textually.
    pub fn push_reformatted_lock(&self) -> String {
        self.push_from_second_clone("flake.lock: reformat", |dir| {
            let path = dir.join("flake.lock");
            let bytes = read_file(&path);
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("flake.lock in second clone is not JSON: {e}"));
            let compact = serde_json::to_string(&json)
                .unwrap_or_else(|e| panic!("could not serialize flake.lock: {e}"));
            write_file(&path, compact + "\n");
        })
    }

    /// `nix build --no-link --json .#packages.<SYSTEM>.<attr>` in the working
    /// clone; returns the output path.
    pub fn build(&self, attr: &str) -> PathBuf {
        nix_build(
            &self.work,
            &self.nix_env,
            &format!(".#packages.{SYSTEM}.{attr}"),
        )
    }

    /// `nix flake lock --update-input nixpkgs` in the working clone (does
    /// not commit).
    pub fn update_nixpkgs(&self) {
        run_checked(nix_cmd(&self.work, &self.nix_env).args([
            "flake",
            "lock",
            "--update-input",
            "nixpkgs",
        ]));
    }
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Runs a server in the background and watches the test process: if that
/// dies without dropping the [`ServerProcess`], the server is killed too.
/// Args: log file, pid file, pid to watch, then the server's argv.
const SERVER_SUPERVISOR: &str = r#"
log=$1 pidfile=$2 watch=$3
shift 3
"$@" >>"$log" 2>&1 &
server=$!
echo "$server" >"$pidfile"
while kill -0 "$watch" 2>/dev/null && kill -0 "$server" 2>/dev/null; do
  sleep 0.2
done
kill "$server" 2>/dev/null
wait "$server"
exit 0
"#;

/// The environment variable every server a test starts carries (its value
/// names the kind of server): scripts/test's leak check looks for it.
pub const TEST_SERVER_ENV: &str = "RUNNERCTL_TEST_SERVER";

/// A server process (e.g. docker-registry) a test started: under a small
/// sh supervisor that kills it when the test process dies, in a process
/// group of its own that [`stop`](Self::stop) and `Drop` kill (on success,
/// failure and panic). Its stdout and stderr are appended to a log file.
pub struct ServerProcess {
    child: Child,
    pid_file: PathBuf,
}

impl ServerProcess {
    /// Starts `argv` as a server of `kind`, logging to `log`; `pid_file`
    /// receives the server's pid.
    pub fn start(kind: &str, argv: &[&OsStr], log: &Path, pid_file: &Path) -> Result<Self, String> {
        let _ = fs::remove_file(pid_file);
        let program = argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = Command::new("sh")
            .arg("-c")
            .arg(SERVER_SUPERVISOR)
            .arg(format!("runnerctl-test-{kind}-supervisor"))
            .arg(log)
            .arg(pid_file)
            .arg(std::process::id().to_string())
            .args(argv)
            .env(TEST_SERVER_ENV, kind)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Supervisor and server share a process group that stop() kills.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("could not start sh for {program}: {e}"))?;
        Ok(ServerProcess {
            child,
            pid_file: pid_file.to_path_buf(),
        })
    }

    /// The supervisor has ended (so has the server).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process group and the server (should it have left the
    /// group), and reaps the supervisor.
    pub fn stop(&mut self) {
        kill(&self.child.id().to_string(), true);
        if let Ok(pid) = fs::read_to_string(&self.pid_file) {
            kill(pid.trim(), false);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.pid_file);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private docker-registry on 127.0.0.1 with htpasswd (bcrypt) auth and
/// filesystem storage in a temp dir. Killed on drop.
///
/// Blob uploads are counted from the registry's access log (its stdout and
/// stderr go to [`log_path`](Self::log_path)): one line
/// `"POST /v2/<repo>/blobs/uploads/… HTTP/1.1"` per upload started,
/// including cross-repository mount attempts.
pub struct Registry {
    dir: TempDir,
    port: u16,
    user: String,
    password: String,
    child: Option<ServerProcess>,
}

impl Registry {
    /// Starts a registry on a free port. Panics with the log if it does not
    /// come up.
    pub fn new() -> Self {
        let dir = new_tempdir("registry");
        let user = "runner".to_string();
        let password = "s3cret-runner-pw".to_string();
        let htpasswd = dir.path().join("htpasswd");
        let mut child = Command::new("htpasswd")
            .args(["-iBc"])
            .arg(&htpasswd)
            .arg(&user)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start htpasswd (apache2-utils): {e}"));
        child
            .stdin
            .take()
            .map(|mut s| s.write_all(password.as_bytes()))
            .transpose()
            .unwrap_or_else(|e| panic!("could not send the password to htpasswd: {e}"));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("htpasswd did not finish: {e}"));
        assert!(
            out.status.success(),
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::create_dir_all(dir.path().join("storage"))
            .unwrap_or_else(|e| panic!("could not create registry storage: {e}"));

        let mut registry = Registry {
            dir,
            port: 0,
            user,
            password,
            child: None,
        };
        // Another process may grab the port between probing and binding.
        let mut last_err = String::new();
        for _ in 0..5 {
            registry.port = free_port();
            registry.write_config();
            match registry.try_start() {
                Ok(()) => return registry,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n  fields:\n    service: registry\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: runnerctl-tests\n\
             auth:\n  htpasswd:\n    realm: runnerctl-tests\n    path: {htpasswd}\n",
            storage = d.join("storage").display(),
            port = self.port,
            htpasswd = d.join("htpasswd").display(),
        );
        write_file(&d.join("config.yml"), config);
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("registry.pid")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let config = self.dir.path().join("config.yml");
        let child = ServerProcess::start(
            "docker-registry",
            &[
                OsStr::new(REGISTRY_BIN),
                OsStr::new("serve"),
                config.as_os_str(),
            ],
            &self.log_path(),
            &self.pid_file(),
        )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(HttpResponse { status: 401, .. }) = self.request("GET", "/v2/", &[], false) {
                return Ok(());
            }
            let exited = self.child.as_mut().is_none_or(ServerProcess::exited);
            if exited || Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no 401 from http://{}/v2/ (exited: {exited}); log:\n{}",
                    self.host(),
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the registry again after [`stop`](Self::stop): same port, same
    /// storage, same credentials.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "registry is already running");
        if let Err(e) = self.try_start() {
            panic!("docker-registry did not restart on port {}: {e}", self.port);
        }
    }

    /// Stops the registry and waits until the port refuses connections.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        child.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -STOP` the registry: it keeps its port, the kernel still
    /// accepts connections, and nothing answers.
    pub fn pause(&self) {
        self.signal_registry("STOP");
    }

    /// `kill -CONT` after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal_registry("CONT");
    }

    fn signal_registry(&self, signal: &str) {
        let pid = fs::read_to_string(self.pid_file())
            .unwrap_or_else(|e| panic!("the registry's pid file: {e}"));
        let status = Command::new("bash")
            .args(["-c", "kill -\"$1\" -- \"$2\"", "kill", signal, pid.trim()])
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `HOST/REPO:TAG`, e.g. for `docker://` references.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// Writes a containers-auth.json (`skopeo --authfile`,
    /// `REGISTRY_AUTH_FILE`) holding this registry's credentials to `path`.
    pub fn write_authfile(&self, path: &Path) {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        let json = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        write_file(path, json.to_string());
    }

    /// Where the registry's stdout and stderr (including the access log) go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Blob uploads started since the registry was created (all repos),
    /// counted from the access log.
    pub fn blob_upload_count(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| is_blob_upload_line(l, None))
            .count()
    }

    /// Blob uploads started in `repo`.
    pub fn blob_upload_count_for(&self, repo: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| is_blob_upload_line(l, Some(repo)))
            .count()
    }

    /// Manifests PUT to the registry (all repos), from the access log.
    pub fn manifest_put_count(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"PUT /v2/") && l.contains("/manifests/"))
            .count()
    }

    /// The tag (or digest) of every manifest PUT the registry answered 201,
    /// in order, from the access log: `"PUT /v2/<repo>/manifests/<ref> …" 201`.
    pub fn manifest_puts_by_ref(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let start = l.find("\"PUT /v2/")?;
                let rest = &l[start + 1..];
                let (request, after) = rest.split_once('"')?;
                let reference = request
                    .split_whitespace()
                    .nth(1)?
                    .split_once("/manifests/")?
                    .1;
                (after.split_whitespace().next() == Some("201")).then(|| reference.to_string())
            })
            .collect()
    }

    /// Tags of `repo` (empty if the repository does not exist).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let HttpResponse { status, body, .. } = self
            .request("GET", &format!("/v2/{repo}/tags/list"), &[], true)
            .unwrap_or_else(|e| panic!("GET tags of {repo} from {}: {e}", self.host()));
        match status {
            404 => Vec::new(),
            200 => {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "tags/list is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    )
                });
                let mut tags: Vec<String> = json["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                tags.sort();
                tags
            }
            s => panic!(
                "GET /v2/{repo}/tags/list answered {s}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// `Docker-Content-Digest` of `repo:tag` (HEAD, accepting docker v2
    /// schema2, OCI manifests and indexes), or `None` if the tag is unknown.
    pub fn digest(&self, repo: &str, tag: &str) -> Option<String> {
        let accept = "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json";
        let HttpResponse {
            status, headers, ..
        } = self
            .request(
                "HEAD",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Accept", accept)],
                true,
            )
            .unwrap_or_else(|e| panic!("HEAD manifest {repo}:{tag} on {}: {e}", self.host()));
        match status {
            404 => None,
            200 => Some(
                headers
                    .get("docker-content-digest")
                    .cloned()
                    .unwrap_or_else(|| panic!("HEAD {repo}:{tag} has no Docker-Content-Digest")),
            ),
            s => panic!("HEAD /v2/{repo}/manifests/{tag} answered {s}"),
        }
    }

    /// The manifest of `repo:tag` as JSON (GET), or `None` if unknown.
    pub fn manifest(&self, repo: &str, tag: &str) -> Option<serde_json::Value> {
        let accept = "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json";
        let HttpResponse { status, body, .. } = self
            .request(
                "GET",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("Accept", accept)],
                true,
            )
            .unwrap_or_else(|e| panic!("GET manifest {repo}:{tag} on {}: {e}", self.host()));
        match status {
            404 => None,
            200 => Some(
                serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("manifest of {repo}:{tag} is not JSON: {e}")),
            ),
            s => panic!("GET /v2/{repo}/manifests/{tag} answered {s}"),
        }
    }

    /// A minimal HTTP/1.0 client (no chunked encoding to deal with), with
    /// Basic auth if `auth`. `Err` if the registry cannot be reached.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        auth: bool,
    ) -> Result<HttpResponse, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect {}: {e}", self.host()))?;
        let timeout = Some(Duration::from_secs(10));
        stream
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(timeout)
            .map_err(|e| e.to_string())?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.host());
        if auth {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password));
            let _ = write!(req, "Authorization: Basic {token}\r\n");
        }
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("send {method} {path}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| format!("read response to {method} {path}: {e}"))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no HTTP header end in response to {method} {path}"))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in response to {method} {path}: {head}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// A response from [`Registry::request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_blob_upload_line(line: &str, repo: Option<&str>) -> bool {
    // Access log: 127.0.0.1 - - [date] "POST /v2/infra/runners/nixos/blobs/uploads/ HTTP/1.1" 202 0 "" "skopeo/1.9.3"
    let Some(start) = line.find("\"POST /v2/") else {
        return false;
    };
    let uri = line[start + "\"POST ".len()..]
        .split_whitespace()
        .next()
        .unwrap_or("");
    let Some(name) = uri
        .strip_prefix("/v2/")
        .and_then(|rest| rest.split_once("/blobs/uploads/"))
        .map(|(name, _)| name)
    else {
        return false;
    };
    repo.is_none_or(|r| r == name)
}

/// SIGKILLs process `pid` (or its whole process group) with bash's builtin
/// `kill`: needs no procps, and unlike dash's it takes `--` and `-PGID`.
fn kill(pid: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("bash")
        .args(["-c", "kill -KILL -- \"$1\" 2>/dev/null", "kill", &target])
        .stdin(Stdio::null())
        .status();
}

/// SIGKILLs a process group when dropped (on success, failure and panic):
/// for a test that starts runnerctl in a group of its own and may panic
/// before it ends.
pub struct KillGroupOnDrop(pub u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        kill(&self.0.to_string(), true);
    }
}

/// A TCP port that was free a moment ago (bind port 0, read it, close).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("could not bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address for a bound socket: {e}"))
        .port()
}

// ---------------------------------------------------------------------------
// PATH shims
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Fault {
    subcommand: Vec<String>,
    times: u32,
    exit_code: i32,
    message: String,
}

#[derive(Clone)]
struct Shim {
    real: PathBuf,
    log: bool,
    faults: Vec<Fault>,
}

/// A temp bin dir to put first on PATH, holding wrappers for named tools.
///
/// - [`log_calls`](Self::log_calls): appends each call's argv to
///   `<dir>/<tool>.log` (one line per call, args separated by `\x1f`) and
///   `exec`s the real tool.
/// - [`fail_once`](Self::fail_once) / [`fail_times`](Self::fail_times):
///   the first N calls whose argv contains the subcommand words (as
///   consecutive whole arguments, e.g. `["push"]` or `["flake", "update"]`)
///   print a message on stderr and exit with the given code; later calls
///   pass through.
///
/// The real tool is resolved on the PATH at the time of the first call for
/// that tool (ignoring this dir).
pub struct PathShims {
    dir: TempDir,
    shims: BTreeMap<String, Shim>,
}

const FIELD_SEP: char = '\u{1f}';

impl PathShims {
    pub fn new() -> Self {
        PathShims {
            dir: new_tempdir("shims"),
            shims: BTreeMap::new(),
        }
    }

    /// The directory to prepend to PATH.
    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `bin_dir` followed by the current PATH.
    pub fn path_env(&self) -> String {
        let outer = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
        format!("{}:{outer}", self.bin_dir().display())
    }

    /// Logs every call of `tool` (then runs the real one).
    pub fn log_calls(&mut self, tool: &str) -> &mut Self {
        self.shim(tool).log = true;
        self.write(tool);
        self
    }

    /// The first call of `tool` with `subcommand` fails with `exit_code`
    /// and `message` on stderr; later calls pass through.
    pub fn fail_once(
        &mut self,
        tool: &str,
        subcommand: &[&str],
        exit_code: i32,
        message: &str,
    ) -> &mut Self {
        self.fail_times(tool, subcommand, 1, exit_code, message)
    }

    /// Like [`fail_once`](Self::fail_once) for the first `times` calls.
    pub fn fail_times(
        &mut self,
        tool: &str,
        subcommand: &[&str],
        times: u32,
        exit_code: i32,
        message: &str,
    ) -> &mut Self {
        assert!(!subcommand.is_empty(), "fail_times needs a subcommand");
        self.shim(tool).faults.push(Fault {
            subcommand: subcommand.iter().map(|s| s.to_string()).collect(),
            times,
            exit_code,
            message: message.to_string(),
        });
        self.write(tool);
        self
    }

    /// Argv (without the program name) of every logged call of `tool`.
    pub fn calls(&self, tool: &str) -> Vec<Vec<String>> {
        let log = self.dir.path().join(format!("{tool}.log"));
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .map(|l| {
                l.split(FIELD_SEP)
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect()
            })
            .collect()
    }

    /// Logged calls of `tool` whose argv contains `subcommand` (consecutive
    /// whole arguments), e.g. `count("nix", &["build"])`.
    pub fn count(&self, tool: &str, subcommand: &[&str]) -> usize {
        self.calls(tool)
            .iter()
            .filter(|argv| {
                argv.windows(subcommand.len())
                    .any(|w| w.iter().zip(subcommand).all(|(a, b)| a == b))
            })
            .count()
    }

    /// How many times a fault of `tool` has fired so far.
    pub fn faults_fired(&self, tool: &str) -> usize {
        let Some(shim) = self.shims.get(tool) else {
            return 0;
        };
        (0..shim.faults.len())
            .map(|i| {
                fs::read_to_string(self.fault_counter(tool, i))
                    .map(|s| s.lines().count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn fault_counter(&self, tool: &str, index: usize) -> PathBuf {
        self.dir.path().join(format!(".{tool}.fault{index}.fired"))
    }

    fn shim(&mut self, tool: &str) -> &mut Shim {
        let dir = self.dir.path().to_path_buf();
        self.shims.entry(tool.to_string()).or_insert_with(|| Shim {
            real: find_on_path(tool, &dir)
                .unwrap_or_else(|| panic!("{tool} is not on PATH, cannot wrap it")),
            log: false,
            faults: Vec::new(),
        })
    }

    fn write(&self, tool: &str) {
        let Some(shim) = self.shims.get(tool) else {
            return;
        };
        let mut s = String::from("#!/bin/sh\n# runnerctl test shim\n");
        let _ = writeln!(s, "real={}", sh_quote(&shim.real.display().to_string()));
        s.push_str(
            "us=$(printf '\\037')\njoined=$us\nfor a in \"$@\"; do joined=\"$joined$a$us\"; done\n",
        );
        if shim.log {
            let log = self.dir.path().join(format!("{tool}.log"));
            let _ = writeln!(
                s,
                "printf '%s\\n' \"$joined\" >>{}",
                sh_quote(&log.display().to_string())
            );
        }
        for (i, f) in shim.faults.iter().enumerate() {
            let pattern: String = f
                .subcommand
                .iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join("\"$us\"");
            let counter = sh_quote(&self.fault_counter(tool, i).display().to_string());
            let _ = write!(
                s,
                "case \"$joined\" in *\"$us\"{pattern}\"$us\"*)\n  \
                 n=$(cat {counter} 2>/dev/null | wc -l)\n  \
                 if [ \"$n\" -lt {times} ]; then\n    \
                 echo fired >>{counter}\n    \
                 printf '%s\\n' {msg} >&2\n    \
                 exit {code}\n  \
                 fi;;\nesac\n",
                times = f.times,
                msg = sh_quote(&f.message),
                code = f.exit_code,
            );
        }
        s.push_str("exec \"$real\" \"$@\"\n");
        let path = self.dir.path().join(tool);
        write_file(&path, s);
        make_executable(&path);
    }
}

impl Default for PathShims {
    fn default() -> Self {
        Self::new()
    }
}

/// First executable `tool` on PATH outside `exclude`.
pub fn find_on_path(tool: &str, exclude: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d != exclude)
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

// ---------------------------------------------------------------------------
// Running runnerctl
// ---------------------------------------------------------------------------

/// Runs the runnerctl binary: no RUNNERCTL_* variables from the outer
/// environment (and `RUNNERCTL_SMOKE=never` unless the test sets it), stdin
/// closed, its own process group (killed as a whole on timeout), stdout and
/// stderr captured.
pub struct Run {
    program: PathBuf,
    args: Vec<String>,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

/// What a [`Run`] produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code; `None` if killed by a signal (or on timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub argv: Vec<String>,
}

impl Run {
    /// `runnerctl ARGS…`
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::program(env!("CARGO_BIN_EXE_runnerctl"), args)
    }

    /// Any program, with the same environment handling.
    pub fn program<I, S>(program: impl AsRef<OsStr>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Run {
            program: PathBuf::from(program.as_ref()),
            args: args.into_iter().map(|a| a.as_ref().to_string()).collect(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_string());
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.env
            .push((key.as_ref().to_string(), value.as_ref().to_string()));
        self
    }

    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = &'a (String, String)>) -> Self {
        self.env.extend(vars.into_iter().cloned());
        self
    }

    /// Runs in `repo`'s working clone with its [`nix_env`].
    pub fn in_repo(self, repo: &RunnerRepo) -> Self {
        self.cwd(repo.path()).envs(repo.nix_env())
    }

    /// Puts the shims first on PATH.
    pub fn shims(self, shims: &PathShims) -> Self {
        let path = shims.path_env();
        self.env("PATH", path)
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command this would run, environment and all, to spawn by hand
    /// (tests that kill it).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("RUNNERCTL_") || k.starts_with("GIT_DIR") || k == "GIT_WORK_TREE" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(git_env());
        // The fixture runner images hold placeholder files, not programs,
        // and an engine on this machine, configured for its users, is no
        // part of a test: only the smoke tests (runnable images, the engine
        // configuration of tests/engine_support) start containers.
        cmd.env("RUNNERCTL_SMOKE", "never");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    pub fn run(self) -> RunOutput {
        let mut cmd = self.command();
        let mut argv = vec![self.program.display().to_string()];
        argv.extend(self.args.iter().cloned());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {argv:?}: {e}"));
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    kill(&child.id().to_string(), true);
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {argv:?}: {e}"),
            }
        };
        let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: join(stdout),
            stderr: join(stderr),
            timed_out,
            argv,
        }
    }
}

/// Read a child's pipe to the end on a thread.
pub fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert!(
            self.code == Some(code) && !self.timed_out,
            "expected exit code {code}, got {:?} (timed out: {})\n{self}",
            self.code,
            self.timed_out
        );
        self
    }

    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv.join(" "),
            self.stdout,
            self.stderr
        )
    }
}

// ---------------------------------------------------------------------------
// Docker archives
// ---------------------------------------------------------------------------

/// The parts of a docker-archive (plain or gzip) that tests assert on.
#[derive(Debug, Clone)]
pub struct DockerArchive {
    /// manifest.json
    pub manifest: serde_json::Value,
    /// The config JSON the manifest names.
    pub config: serde_json::Value,
    /// Layer paths, in manifest order.
    pub layers: Vec<String>,
    /// sha256 of each layer file, in manifest order ("sha256:…").
    pub layer_digests: Vec<String>,
    /// Files (not directories) in the merged root filesystem.
    pub files: BTreeSet<String>,
    /// Contents of every regular file in the merged root filesystem.
    pub contents: BTreeMap<String, Vec<u8>>,
}

impl DockerArchive {
    /// Reads `path`; gzip is detected by its magic bytes.
    pub fn read(path: &Path) -> Self {
        let bytes = read_file(path);
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], what: &str) -> Self {
        use sha2::Digest as _;
        let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("{what}: bad gzip: {e}"));
            out
        } else {
            bytes.to_vec()
        };
        let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut archive = tar::Archive::new(plain.as_slice());
        for entry in archive
            .entries()
            .unwrap_or_else(|e| panic!("{what}: not a tar: {e}"))
        {
            let mut entry = entry.unwrap_or_else(|e| panic!("{what}: bad tar entry: {e}"));
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .unwrap_or_else(|e| panic!("{what}: bad entry path: {e}"))
                .display()
                .to_string();
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .unwrap_or_else(|e| panic!("{what}: reading {name}: {e}"));
            entries.insert(name, data);
        }
        let get = |name: &str| {
            entries
                .get(name)
                .unwrap_or_else(|| panic!("{what} has no {name}"))
        };
        let manifest: serde_json::Value = serde_json::from_slice(get("manifest.json"))
            .unwrap_or_else(|e| panic!("{what}: manifest.json is not JSON: {e}"));
        let config_name = manifest[0]["Config"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: manifest.json has no Config"));
        let config: serde_json::Value = serde_json::from_slice(get(config_name))
            .unwrap_or_else(|e| panic!("{what}: {config_name} is not JSON: {e}"));
        let layers: Vec<String> = manifest[0]["Layers"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: manifest.json has no Layers"))
            .iter()
            .map(|l| {
                l.as_str()
                    .unwrap_or_else(|| panic!("{what}: non-string layer"))
                    .to_string()
            })
            .collect();
        let mut layer_digests = Vec::new();
        let mut contents = BTreeMap::new();
        for layer in &layers {
            let data = get(layer);
            layer_digests.push(format!("sha256:{:x}", sha2::Sha256::digest(data)));
            let mut tar = tar::Archive::new(data.as_slice());
            for entry in tar
                .entries()
                .unwrap_or_else(|e| panic!("{what}: layer {layer} is not a tar: {e}"))
            {
                let mut entry =
                    entry.unwrap_or_else(|e| panic!("{what}: bad entry in {layer}: {e}"));
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry
                    .path()
                    .unwrap_or_else(|e| panic!("{what}: bad path in {layer}: {e}"))
                    .display()
                    .to_string();
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .unwrap_or_else(|e| panic!("{what}: reading {name} in {layer}: {e}"));
                contents.insert(name.trim_start_matches("./").to_string(), buf);
            }
        }
        DockerArchive {
            manifest,
            config,
            layers,
            layer_digests,
            files: contents.keys().cloned().collect(),
            contents,
        }
    }

    /// `rootfs.diff_ids` from the config.
    pub fn diff_ids(&self) -> Vec<String> {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A file of the merged root filesystem as text.
    pub fn file_text(&self, path: &str) -> Option<String> {
        self.contents
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

// ---------------------------------------------------------------------------
// skopeo (test code only: runnerctl must never put credentials in argv)
// ---------------------------------------------------------------------------

/// `skopeo copy docker-archive:ARCHIVE docker://HOST/REPO:TAG` with
/// `--dest-creds`, for seeding a registry from test code. Returns skopeo's
/// stdout. Note: skopeo 1.9.3 only reads *uncompressed* docker-archives from
/// a regular file (see [`DockerArchive`] for gzip).
pub fn skopeo_push(registry: &Registry, archive: &Path, repo: &str, tag: &str) -> String {
    run_checked(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!(
                "--dest-creds={}:{}",
                registry.user(),
                registry.password()
            ))
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}", registry.image_ref(repo, tag))),
    )
}

/// A commit time that, with high probability, no other test (in this or an
/// earlier run of the suite) uses: the fixture image's out path is then new
/// to the shared Nix store, so `nix build` really runs and a skipped build is
/// a real skip.
pub fn fresh_time() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    // splitmix64
    let mut z = nanos
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(u64::from(std::process::id()) << 32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    T0 + (z % 2000) as i64 * DAY + ((z / 2000) % 86_400) as i64
}
