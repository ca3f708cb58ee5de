//! Reliability: secrets. A distinctive registry password must not show up
//! in any child's argv or environment, on stdout or stderr (human and
//! `--json`, success and failure), in the state dir, or in the repository
//! (working tree, `.git`, the remote). The temporary auth file runnerctl
//! hands to skopeo is mode 0600 while skopeo runs and is gone after the run,
//! also when the run fails.
//!
//! Issue 5, section 6. The README's "Reliability" table names this test.

mod common;
mod fault_support;

use std::fs;
use std::path::Path;

use base64::Engine as _;
use common::*;
use fault_support::*;
// The fault world (the common one with hooks), not common::World.
use fault_support::World;

const SECRET: &str = "Zx9-SECRET-pw-7781";
const SECRET_USER: &str = "ci-secret";

/// What must never appear anywhere: the password, and the auth token made
/// from it (base64 of `user:password`).
fn needles(user: &str, password: &str) -> Vec<String> {
    vec![
        SECRET.to_string(),
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
    ]
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every place the secret must be absent from, after a run.
fn assert_no_secret(w: &World, out: &RunOutput, what: &str) {
    let needles = needles(&w.user, &w.password);
    for needle in &needles {
        assert!(
            !out.stdout.contains(needle.as_str()),
            "{what}: secret on stdout\n{out}"
        );
        assert!(
            !out.stderr.contains(needle.as_str()),
            "{what}: secret on stderr\n{out}"
        );
        for tool in ["nix", "skopeo", "git"] {
            for argv in w.shims.calls(tool) {
                assert!(
                    !argv.iter().any(|a| a.contains(needle.as_str())),
                    "{what}: secret in the argv of {tool}: {argv:?}"
                );
            }
        }
        for (dir, name) in [
            (w.state_dir(), "the state dir"),
            (w.repo.path().to_path_buf(), "the working tree and .git"),
            (w.repo.remote_path().to_path_buf(), "the remote"),
        ] {
            let found = files_containing(&dir, needle.as_bytes());
            assert!(found.is_empty(), "{what}: secret in {name}: {found:?}");
        }
        for repo in [w.repo.path(), w.repo.remote_path()] {
            assert!(
                !contains(&git_objects(repo), needle),
                "{what}: secret in a git object of {}",
                repo.display()
            );
        }
    }
    assert_eq!(
        w.hooks.env_leaks(),
        "",
        "{what}: secret in a child's environment"
    );
    // The temporary auth file: private while skopeo used it, gone now.
    for (mode, path) in w.hooks.authfiles() {
        assert_eq!(mode, "600", "{what}: {} had mode {mode}", path.display());
        assert!(
            path.starts_with(w.tmp.path()),
            "{what}: auth file outside TMPDIR: {}",
            path.display()
        );
        assert!(
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("runnerctl-auth-")),
            "{what}: {}",
            path.display()
        );
        assert!(!path.exists(), "{what}: {} was not removed", path.display());
    }
    assert_eq!(
        files_named(w.tmp.path(), "runnerctl-auth-"),
        Vec::<std::path::PathBuf>::new(),
        "{what}: auth files left in TMPDIR"
    );
}

/// A pre-receive hook in the bare remote that rejects the next push.
fn reject_next_push(remote: &Path) {
    let marker = remote.join("rejected-once");
    let _ = fs::remove_file(&marker);
    let hook = remote.join("hooks/pre-receive");
    write_executable(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e '{m}' ]; then : >'{m}'; echo 'policy: rejected (injected)' >&2; exit 1; fi\nexit 0\n",
            m = marker.display()
        ),
    );
}

#[test]
fn registry_password_never_leaks_and_the_auth_file_is_private_and_removed() {
    let mut w = World::new();
    w.registry.add_user(SECRET_USER, SECRET);
    w.user = SECRET_USER.to_string();
    w.password = SECRET.to_string();
    w.hooks.probe_secret(SECRET);
    let mut day = 1;
    let mut next_upstream = |w: &mut World| {
        day += 1;
        w.world.nixpkgs.commit(w.new_time + day * DAY);
    };

    // Success, human.
    let out = w.bump(&[]);
    out.assert_success();
    w.assert_bumped();
    assert!(
        !w.hooks.authfiles().is_empty(),
        "skopeo was never given an auth file"
    );
    assert_no_secret(&w, &out, "success, human");

    // Success, --json.
    next_upstream(&mut w);
    let uses = w.hooks.authfiles().len();
    let out = w.bump(&["--json"]);
    out.assert_success();
    assert_eq!(out.json()["outcome"], "success");
    assert!(
        w.hooks.authfiles().len() > uses,
        "skopeo used the auth file"
    );
    assert_no_secret(&w, &out, "success, --json");

    // Failure: the registry refuses a wrong (but just as secret) password,
    // human and --json.
    for json in [false, true] {
        next_upstream(&mut w);
        w.password = format!("{SECRET}-wrong");
        let uses = w.hooks.authfiles().len();
        let out = if json {
            w.bump(&["--json"])
        } else {
            w.bump(&[])
        };
        // Preflight checks the login against the registry (issue 10,
        // finding 1): skopeo never runs with it.
        assert_diagnostic(&out, "runnerctl::preflight::login");
        assert_stderr_mentions(&out, &["the registry rejected the credentials"]);
        if json {
            assert_eq!(out.json()["outcome"], "failure");
        }
        assert_eq!(
            w.hooks.authfiles().len(),
            uses,
            "skopeo ran with a login preflight rejected"
        );
        assert_no_secret(&w, &out, &format!("401, json: {json}"));
        // Back to the right password: the same bump completes.
        w.password = SECRET.to_string();
        let out = w.bump(&[]);
        out.assert_success();
        assert_no_secret(&w, &out, "rerun after a 401");
    }

    // Failure after the image is pushed with the auth file: git push is
    // rejected, human and --json.
    for json in [false, true] {
        next_upstream(&mut w);
        reject_next_push(w.repo.remote_path());
        let uses = w.hooks.authfiles().len();
        let out = if json {
            w.bump(&["--json"])
        } else {
            w.bump(&[])
        };
        assert_diagnostic(&out, "runnerctl::tool::failed");
        assert_stderr_mentions(&out, &["policy: rejected (injected)"]);
        assert!(
            w.hooks.authfiles().len() > uses,
            "skopeo used the auth file"
        );
        assert_no_secret(&w, &out, &format!("git push rejected, json: {json}"));
        let out = w.bump(&[]);
        out.assert_success();
        assert_no_secret(&w, &out, "rerun after a rejected push");
    }
}

