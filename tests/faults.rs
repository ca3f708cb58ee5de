//! Reliability: kill -9 at every stage boundary and in the middle of the
//! build, push, commit and git-push; concurrent runs; registry faults; git
//! faults. Everything runs against real Nix, skopeo, docker-registry and
//! git; PATH shims only hold calls (to kill runnerctl at a known point) or
//! fail them. Each test checks what is on disk, in git, on the remote and in
//! the registry afterwards.
//!
//! Issue 5, sections 1–4. The README's "Reliability" table names these tests.

mod common;
mod fault_support;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use fault_support::*;
// The fault world (the common one with hooks), not common::World.
use fault_support::World;

const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// 1. kill -9
// ---------------------------------------------------------------------------

/// What to wait for, after the hook fired, before the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Kill at once.
    Now,
    /// Until Nix's builder has started (its build dir exists in TMPDIR).
    BuilderRunning,
}

/// Where the kill lands.
#[derive(Debug, Clone, Copy)]
enum At {
    /// The `nth` call of `tool` whose argv starts with `words`, held `when`
    /// by a PATH hook.
    Call {
        tool: &'static str,
        words: &'static [&'static str],
        nth: u32,
        when: When,
        until: Until,
    },
    /// The `nth` manifest write to the registry, held by a proxy in front
    /// of it (retags are PUTs runnerctl sends itself, not a child).
    ManifestPut(usize),
    /// The `nth` blob upload start (`POST …/blobs/uploads/`), held by the
    /// proxy: runnerctl uploads the blobs itself (issue 15).
    BlobPost(usize),
}

/// One place to kill runnerctl.
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    at: At,
    /// Stages state.json must record as done when the kill lands.
    done: &'static [&'static str],
    /// The stage the kill interrupts: not recorded as done.
    interrupted: &'static str,
}

const PREFLIGHT: &[&str] = &["preflight"];
const UPDATED: &[&str] = &["preflight", "update"];
const BUILT: &[&str] = &["preflight", "update", "build", "verify"];
const PUSHED: &[&str] = &["preflight", "update", "build", "verify", "push"];
const COMMITTED: &[&str] = &["preflight", "update", "build", "verify", "push", "commit"];

