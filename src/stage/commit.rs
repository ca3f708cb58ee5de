//! commit: commit flake.lock, and only flake.lock, once the image is pushed.

use super::{Check, Done, Stage};
use crate::pipeline::Ctx;
use crate::state::Outputs;
use crate::tool::git::commit_args;

pub struct Commit;

impl Commit {
    fn message(cx: &Ctx) -> (String, String) {
        let date = cx.date.as_ref().map(|d| d.to_string()).unwrap_or_default();
        let subject = cx.cfg.subject(&date);
        let mut body = String::new();
        if !cx.changes.is_empty() {
            body.push_str("Input changes:\n");
            for change in &cx.changes {
                body.push_str(&format!("\n- {change}"));
            }
        }
        if let Some(digest) = &cx.digest {
            body.push_str(&format!("\n\nImage: {} ({digest})", cx.cfg.image));
        }
        (subject, body.trim().to_string())
    }
}

impl Stage for Commit {
    fn name(&self) -> &'static str {
        "commit"
    }

    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check> {
        if cx.dry_run_changes() {
            return Ok(Check::Todo("the update would change flake.lock".into()));
        }
        let git = cx.git()?.clone();
        let working = git.hash_object(&cx.runner, "flake.lock").await?;
        let head = git.blob(&cx.runner, "HEAD", "flake.lock").await?;
        if head.as_deref() == Some(working.as_str()) {
            let commit = git.rev_parse(&cx.runner, "HEAD").await?;
            let ours = cx
                .state
                .pending_bump
                .as_ref()
                .and_then(|p| p.commit.clone());
            let note = if commit.is_some() && commit == ours {
                format!(
                    "flake.lock already committed as {}",
                    commit.clone().unwrap_or_default()
                )
            } else {
                "flake.lock at HEAD already matches: nothing to commit".to_string()
            };
            if commit == ours {
                cx.commit = commit.clone();
            }
            return Ok(Check::Done(Done::new(note).with(Outputs {
                commit: cx.commit.clone(),
                ..Outputs::default()
            })));
        }
        Ok(Check::Todo("flake.lock changed".into()))
    }

    fn plan(&self, cx: &Ctx) -> Vec<String> {
        let (subject, body) = Self::message(cx);
        match &cx.git {
            Some(git) => vec![git
                .cmd(commit_args(&subject, &body, "flake.lock"))
                .display()],
            None => Vec::new(),
        }
    }

    async fn dry_run(&self, cx: &mut Ctx) -> miette::Result<String> {
        Ok(format!("would commit flake.lock: {}", Self::message(cx).0))
    }

    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done> {
        let git = cx.git()?.clone();
        let (subject, body) = Self::message(cx);
        // Record the parent first: a run killed right after `git commit`
        // can then recognise the commit as its own.
        let parent = git.rev_parse(&cx.runner, "HEAD").await?;
        if let Some(pending) = &mut cx.state.pending_bump {
            pending.commit_parent = parent;
        }
        cx.save()?;
        cx.runner
            .run(&git.cmd(commit_args(&subject, &body, "flake.lock")))
            .await
            .map_err(|e| {
                e.with_help("git could not commit flake.lock (is user.name/user.email set? a failing commit hook?); the image is already pushed, so a rerun only commits and pushes")
            })?;
        let commit = git.rev_parse(&cx.runner, "HEAD").await?;
        cx.commit = commit.clone();
        if let Some(pending) = &mut cx.state.pending_bump {
            pending.commit = commit.clone();
        }
        Ok(Done::new(format!(
            "committed {}: {subject}",
            commit
                .as_deref()
                .map(|c| &c[..c.len().min(12)])
                .unwrap_or("?")
        ))
        .with(Outputs {
            commit,
            ..Outputs::default()
        }))
    }
}
