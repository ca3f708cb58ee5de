//! A registry world: a stand-in nixpkgs, the runner repository, a private
//! registry and logging shims for nix and skopeo; runnerctl runs in the
//! repository against the registry.

use super::*;

const WORLD_TIMEOUT: Duration = Duration::from_secs(300);

pub struct RegistryWorld {
    pub nixpkgs: StandInNixpkgs,
    pub repo: RunnerRepo,
    pub registry: Registry,
    pub shims: PathShims,
    /// The stand-in's first commit time (fresh for every world).
    pub base: i64,
}

impl RegistryWorld {
    pub fn new() -> Self {
        let base = fresh_time();
        let nixpkgs = StandInNixpkgs::new_at(base);
        let repo = RunnerRepo::new(&nixpkgs);
        let mut shims = PathShims::new();
        shims.log_calls("nix").log_calls("skopeo");
        RegistryWorld {
            nixpkgs,
            repo,
            registry: Registry::new(),
            shims,
            base,
        }
    }

    /// A new stand-in nixpkgs commit `days` after the first.
    pub fn upstream_commit(&mut self, days: i64) {
        let at = self.base + days * DAY;
        self.nixpkgs.commit(at);
    }

    /// `docker://HOST/infra/runners/nixos`.
    pub fn image(&self) -> String {
        format!("docker://{}/{IMAGE_REPO}", self.registry.host())
    }

    /// `run` with the shims, the registry's credentials and a timeout.
    pub fn with_registry(&self, run: Run) -> Run {
        run.shims(&self.shims)
            .env("RUNNERCTL_REGISTRY_USER", self.registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", self.registry.password())
            .timeout(WORLD_TIMEOUT)
    }

    /// `runnerctl ARGS --image … --tls-verify false` in the repository.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        let image = self.image();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--image", &image, "--tls-verify", "false"]);
        self.with_registry(Run::new(all).in_repo(&self.repo)).run()
    }

    /// Every `skopeo copy` argv the shims logged.
    pub fn skopeo_copies(&self) -> Vec<Vec<String>> {
        self.shims
            .calls("skopeo")
            .into_iter()
            .filter(|argv| argv.first().map(String::as_str) == Some("copy"))
            .collect()
    }
}
