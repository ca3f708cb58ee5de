//! flake.nix's source selections, made by the REAL nixpkgs `lib.fileset`
//! and built with cargo, as `nix build .#runnerctl` would build them.
//!
//! tests/nix/flake-sources.nix calls the flake's outputs with the real lib
//! (test data at ../shared/nixpkgs-lib, never copied into this repository)
//! and stand-in packages, and returns the two `src` store paths the Rust
//! derivations get. Each is copied out of the store and built offline with
//! the lock file, from the crates the enclosing `cargo test` already fetched
//! into the shared CARGO_HOME. A scratch copy of the flake whose selection
//! drops build.rs must then fail to build.
//!
//! The real lib needs `builtins.readFileType`, so Nix >= 2.14: this test
//! target needs the `modern-nix` feature, which scripts/test turns on when
//! `nix --version` is new enough.

mod nix_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use nix_support::{
    at, copy_dir, copy_from_repo, failure_stderr, repo_root, run, OfflineNix, CRATE_SOURCE,
    EVAL_TEST_EXTRA,
};
use serde_json::{json, Value};

/// The revision the package's build hands to build.rs, as flake.nix does.
const SOURCE_REV: &str = "0a1b2c3d4e5f";

/// The cargo builds share one target directory, so the dependencies are
/// compiled once; they run one at a time, so each test runs the binary it
/// built itself.
static CARGO: Mutex<()> = Mutex::new(());

/// The real nixpkgs lib/ directory, beside this repository's checkout.
fn nixpkgs_lib() -> PathBuf {
    let lib = repo_root().join("../shared/nixpkgs-lib/lib");
    assert!(
        lib.join("fileset/default.nix").is_file(),
        "the real nixpkgs lib is not at {}: these tests need nix-community/nixpkgs.lib's \
         lib/ directory there (see ../shared/nixpkgs-lib/README.md)",
        lib.display()
    );
    lib
}

/// Offline Nix, refusing to run on one too old for the real lib.
fn modern_nix() -> OfflineNix {
    let nix = OfflineNix::new();
    let version = nix.version();
    assert!(
        version >= (2, 14),
        "the real nixpkgs lib needs Nix >= 2.14 (builtins.readFileType), this is {}.{}: \
         run this test target only where scripts/test turns on the modern-nix feature",
        version.0,
        version.1
    );
    nix
}

/// `crateSource` and `evalTestSource` of the flake in `flake_dir`, as store paths.
fn flake_sources(nix: &OfflineNix, flake_dir: &Path) -> Value {
    let lib = nixpkgs_lib();
    let sources = nix.eval_file(
        "flake-sources.nix",
        &json!({
            "flakeDir": flake_dir.display().to_string(),
            "nixpkgsLib": lib.display().to_string(),
        }),
    );
    for name in ["crateSource", "evalTestSource"] {
        let path = at(&sources, &[name])
            .as_str()
            .unwrap_or_else(|| panic!("{name} is not a string: {sources:#}"));
        assert!(
            path.starts_with("/nix/store/") && Path::new(path).is_dir(),
            "{name} is not a directory in the store: {path}"
        );
    }
    sources
}

/// The selected source copied out of the store into `dest`, as Nix unpacks
/// it for the build.
fn materialise(sources: &Value, name: &str, dest: &Path) -> PathBuf {
    let store_path = at(sources, &[name])
        .as_str()
        .expect("checked by flake_sources");
    let copy = dest.join(name);
    copy_dir(Path::new(store_path), &copy);
    copy
}

/// The files and directories at the top of `dir`, sorted.
fn top_level(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// `cargo ARGS…` in `dir`, offline and with the lock file as committed, into
/// the shared target directory. The environment carries no revision of its
/// own, so only build.rs can provide RUNNERCTL_GIT_REV; `source_rev` is what
/// the package derivation passes.
fn cargo(dir: &Path, args: &[&str], source_rev: Option<&str>) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(args)
        .args(["--offline", "--locked"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUNNERCTL_GIT_REV")
        .env_remove("RUNNERCTL_SOURCE_REV");
    if let Some(rev) = source_rev {
        command.env("RUNNERCTL_SOURCE_REV", rev);
    }
    command
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("source-selection")
}

/// Runs a cargo command that must succeed, holding the build lock.
fn cargo_succeeds(command: &mut Command) -> Output {
    let _serial = CARGO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run(command)
}

#[test]
fn runnerctl_source_builds_with_cargo_and_names_the_revision_nix_passes() {
    let nix = modern_nix();
    let sources = flake_sources(&nix, repo_root());
    let source = materialise(&sources, "crateSource", nix.scratch());
    assert_eq!(
        top_level(&source),
        CRATE_SOURCE,
        "runnerctl's source holds the crate and nothing else (no nix/, no workflows)"
    );

    // Every target, so the unit tests buildRustPackage runs and the
    // integration tests compile from this selection too.
    let _serial = CARGO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run(&mut cargo(
        &source,
        &["build", "--all-targets"],
        Some(SOURCE_REV),
    ));
    let version = run(Command::new(target_dir().join("debug/runnerctl")).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("runnerctl {} ({SOURCE_REV})", env!("CARGO_PKG_VERSION")),
        "--version names the revision the package passed"
    );
}

#[test]
fn offline_test_source_builds_the_test_crates_nix_flake_check_runs() {
    let nix = modern_nix();
    let sources = flake_sources(&nix, repo_root());
    let source = materialise(&sources, "evalTestSource", nix.scratch());
    for part in EVAL_TEST_EXTRA.iter().chain(CRATE_SOURCE) {
        assert!(
            source.join(part).exists(),
            "{part} is not in the offline tests' source: {:?}",
            top_level(&source)
        );
    }
    cargo_succeeds(&mut cargo(
        &source,
        &[
            "test",
            "--no-run",
            "--test",
            "image_nix",
            "--test",
            "flake_outputs",
            "--test",
            "workflows",
        ],
        None,
    ));
}

#[test]
fn a_selection_without_build_rs_fails_to_build_for_want_of_the_git_revision() {
    let nix = modern_nix();
    // A scratch copy of everything the flake's selections name, build.rs
    // included: only the list in nix/source.nix leaves it out.
    let flake = nix.scratch().join("flake");
    for part in EVAL_TEST_EXTRA.iter().chain(CRATE_SOURCE) {
        copy_from_repo(part, &flake);
    }
    let selection = flake.join("nix/source.nix");
    let text = std::fs::read_to_string(&selection).expect("read the copied nix/source.nix");
    let entry = "    ../build.rs\n";
    assert_eq!(
        text.matches(entry).count(),
        1,
        "nix/source.nix no longer lists build.rs as {entry:?}; update this test:\n{text}"
    );
    std::fs::write(&selection, text.replace(entry, "")).expect("write the scratch selection");

    let sources = flake_sources(&nix, &flake);
    let source = materialise(&sources, "crateSource", &nix.scratch().join("built"));
    assert!(
        !source.join("build.rs").exists(),
        "the scratch selection still holds build.rs"
    );
    let stderr = {
        let _serial = CARGO
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure_stderr(&mut cargo(&source, &["build"], Some(SOURCE_REV)))
    };
    assert!(
        stderr.contains("environment variable `RUNNERCTL_GIT_REV` not defined at compile time"),
        "the build failed, but not for want of build.rs:\n{stderr}"
    );
}
