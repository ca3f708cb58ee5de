//! preflight: find the tools, read the lock, check the working tree and
//! the branch, prepare credentials. Changes nothing.

use miette::Diagnostic;
use thiserror::Error;

use super::target::Target;
use super::{Check, Ctx, Done, Stage};
use crate::auth::{self, AuthFile};
use crate::config::Mode;
use crate::image::destination::{self, Destination, Tools};
use crate::progress::Event;
use crate::tool::git::{Git, Upstream};
use crate::tool::install_hint;
use crate::tool::nix::{Evaluated, Nix};
use crate::tool::skopeo::{self, Skopeo};
use crate::tool::ToolError;

pub struct Preflight;

/// What preflight found and prepared: the tools, the destination it
/// connected to, the working flake.lock, and where git pushes to.
pub struct Prepared {
    pub nix: Nix,
    pub git: Git,
    pub destination: Destination,
    /// What the destination's tag states and uploads need: skopeo, the
    /// registry login written for it, the cache.
    pub tools: Tools,
    /// The working flake.lock and its tags.
    pub target: Target,
    /// Where a bump's commit goes: None with --no-git-push (and in a
    /// release).
    pub upstream: Option<Upstream>,
    /// Each output to build, evaluated, in the order of `Config::builds`,
    /// when nothing will change what it evaluates to (release, promote);
    /// empty for a bump, whose update comes first.
    pub evaluated: Vec<Evaluated>,
}

impl Prepared {
    /// Build `index` (`attr`) of `flake`, evaluated: preflight's
    /// evaluation when it made one of that flake, else a new one.
    pub async fn eval(
        &self,
        cx: &Ctx,
        flake: &std::path::Path,
        index: usize,
        attr: &str,
    ) -> Result<Evaluated, ToolError> {
        match self.evaluated.get(index) {
            Some(known) if flake == cx.cfg.flake => Ok(known.clone()),
            _ => self
                .nix
                .eval(&cx.runner, flake, attr)
                .await
                .map_err(|e| e.with_help(eval_help(flake, attr))),
        }
    }
}

/// What to do when an output exists but does not evaluate.
pub fn eval_help(flake: &std::path::Path, attr: &str) -> String {
    format!(
        "nix could not evaluate {}#{attr}: fix the flake (try `nix eval {}#{attr}.drvPath`), or pass the right output with --attr (and --system)",
        flake.display(),
        flake.display(),
    )
}

/// Files whose uncommitted changes would make the result untraceable:
/// every tracked file in the flake's tree (Nix builds from all of them).
pub const GUARDED_PATHS: &[&str] = &["."];

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
        help("commit or stash them first (`git stash`), so that the image is built from what is committed (Nix sees every tracked file); runnerctl only ever commits flake.lock. --allow-dirty builds anyway (not with a changed flake.lock)")
    )]
    Dirty { paths: String, lines: Vec<String> },

    #[error("--update-input `{name}`: the flake has no input of that name")]
    #[diagnostic(
        code(runnerctl::preflight::update_input),
        help("the flake's inputs are: {available}; pass one of them with --update-input (or RUNNERCTL_UPDATE_INPUTS)")
    )]
    UnknownUpdateInput { name: String, available: String },

    #[error("the flake has no output `{attr}` to build (`{command}` failed)\n{}", tail.join("\n"))]
    #[diagnostic(
        code(runnerctl::preflight::attr),
        help("check --attr (RUNNERCTL_ATTR) and --system (RUNNERCTL_SYSTEMS): `nix flake show` lists the flake's outputs; nothing was changed")
    )]
    NoAttr {
        attr: String,
        command: String,
        tail: Vec<String>,
    },

    #[error("the flake's output `{attr}` does not evaluate (`{command}` failed)\n{}", tail.join("\n"))]
    #[diagnostic(code(runnerctl::preflight::eval))]
    Broken {
        attr: String,
        command: String,
        tail: Vec<String>,
        #[help]
        help: String,
    },

    #[error("the remote {upstream} did not answer `git ls-remote`\n{}", tail.join("\n"))]
    #[diagnostic(
        code(runnerctl::preflight::remote),
        help("check the remote's URL (`git remote -v`) and that it is reachable, or pass --no-git-push to commit locally only; nothing was changed")
    )]
    RemoteUnreachable { upstream: String, tail: Vec<String> },

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
    /// The output `attr` exists (a cheap evaluation: the attribute is
    /// looked up and evaluated no further than its top), or why not.
    async fn exists(cx: &Ctx, nix: &Nix, attr: &str) -> miette::Result<()> {
        let exists = nix.exists_cmd(&cx.cfg.flake, attr);
        let out = cx.runner.run_unchecked(&exists).await?;
        if out.success() {
            return Ok(());
        }
        Err(Self::not_evaluated(
            cx,
            attr,
            exists.display(),
            out.stderr_tail,
        ))
    }

    /// An output nix could not evaluate: missing ([`PreflightError::NoAttr`],
    /// as nix says "does not provide attribute"), or there and broken.
    fn not_evaluated(cx: &Ctx, attr: &str, command: String, tail: Vec<String>) -> miette::Report {
        let attr = attr.to_string();
        if tail
            .iter()
            .any(|l| l.contains("does not provide attribute"))
        {
            return PreflightError::NoAttr {
                attr,
                command,
                tail,
            }
            .into();
        }
        PreflightError::Broken {
            help: eval_help(&cx.cfg.flake, &attr),
            attr,
            command,
            tail,
        }
        .into()
    }

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
        let files = git.changed_files(&cx.runner, &parent, head).await?;
        let only_lock = files == ["flake.lock"];
        if only_lock {
            if let Some(p) = &mut cx.state.pending_bump {
                p.commit = Some(head.to_string());
            }
        }
        Ok(only_lock)
    }
}

