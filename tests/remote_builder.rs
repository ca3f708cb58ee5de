//! A real Nix remote builder (issue 13's test plan): runnerctl, as it is,
//! builds an aarch64-linux image on this x86_64 machine only through Nix's
//! own `builders`, and pushes what came back.
//!
//! The builder (tests/remote_support) is Debian 13's sshd on 127.0.0.1 and a
//! free port, with key authentication and a test-only host key, in a Debian
//! 13 root filesystem of its own with its own Nix (2.26) and its own store.
//! The local Nix (this machine's) has `builders` naming it for
//! aarch64-linux, `builders-use-substitutes = false` and `max-jobs = 0`.
//!
//! How the test knows the image was built there and nowhere else:
//! - the fixture's builder (tests/fixtures/remote/build-on-builder.sh) fails
//!   unless it can read a marker only the builder's root has, and writes that
//!   marker into its build log and into the image;
//! - the out path is new (a fresh stand-in nixpkgs) and in neither store
//!   before the run;
//! - after the run the remote store has the out path (and, over `ssh-ng://`,
//!   the build log, read there with the remote's own `nix-store`), the local
//!   build log has the builder's output with the marker, sshd logged the key
//!   login, and the local store has the out path, copied back;
//! - the registry has the image under runnerctl's tags, with the arm64
//!   config of the archive that came back.
//!
//! It never skips: if the root, sshd or the remote Nix cannot work here, it
//! fails and says why.

mod common;
mod remote_support;

use std::path::Path;
use std::time::Instant;

use common::*;
use remote_support::{Protocol, RemoteBuilder, REMOTE_SYSTEM};

const REMOTE_FLAKE_NIX: &str = include_str!("fixtures/remote/flake.nix");
const BUILD_ON_BUILDER_SH: &str = include_str!("fixtures/remote/build-on-builder.sh");
const ATTR: &str = "packages.aarch64-linux.nixos";

/// `ssh-ng://` (the remote's `nix-daemon --stdio`): what the README
/// example names.
#[test]
fn release_builds_the_aarch64_image_on_an_ssh_ng_remote_builder_and_pushes_it() {
    // `--system aarch64-linux`: runnerctl builds packages.aarch64-linux.nixos
    // and verify checks that the image declares linux/arm64.
    release_through(Protocol::SshNg, &["--system", REMOTE_SYSTEM]);
}

/// `ssh://` (the remote's `nix-store --serve --write`): the older protocol,
/// which remote builders with an old Nix still speak.
#[test]
fn release_builds_the_aarch64_image_on_an_ssh_remote_builder_and_pushes_it() {
    release_through(Protocol::Ssh, &["--attr", ATTR]);
}

