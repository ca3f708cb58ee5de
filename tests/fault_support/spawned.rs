//! runnerctl started in its own process group, to be waited for or killed as a whole.

use super::*;

/// The runnerctl command [`Run`] would run (same environment handling).
pub fn runnerctl_command(args: &[String], cwd: &Path, env: &[(String, String)]) -> Command {
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
        RunOutput {
            code: status.and_then(|s| s.code()),
            stdout: joined_text(self.stdout.take()),
            stderr: joined_text(self.stderr.take()),
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