/// Kills one bump at `kp`, checks the state file, reruns, and checks the
/// result as if nothing had happened: one bump commit on the remote, every
/// tag at the built digest, and no finished stage repeated (`nix flake
/// update`, `nix build`, blob uploads and manifest writes are counted).
fn kill_and_resume(kp: KillPoint) {
    let mut w = World::new();
    let lock_before = w.repo.lock_bytes();
    let proxy = FaultProxy::start(w.registry.port(), 0);
    let mut hook = None;
    let mut before = true;
    let image = match kp.at {
        At::Call {
            tool,
            words,
            nth,
            when,
            ..
        } => {
            hook = Some(w.hooks.hold(tool, words, nth, when));
            before = when == When::Before;
            w.image()
        }
        At::ManifestPut(nth) => {
            proxy.hold_manifest_put(nth);
            image_arg(&proxy.host())
        }
        At::BlobPost(nth) => {
            proxy.hold_blob_post(nth);
            image_arg(&proxy.host())
        }
    };
    let args = w.bump_args_to(&image, &[]);

    let mut run = Spawned::start(&args, w.repo.path(), &w.env());
    match (&hook, kp.at) {
        (Some(hook), At::Call { until, .. }) => {
            run.wait_hook(hook, HOOK_TIMEOUT);
            let reached = match until {
                Until::Now => true,
                Until::BuilderRunning => wait_for(HOOK_TIMEOUT, || {
                    !files_named(w.tmp.path(), "nix-build-").is_empty() || hook.rc().is_some()
                }),
            };
            assert!(reached, "{kp:?}: the kill point was not reached");
        }
        _ => run.wait_until(HOOK_TIMEOUT, || proxy.held()),
    }
    let killed = run.kill_and_wait();
    let finished = hook.as_ref().and_then(HookHandle::rc);
    if hook.is_some() {
        eprintln!(
            "{kp:?}: the held call's real tool had {} when killed",
            match finished {
                Some(rc) => format!("finished (exit {rc})"),
                None if before => "not started".to_string(),
                None => "not finished".to_string(),
            }
        );
    }
    assert_eq!(
        killed.code, None,
        "{kp:?}: runnerctl ended on its own\n{killed}"
    );

    // The state file parses after the kill, and records where it stopped.
    let state = w.state();
    assert!(
        state["outcome"].is_null(),
        "a killed run has no outcome: {state:#}"
    );
    for stage in kp.done {
        assert_eq!(
            w.stage_status(stage).as_deref(),
            Some("done"),
            "{kp:?}: {stage} finished before the kill: {state:#}"
        );
    }
    assert_ne!(
        w.stage_status(kp.interrupted).as_deref(),
        Some("done"),
        "{kp:?}: {} was interrupted: {state:#}",
        kp.interrupted
    );
    if let At::ManifestPut(nth) = kp.at {
        // Killed while the registry waited for the nth manifest: the tags
        // before it are written, no other.
        assert_eq!(
            w.registry.tags(IMAGE_REPO).len(),
            nth - 1,
            "{kp:?}: {:?}",
            w.registry.tags(IMAGE_REPO)
        );
    }
    // `runnerctl status` reads it too.
    let status = w.run(&["status".into(), "--json".into()]);
    status.assert_success();
    assert!(status.json()["state"]["outcome"].is_null(), "{status}");
    // Nothing reached the remote before git-push.
    if kp.interrupted != "git-push" {
        assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    }
    if kp.done.len() < UPDATED.len() {
        // Before the update finished, flake.lock is the old one even when
        // nix had written its lock: nix updates a throwaway copy.
        assert_eq!(
            w.repo.lock_bytes(),
            lock_before,
            "{kp:?}: flake.lock is byte-identical to before"
        );
    }

    let tags_at_kill = w.registry.tags(IMAGE_REPO);
    let puts_at_kill = w.registry.manifest_puts_by_ref().len();
    let builds = w.nix_builds();
    let updates = w.shims.count("nix", &["flake", "update"]);
    let uploads = w.registry.blob_upload_count();
    let manifest_puts = w.registry.manifest_put_count();

    // The hooks hold one call only; the rerun's calls come after it.
    let rerun = w.run(&args);
    rerun.assert_success();
    w.assert_bumped();

    // Nothing finished is done again.
    let rerun_builds = w.nix_builds() - builds;
    if kp.done.contains(&"build") || (kp.interrupted == "build" && finished == Some(0)) {
        assert_eq!(
            rerun_builds, 0,
            "{kp:?}: the image was built already\n{rerun}"
        );
    } else {
        assert_eq!(
            rerun_builds, 1,
            "{kp:?}: the build had not finished\n{rerun}"
        );
    }
    if kp.interrupted == "build"
        && matches!(
            kp.at,
            At::Call {
                when: When::During,
                ..
            }
        )
    {
        // Killed mid-build: the rerun builds again only if Nix had not
        // registered the output.
        assert!(w.nix_builds() <= 2);
    } else {
        assert_eq!(w.nix_builds(), 1, "{kp:?}: nix build ran once overall");
    }
    if kp.done.contains(&"update") {
        assert_eq!(
            w.shims.count("nix", &["flake", "update"]),
            updates,
            "{kp:?}: the update had finished and its inputs are unchanged\n{rerun}"
        );
    }
    if kp.done.contains(&"push") {
        assert_eq!(
            w.registry.blob_upload_count(),
            uploads,
            "{kp:?}: no re-upload"
        );
        assert_eq!(
            w.registry.manifest_put_count(),
            manifest_puts,
            "{kp:?}: no tag rewritten"
        );
    }
    if let At::ManifestPut(_) = kp.at {
        // The rerun writes each missing tag once, and no tag that was there.
        let mut rewritten = w.registry.manifest_puts_by_ref()[puts_at_kill..].to_vec();
        rewritten.sort();
        let mut missing: Vec<String> = w
            .registry
            .tags(IMAGE_REPO)
            .into_iter()
            .filter(|t| !tags_at_kill.contains(t))
            .collect();
        missing.sort();
        assert!(!missing.is_empty(), "{kp:?}: no tag was missing");
        assert_eq!(
            rewritten, missing,
            "{kp:?}: manifest PUTs of the rerun (tags there at the kill: {tags_at_kill:?})"
        );
    }
    if kp.interrupted == "push" && (finished == Some(0) || matches!(kp.at, At::ManifestPut(_))) {
        // Every layer had reached the registry before the kill: the rerun
        // uploads none of them again.
        assert!(uploads > 0);
        assert_eq!(
            w.registry.blob_upload_count(),
            uploads,
            "{kp:?}: no re-upload"
        );
    }
    // A third run is a no-op.
    let again = w.run(&args);
    again.assert_success();
    assert!(again.stdout.contains("up-to-date"), "{again}");
    assert_eq!(w.remote_bump_commits().len(), 1);
    drop(w);
}

