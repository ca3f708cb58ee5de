//! Resolved options: what the CLI and environment asked for, validated.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::auth::{AuthError, Credentials};
use crate::cli::{Common, RunArgs, SmokeMode};
use crate::image::reference::{ImageRef, Tag, TagTemplate, DEFAULT_TAGS};
use crate::progress::{ProgressMode, Verbosity};
use crate::system::System;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bump,
    Release,
    Promote,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bump => "bump",
            Mode::Release => "release",
            Mode::Promote => "promote",
        }
    }
}

/// Paths every image must contain, unless replaced: what a job container
/// runs (bash for `run:` steps, node for JavaScript actions, nix, git,
/// curl) and what scripts in it expect (`#!/bin/sh`, `#!/usr/bin/env`).
pub const DEFAULT_REQUIRED_PATHS: &[&str] = &[
    "bin/bash",
    "bin/sh",
    "usr/bin/env",
    "bin/nix",
    "bin/node",
    "bin/git",
    "bin/curl",
];

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub enabled: bool,
    pub required_paths: Vec<String>,
    /// Check Env (PATH, SSL_CERT_FILE, NIX_SSL_CERT_FILE, cert file present),
    /// Cmd, and nix.conf features.
    pub check_config: bool,
}

/// The smoke stage: when it runs and what it checks.
#[derive(Debug, Clone)]
pub struct SmokeConfig {
    pub mode: SmokeMode,
    pub checks: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub json: bool,
    pub progress: ProgressMode,
    pub verbosity: Verbosity,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub flake: PathBuf,
    pub attr: String,
    /// `--system`: the systems to build for, each as
    /// `packages.SYSTEM.ATTR` (empty: this machine's, as `ATTR`).
    pub systems: Vec<System>,
    pub input: String,
    pub update_inputs: Vec<String>,
    pub image: ImageRef,
    pub tag_templates: Vec<TagTemplate>,
    pub tls_verify: bool,
    /// The user's containers policy (--policy); None: runnerctl's own.
    pub policy: Option<PathBuf>,
    /// How long the registry may take to answer one request.
    pub registry_timeout: std::time::Duration,
    pub commit_message: String,
    pub git_push: bool,
    /// Build despite uncommitted changes to tracked files (not flake.lock).
    pub allow_dirty: bool,
    pub nix_tag: bool,
    /// How new layers are compressed.
    pub codec: crate::image::codec::Codec,
    pub verify: VerifyConfig,
    pub smoke: SmokeConfig,
    /// Push only the content tag and the candidate tag; the floating tags
    /// wait for `runnerctl promote`.
    pub hold: bool,
    /// The tag a held image is pushed under (and promote checks).
    pub candidate_tag: Tag,
    pub dry_run: bool,
    pub reset_state: bool,
    pub state_dir: PathBuf,
    pub output: Output,
    pub credentials: Credentials,
}

