//! Reliability, round two (issue 10): standard logins, panics, signals,
//! silent data loss, late checks. Everything runs against real Nix,
//! skopeo, docker-registry and git; PATH shims only hold or log calls.
//! The README's "Reliability" table names these tests.

mod common;
mod fault_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use fault_support::*;
// The fault world (the common one with hooks), not common::World.
use fault_support::World;

/// The world's environment without RUNNERCTL_REGISTRY_USER/PASSWORD, with
/// HOME and XDG_RUNTIME_DIR in the test's temp dir (so only the logins the
/// test writes exist).
fn env_without_runnerctl_credentials(w: &World) -> (Vec<(String, String)>, PathBuf, PathBuf) {
    let home = w.tmp.path().join("home");
    let run = w.tmp.path().join("run");
    fs::create_dir_all(&home).expect("home");
    fs::create_dir_all(&run).expect("run dir");
    let mut env: Vec<(String, String)> = w
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("RUNNERCTL_REGISTRY_"))
        .collect();
    env.push(("HOME".into(), home.display().to_string()));
    env.push(("XDG_RUNTIME_DIR".into(), run.display().to_string()));
    (env, home, run)
}

/// `skopeo login` as a user would run it (it writes
/// `$XDG_RUNTIME_DIR/containers/auth.json`).
fn skopeo_login(w: &World, env: &[(String, String)], password: &str) {
    let out = output_with_input(
        Command::new("skopeo")
            .args([
                "login",
                "--tls-verify=false",
                "--username",
                &w.user,
                "--password-stdin",
                &w.registry.host(),
            ])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
        password.as_bytes(),
    );
    // A wrong password: skopeo login refuses it, so write the file as a
    // stale login would have left it.
    if !out.status.success() {
        let path = env
            .iter()
            .find(|(k, _)| k == "XDG_RUNTIME_DIR")
            .map(|(_, v)| Path::new(v).join("containers/auth.json"))
            .expect("XDG_RUNTIME_DIR");
        let auth = base64_encode(&format!("{}:{password}", w.user));
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        fs::write(
            &path,
            serde_json::json!({"auths": {w.registry.host(): {"auth": auth}}}).to_string(),
        )
        .expect("write auth.json");
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

// ---------------------------------------------------------------------------
// Finding 1: standard logins
// ---------------------------------------------------------------------------

#[test]
fn standard_login_in_xdg_runtime_dir_publishes_every_tag() {
    let w = World::new();
    let (env, _home, run) = env_without_runnerctl_credentials(&w);
    skopeo_login(&w, &env, &w.password);
    assert!(
        run.join("containers/auth.json").is_file(),
        "skopeo login wrote its file"
    );
    let out = Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
    out.assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

#[test]
fn docker_config_login_publishes_every_tag() {
    let w = World::new();
    let (env, home, _run) = env_without_runnerctl_credentials(&w);
    let config = home.join(".docker/config.json");
    w.registry.write_authfile(&config);
    // Readable by others: a warning (finding 7).
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
    out.assert_success();
    assert_stderr_mentions(&out, &["readable by group or others", "chmod 600"]);
    w.assert_bumped();
}

#[test]
fn rejected_standard_login_stops_in_preflight_before_the_lock_changes() {
    let w = World::new();
    let (env, _home, _run) = env_without_runnerctl_credentials(&w);
    skopeo_login(&w, &env, "not-the-password");
    let lock = w.repo.lock_bytes();
    let out = Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
    assert_diagnostic(&out, "runnerctl::preflight::login");
    assert_stderr_mentions(
        &out,
        &[
            "rejected the credentials",
            "containers/auth.json",
            "skopeo login",
        ],
    );
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
    assert!(w.changing_calls().is_empty(), "{:?}", w.changing_calls());
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
}

#[test]
fn no_login_at_all_for_a_registry_that_needs_one_stops_in_preflight() {
    let w = World::new();
    let (env, _home, _run) = env_without_runnerctl_credentials(&w);
    let lock = w.repo.lock_bytes();
    let out = Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
    assert_diagnostic(&out, "runnerctl::preflight::no_login");
    assert_stderr_mentions(&out, &["requires a login", "skopeo login"]);
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
    assert!(w.changing_calls().is_empty(), "{:?}", w.changing_calls());
}

#[test]
fn credential_helpers_are_refused_with_what_to_do_instead() {
    let w = World::new();
    let (env, home, _run) = env_without_runnerctl_credentials(&w);
    let config = home.join(".docker/config.json");
    fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    fs::write(
        &config,
        serde_json::json!({"auths": {w.registry.host(): {}}, "credsStore": "pass"}).to_string(),
    )
    .expect("write");
    let lock = w.repo.lock_bytes();
    let out = Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
    assert_diagnostic(&out, "runnerctl::auth::helper");
    assert_stderr_mentions(
        &out,
        &["docker-credential-pass", "does not support", "skopeo login"],
    );
    assert_eq!(w.repo.lock_bytes(), lock);
    assert!(w.changing_calls().is_empty(), "{:?}", w.changing_calls());
}

// ---------------------------------------------------------------------------
// Finding 3: no panics; bounded diagnostics; EPIPE on stdout
// ---------------------------------------------------------------------------

/// Exit 0 or 1 (never a panic's 101), and at most `max` bytes on stderr.
fn assert_clean_exit(out: &RunOutput, max: usize) {
    assert!(
        matches!(out.code, Some(0) | Some(1)),
        "exit {:?}\n{}",
        out.code,
        squash(&out.stderr.chars().take(4000).collect::<String>())
    );
    assert!(
        !out.stderr.contains("panicked"),
        "panicked: {}",
        out.stderr.chars().take(4000).collect::<String>()
    );
    assert!(
        out.stderr.len() <= max,
        "{} bytes on stderr (at most {max}): {}",
        out.stderr.len(),
        out.stderr.chars().take(4000).collect::<String>()
    );
}

/// The repository's flake.lock on one line, `version` 99, with a string of
/// `pad` bytes in the root node.
fn one_line_lock(repo: &RunnerRepo, pad: usize) -> String {
    let mut lock = repo.lock_json();
    lock["version"] = serde_json::json!(99);
    lock["nodes"]["root"]["padding"] = serde_json::json!("x".repeat(pad));
    let mut text = serde_json::to_string(&lock).expect("json");
    // The bad version at the far end of the line.
    text = text.replacen("\"version\":99", "\"version\":99 ", 1);
    text
}

#[test]
fn long_one_line_inputs_give_bounded_diagnostics_not_panics() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    // A 70 KB and a 50 MB one-line flake.lock with a bad version.
    for pad in [70_000, 50_000_000] {
        fs::write(repo.path().join("flake.lock"), one_line_lock(&repo, pad)).expect("lock");
        for json in [false, true] {
            let mut run = Run::new(["bump", "--no-git-push"]).in_repo(&repo);
            if json {
                run = run.arg("--json");
            }
            let out = run.run();
            assert_clean_exit(&out, 16 * 1024);
            out.assert_code(1);
            assert!(
                out.stderr.contains("runnerctl::flake_lock::"),
                "{}",
                out.stderr
            );
        }
    }
    repo.git(&["checkout", "--", "flake.lock"]);

    // A corrupt state.json with a long line, in `status` and `status --json`.
    let state_dir = repo.path().join(".runnerctl");
    fs::create_dir_all(&state_dir).expect("state dir");
    let state = format!(
        "{{\"version\": 1, \"command\": \"bump\", \"note\": \"{}\", \"stages\": {{\"x\": [",
        "y".repeat(200_000)
    );
    fs::write(state_dir.join("state.json"), state).expect("state");
    for args in [vec!["status"], vec!["status", "--json"]] {
        let out = Run::new(args).in_repo(&repo).run();
        assert_clean_exit(&out, 16 * 1024);
        out.assert_code(1);
        assert!(
            out.stderr.contains("runnerctl::state::corrupt"),
            "{}",
            out.stderr
        );
    }
}

/// Runs runnerctl with its stdout a pipe whose reader is gone (`| true`).
fn run_into_closed_pipe(run: Run) -> RunOutput {
    let mut cmd = run.command();
    let mut child = cmd.spawn().expect("spawn runnerctl");
    drop(child.stdout.take());
    let stderr = child.stderr.take().map(drain);
    let status = child.wait().expect("wait");
    RunOutput {
        code: status.code(),
        stdout: String::new(),
        stderr: stderr
            .and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        timed_out: false,
        argv: Vec::new(),
    }
}

#[test]
fn a_closed_stdout_is_not_a_panic_the_exit_code_is_the_work() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    // Nothing new upstream: the bump is a no-op (exit 0), its report goes
    // nowhere.
    let out = run_into_closed_pipe(Run::new(["bump", "--no-git-push"]).in_repo(&repo));
    assert_clean_exit(&out, 64 * 1024);
    out.assert_code(0);
    assert_eq!(
        fs::read_to_string(repo.path().join(".runnerctl/state.json"))
            .map(|t| t.contains("\"up-to-date\""))
            .ok(),
        Some(true),
        "the bump did its work"
    );
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["completions", "bash"],
        vec!["bump", "--no-git-push", "--json"],
    ] {
        let out = run_into_closed_pipe(Run::new(args.clone()).in_repo(&repo));
        assert_clean_exit(&out, 64 * 1024);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------
// Finding 4: signals
// ---------------------------------------------------------------------------

/// (pid, ppid, state) of every process.
fn proc_table() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

/// Every process below `pid`.
fn descendants_of(pid: u32) -> Vec<u32> {
    let table = proc_table();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, ppid, _) in &table {
            if *ppid == p && !out.contains(child) {
                out.push(*child);
                todo.push(*child);
            }
        }
    }
    out
}