/// A hook on the `nth` call of `tool` whose argv starts with `words`.
fn call(tool: &'static str, words: &'static [&'static str], nth: u32, when: When) -> At {
    At::Call {
        tool,
        words,
        nth,
        when,
        until: Until::Now,
    }
}

macro_rules! kill_points {
    ($($name:ident: $at:expr, done $done:expr, interrupts $stage:literal;)*) => {
        $(
            #[test]
            fn $name() {
                kill_and_resume(KillPoint { at: $at, done: $done, interrupted: $stage });
            }
        )*
    };
}

// The first command each stage runs (src/stage/*.rs) marks its boundary:
// preflight starts with `nix --version`, update with `nix flake update`,
// build with the run's second `nix eval` (preflight's checks that the attr
// exists), push (after build and verify, which run no command) with
// `skopeo copy`, commit with the run's second `git hash-object` (update ran
// the first), git-push with the run's second `git ls-remote` (preflight
// checks that the remote answers). Each kill point also checks in
// state.json which stages were done.
kill_points! {
    kill_at_start_of_preflight:
        call("nix", &["--version"], 1, When::Before), done &[], interrupts "preflight";
    kill_between_preflight_and_update:
        call("nix", &["flake", "update"], 1, When::Before), done PREFLIGHT, interrupts "update";
    kill_after_nix_flake_update_wrote_the_lock:
        call("nix", &["flake", "update"], 1, When::After), done PREFLIGHT, interrupts "update";
    kill_between_update_and_build:
        call("nix", &["eval"], 2, When::Before), done UPDATED, interrupts "build";
    kill_in_the_middle_of_nix_build:
        At::Call {
            tool: "nix", words: &["build"], nth: 1, when: When::During,
            until: Until::BuilderRunning,
        },
        done UPDATED, interrupts "build";
    kill_after_nix_build_before_it_is_recorded:
        call("nix", &["build"], 1, When::After), done UPDATED, interrupts "build";
    // The push's first blob upload: nothing is uploaded yet.
    kill_between_verify_and_push:
        At::BlobPost(1), done BUILT, interrupts "push";
    // The third blob upload: the first two are sent or under way.
    kill_in_the_middle_of_the_upload:
        At::BlobPost(3), done BUILT, interrupts "push";
    kill_after_the_layers_before_the_manifest_write:
        At::ManifestPut(1), done BUILT, interrupts "push";
    // The first tag is written (the upload's own manifest), the first
    // retag held.
    kill_after_the_upload_before_it_is_recorded:
        At::ManifestPut(2), done BUILT, interrupts "push";
    // Two tags written (the upload's and the first retag), the third held.
    kill_in_the_middle_of_the_retags:
        At::ManifestPut(3), done BUILT, interrupts "push";
    kill_between_push_and_commit:
        call("git", &["hash-object"], 2, When::Before), done PUSHED, interrupts "commit";
    kill_after_git_commit_before_it_is_recorded:
        call("git", &["commit"], 1, When::After), done PUSHED, interrupts "commit";
    kill_between_commit_and_git_push:
        call("git", &["ls-remote"], 2, When::Before), done COMMITTED, interrupts "git-push";
    kill_just_before_git_push:
        call("git", &["push"], 1, When::Before), done COMMITTED, interrupts "git-push";
    kill_in_the_middle_of_git_push:
        call("git", &["push"], 1, When::During), done COMMITTED, interrupts "git-push";
    kill_after_git_push_before_it_is_recorded:
        call("git", &["push"], 1, When::After), done COMMITTED, interrupts "git-push";
}

/// Which save the state-save kill lands in: after preflight and update
/// were recorded, so state.json already holds a document worth keeping.
const KILLED_SAVE: u32 = 4;

/// kill -9 inside a save of state.json (a test-only hook stops runnerctl
/// after it wrote half of the new document): a reader polling state.json
/// all along, and the file after the kill, see only whole documents; the
/// file after the kill is the one from before the save; the rerun
/// completes.
#[test]
fn kill_in_the_middle_of_a_state_save_leaves_the_previous_document() {
    let w = World::new();
    let paused = w.tmp.path().join("save-paused");
    let mut env = w.env();
    env.push((
        "RUNNERCTL_TEST_PAUSE_SAVE".into(),
        format!("{KILLED_SAVE}:{}", paused.display()),
    ));
    let path = w.state_path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut whole, mut partial) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(bytes) = fs::read(&path) {
                    match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(_) => whole += 1,
                        Err(e) => partial.push(format!("{e}: {}", String::from_utf8_lossy(&bytes))),
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (whole, partial)
        })
    };
    let args = w.bump_args(&[]);
    let mut run = Spawned::start(&args, w.repo.path(), &env);
    run.wait_until(HOOK_TIMEOUT, || paused.exists());
    // Mid-save: state.json is still the previous, whole document.
    let during = fs::read(&path).expect("state.json exists before the killed save");
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&during) {
        panic!(
            "state.json in the middle of a save is not a whole document ({e}):\n{}",
            String::from_utf8_lossy(&during)
        );
    }
    let killed = run.kill_and_wait();
    assert_eq!(killed.code, None, "runnerctl ended on its own\n{killed}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (whole, partial) = reader.join().expect("the reader thread");
    assert!(
        partial.is_empty(),
        "a reader saw {} partial documents: {partial:#?}",
        partial.len()
    );
    assert!(whole > 0, "the reader never read state.json");
    assert_eq!(
        fs::read(&path).expect("state.json after the kill"),
        during,
        "the killed save changed state.json"
    );
    assert_eq!(w.stage_status("preflight").as_deref(), Some("done"));
    let status = w.run(&["status".into(), "--json".into()]);
    status.assert_success();

    let rerun = w.run(&args);
    rerun.assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

// ---------------------------------------------------------------------------
// 2. Concurrent runs
// ---------------------------------------------------------------------------

#[test]
fn second_run_exits_1_at_once_naming_the_pid_that_holds_the_lock() {
    let mut w = World::new();
    let hook = w.hooks.hold("nix", &["eval"], 1, When::Before);
    let mut first = w.spawn_bump(&[]);
    first.wait_hook(&hook, HOOK_TIMEOUT);
    let pid = first.pid();

    let state = fs::read(w.state_path()).expect("state.json of the first run");
    let snapshot = Snapshot::take(&w.repo, Some(&w.registry));
    let calls = (
        w.shims.calls("nix").len(),
        w.shims.calls("git").len(),
        w.shims.calls("skopeo").len(),
    );
    for json in [false, true] {
        let started = Instant::now();
        let second = if json {
            w.bump(&["--json"])
        } else {
            w.bump(&[])
        };
        let took = started.elapsed();
        second.assert_code(1);
        assert!(
            took < Duration::from_secs(5),
            "not at once: {took:?}\n{second}"
        );
        let expected = format!("another runnerctl run (pid {pid}) holds the lock");
        assert_diagnostic(&second, "runnerctl::state::locked");
        assert_stderr_mentions(&second, &[&expected, "wait for that run to finish"]);
        if json {
            let doc = second.json();
            assert_eq!(doc["outcome"], "failure", "{second}");
            let message = doc["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(&expected), "{second}");
        }
    }
    // The second runs changed nothing and ran nothing.
    assert_eq!(fs::read(w.state_path()).expect("state.json"), state);
    assert_eq!(Snapshot::take(&w.repo, Some(&w.registry)), snapshot);
    assert_eq!(
        (
            w.shims.calls("nix").len(),
            w.shims.calls("git").len(),
            w.shims.calls("skopeo").len(),
        ),
        calls
    );

    // The first run was not disturbed.
    hook.release();
    first.wait(HOOK_TIMEOUT).assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

#[test]
fn a_lock_left_by_a_killed_run_does_not_block_the_next() {
    let mut w = World::new();
    let hook = w.hooks.hold("nix", &["eval"], 1, When::Before);
    let mut run = w.spawn_bump(&[]);
    run.wait_hook(&hook, HOOK_TIMEOUT);
    let pid = run.pid();
    run.kill_and_wait();
    // The lock file stays behind, naming the dead run.
    let lock = w.state_dir().join("lock");
    assert_eq!(
        fs::read_to_string(&lock)
            .expect("lock file left behind")
            .trim(),
        pid.to_string()
    );
    let next = w.bump(&[]);
    next.assert_success();
    assert!(!next.stderr.contains("holds the lock"), "{next}");
    assert!(next.stderr.contains("resuming"), "{next}");
    w.assert_bumped();
}

// ---------------------------------------------------------------------------
// 3. Registry faults
// ---------------------------------------------------------------------------

#[test]
fn registry_stopped_mid_push_bounded_retries_clear_error_then_resume() {
    let mut w = World::new();
    // runnerctl uploads the blobs itself (issue 15): hold its first blob
    // upload at a proxy, stop the registry, let the upload go on.
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.hold_blob_post(1);
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let mut run = Spawned::start(&args, w.repo.path(), &w.env());
    run.wait_until(HOOK_TIMEOUT, || proxy.held());
    w.registry.stop();
    proxy.release();
    let released = Instant::now();
    let out = run.wait(Duration::from_secs(180));
    let took = released.elapsed();
    out.assert_code(1);
    // Bounded: each blob upload is tried once more after a refused
    // connection, and the first failure stops the push.
    assert!(
        took < Duration::from_secs(90),
        "retries are not bounded: {took:?}"
    );
    let posts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .count();
    // runnerctl's workers: one per core, plus one.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    assert!(
        (1..=2 * workers).contains(&posts),
        "{posts} upload attempts: {:#?}",
        proxy.requests()
    );
    assert!(w.shims.calls("skopeo").iter().all(|c| c[0] != "copy"));
    // A clear error: skopeo's class for a registry that is not there, and
    // what to do.
    assert_diagnostic(&out, "runnerctl::registry::unavailable");
    assert_stderr_mentions(&out, &["run the same command again"]);
    // Nothing committed or pushed to git; the state says where it stopped.
    assert_eq!(w.repo.head(), w.initial_remote_head);
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));
    assert_eq!(w.stage_status("build").as_deref(), Some("done"));
    assert_eq!(w.state()["outcome"], "failure");

    w.registry.start();
    let rerun = w.bump(&[]);
    rerun.assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1, "the rerun did not build again");
}

