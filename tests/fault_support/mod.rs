//! Helpers for the reliability suite (tests/faults.rs, tests/bad_input.rs,
//! tests/secrets.rs), on top of tests/common:
//!
//! - [`World`]: a stand-in nixpkgs with one new commit to bump to, the
//!   runner repository with its bare remote, a private registry, logging
//!   shims for nix, skopeo and git, and [`Hooks`] in front of them.
//! - [`Hooks`]: PATH shims that *hold* a chosen call (the Nth call of a tool
//!   whose argv starts with given words) before, during or after the real
//!   tool runs, signal that they got there, and wait to be released or killed;
//!   they also probe skopeo's `--authfile` arguments and every child's
//!   environment for a secret.
//! - [`Spawned`]: runnerctl started in its own process group, to be killed
//!   with SIGKILL as a whole.
//! - [`FaultProxy`]: an HTTP proxy in front of the registry that answers
//!   500 to chosen manifest writes, or holds one until released.
//! - Snapshots of everything a failed run must leave alone.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::*;

/// Where the tests push: `docker://HOST/infra/runners/nixos`.
pub fn image_arg(host: &str) -> String {
    format!("docker://{host}/{IMAGE_REPO}")
}

/// The default commit subject for a date tag.
pub fn bump_subject(date: &str) -> String {
    format!("chore(ci): Update nixos to {date}")
}

/// A commit time that, with high probability, no other test (in this or an
/// earlier run of the suite) uses, so that the fixture image's out path is
/// new to the Nix store and `nix build` really has to run.
pub fn unique_time() -> i64 {
    fresh_time()
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `text` with miette's gutters (`|`, `│`) removed and its line wrapping
/// undone: lines are joined with one space, or with none after a line that
/// ends inside a hyphenated word (`--no-git-` / `push`), and every run of
/// whitespace becomes one space. A phrase wrapped over several lines of a
/// diagnostic can then be found.
pub fn squash(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.replace(['|', '│'], " ");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let mut chars = out.chars().rev();
        let glued = chars.next() == Some('-') && chars.next().is_some_and(char::is_alphanumeric);
        if !out.is_empty() && !glued {
            out.push(' ');
        }
        out.push_str(&words.join(" "));
    }
    out
}

/// Panics with the whole output unless stderr mentions every phrase
/// (compared after [`squash`]).
pub fn assert_stderr_mentions(out: &RunOutput, phrases: &[&str]) {
    let stderr = squash(&out.stderr);
    for phrase in phrases {
        assert!(
            stderr.contains(&squash(phrase)),
            "stderr does not mention {phrase:?}\n{out}"
        );
    }
}

/// Exit 1 with a miette diagnostic (its `runnerctl::…` code and an `x`
/// headline) and no panic.
pub fn assert_diagnostic(out: &RunOutput, code: &str) {
    out.assert_code(1);
    assert!(
        !out.stderr.contains("panicked"),
        "runnerctl panicked\n{out}"
    );
    assert!(
        out.stderr.lines().any(|l| l.trim() == code),
        "no diagnostic with code {code}\n{out}"
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("x ") || l.trim_start().starts_with("× ")),
        "no miette headline\n{out}"
    );
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Hooks: holding, probing shims in front of the logging shims
// ---------------------------------------------------------------------------

/// When a hooked call is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before the real tool runs (it has not run when the hold is reached).
    Before,
    /// The real tool runs in the background; the hold is reached at once.
    During,
    /// After the real tool finished (its exit code in `<hook>.rc`), before
    /// runnerctl sees the result.
    After,
}

#[derive(Debug, Clone)]
struct Hook {
    tool: String,
    words: Vec<String>,
    nth: u32,
    when: When,
    /// Shell run by the shim just before it holds (`Before` only).
    script: String,
}

/// A handle on one hook: did it fire, release it.
#[derive(Debug, Clone)]
pub struct HookHandle {
    dir: PathBuf,
    index: usize,
}

