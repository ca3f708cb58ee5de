//! The one place that runs external commands.
//!
//! Every child process goes through [`Runner::run`]: it logs the argv, streams
//! stderr line by line to the progress renderer and to the run log, keeps a
//! tail for diagnostics, and turns failures into a typed [`ToolError`] that
//! tells "could not start" apart from "ran and failed".

pub mod children;
pub mod engine;
pub mod git;
pub mod nix;
pub mod skopeo;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use miette::Diagnostic;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::progress::{Event, Reporter};

/// How many lines of a failed child's output a diagnostic shows.
pub const TAIL_LINES: usize = 20;
/// The longest line of a child's output a diagnostic quotes (characters).
pub const MAX_LINE: usize = 500;

/// Environment variables that carry credentials. They are removed from every
/// child's environment: credentials reach skopeo only through `--authfile`.
pub const SECRET_ENV: &[&str] = &[
    "RUNNERCTL_REGISTRY_PASSWORD",
    "RUNNERCTL_REGISTRY_USER",
    "REGISTRY_AUTH_FILE",
];

/// One external command: a program and a real argv, never a shell string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub stdout_file: Option<PathBuf>,
    /// Decodes child stderr lines before they reach the tail and the log
    /// (used for Nix's `--log-format internal-json`).
    pub stderr_format: StderrFormat,
    /// Stream stdout line by line as progress (skopeo's `Copying blob …`)
    /// while still capturing it.
    pub stdout_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StderrFormat {
    #[default]
    Text,
    NixInternalJson,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            stdout_file: None,
            stderr_format: StderrFormat::Text,
            stdout_progress: false,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Send the child's stdout to a file instead of capturing it.
    pub fn stdout_to(mut self, file: impl Into<PathBuf>) -> Self {
        self.stdout_file = Some(file.into());
        self
    }

    /// skopeo copy: report each blob it copies as push progress.
    pub fn skopeo_progress(mut self) -> Self {
        self.stdout_progress = true;
        self
    }

    pub fn nix_log(mut self) -> Self {
        self.stderr_format = StderrFormat::NixInternalJson;
        self
    }

    /// The short program name, e.g. `nix`.
    pub fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.to_string_lossy().into_owned())
    }

    /// The command as a person would type it (for plans, logs and errors).
    pub fn display(&self) -> String {
        let mut out = self.name();
        for arg in &self.args {
            out.push(' ');
            out.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        if let Some(file) = &self.stdout_file {
            out.push_str(" > ");
            out.push_str(&shell_quote(&file.to_string_lossy()));
        }
        out
    }
}

/// Quote a word for display the way a POSIX shell would need it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '_' | '.' | '/' | ':' | '=' | '@' | '#' | ',' | '+' | '%'
                )
        });
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr_tail: Vec<String>,
    pub code: Option<i32>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

#[derive(Debug, Error, Diagnostic)]
pub enum ToolError {
    #[error("could not start `{program}`: {source}")]
    #[diagnostic(code(runnerctl::tool::spawn))]
    Spawn {
        program: String,
        command: String,
        #[source]
        source: std::io::Error,
        #[help]
        help: String,
    },

    #[error("`{command}` failed ({status})\n{}", format_tail(.tail))]
    #[diagnostic(code(runnerctl::tool::failed))]
    Failed {
        program: String,
        command: String,
        status: String,
        tail: Vec<String>,
        #[help]
        help: Option<String>,
    },

    #[error("`{command}` printed output runnerctl could not read: {reason}")]
    #[diagnostic(
        code(runnerctl::tool::output),
        help("this usually means an unsupported version of the tool; run the command by hand to see what it prints")
    )]
    BadOutput { command: String, reason: String },

    /// skopeo ran and failed; its stderr says why (see [`skopeo::classify`]).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Skopeo(Box<skopeo::SkopeoFailed>),
}

impl ToolError {
    pub fn with_help(mut self, text: impl Into<String>) -> Self {
        match &mut self {
            ToolError::Failed { help, .. } => *help = Some(text.into()),
            ToolError::Spawn { help, .. } => *help = text.into(),
            ToolError::Skopeo(failed) => failed.help = text.into(),
            ToolError::BadOutput { .. } => {}
        }
        self
    }
}

fn format_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return "(it printed nothing on stderr)".to_string();
    }
    let mut out = format!("last {} lines of its output:", tail.len());
    for line in tail {
        out.push_str("\n  │ ");
        out.push_str(line);
    }
    out
}

/// Runs commands: one per call, logged, streamed, typed.
#[derive(Clone)]
pub struct Runner {
    reporter: Reporter,
    log: Option<Arc<Mutex<File>>>,
    /// Child warnings already shown (Nix repeats its own on every call).
    warned: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Runner {
    pub fn new(reporter: Reporter) -> Self {
        Runner {
            reporter,
            log: None,
            warned: Arc::default(),
        }
    }

    /// Keep a full log of every command and its output in `path`.
    pub fn with_log(mut self, path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.log = Some(Arc::new(Mutex::new(file)));
        Ok(self)
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    fn log_line(&self, line: &str) {
        if let Some(log) = &self.log {
            if let Ok(mut file) = log.lock() {
                let _ = writeln!(file, "{line}");
            }
        }
    }

    /// Shows a child's warning once per run, as a warning: whether the
    /// command then fails is up to its exit status, never to the warning.
    fn child_warning(&self, program: &str, text: &str) {
        let text = text.trim();
        // Nix's notices that it wrote a lock file are reported by the update
        // stage itself (the input diff).
        if text.is_empty() || text.contains(" lock file '") {
            return;
        }
        let key = format!("{program}: {text}");
        let new = self
            .warned
            .lock()
            .is_ok_and(|mut seen| seen.insert(key.clone()));
        if new {
            self.reporter.emit(Event::Warning(key));
        }
    }

    /// Run and require exit status 0.
    pub async fn run(&self, cmd: &Cmd) -> Result<Output, ToolError> {
        let out = self.run_unchecked(cmd).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(failed(cmd, &out))
        }
    }

    /// Run and return whatever happened; only a failure to start is an error.
    pub async fn run_unchecked(&self, cmd: &Cmd) -> Result<Output, ToolError> {
        // Let a signal that arrived be seen first: after SIGINT, SIGTERM
        // or SIGHUP no command starts.
        tokio::task::yield_now().await;
        if let Some(signal) = children::interrupted() {
            return Err(ToolError::Spawn {
                program: cmd.name(),
                command: cmd.display(),
                source: std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    format!(
                        "runnerctl was interrupted by {}",
                        children::signal_name(signal)
                    ),
                ),
                help: "run the same command again to resume".into(),
            });
        }
        self.spawn_and_wait(cmd).await
    }