#[test]
fn wrong_password_401_no_retry_credentials_message_nothing_committed() {
    let mut w = World::new();
    w.password = "not-the-password".into();
    let lock = w.repo.lock_bytes();
    let out = w.bump(&[]);
    // Preflight checks the login against the registry before anything
    // changes (issue 10, finding 1).
    assert_diagnostic(&out, "runnerctl::preflight::login");
    assert_eq!(w.repo.lock_bytes(), lock, "flake.lock untouched");
    assert_stderr_mentions(
        &out,
        &[
            "the registry rejected the credentials",
            "RUNNERCTL_REGISTRY_PASSWORD",
            "nothing was committed or pushed to git",
        ],
    );
    // No retry: the registry checked the wrong password once (it logs
    // "error authenticating user" for every request that carries wrong
    // credentials, whoever sends it), and skopeo ran at most once.
    let attempts = w
        .registry
        .log()
        .lines()
        .filter(|l| l.contains("error authenticating user"))
        .count();
    assert_eq!(
        attempts,
        1,
        "the wrong password was tried {attempts} times\n{}",
        w.registry.log()
    );
    let skopeo = w.shims.calls("skopeo");
    assert!(skopeo.len() <= 1, "no retry after a 401: {skopeo:?}");
    // Nothing built, committed, pushed or tagged.
    assert_eq!(w.nix_builds(), 0);
    assert_eq!(w.repo.head(), w.initial_remote_head);
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
    assert_eq!(w.registry.blob_upload_count(), 0);

    w.password = w.registry.password().to_string();
    w.bump(&[]).assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

/// The credentials may pull but not push: every read succeeds (the build
/// stage's check, the push's tag check) and only the blob uploads' data
/// get a 401, from a proxy in front of the registry. The upload is not
/// repeated (no new session after the refusal), and the message is the
/// credentials one.
#[test]
fn a_401_on_the_upload_only_is_not_retried_and_names_the_credentials() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), 0);
    proxy.deny_uploads();
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let out = w.run(&args);
    out.assert_code(1);
    assert_diagnostic(&out, "runnerctl::registry::unauthorized");
    assert_stderr_mentions(
        &out,
        &[
            "the registry rejected the credentials",
            "RUNNERCTL_REGISTRY_PASSWORD",
            "nothing was committed or pushed to git",
        ],
    );
    // The reads before the upload went through: the build ran.
    assert_eq!(w.nix_builds(), 1);
    // Refused, not retried: at most one upload session per worker, each
    // refused, and no new session or ping after them.
    assert!(proxy.denied() >= 1, "{:#?}", proxy.requests());
    let requests = proxy.requests();
    let posts = requests
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .count();
    // runnerctl's workers: one per core, plus one.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    assert!(
        (1..=workers).contains(&posts),
        "{posts} upload sessions: {requests:#?}"
    );
    let first_refused = requests
        .iter()
        .position(|r| {
            (r.starts_with("PATCH ") || r.starts_with("PUT ")) && r.contains("/blobs/uploads/")
        })
        .expect("the proxy logged the refused upload");
    let pings_after: Vec<&String> = requests[first_refused..]
        .iter()
        .filter(|r| r.starts_with("GET /v2/ "))
        .collect();
    assert!(
        pings_after.is_empty(),
        "a second attempt after the 401: {requests:#?}"
    );
    assert!(
        !squash(&out.stderr).contains("retrying"),
        "a 401 is not retried\n{out}"
    );
    // Nothing tagged or committed.
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
    assert_eq!(w.repo.head(), w.initial_remote_head);
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));
}

