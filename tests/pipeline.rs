//! End-to-end tests of `runnerctl bump`, `release` and `status`: the built
//! binary against real Nix, skopeo, a password-protected docker-registry and
//! a bare git remote (see tests/common for the fixtures).
//!
//! Every test owns its stand-in nixpkgs, runner repository, registry and
//! PATH shims. The stand-in's commit times are drawn per test (see
//! [`fresh_base`]), so every test's image has its own out path: a `nix
//! build` that another test (or an earlier run of the suite) already did
//! cannot hide a build or a missing one.

mod common;
mod fault_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fault_support::FaultProxy;

/// Generous: the tests run in parallel on two cores.
const TIMEOUT: Duration = Duration::from_secs(900);

const STAGES: [&str; 7] = [
    "preflight",
    "update",
    "build",
    "verify",
    "push",
    "commit",
    "git-push",
];

// ---------------------------------------------------------------------------
// Times and dates
// ---------------------------------------------------------------------------

/// `YYYY-MM-DD` (UTC): the date in the commit body.
fn date_dashed(secs: i64) -> String {
    let d = utc_date(secs);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn subject_for(secs: i64) -> String {
    bump_subject(&date_tag(secs))
}

// ---------------------------------------------------------------------------
// The world of one test
// ---------------------------------------------------------------------------

/// The registry world of tests/common, with what these tests ask of it.
struct World(common::World);

common::deref_to_world!(World, 0);

impl World {
    fn new() -> Self {
        World(common::World::new())
    }

    fn assemble(nixpkgs: StandInNixpkgs, repo: RunnerRepo, base: i64) -> Self {
        World(common::World::assemble(
            nixpkgs,
            repo,
            base,
            Registry::new(),
        ))
    }

    /// `runnerctl ARGS…` in the working clone, with the nix env, the shims
    /// first on PATH and no credentials.
    fn cmd(&self, args: &[&str]) -> Run {
        Run::new(args)
            .in_repo(&self.repo)
            .shims(&self.shims)
            .timeout(TIMEOUT)
    }

    /// `runnerctl COMMAND --image docker://… --tls-verify false EXTRA…` with
    /// the registry's credentials in the environment.
    fn against_registry(&self, command: &str, extra: &[&str]) -> Run {
        self.against_registry_with_password(command, extra, self.registry.password())
    }

    fn against_registry_with_password(&self, command: &str, extra: &[&str], pw: &str) -> Run {
        let image = self.image();
        let mut args = vec![command, "--image", image.as_str(), "--tls-verify", "false"];
        args.extend_from_slice(extra);
        self.cmd(&args)
            .env("RUNNERCTL_REGISTRY_USER", self.registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", pw)
    }

    fn bump(&self, extra: &[&str]) -> RunOutput {
        self.against_registry("bump", extra).run()
    }

    /// After a resumed run: one `nix build` and one `nix flake update` in all.
    fn assert_nothing_ran_twice(&self) {
        assert_eq!(
            self.nix_builds(),
            1,
            "nix build ran again: {:?}",
            self.shims.calls("nix")
        );
        assert_eq!(
            self.nix_updates(),
            1,
            "the update ran again: {:?}",
            self.shims.calls("nix")
        );
    }

    fn nix_updates(&self) -> usize {
        self.shims.count("nix", &["flake", "update"]) + self.shims.count("nix", &["flake", "lock"])
    }

    /// Every tag of the image repository and its digest.
    fn registry_digests(&self) -> BTreeMap<String, Option<String>> {
        self.registry
            .tags(IMAGE_REPO)
            .into_iter()
            .map(|t| {
                let d = self.registry.digest(IMAGE_REPO, &t);
                (t, d)
            })
            .collect()
    }

    /// Asserts that the registry has exactly `tags`, all at one digest, and
    /// returns that digest.
    fn assert_registry_tags_share_one_digest(&self, tags: &[String]) -> String {
        let have: BTreeSet<String> = self.registry.tags(IMAGE_REPO).into_iter().collect();
        let want: BTreeSet<String> = tags.iter().cloned().collect();
        assert_eq!(have, want, "registry tags of {IMAGE_REPO}");
        let digests: BTreeSet<Option<String>> = tags
            .iter()
            .map(|t| self.registry.digest(IMAGE_REPO, t))
            .collect();
        assert_eq!(
            digests.len(),
            1,
            "tags {tags:?} point at different manifests: {:?}",
            self.registry_digests()
        );
        let digest = digests
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_else(|| panic!("tags {tags:?} have no digest"));
        assert!(digest.starts_with("sha256:"), "{digest}");
        digest
    }

    /// Refs of the bare remote (`git for-each-ref`).
    fn remote_refs(&self) -> String {
        git(self.repo.remote_path(), &["for-each-ref"])
    }

    /// Refs of the working clone (`git for-each-ref`).
    fn work_refs(&self) -> String {
        self.repo.git(&["for-each-ref"])
    }

    fn subject(&self, rev: &str) -> String {
        self.repo.git(&["log", "-1", "--format=%s", rev])
    }

    fn body(&self, rev: &str) -> String {
        self.repo.git(&["log", "-1", "--format=%b", rev])
    }

    /// Files changed by commit `rev` (against its first parent).
    fn files_changed(&self, rev: &str) -> Vec<String> {
        self.repo
            .git(&["diff-tree", "--no-commit-id", "--name-only", "-r", rev])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn the_four_tags(date: &str, out_path: &str) -> Vec<String> {
    vec![
        "latest".to_string(),
        "unstable".to_string(),
        date.to_string(),
        nix_tag(out_path),
    ]
}

fn short(rev: &str) -> &str {
    &rev[..12]
}

/// A string field of a JSON document, or a panic naming it.
fn json_str<'a>(doc: &'a serde_json::Value, pointer: &str) -> &'a str {
    doc.pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no string at {pointer} in {doc:#}"))
}

/// A blob of `repo` from the registry.
fn registry_blob(registry: &Registry, digest: &str) -> Vec<u8> {
    let resp = registry
        .request(
            "GET",
            &format!("/v2/{IMAGE_REPO}/blobs/{digest}"),
            &[],
            true,
        )
        .unwrap_or_else(|e| panic!("GET blob {digest}: {e}"));
    assert_eq!(resp.status, 200, "GET blob {digest}");
    resp.body
}

/// A file from a layer blob (tar, or gzip-compressed tar).
fn file_in_layer(blob: &[u8], wanted: &str) -> Option<String> {
    let plain = if blob.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .expect("gunzip layer");
        out
    } else {
        blob.to_vec()
    };
    let mut archive = tar::Archive::new(plain.as_slice());
    for entry in archive.entries().expect("layer is a tar") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("entry path").display().to_string();
        if name.trim_start_matches("./") == wanted {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read entry");
            return Some(text);
        }
    }
    None
}

/// `etc/nixpkgs-input` of the image at `tag` in the registry: which nixpkgs
/// the image was built from.
fn registry_nixpkgs_input(registry: &Registry, tag: &str) -> String {
    let manifest = registry
        .manifest(IMAGE_REPO, tag)
        .unwrap_or_else(|| panic!("no manifest for {tag}"));
    let layers = manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest without layers: {manifest:#}"));
    layers
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .find_map(|d| file_in_layer(&registry_blob(registry, d), "etc/nixpkgs-input"))
        .unwrap_or_else(|| panic!("no layer of {tag} has etc/nixpkgs-input"))
}

/// `rootfs.diff_ids` of the image at `reference` (any skopeo transport).
fn skopeo_diff_ids(reference: &str) -> Vec<String> {
    let config = run_checked(Command::new("skopeo").args([
        "--insecure-policy",
        "inspect",
        "--config",
        "--raw",
        reference,
    ]));
    let json: serde_json::Value = serde_json::from_str(&config)
        .unwrap_or_else(|e| panic!("config of {reference} is not JSON ({e}): {config}"));
    json["rootfs"]["diff_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("config of {reference} has no diff_ids: {json:#}"))
        .iter()
        .map(|d| d.as_str().expect("diff_id string").to_string())
        .collect()
}

/// Tag → manifest digest, from an OCI layout's index.json.
fn oci_index_tags(dir: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(dir.join("index.json"))
        .unwrap_or_else(|e| panic!("no index.json in {}: {e}", dir.display()));
    let index: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("index.json is not JSON ({e}): {text}"));
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json has no manifests: {index:#}"))
        .iter()
        .filter_map(|m| {
            let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            Some((name.to_string(), m["digest"].as_str()?.to_string()))
        })
        .collect()
}

fn assert_secret_absent(secret: &str, out: &RunOutput) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "the password {secret:?} leaked into the output\n{out}"
    );
}

fn assert_secret_absent_from_dir(secret: &str, dir: &Path) {
    for file in files_below(dir) {
        let bytes = fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the password {secret:?} is written in {}",
            file.display()
        );
    }
}

// ---------------------------------------------------------------------------
// 1. First bump, end to end
// ---------------------------------------------------------------------------

#[test]
fn first_bump_updates_pushes_three_tags_commits_and_pushes() {
    let mut w = World::new();
    let old_rev = w.nixpkgs.rev();
    let old_lock = w.repo.lock_bytes();
    let old_head = w.repo.head();
    let new_rev = w.upstream_commit(3);
    let new_time = w.base + 3 * DAY;
    let date = date_tag(new_time);
    assert_ne!(date, date_tag(w.base), "test setup: dates must differ");
    // Unrelated work in progress that the bump commit must leave alone: an
    // unstaged edit and a staged new file.
    let readme = w.repo.path().join("README.md");
    let mut text = fs::read_to_string(&readme).expect("read README.md");
    text.push_str("\nwork in progress\n");
    fs::write(&readme, text).expect("edit README.md");
    fs::write(
        w.repo.path().join("notes.txt"),
        "staged, not for the bump\n",
    )
    .expect("notes");
    w.repo.git(&["add", "notes.txt"]);
    let porcelain = |w: &World| run_checked(git_cmd(w.repo.path()).args(["status", "--porcelain"]));
    let wip = " M README.md\nA  notes.txt\n";
    assert_eq!(porcelain(&w), wip);

    // Tracked changes are refused unless --allow-dirty (issue 10, finding 5).
    let out = w.bump(&["--json", "--allow-dirty"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    assert_eq!(report["command"], "bump");
    assert_eq!(report["date"], date.as_str());
    assert_secret_absent(w.registry.password(), &out);

    // flake.lock: new bytes, the new nixpkgs locked.
    let new_lock = w.repo.lock_bytes();
    assert_ne!(new_lock, old_lock, "flake.lock did not change");
    assert_eq!(w.repo.locked_nixpkgs_rev(), new_rev);
    assert_eq!(w.repo.locked_nixpkgs_last_modified(), new_time);

    // The image: built once, from the new lock (the same out path an
    // independent `nix build` of the committed flake gives).
    assert_eq!(w.nix_builds(), 1, "nix calls: {:?}", w.shims.calls("nix"));
    let out_path = json_str(&report, "/out_path").to_string();
    let independent = w.repo.build("nixos");
    assert_eq!(Path::new(&out_path), independent.as_path());

    // The registry: latest, unstable, DATE and nix-<hash> at one digest,
    // which is what runnerctl reports.
    let tags = the_four_tags(&date, &out_path);
    let digest = w.assert_registry_tags_share_one_digest(&tags);
    assert_eq!(json_str(&report, "/digest"), digest);
    // The pushed image is the built one: same layers (diff_ids), and its
    // nixpkgs layer names the new rev.
    let archive = DockerArchive::read(&independent);
    let manifest = w.registry.manifest(IMAGE_REPO, "latest").expect("manifest");
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: serde_json::Value =
        serde_json::from_slice(&registry_blob(&w.registry, config_digest)).expect("config JSON");
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(archive.diff_ids())
    );
    let input = registry_nixpkgs_input(&w.registry, &date);
    assert!(input.contains(&format!("rev={new_rev}")), "{input}");
    // An empty registry: 4 layers + config uploaded, nothing twice.
    assert_eq!(w.registry.blob_upload_count(), 5, "{}", w.registry.log());

    // The commit: subject, body, only flake.lock, on the remote.
    let head = w.repo.head();
    assert_ne!(head, old_head, "no commit was made");
    assert_eq!(json_str(&report, "/commit"), head);
    assert_eq!(w.subject(&head), format!("{DEFAULT_SUBJECT_PREFIX}{date}"));
    let body = w.body(&head);
    let line = format!(
        "nixpkgs: {} ({}) → {} ({})",
        short(&old_rev),
        date_dashed(w.base),
        short(&new_rev),
        date_dashed(new_time)
    );
    assert!(body.contains(&line), "commit body lacks {line:?}:\n{body}");
    assert_eq!(w.files_changed(&head), vec!["flake.lock".to_string()]);
    assert_eq!(w.repo.git(&["rev-parse", "HEAD^"]), old_head);
    assert_eq!(w.repo.remote_head(), head, "the remote lacks the commit");
    assert_eq!(w.repo.commit_count_on_remote(), 3);
    let remote_lock = git(
        w.repo.remote_path(),
        &["show", "refs/heads/main:flake.lock"],
    );
    assert_eq!(remote_lock.as_bytes(), new_lock.trim_ascii_end());
    assert_eq!(porcelain(&w), wip, "the bump touched unrelated changes");
}

// ---------------------------------------------------------------------------
// 2. A rerun is a no-op
// ---------------------------------------------------------------------------

#[test]
fn rerun_after_a_bump_is_a_no_op() {
    let mut w = World::new();
    w.upstream_commit(1);
    w.bump(&[]).assert_success();
    let head = w.repo.head();
    let remote = w.repo.remote_head();
    let lock = w.repo.lock_bytes();
    let digests = w.registry_digests();
    assert_eq!(digests.len(), 4, "{digests:?}");
    let (builds, uploads, puts) = (
        w.nix_builds(),
        w.registry.blob_upload_count(),
        w.registry.manifest_put_count(),
    );
    assert_eq!(builds, 1);
    assert!(uploads > 0 && puts > 0);

    let out = w.bump(&["--json"]);
    out.assert_success();
    assert_eq!(out.json()["outcome"], "up-to-date", "{out}");
    assert_eq!(w.repo.head(), head, "a new commit was made");
    assert_eq!(w.repo.remote_head(), remote);
    assert_eq!(w.repo.lock_bytes(), lock);
    assert_eq!(w.nix_builds(), builds, "nix build ran again");
    assert_eq!(
        w.registry.blob_upload_count(),
        uploads,
        "blobs uploaded again"
    );
    assert_eq!(w.registry.manifest_put_count(), puts, "manifests PUT again");
    assert!(w.skopeo_copies().is_empty(), "runnerctl uploads itself");
    assert_eq!(w.registry_digests(), digests);
}

// ---------------------------------------------------------------------------
// 3. Nothing upstream
// ---------------------------------------------------------------------------

#[test]
fn nothing_new_upstream_means_no_commit() {
    let w = World::new();
    let lock = w.repo.lock_bytes();
    let head = w.repo.head();
    let remote = w.repo.remote_head();

    let out = w.bump(&["--json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "up-to-date", "{out}");
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock changed");
    assert_eq!(w.repo.head(), head, "a commit was made");
    assert_eq!(w.repo.remote_head(), remote);
    assert_eq!(w.repo.commit_count_on_remote(), 2);
    assert_eq!(w.repo.status(), "");

    // The human output says so too.
    let out = w.bump(&[]);
    out.assert_success();
    assert!(
        out.stdout.contains("up-to-date") || out.stdout.contains("up to date"),
        "{out}"
    );
    assert_eq!(w.repo.head(), head);
}

// ---------------------------------------------------------------------------
// 4. Dry run
// ---------------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    let mut w = World::new();
    // Something already in the registry, so its digests can be compared.
    let old_image = w.repo.build("nixos");
    skopeo_push(&w.registry, &old_image, IMAGE_REPO, "latest");
    skopeo_push(&w.registry, &old_image, IMAGE_REPO, "unstable");
    let new_rev = w.upstream_commit(2);
    let date = date_tag(w.base + 2 * DAY);

    let snapshot = |w: &World| {
        (
            w.repo.lock_bytes(),
            w.work_refs(),
            w.repo
                .git(&["status", "--porcelain", "--untracked-files=all"]),
            w.remote_refs(),
            w.registry_digests(),
            w.registry.blob_upload_count(),
            w.registry.manifest_put_count(),
            w.state_dir().join("state.json").exists(),
        )
    };
    let before = snapshot(&w);
    assert!(!before.7, "test setup: no state yet");
    assert_eq!(before.4.len(), 2);

    let out = w.against_registry("bump", &["--dry-run"]).run();
    out.assert_success();
    assert_secret_absent(w.registry.password(), &out);
    let plan = &out.stdout;
    let image = w.image();
    for needle in [
        date.as_str(),
        image.as_str(),
        &format!("{DEFAULT_SUBJECT_PREFIX}{date}"),
        "nix flake update",
        "uploaded as they are compressed",
    ] {
        assert!(plan.contains(needle), "plan lacks {needle:?}\n{out}");
    }
    // The plan shows the real input change.
    assert!(
        plan.contains(short(&new_rev)),
        "plan lacks the new rev\n{out}"
    );
    assert_eq!(snapshot(&w), before, "the dry run changed something");

    let out = w.against_registry("bump", &["--dry-run", "--json"]).run();
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "dry-run", "{out}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["date"], date.as_str());
    assert!(
        report["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == date.as_str())),
        "{report:#}"
    );
    assert_eq!(
        report["commit_message"],
        format!("{DEFAULT_SUBJECT_PREFIX}{date}")
    );
    assert_eq!(snapshot(&w), before, "the --json dry run changed something");
    assert_eq!(
        w.nix_builds(),
        0,
        "a dry run built: {:?}",
        w.shims.calls("nix")
    );
    assert_eq!(
        w.skopeo_copies().len(),
        0,
        "a dry run copied: {:?}",
        w.shims.calls("skopeo")
    );
}

// ---------------------------------------------------------------------------
// 5. Resume after a failed push
// ---------------------------------------------------------------------------

#[test]
fn resume_after_a_failed_push_does_not_rebuild() {
    let mut w = World::new();
    // runnerctl uploads the blobs itself (issue 15) and tries a failed blob
    // once more: a proxy in front of the registry fails every blob write.
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.fail_blob_puts(usize::MAX);
    let head = w.repo.head();
    let remote = w.repo.remote_head();
    w.upstream_commit(4);
    let date = date_tag(w.base + 4 * DAY);

    let image = format!("docker://{}/{IMAGE_REPO}", proxy.host());
    let first = w
        .cmd(&["bump", "--image", &image, "--tls-verify", "false"])
        .env("RUNNERCTL_REGISTRY_USER", w.registry.user())
        .env("RUNNERCTL_REGISTRY_PASSWORD", w.registry.password())
        .run();
    first.assert_code(1);
    assert!(
        proxy.blob_injected() >= 2,
        "the fault did not fire\n{first}"
    );
    assert!(first.stderr.contains("injected fault"), "{first}");
    assert_eq!(w.repo.head(), head, "committed before the push succeeded");
    assert_eq!(w.repo.remote_head(), remote);
    assert_eq!(w.nix_builds(), 1);

    let second = w.bump(&["--json"]);
    second.assert_success();
    let report = second.json();
    assert_eq!(report["outcome"], "success", "{second}");
    w.assert_nothing_ran_twice();
    let out_path = json_str(&report, "/out_path");
    let digest = w.assert_registry_tags_share_one_digest(&the_four_tags(&date, out_path));
    assert_eq!(json_str(&report, "/digest"), digest);
    assert_eq!(
        w.repo.commit_count_on_remote(),
        3,
        "{:?}",
        w.repo.remote_log_subjects()
    );
    assert_eq!(
        w.repo.remote_log_subjects()[0],
        format!("{DEFAULT_SUBJECT_PREFIX}{date}")
    );
    assert_eq!(w.repo.remote_head(), w.repo.head());
}

// ---------------------------------------------------------------------------
// 6. kill -9 during the push, then resume
// ---------------------------------------------------------------------------

#[test]
fn kill_9_during_push_then_resume_without_rebuild() {
    let mut w = World::new();
    let head = w.repo.head();
    w.upstream_commit(5);
    let date = date_tag(w.base + 5 * DAY);
    // runnerctl uploads the blobs itself (issue 15): a proxy in front of
    // the registry holds its second blob upload, mid-push.
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.hold_blob_post(2);
    let path = w.shims.path_env();
    let logs = tempfile::tempdir().expect("tempdir");

    // Start runnerctl in its own process group, as Run does, but keep the
    // child so its group can be killed.
    let image = format!("docker://{}/{IMAGE_REPO}", proxy.host());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runnerctl"));
    cmd.args(["bump", "--image", &image, "--tls-verify", "false"])
        .current_dir(w.repo.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(logs.path().join("stdout")).expect("stdout file"))
        .stderr(fs::File::create(logs.path().join("stderr")).expect("stderr file"))
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUNNERCTL_") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(git_env())
        .env("RUNNERCTL_SMOKE", "never")
        .envs(w.repo.nix_env().iter().map(|(k, v)| (k, v)))
        .env("PATH", &path)
        .env("RUNNERCTL_REGISTRY_USER", w.registry.user())
        .env("RUNNERCTL_REGISTRY_PASSWORD", w.registry.password());
    let mut child = cmd.spawn().expect("start runnerctl");
    let pid = child.id();
    let _group = KillGroupOnDrop(pid);
    let output = || {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(logs.path().join("stdout")).unwrap_or_default(),
            fs::read_to_string(logs.path().join("stderr")).unwrap_or_default()
        )
    };

    let deadline = Instant::now() + TIMEOUT;
    while !proxy.held() {
        if let Some(status) = child.try_wait().expect("wait for runnerctl") {
            panic!(
                "runnerctl ended ({status}) before its push started\n{}",
                output()
            );
        }
        if Instant::now() > deadline {
            let _ = Command::new("bash")
                .args(["-c", "kill -KILL -- \"-$1\"", "kill", &pid.to_string()])
                .status();
            panic!(
                "runnerctl never started its second blob upload\n{}",
                output()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("bash")
        .args(["-c", "kill -KILL -- \"-$1\"", "kill", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 failed");
    let status = child.wait().expect("reap runnerctl");
    assert_eq!(
        status.signal(),
        Some(9),
        "runnerctl was not killed: {status}\n{}",
        output()
    );

    // What the killed run left behind: a readable state, the push unfinished,
    // nothing committed or tagged.
    let state = w.state();
    assert_eq!(state["command"], "bump", "{state:#}");
    assert!(
        state.get("outcome").is_none_or(|o| o.is_null()),
        "{state:#}"
    );
    assert_eq!(state["stages"]["build"]["status"], "done", "{state:#}");
    assert_ne!(state["stages"]["push"]["status"], "done", "{state:#}");
    assert_eq!(w.repo.head(), head);
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
    assert_eq!(w.nix_builds(), 1);

    // The same command again, straight to the registry, resumes.
    let out = w
        .against_registry("bump", &["--json"])
        .env("PATH", &path)
        .run();
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    w.assert_nothing_ran_twice();
    let out_path = json_str(&report, "/out_path");
    w.assert_registry_tags_share_one_digest(&the_four_tags(&date, out_path));
    assert_eq!(w.repo.commit_count_on_remote(), 3);
    assert_eq!(w.repo.remote_head(), w.repo.head());
    assert_eq!(
        w.subject(&w.repo.head()),
        format!("{DEFAULT_SUBJECT_PREFIX}{date}")
    );
    assert_eq!(w.state()["outcome"], "success");
}

// ---------------------------------------------------------------------------
// 7. Wrong password, then the right one
// ---------------------------------------------------------------------------

#[test]
fn wrong_password_fails_cleanly_then_rerun_succeeds() {
    let mut w = World::new();
    let head = w.repo.head();
    let remote_refs = w.remote_refs();
    w.upstream_commit(6);
    let date = date_tag(w.base + 6 * DAY);
    let wrong = "wr0ng-Pa55word-for-runnerctl";

    let out = w.against_registry_with_password("bump", &[], wrong).run();
    out.assert_code(1);
    assert!(
        out.stderr.to_lowercase().contains("credentials"),
        "stderr does not mention the credentials\n{out}"
    );
    assert_secret_absent(wrong, &out);
    assert_secret_absent(w.registry.password(), &out);
    assert_secret_absent_from_dir(wrong, &w.state_dir());
    assert_eq!(w.repo.head(), head, "committed despite the failed push");
    assert_eq!(w.remote_refs(), remote_refs, "the remote changed");
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
    for argv in w.shims.calls("skopeo") {
        assert!(
            !argv.iter().any(|a| a.contains(wrong)),
            "password in skopeo argv: {argv:?}"
        );
    }

    let out = w.bump(&["--json"]);
    out.assert_success();
    assert_secret_absent(w.registry.password(), &out);
    assert_secret_absent_from_dir(w.registry.password(), &w.state_dir());
    let report = out.json();
    let out_path = json_str(&report, "/out_path");
    w.assert_registry_tags_share_one_digest(&the_four_tags(&date, out_path));
    assert_eq!(w.repo.remote_head(), w.repo.head());
    assert_eq!(w.repo.commit_count_on_remote(), 3);
    assert_eq!(w.nix_builds(), 1);
}

// ---------------------------------------------------------------------------
// 8. The remote moved
// ---------------------------------------------------------------------------

#[test]
fn remote_moved_without_touching_the_lock_rebases_and_pushes() {
    let mut w = World::new();
    let readme_head = w.repo.push_unrelated_readme_commit();
    w.upstream_commit(7);
    let date = date_tag(w.base + 7 * DAY);

    let out = w.bump(&[]);
    out.assert_success();
    let remote = w.repo.remote_head();
    assert_ne!(remote, readme_head, "the bump was not pushed");
    assert_eq!(w.repo.head(), remote);
    let subjects = w.repo.remote_log_subjects();
    assert_eq!(
        subjects[..3],
        [
            format!("{DEFAULT_SUBJECT_PREFIX}{date}"),
            "README: mention the registry".to_string(),
            "flake.lock: init".to_string(),
        ],
        "{subjects:?}"
    );
    assert_eq!(subjects.len(), 4);
    // Not forced: the README commit is the bump's parent.
    git(
        w.repo.remote_path(),
        &["merge-base", "--is-ancestor", &readme_head, &remote],
    );
    assert_eq!(
        git(w.repo.remote_path(), &["rev-parse", &format!("{remote}^")]),
        readme_head
    );
    assert_eq!(w.files_changed(&remote), vec!["flake.lock".to_string()]);
    let readme = git(w.repo.remote_path(), &["show", "refs/heads/main:README.md"]);
    assert!(
        readme.contains("Images are pushed to the private registry."),
        "{readme}"
    );
}

/// Writes a `git` wrapper into `dir` that, the first time it is called
/// with the `commit` subcommand, first pushes the already committed `main`
/// of `other` to its origin: the remote moves while the bump runs.
fn git_moving_remote_on_commit(dir: &Path, other: &Path) {
    let real = find_on_path("git", dir).expect("git on PATH");
    let marker = dir.join("remote-moved");
    let script = format!(
        "#!/bin/sh\n\
         for a in \"$@\"; do\n\
           if [ \"$a\" = commit ] && [ ! -e '{marker}' ]; then\n\
             : >'{marker}'\n\
             env -u GIT_DIR -u GIT_WORK_TREE -u GIT_INDEX_FILE \\\n\
               '{real}' -C '{other}' push --quiet origin main >&2 || echo 'test hook: push failed' >&2\n\
           fi\n\
         done\n\
         exec '{real}' \"$@\"\n",
        marker = marker.display(),
        real = real.display(),
        other = other.display(),
    );
    write_executable(&dir.join("git"), script);
}

#[test]
fn remote_changing_the_lock_during_the_bump_stops_and_keeps_the_local_commit() {
    let mut w = World::new();
    let old_head = w.repo.head();
    // Someone else prepares a bump to generation 2 in another clone …
    w.upstream_commit(8);
    let scratch = tempfile::tempdir().expect("tempdir");
    let other = scratch.path().join("clone");
    git(
        scratch.path(),
        &[
            "clone",
            "--quiet",
            &w.repo.remote_path().display().to_string(),
            &other.display().to_string(),
        ],
    );
    run_checked(nix_cmd(&other, w.repo.nix_env()).args([
        "flake",
        "lock",
        "--update-input",
        "nixpkgs",
    ]));
    git(
        &other,
        &[
            "commit",
            "--quiet",
            "-am",
            "flake.lock: update nixpkgs (elsewhere)",
        ],
    );
    let their_head = git(&other, &["rev-parse", "HEAD"]);
    // … upstream moves on, and they push while this bump is committing.
    let our_rev = w.upstream_commit(9);
    let date = date_tag(w.base + 9 * DAY);
    let hook = tempfile::tempdir().expect("tempdir");
    git_moving_remote_on_commit(hook.path(), &other);
    let path = format!("{}:{}", hook.path().display(), w.shims.path_env());

    let out = w.against_registry("bump", &[]).env("PATH", &path).run();
    assert!(
        hook.path().join("remote-moved").exists(),
        "runnerctl never ran git commit\n{out}"
    );
    assert_eq!(
        w.repo.remote_head(),
        their_head,
        "the test hook did not push\n{out}"
    );
    out.assert_code(1);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim() == "runnerctl::git_push::lock_conflict"),
        "{out}"
    );
    // The remote is as they left it: nothing pushed, nothing forced.
    assert_eq!(w.repo.remote_head(), their_head);
    assert_eq!(w.repo.commit_count_on_remote(), 3);
    // The local bump commit is kept, on the old head, with our lock.
    let head = w.repo.head();
    assert_ne!(head, old_head, "the local commit is gone");
    assert_eq!(w.subject(&head), format!("{DEFAULT_SUBJECT_PREFIX}{date}"));
    assert_eq!(w.repo.git(&["rev-parse", "HEAD^"]), old_head);
    let lock_at_head = w.repo.git(&["show", "HEAD:flake.lock"]);
    assert!(lock_at_head.contains(&our_rev), "{lock_at_head}");
    assert_eq!(w.files_changed(&head), vec!["flake.lock".to_string()]);
    assert_eq!(w.repo.status(), "", "the working tree is left dirty");
    // No rebase or merge left half done.
    for leftover in ["rebase-merge", "rebase-apply", "MERGE_HEAD"] {
        assert!(
            !w.repo.path().join(".git").join(leftover).exists(),
            "{leftover}"
        );
    }
}

#[test]
fn remote_that_already_changed_the_lock_stops_without_pushing() {
    let mut w = World::new();
    let old_head = w.repo.head();
    // Someone else already bumped to generation 2 …
    w.upstream_commit(8);
    let their_head = w.repo.push_remote_lock_update();
    let remote_refs = w.remote_refs();
    // … and upstream moved on before this clone bumps.
    w.upstream_commit(9);
    let date = date_tag(w.base + 9 * DAY);

    let out = w.bump(&["--json"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim() == "runnerctl::git_push::lock_conflict"),
        "{out}"
    );
    assert_eq!(w.remote_refs(), remote_refs, "the remote changed");
    assert_eq!(w.repo.remote_head(), their_head);
    // runnerctl commits its bump, finds at the push that the remote changed
    // flake.lock, and stops: the local branch is the old head plus its own
    // bump commit, never reset onto, merged with or rebased over theirs.
    let head = w.repo.head();
    assert_ne!(head, old_head, "the bump commit was made and kept");
    assert_eq!(w.subject(&head), format!("{DEFAULT_SUBJECT_PREFIX}{date}"));
    assert_eq!(w.repo.git(&["rev-parse", "HEAD^"]), old_head);
    assert_eq!(w.files_changed(&head), vec!["flake.lock".to_string()]);
    let doc = out.json();
    assert_eq!(doc["outcome"], "failure", "{out}");
    assert_eq!(
        doc["error"]["message"],
        format!(
            "origin/main changed flake.lock since this bump started; the local commit {head} is kept and nothing was pushed"
        ),
        "{out}"
    );
    assert_eq!(
        doc["error"]["help"],
        "someone else updated the lock. Either drop the local commit and bump again (`git reset --hard origin/main` then `runnerctl bump`), or rebase it by hand (`git pull --rebase`, resolve flake.lock) and `git push`",
        "{out}"
    );
    for leftover in ["rebase-merge", "rebase-apply", "MERGE_HEAD"] {
        assert!(
            !w.repo.path().join(".git").join(leftover).exists(),
            "{leftover}"
        );
    }
}

// ---------------------------------------------------------------------------
// 9. release
// ---------------------------------------------------------------------------

#[test]
fn release_pushes_the_committed_lock_and_a_fresh_machine_reuses_it() {
    let mut w = World::new();
    let committed_rev = w.nixpkgs.rev();
    let date = date_tag(w.base);
    // Upstream has moved on; release must not pick that up.
    let upstream_rev = w.upstream_commit(10);
    assert_ne!(date_tag(w.base + 10 * DAY), date);
    let lock = w.repo.lock_bytes();
    let head = w.repo.head();
    let remote_refs = w.remote_refs();

    let out = w.against_registry("release", &["--json"]).run();
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    assert_eq!(report["command"], "release");
    assert_eq!(report["date"], date.as_str());
    assert_eq!(w.nix_builds(), 1);
    assert_eq!(
        w.nix_updates(),
        0,
        "release updated inputs: {:?}",
        w.shims.calls("nix")
    );
    assert_eq!(w.repo.lock_bytes(), lock);
    assert_eq!(w.repo.head(), head, "release committed");
    assert_eq!(w.remote_refs(), remote_refs, "release pushed to git");

    // The image is the committed lock's.
    let out_path = json_str(&report, "/out_path").to_string();
    assert_eq!(Path::new(&out_path), w.repo.build("nixos").as_path());
    let tags = the_four_tags(&date, &out_path);
    let digest = w.assert_registry_tags_share_one_digest(&tags);
    let input = registry_nixpkgs_input(&w.registry, "latest");
    assert!(input.contains(&format!("rev={committed_rev}")), "{input}");
    assert!(!input.contains(&upstream_rev), "{input}");

    // A fresh machine: no state, and the image not in its store.
    fs::remove_dir_all(w.state_dir()).expect("remove the state dir");
    run_checked(nix_cmd(w.repo.path(), w.repo.nix_env()).args([
        "store",
        "delete",
        out_path.as_str(),
    ]));
    assert!(
        !Path::new(&out_path).exists(),
        "{out_path} still in the store"
    );
    let uploads = w.registry.blob_upload_count();

    let out = w.against_registry("release", &["--json"]).run();
    out.assert_success();
    let report = out.json();
    assert_eq!(json_str(&report, "/out_path"), out_path);
    assert_eq!(
        w.nix_builds(),
        1,
        "the fresh machine rebuilt: {:?}",
        w.shims.calls("nix")
    );
    assert_eq!(
        w.registry.blob_upload_count(),
        uploads,
        "blobs uploaded again"
    );
    assert_eq!(w.assert_registry_tags_share_one_digest(&tags), digest);
    assert_eq!(w.repo.head(), head);
}

// ---------------------------------------------------------------------------
// 10. The date comes from the root's input, whatever its node is called
// ---------------------------------------------------------------------------

#[test]
fn date_follows_the_root_input_not_the_node_named_nixpkgs() {
    let base = common::fresh_time();
    let mut nixpkgs = StandInNixpkgs::new_at(base);
    let pinned = nixpkgs.rev();
    nixpkgs.commit(base + 20 * DAY);
    let repo = RunnerRepo::with_shadowed_nixpkgs(&nixpkgs, &pinned);
    assert_eq!(repo.nixpkgs_node(), "nixpkgs_2");
    let mut w = World::assemble(nixpkgs, repo, base);
    let new_rev = w.upstream_commit(31);
    let date = date_tag(base + 31 * DAY);
    let decoy = date_tag(base);
    assert_ne!(date, decoy);

    let out = w.bump(&["--json"]);
    out.assert_success();
    let report = out.json();
    assert_eq!(report["date"], date.as_str(), "{out}");
    let lock = w.repo.lock_json();
    assert_eq!(lock["nodes"]["nixpkgs"]["locked"]["rev"], pinned.as_str());
    assert_eq!(
        lock["nodes"]["nixpkgs_2"]["locked"]["rev"],
        new_rev.as_str()
    );
    let out_path = json_str(&report, "/out_path");
    w.assert_registry_tags_share_one_digest(&the_four_tags(&date, out_path));
    assert_eq!(w.registry.digest(IMAGE_REPO, &decoy), None);
    assert_eq!(w.subject(&w.repo.head()), subject_for(base + 31 * DAY));
    assert_eq!(w.repo.remote_head(), w.repo.head());
}

// ---------------------------------------------------------------------------
// 11. gzip archives and stream scripts to the default OCI layout
// ---------------------------------------------------------------------------

fn bump_attr_to_default_oci(attr: &str) {
    let mut w = World::new();
    w.upstream_commit(11);
    let date = date_tag(w.base + 11 * DAY);

    let out = w.cmd(&["bump", "--attr", attr, "--json"]).run();
    out.assert_success();
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    let oci = w.state_dir().join("oci");
    assert_eq!(report["image"], format!("oci:{}", oci.display()), "{out}");
    let out_path = json_str(&report, "/out_path").to_string();
    assert_eq!(Path::new(&out_path), w.repo.build(attr).as_path());

    let index = oci_index_tags(&oci);
    let names: BTreeSet<String> = index.keys().cloned().collect();
    let want: BTreeSet<String> = the_four_tags(&date, &out_path).into_iter().collect();
    assert_eq!(names, want, "tags in {}/index.json", oci.display());
    let digests: BTreeSet<&String> = index.values().collect();
    assert_eq!(digests.len(), 1, "{index:?}");
    assert_eq!(
        Some(json_str(&report, "/digest")),
        digests.first().map(|d| d.as_str())
    );

    // Each tag reads back with skopeo, with the layers of the plain image.
    let plain = DockerArchive::read(&w.repo.build("nixos"));
    for tag in &want {
        let reference = format!("oci:{}:{tag}", oci.display());
        assert_eq!(skopeo_diff_ids(&reference), plain.diff_ids(), "{reference}");
    }
    assert_eq!(w.repo.remote_head(), w.repo.head());
    assert_eq!(
        w.subject(&w.repo.head()),
        format!("{DEFAULT_SUBJECT_PREFIX}{date}")
    );
}

#[test]
fn gzip_archive_pushes_to_the_default_oci_layout() {
    bump_attr_to_default_oci("nixos-gz");
}

#[test]
fn stream_script_pushes_to_the_default_oci_layout() {
    bump_attr_to_default_oci("nixos-stream");
}

// ---------------------------------------------------------------------------
// 12. A verify failure stops before the push
// ---------------------------------------------------------------------------

#[test]
fn verify_failure_stops_before_push_and_commit() {
    let mut w = World::new();
    let head = w.repo.head();
    let remote_refs = w.remote_refs();
    w.upstream_commit(12);

    let out = w.bump(&["--attr", "nixos-nonode"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains("bin/node"),
        "stderr does not name bin/node\n{out}"
    );
    assert!(
        w.registry.tags(IMAGE_REPO).is_empty(),
        "{:?}",
        w.registry_digests()
    );
    assert_eq!(w.registry.blob_upload_count(), 0);
    assert_eq!(w.skopeo_copies().len(), 0);
    assert_eq!(w.repo.head(), head, "committed an image that failed verify");
    assert_eq!(w.remote_refs(), remote_refs);
    let state = w.state();
    assert_eq!(state["stages"]["verify"]["status"], "failed", "{state:#}");
    assert!(state["stages"]
        .get("push")
        .is_none_or(|p| p["status"] != "done"));
}

// ---------------------------------------------------------------------------
// 13. status
// ---------------------------------------------------------------------------

#[test]
fn status_json_shows_every_stage_and_its_outputs() {
    let mut w = World::new();
    let before = w.cmd(&["status", "--json"]).run();
    before.assert_success();
    assert_eq!(before.json()["exists"], false, "{before}");

    w.upstream_commit(13);
    let bump = w.bump(&["--json"]);
    bump.assert_success();
    let report = bump.json();

    let out = w.cmd(&["status", "--json"]).run();
    out.assert_success();
    let doc = out.json();
    assert_eq!(doc["exists"], true, "{out}");
    let state = &doc["state"];
    assert_eq!(state["command"], "bump", "{doc:#}");
    assert_eq!(state["outcome"], "success", "{doc:#}");
    for stage in STAGES {
        let status = state["stages"][stage]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("status has no stage {stage}: {doc:#}"));
        assert!(
            status == "done" || status == "skipped",
            "stage {stage} is {status}: {doc:#}"
        );
        assert!(state["stages"][stage]["finished_at"].is_string(), "{doc:#}");
    }
    for stage in ["update", "build", "verify", "push", "commit", "git-push"] {
        assert_eq!(state["stages"][stage]["status"], "done", "{doc:#}");
    }
    let digest = w
        .registry
        .digest(IMAGE_REPO, "latest")
        .expect("latest in the registry");
    assert_eq!(
        state["stages"]["push"]["outputs"]["digest"],
        digest.as_str()
    );
    assert_eq!(json_str(&report, "/digest"), digest);
    let head = w.repo.head();
    assert_eq!(
        state["stages"]["commit"]["outputs"]["commit"],
        head.as_str()
    );
    assert_eq!(
        state["stages"]["git-push"]["outputs"]["remote"],
        w.repo.remote_head().as_str()
    );
    let out_path = json_str(&report, "/out_path");
    assert_eq!(state["stages"]["build"]["outputs"]["out_path"], out_path);
    let lock_hash = {
        use sha2::Digest as _;
        format!("{:x}", sha2::Sha256::digest(w.repo.lock_bytes()))
    };
    assert_eq!(
        state["stages"]["update"]["outputs"]["lock_hash"],
        lock_hash.as_str()
    );

    // The human view names the same facts.
    let text = w.cmd(&["status"]).run();
    text.assert_success();
    assert!(text.stdout.contains(&digest), "{text}");
    assert!(text.stdout.contains(&head), "{text}");
}

/// runnerctl run as a user runs it: no test override of Nix's
/// `build-users-group`, so Nix uses its built-in default (Debian's nix-bin:
/// `nixbld`). Where that group does not exist (this test machine, a fresh
/// Debian root), Nix 2.8 warns on every call and Nix 2.26 refuses to build;
/// runnerctl must still bump, show one warning saying why it runs Nix with
/// an empty build-users-group, never take Nix's warnings for output, and
/// keep stdout a JSON document under `--json`. Where the group exists,
/// runnerctl must leave Nix's setting alone.
#[test]
fn bump_without_a_build_users_group_override_works_and_warns_once() {
    let mut w = World::new();
    w.upstream_commit(1);
    let config: String = w
        .repo
        .nix_env()
        .iter()
        .find(|(k, _)| k == "NIX_CONFIG")
        .map(|(_, v)| {
            v.lines()
                .filter(|l| !l.starts_with("build-users-group"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .expect("the test nix env sets NIX_CONFIG");
    // What Nix itself is configured with, and whether that group exists.
    let show = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-config",
            "--json",
        ])
        .env("NIX_CONFIG", &config)
        .envs(
            w.repo
                .nix_env()
                .iter()
                .filter(|(k, _)| k != "NIX_CONFIG")
                .map(|(k, v)| (k, v)),
        )
        .output()
        .expect("nix show-config");
    let settings: serde_json::Value = serde_json::from_slice(&show.stdout)
        .unwrap_or_else(|e| panic!("nix show-config --json stdout is not JSON ({e})"));
    let group = settings["build-users-group"]["value"]
        .as_str()
        .expect("build-users-group in show-config")
        .to_string();
    let group_exists = !group.is_empty()
        && Command::new("getent")
            .args(["group", &group])
            .stdout(Stdio::null())
            .status()
            .expect("getent")
            .success();

    let out = w.cmd(&["bump", "--json"]).env("NIX_CONFIG", &config).run();
    out.assert_success();
    let doc = out.json();
    assert_eq!(doc["outcome"], "success", "{out}");
    let warning = format!(
        "Nix is configured with build-users-group = {group}, and there is no group `{group}`"
    );
    let warnings = out.stderr.matches(&warning).count();
    // Nix's own warning never reaches the user's screen as a failure, and
    // runnerctl never parsed it as output (the bump succeeded, stdout is JSON).
    assert!(
        !out.stderr
            .contains("specified in 'build-users-group' does not exist"),
        "{out}"
    );
    let nix_calls = w.shims.calls("nix");
    // The settings query: `nix config show` from 2.20 on (2.26 warns that
    // `show-config` is deprecated), `nix show-config` on 2.8.
    let version = runnerctl::tool::nix::parse_version(&String::from_utf8_lossy(
        &Command::new("nix")
            .arg("--version")
            .output()
            .expect("nix --version")
            .stdout,
    ))
    .expect("a version from nix --version");
    let query: &[&str] = if (version.major, version.minor) >= (2, 20) {
        &["config", "show", "--json"]
    } else {
        &["show-config", "--json"]
    };
    let queries = nix_calls
        .iter()
        .filter(|argv| argv.len() >= query.len() && argv[..query.len()] == *query)
        .count();
    assert_eq!(queries, 1, "nix {version}: {nix_calls:?}");
    assert!(!out.stderr.contains("deprecated"), "{out}");
    let overridden = |argv: &Vec<String>| {
        argv.windows(2)
            .any(|p| p[0] == "--option" && p[1] == "build-users-group")
    };
    let builds: Vec<_> = nix_calls
        .iter()
        .filter(|argv| argv.first().is_some_and(|a| a == "build"))
        .collect();
    assert_eq!(builds.len(), 1, "{nix_calls:?}");
    if group.is_empty() || group_exists {
        assert_eq!(warnings, 0, "{out}");
        assert!(!nix_calls.iter().any(overridden), "{nix_calls:?}");
    } else {
        assert_eq!(warnings, 1, "one warning, once per run\n{out}");
        assert!(out.stderr.contains(&format!("warning: {warning}")), "{out}");
        // Every nix call after the configuration query runs with the
        // override; `--version` and the query itself run without.
        for argv in &nix_calls {
            let query = argv
                .first()
                .is_some_and(|a| a == "--version" || a == "show-config" || a == "config");
            assert_eq!(overridden(argv), !query, "{argv:?}");
        }
    }
}

/// `--update-input NAME`: Nix ≥ 2.19 takes input names
/// (`nix flake update NAME`); 2.8 has only `nix flake lock --update-input
/// NAME`, which 2.26 still runs but warns is a deprecated alias. runnerctl
/// picks by `nix --version`: this asserts the argv the installed version
/// must get, that no deprecation warning appears, and that the input moved.
#[test]
fn update_input_uses_the_syntax_of_the_installed_nix() {
    let mut w = World::new();
    let rev = w.upstream_commit(3);
    let version = Command::new("nix")
        .arg("--version")
        .output()
        .expect("nix --version");
    let version = runnerctl::tool::nix::parse_version(&String::from_utf8_lossy(&version.stdout))
        .expect("a version from nix --version");

    let out = w
        .against_registry("bump", &["--update-input", "nixpkgs"])
        .run();
    out.assert_success();
    assert_eq!(w.repo.locked_nixpkgs_rev(), rev, "{out}");
    let updates: Vec<Vec<String>> = w
        .shims
        .calls("nix")
        .into_iter()
        .filter(|argv| argv.first().is_some_and(|a| a == "flake"))
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    if (version.major, version.minor) >= (2, 19) {
        assert_eq!(
            updates[0][..3],
            ["flake", "update", "nixpkgs"],
            "nix {version}"
        );
        assert!(
            !updates[0].iter().any(|a| a == "--update-input"),
            "{updates:?}"
        );
    } else {
        assert_eq!(
            updates[0][..4],
            ["flake", "lock", "--update-input", "nixpkgs"],
            "nix {version}"
        );
    }
    assert!(!out.stderr.contains("deprecated"), "{out}");
}
