//! Offline Nix for the tests and the stand-in nixpkgs flake.

use super::*;

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
}

impl Default for StandInNixpkgs {
    fn default() -> Self {
        Self::new()
    }
}