    /// Run a command that undoes what a stage made (a container, a
    /// temporary image name): it runs after a signal too, when no other
    /// command starts.
    pub async fn run_cleanup(&self, cmd: &Cmd) -> Result<Output, ToolError> {
        self.spawn_and_wait(cmd).await
    }

    async fn spawn_and_wait(&self, cmd: &Cmd) -> Result<Output, ToolError> {
        let display = cmd.display();
        self.log_line(&format!("$ {display}"));
        self.reporter.emit(Event::Command {
            command: display.clone(),
        });

        let mut command = tokio::process::Command::new(&cmd.program);
        command.args(&cmd.args);
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        for key in SECRET_ENV {
            command.env_remove(key);
        }
        command.stdin(Stdio::null());
        command.stderr(Stdio::piped());
        let stdout_file = match &cmd.stdout_file {
            Some(path) => Some(File::create(path).map_err(|source| spawn_error(cmd, source))?),
            None => None,
        };
        match stdout_file {
            Some(file) => command.stdout(Stdio::from(file)),
            None => command.stdout(Stdio::piped()),
        };
        command.kill_on_drop(true);

        let mut child = command.spawn().map_err(|source| spawn_error(cmd, source))?;
        let stderr = child.stderr.take();
        let stdout = child.stdout.take();

        let progress = cmd
            .stdout_progress
            .then(|| (self.reporter.clone(), cmd.name()));
        let stdout_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            match (stdout, progress) {
                (Some(out), Some((reporter, program))) => {
                    let mut lines = BufReader::new(out).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.starts_with("Copying blob ") {
                            reporter.emit(Event::Push(crate::progress::PushEvent::BlobCopied {
                                skipped: line.contains("skipped"),
                            }));
                        }
                        reporter.emit(Event::ChildLine {
                            program: program.clone(),
                            line: line.clone(),
                        });
                        buf.extend_from_slice(line.as_bytes());
                        buf.push(b'\n');
                    }
                }
                (Some(mut out), None) => {
                    let _ = out.read_to_end(&mut buf).await;
                }
                (None, _) => {}
            }
            buf
        });

        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
        if let Some(stderr) = stderr {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(raw)) = lines.next_line().await {
                let mut warning = false;
                let decoded = match cmd.stderr_format {
                    StderrFormat::Text => Some(raw),
                    StderrFormat::NixInternalJson => {
                        match crate::progress::nix_log::parse_line(&raw) {
                            Some(msg) => {
                                warning = msg.is_warning();
                                let text = msg.text();
                                self.reporter.emit(Event::Nix(msg));
                                text
                            }
                            None => Some(raw),
                        }
                    }
                };
                if let Some(line) = decoded {
                    let plain = crate::progress::nix_log::strip_ansi(&line);
                    if let Some(rest) = plain.strip_prefix("warning:") {
                        self.child_warning(&cmd.name(), rest);
                    } else if warning {
                        self.child_warning(&cmd.name(), &plain);
                    }
                    self.log_line(&line);
                    self.reporter.emit(Event::ChildLine {
                        program: cmd.name(),
                        line: line.clone(),
                    });
                    tail.push_back(crate::diagnostic::bound(&line, MAX_LINE));
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|source| spawn_error(cmd, source))?;
        let stdout = stdout_task.await.unwrap_or_default();
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        self.log_line(&format!("# exit: {status}"));
        Ok(Output {
            stdout,
            stderr_tail: tail.into_iter().collect(),
            code: status.code(),
        })
    }
}

fn spawn_error(cmd: &Cmd, source: std::io::Error) -> ToolError {
    let program = cmd.name();
    ToolError::Spawn {
        help: install_hint(&program),
        program,
        command: cmd.display(),
        source,
    }
}

/// A failure of a command that did run.
pub fn failed(cmd: &Cmd, out: &Output) -> ToolError {
    let status = match out.code {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    };
    ToolError::Failed {
        program: cmd.name(),
        command: cmd.display(),
        status,
        tail: out.stderr_tail.clone(),
        help: None,
    }
}

/// How to get a missing tool.
pub fn install_hint(program: &str) -> String {
    match program {
        "nix" => "install Nix (https://nixos.org/download, or `apt-get install nix-bin` on Debian/Ubuntu), or run runnerctl inside `nix develop`".to_string(),
        "skopeo" => "install skopeo: `apt-get install skopeo` on Debian/Ubuntu, `nix profile install nixpkgs#skopeo`, or run runnerctl inside `nix develop`".to_string(),
        "git" => "install git: `apt-get install git` on Debian/Ubuntu, or `nix profile install nixpkgs#git`".to_string(),
        other => format!("make sure `{other}` is installed and on PATH"),
    }
}
