//! Signals and the processes runnerctl started.
//!
//! On SIGINT, SIGTERM or SIGHUP runnerctl stops starting commands, sends the
//! same signal to every process it started (and theirs: runnerctl is their
//! subreaper, so an orphaned grandchild stays in its tree), waits a bounded
//! time for them to end, kills what remains, records the interrupted stage
//! and exits 128 + the signal. Nothing it started outlives it, so nothing
//! rewrites flake.lock after the run lock is released.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use miette::Diagnostic;
use thiserror::Error;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signal that interrupted this run (0: none).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// How long the children get to end after the forwarded signal.
pub const GRACE: Duration = Duration::from_secs(10);

/// The run was interrupted by a signal.
#[derive(Debug, Error, Diagnostic)]
#[error("interrupted by {}", signal_name(*.signal))]
#[diagnostic(
    code(runnerctl::interrupted),
    help("the commands runnerctl had started were stopped and the stage was recorded as interrupted; run the same command again to resume")
)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The exit code: 128 + the signal (130 for SIGINT, 143 for SIGTERM,
    /// 129 for SIGHUP).
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The signal that interrupted the run, if one did.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from now on.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Catch the signals, and become the subreaper of every process
    /// runnerctl starts (so grandchildren whose parent died stay findable).
    pub fn catch() -> std::io::Result<Signals> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag
        // and touches no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal; it is recorded (no command starts after it) and
    /// forwarded to every process runnerctl started.
    pub async fn recv(&mut self) -> i32 {
        let sig = tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        };
        INTERRUPTED.store(sig, Ordering::SeqCst);
        signal_all(sig);
        sig
    }
}

/// Send `sig` to every live descendant.
pub fn signal_all(sig: i32) {
    for pid in descendants() {
        // SAFETY: kill takes a pid and a signal number and touches no
        // memory of ours.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Wait until no descendant is alive, up to `timeout`; then SIGKILL what
/// is left and reap it. Returns whether they all ended by themselves.
pub fn wait_for_descendants(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        reap_zombies();
        if descendants().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !descendants().is_empty() && Instant::now() < deadline {
        reap_zombies();
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Reap our exited children (the run is over: nothing else waits for them).
fn reap_zombies() {
    for pid in children_of(std::process::id() as i32, &proc_table()) {
        if state_of(pid) == Some('Z') {
            let mut status = 0;
            // SAFETY: waitpid on one of our own children, with a valid
            // pointer to an int for the status.
            unsafe {
                libc::waitpid(pid, &mut status, libc::WNOHANG);
            }
        }
    }
}

/// (pid, ppid) of every process.
fn proc_table() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parens.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn children_of(pid: i32, table: &[(i32, i32)]) -> Vec<i32> {
    table
        .iter()
        .filter(|(_, ppid)| *ppid == pid)
        .map(|(p, _)| *p)
        .collect()
}

/// Every live (not zombie) process below runnerctl.
pub fn descendants() -> Vec<i32> {
    let table = proc_table();
    let mut out = Vec::new();
    let mut todo = vec![std::process::id() as i32];
    while let Some(pid) = todo.pop() {
        for child in children_of(pid, &table) {
            if !out.contains(&child) {
                out.push(child);
                todo.push(child);
            }
        }
    }
    out.retain(|pid| state_of(*pid).is_some_and(|s| s != 'Z'));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(
            Interrupted {
                signal: libc::SIGINT
            }
            .exit_code(),
            130
        );
        assert_eq!(
            Interrupted {
                signal: libc::SIGTERM
            }
            .exit_code(),
            143
        );
        assert_eq!(
            Interrupted {
                signal: libc::SIGHUP
            }
            .exit_code(),
            129
        );
    }

    #[test]
    fn descendants_are_found_and_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        assert!(descendants().contains(&pid));
        signal_all_of(&[pid], libc::SIGTERM);
        let _ = child.wait();
        assert!(!descendants().contains(&pid));
    }

    fn signal_all_of(pids: &[i32], sig: i32) {
        for pid in pids {
            // SAFETY: as in signal_all.
            unsafe {
                libc::kill(*pid, sig);
            }
        }
    }
}
