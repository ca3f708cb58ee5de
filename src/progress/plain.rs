//! Plain, timestamped lines on stderr: for CI logs and pipes.

use std::io::Write;
use std::sync::Mutex;

use super::{format_duration, Event, Render, Verbosity};
use crate::progress::nix_log::BuildProgress;

pub struct Plain {
    verbosity: Verbosity,
    build: Mutex<BuildProgress>,
    push: Mutex<super::PushProgress>,
}

impl Plain {
    pub fn new(verbosity: Verbosity) -> Self {
        Plain {
            verbosity,
            build: Mutex::new(BuildProgress::default()),
            push: Mutex::new(super::PushProgress::default()),
        }
    }

    fn line(&self, text: &str) {
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "[{stamp}] {text}");
    }
}

impl Render for Plain {
    fn event(&self, event: &Event) {
        match event {
            Event::StageStarted { stage } => self.line(&format!("{stage}: started")),
            Event::StageFinished {
                stage,
                status,
                note,
                duration,
            } => self.line(&format!(
                "{stage}: {} in {} — {note}",
                status.as_str(),
                format_duration(*duration)
            )),
            Event::Info(text) => self.line(text),
            Event::Warning(text) if self.verbosity >= Verbosity::Normal => {
                self.line(&format!("warning: {text}"))
            }
            Event::Command { command } if self.verbosity >= Verbosity::Verbose => {
                self.line(&format!("$ {command}"))
            }
            Event::ChildLine { program, line } if self.verbosity >= Verbosity::Verbose => {
                self.line(&format!("  {program}: {line}"))
            }
            Event::BuildTargets(targets) => {
                if let Ok(mut build) = self.build.lock() {
                    build.follow(targets);
                }
            }
            Event::Nix(msg) => {
                let Ok(mut build) = self.build.lock() else {
                    return;
                };
                let before = (build.done, build.expected);
                let states: Vec<String> = build.targets.iter().map(|t| t.describe()).collect();
                build.apply(msg);
                for (target, was) in build.targets.iter().zip(&states) {
                    let now = target.describe();
                    // A phase change alone is not worth a line.
                    let phase_only = now.split(" (").next() == was.split(" (").next();
                    if now != *was && !phase_only {
                        self.line(&format!("build: {}: {now}", target.label));
                    }
                }
                if (build.done, build.expected) != before && build.expected > 0 {
                    self.line(&format!(
                        "build: {}/{} derivations",
                        build.done, build.expected
                    ));
                }
            }
            Event::Push(event) => {
                let Ok(mut push) = self.push.lock() else {
                    return;
                };
                push.apply(event);
                match event {
                    super::PushEvent::TagWritten { tag, skipped } => self.line(&format!(
                        "push: tag {tag} {}",
                        if *skipped { "already there" } else { "written" }
                    )),
                    super::PushEvent::Uploaded { .. } => {
                        self.line(&format!("push: {}", push.summary()))
                    }
                    super::PushEvent::BlobCopied { .. } if self.verbosity >= Verbosity::Verbose => {
                        self.line(&format!("push: {}", push.summary()))
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