/// Which of `pids` still run (zombies do not).
fn alive(pids: &[u32]) -> Vec<u32> {
    let table = proc_table();
    pids.iter()
        .copied()
        .filter(|p| {
            table
                .iter()
                .any(|(pid, _, state)| pid == p && *state != 'Z')
        })
        .collect()
}

fn send_signal(pid: u32, signal: &str) {
    // No `kill` program: a minimal Debian root has none (procps).
    let number = match signal {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        other => panic!("no such signal in these tests: {other}"),
    };
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let status = unsafe { libc::kill(pid, number) };
    assert_eq!(status, 0, "kill -{signal} {pid}");
}

/// runnerctl exited 128 + the signal without a panic, forwarded the signal
/// itself to the held child (not only a SIGKILL after its grace period), and
/// left none of the children it had when the signal came.
fn assert_stopped_by(
    out: &RunOutput,
    signal: &str,
    code: i32,
    hold: &HookHandle,
    children: &[u32],
) {
    assert_eq!(out.code, Some(code), "SIG{signal}\n{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(
        hold.signals(),
        [signal],
        "runnerctl forwarded SIG{signal} to the held child"
    );
    assert_eq!(
        alive(children),
        Vec::<u32>::new(),
        "children outlived runnerctl"
    );
}

/// A signal while `nix flake update` runs (held by a PATH shim before the
/// real nix): runnerctl forwards it, waits, exits 128 + the signal, records
/// the update as interrupted, and leaves no process that could rewrite
/// flake.lock later.
#[test]
fn a_signal_during_the_update_stops_every_child_and_the_lock_stays() {
    for (signal, code) in [("TERM", 143), ("INT", 130), ("HUP", 129)] {
        let mut w = World::new();
        // Before it holds, the shim leaves an orphan (its parent, a
        // subshell, exits at once): runnerctl must find it as their
        // subreaper, not leave it to init.
        let orphan_pid = w.tmp.path().join("orphan.pid");
        let hold = w.hooks.hold_after_running(
            "nix",
            &["flake", "update"],
            1,
            When::Before,
            &format!(
                "(sleep 600 </dev/null >/dev/null 2>&1 & echo $! >'{}')",
                orphan_pid.display()
            ),
        );
        let lock = w.repo.lock_bytes();
        let mut run = w.spawn_bump(&[]);
        run.wait_hook(&hold, Duration::from_secs(120));
        let orphan: u32 = fs::read_to_string(&orphan_pid)
            .expect("the orphan's pid")
            .trim()
            .parse()
            .expect("a pid");
        let orphan_parent = proc_table()
            .into_iter()
            .find(|(pid, _, _)| *pid == orphan)
            .map(|(_, ppid, _)| ppid);
        if orphan_parent != Some(run.pid()) {
            send_signal(orphan, "KILL");
        }
        assert_eq!(
            orphan_parent,
            Some(run.pid()),
            "the orphan was not reparented to runnerctl (its subreaper)"
        );
        let children = descendants_of(run.pid());
        assert!(!children.is_empty(), "the held nix runs below runnerctl");
        send_signal(run.pid(), signal);
        let out = run.wait(Duration::from_secs(60));
        let orphan_left = alive(&[orphan]);
        if !orphan_left.is_empty() {
            send_signal(orphan, "KILL");
        }
        assert_eq!(
            orphan_left,
            Vec::<u32>::new(),
            "an orphaned grandchild outlived runnerctl (SIG{signal})"
        );
        assert_stopped_by(&out, signal, code, &hold, &children);
        assert_stderr_mentions(&out, &[&format!("interrupted by SIG{signal}")]);
        // Were the held shim alive, it would now run the real update.
        hold.release();
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            w.repo.lock_bytes(),
            lock,
            "flake.lock rewritten after the run"
        );
        assert_eq!(w.shims.count("nix", &["flake", "update"]), 0);
        let state = w.state();
        assert_eq!(state["stages"]["update"]["status"], "failed", "{state:#}");
        assert!(
            state["stages"]["update"]["note"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("interrupted by SIG{signal}"))),
            "{state:#}"
        );
        assert!(files_named(w.tmp.path(), "runnerctl-auth-").is_empty());
    }
}