impl HookHandle {
    fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("hook{}.{suffix}", self.index))
    }
    pub fn fired(&self) -> bool {
        self.file("fired").exists()
    }
    /// Lets the held call go on (into the real tool, or back to runnerctl).
    pub fn release(&self) {
        fs::write(self.file("release"), "").expect("write release file");
    }
    /// The signals (`TERM`, `INT`, `HUP`) the shim got while it held the
    /// call, in order.
    pub fn signals(&self) -> Vec<String> {
        fs::read_to_string(self.file("signals"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    /// The real tool's exit code, for `During`/`After` hooks that finished.
    pub fn rc(&self) -> Option<i32> {
        fs::read_to_string(self.file("rc"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Shims first on PATH (before [`PathShims`]) that hold chosen calls and
/// probe every call. Each shim execs the next `tool` on PATH after it (the
/// logging shim, or the real tool).
pub struct Hooks {
    dir: TempDir,
    next_dir: Option<PathBuf>,
    hooks: Vec<Hook>,
    secret: Option<String>,
    tools: BTreeSet<String>,
}

impl Hooks {
    /// `next_dir`: the directory whose `tool` the shims exec when it has
    /// one (the [`PathShims`] bin dir); otherwise the real tool.
    pub fn new(next_dir: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("runnerctl-hooks-")
            .tempdir()
            .expect("hooks dir");
        let mut hooks = Hooks {
            dir,
            next_dir: next_dir.map(Path::to_path_buf),
            hooks: Vec::new(),
            secret: None,
            tools: BTreeSet::new(),
        };
        for tool in ["nix", "git", "skopeo"] {
            hooks.tools.insert(tool.to_string());
        }
        hooks.write_all();
        hooks
    }

    pub fn bin_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Hold the `nth` (1-based) call of `tool` whose argv starts with
    /// `words` (so `git commit` matches runnerctl's `git commit …`, not the
    /// `git -C … cat-file commit …` that Nix runs to fetch an input).
    pub fn hold(&mut self, tool: &str, words: &[&str], nth: u32, when: When) -> HookHandle {
        self.hold_after_running(tool, words, nth, when, "")
    }

    /// [`hold`](Self::hold), and before holding a `When::Before` call the
    /// shim runs the shell `script` (for example, to leave an orphan).
    pub fn hold_after_running(
        &mut self,
        tool: &str,
        words: &[&str],
        nth: u32,
        when: When,
        script: &str,
    ) -> HookHandle {
        self.tools.insert(tool.to_string());
        self.hooks.push(Hook {
            tool: tool.to_string(),
            words: words.iter().map(|w| w.to_string()).collect(),
            nth,
            when,
            script: script.to_string(),
        });
        self.write_all();
        HookHandle {
            dir: self.dir.path().to_path_buf(),
            index: self.hooks.len() - 1,
        }
    }

    /// Record, for every call, whether `secret` appears in the child's
    /// environment (`env-leaks.log`), and for skopeo the mode of every
    /// authfile argument (`authfiles.log`: `MODE PATH` per argument).
    pub fn probe_secret(&mut self, secret: &str) {
        self.secret = Some(secret.to_string());
        self.write_all();
    }

    /// `(mode, path)` of every authfile skopeo was given, as seen from
    /// inside skopeo's shim while the file existed.
    pub fn authfiles(&self) -> Vec<(String, PathBuf)> {
        fs::read_to_string(self.dir.path().join("authfiles.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(m, p)| (m.to_string(), PathBuf::from(p)))
            .collect()
    }

    /// Lines `TOOL ARGV…` of calls whose environment held the secret.
    pub fn env_leaks(&self) -> String {
        fs::read_to_string(self.dir.path().join("env-leaks.log")).unwrap_or_default()
    }

    fn next_for(&self, tool: &str) -> PathBuf {
        if let Some(dir) = &self.next_dir {
            let p = dir.join(tool);
            if p.is_file() {
                return p;
            }
        }
        find_on_path(tool, self.dir.path())
            .unwrap_or_else(|| panic!("{tool} is not on PATH, cannot hook it"))
    }

    fn write_all(&self) {
        for tool in &self.tools {
            self.write(tool);
        }
    }

    fn write(&self, tool: &str) {
        let d = self.dir.path().display().to_string();
        let mut s = String::from("#!/bin/sh\n# runnerctl fault-injection hook\n");
        let _ = writeln!(
            s,
            "next={}\nd={}\ntool={}",
            sh_quote(&self.next_for(tool).display().to_string()),
            sh_quote(&d),
            sh_quote(tool)
        );
        s.push_str(
            "us=$(printf '\\037')\njoined=$us\nfor a in \"$@\"; do joined=\"$joined$a$us\"; done\n",
        );
        if let Some(secret) = &self.secret {
            let _ = writeln!(
                s,
                "if env | grep -F -q -e {}; then printf '%s %s\\n' \"$tool\" \"$*\" >>\"$d/env-leaks.log\"; fi",
                sh_quote(secret)
            );
            if tool == "skopeo" {
                s.push_str(
                    "prev=\nfor a in \"$@\"; do\n  \
                     case \"$prev\" in --authfile|--src-authfile|--dest-authfile)\n    \
                     printf '%s %s\\n' \"$(stat -c %a \"$a\" 2>/dev/null || echo missing)\" \"$a\" >>\"$d/authfiles.log\";;\n  \
                     esac\n  \
                     case \"$a\" in --authfile=*|--src-authfile=*|--dest-authfile=*)\n    \
                     f=${a#*=}; printf '%s %s\\n' \"$(stat -c %a \"$f\" 2>/dev/null || echo missing)\" \"$f\" >>\"$d/authfiles.log\";;\n  \
                     esac\n  \
                     prev=$a\ndone\n",
                );
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            if h.tool != tool {
                continue;
            }
            let pattern: String = h
                .words
                .iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join("\"$us\"");
            // While held, the shim records the signals it gets (and then
            // ends as the signal would have ended it), so a test can tell a
            // forwarded SIGTERM from a SIGKILL at the end of a grace period.
            let hold = format!(
                "trap 'echo TERM >>\"$d/hook{i}.signals\"; exit 143' TERM\n    \
                 trap 'echo INT >>\"$d/hook{i}.signals\"; exit 130' INT\n    \
                 trap 'echo HUP >>\"$d/hook{i}.signals\"; exit 129' HUP\n    \
                 : >\"$d/hook{i}.fired\"\n    \
                 while [ ! -e \"$d/hook{i}.release\" ]; do sleep 0.05; done\n    \
                 trap - TERM INT HUP\n"
            );
            let action = match h.when {
                When::Before => format!("{}\n    {hold}", h.script),
                When::During => format!(
                    "\"$next\" \"$@\" &\n    p=$!\n    {hold}    wait \"$p\"; rc=$?; echo \"$rc\" >\"$d/hook{i}.rc\"; exit \"$rc\"\n"
                ),
                When::After => format!(
                    "\"$next\" \"$@\"; rc=$?; echo \"$rc\" >\"$d/hook{i}.rc\"\n    {hold}    exit \"$rc\"\n"
                ),
            };
            let _ = write!(
                s,
                "case \"$joined\" in \"$us\"{pattern}\"$us\"*)\n  \
                 n=1; while ! mkdir \"$d/.hook{i}.$n\" 2>/dev/null; do n=$((n+1)); done\n  \
                 if [ \"$n\" -eq {nth} ]; then\n    {action}  fi;;\nesac\n",
                nth = h.nth,
            );
        }
        s.push_str("exec \"$next\" \"$@\"\n");
        write_executable(&self.dir.path().join(tool), &s);
    }
}

// ---------------------------------------------------------------------------
// Running runnerctl in its own process group
// ---------------------------------------------------------------------------

/// The runnerctl command [`Run`] would run (same environment handling).
fn runnerctl_command(args: &[String], cwd: &Path, env: &[(String, String)]) -> Command {
    Run::new(args).cwd(cwd).envs(env).command()
}

/// A runnerctl run started in the background (its own process group).
pub struct Spawned {
    child: Child,
    argv: Vec<String>,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Spawned {
    pub fn start(args: &[String], cwd: &Path, env: &[(String, String)]) -> Spawned {
        let mut child = runnerctl_command(args, cwd, env)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start runnerctl {args:?}: {e}"));
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let mut argv = vec!["runnerctl".to_string()];
        argv.extend(args.iter().cloned());
        Spawned {
            child,
            argv,
            stdout,
            stderr,
        }
    }

    /// runnerctl's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until `hook` fired; panics with runnerctl's output if it exits
    /// first or nothing happens within `timeout`.
    pub fn wait_hook(&mut self, hook: &HookHandle, timeout: Duration) {
        self.wait_until(timeout, || hook.fired());
    }

    /// Waits until `cond` holds; panics with runnerctl's output if it exits
    /// first or nothing happens within `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            if self.exited() || Instant::now() > deadline {
                let out = self.kill_now();
                panic!("runnerctl never got there (exited or timed out)\n{out}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL to runnerctl's whole process group (it and every child it
    /// started), then collects what it printed.
    pub fn kill_and_wait(mut self) -> RunOutput {
        self.kill_now()
    }

    fn kill_now(&mut self) -> RunOutput {
        kill_group(self.child.id());
        let status = self.child.wait().ok();
        self.collect(status)
    }

    /// Waits for the run to end by itself (with a timeout).
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.collect(Some(status)),
                Ok(None) if Instant::now() > deadline => {
                    let mut out = self.kill_now();
                    out.timed_out = true;
                    return out;
                }
                _ => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn collect(&mut self, status: Option<std::process::ExitStatus>) -> RunOutput {
        // A held shim's `sleep` may still hold the pipes; the group is
        // killed, so they close.
        kill_group(self.child.id());
        let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            timed_out: false,
            argv: self.argv.clone(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.exited() {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// `kill -KILL -- -PGID` with bash's builtin kill.
pub fn kill_group(pgid: u32) {
    let _ = Command::new("bash")
        .args([
            "-c",
            "kill -KILL -- \"$1\" 2>/dev/null",
            "kill",
            &format!("-{pgid}"),
        ])
        .stdin(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------
// The world a bump runs in
// ---------------------------------------------------------------------------

/// A runner repository one nixpkgs commit behind, a registry, logging shims
/// (nix, skopeo, git) and hooks in front of them.
pub struct World {
    pub nixpkgs: StandInNixpkgs,
    pub repo: RunnerRepo,
    pub registry: Registry,
    pub shims: PathShims,
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

impl World {
    pub fn new() -> World {
        let base = unique_time();
        let mut nixpkgs = StandInNixpkgs::new_at(base);
        let repo = RunnerRepo::new(&nixpkgs);
        let new_time = base + DAY;
        let new_rev = nixpkgs.commit(new_time);
        let registry = Registry::new();
        let mut shims = PathShims::new();
        shims.log_calls("nix").log_calls("skopeo").log_calls("git");
        let hooks = Hooks::new(Some(shims.bin_dir()));
        let tmp = tempfile::Builder::new()
            .prefix("runnerctl-tmpdir-")
            .tempdir()
            .expect("TMPDIR for runnerctl");
        let user = registry.user().to_string();
        let password = registry.password().to_string();
        World {
            initial_remote_head: repo.remote_head(),
            initial_remote_commits: repo.commit_count_on_remote(),
            nixpkgs,
            repo,
            registry,
            shims,
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

    pub fn image(&self) -> String {
        image_arg(&self.registry.host())
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

    pub fn run(&self, args: &[String]) -> RunOutput {
        Spawned::start(args, self.repo.path(), &self.env()).wait(Duration::from_secs(240))
    }

    pub fn spawn_bump(&self, extra: &[&str]) -> Spawned {
        Spawned::start(&self.bump_args(extra), self.repo.path(), &self.env())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.repo.path().join(".runnerctl")
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// state.json parsed with serde_json (panics with its text if it does
    /// not parse).
    pub fn state(&self) -> serde_json::Value {
        let path = self.state_path();
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("state.json does not parse ({e}):\n{text}"));
        assert_eq!(value["version"], 1, "state.json has no version 1:\n{text}");
        value
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

    /// Real `nix build` runs so far (calls that reached the logging shim).
    pub fn nix_builds(&self) -> usize {
        self.shims.count("nix", &["build"])
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
        let hash = out
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .expect("store path hash")
            .to_string();
        let nix_tag = format!("nix-{hash}");
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
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Snapshots: "nothing changed"
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A faulty HTTP proxy in front of the registry
// ---------------------------------------------------------------------------

/// Forwards HTTP to the registry, one request per connection (it adds
/// `Connection: close`), and answers `500` to manifest writes
/// (`PUT /v2/…/manifests/…`) instead of forwarding them while
/// [`fail_next`](Self::fail_next) allows.
pub struct FaultProxy {
    port: u16,
    c: Arc<ProxyCounters>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What a [`FaultProxy`] shares with its connection threads.
#[derive(Default)]
struct ProxyCounters {
    stop: AtomicBool,
    skip: AtomicUsize,
    fail: AtomicUsize,
    hold: AtomicUsize,
    held: AtomicBool,
    release: AtomicBool,
    injected: AtomicUsize,
    manifest_puts: AtomicUsize,
    /// Answer 401 to every blob upload's data (`PATCH`/`PUT` on
    /// `/v2/…/blobs/uploads/…`), as a registry that lets these credentials
    /// pull but not push does.
    deny_uploads: AtomicBool,
    denied: AtomicUsize,
    log: Mutex<Vec<String>>,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:upstream_port` that fails the next `fail`
    /// manifest writes.
    pub fn start(upstream_port: u16, fail: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let counters = Arc::new(ProxyCounters {
            fail: AtomicUsize::new(fail),
            ..ProxyCounters::default()
        });
        let c = counters.clone();
        let thread = thread::spawn(move || {
            while !c.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let c = c.clone();
                        thread::spawn(move || {
                            let _ = proxy_one(client, upstream_port, &c);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            c: counters,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Fail the next `n` manifest writes (0: forward everything).
    pub fn fail_next(&self, n: usize) {
        self.c.skip.store(self.manifest_puts(), Ordering::SeqCst);
        self.c.fail.store(n, Ordering::SeqCst);
    }

    /// Let the next `skip` manifest writes through, then fail `n`.
    pub fn fail_after(&self, skip: usize, n: usize) {
        self.c
            .skip
            .store(self.manifest_puts() + skip, Ordering::SeqCst);
        self.c.fail.store(n, Ordering::SeqCst);
    }

    /// Hold the `nth` (1-based) manifest write, not failed, until
    /// [`release`](Self::release): [`held`](Self::held) says it arrived.
    pub fn hold_manifest_put(&self, nth: usize) {
        self.c.hold.store(nth, Ordering::SeqCst);
    }

    /// The held manifest write has arrived (and is waiting).
    pub fn held(&self) -> bool {
        self.c.held.load(Ordering::SeqCst)
    }

    /// Forward the held manifest write.
    pub fn release(&self) {
        self.c.release.store(true, Ordering::SeqCst);
    }

    /// Answer 401 (`UNAUTHORIZED`) to the data of every blob upload from
    /// now on; reads (pings, manifests, blob checks) still go through.
    pub fn deny_uploads(&self) {
        self.c.deny_uploads.store(true, Ordering::SeqCst);
    }

    /// 401s answered to uploads so far.
    pub fn denied(&self) -> usize {
        self.c.denied.load(Ordering::SeqCst)
    }

    /// 500s answered so far.
    pub fn injected(&self) -> usize {
        self.c.injected.load(Ordering::SeqCst)
    }

    /// Manifest PUTs seen (answered 500 or forwarded).
    pub fn manifest_puts(&self) -> usize {
        self.c.manifest_puts.load(Ordering::SeqCst)
    }

    /// Request lines seen, in order.
    pub fn requests(&self) -> Vec<String> {
        self.c.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.c.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream_port: u16,
    counters: &ProxyCounters,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Read the request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        // skopeo tries HTTPS first (a TLS ClientHello): close at once, so
        // it falls back to plain HTTP as it does against the registry.
        if head.is_empty() && !byte[0].is_ascii_uppercase() {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    if let Ok(mut l) = counters.log.lock() {
        l.push(request_line.clone());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if counters.deny_uploads.load(Ordering::SeqCst)
        && matches!(method, "PATCH" | "PUT")
        && path.starts_with("/v2/")
        && path.contains("/blobs/uploads/")
    {
        counters.denied.fetch_add(1, Ordering::SeqCst);
        drain_body(&mut client, &text)?;
        let msg = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":"injected fault: these credentials may pull but not push"}]}"#;
        let resp = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWww-Authenticate: Basic realm=\"runnerctl-tests\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        client.write_all(resp.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if method == "PUT" && path.starts_with("/v2/") && path.contains("/manifests/") {
        let nth = counters.manifest_puts.fetch_add(1, Ordering::SeqCst) + 1;
        let take = nth > counters.skip.load(Ordering::SeqCst)
            && counters
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if take {
            counters.injected.fetch_add(1, Ordering::SeqCst);
            // Drain the body so the client sees our answer, not a reset.
            let len = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = client.read_exact(&mut body);
            let msg = r#"{"errors":[{"code":"UNKNOWN","message":"injected fault: storage backend unavailable"}]}"#;
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
            client.write_all(resp.as_bytes())?;
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        if counters.hold.load(Ordering::SeqCst) == nth {
            counters.held.store(true, Ordering::SeqCst);
            while !counters.release.load(Ordering::SeqCst) && !counters.stop.load(Ordering::SeqCst)
            {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // Forward with `Connection: close`, so every request gets its own
    // connection and is seen here.
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut out = String::new();
    for (i, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes())?;
    let mut up_read = upstream.try_clone()?;
    let mut client_write = client.try_clone()?;
    let down = thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

/// Reads a request's body (by `Content-Length`, or chunk by chunk) and
/// throws it away, so that the client reads the answer instead of a reset.
fn drain_body(client: &mut TcpStream, head: &str) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            line.clear();
            while !line.ends_with(b"\r\n") {
                if client.read(&mut byte)? == 0 {
                    return Ok(());
                }
                line.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).unwrap_or(0);
            // The chunk and its CRLF; after the last (empty) chunk, the
            // final CRLF (no trailers are sent).
            std::io::copy(
                &mut Read::take(&mut *client, size as u64 + 2),
                &mut std::io::sink(),
            )?;
            if size == 0 {
                return Ok(());
            }
        }
    }
    let len = header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    std::io::copy(&mut Read::take(&mut *client, len), &mut std::io::sink())?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Every regular file below `dir` (following no symlinks).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Files below `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|p| {
            fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Every object of a git repository, decompressed
/// (`git cat-file --batch-all-objects --batch`).
pub fn git_objects(dir: &Path) -> Vec<u8> {
    git_cmd(dir)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .stdin(Stdio::null())
        .output()
        .expect("git cat-file")
        .stdout
}

/// Files in `dir` (not recursive) whose name starts with `prefix`.
pub fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}
