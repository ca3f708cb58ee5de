//! The workflow-level test: nektos/act runs examples/nixos-job/job.yml, the
//! job users put in their repositories, in the candidate image that
//! `runnerctl release --hold` pushed to the test registry, pulled by podman
//! through its Docker-compatible API. The job's TLS step reaches an HTTPS
//! server (`--github-instance`, so `$GITHUB_SERVER_URL`) whose throw-away CA
//! the image's bundle carries.
//!
//! The job is used as it is: act does not fetch `actions/checkout` for the
//! repository under test, it copies the working directory into the
//! container instead (what `--no-skip-checkout` would turn off).

mod common;
mod engine_support;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use engine_support::*;

const TIMEOUT: Duration = Duration::from_secs(600);
/// A file of examples/nixos-job, read when the test runs (the crate source
/// that nix/source.nix selects holds no examples/, and must still compile).
fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/nixos-job")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A registry, an HTTPS server, a podman storage with its API service, and a
/// user repository holding the example job and flake.
struct World {
    registry: Registry,
    tls: TlsServer,
    podman: Podman,
    service: Option<PodmanService>,
    user_repo: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        require("act");
        let registry = Registry::new();
        let tls = TlsServer::new();
        let podman = Podman::new(&[registry.host()]);
        let service = Some(podman.service());

        let user_repo = tempfile::Builder::new()
            .prefix("runnerctl-job-")
            .tempdir()
            .expect("a temp dir for the job's repository");
        let r = user_repo.path();
        fs::create_dir_all(r.join(".forgejo/workflows")).expect("mkdir .forgejo/workflows");
        fs::write(r.join(".forgejo/workflows/nix.yml"), example("job.yml")).expect("write the job");
        fs::write(r.join("flake.nix"), example("flake.nix")).expect("write the job's flake");
        git(r, &["init", "--quiet", "--initial-branch=main"]);
        git(r, &["add", "--all"]);
        git(
            r,
            &["commit", "--quiet", "-m", "a repository with a nixos job"],
        );
        World {
            registry,
            tls,
            podman,
            service,
            user_repo,
        }
    }

    fn candidate(&self) -> String {
        self.registry.image_ref(IMAGE_REPO, "candidate")
    }

    /// `runnerctl release --hold --attr ATTR ARGS…` from a runnable-fixture
    /// repo whose images trust the test CA (when `trust_ca`): pushes
    /// `nix-<hash>` and `candidate`, nothing else. Returns the --json
    /// document.
    fn push_candidate(&self, attr: &str, args: &[&str], trust_ca: bool) -> serde_json::Value {
        let nixpkgs = StandInNixpkgs::new();
        let ca = self.tls.ca_pem();
        let repo = runnable_repo(&nixpkgs, trust_ca.then_some(ca.as_str()));
        let dest = format!("docker://{}/{IMAGE_REPO}", self.registry.host());
        let start = Instant::now();
        let mut argv = vec![
            "release",
            "--json",
            "--hold",
            "--attr",
            attr,
            "--image",
            &dest,
            "--tls-verify",
            "false",
        ];
        argv.extend_from_slice(args);
        let out = Run::new(argv)
            .in_repo(&repo)
            .envs(self.podman.env())
            .env("RUNNERCTL_REGISTRY_USER", self.registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", self.registry.password())
            .timeout(TIMEOUT)
            .run();
        eprintln!(
            "runnerctl release --hold --attr {attr} took {:.1?}",
            start.elapsed()
        );
        out.assert_success();
        let tags = self.registry.tags(IMAGE_REPO);
        assert!(tags.contains(&"candidate".to_string()), "{tags:?}\n{out}");
        assert!(
            tags.iter()
                .all(|t| t == "candidate" || t.starts_with("nix-")),
            "--hold pushed more than nix-<hash> and candidate: {tags:?}\n{out}"
        );
        let json = out.json();
        assert_eq!(
            self.registry.digest(IMAGE_REPO, "candidate").as_deref(),
            json["digest"].as_str(),
            "{out}"
        );
        json
    }

    /// `act push` of the job in the candidate image; returns act's output.
    fn act(&self) -> RunOutput {
        let service = self.service.as_ref().expect("the podman service");
        let home = self.podman.dir().join("act-home");
        fs::create_dir_all(&home).expect("mkdir act-home");
        let platform = format!("nixos={}", self.candidate());
        // act sends the registry's credentials with its pull (the
        // X-Registry-Auth header) from the Docker CLI's config.json.
        let docker_config = home.join("docker");
        fs::create_dir_all(&docker_config).expect("mkdir docker config");
        self.registry
            .write_authfile(&docker_config.join("config.json"));
        let home_str = home.display().to_string();
        let cache = home.join("actions").display().to_string();
        let start = Instant::now();
        let out = Run::program(
            "act",
            [
                "push",
                "-W",
                ".forgejo/workflows/nix.yml",
                "-P",
                &platform,
                "--pull=true",
                "--rm",
                "--github-instance",
                &self.tls.host(),
                "--no-cache-server",
                // The job needs no engine socket inside its container.
                "--container-daemon-socket",
                "-",
                "--action-cache-path",
                &cache,
            ],
        )
        .cwd(self.user_repo.path())
        .env("DOCKER_HOST", service.docker_host())
        .env("HOME", &home_str)
        .env("DOCKER_CONFIG", docker_config.display().to_string())
        .env("XDG_CONFIG_HOME", format!("{home_str}/.config"))
        .env("XDG_CACHE_HOME", format!("{home_str}/.cache"))
        .timeout(TIMEOUT)
        .run();
        eprintln!("act took {:.1?}", start.elapsed());
        out
    }

    fn assert_no_job_container_left(&self) {
        assert_eq!(self.podman.containers(), Vec::<String>::new());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The service goes before the storage it serves.
        self.service.take();
    }
}

