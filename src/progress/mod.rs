//! Progress: stages send [`Event`]s, a renderer draws them.
//!
//! No stage prints on its own account. `term` draws live spinners and bars
//! with indicatif on a terminal; `plain` writes timestamped lines without
//! escape codes for CI and pipes.

pub mod nix_log;
mod plain;
mod term;

use std::sync::Arc;
use std::time::Duration;

pub use nix_log::NixMsg;

/// Which renderer to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Live bars on a terminal, plain lines otherwise.
    Auto,
    /// Live spinners and bars (indicatif).
    Term,
    /// Timestamped lines, no escape codes.
    Plain,
}

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    Normal,
    /// Also stream every child's output.
    Verbose,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StageStarted {
        stage: &'static str,
    },
    StageFinished {
        stage: &'static str,
        status: crate::state::StageStatus,
        note: String,
        duration: Duration,
    },
    Info(String),
    /// A warning: runnerctl's own, or one a child printed
    /// (`warning: …` on stderr, or a Nix log message at warning level).
    Warning(String),
    Command {
        command: String,
    },
    ChildLine {
        program: String,
        line: String,
    },
    Nix(NixMsg),
    /// A build of several images: each one's derivation and name (its
    /// system), to show one line each.
    BuildTargets(Vec<(String, String)>),
    /// Push progress: what happened to one layer or tag.
    Push(PushEvent),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushEvent {
    /// The image has this many layers.
    LayersPlanned {
        total: usize,
    },
    /// runnerctl looked at one layer: the registry has it (skipped), or it
    /// was compressed to `bytes` to be uploaded.
    LayerChecked {
        skipped: bool,
        bytes: u64,
    },
    /// skopeo copied (or skipped) one blob.
    BlobCopied {
        skipped: bool,
    },
    /// After the upload: what went over the wire.
    Uploaded {
        blobs: usize,
        bytes: u64,
    },
    TagWritten {
        tag: String,
        skipped: bool,
    },
}

/// Push progress folded from [`PushEvent`]s (shared by the renderers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushProgress {
    pub layers: usize,
    pub reused: usize,
    pub compressed: usize,
    pub compressed_bytes: u64,
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    pub uploaded_blobs: Option<usize>,
    pub sent_bytes: Option<u64>,
}

impl PushProgress {
    pub fn apply(&mut self, event: &PushEvent) {
        match event {
            PushEvent::LayersPlanned { total } => self.layers = *total,
            PushEvent::LayerChecked { skipped: true, .. } => self.reused += 1,
            PushEvent::LayerChecked {
                skipped: false,
                bytes,
            } => {
                self.compressed += 1;
                self.compressed_bytes += bytes;
            }
            PushEvent::BlobCopied { skipped: true } => self.blobs_skipped += 1,
            PushEvent::BlobCopied { skipped: false } => self.blobs_copied += 1,
            PushEvent::Uploaded { blobs, bytes } => {
                self.uploaded_blobs = Some(*blobs);
                self.sent_bytes = Some(*bytes);
            }
            PushEvent::TagWritten { .. } => {}
        }
    }

    /// `layers: 39 in the registry, 1 new (557 KiB compressed); skopeo
    /// checked 40 blobs; uploaded 2 blobs, 563 KiB`
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.layers > 0 {
            let mut layers = format!("layers: {}", self.layers);
            if self.reused + self.compressed > 0 {
                layers = format!(
                    "layers: {} in the registry, {} new ({} compressed)",
                    self.reused,
                    self.compressed,
                    indicatif::HumanBytes(self.compressed_bytes)
                );
            }
            parts.push(layers);
        }
        if self.blobs_copied + self.blobs_skipped > 0 {
            parts.push(format!(
                "skopeo checked {} blobs",
                self.blobs_copied + self.blobs_skipped
            ));
        }
        if let (Some(blobs), Some(bytes)) = (self.uploaded_blobs, self.sent_bytes) {
            parts.push(format!(
                "uploaded {blobs} blobs, {}",
                indicatif::HumanBytes(bytes)
            ));
        }
        parts.join("; ")
    }
}

/// Something that draws events.
pub trait Render: Send + Sync {
    fn event(&self, event: &Event);
    /// Stop drawing (clear live bars) before the summary is printed.
    fn finish(&self) {}
}

struct Silent;
impl Render for Silent {
    fn event(&self, _: &Event) {}
}

/// A cheap, clonable handle stages use to send events.
#[derive(Clone)]
pub struct Reporter {
    render: Arc<dyn Render>,
}

impl Reporter {
    pub fn new(mode: ProgressMode, verbosity: Verbosity) -> Self {
        let render: Arc<dyn Render> = if verbosity == Verbosity::Quiet {
            Arc::new(Silent)
        } else if use_term(mode) {
            Arc::new(term::Term::new(verbosity))
        } else {
            Arc::new(plain::Plain::new(verbosity))
        };
        Reporter { render }
    }

    pub fn silent() -> Self {
        Reporter {
            render: Arc::new(Silent),
        }
    }

    pub fn emit(&self, event: Event) {
        self.render.event(&event);
    }

    pub fn info(&self, text: impl Into<String>) {
        self.emit(Event::Info(text.into()));
    }

    pub fn finish(&self) {
        self.render.finish();
    }
}

/// Live drawing only on a real terminal, outside CI, without NO_COLOR.
fn use_term(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Plain => false,
        ProgressMode::Term => true,
        ProgressMode::Auto => colour_on_stderr(),
    }
}

/// Is stderr a terminal that wants colour and live redraws?
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
        && !env_flag("CI")
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// `1.2s`, `3m04s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_progress_summary() {
        let mut p = PushProgress::default();
        p.apply(&PushEvent::LayersPlanned { total: 3 });
        assert_eq!(p.summary(), "layers: 3");
        p.apply(&PushEvent::LayerChecked {
            skipped: true,
            bytes: 0,
        });
        p.apply(&PushEvent::LayerChecked {
            skipped: true,
            bytes: 0,
        });
        p.apply(&PushEvent::LayerChecked {
            skipped: false,
            bytes: 2048,
        });
        for _ in 0..3 {
            p.apply(&PushEvent::BlobCopied { skipped: false });
        }
        p.apply(&PushEvent::Uploaded {
            blobs: 2,
            bytes: 4096,
        });
        assert_eq!(
            p.summary(),
            "layers: 2 in the registry, 1 new (2.00 KiB compressed); skopeo checked 3 blobs; uploaded 2 blobs, 4.00 KiB"
        );
    }
}
