//! preflight: find the tools, read the lock, check the working tree and
//! the branch, prepare credentials. Changes nothing.

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::auth;
use crate::config::Mode;
use crate::pipeline::Ctx;
use crate::progress::Event;
use crate::tool::git::Git;
use crate::tool::install_hint;
use crate::tool::nix::Nix;
use crate::tool::skopeo::Skopeo;

pub struct Preflight;

/// Files whose uncommitted changes would make the result untraceable.
pub const GUARDED_PATHS: &[&str] = &["flake.lock", "flake.nix", "nix"];

#[derive(Debug, Error, Diagnostic)]
pub enum PreflightError {
    #[error("`{tool}` was not found on PATH")]
    #[diagnostic(code(runnerctl::preflight::tool))]
    MissingTool {
        tool: &'static str,
        #[help]
        help: String,
    },

    #[error("{} is not inside a git repository", dir.display())]
    #[diagnostic(
        code(runnerctl::preflight::not_git),
        help("runnerctl commits flake.lock and Nix only sees tracked files: run it in a git checkout of the image repository")
    )]
    NotGit { dir: std::path::PathBuf },

    #[error("uncommitted changes in {}:\n{}", paths, lines.join("\n"))]
    #[diagnostic(
        code(runnerctl::preflight::dirty),
        help("commit or stash them first (`git stash`), so that the image is built from what is committed; runnerctl only ever commits flake.lock")
    )]
    Dirty { paths: String, lines: Vec<String> },

    #[error("HEAD is detached")]
    #[diagnostic(
        code(runnerctl::preflight::detached),
        help("check out the branch to bump (`git switch main`), or pass --no-git-push to commit locally only")
    )]
    Detached,

    #[error("branch `{branch}` has no upstream to push to")]
    #[diagnostic(
        code(runnerctl::preflight::no_upstream),
        help("set one with `git branch --set-upstream-to=origin/{branch}`, or pass --no-git-push to commit locally only")
    )]
    NoUpstream { branch: String },

    #[error("{upstream} has a newer flake.lock than this checkout")]
    #[diagnostic(
        code(runnerctl::preflight::behind),
        help("someone else updated the lock; pull first (`git pull --rebase`), then bump again")
    )]
    BehindOnLock { upstream: String },

    #[error("branch `{branch}` has {count} commit(s) that are not on {upstream} yet")]
    #[diagnostic(
        code(runnerctl::preflight::ahead),
        help("push or drop them first (`git push`, or `git log {upstream}..HEAD` to see them); runnerctl pushes only its own bump commit")
    )]
    Ahead {
        branch: String,
        upstream: String,
        count: u64,
    },
}

fn locate(tool: &'static str) -> Result<std::path::PathBuf, PreflightError> {
    which::which(tool).map_err(|_| PreflightError::MissingTool {
        tool,
        help: install_hint(tool),
    })
}

impl Preflight {
    /// Is HEAD the bump commit of an unfinished bump? Either the recorded
    /// one, or, for a run killed right after `git commit`, a commit on top
    /// of the recorded parent that changes flake.lock only. It is then
    /// adopted into the state.
    async fn is_our_commit(cx: &mut Ctx, git: &Git, head: Option<&str>) -> miette::Result<bool> {
        let Some(head) = head else { return Ok(false) };
        let Some(pending) = cx.state.pending_bump.clone() else {
            return Ok(false);
        };
        if pending.commit.as_deref() == Some(head) {
            return Ok(true);
        }
        let Some(parent) = pending.commit_parent else {
            return Ok(false);
        };
        if git
            .rev_parse(&cx.runner, &format!("{head}^"))
            .await?
            .as_deref()
            != Some(parent.as_str())
        {
            return Ok(false);
        }
        let files = cx
            .runner
            .run(&git.cmd(["diff", "--name-only", &parent, head, "--"]))
            .await?
            .stdout;
        let only_lock = files.lines().filter(|l| !l.is_empty()).eq(["flake.lock"]);
        if only_lock {
            if let Some(p) = &mut cx.state.pending_bump {
                p.commit = Some(head.to_string());
            }
        }
        Ok(only_lock)
    }
}

