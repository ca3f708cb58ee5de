//! The saved state: a versioned JSON file in the state dir, written
//! atomically, guarded by an exclusive run lock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Mode;
use crate::flake_lock::span::offset_of;
pub use crate::report::Outcome;

pub const STATE_VERSION: u32 = 1;
pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageStatus {
    Running,
    Done,
    Skipped,
    Failed,
    Planned,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Running => "running",
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::Planned => "planned",
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            StageStatus::Done => "✔",
            StageStatus::Skipped => "○",
            StageStatus::Failed => "✘",
            StageStatus::Planned => "…",
            StageStatus::Running => "·",
        }
    }
}

/// What a stage produced. Every field is optional: each stage fills its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// With several systems: `SYSTEM DIGEST` of each one's image (`digest`
    /// is then the index's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub status: StageStatus,
    /// A hash of the inputs the stage's result depends on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub outputs: Outputs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// An image pushed from a given out path: lets a later run know the digest
/// to expect without pushing again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub pushed_at: String,
}

/// The command a state records a run of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    Bump,
    Release,
    Promote,
    Rollback,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Bump => "bump",
            Command::Release => "release",
            Command::Promote => "promote",
            Command::Rollback => "rollback",
        }
    }
}

impl From<Mode> for Command {
    fn from(mode: Mode) -> Command {
        match mode {
            Mode::Bump => Command::Bump,
            Mode::Release => Command::Release,
            Mode::Promote => Command::Promote,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The last run's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How it ended; absent while a run is under way or after it was
    /// killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
    /// Out path → what was pushed from it.
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
    /// A bump that updated flake.lock but has not finished. Kept across
    /// other commands (a `release` in between does not lose it), cleared when
    /// a bump finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_bump: Option<PendingBump>,
    /// The floating tags were rolled back (`runnerctl rollback`) and no
    /// promote has moved them since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// The last `runnerctl prune` (its plan and each delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<crate::prune::PruneRecord>,
}

/// A rollback: which tags were moved back to which image, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub image: String,
    /// What the user named: a tag or a digest.
    pub target: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBump {
    /// sha256 of the flake.lock the update wrote, saved before the lock
    /// replaced flake.lock. None only in state from older versions; such a
    /// pending bump adopts no dirty flake.lock.
    #[serde(default)]
    pub lock_hash: Option<String>,
    /// The update stage's fingerprint (flake.nix, inputs to update).
    pub fingerprint: Option<String>,
    /// The bump commit, once made (and after a rebase, the rebased one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// HEAD just before `git commit` ran: a run killed right after the
    /// commit can still recognise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_parent: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            command: None,
            started_at: None,
            finished_at: None,
            outcome: None,
            stages: BTreeMap::new(),
            images: BTreeMap::new(),
            pending_bump: None,
            rollback: None,
            prune: None,
        }
    }
}

#[derive(Debug, Error, Diagnostic)]
pub enum StateError {
    #[error("could not read the state file {}", path.display())]
    #[diagnostic(
        code(runnerctl::state::io),
        help("check the permissions of the state dir, or point --state-dir elsewhere")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the state file {} is corrupt: {reason}", path.display())]
    #[diagnostic(
        code(runnerctl::state::corrupt),
        help("run again with --reset-state to discard it (the stages will check the world again and redo only what is missing)")
    )]
    Corrupt {
        path: PathBuf,
        reason: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("here")]
        span: SourceSpan,
    },

    #[error("the state file {} has version {found}, this runnerctl knows version {STATE_VERSION}", path.display())]
    #[diagnostic(
        code(runnerctl::state::version),
        help("it was written by another runnerctl; use that version, or run with --reset-state to discard the saved state")
    )]
    UnknownVersion { path: PathBuf, found: u64 },

    #[error("could not write the state file {}", path.display())]
    #[diagnostic(
        code(runnerctl::state::write),
        help("check free space and the permissions of the state dir")
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("another runnerctl run{} holds the lock on {}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display())]
    #[diagnostic(
        code(runnerctl::state::locked),
        help("wait for that run to finish; a lock left by a killed run is released automatically")
    )]
    Locked { path: PathBuf, pid: Option<u32> },
}

