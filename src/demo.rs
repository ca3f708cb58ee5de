//! `runnerctl demo`: a real bump, end to end, in a throwaway workspace.
//!
//! It makes a stand-in nixpkgs (a local git flake), the fixture runner flake
//! (whose image is a real docker-archive built by `/bin/sh`), a bare git
//! remote and a local OCI layout as the destination. Then it moves the
//! stand-in nixpkgs forward, runs `bump` (which updates, builds, verifies,
//! pushes, commits and pushes the commit) and runs `bump` again to show that
//! the second run is a no-op. Nothing leaves the machine.

use std::path::{Path, PathBuf};

use clap::Parser;
use miette::{miette, Context, IntoDiagnostic};

use crate::cli::{Cli, Command, DemoArgs};
use crate::config::{Config, Mode};
use crate::pipeline;
use crate::progress::{Reporter, Verbosity};
use crate::tool::{Cmd, Runner};

const NIXPKGS_FLAKE: &str = include_str!("../demo/nixpkgs/flake.nix");
const RUNNER_FLAKE: &str = include_str!("../demo/runner/flake.nix");
const BUILD_SCRIPT: &str = include_str!("../demo/runner/build-image.sh");

/// The first stand-in nixpkgs commit: 2026-06-29 UTC, the date of the pin
/// in this repository's real flake.lock.
const FIRST_DATE: i64 = 1_782_723_713;
const DAY: i64 = 86_400;

/// The Nix settings the demo needs: offline, no sandbox, no daemon users.
pub fn nix_config(registry_file: &Path) -> String {
    format!(
        "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nbuild-users-group =\nflake-registry = {}\n",
        registry_file.display()
    )
}

struct Workspace {
    root: PathBuf,
    runner: Runner,
    git: PathBuf,
}

impl Workspace {
    async fn git(&self, dir: &Path, args: &[&str], date: Option<i64>) -> miette::Result<()> {
        let mut cmd = Cmd::new(&self.git).cwd(dir).args(args);
        if let Some(date) = date {
            // A fixed committer date moves the flake's lastModified.
            cmd = Cmd::new("env")
                .cwd(dir)
                .args([
                    format!("GIT_COMMITTER_DATE=@{date} +0000"),
                    format!("GIT_AUTHOR_DATE=@{date} +0000"),
                ])
                .args([self.git.as_os_str()])
                .args(args);
        }
        self.runner.run(&cmd).await?;
        Ok(())
    }

    fn write(&self, path: &Path, text: &str) -> miette::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).into_diagnostic()?;
        }
        std::fs::write(path, text)
            .into_diagnostic()
            .wrap_err_with(|| format!("writing {}", path.display()))
    }

    async fn commit_nixpkgs(&self, payload: &str, date: i64) -> miette::Result<()> {
        let dir = self.root.join("nixpkgs");
        self.write(
            &dir.join("flake.nix"),
            &NIXPKGS_FLAKE.replace("@PAYLOAD@", payload),
        )?;
        self.git(&dir, &["add", "-A"], None).await?;
        self.git(
            &dir,
            &["commit", "-q", "-m", &format!("nixpkgs {payload}")],
            Some(date),
        )
        .await
    }
}

