//! The smoke stage: runnerctl runs the built image as a job container in
//! podman (with the test's own storage, tests/engine_support) after verify
//! and before anything is pushed. The images are the runnable fixture
//! (tests/fixtures/runnable): the host's real bash, node, nix, git and curl,
//! working or broken in one way each.

mod common;

use runnerctl::image::smoke::DEFAULT_CHECKS;
mod engine_support;

use std::time::{Duration, Instant};

use common::*;
use engine_support::*;

const TIMEOUT: Duration = Duration::from_secs(600);

/// The common world around a runnable-fixture repo, with an empty podman
/// storage.
struct World {
    world: common::World,
    podman: Podman,
}

common::deref_to_world!(World, world);

impl World {
    fn new() -> Self {
        let nixpkgs = StandInNixpkgs::new();
        let repo = runnable_repo(&nixpkgs, None);
        let world = common::World::assemble(nixpkgs, repo, T0, Registry::new());
        let podman = Podman::new(&[world.registry.host()]);
        World { world, podman }
    }

    /// `runnerctl MODE --json --image … --tls-verify false ARGS…` in the
    /// repo, with the registry's credentials, the test's podman and
    /// `RUNNERCTL_SMOKE=auto`.
    fn runnerctl(&self, mode: &str, args: &[&str]) -> Run {
        let dest = self.image();
        let mut all = vec![mode, "--json", "--image", &dest, "--tls-verify", "false"];
        all.extend_from_slice(args);
        Run::new(all)
            .in_repo(&self.repo)
            .envs(self.podman.env())
            // runnerctl's default (common::Run sets never for other tests).
            .env("RUNNERCTL_SMOKE", "auto")
            .env("RUNNERCTL_REGISTRY_USER", self.registry.user())
            .env("RUNNERCTL_REGISTRY_PASSWORD", self.registry.password())
            .timeout(TIMEOUT)
    }

    fn release(&self, args: &[&str]) -> RunOutput {
        timed(args, || self.runnerctl("release", args).run())
    }

    /// Nothing reached the registry: no tag, no blob upload, no manifest.
    fn assert_nothing_pushed(&self) {
        assert_eq!(self.registry.tags(IMAGE_REPO), Vec::<String>::new());
        assert_eq!(
            self.registry.blob_upload_count(),
            0,
            "{}",
            self.registry.log()
        );
        assert_eq!(self.registry.manifest_put_count(), 0);
    }

    /// runnerctl's podman used the test's storage: a job container was
    /// created there and removed; no temporary image or container is left.
    fn assert_smoke_ran_and_cleaned_up(&self) {
        let events = self.podman.events();
        for event in [
            "container create runnerctl-smoke-",
            "container remove runnerctl-smoke-",
        ] {
            assert!(
                events.iter().any(|e| e.starts_with(event)),
                "no {event:?} in {events:#?}"
            );
        }
        self.assert_no_smoke_leftovers();
        assert_eq!(self.podman.containers(), Vec::<String>::new());
    }

    /// No temporary image or container of a smoke run is left.
    fn assert_no_smoke_leftovers(&self) {
        let images = self.podman.images();
        assert!(
            images.iter().all(|i| !i.contains("runnerctl-smoke")),
            "smoke images left: {images:?}"
        );
        let containers = self.podman.containers();
        assert!(
            containers.iter().all(|c| !c.starts_with("runnerctl-smoke")),
            "smoke containers left: {containers:?}"
        );
    }
}

fn timed(args: &[&str], f: impl FnOnce() -> RunOutput) -> RunOutput {
    let start = Instant::now();
    let out = f();
    eprintln!("runnerctl {args:?} took {:.1?}", start.elapsed());
    out
}