#[test]
fn a_500_on_one_manifest_write_is_retried_and_the_push_completes() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), 1);
    let image = image_arg(&proxy.host());
    let out = w.run(&w.bump_args_to(&image, &[]));
    out.assert_success();
    assert_eq!(proxy.injected(), 1, "{:#?}", proxy.requests());
    w.assert_bumped();
}

#[test]
fn a_500_on_every_manifest_write_fails_clearly_then_resumes() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), usize::MAX);
    let image = image_arg(&proxy.host());
    let args = w.bump_args_to(&image, &[]);
    let started = Instant::now();
    let out = w.run(&args);
    assert_diagnostic(&out, "runnerctl::registry::http");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "bounded retries"
    );
    // Retried, and bounded: the first tag's manifest write is tried once
    // more by runnerctl; it gives up there, before any other tag.
    assert!(
        (2..=8).contains(&proxy.manifest_puts()),
        "manifest writes: {:#?}\n{out}",
        proxy.requests()
    );
    assert_stderr_mentions(
        &out,
        &[
            "/manifests/",
            "HTTP 500",
            "injected fault",
            "probably temporary: run again",
        ],
    );
    assert_eq!(w.repo.head(), w.initial_remote_head);
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert!(w.registry.tags(IMAGE_REPO).is_empty());
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));

    proxy.fail_next(0);
    w.run(&args).assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
}

