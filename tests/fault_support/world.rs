//! The world a bump runs in: stand-in nixpkgs, runner repository, registry, shims and hooks. Snapshots of everything a failed run must leave alone.

use super::*;

/// The common [`World`](crate::common::World) (stand-in nixpkgs, runner
/// repository, registry, logging shims) with the runner repository one
/// nixpkgs commit behind, git calls logged too, and hooks in front of the
/// shims. Derefs to the common world.
pub struct World {
    pub world: crate::common::World,
    pub hooks: Hooks,
    /// TMPDIR for runnerctl (where its temporary auth file goes).
    pub tmp: TempDir,
    /// The remote's `main` before any bump.
    pub initial_remote_head: String,
    pub initial_remote_commits: usize,
    /// The new nixpkgs commit a bump picks up, and its time.
    pub new_rev: String,
    pub new_time: i64,
    pub user: String,
    pub password: String,
    pub extra_env: Vec<(String, String)>,
    /// [`assert_bumped`](Self::assert_bumped) checks that the working tree
    /// is clean (unset when a test leaves unrelated changes in it).
    pub expect_clean_tree: bool,
}

crate::common::deref_to_world!(World, world);

impl World {
    pub fn new() -> World {
        let mut world = crate::common::World::new();
        let new_rev = world.upstream_commit(1);
        let new_time = world.base + DAY;
        world.shims.log_calls("git");
        let hooks = Hooks::new(Some(world.shims.bin_dir()));
        let tmp = new_tempdir("tmpdir");
        let user = world.registry.user().to_string();
        let password = world.registry.password().to_string();
        World {
            initial_remote_head: world.repo.remote_head(),
            initial_remote_commits: world.repo.commit_count_on_remote(),
            world,
            hooks,
            tmp,
            new_rev,
            new_time,
            user,
            password,
            extra_env: Vec::new(),
            expect_clean_tree: true,
        }
    }

