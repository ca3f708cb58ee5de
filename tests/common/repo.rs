//! The fixture runner repository: a clone of the runner flake with a bare remote.

use super::*;

/// The line of the runner flake after which extra inputs are inserted.
pub const NIXPKGS_INPUT_LINE: &str = "  inputs.nixpkgs.url = \"@NIXPKGS_URL@\";\n";

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