impl Preflight {
    /// Resolve the registry login once (for skopeo and runnerctl's own
    /// client alike) and check it against the registry before anything
    /// changes. Returns the destination, the auth file for skopeo, and
    /// where the login came from.
    fn connect(cx: &Ctx) -> miette::Result<(Destination, Option<AuthFile>, Option<String>)> {
        let connected = destination::connect(
            &cx.cfg.image,
            &destination::Access {
                credentials: &cx.cfg.credentials,
                tls_verify: cx.cfg.tls_verify,
                timeout: cx.cfg.registry_timeout,
            },
        )?;
        if let Some(file) = connected.login.as_ref().and_then(|l| l.file.as_ref()) {
            if auth::readable_by_others(file) {
                cx.reporter().info(format!(
                    "warning: {} holds registry credentials and is readable by group or others: `chmod 600 {}`",
                    file.display(),
                    file.display()
                ));
            }
        }
        let authfile = match (&connected.login, cx.cfg.image.registry()) {
            (Some(login), Some(registry)) => Some(auth::auth_file(login, registry)?),
            _ => None,
        };
        let source = connected.login.map(|l| l.source);
        Ok((connected.destination, authfile, source))
    }
}

impl Stage for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }

    type Output = Prepared;
    type Found = ();

    fn read_only(&self) -> bool {
        true
    }

    async fn check(&mut self, _cx: &mut Ctx) -> miette::Result<Check<Prepared, ()>> {
        Ok(Check::Todo("always runs".into(), ()))
    }

    fn plan(&self, _cx: &Ctx, _: &()) -> Vec<String> {
        Vec::new()
    }

    async fn dry_run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Prepared>> {
        self.run(cx, ()).await
    }

    async fn run(&mut self, cx: &mut Ctx, _: ()) -> miette::Result<Done<Prepared>> {
        // Locate every tool before anything changes.
        let nix_path = locate("nix")?;
        let git_path = locate("git")?;
        let skopeo_path = locate("skopeo")?;
        // --smoke always without an engine fails now, not after the build.
        crate::stage::smoke::engines(&cx.cfg)?;
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
        // skopeo never reads the host's /etc/containers/policy.json: it gets
        // the user's policy, checked here, or runnerctl's own.
        let (policy, user_policy) = match &cx.cfg.policy {
            Some(path) => (skopeo::check_user_policy(path)?, true),
            // A dry run writes nothing; it only inspects, which reads no
            // policy.
            None if cx.cfg.dry_run => (skopeo::policy_path(&cx.cfg.state_dir), false),
            None => (
                skopeo::write_policy(&cx.cfg.state_dir, &cx.cfg.cache_dir())?,
                false,
            ),
        };
        let skopeo = Skopeo {
            path: skopeo_path,
            policy,
            user_policy,
            timeout: cx.cfg.registry_timeout,
        };

        if git.toplevel(&cx.runner).await.is_err() {
            return Err(PreflightError::NotGit {
                dir: cx.cfg.flake.clone(),
            }
            .into());
        }

        let target = Target::read(&cx.cfg)?;
        target.report(&cx.cfg, &mut cx.report);
        // nix only warns about an input it does not know and then reports
        // nothing to update: a typo would pass as "up to date".
        let inputs: Vec<String> = target
            .lock
            .root_inputs()
            .into_iter()
            .map(|i| i.input)
            .collect();
        for name in &cx.cfg.update_inputs {
            let root = name.split('/').next().unwrap_or(name);
            if !inputs.iter().any(|i| i == root) {
                return Err(PreflightError::UnknownUpdateInput {
                    name: name.clone(),
                    available: inputs.join(", "),
                }
                .into());
            }
        }

        // The working tree: the guarded files must be committed, except a
        // flake.lock this tool updated in an interrupted run.
        let mut dirty = git.dirty(&cx.runner, GUARDED_PATHS).await?;
        if cx.cfg.mode == Mode::Bump {
            let current = crate::digest::sha256_hex(target.lock_text.as_bytes());
            // Ours: the lock an unfinished bump recorded before it wrote it.
            // A pending bump without a hash adopts nothing.
            let ours = cx
                .state
                .pending_bump
                .as_ref()
                .is_some_and(|p| p.lock_hash.as_deref() == Some(current.as_str()));
            if ours {
                dirty.retain(|line| !line.ends_with("flake.lock"));
            }
        }
        if cx.cfg.allow_dirty {
            // flake.lock stays guarded: the update would overwrite it.
            let (lock, other): (Vec<String>, Vec<String>) =
                dirty.into_iter().partition(|l| l.ends_with("flake.lock"));
            if !other.is_empty() {
                cx.reporter().info(format!(
                    "warning: --allow-dirty: building with uncommitted changes, so the image is not what is committed: {}",
                    other.join("; ")
                ));
            }
            dirty = lock;
        }
        if !dirty.is_empty() {
            return Err(PreflightError::Dirty {
                paths: "the flake's tracked files".into(),
                lines: dirty,
            }
            .into());
        }

        let mut note = format!("nix {}, skopeo, git", nix.version);
        let mut upstream_to_push = None;
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
                    // The remote must answer now, not after the image is
                    // pushed.
                    if let Err(err) = git.ls_remote(&cx.runner, &upstream).await {
                        let tail = match err {
                            crate::tool::ToolError::Failed { tail, .. } => tail,
                            other => return Err(other.into()),
                        };
                        return Err(PreflightError::RemoteUnreachable {
                            upstream: upstream.display(),
                            tail,
                        }
                        .into());
                    }
                    note.push_str(&format!("; branch {branch} → {}", upstream.display()));
                    upstream_to_push = Some(upstream);
                }
                (Some(branch), false) => note.push_str(&format!("; branch {branch} (no git push)")),
                (None, false) => note.push_str("; detached HEAD (no git push)"),
            }
        }

        let (destination, authfile, login) = Self::connect(cx)?;
        if let Some(source) = login {
            note.push_str(&format!("; registry login: {source}"));
        }
        // Each output to build exists, before anything changes (with
        // --system, each system's packages.SYSTEM.ATTR). A bump looks it up
        // cheaply, as its update changes what it evaluates to; a release
        // or a promote evaluates it now, once, for the stages after.
        let mut evaluated = Vec::new();
        for (_, attr) in cx.cfg.builds() {
            if cx.cfg.mode == Mode::Bump {
                Self::exists(cx, &nix, &attr).await?;
                continue;
            }
            match nix.eval(&cx.runner, &cx.cfg.flake, &attr).await {
                Ok(eval) => evaluated.push(eval),
                Err(ToolError::Failed { command, tail, .. }) => {
                    return Err(Self::not_evaluated(cx, &attr, command, tail))
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok(Done::new(
            note,
            Prepared {
                nix,
                git,
                destination,
                tools: Tools {
                    skopeo,
                    authfile,
                    cache_dir: cx.cfg.cache_dir(),
                    state_dir: cx.cfg.state_dir.clone(),
                },
                target,
                upstream: upstream_to_push,
                evaluated,
            },
        ))
    }
}