/// Parse a state file's text.
pub fn parse(text: &str, path: &Path) -> Result<State, StateError> {
    let corrupt = |reason: String, line: usize, column: usize| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
        span: offset_of(text, line, column).into(),
        src: NamedSource::new(path.display().to_string(), text.to_string()),
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(e.to_string(), e.line(), e.column()))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v == u64::from(STATE_VERSION) => {}
        Some(found) => {
            return Err(StateError::UnknownVersion {
                path: path.to_path_buf(),
                found,
            })
        }
        None => return Err(corrupt("no \"version\" field".to_string(), 1, 1)),
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string(), 1, 1))
}

/// Load the state, or a fresh one if there is none.
pub fn load(dir: &Path) -> Result<State, StateError> {
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, &path),
        // Random bytes are a corrupt file, not an I/O problem.
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let at = if text.is_char_boundary(at) { at } else { 0 };
            Err(StateError::Corrupt {
                reason: format!("it is not UTF-8 text (byte {at})"),
                span: SourceSpan::new(at.into(), 0),
                src: NamedSource::new(path.display().to_string(), text),
                path,
            })
        }
    }
}

/// Write the state atomically: a temp file in the same dir, fsync, rename.
pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let write = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    ensure_dir(dir).map_err(write)?;
    let mut text =
        serde_json::to_string_pretty(state).map_err(|e| write(std::io::Error::other(e)))?;
    text.push('\n');
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
    let (head, tail) = text.as_bytes().split_at(text.len() / 2);
    tmp.write_all(head).map_err(write)?;
    pause_inside_save_for_tests();
    tmp.write_all(tail).map_err(write)?;
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(&path).map_err(|e| write(e.error))?;
    Ok(())
}

/// Test-only fault hook: with `RUNNERCTL_TEST_PAUSE_SAVE=N:FILE`, the Nth
/// save of this process stops after writing half of the document, creates
/// FILE and sleeps, so that tests/faults.rs can read state.json and kill -9
/// runnerctl in the middle of a save. Unset, it costs one env lookup.
fn pause_inside_save_for_tests() {
    static SAVES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nth = SAVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let Some(spec) = std::env::var_os("RUNNERCTL_TEST_PAUSE_SAVE") else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some((n, file)) = spec.split_once(':') else {
        return;
    };
    if n.parse() == Ok(nth) && std::fs::write(file, nth.to_string()).is_ok() {
        std::thread::sleep(std::time::Duration::from_secs(300));
    }
}

/// Create the state dir with a `.gitignore` so it never shows up in git.
/// The ignore file is written only into a directory runnerctl owns: one it
/// creates, its default `.runnerctl`, or one that already holds its state
/// or lock; never into a directory of the user's.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir)?;
    let ours = !existed
        || dir.file_name().is_some_and(|n| n == ".runnerctl")
        || dir.join(STATE_FILE).exists()
        || dir.join(LOCK_FILE).exists();
    let ignore = dir.join(".gitignore");
    if ours && !ignore.exists() {
        std::fs::write(ignore, "# written by runnerctl\n*\n")?;
    }
    Ok(())
}

/// The exclusive run lock. Released when dropped, or by the OS when the
/// process dies, so a killed run never blocks the next one.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    /// The flake checkout's directory, flock'ed.
    _checkout: File,
}

pub fn lock(dir: &Path, flake: &Path) -> Result<RunLock, StateError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StateError::Io {
        path: path.clone(),
        source,
    };
    ensure_dir(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StateError::Locked {
                pid: text.trim().parse().ok(),
                path,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    // One run per flake checkout, whatever its state dir: a lock on the
    // checkout's directory itself.
    let checkout = std::fs::File::open(flake).map_err(|source| StateError::Io {
        path: flake.to_path_buf(),
        source,
    })?;
    match checkout.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StateError::Locked {
                pid: None,
                path: flake.to_path_buf(),
            })
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StateError::Io {
                path: flake.to_path_buf(),
                source,
            })
        }
    }
    Ok(RunLock {
        _file: file,
        _checkout: checkout,
    })
}