/// act reported step `step` (its `run:` text) as passed:
/// `[nix/build]   ✅  Success - Main STEP [1.2s]`.
fn step_succeeded(out: &RunOutput, step: &str) -> bool {
    out.stdout
        .lines()
        .any(|l| l.contains(&format!("Success - Main {step} [")))
}

/// `[nix/build]   ❌  Failure - Main STEP [1.2s]`.
fn step_failed(out: &RunOutput, step: &str) -> bool {
    out.stdout
        .lines()
        .any(|l| l.contains(&format!("Failure - Main {step} [")))
}

fn host_node_version() -> String {
    let out = run_checked(std::process::Command::new("node").arg("--version"));
    out.trim().to_string()
}

#[test]
fn the_example_job_passes_in_a_working_candidate_image() {
    let w = World::new();
    let json = w.push_candidate("nixos", &["--smoke", "auto"], true);
    let smoke = report_stage(&json, "smoke");
    assert_eq!(smoke["status"], "done", "{json:#}");
    let out = w.act();
    out.assert_success();
    // The image came from the registry, by its candidate tag.
    assert!(
        w.registry
            .log()
            .contains(&format!("\"GET /v2/{IMAGE_REPO}/manifests/candidate")),
        "{}",
        w.registry.log()
    );
    for step in [
        "nix flake check",
        "nix build .#default --print-build-logs && cat result",
        "node --version",
        "curl -sS -o /dev/null \"$GITHUB_SERVER_URL\"",
    ] {
        assert!(
            step_succeeded(&out, step),
            "step {step:?} did not pass:\n{out}"
        );
    }
    // What the steps printed: the built file's text and node's version.
    assert!(
        out.stdout.contains("| built in the nixos runner image"),
        "{out}"
    );
    assert!(
        out.stdout.contains(&format!("| {}", host_node_version())),
        "{out}"
    );
    assert!(out.stdout.contains("Job succeeded"), "{out}");
    w.assert_no_job_container_left();
}

#[test]
fn the_tls_step_fails_in_an_image_that_does_not_trust_the_server() {
    let w = World::new();
    w.push_candidate("nixos", &["--smoke", "never"], false);
    let out = w.act();
    out.assert_code(1);
    assert!(step_succeeded(&out, "node --version"), "{out}");
    assert!(
        step_failed(&out, "curl -sS -o /dev/null \"$GITHUB_SERVER_URL\""),
        "{out}"
    );
    // curl reached the server (so $GITHUB_SERVER_URL is it) and refused
    // its certificate.
    assert!(
        out.stdout
            .contains("curl: (60) SSL certificate problem: unable to get local issuer certificate"),
        "{out}"
    );
    w.assert_no_job_container_left();
}

#[test]
fn the_example_job_fails_in_an_image_without_bash() {
    let w = World::new();
    // Past runnerctl's own checks, which would catch it: what the job does
    // with it is the point here.
    w.push_candidate("nixos-no-bash", &["--smoke", "never", "--no-verify"], true);
    let out = w.act();
    out.assert_code(1);
    assert!(step_failed(&out, "nix flake check"), "{out}");
    assert!(
        out.stdout.contains("\"bash\": executable file not found"),
        "{out}"
    );
    assert!(!out.stdout.contains("Job succeeded"), "{out}");
    w.assert_no_job_container_left();
}

#[test]
fn the_example_job_fails_in_an_image_whose_node_cannot_run_or_is_absent() {
    let w = World::new();
    for (attr, why) in [
        (
            "nixos-node-lib",
            "node: error while loading shared libraries: ",
        ),
        ("nixos-no-node", "node: command not found"),
    ] {
        w.push_candidate(attr, &["--smoke", "never", "--no-verify"], true);
        let out = w.act();
        out.assert_code(1);
        assert!(
            step_succeeded(&out, "nix build .#default --print-build-logs && cat result"),
            "{attr}: {out}"
        );
        assert!(step_failed(&out, "node --version"), "{attr}: {out}");
        assert!(out.stdout.contains(why), "{attr}: {out}");
        w.assert_no_job_container_left();
    }
}