#[test]
fn a_500_on_every_retag_fails_clearly_then_resumes_without_reupload() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), 0);
    // The upload's own manifest write goes through; every retag after it
    // (a manifest write of the same bytes under another tag) gets a 500.
    proxy.fail_after(1, usize::MAX);
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let started = Instant::now();
    let out = w.run(&args);
    out.assert_code(1);
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(90), "bounded");
    assert!(
        (1..=8).contains(&proxy.injected()),
        "{} retag attempts",
        proxy.injected()
    );
    assert_stderr_mentions(&out, &["500"]);
    assert!(
        squash(&out.stderr).contains("run again")
            || squash(&out.stderr).contains("run the same command again"),
        "says what to do\n{out}"
    );
    // Half-pushed: the first tag only, which is the content-addressed
    // `nix-<hash>` tag (never a floating tag alone on a new image: issue
    // 10, finding 1); nothing committed or pushed to git.
    let out_path = w.expected_out_path();
    let tag = nix_tag(&out_path.display().to_string());
    assert_eq!(w.registry.tags(IMAGE_REPO), vec![tag]);
    assert_eq!(w.repo.head(), w.initial_remote_head);
    assert_eq!(w.repo.remote_head(), w.initial_remote_head);
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));
    let uploads = w.registry.blob_upload_count();

    proxy.fail_next(0);
    w.run(&args).assert_success();
    w.assert_bumped();
    assert_eq!(w.nix_builds(), 1);
    assert_eq!(w.registry.blob_upload_count(), uploads, "only retags");
}