fn status(json: &serde_json::Value, name: &str) -> String {
    report_stage(json, name)["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn note(json: &serde_json::Value, name: &str) -> String {
    report_stage(json, name)["note"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn smoke_passes_on_a_working_image_and_then_the_tags_are_pushed() {
    let w = World::new();
    let out = w.release(&["--attr", "nixos", "--smoke", "always"]);
    out.assert_success();
    let json = out.json();
    assert_eq!(status(&json, "verify"), "done", "{out}");
    assert_eq!(status(&json, "smoke"), "done", "{out}");
    assert!(
        note(&json, "smoke").contains(&format!(
            "{} check(s) passed in a podman job container",
            DEFAULT_CHECKS.len()
        )),
        "{out}"
    );
    assert_eq!(status(&json, "push"), "done", "{out}");
    let tags = w.registry.tags(IMAGE_REPO);
    assert!(tags.contains(&"latest".to_string()), "{tags:?}\n{out}");
    assert!(w.registry.blob_upload_count() > 0);
    w.assert_smoke_ran_and_cleaned_up();
}

/// What a failed smoke run must leave: verify passed, smoke failed, nothing
/// pushed, no temporary image or container. Returns the diagnostic.
fn assert_smoke_failed_before_push(w: &World, out: &RunOutput) -> String {
    out.assert_code(1);
    let json = out.json();
    assert_eq!(status(&json, "verify"), "done", "{out}");
    assert_eq!(status(&json, "smoke"), "failed", "{out}");
    assert!(
        json["stages"].as_array().is_some_and(|s| s
            .iter()
            .all(|s| s["name"] != "push" || s["status"] != "done")),
        "{out}"
    );
    w.assert_nothing_pushed();
    w.assert_smoke_ran_and_cleaned_up();
    format!("{}\n{}", json["error"]["message"], out.stderr)
}

#[test]
fn an_image_whose_node_cannot_start_fails_smoke_before_any_push() {
    let w = World::new();
    let out = w.release(&["--attr", "nixos-node-lib"]);
    let diagnostic = assert_smoke_failed_before_push(&w, &out);
    // The failing check, node's exit code (127: the loader could not load
    // it) and the loader's own words from the end of its output.
    assert!(
        diagnostic.contains("smoke check `node --version` failed"),
        "{diagnostic}"
    );
    assert!(diagnostic.contains("(exit code 127)"), "{diagnostic}");
    assert!(
        diagnostic.contains("error while loading shared libraries"),
        "{diagnostic}"
    );
    assert!(diagnostic.contains("nothing was pushed"), "{diagnostic}");
}

#[test]
fn an_image_whose_nix_fails_as_root_fails_smoke_and_bump_commits_nothing() {
    let mut w = World::new();
    let head = w.repo.head();
    let remote_commits = w.repo.commit_count_on_remote();
    w.nixpkgs.commit(T0 + DAY);
    let out = timed(&["bump", "--attr", "nixos-nix-conf"], || {
        w.runnerctl("bump", &["--attr", "nixos-nix-conf"]).run()
    });
    let diagnostic = assert_smoke_failed_before_push(&w, &out);
    assert_eq!(status(&out.json(), "update"), "done", "{out}");
    assert!(
        diagnostic.contains("smoke check `nix-instantiate --eval --expr '1 + 1'` failed"),
        "{diagnostic}"
    );
    assert!(diagnostic.contains("(exit code 1)"), "{diagnostic}");
    assert!(diagnostic.contains("bogus"), "{diagnostic}");
    // No commit, here or on the remote.
    assert_eq!(w.repo.head(), head);
    assert_eq!(w.repo.commit_count_on_remote(), remote_commits);
    assert_eq!(w.repo.remote_head(), head);
}

#[test]
fn extra_checks_run_after_the_defaults_or_instead_of_them() {
    let w = World::new();
    // From the environment, one per line; the defaults are replaced.
    let out = timed(&["RUNNERCTL_SMOKE_CMDS"], || {
        w.runnerctl("release", &["--attr", "nixos-node-lib"])
            .env("RUNNERCTL_SMOKE_NO_DEFAULTS", "true")
            .env(
                "RUNNERCTL_SMOKE_CMDS",
                "test -s /etc/nixpkgs-input\necho checked >&2; exit 3",
            )
            .run()
    });
    let diagnostic = assert_smoke_failed_before_push(&w, &out);
    // node --version, a default, did not run: the extra check failed.
    assert!(
        diagnostic.contains("smoke check `echo checked >&2; exit 3` failed"),
        "{diagnostic}"
    );
    assert!(diagnostic.contains("(exit code 3)"), "{diagnostic}");
    assert!(diagnostic.contains("checked"), "{diagnostic}");

    // On the flag, with the defaults: all of them pass on the good image.
    let out = w.release(&[
        "--attr",
        "nixos",
        "--smoke-cmd",
        "test \"$(cat /etc/nixpkgs-input)\" != dirty",
        "--smoke-cmd",
        "command -v bash",
    ]);
    out.assert_success();
    assert!(
        note(&out.json(), "smoke")
            .contains(&format!("{} check(s) passed", DEFAULT_CHECKS.len() + 2)),
        "{out}"
    );
    w.assert_no_smoke_leftovers();
}

#[test]
fn smoke_never_skips_the_stage_and_runs_no_engine() {
    let w = World::new();
    let out = w.release(&["--attr", "nixos-node-lib", "--smoke", "never"]);
    out.assert_success();
    let json = out.json();
    assert_eq!(status(&json, "smoke"), "skipped", "{out}");
    assert!(note(&json, "smoke").contains("--smoke never"), "{out}");
    assert!(w.registry.tags(IMAGE_REPO).contains(&"latest".to_string()));
    // podman never loaded anything.
    assert_eq!(w.podman.images(), Vec::<String>::new());
}

#[test]
fn without_an_engine_on_path_auto_skips_with_a_note_and_always_fails() {
    let w = World::new();
    let bin = path_without_engines();
    let path = bin.path().display().to_string();

    let out = timed(&["--smoke", "always", "(no engine)"], || {
        w.runnerctl("release", &["--attr", "nixos", "--smoke", "always"])
            .env("PATH", &path)
            .run()
    });
    out.assert_code(1);
    let json = out.json();
    // Found out in preflight, before anything is built.
    assert_eq!(status(&json, "preflight"), "failed", "{out}");
    assert_eq!(json["out_path"], serde_json::Value::Null, "{out}");
    assert!(
        out.stderr
            .contains("--smoke always, but neither podman nor docker is on PATH"),
        "{out}"
    );
    assert!(out.stderr.contains("install podman"), "{out}");
    w.assert_nothing_pushed();

    auto_skips_and_pushes(&w, &path, "no container engine (podman or docker) on PATH");
    assert_eq!(w.podman.images(), Vec::<String>::new());
}

/// `release --smoke auto` with PATH `path`: smoke is skipped with a note
/// that says `why`, and the image is pushed.
fn auto_skips_and_pushes(w: &World, path: &str, why: &str) {
    let out = timed(&["--smoke", "auto", path], || {
        w.runnerctl("release", &["--attr", "nixos", "--smoke", "auto"])
            .env("PATH", path)
            .run()
    });
    out.assert_success();
    let json = out.json();
    assert_eq!(status(&json, "smoke"), "skipped", "{out}");
    assert!(note(&json, "smoke").contains(why), "{out}");
    assert!(w.registry.tags(IMAGE_REPO).contains(&"latest".to_string()));
}

#[test]
fn a_dry_run_names_the_engine_and_every_check_and_runs_none() {
    let w = World::new();
    let out = timed(&["--dry-run"], || {
        Run::new([
            "release",
            "--dry-run",
            "--attr",
            "nixos-node-lib",
            "--smoke",
            "always",
            "--smoke-cmd",
            "jq --version",
            "--image",
            &w.image(),
            "--tls-verify",
            "false",
        ])
        .in_repo(&w.repo)
        .envs(w.podman.env())
        .env("RUNNERCTL_REGISTRY_USER", w.registry.user())
        .env("RUNNERCTL_REGISTRY_PASSWORD", w.registry.password())
        .timeout(TIMEOUT)
        .run()
    });
    out.assert_success();
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!(
            "would run {} check(s) in podman: node --version; nix --version",
            DEFAULT_CHECKS.len() + 1
        )),
        "{out}"
    );
    assert!(text.contains("jq --version"), "{out}");
    assert!(text.contains("podman load"), "{out}");
    assert!(
        text.contains("podman exec runnerctl-smoke-ID bash -c 'node --version'"),
        "{out}"
    );
    // Nothing ran: no image in podman, nothing in the registry.
    assert_eq!(w.podman.images(), Vec::<String>::new());
    w.assert_nothing_pushed();
}

#[test]
fn smoke_leaves_the_names_in_the_engine_as_they_were() {
    let w = World::new();
    // An image of someone else's under the name the archive carries
    // (RepoTags `nixos-runnable:latest`): it keeps that name.
    let out = w.repo.build("nixos-no-node");
    w.podman
        .run(&["load", "--quiet", "--input", &out.display().to_string()]);
    let id = |name: &str| {
        w.podman
            .run(&["image", "inspect", "--format", "{{.Id}}", name])
            .trim()
            .to_string()
    };
    let their_id = id("localhost/nixos-runnable:latest");

    let run = w.release(&["--attr", "nixos", "--smoke", "always"]);
    run.assert_success();
    assert_eq!(id("localhost/nixos-runnable:latest"), their_id, "{run}");
    assert_eq!(
        w.podman.images(),
        vec!["localhost/nixos-runnable:latest".to_string()]
    );

    // With no such image before, the name is gone again afterwards.
    w.podman.run(&["rmi", "localhost/nixos-runnable:latest"]);
    let run = w.release(&["--attr", "nixos-nix-conf"]);
    run.assert_code(1);
    assert_eq!(w.podman.images(), Vec::<String>::new(), "{run}");
}

#[test]
fn an_engine_that_does_not_work_is_skipped_under_auto_and_an_error_under_always() {
    let w = World::new();
    // A docker CLI without a daemon: its `info` fails as docker's does.
    let bin = path_without_engines();
    let docker = bin.path().join("docker");
    write_executable(
        &docker,
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n",
    );
    let path = bin.path().display().to_string();

    let out = timed(&["--smoke", "always", "(docker without a daemon)"], || {
        w.runnerctl("release", &["--attr", "nixos", "--smoke", "always"])
            .env("PATH", &path)
            .run()
    });
    out.assert_code(1);
    assert_eq!(status(&out.json(), "smoke"), "failed", "{out}");
    assert!(
        out.stderr.contains("no container engine works here")
            && out
                .stderr
                .contains("`docker info` failed (Cannot connect to the Docker daemon"),
        "{out}"
    );
    w.assert_nothing_pushed();

    auto_skips_and_pushes(
        &w,
        &path,
        "`docker info` failed (Cannot connect to the Docker daemon",
    );
}

/// Processes whose command line is exactly `words`.
fn processes_running(words: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            args.len() == words.len() && args.iter().zip(words).all(|(a, w)| *a == w.as_bytes())
        })
        .count()
}