/// Now, as RFC 3339 UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = State {
            command: Some(Command::Bump),
            ..State::default()
        };
        state.stages.insert(
            "build".into(),
            StageRecord {
                status: StageStatus::Done,
                fingerprint: Some("abc".into()),
                outputs: Outputs {
                    out_path: Some("/nix/store/x".into()),
                    ..Outputs::default()
                },
                note: None,
                started_at: None,
                finished_at: None,
                duration_ms: Some(3),
            },
        );
        save(dir.path(), &state).expect("save");
        assert_eq!(load(dir.path()).expect("load"), state);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != STATE_FILE && n != ".gitignore")
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn missing_file_is_fresh_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), State::default());
    }

    #[test]
    fn corrupt_and_unknown_versions_are_errors() {
        let p = Path::new("state.json");
        assert!(matches!(
            parse("{\"version\": 1,", p),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            parse("{\"version\": 99}", p),
            Err(StateError::UnknownVersion { found: 99, .. })
        ));
        assert!(matches!(parse("[]", p), Err(StateError::Corrupt { .. })));
        assert!(matches!(
            parse("{\"version\": 1, \"stages\": 3}", p),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn second_lock_fails_naming_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock(dir.path(), dir.path()).expect("first lock");
        match lock(dir.path(), dir.path()) {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        lock(dir.path(), dir.path()).expect("lock after release");
    }

    /// Parse, and if it fails, render the diagnostic the way main does:
    /// neither may panic, and a span must lie inside the text.
    fn parse_and_render(text: &str) {
        if let Err(err) = parse(text, Path::new("s.json")) {
            if let StateError::Corrupt { span, .. } = &err {
                assert!(span.offset() <= text.len());
                assert!(
                    text.is_char_boundary(span.offset()),
                    "span not on a char boundary"
                );
            }
            let mut out = String::new();
            let report = miette::Report::new(err);
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, report.as_ref());
            assert!(!out.is_empty());
        }
    }

    fn sample_state() -> String {
        let mut state = State {
            command: Some(Command::Bump),
            outcome: Some(Outcome::Failure),
            ..State::default()
        };
        state.stages.insert(
            "push".into(),
            StageRecord {
                status: StageStatus::Failed,
                fingerprint: Some("/nix/store/x".into()),
                outputs: Outputs {
                    digest: Some("sha256:00".into()),
                    tags: vec!["latest".into(), "20260705".into()],
                    ..Outputs::default()
                },
                note: Some("registry said ✘ 500".into()),
                started_at: Some(now()),
                finished_at: None,
                duration_ms: Some(12),
            },
        );
        state.pending_bump = Some(PendingBump {
            lock_hash: Some("ab".into()),
            fingerprint: None,
            commit: None,
            commit_parent: None,
        });
        serde_json::to_string_pretty(&state).unwrap_or_default()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            parse_and_render(&text);
        }

        #[test]
        fn odd_versions_and_shapes_never_panic(
            version in proptest::prop_oneof![
                proptest::strategy::Just("1".to_string()),
                proptest::strategy::Just("0".to_string()),
                proptest::strategy::Just("-1".to_string()),
                proptest::strategy::Just("1.5".to_string()),
                proptest::strategy::Just("\"1\"".to_string()),
                proptest::strategy::Just("null".to_string()),
                proptest::strategy::Just("18446744073709551616".to_string()),
                "[0-9]{1,6}",
            ],
            stages in "\\PC{0,40}",
        ) {
            parse_and_render(&format!("{{\"version\": {version}, \"stages\": {stages}}}"));
            parse_and_render(&format!("{{\"version\": {version}}}"));
        }

        #[test]
        fn mutated_real_state_files_never_panic(
            edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY, 0u8..3), 1..8)
        ) {
            let mut bytes = sample_state().into_bytes();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at % bytes.len();
                match op {
                    0 => bytes[at] = byte,
                    1 => { bytes.remove(at); }
                    _ => bytes.insert(at, byte),
                }
            }
            parse_and_render(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn the_sample_state_round_trips() {
        let text = sample_state();
        let state = parse(&text, Path::new("s.json")).expect("sample parses");
        assert_eq!(state.stages["push"].outputs.tags, ["latest", "20260705"]);
    }
}