/// "push skipped only when every tag is at the digest": every tag but the
/// last (`nix-<hash>`) is written, then its retag fails. The rerun does not
/// call the push done: it writes that one tag (one manifest PUT) and
/// uploads nothing.
#[test]
fn one_tag_missing_the_rerun_writes_only_that_tag() {
    let w = World::new();
    let proxy = FaultProxy::start(w.registry.port(), 0);
    // The upload's manifest write (the `nix-<hash>` tag, written first) and
    // two retags (the date, then `latest`) go through; the last retag
    // (`unstable`, floating tags last) gets a 500 on every attempt.
    proxy.fail_after(3, usize::MAX);
    let args = w.bump_args_to(&image_arg(&proxy.host()), &[]);
    let out = w.run(&args);
    out.assert_code(1);
    let there = w.registry.tags(IMAGE_REPO);
    assert_eq!(there.len(), 3, "{there:?}\n{out}");
    assert!(there.iter().any(|t| t.starts_with("nix-")), "{there:?}");
    assert!(!there.iter().any(|t| t == "unstable"), "{there:?}");
    assert_eq!(w.stage_status("push").as_deref(), Some("failed"));
    let uploads = w.registry.blob_upload_count();
    let puts = w.registry.manifest_puts_by_ref().len();

    proxy.fail_next(0);
    let rerun = w.run(&args);
    rerun.assert_success();
    assert!(
        !rerun.stdout.contains("already at"),
        "the push is not done while a tag is missing\n{rerun}"
    );
    w.assert_bumped();
    let rewritten = w.registry.manifest_puts_by_ref()[puts..].to_vec();
    assert_eq!(rewritten.len(), 1, "{rewritten:?}");
    assert_eq!(rewritten[0], "unstable", "{rewritten:?}");
    assert_eq!(w.registry.blob_upload_count(), uploads, "only a retag");
    assert_eq!(w.nix_builds(), 1);
}

// ---------------------------------------------------------------------------
// 4. Git faults
// ---------------------------------------------------------------------------

#[test]
fn remote_moved_without_touching_the_lock_rebase_and_push() {
    let mut w = World::new();
    let moved = w.repo.push_unrelated_readme_commit();
    w.initial_remote_commits += 1;
    let out = w.bump(&[]);
    out.assert_success();
    assert!(
        out.stdout.contains("rebased onto the moved remote"),
        "{out}"
    );
    w.assert_bumped();
    w.assert_remote_not_rewritten(&moved);
    assert_eq!(
        w.repo.git(&["rev-parse", "HEAD^"]),
        moved,
        "bump commit on top"
    );
    let readme = git(w.repo.remote_path(), &["show", "refs/heads/main:README.md"]);
    assert!(readme.contains("private registry"), "{readme}");
    assert_eq!(w.git_pushes().len(), 1);
}