#[derive(Debug, Error, Diagnostic)]
pub enum ConfigError {
    #[error("the flake directory {} does not exist", path.display())]
    #[diagnostic(
        code(runnerctl::config::flake_dir),
        help("pass the directory that holds flake.nix with -C/--flake, or set RUNNERCTL_FLAKE")
    )]
    FlakeDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} has no flake.nix", path.display())]
    #[diagnostic(
        code(runnerctl::config::no_flake),
        help("run runnerctl in the image repository, or pass its directory with -C/--flake")
    )]
    NoFlake { path: PathBuf },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(#[from] crate::image::reference::ImageRefError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Tag(#[from] crate::image::reference::TagError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Auth(#[from] AuthError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    CompressionLevel(#[from] crate::image::codec::LevelError),

    #[error("the state dir {} is the flake's directory or contains it", state_dir.display())]
    #[diagnostic(
        code(runnerctl::config::state_dir),
        help("runnerctl keeps its state, logs and a catch-all .gitignore there: pass a directory of its own, e.g. --state-dir .runnerctl (the default)")
    )]
    StateDirHoldsFlake { state_dir: PathBuf },

    #[error("--hold needs the content tag nix-<hash>, and --no-nix-tag turns it off")]
    #[diagnostic(
        code(runnerctl::config::hold_without_nix_tag),
        help("drop --no-nix-tag (or RUNNERCTL_NO_NIX_TAG): `runnerctl promote` finds a held image by its nix-<hash> tag")
    )]
    HoldWithoutNixTag,

    #[error("--system {systems} builds an image per system, and --no-nix-tag turns off the content tags they are found by")]
    #[diagnostic(
        code(runnerctl::config::systems_without_nix_tag),
        help("drop --no-nix-tag (or RUNNERCTL_NO_NIX_TAG): each system's image keeps its own nix-<hash> tag, so a rerun skips the systems already pushed and the index is written only when all are there")
    )]
    SystemsWithoutNixTag { systems: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    System(#[from] crate::system::UnknownSystem),

    #[error("the candidate tag `{tag}` is also one of the floating tags")]
    #[diagnostic(
        code(runnerctl::config::candidate_tag),
        help("a held image must not move a floating tag: pick another --candidate-tag (default `candidate`)")
    )]
    CandidateIsFloating { tag: String },

    #[error("the smoke check list is empty")]
    #[diagnostic(
        code(runnerctl::config::smoke_checks),
        help("--smoke-no-defaults replaces the default checks: add your own with --smoke-cmd, or turn the smoke test off with --smoke never")
    )]
    NoSmokeChecks,

    #[error("the commit message template has a line break")]
    #[diagnostic(
        code(runnerctl::config::commit_message),
        help("--commit-message is the subject line only; runnerctl writes the body (the input changes)")
    )]
    CommitNewline,

    #[error("the commit message template has a `{{` that is never closed")]
    #[diagnostic(
        code(runnerctl::config::commit_message),
        help("write the placeholder as {{date}}")
    )]
    CommitUnclosed,

    #[error("the commit message template is empty")]
    #[diagnostic(
        code(runnerctl::config::commit_message),
        help("pass a subject with --commit-message, e.g. \"chore(ci): Update nixos to {{date}}\"")
    )]
    EmptyCommitMessage,

    #[error("the commit message template uses {{{name}}}, which runnerctl does not know")]
    #[diagnostic(
        code(runnerctl::config::commit_message),
        help("the only placeholder is {{date}}")
    )]
    CommitPlaceholder { name: String },
}

pub fn output(common: &Common) -> Output {
    Output {
        json: common.json,
        progress: common.progress,
        verbosity: if common.quiet {
            Verbosity::Quiet
        } else if common.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        },
    }
}

/// The flake dir, absolute, and the state dir.
pub fn dirs(common: &Common) -> Result<(PathBuf, PathBuf), ConfigError> {
    let flake = std::fs::canonicalize(&common.flake).map_err(|source| ConfigError::FlakeDir {
        path: common.flake.clone(),
        source,
    })?;
    let state_dir = match &common.state_dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .unwrap_or_else(|_| dir.clone()),
        None => flake.join(".runnerctl"),
    };
    Ok((flake, state_dir))
}