/// SIGTERM while runnerctl uploads (its own upload, held at a proxy in
/// front of the registry): the auth file is removed, no child outlives it,
/// the push is recorded as interrupted; the rerun completes.
#[test]
fn sigterm_during_the_upload_removes_the_auth_file_and_stops_the_push() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.hold_blob_post(1);
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let mut run = Spawned::start(&args, w.repo.path(), &w.env());
    run.wait_until(Duration::from_secs(240), || proxy.held());
    assert_eq!(
        files_named(w.tmp.path(), "runnerctl-auth-").len(),
        1,
        "the run holds the auth file"
    );
    let children = descendants_of(run.pid());
    send_signal(run.pid(), "TERM");
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(143), "SIGTERM\n{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(
        alive(&children),
        Vec::<u32>::new(),
        "children outlived runnerctl"
    );
    proxy.release();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        files_named(w.tmp.path(), "runnerctl-auth-"),
        Vec::<PathBuf>::new(),
        "auth file left behind"
    );
    assert!(w.registry.tags(IMAGE_REPO).is_empty(), "nothing tagged");
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));
    assert_eq!(w.state()["outcome"], "interrupted");
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");

    w.bump(&[]).assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

// ---------------------------------------------------------------------------
// Finding 5 (the pending bump) and 8 (the run lock)
// ---------------------------------------------------------------------------