#[test]
fn remote_moved_between_fetch_and_push_rebase_and_push_again() {
    let mut w = World::new();
    let hook = w.hooks.hold("git", &["push"], 1, When::Before);
    let mut run = w.spawn_bump(&[]);
    run.wait_hook(&hook, HOOK_TIMEOUT);
    let moved = w.repo.push_unrelated_readme_commit();
    w.initial_remote_commits += 1;
    hook.release();
    let out = run.wait(HOOK_TIMEOUT);
    out.assert_success();
    w.assert_bumped();
    w.assert_remote_not_rewritten(&moved);
    assert_eq!(
        w.repo.git(&["rev-parse", "HEAD^"]),
        moved,
        "bump commit on top"
    );
    assert_eq!(w.git_pushes().len(), 2, "rejected once, then pushed");
}

#[test]
fn remote_changed_the_lock_stop_keep_the_local_commit_and_explain() {
    let mut w = World::new();
    let moved = w.repo.push_remote_lock_update();
    // Upstream moves again, so this bump's lock differs from the remote's.
    let rev3 = w.world.nixpkgs.commit(w.new_time + DAY);
    let subject = bump_subject(&date_tag(w.new_time + DAY));
    for attempt in 0..2 {
        let out = w.bump(&[]);
        assert_diagnostic(&out, "runnerctl::git_push::lock_conflict");
        assert_stderr_mentions(
            &out,
            &[
                "changed flake.lock since this bump started",
                "the local commit",
                "is kept and nothing was pushed",
                "git reset --hard",
                "git pull --rebase",
            ],
        );
        // The local bump commit is kept (exactly one), on the old base.
        assert_eq!(
            w.repo.git(&["log", "-1", "--format=%s"]),
            subject,
            "attempt {attempt}"
        );
        assert_eq!(w.repo.git(&["rev-parse", "HEAD^"]), w.initial_remote_head);
        assert!(w
            .repo
            .lock_bytes()
            .windows(rev3.len())
            .any(|x| x == rev3.as_bytes()));
        assert_eq!(w.repo.status(), "");
        // The remote is as the other clone left it.
        assert_eq!(w.repo.remote_head(), moved);
        w.assert_remote_not_rewritten(&moved);
        assert_eq!(w.stage_status("git-push").as_deref(), Some("failed"));
    }
    w.assert_never_forced();
}

#[test]
fn push_rejected_by_a_hook_clear_error_then_resume_repeats_only_the_push() {
    let w = World::new();
    let marker = w.repo.remote_path().join("rejected-once");
    let hook = w.repo.remote_path().join("hooks/pre-receive");
    write_executable(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e '{m}' ]; then : >'{m}'; echo 'policy: main is frozen (injected rejection)' >&2; exit 1; fi\nexit 0\n",
            m = marker.display()
        ),
    );

    let out = w.bump(&[]);
    assert_diagnostic(&out, "runnerctl::tool::failed");
    assert_stderr_mentions(
        &out,
        &[
            "git push",
            "main is frozen (injected rejection)",
            "only the git push is repeated",
        ],
    );
    assert_eq!(
        w.repo.remote_head(),
        w.initial_remote_head,
        "nothing pushed"
    );
    assert_eq!(w.stage_status("git-push").as_deref(), Some("failed"));
    let commit = w.repo.head();
    assert_ne!(commit, w.initial_remote_head, "the bump commit is made");
    let (builds, uploads, puts) = (
        w.nix_builds(),
        w.registry.blob_upload_count(),
        w.registry.manifest_put_count(),
    );

    let rerun = w.bump(&[]);
    rerun.assert_success();
    w.assert_bumped();
    assert_eq!(w.repo.head(), commit, "the same commit was pushed");
    assert_eq!(w.nix_builds(), builds);
    assert_eq!(w.registry.blob_upload_count(), uploads);
    assert_eq!(w.registry.manifest_put_count(), puts);
    assert_eq!(w.git_pushes().len(), 2);
}