impl Config {
    pub fn resolve(mode: Mode, args: &RunArgs) -> Result<Config, ConfigError> {
        let (flake, state_dir) = dirs(&args.common)?;
        let resolved = std::fs::canonicalize(&state_dir).unwrap_or_else(|_| state_dir.clone());
        if flake.starts_with(&resolved) || flake.starts_with(&state_dir) {
            return Err(ConfigError::StateDirHoldsFlake { state_dir });
        }
        if !flake.join("flake.nix").is_file() {
            return Err(ConfigError::NoFlake { path: flake });
        }
        let image = match &args.destination.image {
            Some(text) => text.parse::<ImageRef>()?,
            None => ImageRef::Oci {
                dir: state_dir.join("oci"),
            },
        };
        // An empty RUNNERCTL_TAGS means the default tags (an explicit
        // `--tag ''` stays an invalid tag).
        let empty_env = std::env::var_os("RUNNERCTL_TAGS").is_some_and(|v| v.is_empty());
        let given: Vec<String> = if empty_env && args.tags.iter().all(|t| t.is_empty()) {
            Vec::new()
        } else {
            args.tags.clone()
        };
        let templates: Vec<String> = if given.is_empty() {
            DEFAULT_TAGS.iter().map(|t| t.to_string()).collect()
        } else {
            given
        };
        let tag_templates = templates
            .into_iter()
            .map(TagTemplate::new)
            .collect::<Vec<_>>();
        // Check the templates now with a sample date, so a bad one fails
        // before anything runs.
        for template in &tag_templates {
            template.expand("19700101")?;
        }
        check_commit_template(&args.commit_message)?;
        let mut required_paths: Vec<String> = if args.verify_no_defaults {
            Vec::new()
        } else {
            DEFAULT_REQUIRED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        for extra in &args.verify_require {
            let extra = extra.trim().trim_start_matches('/').to_string();
            if !extra.is_empty() && !required_paths.contains(&extra) {
                required_paths.push(extra);
            }
        }
        let candidate_tag = Tag::parse(&args.candidate_tag)?;
        if tag_templates
            .iter()
            .any(|t| t.as_str() == candidate_tag.as_str())
        {
            return Err(ConfigError::CandidateIsFloating {
                tag: candidate_tag.to_string(),
            });
        }
        if args.hold && args.no_nix_tag {
            return Err(ConfigError::HoldWithoutNixTag);
        }
        let systems = crate::system::parse_list(&args.systems)?;
        if systems.len() > 1 && args.no_nix_tag {
            let names: Vec<&str> = systems.iter().map(System::as_str).collect();
            return Err(ConfigError::SystemsWithoutNixTag {
                systems: names.join(","),
            });
        }
        let smoke = smoke_config(args)?;
        Ok(Config {
            mode,
            flake,
            attr: args.attr.clone(),
            systems,
            input: args.input.clone(),
            update_inputs: args.update_inputs.clone(),
            image,
            tag_templates,
            tls_verify: args.destination.tls_verify,
            policy: args.policy.clone(),
            registry_timeout: std::time::Duration::from_secs(args.destination.registry_timeout),
            commit_message: args.commit_message.clone(),
            git_push: !args.no_git_push,
            allow_dirty: args.allow_dirty,
            nix_tag: !args.no_nix_tag,
            codec: crate::image::codec::Codec::new(args.compression, args.compression_level)?,
            verify: VerifyConfig {
                enabled: !args.no_verify,
                required_paths,
                check_config: !args.verify_no_defaults,
            },
            smoke,
            hold: args.hold,
            candidate_tag,
            dry_run: args.dry_run,
            reset_state: args.reset_state,
            state_dir,
            output: output(&args.common),
            credentials: Credentials::from_env()?,
        })
    }

    /// Several systems: their images are published under one index.
    pub fn multi_arch(&self) -> bool {
        self.systems.len() > 1
    }

    /// What to build: each system's `packages.SYSTEM.ATTR` with
    /// `--system`, else `ATTR` for this machine.
    pub fn builds(&self) -> Vec<(Option<System>, String)> {
        if self.systems.is_empty() {
            return vec![(None, self.attr.clone())];
        }
        self.systems
            .iter()
            .map(|s| (Some(s.clone()), format!("packages.{s}.{}", self.attr)))
            .collect()
    }

    pub fn lock_path(&self) -> PathBuf {
        self.flake.join("flake.lock")
    }

    pub fn subject(&self, date: &str) -> String {
        self.commit_message.replace("{date}", date)
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{}.log", self.mode.as_str()))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    pub fn gc_root(&self) -> PathBuf {
        self.state_dir.join("gcroots").join(&self.attr)
    }

    pub fn flake_dir(&self) -> &Path {
        &self.flake
    }
}

fn smoke_config(args: &RunArgs) -> Result<SmokeConfig, ConfigError> {
    let mut checks: Vec<String> = if args.smoke_no_defaults {
        Vec::new()
    } else {
        crate::image::smoke::DEFAULT_CHECKS
            .iter()
            .map(|c| c.to_string())
            .collect()
    };
    for extra in &args.smoke_cmds {
        let extra = extra.trim();
        if !extra.is_empty() && !checks.iter().any(|c| c == extra) {
            checks.push(extra.to_string());
        }
    }
    if checks.is_empty() && args.smoke != SmokeMode::Never {
        return Err(ConfigError::NoSmokeChecks);
    }
    Ok(SmokeConfig {
        mode: args.smoke,
        checks,
    })
}

fn check_commit_template(template: &str) -> Result<(), ConfigError> {
    if template.trim().is_empty() {
        return Err(ConfigError::EmptyCommitMessage);
    }
    if template.contains(['\n', '\r']) {
        return Err(ConfigError::CommitNewline);
    }
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                if name != "date" {
                    return Err(ConfigError::CommitPlaceholder {
                        name: name.to_string(),
                    });
                }
                rest = &after[end + 1..];
            }
            None => return Err(ConfigError::CommitUnclosed),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_templates() {
        assert!(check_commit_template("chore(ci): Update nixos to {date}").is_ok());
        assert!(matches!(
            check_commit_template("  "),
            Err(ConfigError::EmptyCommitMessage)
        ));
        assert!(matches!(
            check_commit_template("bump {rev}"),
            Err(ConfigError::CommitPlaceholder { name }) if name == "rev"
        ));
        assert!(matches!(
            check_commit_template("subject\n\nbody"),
            Err(ConfigError::CommitNewline)
        ));
        assert!(matches!(
            check_commit_template("Update to {date"),
            Err(ConfigError::CommitUnclosed)
        ));
    }
}