/// A failed `nix flake update` leaves no hash-less pending bump: the next
/// bump refuses a hand-edited flake.lock instead of taking it for its own.
#[test]
fn a_failed_update_never_adopts_a_hand_edited_lock() {
    let mut w = World::new();
    w.shims.fail_once(
        "nix",
        &["flake", "update"],
        1,
        "error: unable to download 'https://example.invalid': Couldn't resolve host name",
    );
    let out = w.bump(&[]);
    out.assert_code(1);
    let state = w.state();
    assert!(state["pending_bump"].is_null(), "{state:#}");
    // A hand edit to the (committed) lock, after the failed run.
    let mut edited = w.repo.lock_bytes();
    edited.extend_from_slice(b"\n\n");
    fs::write(w.repo.path().join("flake.lock"), &edited).expect("hand edit");
    let updates = w.shims.count("nix", &["flake", "update"]);
    let out = w.bump(&[]);
    assert_diagnostic(&out, "runnerctl::preflight::dirty");
    assert_stderr_mentions(&out, &["flake.lock"]);
    assert_eq!(w.repo.lock_bytes(), edited, "the hand edit was overwritten");
    assert_eq!(w.shims.count("nix", &["flake", "update"]), updates);
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");
}

/// kill -9 while `nix flake update` runs, then a hand edit of flake.lock:
/// the rerun refuses the edited lock as uncommitted (nix only updated a
/// throwaway copy, and no recorded hash matches the edit), the edit is
/// intact and nothing is committed.
#[test]
fn a_kill_during_the_update_never_adopts_a_hand_edited_lock() {
    let mut w = World::new();
    let lock_before = w.repo.lock_bytes();
    let hold = w.hooks.hold("nix", &["flake", "update"], 1, When::During);
    let mut run = w.spawn_bump(&[]);
    run.wait_hook(&hold, Duration::from_secs(120));
    let killed = run.kill_and_wait();
    assert_eq!(killed.code, None, "runnerctl ended on its own\n{killed}");
    assert_eq!(
        w.repo.lock_bytes(),
        lock_before,
        "the kill left flake.lock as it was"
    );
    // A hand edit to the (committed) lock, after the kill.
    let mut edited = lock_before.clone();
    edited.extend_from_slice(b"\n\n");
    fs::write(w.repo.path().join("flake.lock"), &edited).expect("hand edit");
    let updates = w.shims.count("nix", &["flake", "update"]);
    let out = w.bump(&[]);
    assert_diagnostic(&out, "runnerctl::preflight::dirty");
    assert_stderr_mentions(&out, &["flake.lock"]);
    assert_eq!(w.repo.lock_bytes(), edited, "the hand edit was overwritten");
    assert_eq!(w.shims.count("nix", &["flake", "update"]), updates);
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
}

