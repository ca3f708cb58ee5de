//! git-push: push the bump commit to the upstream branch, never forced. If
//! the remote moved without touching flake.lock, rebase the one commit and
//! push; if it changed flake.lock too, stop and keep the local commit.

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Done, Stage};
use crate::pipeline::{Ctx, Missing};
use crate::state::Outputs;
use crate::tool::git::{fetch_args, push_args, rebase_args, Upstream};

pub struct GitPush;

#[derive(Debug, Error, Diagnostic)]
pub enum GitPushError {
    #[error("{upstream} changed flake.lock since this bump started; the local commit {commit} is kept and nothing was pushed")]
    #[diagnostic(
        code(runnerctl::git_push::lock_conflict),
        help("someone else updated the lock. Either drop the local commit and bump again (`git reset --hard {upstream}` then `runnerctl bump`), or rebase it by hand (`git pull --rebase`, resolve flake.lock) and `git push`")
    )]
    LockConflict { upstream: String, commit: String },

    #[error("the branch has {count} commits that are not on {upstream}; runnerctl only pushes its own bump commit")]
    #[diagnostic(
        code(runnerctl::git_push::ahead),
        help("push or drop the other commits first (`git log {upstream}..HEAD` shows them), then run again")
    )]
    Ahead { upstream: String, count: u64 },

    #[error("rebasing the bump commit onto {upstream} failed; the rebase was aborted and the local commit is kept")]
    #[diagnostic(
        code(runnerctl::git_push::rebase),
        help("rebase by hand (`git pull --rebase`), push, then run runnerctl again")
    )]
    Rebase { upstream: String },
}

impl GitPush {
    fn upstream(cx: &Ctx) -> miette::Result<Upstream> {
        cx.upstream.clone().ok_or_else(|| {
            Missing {
                what: "the upstream branch",
            }
            .into()
        })
    }
}

impl Stage for GitPush {
    fn name(&self) -> &'static str {
        "git-push"
    }

    fn fingerprint(&self, cx: &Ctx) -> Option<String> {
        cx.commit.clone()
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        if cx.dry_run_changes() {
            return Ok(Check::Todo("the bump commit would be new".into()));
        }
        let git = cx.git()?.clone();
        let up = Self::upstream(cx)?;
        let head = git.rev_parse(&cx.runner, "HEAD").await?.unwrap_or_default();
        // Read-only look at the remote.
        let remote = git.ls_remote(&cx.runner, &up).await?;
        if let Some(remote) = &remote {
            if *remote == head || git.is_ancestor(&cx.runner, &head, remote).await? {
                return Ok(Check::Done(
                    Done::new(format!(
                        "{} already contains {}",
                        up.display(),
                        &head[..head.len().min(12)]
                    ))
                    .with(Outputs {
                        remote: Some(remote.clone()),
                        commit: Some(head),
                        ..Outputs::default()
                    }),
                ));
            }
        }
        Ok(Check::Todo(format!(
            "{} does not have HEAD yet",
            up.display()
        )))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        match (&cx.git, &cx.upstream) {
            (Some(git), Some(up)) => vec![
                git.cmd(fetch_args(&up.remote, &up.branch)).display(),
                git.cmd(push_args(&up.remote, &up.branch)).display(),
            ],
            _ => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        let up = Self::upstream(cx)?;
        Ok(format!(
            "would push the bump commit to {} (rebasing it if the remote moved; never forced)",
            up.display()
        ))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let git = cx.git()?.clone();
        let up = Self::upstream(cx)?;
        let tracking = up.tracking_ref();
        let help = "the image is pushed and the commit is made; fix the problem and run again: only the git push is repeated";
        // Two attempts: the remote may move between fetch and push.
        let mut attempt = 0;
        loop {
            attempt += 1;
            cx.runner
                .run(&git.cmd(fetch_args(&up.remote, &up.branch)))
                .await
                .map_err(|e| e.with_help(help))?;
            let ahead = git.count(&cx.runner, &format!("{tracking}..HEAD")).await?;
            if ahead > 1 {
                return Err(GitPushError::Ahead {
                    upstream: up.display(),
                    count: ahead,
                }
                .into());
            }
            let mut rebased = false;
            if !git.is_ancestor(&cx.runner, &tracking, "HEAD").await? {
                let base = git.cmd(["merge-base", "HEAD", tracking.as_str()]);
                let base = cx.runner.run(&base).await?.stdout.trim().to_string();
                if git
                    .changed(&cx.runner, &base, &tracking, "flake.lock")
                    .await?
                {
                    let commit = git.rev_parse(&cx.runner, "HEAD").await?.unwrap_or_default();
                    return Err(GitPushError::LockConflict {
                        upstream: up.display(),
                        commit,
                    }
                    .into());
                }
                if cx
                    .runner
                    .run(&git.cmd(rebase_args(&tracking)))
                    .await
                    .is_err()
                {
                    let _ = cx
                        .runner
                        .run_unchecked(&git.cmd(["rebase", "--abort"]))
                        .await;
                    return Err(GitPushError::Rebase {
                        upstream: up.display(),
                    }
                    .into());
                }
                rebased = true;
                // Keep the state pointing at the rebased commit, so a resumed
                // run still recognises it as ours.
                let head = git.rev_parse(&cx.runner, "HEAD").await?;
                if let Some(pending) = &mut cx.state.pending_bump {
                    pending.commit = head.clone();
                }
                if let Some(record) = cx.state.stages.get_mut("commit") {
                    record.outputs.commit = head;
                }
            }
            let push_cmd = git.cmd(push_args(&up.remote, &up.branch));
            let push = cx.runner.run_unchecked(&push_cmd).await?;
            match push.success() {
                true => {
                    let head = git.rev_parse(&cx.runner, "HEAD").await?.unwrap_or_default();
                    cx.commit = Some(head.clone());
                    if let Some(record) = cx.state.stages.get_mut("commit") {
                        record.outputs.commit = Some(head.clone());
                    }
                    let note = format!(
                        "pushed {} to {}{}",
                        &head[..head.len().min(12)],
                        up.display(),
                        if rebased {
                            " (rebased onto the moved remote)"
                        } else {
                            ""
                        }
                    );
                    return Ok(Done::new(note).with(Outputs {
                        commit: Some(head.clone()),
                        remote: Some(head),
                        ..Outputs::default()
                    }));
                }
                false => {
                    // `--porcelain` reports a rejected ref on stdout
                    // (`!  HEAD:refs/heads/main  [rejected] (fetch first)`).
                    let rejected_by_race = push
                        .stdout
                        .lines()
                        .chain(push.stderr_tail.iter().map(String::as_str))
                        .any(|l| l.contains("fetch first") || l.contains("non-fast-forward"));
                    if rejected_by_race && attempt < 2 {
                        continue;
                    }
                    let mut out = push.clone();
                    // Show git's verdict on the ref next to its stderr.
                    out.stderr_tail.extend(
                        push.stdout
                            .lines()
                            .filter(|l| l.starts_with('!'))
                            .map(str::to_string),
                    );
                    return Err(crate::tool::failed(&push_cmd, &out).with_help(help).into());
                }
            }
        }
    }
}
