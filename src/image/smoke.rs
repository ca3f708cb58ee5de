//! The smoke test: the built image runs as a job container before anything
//! is pushed. It is loaded into a container engine under a temporary name,
//! started the way act-based runners start a job container (a long-running
//! no-op entrypoint), and each check runs in it with `exec`, in bash, with
//! the image's Env. What it loaded and started is removed afterwards, on
//! failure and after a signal too.

use std::path::Path;

use miette::Diagnostic;
use thiserror::Error;

use crate::tool::engine::{loaded_image, Engine};
use crate::tool::{Cmd, Output, Runner, ToolError};

/// What a job needs of the image: node for JavaScript actions, nix as root
/// with the image's nix.conf, git and curl for checkouts and fetches, and a
/// CA bundle where Nix looks for it.
pub const DEFAULT_CHECKS: &[&str] = &[
    "node --version",
    "nix --version",
    "git --version",
    "curl --version",
    "nix-instantiate --eval --expr '1 + 1'",
    "test -s \"$NIX_SSL_CERT_FILE\"",
];

/// How many lines of a failed check's output the diagnostic shows.
const TAIL: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub engine: &'static str,
    pub checks: usize,
}

#[derive(Debug, Error, Diagnostic)]
pub enum SmokeError {
    #[error("smoke check `{check}` failed in the image ({status}){tail}")]
    #[diagnostic(
        code(runnerctl::smoke::check_failed),
        help(
            "nothing was pushed or committed. Run the image by hand to look closer \
             (`{engine} load -i ARCHIVE`, then `{engine} run --rm -it --entrypoint bash IMAGE`), \
             fix the image in the flake, and run again"
        )
    )]
    CheckFailed {
        engine: &'static str,
        check: String,
        status: String,
        tail: String,
    },

    #[error("the smoke test could not {what} with {engine}")]
    #[diagnostic(
        code(runnerctl::smoke::engine),
        help(
            "check that `{engine} info` works for this user; `--smoke never` skips the \
             smoke test (verify still runs)"
        )
    )]
    Engine {
        engine: &'static str,
        what: &'static str,
        #[source]
        #[diagnostic_source]
        source: ToolError,
    },

    #[error("{engine} loaded the image archive but did not say under which name")]
    #[diagnostic(
        code(runnerctl::smoke::load_output),
        help("run `{engine} load -i ARCHIVE` by hand to see what it prints")
    )]
    LoadOutput { engine: &'static str },
}

/// A unique suffix for the temporary names of this run.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:09}", std::process::id())
}

/// The temporary image name and container name of one smoke run.
pub fn temporary_names(id: &str) -> (String, String) {
    (
        format!("localhost/runnerctl-smoke:{id}"),
        format!("runnerctl-smoke-{id}"),
    )
}

/// The commands a smoke run would run, for the dry-run plan.
pub fn plan(engine: &Engine, archive: &Path, checks: &[String]) -> Vec<String> {
    let (image, container) = temporary_names("ID");
    let mut plan = vec![
        engine.load(archive).display(),
        engine.tag("IMAGE", &image).display(),
        engine.start(&image, &container).display(),
    ];
    plan.extend(
        checks
            .iter()
            .map(|check| engine.exec_bash(&container, check).display()),
    );
    plan.push(engine.remove_container(&container).display());
    plan.push(engine.remove_name(&image).display());
    plan
}

struct Session<'a> {
    runner: &'a Runner,
    engine: &'a Engine,
    image: String,
    container: String,
    /// What to undo, in order, when the run ends.
    undo: Vec<Cmd>,
}

