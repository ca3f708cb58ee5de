//! A container engine for the tests that run images (`mod engine_support;`
//! beside `mod common;`): podman with a configuration, storage and registry
//! list of the test's own, so a test sees only what it made and can assert
//! what is left.
//!
//! - [`Podman`]: containers.conf (runc, cgroupfs, host network, no default
//!   ulimits), storage.conf (vfs under a temp dir: no overlay mounts to leak)
//!   and registries.conf (the test registries insecure); [`Podman::env`] is
//!   what a runnerctl run needs so that its `podman` uses them.
//! - [`PodmanService`]: `podman system service` on a unix socket, the Docker
//!   API act talks to.
//! - [`runnable_repo`]: a [`RunnerRepo`] whose flake is the runnable fixture
//!   (tests/fixtures/runnable), images whose programs really run.
//! - [`require`]: a missing podman, runc or act fails the test with the way
//!   to install it.
//! - [`path_without_engines`]: a PATH on which neither podman nor docker is.
//! - [`TlsServer`]: `openssl s_server` with a throw-away CA, for a job's TLS
//!   step.
// Each test binary that declares this module uses a different part of it:
// with the module split by topic, every file still has items that some of
// those binaries leave unused, so the lint is off here (items that no
// binary uses are removed by hand).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::common::{
    find_on_path, new_tempdir, run_checked, write_file, RunnerRepo, ServerProcess, StandInNixpkgs,
};

/// The runnable fixture flake; `@NIXPKGS_URL@` is replaced by the stand-in's URL.
pub const RUNNABLE_FLAKE_NIX: &str = include_str!("../fixtures/runnable/flake.nix");
/// The builder script of the runnable fixture.
pub const RUNNABLE_BUILD_SH: &str = include_str!("../fixtures/runnable/build-runnable.sh");

/// Fails the test unless `tool` is on PATH, naming the step that installs it.
pub fn require(tool: &str) {
    if find_on_path(tool, Path::new("")).is_none() {
        panic!("`{tool}` is not on PATH: `bash scripts/setup` installs it (podman, runc, act)");
    }
}