impl Stage for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn check(&self, _cx: &mut Ctx) -> miette::Result<Check> {
        Ok(Check::Todo("always runs".into()))
    }

    fn plan(&self, _cx: &Ctx) -> Vec<String> {
        Vec::new()
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        // Locate every tool before anything changes.
        let nix_path = locate("nix")?;
        let git_path = locate("git")?;
        let skopeo_path = locate("skopeo")?;
        let detected = Nix::detect(&cx.runner, nix_path).await?;
        if let Some(group) = &detected.missing_build_group {
            cx.runner.reporter().emit(Event::Warning(format!(
                "Nix is configured with build-users-group = {group}, and there is no group `{group}`: \
                 runnerctl runs Nix with an empty build-users-group (builds run as root). \
                 Create the group and its build users, or set `build-users-group =` in nix.conf, to choose yourself"
            )));
        }
        let nix = detected.nix;
        let git = Git {
            path: git_path,
            dir: cx.cfg.flake.clone(),
        };
        cx.skopeo = Some(Skopeo { path: skopeo_path });

        if git.toplevel(&cx.runner).await.is_err() {
            return Err(PreflightError::NotGit {
                dir: cx.cfg.flake.clone(),
            }
            .into());
        }

        cx.reload_lock()?;
        cx.resolve_tags()?;

        // The working tree: the guarded files must be committed, except a
        // flake.lock this tool updated in an interrupted run.
        let mut dirty = git.dirty(&cx.runner, GUARDED_PATHS).await?;
        if cx.cfg.mode == Mode::Bump {
            let current = crate::digest::sha256_hex(cx.lock_text.as_bytes());
            // Ours: the lock an unfinished bump wrote, or one it was writing
            // when it was killed (the update runs again).
            let ours = cx.state.pending_bump.as_ref().is_some_and(|p| {
                p.lock_hash.is_none() || p.lock_hash.as_deref() == Some(current.as_str())
            });
            if ours {
                dirty.retain(|line| !line.ends_with("flake.lock"));
            }
        }
        if !dirty.is_empty() {
            return Err(PreflightError::Dirty {
                paths: GUARDED_PATHS.join(", "),
                lines: dirty,
            }
            .into());
        }

        let mut note = format!("nix {}, skopeo, git", nix.version);
        if cx.cfg.mode == Mode::Bump {
            let branch = git.branch(&cx.runner).await?;
            match (&branch, cx.cfg.git_push) {
                (None, true) => return Err(PreflightError::Detached.into()),
                (Some(branch), true) => {
                    let upstream = git.upstream(&cx.runner, branch).await?.ok_or_else(|| {
                        PreflightError::NoUpstream {
                            branch: branch.clone(),
                        }
                    })?;
                    let ahead = git
                        .count(&cx.runner, &format!("{}..HEAD", upstream.tracking_ref()))
                        .await?;
                    let head = git.rev_parse(&cx.runner, "HEAD").await?;
                    let only_ours = ahead == 1
                        && head.is_some()
                        && Self::is_our_commit(cx, &git, head.as_deref()).await?;
                    if ahead > 0 && !only_ours {
                        return Err(PreflightError::Ahead {
                            branch: branch.clone(),
                            upstream: upstream.display(),
                            count: ahead,
                        }
                        .into());
                    }
                    note.push_str(&format!("; branch {branch} → {}", upstream.display()));
                    cx.upstream = Some(upstream);
                }
                (Some(branch), false) => note.push_str(&format!("; branch {branch} (no git push)")),
                (None, false) => note.push_str("; detached HEAD (no git push)"),
            }
            cx.branch = branch;
        }

        cx.authfile = auth::auth_file(&cx.cfg.credentials, cx.cfg.image.registry())?;
        if cx.authfile.is_some() {
            note.push_str(&format!(
                "; registry credentials: {}",
                cx.cfg.credentials.describe()
            ));
        }
        cx.nix = Some(nix);
        cx.git = Some(git);
        Ok(Done::new(note))
    }
}
