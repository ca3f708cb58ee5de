//! The world of a pipeline test: a stand-in nixpkgs, the runner repository
//! with its bare remote, a private registry and logging shims for nix and
//! skopeo; runnerctl runs in the repository against the registry.
//!
//! pipeline, push/verify, promote, token_auth and the fault tests build on
//! this one [`World`]; a test file that needs more (hooks, engines, its own
//! helpers) holds a `World` next to its extras and derefs to it
//! ([`deref_to_world!`](crate::common::deref_to_world)).

use super::*;

const WORLD_TIMEOUT: Duration = Duration::from_secs(300);

pub struct World {
    pub nixpkgs: StandInNixpkgs,
    pub repo: RunnerRepo,
    pub registry: Registry,
    pub shims: PathShims,
    /// The stand-in's first commit time (fresh for every world): what the
    /// initial lock has.
    pub base: i64,
}

impl World {
    /// A fresh stand-in, the runner repository locking it, and a registry
    /// with htpasswd auth.
    pub fn new() -> Self {
        Self::with_registry(Registry::new())
    }

    /// [`new`](Self::new) with `registry` (e.g. one with token auth).
    pub fn with_registry(registry: Registry) -> Self {
        let base = fresh_time();
        let nixpkgs = StandInNixpkgs::new_at(base);
        let repo = RunnerRepo::new(&nixpkgs);
        Self::assemble(nixpkgs, repo, base, registry)
    }

    /// A world around a stand-in and repository the test made itself.
    pub fn assemble(
        nixpkgs: StandInNixpkgs,
        repo: RunnerRepo,
        base: i64,
        registry: Registry,
    ) -> Self {
        let mut shims = PathShims::new();
        shims.log_calls("nix").log_calls("skopeo");
        World {
            nixpkgs,
            repo,
            registry,
            shims,
            base,
        }
    }

    /// A new stand-in nixpkgs commit `days` after the first. Returns its
    /// rev.
    pub fn upstream_commit(&mut self, days: i64) -> String {
        self.nixpkgs.commit(self.base + days * DAY)
    }

    /// `docker://HOST/infra/runners/nixos`.
    pub fn image(&self) -> String {
        format!("docker://{}/{IMAGE_REPO}", self.registry.host())
    }

    /// runnerctl's state directory in the working clone.
    pub fn state_dir(&self) -> PathBuf {
        self.repo.path().join(".runnerctl")
    }

    /// runnerctl's state file.
    pub fn state_path(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// state.json parsed with serde_json (panics with its text if it does
    /// not parse or is not version 1).
    pub fn state(&self) -> serde_json::Value {
        let path = self.state_path();
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("state.json does not parse ({e}):\n{text}"));
        assert_eq!(value["version"], 1, "state.json has no version 1:\n{text}");
        value
    }

    /// `run` with the shims, the registry's credentials and a timeout.
    pub fn prepare(&self, run: Run) -> Run {
        // A rollback or prune without -C keeps its state under
        // $XDG_STATE_HOME: the world's own, never the machine's.
        let xdg = self
            .repo
            .path()
            .parent()
            .unwrap_or(self.repo.path())
            .join("xdg-state");
        run.env_default("XDG_STATE_HOME", xdg.display().to_string())
            .shims(&self.shims)
            .env("RUNNERCTL_REGISTRY_USER", self.registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", self.registry.password())
            .timeout(WORLD_TIMEOUT)
    }

    /// `runnerctl ARGS --image … --tls-verify false` in the repository.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let image = self.image();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--image", &image, "--tls-verify", "false"]);
        self.prepare(Run::new(all).in_repo(&self.repo)).run()
    }

    /// Every `skopeo copy` argv the shims logged.
    pub fn skopeo_copies(&self) -> Vec<Vec<String>> {
        self.shims
            .calls("skopeo")
            .into_iter()
            .filter(|argv| argv.first().map(String::as_str) == Some("copy"))
            .collect()
    }

    /// Real `nix build` runs so far (calls that reached the logging shim).
    pub fn nix_builds(&self) -> usize {
        self.shims.count("nix", &["build"])
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for World {
    /// On a failed assertion, show what the registry saw.
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.registry.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- registry log ({} lines, last {}) ---\n{}",
                lines.len(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// `Deref` and `DerefMut` to the common [`World`] for a test file's world
/// that holds one in `$field`: `deref_to_world!(World, world);`.
#[allow(unused_macros)] // not every test binary has a world of its own
macro_rules! deref_to_world {
    ($ty:ty, $field:tt) => {
        impl std::ops::Deref for $ty {
            type Target = $crate::common::World;
            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.$field
            }
        }
    };
}
#[allow(unused_imports)] // not every test binary has a world of its own
pub(crate) use deref_to_world;
