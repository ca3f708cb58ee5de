//! A real Nix remote builder for the tests: Debian 13's sshd and Nix, in a
//! Debian 13 root filesystem of their own (scripts/rootfs), on 127.0.0.1 and
//! a free port.
//!
//! - The root is `scripts/rootfs run --debian 13 --with nix-bin,openssh-server`:
//!   a throw-away overlay over a cached Debian 13 root with trixie's nix-bin
//!   and openssh-server installed, in its own mount and PID namespaces
//!   (pivot_root), so everything in it dies with it.
//! - sshd runs inside that root (`sshd -D -e`), so every login, and the
//!   `nix-daemon --stdio` that Nix's `ssh-ng://` store starts, runs there.
//!   Its configuration, a test-only host key and `authorized_keys` are in a
//!   temporary directory bound at [`GUEST_DIR`]; key authentication only.
//! - The remote Nix store is the temporary directory bound at `/nix`, so the
//!   test can read it from outside; its `nix.conf` has
//!   `extra-platforms = aarch64-linux` (Nix does not look at a builder's ELF,
//!   so a `/bin/sh` builder "builds for aarch64"), no substituters, no
//!   sandbox and no build users.
//! - [`GUEST_DIR`]`/marker` holds a random token that exists only inside the
//!   builder's root: a build that reads it proves where it ran.
//!
//! The local side ([`RemoteBuilder::nix_config`]) names the builder in
//! `builders` with the client key and the pinned host key, sets
//! `builders-use-substitutes = false` and `max-jobs = 0` (the local machine
//! builds nothing), and passes sshd's port in `NIX_SSHOPTS` (Nix 2.8's store
//! URIs have no port).
//!
//! Nothing here skips: if the root, sshd or Nix cannot start, the test panics
//! and says why.

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

use crate::common::{free_port, ServerProcess};

/// Where the builder's directory (sshd_config, keys, marker) is bound in its root.
pub const GUEST_DIR: &str = "/srv/runnerctl-builder";
/// The Debian release of the builder's root.
pub const DEBIAN_RELEASE: &str = "13";
/// What the builder's root has besides the cached Debian 13 root.
pub const PACKAGES: &str = "nix-bin,openssh-server";
/// The system the builder builds for (and the local machine cannot).
pub const REMOTE_SYSTEM: &str = "aarch64-linux";

/// How long the first use may take to build the cached roots (debootstrap
/// of Debian 13, then apt-get install of nix-bin and openssh-server).
const ROOT_BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// How long sshd may take to answer once the root is there.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The root's entry point: Nix's configuration, then sshd in the foreground.
const START_SH: &str = r#"set -eu
d=/srv/runnerctl-builder
mkdir -p /etc/nix /run/sshd
chmod 0755 /run/sshd
cp "$d/nix.conf" /etc/nix/nix.conf
echo "runnerctl remote builder: $(cat /etc/debian_version), $(nix-store --version), $(/usr/sbin/sshd -V 2>&1 | head -n 1)" >&2
exec /usr/sbin/sshd -D -e -f "$d/sshd_config"
"#;

/// The remote Nix's configuration (root, single-user, offline).
const REMOTE_NIX_CONF: &str = "build-users-group =\n\
sandbox = false\n\
substituters =\n\
extra-platforms = aarch64-linux\n\
experimental-features = nix-command\n";

/// How the local Nix talks to the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `ssh-ng://`: the remote runs `nix-daemon --stdio` (the daemon protocol).
    SshNg,
    /// `ssh://`: the remote runs `nix-store --serve --write` (the legacy
    /// serve protocol).
    Ssh,
}

impl Protocol {
    /// The store URI scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::SshNg => "ssh-ng",
            Protocol::Ssh => "ssh",
        }
    }
}

/// A running remote builder. Stopped (its whole root) on drop.
pub struct RemoteBuilder {
    dir: TempDir,
    port: u16,
    marker: String,
    host_key_line: String,
    server: Option<ServerProcess>,
}

