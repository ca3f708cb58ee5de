//! git: the few operations the pipeline needs, as methods that return the
//! `Cmd` to run (for the plan and the runner alike) or run it and read the
//! answer. Nothing here ever force-pushes.

use std::path::PathBuf;

use super::{Cmd, Output, Runner, ToolError};

/// `git commit` of flake.lock only, whatever else is staged.
fn commit_args(subject: &str, body: &str, path: &str) -> Vec<String> {
    let mut args = vec!["commit".to_string(), "-m".into(), subject.to_string()];
    if !body.is_empty() {
        args.push("-m".into());
        args.push(body.to_string());
    }
    // A pathspec makes `git commit` take only that path (`--only`).
    args.push("--only".into());
    args.push("--".into());
    args.push(path.to_string());
    args
}

/// Push the current commit to the upstream branch. Never forced.
fn push_args(remote: &str, branch: &str) -> Vec<String> {
    vec![
        "push".to_string(),
        "--porcelain".into(),
        remote.to_string(),
        format!("HEAD:refs/heads/{branch}"),
    ]
}

fn fetch_args(remote: &str, branch: &str) -> Vec<String> {
    vec![
        "fetch".to_string(),
        "--quiet".into(),
        remote.to_string(),
        format!("+refs/heads/{branch}:refs/remotes/{remote}/{branch}"),
    ]
}

fn rebase_args(onto: &str) -> Vec<String> {
    vec!["rebase".to_string(), onto.to_string()]
}

/// The branch the current one tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub remote: String,
    /// The branch name on the remote, e.g. `main`.
    pub branch: String,
}

impl Upstream {
    /// The remote-tracking ref, e.g. `refs/remotes/origin/main`.
    pub fn tracking_ref(&self) -> String {
        format!("refs/remotes/{}/{}", self.remote, self.branch)
    }

    pub fn display(&self) -> String {
        format!("{}/{}", self.remote, self.branch)
    }
}

/// git, run in one working directory.
#[derive(Debug, Clone)]
pub struct Git {
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Git {
    pub fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        Cmd::new(&self.path).cwd(&self.dir).args(args)
    }

    /// `git commit` of `path` only, whatever else is staged.
    pub fn commit_cmd(&self, subject: &str, body: &str, path: &str) -> Cmd {
        self.cmd(commit_args(subject, body, path))
    }

    /// Push HEAD to the upstream branch; never forced.
    pub fn push_cmd(&self, up: &Upstream) -> Cmd {
        self.cmd(push_args(&up.remote, &up.branch))
    }

    /// Fetch the upstream branch into its remote-tracking ref.
    pub fn fetch_cmd(&self, up: &Upstream) -> Cmd {
        self.cmd(fetch_args(&up.remote, &up.branch))
    }

    pub fn rebase_cmd(&self, onto: &str) -> Cmd {
        self.cmd(rebase_args(onto))
    }

    pub fn rebase_abort_cmd(&self) -> Cmd {
        self.cmd(["rebase", "--abort"])
    }

    /// The best common ancestor of two revisions.
    pub async fn merge_base(&self, runner: &Runner, a: &str, b: &str) -> Result<String, ToolError> {
        self.out(runner, &["merge-base", a, b]).await
    }