/// kill -9 gives runnerctl no chance to remove its temporary auth file, so
/// the credentials would stay in $TMPDIR. After the next run (which resumes
/// the killed one) no auth file may be left, the killed run's included.
#[test]
fn auth_file_of_a_killed_run_does_not_outlive_the_next_run() {
    let mut w = World::new();
    w.registry.add_user(SECRET_USER, SECRET);
    w.user = SECRET_USER.to_string();
    w.password = SECRET.to_string();
    w.hooks.probe_secret(SECRET);
    // Killed mid-upload (its first blob upload held at a proxy): the
    // run's auth file is there.
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.hold_blob_post(1);
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let mut run = Spawned::start(&args, w.repo.path(), &w.env());
    run.wait_until(std::time::Duration::from_secs(120), || proxy.held());
    assert_eq!(files_named(w.tmp.path(), "runnerctl-auth-").len(), 1);
    let killed = run.kill_and_wait();
    assert_eq!(killed.code, None, "{killed}");
    // The killed run had handed skopeo an auth file.
    assert!(!w.hooks.authfiles().is_empty());

    let out = w.bump(&[]);
    out.assert_success();
    let left = files_named(w.tmp.path(), "runnerctl-auth-");
    assert!(
        left.is_empty(),
        "auth files with the registry credentials left in TMPDIR: {left:?}"
    );
    assert_no_secret(&w, &out, "after a kill and a rerun");
}

/// promote and rollback log in the same way (one in-process client, no
/// skopeo, no auth file): the password appears nowhere either, on success
/// or when the registry refuses it.
#[test]
fn promote_and_rollback_never_leak_the_registry_password() {
    let mut w = World::new();
    w.registry.add_user(SECRET_USER, SECRET);
    w.user = SECRET_USER.to_string();
    w.password = SECRET.to_string();
    w.hooks.probe_secret(SECRET);
    w.world.nixpkgs.commit(w.new_time + DAY);
    let first = w.bump(&["--json"]);
    first.assert_success();
    let date = first.json()["date"].as_str().expect("date").to_string();
    w.world.nixpkgs.commit(w.new_time + 2 * DAY);
    w.bump(&["--hold"]).assert_success();

    // `COMMAND… --image … --tls-verify=false [--json]`.
    let image = w.image();
    let run = |w: &World, command: &[&str], json: bool| {
        let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
        args.extend(["--image".into(), image.clone(), "--tls-verify=false".into()]);
        if json {
            args.push("--json".into());
        }
        w.run(&args)
    };
    let promote = |w: &World, json: bool| run(w, &["promote"], json);
    let rollback = |w: &World, json: bool| run(w, &["rollback", &date, "-C", "."], json);
    for json in [false, true] {
        let out = promote(&w, json);
        out.assert_success();
        assert_no_secret(&w, &out, &format!("promote, json: {json}"));
        let out = rollback(&w, json);
        out.assert_success();
        assert_no_secret(&w, &out, &format!("rollback, json: {json}"));
    }
    assert_eq!(
        w.registry.digest(IMAGE_REPO, "latest"),
        w.registry.digest(IMAGE_REPO, &date)
    );

    // A wrong password (just as secret): refused, named, not shown.
    w.password = format!("{SECRET}-wrong");
    for json in [false, true] {
        let out = promote(&w, json);
        assert_diagnostic(&out, "runnerctl::preflight::login");
        assert_no_secret(&w, &out, &format!("promote refused, json: {json}"));
        let out = rollback(&w, json);
        assert_diagnostic(&out, "runnerctl::preflight::login");
        assert_no_secret(&w, &out, &format!("rollback refused, json: {json}"));
    }
}
