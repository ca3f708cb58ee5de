//! What a run publishes: the flake.lock it builds from, the date tag that
//! lock gives, and the tags that follow from it.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::config::{Config, Mode};
use crate::flake_lock::{self, DateTag, FlakeLock};
use crate::image::reference::Tag;
use crate::report::Report;

#[derive(Debug, Error, Diagnostic)]
#[error("{} is a symbolic link", path.display())]
#[diagnostic(
    code(runnerctl::lock::symlink),
    help("runnerctl updates and commits flake.lock itself: replace the link by the lock file (`cp --remove-destination \"$(readlink -f flake.lock)\" flake.lock`)")
)]
pub struct LockSymlink {
    pub path: PathBuf,
}

#[derive(Debug, Error, Diagnostic)]
#[error("could not read {}", path.display())]
#[diagnostic(
    code(runnerctl::lock::read),
    help("run runnerctl in a flake that has a flake.lock (create one with `nix flake lock`)")
)]
pub struct LockRead {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A flake.lock, parsed, and the tags it gives.
#[derive(Clone)]
pub struct Target {
    pub lock_text: String,
    pub lock: FlakeLock,
    pub date: DateTag,
    /// The tags the templates expand to, each once, in template order.
    pub tags: Vec<Tag>,
}

impl Target {
    /// The working flake.lock.
    pub fn read(cfg: &Config) -> miette::Result<Target> {
        let path = cfg.lock_path();
        // A symlink is refused before it is read: its target may be any
        // file (a diagnostic would quote it).
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(LockSymlink { path }.into());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| LockRead {
            path: path.clone(),
            source,
        })?;
        Target::parse(cfg, text, &path)
    }

    /// A lock's text (read from `path`, or made there).
    pub fn parse(cfg: &Config, text: String, path: &Path) -> miette::Result<Target> {
        let lock = flake_lock::parse(&text, path)?;
        let date = lock.date_tag(&cfg.input)?;
        let mut tags = Vec::new();
        for template in &cfg.tag_templates {
            let tag = template.expand(date.as_str())?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(Target {
            lock_text: text,
            lock,
            date,
            tags,
        })
    }

    /// A tag that names this date (`{date}` in a template): it never moves
    /// to another image.
    pub fn dated(&self, tag: &Tag) -> bool {
        tag.as_str().contains(self.date.as_str())
    }

    /// The floating tags (`latest`, `unstable`, …): those that move.
    pub fn floating(&self) -> impl Iterator<Item = &Tag> {
        self.tags.iter().filter(|t| !self.dated(t))
    }

    /// Put the date and the tags into the report.
    pub fn report(&self, cfg: &Config, report: &mut Report) {
        report.date = Some(self.date.to_string());
        // What this run points at the image (besides nix-<hash>).
        report.tags = if cfg.hold {
            vec![cfg.candidate_tag.to_string()]
        } else {
            self.tags.iter().map(|t| t.to_string()).collect()
        };
        report.commit_message = (cfg.mode == Mode::Bump).then(|| cfg.subject(self.date.as_str()));
    }
}