#[test]
fn sigterm_during_a_check_removes_the_job_container_and_the_image() {
    let w = World::new();
    // A check that takes long; the marker makes its process findable.
    let marker = format!("{}", 600 + std::process::id() % 300);
    let check = format!("sleep {marker}");
    let mut cmd = w
        .runnerctl(
            "release",
            &[
                "--attr",
                "nixos",
                "--smoke-no-defaults",
                "--smoke-cmd",
                &check,
            ],
        )
        .command();
    let mut child = cmd.spawn().expect("start runnerctl");
    let started = Instant::now();
    while processes_running(&["sleep", &marker]) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the check never started"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "runnerctl ended early"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(w
        .podman
        .containers()
        .iter()
        .any(|c| c.starts_with("runnerctl-smoke-")));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(360),
            "runnerctl did not end after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(143),
        "exit status after SIGTERM: {status:?}"
    );
    assert_eq!(
        w.podman
            .containers()
            .into_iter()
            .filter(|c| c.starts_with("runnerctl-smoke-"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    assert!(
        !w.podman
            .images()
            .iter()
            .any(|i| i.contains("runnerctl-smoke")),
        "{:?}",
        w.podman.images()
    );
    assert_eq!(
        processes_running(&["sleep", &marker]),
        0,
        "the check's process is gone"
    );
    w.assert_nothing_pushed();
}
