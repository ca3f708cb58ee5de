//! Running the runnerctl binary: its environment, a timeout, its output.

use super::*;

/// Runs the runnerctl binary: no RUNNERCTL_* variables from the outer
/// environment (and `RUNNERCTL_SMOKE=never` unless the test sets it), stdin
/// closed, its own process group (killed as a whole on timeout), stdout and
/// stderr captured.
pub struct Run {
    program: PathBuf,
    args: Vec<String>,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

/// What a [`Run`] produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code; `None` if killed by a signal (or on timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub argv: Vec<String>,
}

impl Run {
    /// `runnerctl ARGS…`
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::program(env!("CARGO_BIN_EXE_runnerctl"), args)
    }

    /// Any program, with the same environment handling.
    pub fn program<I, S>(program: impl AsRef<OsStr>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Run {
            program: PathBuf::from(program.as_ref()),
            args: args.into_iter().map(|a| a.as_ref().to_string()).collect(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_string());
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn env(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.env
            .push((key.as_ref().to_string(), value.as_ref().to_string()));
        self
    }

    /// Sets `key` unless the run already sets it.
    pub fn env_default(self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        if self.env.iter().any(|(k, _)| k == key.as_ref()) {
            return self;
        }
        self.env(key, value)
    }

    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = &'a (String, String)>) -> Self {
        self.env.extend(vars.into_iter().cloned());
        self
    }

    /// Runs in `repo`'s working clone with its [`nix_env`].
    pub fn in_repo(self, repo: &RunnerRepo) -> Self {
        self.cwd(repo.path()).envs(repo.nix_env())
    }

    /// Puts the shims first on PATH.
    pub fn shims(self, shims: &PathShims) -> Self {
        let path = shims.path_env();
        self.env("PATH", path)
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command this would run, environment and all, to spawn by hand
    /// (tests that kill it).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("RUNNERCTL_") || k.starts_with("GIT_DIR") || k == "GIT_WORK_TREE" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(git_env());
        // The fixture runner images hold placeholder files, not programs,
        // and an engine on this machine, configured for its users, is no
        // part of a test: only the smoke tests (runnable images, the engine
        // configuration of tests/engine_support) start containers.
        cmd.env("RUNNERCTL_SMOKE", "never");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    pub fn run(self) -> RunOutput {
        let mut cmd = self.command();
        let mut argv = vec![self.program.display().to_string()];
        argv.extend(self.args.iter().cloned());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {argv:?}: {e}"));
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + self.timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    kill(&child.id().to_string(), true);
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for {argv:?}: {e}"),
            }
        };
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: joined_text(stdout),
            stderr: joined_text(stderr),
            timed_out,
            argv,
        }
    }
}

/// Read a child's pipe to the end on a thread.
pub fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert!(
            self.code == Some(code) && !self.timed_out,
            "expected exit code {code}, got {:?} (timed out: {})\n{self}",
            self.code,
            self.timed_out
        );
        self
    }

    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv.join(" "),
            self.stdout,
            self.stderr
        )
    }
}

/// What a [`drain`] thread collected, as text (empty if it panicked).
pub fn joined_text(handle: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    handle
        .and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The `stages` entry named `name` of a `--json` report.
pub fn report_stage(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no stage {name:?} in {report:#}"))
}