/// A bump killed after its update wrote flake.lock (its hash recorded in
/// the pending bump) and a hand edit of that lock afterwards: the rerun
/// adopts only the lock whose hash it recorded, so it refuses this one and
/// the edit stays.
#[test]
fn a_pending_bump_never_adopts_a_lock_edited_after_its_update() {
    let mut w = World::new();
    let before = w.repo.lock_bytes();
    let hold = w.hooks.hold("nix", &["build"], 1, When::Before);
    let mut run = w.spawn_bump(&[]);
    run.wait_hook(&hold, Duration::from_secs(120));
    let killed = run.kill_and_wait();
    assert_eq!(killed.code, None, "runnerctl ended on its own\n{killed}");
    let updated = w.repo.lock_bytes();
    assert_ne!(updated, before, "the update had written the new lock");
    let mut edited = updated.clone();
    edited.extend_from_slice(b"\n\n");
    fs::write(w.repo.path().join("flake.lock"), &edited).expect("hand edit");
    let builds = w.shims.count("nix", &["build"]);
    let out = w.bump(&[]);
    assert_diagnostic(&out, "runnerctl::preflight::dirty");
    assert_stderr_mentions(&out, &["flake.lock"]);
    assert_eq!(w.repo.lock_bytes(), edited, "the hand edit was overwritten");
    assert_eq!(w.shims.count("nix", &["build"]), builds, "nothing built");
    assert_eq!(w.repo.head(), w.initial_remote_head, "nothing committed");
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
}

