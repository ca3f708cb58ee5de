//! Helpers for the reliability suite (tests/faults.rs, tests/bad_input.rs,
//! tests/secrets.rs), on top of tests/common:
//!
//! - [`World`]: the common `World` (stand-in nixpkgs, runner repository
//!   with its bare remote, private registry, logging shims) with one new
//!   nixpkgs commit to bump to, git calls logged too, and [`Hooks`] in
//!   front of the shims.
//! - [`Hooks`]: PATH shims that *hold* a chosen call (the Nth call of a tool
//!   whose argv starts with given words) before, during or after the real
//!   tool runs, signal that they got there, and wait to be released or killed;
//!   they also probe skopeo's `--authfile` arguments and every child's
//!   environment for a secret.
//! - [`Spawned`]: runnerctl started in its own process group, to be killed
//!   with SIGKILL as a whole.
//! - [`FaultProxy`]: an HTTP proxy in front of the registry that answers
//!   500 to chosen manifest writes, or holds one until it is dropped.
//! - Snapshots of everything a failed run must leave alone.
//!
//! One file per topic: `hooks.rs`, `spawned.rs`, `world.rs` (with the
//! snapshots), `proxy.rs`, `files.rs`.
// Each test binary that declares this module uses a different part of it:
// with the module split by topic, every file still has items that some of
// those binaries leave unused, so the lint is off here (items that no
// binary uses are removed by hand).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
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

mod hooks;
#[allow(unused_imports)] // each test binary uses a different part
pub use hooks::*;
mod spawned;
#[allow(unused_imports)] // each test binary uses a different part
pub use spawned::*;
mod world;
#[allow(unused_imports)] // each test binary uses a different part
pub use world::*;
// This World, not common's (which it holds).
#[allow(unused_imports)] // each test binary uses a different part
pub use world::World;
mod proxy;
#[allow(unused_imports)] // each test binary uses a different part
pub use proxy::*;
mod files;
#[allow(unused_imports)] // each test binary uses a different part
pub use files::*;