impl RemoteBuilder {
    /// Builds (or reuses) the cached root, starts sshd in it and waits until
    /// a login runs `nix-store --version` there. Panics, saying what is
    /// missing, if any of it cannot work on this machine.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("runnerctl-remote-builder-")
            .tempdir()
            .unwrap_or_else(|e| panic!("could not create the remote builder's directory: {e}"));
        let guest = dir.path().join("guest");
        let store = dir.path().join("nix");
        let work = dir.path().join("work");
        for d in [&guest, &store, &work] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }

        ensure_root();

        let port = free_port();
        keygen(&guest.join("host_key"), "runnerctl-test-builder-host");
        keygen(&dir.path().join("client_key"), "runnerctl-test-client");
        let client_pub = read(&dir.path().join("client_key.pub"));
        write(&guest.join("authorized_keys"), &client_pub);
        let host_pub = read(&guest.join("host_key.pub"));
        // "ssh-ed25519 AAAA…" without the comment: a known_hosts entry's key.
        let host_key_line = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        write(
            &dir.path().join("known_hosts"),
            &format!("127.0.0.1 {host_key_line}\n"),
        );
        let marker = format!("remote-builder-{}-{}", std::process::id(), nanos_now());
        write(&guest.join("marker"), &format!("{marker}\n"));
        write(&guest.join("nix.conf"), REMOTE_NIX_CONF);
        write(&guest.join("start.sh"), START_SH);
        write(
            &guest.join("sshd_config"),
            &format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {GUEST_DIR}/host_key\n\
                 AuthorizedKeysFile {GUEST_DIR}/authorized_keys\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile none\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n"
            ),
        );

        let rootfs = scripts_rootfs();
        let guest_bind = format!("{}:{GUEST_DIR}", guest.display());
        let store_bind = format!("{}:/nix", store.display());
        let work_env = format!("RUNNERCTL_ROOTFS_WORK={}", work.display());
        let guest_start = format!("{GUEST_DIR}/start.sh");
        let argv: Vec<&std::ffi::OsStr> = [
            "env",
            work_env.as_str(),
            "bash",
            rootfs.to_str().expect("a UTF-8 path to scripts/rootfs"),
            "run",
            "--debian",
            DEBIAN_RELEASE,
            "--with",
            PACKAGES,
            "--bind",
            guest_bind.as_str(),
            "--bind",
            store_bind.as_str(),
            "--",
            "/bin/sh",
            guest_start.as_str(),
        ]
        .into_iter()
        .map(std::ffi::OsStr::new)
        .collect();
        let log = dir.path().join("builder.log");
        let server = ServerProcess::start(
            "remote-builder",
            &argv,
            &log,
            &dir.path().join("builder.pid"),
        )
        .unwrap_or_else(|e| panic!("remote builder: {e}"));
        let mut builder = RemoteBuilder {
            dir,
            port,
            marker,
            host_key_line,
            server: Some(server),
        };
        builder.wait_until_ready();
        builder
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.server.as_mut().is_some_and(|s| s.exited()) {
                panic!(
                    "remote builder: the Debian {DEBIAN_RELEASE} root with sshd ended before it \
                     accepted a login; cannot test a remote builder here.\n--- its log ---\n{}",
                    self.log()
                );
            }
            let out = self
                .ssh_command("nix-store --version")
                .output()
                .unwrap_or_else(|e| {
                    panic!("remote builder: could not start ssh (install openssh-client): {e}")
                });
            if out.status.success() {
                return;
            }
            let last = String::from_utf8_lossy(&out.stderr);
            if Instant::now() > deadline {
                panic!(
                    "remote builder: no login to sshd on 127.0.0.1:{} ran nix-store within {:?}; \
                     cannot test a remote builder here.\n--- last ssh error ---\n{last}\n--- builder log ---\n{}",
                    self.port,
                    START_TIMEOUT,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// sshd's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The token that only the builder's root holds (at [`GUEST_DIR`]`/marker`).
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The remote store's `/nix`, as seen from outside the root.
    pub fn nix_dir(&self) -> PathBuf {
        self.dir.path().join("nix")
    }

    /// What the root and sshd printed (sshd logs every login with -e).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("builder.log")).unwrap_or_default()
    }

    /// The `builders` line for Nix 2.8's machines format:
    /// `URI SYSTEMS SSH-KEY MAX-JOBS SPEED FEATURES MANDATORY HOST-KEY-BASE64`.
    pub fn builders_line(&self, protocol: Protocol) -> String {
        let host_key = base64::engine::general_purpose::STANDARD.encode(&self.host_key_line);
        format!(
            "{}://root@127.0.0.1 {REMOTE_SYSTEM} {} 1 1 - - {host_key}",
            protocol.scheme(),
            self.client_key().display()
        )
    }

    /// Lines to append to a test's `NIX_CONFIG`: the builder, no
    /// substitutes on it, and no local builds.
    pub fn nix_config(&self, protocol: Protocol) -> String {
        format!(
            "builders = {}\nbuilders-use-substitutes = false\nmax-jobs = 0\n",
            self.builders_line(protocol)
        )
    }

    /// `NIX_SSHOPTS` for Nix's ssh: the port (the store URI cannot carry
    /// one in Nix 2.8), no user ssh configuration, never a prompt, and the
    /// host key looked up as `127.0.0.1` (the name in the known_hosts file
    /// Nix writes from the pinned key; with a port ssh would look up
    /// `[127.0.0.1]:PORT`).
    pub fn nix_sshopts(&self) -> String {
        format!(
            "-F /dev/null -p {} -o BatchMode=yes -o IdentitiesOnly=yes -o HostKeyAlias=127.0.0.1 -o StrictHostKeyChecking=yes",
            self.port
        )
    }

    /// The environment for a local `nix` (or runnerctl) that uses the
    /// builder: `base` (a test's [`nix_env`](crate::common::nix_env)) with
    /// [`nix_config`](Self::nix_config) appended to its `NIX_CONFIG`, and
    /// `NIX_SSHOPTS`.
    pub fn local_env(
        &self,
        base: &[(String, String)],
        protocol: Protocol,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| {
                if k == "NIX_CONFIG" {
                    (k.clone(), format!("{v}{}", self.nix_config(protocol)))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        assert!(
            env.iter().any(|(k, _)| k == "NIX_CONFIG"),
            "the base environment has no NIX_CONFIG"
        );
        env.push(("NIX_SSHOPTS".to_string(), self.nix_sshopts()));
        env
    }

    /// `ssh … root@127.0.0.1 COMMAND`: a login into the builder's root,
    /// with the test's key and the pinned host key.
    pub fn ssh_command(&self, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(self.client_key())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "HostKeyAlias=127.0.0.1",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=5",
            ])
            .arg(format!(
                "-oUserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args(["root@127.0.0.1", command])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs COMMAND in the builder's root over ssh; panics unless it exits
    /// 0, and returns its stdout.
    pub fn ssh(&self, command: &str) -> String {
        let out = self
            .ssh_command(command)
            .output()
            .unwrap_or_else(|e| panic!("could not start ssh: {e}"));
        assert!(
            out.status.success(),
            "ssh to the remote builder: `{command}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the root: SIGTERM to scripts/rootfs (which stops the root's
    /// PID namespace and removes its copy), then SIGKILL to whatever is
    /// left of the supervisor's process group.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if let Ok(pid) = fs::read_to_string(self.dir.path().join("builder.pid")) {
            let _ = Command::new("bash")
                .args(["-c", "kill -TERM -- \"$1\" 2>/dev/null", "kill", pid.trim()])
                .stdin(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !server.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        server.stop();
    }
}

impl Drop for RemoteBuilder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- remote builder log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// `scripts/rootfs` of this checkout.
fn scripts_rootfs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rootfs")
}

/// `scripts/rootfs build --debian 13 --with nix-bin,openssh-server`: the
/// cached roots, built on first use (needs root, namespaces, debootstrap and
/// Debian's archive). Panics with its output if it fails.
fn ensure_root() {
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(scripts_rootfs())
        .args(["build", "--debian", DEBIAN_RELEASE, "--with", PACKAGES])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start bash scripts/rootfs: {e}"));
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > ROOT_BUILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "remote builder: scripts/rootfs build --debian {DEBIAN_RELEASE} --with {PACKAGES} \
                     took more than {ROOT_BUILD_TIMEOUT:?}; cannot test a remote builder here"
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("waiting for scripts/rootfs: {e}"),
        }
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("reading scripts/rootfs' output: {e}"));
    assert!(
        out.status.success(),
        "remote builder: `scripts/rootfs build --debian {DEBIAN_RELEASE} --with {PACKAGES}` failed \
         with {}: no Debian {DEBIAN_RELEASE} root with Nix and sshd, so no remote builder can be \
         tested here (it needs root, mount and PID namespaces, debootstrap and Debian's archive).\n\
         --- its output ---\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "remote builder: root {} ready in {:.1?}",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed()
    );
}

/// `ssh-keygen -t ed25519` without a passphrase into `path` (and `path.pub`).
fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("remote builder: could not start ssh-keygen (install openssh-client): {e}")
        });
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