    /// The files that differ between two revisions.
    pub async fn changed_files(
        &self,
        runner: &Runner,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, ToolError> {
        Ok(self
            .out(runner, &["diff", "--name-only", from, to, "--"])
            .await?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    async fn out(&self, runner: &Runner, args: &[&str]) -> Result<String, ToolError> {
        Ok(runner.run(&self.cmd(args)).await?.stdout.trim().to_string())
    }

    async fn status(&self, runner: &Runner, args: &[&str]) -> Result<Output, ToolError> {
        runner.run_unchecked(&self.cmd(args)).await
    }

    pub async fn toplevel(&self, runner: &Runner) -> Result<PathBuf, ToolError> {
        Ok(PathBuf::from(
            self.out(runner, &["rev-parse", "--show-toplevel"]).await?,
        ))
    }

    /// Porcelain status lines for some paths (empty when clean).
    pub async fn dirty(&self, runner: &Runner, paths: &[&str]) -> Result<Vec<String>, ToolError> {
        let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
        args.extend_from_slice(paths);
        Ok(self
            .out(runner, &args)
            .await?
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The current branch, or `None` on a detached HEAD.
    pub async fn branch(&self, runner: &Runner) -> Result<Option<String>, ToolError> {
        let out = self
            .status(runner, &["symbolic-ref", "--short", "-q", "HEAD"])
            .await?;
        Ok(out.success().then(|| out.stdout.trim().to_string()))
    }

    pub async fn upstream(
        &self,
        runner: &Runner,
        branch: &str,
    ) -> Result<Option<Upstream>, ToolError> {
        let remote = self
            .status(
                runner,
                &["config", "--get", &format!("branch.{branch}.remote")],
            )
            .await?;
        let merge = self
            .status(
                runner,
                &["config", "--get", &format!("branch.{branch}.merge")],
            )
            .await?;
        if !remote.success() || !merge.success() {
            return Ok(None);
        }
        let remote = remote.stdout.trim().to_string();
        let merge = merge.stdout.trim();
        let branch = merge
            .strip_prefix("refs/heads/")
            .unwrap_or(merge)
            .to_string();
        if remote.is_empty() || remote == "." || branch.is_empty() {
            return Ok(None);
        }
        Ok(Some(Upstream { remote, branch }))
    }

    /// `git rev-parse --verify -q SPEC`: the object id, or None.
    async fn verify(&self, runner: &Runner, spec: &str) -> Result<Option<String>, ToolError> {
        let out = self
            .status(runner, &["rev-parse", "--verify", "-q", spec])
            .await?;
        Ok(out.success().then(|| out.stdout.trim().to_string()))
    }

    pub async fn rev_parse(&self, runner: &Runner, rev: &str) -> Result<Option<String>, ToolError> {
        self.verify(runner, &format!("{rev}^{{commit}}")).await
    }

    /// The blob id of `path` (relative to the flake dir) at `rev`.
    pub async fn blob(
        &self,
        runner: &Runner,
        rev: &str,
        path: &str,
    ) -> Result<Option<String>, ToolError> {
        self.verify(runner, &format!("{rev}:./{path}")).await
    }

    /// A file's content at a revision.
    pub async fn show(
        &self,
        runner: &Runner,
        rev: &str,
        path: &str,
    ) -> Result<Option<String>, ToolError> {
        let out = self
            .status(runner, &["show", &format!("{rev}:./{path}")])
            .await?;
        Ok(out.success().then_some(out.stdout))
    }

    /// The blob id the working-tree file would have.
    pub async fn hash_object(&self, runner: &Runner, path: &str) -> Result<String, ToolError> {
        self.out(runner, &["hash-object", "--", path]).await
    }

    pub async fn is_ancestor(&self, runner: &Runner, a: &str, b: &str) -> Result<bool, ToolError> {
        Ok(self
            .status(runner, &["merge-base", "--is-ancestor", a, b])
            .await?
            .success())
    }

    pub async fn count(&self, runner: &Runner, range: &str) -> Result<u64, ToolError> {
        let cmd = self.cmd(["rev-list", "--count", range]);
        let out = runner.run(&cmd).await?;
        out.stdout.trim().parse().map_err(|_| ToolError::BadOutput {
            command: cmd.display(),
            reason: format!("not a count: {:?}", out.stdout.trim()),
        })
    }

    /// Did `path` change between two revisions?
    pub async fn changed(
        &self,
        runner: &Runner,
        from: &str,
        to: &str,
        path: &str,
    ) -> Result<bool, ToolError> {
        let out = self
            .status(runner, &["diff", "--quiet", from, to, "--", path])
            .await?;
        Ok(!out.success())
    }

    pub async fn subject(&self, runner: &Runner, rev: &str) -> Result<String, ToolError> {
        self.out(runner, &["log", "-1", "--format=%s", rev]).await
    }

    /// Tracked files below the working directory, relative to it.
    pub async fn ls_files(&self, runner: &Runner) -> Result<Vec<String>, ToolError> {
        let out = runner.run(&self.cmd(["ls-files", "-z"])).await?;
        Ok(out
            .stdout
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The remote's branch head without fetching (read-only).
    pub async fn ls_remote(
        &self,
        runner: &Runner,
        up: &Upstream,
    ) -> Result<Option<String>, ToolError> {
        let out = self
            .out(
                runner,
                &[
                    "ls-remote",
                    &up.remote,
                    &format!("refs/heads/{}", up.branch),
                ],
            )
            .await?;
        Ok(out.split_whitespace().next().map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_takes_only_the_lock() {
        let args = commit_args(
            "chore(ci): Update nixos to 20260705",
            "nixpkgs: a → b",
            "flake.lock",
        );
        assert_eq!(
            args,
            [
                "commit",
                "-m",
                "chore(ci): Update nixos to 20260705",
                "-m",
                "nixpkgs: a → b",
                "--only",
                "--",
                "flake.lock"
            ]
        );
    }

    #[test]
    fn push_is_never_forced() {
        let args = push_args("origin", "main");
        assert_eq!(
            args,
            ["push", "--porcelain", "origin", "HEAD:refs/heads/main"]
        );
        assert!(!args
            .iter()
            .any(|a| a.contains("force") || a.starts_with('+') || a == "-f"));
        assert_eq!(
            rebase_args("refs/remotes/origin/main"),
            ["rebase", "refs/remotes/origin/main"]
        );
    }
}