/// The new lock reaches flake.lock through a temporary file in its
/// directory; one a killed run left behind is removed by the next bump,
/// which completes as usual.
#[test]
fn a_temporary_lock_left_by_a_killed_run_is_removed() {
    let w = World::new();
    let stale = w.repo.path().join(".flake.lock.runnerctl-AbC123");
    fs::write(&stale, b"{}").expect("stale temporary lock");
    w.bump(&[]).assert_success();
    w.assert_bumped();
    assert!(!stale.exists(), "the stale temporary lock is still there");
    let left: Vec<_> = fs::read_dir(w.repo.path())
        .expect("read the checkout")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".flake.lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Two bumps on one checkout with different state dirs: the second fails at
/// once; it runs no `nix flake update` while the first one's is running.
#[test]
fn one_run_per_checkout_whatever_the_state_dir() {
    let mut w = World::new();
    let hold = w.hooks.hold("nix", &["flake", "update"], 1, When::Before);
    let mut first = w.spawn_bump(&[]);
    first.wait_hook(&hold, Duration::from_secs(120));
    let other = tempfile::tempdir().expect("other state dir");
    let args = w.bump_args(&["--state-dir", &other.path().display().to_string()]);
    let out = w.run(&args);
    assert_diagnostic(&out, "runnerctl::state::locked");
    assert_stderr_mentions(
        &out,
        &["holds the lock", &w.repo.path().display().to_string()],
    );
    // Only the first run's (held) update was started.
    assert_eq!(w.shims.count("nix", &["flake", "update"]), 0);
    hold.release();
    let out = first.wait(Duration::from_secs(240));
    out.assert_success();
    w.assert_bumped();
}

/// REGISTRY_AUTH_FILE naming a directory or a file that is not JSON: found
/// in preflight, before flake.lock changes.
#[test]
fn a_bad_registry_auth_file_is_found_before_anything_changes() {
    let w = World::new();
    let (env, home, _run) = env_without_runnerctl_credentials(&w);
    let not_json = home.join("auth.json");
    fs::write(&not_json, "{\"auths\": {").expect("write");
    let lock = w.repo.lock_bytes();
    for (file, phrase) in [(home.clone(), "not a regular file"), (not_json, "not JSON")] {
        let mut env = env.clone();
        env.push(("REGISTRY_AUTH_FILE".into(), file.display().to_string()));
        let out =
            Spawned::start(&w.bump_args(&[]), w.repo.path(), &env).wait(Duration::from_secs(240));
        assert_diagnostic(&out, "runnerctl::auth::file");
        assert_stderr_mentions(&out, &[phrase]);
        assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
        assert!(w.changing_calls().is_empty(), "{:?}", w.changing_calls());
    }
}

// ---------------------------------------------------------------------------
// Finding 8: smaller items
// ---------------------------------------------------------------------------

/// stdout holds exactly one JSON document; it is returned.
fn one_json_document(out: &RunOutput) -> serde_json::Value {
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{out}"));
    assert_eq!(docs.len(), 1, "one JSON document on stdout\n{out}");
    docs.into_iter().next().expect("one")
}

#[test]
fn json_on_every_path_env_booleans_and_corrupt_state() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    // Usage errors: exit 2, one document.
    for bad in [
        vec!["--frobnicate"],
        vec!["--progress", "bogus"],
        vec!["--tls-verify", "maybe"],
    ] {
        let mut args = vec!["bump", "--json"];
        args.extend(bad.iter().copied());
        let out = Run::new(args).in_repo(&repo).run();
        out.assert_code(2);
        let doc = one_json_document(&out);
        assert_eq!(doc["outcome"], "failure", "{out}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{out}"
        );
    }
    // A config error: the document names the flake and the image given.
    let out = Run::new(["bump", "--json", "--image", "http://x/y"])
        .in_repo(&repo)
        .run();
    out.assert_code(1);
    let doc = one_json_document(&out);
    assert_eq!(doc["image"], "http://x/y", "{out}");
    assert!(
        doc["flake"].as_str().is_some_and(|f| !f.is_empty()),
        "{out}"
    );
    // A bad boolean from the environment names the variable.
    let out = Run::new(["bump"])
        .in_repo(&repo)
        .env("RUNNERCTL_NO_VERIFY", "maybe")
        .run();
    out.assert_code(2);
    assert_stderr_mentions(&out, &["RUNNERCTL_NO_VERIFY"]);
    // yes/no and 1/0 are booleans; an empty RUNNERCTL_TAGS means the default.
    let out = Run::new(["bump", "--dry-run", "--json"])
        .in_repo(&repo)
        .env("RUNNERCTL_NO_VERIFY", "yes")
        .env("RUNNERCTL_NO_GIT_PUSH", "1")
        .env("RUNNERCTL_TAGS", "")
        .run();
    out.assert_success();
    let doc = one_json_document(&out);
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tags[..2], ["latest", "unstable"], "{out}");
    assert_eq!(tags.len(), 3, "{out}");
    // A state.json of random bytes is corrupt (not an I/O error), and
    // `status --json` still prints one document.
    let state = repo.path().join(".runnerctl/state.json");
    fs::create_dir_all(state.parent().expect("dir")).expect("mkdir");
    fs::write(&state, [0xff, 0xfe, 0x00, 0x9c, 0x80, 0x01, 0xc3]).expect("write");
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["bump", "--no-git-push"],
    ] {
        let json = args.contains(&"--json");
        let out = Run::new(args).in_repo(&repo).run();
        assert_diagnostic(&out, "runnerctl::state::corrupt");
        assert_stderr_mentions(&out, &["--reset-state"]);
        assert!(!out.stderr.contains("permissions"), "{out}");
        if json {
            let doc = one_json_document(&out);
            assert!(doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("corrupt")));
        }
    }
}