/// podman with its own configuration and storage under a temp dir. Dropping
/// it removes every container and image in that storage, then the dir.
pub struct Podman {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl Podman {
    /// A fresh, empty storage; `insecure` registries (`HOST:PORT`) are
    /// reached over plain HTTP.
    pub fn new(insecure: &[String]) -> Self {
        require("podman");
        require("runc");
        let dir = new_tempdir("podman");
        let d = dir.path();
        for sub in ["graph", "run", "tmp"] {
            fs::create_dir_all(d.join(sub))
                .unwrap_or_else(|e| panic!("could not create {}: {e}", d.join(sub).display()));
        }
        // runc, not crun 1.8 (which refuses hybrid cgroups); cgroupfs, as
        // there may be no systemd; no default ulimits, which an unprivileged
        // container cannot raise; the host's network, so that no CNI or
        // netavark configuration is needed. Events go to a file in tmp_dir.
        write_file(
            &d.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = []\n\
                 netns = \"host\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"file\"\n\
                 tmp_dir = \"{}\"\n",
                d.join("tmp").display()
            ),
        );
        // vfs: slower than overlay, but it mounts nothing (nothing can leak
        // when a test dies) and works on any filesystem, overlayfs included
        // (scripts/rootfs runs the tests on one).
        write_file(
            &d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graph").display(),
                d.join("run").display()
            ),
        );
        let mut registries = String::from("unqualified-search-registries = []\n");
        for host in insecure {
            registries.push_str(&format!(
                "\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        write_file(&d.join("registries.conf"), registries);
        let env = [
            ("CONTAINERS_CONF", "containers.conf"),
            ("CONTAINERS_STORAGE_CONF", "storage.conf"),
            ("CONTAINERS_REGISTRIES_CONF", "registries.conf"),
        ]
        .iter()
        .map(|(k, f)| (k.to_string(), d.join(f).display().to_string()))
        .collect();
        Podman { dir, env }
    }

    /// The variables that point podman at this configuration; pass them to
    /// runnerctl (which passes no engine configuration of its own).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `podman ARGS…` with [`env`](Self::env).
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `podman ARGS…`, panics unless it exits 0, returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run_checked(&mut self.cmd(args))
    }

    /// Every image in the storage, one `NAME:TAG` per name (or `<none>:<none>
    /// ID` for an image without a name).
    pub fn images(&self) -> Vec<String> {
        self.run(&[
            "images",
            "--all",
            "--noheading",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}}",
        ])
        .lines()
        .map(|l| {
            let (name, id) = l.split_once(' ').unwrap_or((l, ""));
            if name == "<none>:<none>" {
                format!("{name} {id}")
            } else {
                name.to_string()
            }
        })
        .collect()
    }

    /// Names of every container in the storage, running or not.
    pub fn containers(&self) -> Vec<String> {
        self.run(&["ps", "--all", "--noheading", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The storage's event log so far, one `TYPE STATUS NAME` line per event
    /// (e.g. `container create runnerctl-smoke-…`, `image loadfromarchive …`):
    /// what podman did for whoever used this configuration.
    pub fn events(&self) -> Vec<String> {
        self.run(&[
            "events",
            "--stream=false",
            "--format",
            "{{.Type}} {{.Status}} {{.Name}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Starts `podman system service` on a socket in the temp dir. A
    /// client sends registry credentials with its pull (act: from
    /// `$DOCKER_CONFIG/config.json`).
    pub fn service(&self) -> PodmanService {
        let socket = self.dir.path().join("podman.sock");
        let _ = fs::remove_file(&socket);
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend([
            "podman".into(),
            "system".into(),
            "service".into(),
            "--time=0".into(),
            format!("unix://{}", socket.display()),
        ]);
        let argv_os: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
        let log = self.dir.path().join("service.log");
        let process = ServerProcess::start(
            "podman-service",
            &argv_os,
            &log,
            &self.dir.path().join("service.pid"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut service = PodmanService {
            process,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&service.socket).is_err() {
            if service.process.exited() || Instant::now() > deadline {
                panic!(
                    "podman system service did not listen on {}:\n{}",
                    service.socket.display(),
                    service.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        service
    }

    fn cleanup(&self) {
        // Best effort, quietly: what a test left is removed with the dir.
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            let _ = self
                .cmd(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // A conmon of an exec session started through the API (act's steps)
        // waits out its --exit-delay (300 s) after its container is gone:
        // it would outlive the test (and scripts/test's leak check).
        for pid in processes_mentioning(self.dir.path()) {
            let _ = Command::new("bash")
                .args(["-c", "kill -KILL -- \"$1\" 2>/dev/null", "kill", &pid])
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Pids of the processes whose command line mentions `dir` (conmon names
/// its container's directory under the storage).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_string();
            pid.bytes().all(|b| b.is_ascii_digit()).then_some(pid)
        })
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `podman system service` for act (`DOCKER_HOST=unix://SOCKET`); killed
/// (with its process group) on drop. The containers it started stay in the
/// [`Podman`] storage, which removes them when dropped.
pub struct PodmanService {
    process: ServerProcess,
    socket: PathBuf,
    log: PathBuf,
}

impl PodmanService {
    /// `unix:///…/podman.sock`
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The service's own output.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A [`RunnerRepo`] whose flake is the runnable fixture: `packages.x86_64-linux`
/// `nixos`, `nixos-node-lib`, `nixos-nix-conf`, `nixos-no-bash`,
/// `nixos-no-node`. With `extra_ca` (PEM), that certificate is added to every
/// image's CA bundle.
pub fn runnable_repo(nixpkgs: &StandInNixpkgs, extra_ca: Option<&str>) -> RunnerRepo {
    let mut files: Vec<(&str, &[u8])> = vec![("build-runnable.sh", RUNNABLE_BUILD_SH.as_bytes())];
    if let Some(pem) = extra_ca {
        files.push(("extra-ca.crt", pem.as_bytes()));
    }
    RunnerRepo::with_flake(nixpkgs, RUNNABLE_FLAKE_NIX, &files)
}

/// A directory to use as the whole PATH: links to everything on the current
/// PATH (first one of each name wins) except podman and docker. Keep the
/// returned dir alive while it is used.
pub fn path_without_engines() -> TempDir {
    let dir = new_tempdir("path");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "podman" || name == "docker" {
                continue;
            }
            let link = dir.path().join(&name);
            if link.symlink_metadata().is_err() {
                let _ = symlink(entry.path(), &link);
            }
        }
    }
    dir
}

/// An HTTPS server on 127.0.0.1 (`openssl s_server -www`) whose certificate
/// a throw-away CA of its own signed: images built with
/// [`ca_pem`](Self::ca_pem) in their bundle trust it, nothing else does (the
/// host's trust store is not touched). Killed on drop.
pub struct TlsServer {
    dir: TempDir,
    port: u16,
    _process: ServerProcess,
}

impl TlsServer {
    pub fn new() -> Self {
        let dir = new_tempdir("tls");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            run_checked(Command::new("openssl").args(args).current_dir(d));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=runnerctl test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        write_file(
            &d.join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = CA:FALSE\n\
             extendedKeyUsage = serverAuth\n",
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let (cert, key, ca) = (d.join("server.crt"), d.join("server.key"), d.join("ca.crt"));
        let log = d.join("s_server.log");
        // Another process may take the port between probing and binding.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = crate::common::free_port();
            let accept = format!("127.0.0.1:{port}");
            let argv: [&OsStr; 10] = [
                "openssl".as_ref(),
                "s_server".as_ref(),
                "-quiet".as_ref(),
                "-www".as_ref(),
                "-accept".as_ref(),
                accept.as_ref(),
                "-cert".as_ref(),
                cert.as_os_str(),
                "-key".as_ref(),
                key.as_os_str(),
            ];
            let mut process = ServerProcess::start("tls", &argv, &log, &d.join("s_server.pid"))
                .unwrap_or_else(|e| panic!("{e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !process.exited() && Instant::now() < deadline {
                let served = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "--cacert"])
                    .arg(&ca)
                    .arg(format!("https://{accept}/"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if served {
                    return TlsServer {
                        dir,
                        port,
                        _process: process,
                    };
                }
                thread::sleep(Duration::from_millis(50));
            }
            process.stop();
            last_err = fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("openssl s_server did not serve HTTPS: {last_err}");
    }

    /// The CA certificate (PEM) that signed the server's.
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.dir.path().join("ca.crt"))
            .unwrap_or_else(|e| panic!("the test CA: {e}"))
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
