//! A container engine (podman, or docker) as the smoke stage uses it: load
//! an image archive, start a job container the way act-based runners do,
//! run checks in it with `exec`, and remove what it made.
//!
//! runnerctl passes no engine configuration of its own: the user's
//! containers.conf, registries and storage apply as they are.

use std::path::{Path, PathBuf};

use super::Cmd;

/// Which engine: their command lines differ in a few places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Podman,
    Docker,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Podman => "podman",
            EngineKind::Docker => "docker",
        }
    }
}

/// The program nektos/act and Forgejo's runner keep a job container alive
/// with (`tail -f /dev/null`); every step then runs through `exec`.
pub const KEEP_ALIVE: [&str; 3] = ["tail", "-f", "/dev/null"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub kind: EngineKind,
    pub program: PathBuf,
}

impl Engine {
    /// The first engine on PATH: podman, then docker.
    pub fn find() -> Option<Engine> {
        [EngineKind::Podman, EngineKind::Docker]
            .into_iter()
            .find_map(|kind| {
                which::which(kind.as_str())
                    .ok()
                    .map(|program| Engine { kind, program })
            })
    }

    pub fn name(&self) -> &'static str {
        self.kind.as_str()
    }

    fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        Cmd::new(&self.program).args(args)
    }

    /// `image inspect` printing the image's ID (fails if there is none).
    pub fn image_id(&self, image: &str) -> Cmd {
        self.cmd(["image", "inspect", "--format", "{{.Id}}", image])
    }

    /// Load a docker-archive (tar) into the engine's storage.
    pub fn load(&self, archive: &Path) -> Cmd {
        self.cmd(["load", "--quiet", "--input"])
            .args([archive.as_os_str()])
    }

    pub fn tag(&self, image: &str, name: &str) -> Cmd {
        self.cmd(["tag", image, name])
    }

    /// Remove a name; the image goes too when no other name is left on it.
    pub fn remove_name(&self, name: &str) -> Cmd {
        self.cmd(["rmi", name])
    }

    /// Start a job container: detached, kept alive by [`KEEP_ALIVE`], with
    /// the image's own Env and user.
    pub fn start(&self, image: &str, container: &str) -> Cmd {
        self.cmd(["run", "--detach", "--name", container, "--entrypoint"])
            .args([KEEP_ALIVE[0], image])
            .args(&KEEP_ALIVE[1..])
    }

    /// Run one check in the container, in bash, as a job step runs.
    pub fn exec_bash(&self, container: &str, script: &str) -> Cmd {
        self.cmd(["exec", container, "bash", "-c", script])
    }

    /// Remove the container at once (its PID 1 ignores SIGTERM, so waiting
    /// for it to stop would only take the engine's stop timeout).
    pub fn remove_container(&self, container: &str) -> Cmd {
        match self.kind {
            EngineKind::Podman => self.cmd(["rm", "--force", "--time", "0", container]),
            EngineKind::Docker => self.cmd(["rm", "--force", container]),
        }
    }
}

/// The image name a `load` reported (`Loaded image: NAME`, or docker's
/// `Loaded image ID: sha256:…` for an archive without a name).
pub fn loaded_image(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        let line = line.trim();
        line.strip_prefix("Loaded image ID:")
            .or_else(|| line.strip_prefix("Loaded image(s):"))
            .or_else(|| line.strip_prefix("Loaded image:"))
            .map(|rest| rest.trim().split(',').next().unwrap_or("").to_string())
            .filter(|name| !name.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman() -> Engine {
        Engine {
            kind: EngineKind::Podman,
            program: "podman".into(),
        }
    }

    fn docker() -> Engine {
        Engine {
            kind: EngineKind::Docker,
            program: "docker".into(),
        }
    }

    #[test]
    fn a_job_container_is_kept_alive_by_tail_as_act_does() {
        assert_eq!(
            podman().start("img:1", "c1").display(),
            "podman run --detach --name c1 --entrypoint tail img:1 -f /dev/null"
        );
        assert_eq!(
            docker().start("img:1", "c1").display(),
            "docker run --detach --name c1 --entrypoint tail img:1 -f /dev/null"
        );
    }

    #[test]
    fn checks_run_in_bash_through_exec() {
        assert_eq!(
            podman().exec_bash("c1", "node --version").display(),
            "podman exec c1 bash -c 'node --version'"
        );
    }

    #[test]
    fn containers_are_removed_without_waiting_for_a_stop_timeout() {
        assert_eq!(
            podman().remove_container("c1").display(),
            "podman rm --force --time 0 c1"
        );
        assert_eq!(
            docker().remove_container("c1").display(),
            "docker rm --force c1"
        );
    }

    #[test]
    fn the_loaded_name_is_read_from_either_engine() {
        assert_eq!(
            loaded_image("Loaded image: localhost/nixos:20260629\n").as_deref(),
            Some("localhost/nixos:20260629")
        );
        assert_eq!(
            loaded_image("Loaded image(s): localhost/nixos:1,localhost/nixos:2\n").as_deref(),
            Some("localhost/nixos:1")
        );
        assert_eq!(
            loaded_image("Loaded image ID: sha256:abc\n").as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(loaded_image("Getting image source signatures\n"), None);
    }
}