    /// The date tag of the new nixpkgs commit.
    pub fn date(&self) -> String {
        date_tag(self.new_time)
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.hooks.bin_dir().display(),
            self.shims.path_env()
        )
    }

    /// Everything runnerctl gets in its environment.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.repo.nix_env().to_vec();
        env.push(("PATH".into(), self.path_env()));
        env.push(("TMPDIR".into(), self.tmp.path().display().to_string()));
        env.push(("RUNNERCTL_REGISTRY_USER".into(), self.user.clone()));
        env.push(("RUNNERCTL_REGISTRY_PASSWORD".into(), self.password.clone()));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// `bump --image docker://… --tls-verify=false EXTRA…`
    pub fn bump_args(&self, extra: &[&str]) -> Vec<String> {
        self.bump_args_to(&self.image(), extra)
    }

    /// `bump --image IMAGE --tls-verify=false EXTRA…`
    pub fn bump_args_to(&self, image: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "bump".to_string(),
            "--image".into(),
            image.to_string(),
            "--tls-verify=false".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub fn bump(&self, extra: &[&str]) -> RunOutput {
        self.run(&self.bump_args(extra))
    }

    /// runnerctl with `args` as they are (unlike the common world's `run`,
    /// which adds `--image`), in a process group of its own with
    /// [`env`](Self::env).
    pub fn run(&self, args: &[String]) -> RunOutput {
        Spawned::start(args, self.repo.path(), &self.env()).wait(Duration::from_secs(240))
    }

    pub fn spawn_bump(&self, extra: &[&str]) -> Spawned {
        Spawned::start(&self.bump_args(extra), self.repo.path(), &self.env())
    }

    /// The status of a stage in state.json, if recorded.
    pub fn stage_status(&self, stage: &str) -> Option<String> {
        self.state()["stages"][stage]["status"]
            .as_str()
            .map(str::to_string)
    }

    /// Calls that change something: `nix flake update`/`lock`, `nix build`,
    /// `skopeo copy`, `git commit`/`push`/`rebase`/`fetch` (runnerctl's
    /// own: argv starting with the subcommand).
    pub fn changing_calls(&self) -> Vec<String> {
        let mut out = Vec::new();
        for tool in ["nix", "skopeo", "git"] {
            for argv in self.shims.calls(tool) {
                let first = argv.first().map(String::as_str).unwrap_or("");
                let second = argv.get(1).map(String::as_str).unwrap_or("");
                let changing = match tool {
                    "nix" => first == "build" || (first == "flake" && second != "metadata"),
                    "skopeo" => first == "copy",
                    _ => matches!(first, "commit" | "push" | "rebase" | "fetch" | "add"),
                };
                if changing {
                    out.push(format!("{tool} {}", argv.join(" ")));
                }
            }
        }
        out
    }

    pub fn git_pushes(&self) -> Vec<Vec<String>> {
        self.shims
            .calls("git")
            .into_iter()
            .filter(|argv| argv.iter().any(|a| a == "push"))
            .collect()
    }

    /// The out path the committed flake.lock builds (built by the test, not
    /// through the shims, so it does not count as a runnerctl build).
    pub fn expected_out_path(&self) -> PathBuf {
        self.repo.build("nixos")
    }

    /// Bump subjects on the remote's main.
    pub fn remote_bump_commits(&self) -> Vec<String> {
        let subject = bump_subject(&self.date());
        self.repo
            .remote_log_subjects()
            .into_iter()
            .filter(|s| *s == subject)
            .collect()
    }

    /// No push was forced: no force flag, no `+` refspec, no deletion.
    pub fn assert_never_forced(&self) {
        for argv in self.git_pushes() {
            for a in &argv {
                assert!(
                    !(a == "-f"
                        || a.starts_with("--force")
                        || a == "--mirror"
                        || a == "--delete"
                        || a == "-d"
                        || a.starts_with('+')
                        || a.starts_with(":")),
                    "forced or destructive push: {argv:?}"
                );
                // Short option clusters like -fu.
                if a.starts_with('-') && !a.starts_with("--") {
                    assert!(!a.contains('f'), "forced push: {argv:?}");
                }
            }
        }
    }

    /// `old` (a former remote head) is an ancestor of the remote's main.
    pub fn assert_remote_not_rewritten(&self, old: &str) {
        let ok = git_cmd(self.repo.remote_path())
            .args(["merge-base", "--is-ancestor", old, "refs/heads/main"])
            .status()
            .expect("git merge-base")
            .success();
        assert!(
            ok,
            "remote history was rewritten: {old} is no longer an ancestor of main"
        );
    }

    /// Everything a completed bump must have left behind:
    /// - exactly one bump commit on the remote, on top of the old history,
    ///   touching only flake.lock, which locks the new nixpkgs commit;
    /// - the clone at the remote's head, with a clean working tree;
    /// - every tag (latest, unstable, DATE, nix-HASH) at one digest, the one
    ///   runnerctl recorded, whose config has the built image's diff_ids;
    /// - no push was forced.
    ///
    /// Returns the digest.
    pub fn assert_bumped(&self) -> String {
        let repo = &self.repo;
        assert_eq!(
            self.remote_bump_commits().len(),
            1,
            "exactly one bump commit on the remote: {:?}",
            repo.remote_log_subjects()
        );
        assert_eq!(
            repo.commit_count_on_remote(),
            self.initial_remote_commits + 1
        );
        self.assert_remote_not_rewritten(&self.initial_remote_head);
        assert_eq!(repo.head(), repo.remote_head(), "clone and remote agree");
        assert_eq!(
            repo.git(&["log", "-1", "--format=%s"]),
            bump_subject(&self.date())
        );
        assert_eq!(
            repo.git(&["show", "--format=", "--name-only", "HEAD"]),
            "flake.lock",
            "the bump commit touches only flake.lock"
        );
        let remote_lock = git(repo.remote_path(), &["show", "refs/heads/main:flake.lock"]);
        assert!(
            remote_lock.contains(&self.new_rev),
            "remote flake.lock locks the new nixpkgs rev"
        );
        assert_eq!(repo.locked_nixpkgs_rev(), self.new_rev);
        if self.expect_clean_tree {
            assert_eq!(repo.status(), "", "working tree clean after the bump");
        }

        let out = self.expected_out_path();
        let nix_tag = nix_tag(&out.display().to_string());
        let mut expected_tags = vec![
            "latest".to_string(),
            "unstable".to_string(),
            self.date(),
            nix_tag.clone(),
        ];
        expected_tags.sort();
        assert_eq!(self.registry.tags(IMAGE_REPO), expected_tags);
        let digest = self
            .registry
            .digest(IMAGE_REPO, "latest")
            .expect("latest is tagged");
        for tag in &expected_tags {
            assert_eq!(
                self.registry.digest(IMAGE_REPO, tag).as_deref(),
                Some(digest.as_str()),
                "tag {tag} is at the built digest"
            );
        }
        let state = self.state();
        assert_eq!(
            state["images"][out.display().to_string()]["digest"],
            digest.as_str(),
            "state records the pushed digest for the out path: {state:#}"
        );
        let built = DockerArchive::read(&out);
        assert_eq!(
            registry_diff_ids(&self.registry, &digest),
            built.diff_ids(),
            "the pushed image is the built one"
        );
        self.assert_never_forced();
        digest
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// `rootfs.diff_ids` of the config of the manifest `digest` in the registry.
pub fn registry_diff_ids(registry: &Registry, digest: &str) -> Vec<String> {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let m = registry
        .request(
            "GET",
            &format!("/v2/{IMAGE_REPO}/manifests/{digest}"),
            &[("Accept", accept)],
            true,
        )
        .expect("GET manifest");
    assert_eq!(m.status, 200, "GET manifest {digest}");
    let manifest: serde_json::Value = serde_json::from_slice(&m.body).expect("manifest JSON");
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let c = registry
        .request(
            "GET",
            &format!("/v2/{IMAGE_REPO}/blobs/{config}"),
            &[],
            true,
        )
        .expect("GET config");
    // The registry may redirect blob GETs; the filesystem driver serves
    // them directly.
    assert_eq!(c.status, 200, "GET config blob {config}");
    let config: serde_json::Value = serde_json::from_slice(&c.body).expect("config JSON");
    config_diff_ids(&config)
}

/// What a failed run must not change: flake.lock bytes, every ref and HEAD
/// of the clone, the index and working tree status, the remote's refs and
/// the registry's tags.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub lock: Vec<u8>,
    pub head: String,
    pub refs: String,
    pub status: String,
    pub remote_refs: String,
    pub tags: Vec<String>,
}

impl Snapshot {
    pub fn take(repo: &RunnerRepo, registry: Option<&Registry>) -> Snapshot {
        let head_ref = git_cmd(repo.path())
            .args(["symbolic-ref", "-q", "HEAD"])
            .output()
            .expect("git symbolic-ref");
        Snapshot {
            lock: repo.lock_bytes(),
            head: format!(
                "{} {}",
                String::from_utf8_lossy(&head_ref.stdout).trim(),
                repo.head()
            ),
            refs: repo.git(&["for-each-ref", "--format=%(refname) %(objectname)"]),
            // runnerctl's own state dir aside (it ignores itself).
            status: repo.git(&[
                "status",
                "--porcelain",
                "--untracked-files=all",
                "--",
                ".",
                ":!.runnerctl",
            ]),
            remote_refs: git(
                repo.remote_path(),
                &["for-each-ref", "--format=%(refname) %(objectname)"],
            ),
            tags: registry.map(|r| r.tags(IMAGE_REPO)).unwrap_or_default(),
        }
    }
}
