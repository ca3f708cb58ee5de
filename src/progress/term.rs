//! Live progress on a terminal with indicatif: one spinner line per stage.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{format_duration, Event, PushEvent, Render, Verbosity};
use crate::progress::nix_log::BuildProgress;

pub struct Term {
    verbosity: Verbosity,
    multi: MultiProgress,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bars: HashMap<&'static str, ProgressBar>,
    current: Option<&'static str>,
    build: BuildProgress,
    /// One line per followed derivation (a system's image), under the
    /// build stage's line.
    targets: Vec<ProgressBar>,
    push: super::PushProgress,
}

impl Term {
    pub fn new(verbosity: Verbosity) -> Self {
        Term {
            verbosity,
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            inner: Mutex::new(Inner::default()),
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:<10.bold} {elapsed:>4} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.cyan} {prefix:<10.bold} {elapsed:>4} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Render for Term {
    fn event(&self, event: &Event) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        match event {
            Event::StageStarted { stage } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(spinner_style());
                bar.set_prefix(*stage);
                bar.enable_steady_tick(Duration::from_millis(100));
                inner.bars.insert(stage, bar);
                inner.current = Some(stage);
            }
            Event::StageFinished {
                stage,
                status,
                note,
                duration,
            } => {
                let build = inner.build.clone();
                for (bar, target) in inner.targets.drain(..).zip(&build.targets) {
                    if !bar.is_finished() {
                        bar.finish_with_message(target.describe());
                    }
                }
                if let Some(bar) = inner.bars.get(stage) {
                    let mut note = note.clone();
                    if bar.length().is_some() && build.expected > 0 {
                        // Show where the bar ended: derivations built of expected.
                        bar.set_position(build.done);
                        bar.tick();
                        note = format!("[{}/{} derivations] {note}", build.done, build.expected);
                    }
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:<12.bold} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(format!("{} {stage}", status.symbol()));
                    bar.finish_with_message(format!(
                        "{} {:>6}  {note}",
                        status.as_str(),
                        format_duration(*duration)
                    ));
                }
                inner.current = None;
            }
            Event::Info(text) => {
                let _ = self.multi.println(text);
            }
            Event::Warning(text) if self.verbosity >= Verbosity::Normal => {
                let _ = self.multi.println(format!("warning: {text}"));
            }
            Event::Command { command } if self.verbosity >= Verbosity::Verbose => {
                let _ = self.multi.println(format!("$ {command}"));
            }
            Event::ChildLine { program, line } => {
                if self.verbosity >= Verbosity::Verbose {
                    let _ = self.multi.println(format!("  {program}: {line}"));
                }
                if let Some(bar) = inner.current.and_then(|s| inner.bars.get(s)) {
                    if inner.build.expected == 0 {
                        bar.set_message(line.clone());
                    }
                }
            }
            Event::BuildTargets(targets) => {
                inner.build.follow(targets);
                let mut after = inner.current.and_then(|s| inner.bars.get(s)).cloned();
                let mut bars = Vec::new();
                for (_, label) in targets {
                    let bar = ProgressBar::new_spinner();
                    let bar = match &after {
                        Some(previous) => self.multi.insert_after(previous, bar),
                        None => self.multi.add(bar),
                    };
                    bar.set_style(spinner_style());
                    bar.set_prefix(format!("  {label}"));
                    bar.set_message("waiting");
                    bar.enable_steady_tick(Duration::from_millis(100));
                    after = Some(bar.clone());
                    bars.push(bar);
                }
                inner.targets = bars;
            }
            Event::Nix(msg) => {
                inner.build.apply(msg);
                let progress = inner.build.clone();
                for (bar, target) in inner.targets.iter().zip(&progress.targets) {
                    if bar.is_finished() {
                        continue;
                    }
                    if target.state == crate::progress::nix_log::TargetState::Built {
                        bar.finish_with_message("built");
                    } else {
                        bar.set_message(target.describe());
                    }
                }
                if let Some(bar) = inner.current.and_then(|s| inner.bars.get(s)) {
                    if progress.expected > 0 {
                        if bar.length().is_none() {
                            bar.set_style(bar_style());
                        }
                        bar.set_length(progress.expected);
                        bar.set_position(progress.done);
                        let mut msg = String::new();
                        if let Some(current) = &progress.current {
                            msg.push_str(current);
                        }
                        if let Some(phase) = &progress.phase {
                            msg.push_str(&format!(" ({phase})"));
                        }
                        if progress.downloads_expected > 0 {
                            msg.push_str(&format!(
                                "  downloads {}/{}",
                                progress.downloads_done, progress.downloads_expected
                            ));
                        }
                        bar.set_message(msg);
                    }
                }
            }
            Event::Push(push) => {
                inner.push.apply(push);
                if let PushEvent::TagWritten { tag, skipped } = push {
                    let _ = self.multi.println(format!(
                        "  tag {tag} {}",
                        if *skipped { "already there" } else { "written" }
                    ));
                }
                let msg = inner.push.summary();
                if let Some(bar) = inner.current.and_then(|s| inner.bars.get(s)) {
                    bar.set_message(msg);
                }
            }
            _ => {}
        }
    }

    fn finish(&self) {
        // Finished stage lines stay on screen; drop anything still live,
        // and leave the cursor on a fresh line for what follows.
        if let Ok(inner) = self.inner.lock() {
            for bar in inner.bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            if !inner.bars.is_empty() {
                eprintln!();
            }
        }
    }
}
