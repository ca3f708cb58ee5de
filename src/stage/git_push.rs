//! git-push: push the bump commit to the upstream branch, never forced. If
//! the remote moved without touching flake.lock, rebase the one commit and
//! push; if it changed flake.lock too, stop and keep the local commit.

use miette::Diagnostic;
use thiserror::Error;

use super::{Check, Ctx, Done, Stage};
use crate::state::Outputs;
use crate::tool::git::{Git, Upstream};

/// The stage: the bump commit (none in a dry run) and where it goes.
pub struct GitPush<'a> {
    pub git: &'a Git,
    pub upstream: &'a Upstream,
    pub commit: Option<&'a str>,
    /// A dry run whose update would make a new commit.
    pub would_change: bool,
}

/// The commit the remote has now (a rebase may have changed it); none in
/// a dry run.
pub struct GitPushed {
    pub commit: Option<String>,
}

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

impl Stage for GitPush<'_> {
    type Output = GitPushed;
    type Found = ();

    fn name(&self) -> &'static str {
        "git-push"
    }

    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        self.commit.map(str::to_string)
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<GitPushed, ()>> {
        if self.would_change {
            return Ok(Check::Todo("the bump commit would be new".into(), ()));
        }
        let git = self.git;
        let up = self.upstream;
        let head = git.rev_parse(&cx.runner, "HEAD").await?.unwrap_or_default();
        // Read-only look at the remote.
        let remote = git.ls_remote(&cx.runner, up).await?;
        if let Some(remote) = &remote {
            if *remote == head || git.is_ancestor(&cx.runner, &head, remote).await? {
                let note = format!(
                    "{} already contains {}",
                    up.display(),
                    &head[..head.len().min(12)]
                );
                return Ok(Check::Done(
                    // Nothing pushed now: the commit the report shows stays
                    // the commit stage's.
                    Done::new(note, GitPushed { commit: None }).with(Outputs {
                        remote: Some(remote.clone()),
                        commit: Some(head),
                        ..Outputs::default()
                    }),
                ));
            }
        }
        Ok(Check::Todo(
            format!("{} does not have HEAD yet", up.display()),
            (),
        ))
    }

    fn plan(&self, _cx: &Ctx, _: &()) -> Vec<String> {
        vec![
            self.git.fetch_cmd(self.upstream).display(),
            self.git.push_cmd(self.upstream).display(),
        ]
    }

    async fn dry_run(&mut self, _cx: &mut Ctx, _: ()) -> miette::Result<Done<GitPushed>> {
        Ok(Done::new(
            format!(
                "would push the bump commit to {} (rebasing it if the remote moved; never forced)",
                self.upstream.display()
            ),
            GitPushed { commit: None },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<GitPushed>> {
        let git = self.git;
        let up = self.upstream;
        let tracking = up.tracking_ref();
        let help = "the image is pushed and the commit is made; fix the problem and run again: only the git push is repeated";
        // Two attempts: the remote may move between fetch and push.
        let mut attempt = 0;
        loop {
            attempt += 1;
            cx.runner
                .run(&git.fetch_cmd(up))
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
                let base = git.merge_base(&cx.runner, "HEAD", &tracking).await?;
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
                if cx.runner.run(&git.rebase_cmd(&tracking)).await.is_err() {
                    let _ = cx.runner.run_unchecked(&git.rebase_abort_cmd()).await;
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
            let push_cmd = git.push_cmd(up);
            let push = cx.runner.run_unchecked(&push_cmd).await?;
            match push.success() {
                true => {
                    let head = git.rev_parse(&cx.runner, "HEAD").await?.unwrap_or_default();
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
                    let outputs = Outputs {
                        commit: Some(head.clone()),
                        remote: Some(head.clone()),
                        ..Outputs::default()
                    };
                    return Ok(Done::new(note, GitPushed { commit: Some(head) }).with(outputs));
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