/// `runnerctl release` of the aarch64 image (`what` names it) with the local
/// Nix's `builders` naming a fresh remote builder over `protocol`; asserts
/// where the image was built, that it came back, and what was pushed.
fn release_through(protocol: Protocol, what: &[&str]) {
    let started = Instant::now();
    let builder = RemoteBuilder::start();
    eprintln!(
        "remote builder: sshd on 127.0.0.1:{} answering after {:.1?}",
        builder.port(),
        started.elapsed()
    );

    let base = fresh_time();
    let nixpkgs = StandInNixpkgs::new_at(base);
    let repo = RunnerRepo::with_flake(
        &nixpkgs,
        REMOTE_FLAKE_NIX,
        &[
            ("build-image.sh", RUNNER_BUILD_IMAGE_SH.as_bytes()),
            ("build-on-builder.sh", BUILD_ON_BUILDER_SH.as_bytes()),
        ],
    );
    let w = World::assemble(nixpkgs, repo, base, Registry::new());
    let env = builder.local_env(w.repo.nix_env(), protocol);

    // The derivation is new to both stores.
    let eval = |what: &str| {
        run_checked(nix_cmd(w.repo.path(), &env).args([
            "eval",
            "--raw",
            &format!(".#{ATTR}.{what}"),
        ]))
    };
    let drv_path = eval("drvPath");
    let out_path = eval("outPath");
    assert_eq!(eval("system"), REMOTE_SYSTEM);
    let out_name = Path::new(&out_path)
        .file_name()
        .unwrap_or_else(|| panic!("no file name in {out_path}"))
        .to_string_lossy()
        .into_owned();
    let remote_out = builder.nix_dir().join("store").join(&out_name);
    assert!(
        !Path::new(&out_path).exists(),
        "{out_path} is already in the local store: the test would not build it"
    );
    assert!(
        !remote_out.exists(),
        "{} exists already",
        remote_out.display()
    );

    let image = w.image();
    let run_started = Instant::now();
    let mut args = vec!["release", "--json"];
    args.extend_from_slice(what);
    args.extend(["--image", &image, "--tls-verify", "false"]);
    let out = w.prepare(Run::new(args).in_repo(&w.repo)).envs(&env).run();
    let run_took = run_started.elapsed();
    if out.code != Some(0) {
        panic!(
            "runnerctl release through the {} remote builder failed:\n{out}\n--- remote builder log ---\n{}",
            protocol.scheme(),
            builder.log()
        );
    }
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{out}");
    assert_eq!(
        report["out_path"].as_str(),
        Some(out_path.as_str()),
        "{out}"
    );
    assert_eq!(w.nix_builds(), 1, "{:?}", w.shims.calls("nix"));

    // Built on the remote store: the remote Nix has the out path, and the
    // build's output, which names the marker only the builder's root
    // holds, came back into the local build log.
    assert!(
        remote_out.exists(),
        "the remote store has no {out_name}: the image was not built on the remote builder"
    );
    builder.ssh(&format!("nix-store --check-validity {out_path}"));
    let expected = format!(
        "remote-builder fixture: building {out_path} for arm64 on {}",
        builder.marker()
    );
    let local_log = run_checked(
        std::process::Command::new("nix-store")
            .args(["--read-log", &drv_path])
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    assert!(
        local_log.contains(&expected),
        "the local build log of {drv_path} lacks {expected:?}:\n{local_log}"
    );
    let drv_name = Path::new(&drv_path)
        .file_name()
        .expect("a .drv file name")
        .to_string_lossy()
        .into_owned();
    let remote_log_file = builder
        .nix_dir()
        .join("var/log/nix/drvs")
        .join(&drv_name[..2])
        .join(format!("{}.bz2", &drv_name[2..]));
    match protocol {
        // The remote's nix-daemon keeps the build log in its own store,
        // read there with its own nix-store.
        Protocol::SshNg => {
            let remote_log = builder.ssh(&format!("nix-store --read-log {drv_path}"));
            assert!(
                remote_log.contains(&expected),
                "the remote store's build log of {drv_path} lacks {expected:?}:\n{remote_log}"
            );
            assert!(remote_log_file.exists(), "no {}", remote_log_file.display());
        }
        // `nix-store --serve` builds with keep-build-log off: the log is
        // only what the local Nix received.
        Protocol::Ssh => assert!(
            !remote_log_file.exists(),
            "nix-store --serve kept a build log: {}",
            remote_log_file.display()
        ),
    }
    let sshd_log = builder.log();
    assert!(
        sshd_log.contains("Accepted publickey for root"),
        "sshd logged no key login:\n{sshd_log}"
    );

    // Copied back: the local store has the out path, an arm64 image whose
    // last layer names the builder's marker.
    assert!(
        Path::new(&out_path).exists(),
        "{out_path} was not copied back to the local store"
    );
    run_checked(nix_cmd(w.repo.path(), &env).args(["path-info", &out_path]));
    let archive = DockerArchive::read(Path::new(&out_path));
    assert_eq!(
        archive.config["architecture"], "arm64",
        "{:#}",
        archive.config
    );
    assert_eq!(archive.config["os"], "linux");
    let input = archive
        .file_text("etc/nixpkgs-input")
        .expect("the image has /etc/nixpkgs-input");
    assert!(
        input.contains(&format!("built-on={}", builder.marker())),
        "the image does not name the remote builder's marker:\n{input}"
    );

    // Pushed: runnerctl's tags name the image, with the arm64 config.
    let latest = w
        .registry
        .digest(IMAGE_REPO, "latest")
        .unwrap_or_else(|| panic!("no latest tag: {:?}", w.registry.tags(IMAGE_REPO)));
    assert_eq!(
        w.registry
            .digest(IMAGE_REPO, &nix_tag(&out_path))
            .as_deref(),
        Some(latest.as_str())
    );
    let config = run_checked(
        std::process::Command::new("skopeo")
            .args(["inspect", "--config", "--tls-verify=false"])
            .arg(format!(
                "--creds={}:{}",
                w.registry.user(),
                w.registry.password()
            ))
            .arg(format!(
                "docker://{}",
                w.registry.image_ref(IMAGE_REPO, "latest")
            )),
    );
    let config: serde_json::Value = serde_json::from_str(&config)
        .unwrap_or_else(|e| panic!("skopeo inspect --config printed no JSON ({e}): {config}"));
    assert_eq!(config["architecture"], "arm64", "{config:#}");
    assert_eq!(config["os"], "linux", "{config:#}");
    assert_eq!(config_diff_ids(&config), archive.diff_ids());

    eprintln!(
        "remote builder ({}://): release took {run_took:.1?}; the whole test {:.1?}",
        protocol.scheme(),
        started.elapsed()
    );
}