#[test]
fn commit_templates_symlinked_locks_and_huge_child_output() {
    let nixpkgs = StandInNixpkgs::new();
    let repo = RunnerRepo::new(&nixpkgs);
    for template in ["subject\n\nmy own body", "Update to {date"] {
        let out = Run::new(["bump", "--commit-message", template])
            .in_repo(&repo)
            .run();
        assert_diagnostic(&out, "runnerctl::config::commit_message");
    }
    // A flake.lock that is a symlink: refused without quoting its target.
    let secret_file = repo.path().join("secret.txt");
    fs::write(&secret_file, "Q0ktVE9LRU4tOTk4ODc3\n").expect("secret");
    let lock = repo.path().join("flake.lock");
    let saved = fs::read(&lock).expect("lock");
    fs::remove_file(&lock).expect("rm");
    std::os::unix::fs::symlink(&secret_file, &lock).expect("symlink");
    for json in [false, true] {
        let mut run = Run::new(["bump", "--no-git-push"]).in_repo(&repo);
        if json {
            run = run.arg("--json");
        }
        let out = run.run();
        assert_diagnostic(&out, "runnerctl::lock::symlink");
        assert!(
            !out.stderr.contains("Q0ktVE9LRU4") && !out.stdout.contains("Q0ktVE9LRU4"),
            "{out}"
        );
    }
    fs::remove_file(&lock).expect("rm");
    fs::write(&lock, saved).expect("restore");
    fs::remove_file(&secret_file).expect("rm");
    // A `nix --version` that prints 3 MB: quoted within bounds. On stdout
    // with exit 0 (the version parser quotes it), and on stderr with exit 1
    // (the failed command's last lines are quoted, each cut to MAX_LINE).
    for (script, quoted) in [
        (
            "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x\necho\n",
            false,
        ),
        (
            "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x >&2\necho >&2\nexit 1\n",
            true,
        ),
    ] {
        huge_nix_version_output(&repo, script, quoted);
    }
}

/// `runnerctl bump` with a `nix` that runs `script`, human and `--json`:
/// stderr and stdout under 16 KB, no quoted run of `x` over 500
/// characters (MAX_LINE), and when `quoted`, one of exactly 500.
fn huge_nix_version_output(repo: &RunnerRepo, script: &str, quoted: bool) {
    let bin = tempfile::tempdir().expect("bin");
    let nix = bin.path().join("nix");
    write_executable(&nix, script);
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for json in [false, true] {
        let mut run = Run::new(["bump", "--no-git-push"])
            .in_repo(repo)
            .env("PATH", &path);
        if json {
            run = run.arg("--json");
        }
        let out = run.run();
        out.assert_code(1);
        assert!(
            out.stderr.len() < 16 * 1024,
            "{} bytes of stderr",
            out.stderr.len()
        );
        assert!(
            out.stdout.len() < 16 * 1024,
            "{} bytes of stdout",
            out.stdout.len()
        );
        // The quoted line itself is cut to 500 characters (MAX_LINE), not
        // only the whole diagnostic to 8 KB: the longest run of `x` once
        // the wrapping (white space, gutters) is taken out.
        let unwrapped: String = out
            .stderr
            .chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '│' | '|'))
            .collect();
        let longest = unwrapped
            .split(|c| c != 'x')
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest <= 500 && (!quoted || longest == 500),
            "a quoted line of {longest} characters (MAX_LINE is 500; json: {json})\n{out}"
        );
    }
}
