//! commit: commit flake.lock, and only flake.lock, once the image is pushed.

use super::update::Updated;
use super::{Check, Ctx, Done, Stage};
use crate::state::Outputs;
use crate::tool::git::Git;

/// The stage: the update to commit, and the image it was pushed as (none
/// in a dry run).
pub struct Commit<'a> {
    pub git: &'a Git,
    pub updated: &'a Updated,
    pub digest: Option<&'a str>,
}

/// The bump commit, if this run made it (or an interrupted one did).
pub struct Committed {
    pub commit: Option<String>,
}

impl Committed {
    /// The stage's result: the note, and the commit for the state too.
    fn done(note: String, commit: Option<String>) -> Done<Committed> {
        let outputs = Outputs {
            commit: commit.clone(),
            ..Outputs::default()
        };
        Done::new(note, Committed { commit }).with(outputs)
    }
}

impl Commit<'_> {
    fn message(&self, cx: &Ctx) -> (String, String) {
        let subject = cx.cfg.subject(self.updated.target.date.as_str());
        let mut body = String::new();
        if !self.updated.changes.is_empty() {
            body.push_str("Input changes:\n");
            for change in &self.updated.changes {
                body.push_str(&format!("\n- {change}"));
            }
        }
        if let Some(digest) = self.digest {
            body.push_str(&format!("\n\nImage: {} ({digest})", cx.cfg.image));
        }
        (subject, body.trim().to_string())
    }
}

impl Stage for Commit<'_> {
    type Output = Committed;
    type Found = ();

    fn name(&self) -> &'static str {
        "commit"
    }

    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Committed, ()>> {
        if self.updated.would_change() {
            return Ok(Check::Todo("the update would change flake.lock".into(), ()));
        }
        let git = self.git;
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
            let commit = commit.filter(|c| Some(c) == ours.as_ref());
            return Ok(Check::Done(Committed::done(note, commit)));
        }
        Ok(Check::Todo("flake.lock changed".into(), ()))
    }

    fn plan(&self, cx: &Ctx, _: &()) -> Vec<String> {
        let (subject, body) = self.message(cx);
        vec![self.git.commit_cmd(&subject, &body, "flake.lock").display()]
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Committed>> {
        Ok(Done::new(
            format!("would commit flake.lock: {}", self.message(cx).0),
            Committed { commit: None },
        ))
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Committed>> {
        let git = self.git;
        let (subject, body) = self.message(cx);
        // Record the parent first: a run killed right after `git commit`
        // can then recognise the commit as its own.
        let parent = git.rev_parse(&cx.runner, "HEAD").await?;
        if let Some(pending) = &mut cx.state.pending_bump {
            pending.commit_parent = parent;
        }
        cx.save()?;
        cx.runner
            .run(&git.commit_cmd(&subject, &body, "flake.lock"))
            .await
            .map_err(|e| {
                e.with_help("git could not commit flake.lock (is user.name/user.email set? a failing commit hook?); the image is already pushed, so a rerun only commits and pushes")
            })?;
        let commit = git.rev_parse(&cx.runner, "HEAD").await?;
        if let Some(pending) = &mut cx.state.pending_bump {
            pending.commit = commit.clone();
        }
        let note = format!(
            "committed {}: {subject}",
            commit
                .as_deref()
                .map(|c| &c[..c.len().min(12)])
                .unwrap_or("?")
        );
        Ok(Committed::done(note, commit))
    }
}