async fn bump(
    flake: &Path,
    extra: &[&str],
    progress: crate::progress::ProgressMode,
) -> miette::Result<crate::report::Report> {
    let mut argv: Vec<String> = vec![
        "runnerctl".into(),
        "bump".into(),
        "-C".into(),
        flake.display().to_string(),
        // The demo's fixture image holds placeholder files, not programs
        // that run: there is nothing for a job container to start.
        "--smoke".into(),
        "never".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cli = Cli::try_parse_from(&argv).into_diagnostic()?;
    let Command::Bump(args) = cli.command else {
        return Err(miette!("internal: demo argv did not parse as bump"));
    };
    let cfg = Config::resolve(Mode::Bump, &args)?;
    let reporter = Reporter::new(progress, Verbosity::Normal);
    let (report, err) = pipeline::run(cfg, reporter.clone()).await;
    reporter.finish();
    println!("{}", report.render());
    match err {
        Some(err) => Err(err),
        None => Ok(report),
    }
}

pub async fn demo(args: DemoArgs) -> miette::Result<()> {
    let nix = which::which("nix").map_err(|_| {
        miette!(
            help = crate::tool::install_hint("nix"),
            "`nix` was not found on PATH"
        )
    })?;
    let git = which::which("git").map_err(|_| {
        miette!(
            help = crate::tool::install_hint("git"),
            "`git` was not found on PATH"
        )
    })?;
    let _ = nix;
    let (root, _tmp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).into_diagnostic()?;
            (std::fs::canonicalize(dir).into_diagnostic()?, None)
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("runnerctl-demo-")
                .tempdir()
                .into_diagnostic()?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let keep = args.keep || args.dir.is_some();
    let registry_file = root.join("flake-registry.json");
    std::fs::write(&registry_file, "{\"flakes\":[],\"version\":2}\n").into_diagnostic()?;

    // Settings for every child: offline Nix, a git identity, and no
    // credentials (the destination is a local OCI layout).
    // Single-threaded at this point; nothing else reads the env.
    {
        std::env::set_var("NIX_CONFIG", nix_config(&registry_file));
        for (key, value) in [
            ("GIT_AUTHOR_NAME", "runnerctl demo"),
            ("GIT_AUTHOR_EMAIL", "demo@runnerctl.invalid"),
            ("GIT_COMMITTER_NAME", "runnerctl demo"),
            ("GIT_COMMITTER_EMAIL", "demo@runnerctl.invalid"),
        ] {
            std::env::set_var(key, value);
        }
        for key in crate::tool::SECRET_ENV {
            std::env::remove_var(key);
        }
        std::env::remove_var("RUNNERCTL_IMAGE");
        std::env::remove_var("RUNNERCTL_TAGS");
        std::env::remove_var("RUNNERCTL_STATE_DIR");
    }

    let ws = Workspace {
        root: root.clone(),
        runner: Runner::new(Reporter::silent()),
        git,
    };
    println!("runnerctl demo: workspace {}\n", root.display());

    // 1. The stand-in nixpkgs.
    let nixpkgs = root.join("nixpkgs");
    std::fs::create_dir_all(&nixpkgs).into_diagnostic()?;
    ws.git(&nixpkgs, &["init", "-q", "-b", "main"], None)
        .await?;
    ws.commit_nixpkgs("2026-06-29", FIRST_DATE).await?;

    // 2. The runner flake, locked to it, committed and pushed to a bare remote.
    let remote = root.join("remote.git");
    ws.git(
        &root,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &remote.display().to_string(),
        ],
        None,
    )
    .await?;
    let flake = root.join("runner");
    std::fs::create_dir_all(&flake).into_diagnostic()?;
    let url = format!("git+file://{}?ref=main", nixpkgs.display());
    ws.write(
        &flake.join("flake.nix"),
        &RUNNER_FLAKE.replace("@NIXPKGS_URL@", &url),
    )?;
    ws.write(&flake.join("build-image.sh"), BUILD_SCRIPT)?;
    ws.git(&flake, &["init", "-q", "-b", "main"], None).await?;
    ws.git(&flake, &["add", "-A"], None).await?;
    let nix_path = which::which("nix").into_diagnostic()?;
    ws.runner
        .run(&Cmd::new(&nix_path).cwd(&flake).args([
            "flake",
            "lock",
            "--extra-experimental-features",
            "nix-command flakes",
        ]))
        .await?;
    ws.git(&flake, &["add", "-A"], None).await?;
    ws.git(&flake, &["commit", "-q", "-m", "runner image flake"], None)
        .await?;
    ws.git(
        &flake,
        &["remote", "add", "origin", &remote.display().to_string()],
        None,
    )
    .await?;
    ws.git(&flake, &["push", "-q", "-u", "origin", "main"], None)
        .await?;

    // 3. Upstream moves: a new nixpkgs snapshot three days later.
    ws.commit_nixpkgs("2026-07-02", FIRST_DATE + 3 * DAY)
        .await?;

    println!("== 1st bump: the stand-in nixpkgs moved, so everything runs ==\n");
    let first = bump(&flake, &[], args.progress).await?;
    println!("== 2nd bump: nothing new upstream, so nothing runs ==\n");
    let second = bump(&flake, &[], args.progress).await?;

    let ran = |r: &crate::report::Report| {
        r.stages
            .iter()
            .filter(|s| {
                s.status == crate::state::StageStatus::Done
                    && s.name != "preflight"
                    && s.name != "update"
            })
            .count()
    };
    println!("Result:");
    println!(
        "  1st bump: {} ({} stages did work), commit {}",
        first.outcome,
        ran(&first),
        first.commit.as_deref().unwrap_or("-")
    );
    println!(
        "  2nd bump: {} ({} stages did work)",
        second.outcome,
        ran(&second)
    );
    println!("  image:    {} tags {}", first.image, first.tags.join(", "));
    println!("  remote:   {}", remote.display());
    if second.outcome != crate::report::Outcome::UpToDate || ran(&second) != 0 {
        return Err(miette!(
            "the second bump was expected to be a no-op, but it was: {}",
            second.outcome
        ));
    }
    if keep {
        println!(
            "\nThe workspace is kept at {}. Try:\n  cd {} && runnerctl status",
            root.display(),
            flake.display()
        );
    } else {
        println!("\n(The workspace is removed; pass --keep or --dir DIR to keep it.)");
    }
    if let Some(tmp) = _tmp {
        if keep {
            let _ = tmp.keep();
        }
    }
    Ok(())
}