impl Session<'_> {
    async fn run(&self, cmd: Cmd, what: &'static str) -> Result<Output, SmokeError> {
        self.runner
            .run(&cmd)
            .await
            .map_err(|source| SmokeError::Engine {
                engine: self.engine.name(),
                what,
                source,
            })
    }

    async fn image_id(&self, name: &str) -> Option<String> {
        let out = self
            .runner
            .run_unchecked(&self.engine.image_id(name))
            .await
            .ok()?;
        let id = out.stdout.trim();
        (out.success() && !id.is_empty()).then(|| id.to_string())
    }

    /// Load the archive under the temporary name. A name the archive
    /// carries (dockerTools' `nixos:DATE`) is left as it was before.
    async fn load(&mut self, archive: &Path, archive_name: Option<&str>) -> Result<(), SmokeError> {
        let before = match archive_name {
            Some(name) => self.image_id(name).await,
            None => None,
        };
        let out = self
            .run(self.engine.load(archive), "load the image archive")
            .await?;
        let loaded = loaded_image(&out.stdout).ok_or(SmokeError::LoadOutput {
            engine: self.engine.name(),
        })?;
        self.run(
            self.engine.tag(&loaded, &self.image),
            "name the loaded image",
        )
        .await?;
        self.undo.push(self.engine.remove_name(&self.image));
        // Best effort: another load of the same archive at the same time
        // may have done it already.
        if let Some(name) = archive_name {
            let now = self.image_id(name).await;
            let undo_name = match before {
                Some(old) if Some(&old) != now.as_ref() => Some(self.engine.tag(&old, name)),
                Some(_) => None,
                None => Some(self.engine.remove_name(name)),
            };
            if let Some(cmd) = undo_name {
                let _ = self.runner.run_unchecked(&cmd).await;
            }
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), SmokeError> {
        // Removed even if `run` fails halfway (it may have created it).
        self.undo
            .insert(0, self.engine.remove_container(&self.container));
        self.run(
            self.engine.start(&self.image, &self.container),
            "start a job container",
        )
        .await?;
        Ok(())
    }

    async fn check(&self, check: &str) -> Result<(), SmokeError> {
        let cmd = self.engine.exec_bash(&self.container, check);
        let out = self
            .runner
            .run_unchecked(&cmd)
            .await
            .map_err(|source| SmokeError::Engine {
                engine: self.engine.name(),
                what: "run a check",
                source,
            })?;
        if out.success() {
            return Ok(());
        }
        Err(SmokeError::CheckFailed {
            engine: self.engine.name(),
            check: check.to_string(),
            status: match out.code {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            },
            tail: output_tail(&out),
        })
    }

    /// Undo what this run made; runs after a signal too.
    async fn clean_up(&mut self) {
        for cmd in std::mem::take(&mut self.undo) {
            let _ = self.runner.run_cleanup(&cmd).await;
        }
    }
}

/// The last lines of a check's output (stdout, then stderr), bounded.
fn output_tail(out: &Output) -> String {
    let lines: Vec<String> = out
        .stdout
        .lines()
        .map(|line| crate::diagnostic::bound(line, 200))
        .chain(out.stderr_tail.iter().cloned())
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "; it printed nothing".to_string();
    }
    let start = lines.len().saturating_sub(TAIL);
    let mut text = format!("; the last {} lines of its output:", lines.len() - start);
    for line in &lines[start..] {
        text.push_str("\n  │ ");
        text.push_str(line);
    }
    text
}

/// Load `archive`, start it as a job container, run `checks` in it, and
/// remove what was made. `archive_name` is the name the archive carries
/// (its RepoTags), which stays as it was.
pub async fn run(
    runner: &Runner,
    engine: &Engine,
    archive: &Path,
    archive_name: Option<&str>,
    checks: &[String],
) -> Result<Passed, SmokeError> {
    let (image, container) = temporary_names(&run_id());
    let mut session = Session {
        runner,
        engine,
        image,
        container,
        undo: Vec::new(),
    };
    let result = async {
        session.load(archive, archive_name).await?;
        session.start().await?;
        for check in checks {
            session.check(check).await?;
        }
        Ok(Passed {
            engine: engine.name(),
            checks: checks.len(),
        })
    }
    .await;
    session.clean_up().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::engine::EngineKind;

    #[test]
    fn the_plan_loads_starts_checks_and_removes() {
        let engine = Engine {
            kind: EngineKind::Podman,
            program: "podman".into(),
        };
        let plan = plan(
            &engine,
            Path::new("/nix/store/x-image.tar"),
            &["node --version".to_string()],
        );
        assert_eq!(
            plan,
            vec![
                "podman load --quiet --input /nix/store/x-image.tar",
                "podman tag IMAGE localhost/runnerctl-smoke:ID",
                "podman run --detach --name runnerctl-smoke-ID --entrypoint tail localhost/runnerctl-smoke:ID -f /dev/null",
                "podman exec runnerctl-smoke-ID bash -c 'node --version'",
                "podman rm --force --time 0 runnerctl-smoke-ID",
                "podman rmi localhost/runnerctl-smoke:ID",
            ]
        );
    }

    #[test]
    fn a_failed_check_shows_its_last_lines_bounded() {
        let out = Output {
            stdout: (1..=30).map(|n| format!("line {n}\n")).collect(),
            stderr_tail: vec!["node: error while loading shared libraries: libdl.so.2".into()],
            code: Some(127),
        };
        let tail = output_tail(&out);
        assert!(
            tail.starts_with("; the last 12 lines of its output:"),
            "{tail}"
        );
        assert!(tail.ends_with("libdl.so.2"), "{tail}");
        assert!(!tail.contains("line 19\n"), "{tail}");
        assert_eq!(tail.lines().count(), 13, "{tail}");
    }
}
