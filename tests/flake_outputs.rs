//! flake.nix and flake.lock, checked offline.
//!
//! `tests/nix/eval-flake.nix` calls the flake's `outputs` with a stand-in
//! nixpkgs (tests/nix/stubs.nix) whose rev and lastModified come from
//! flake.lock, and returns everything the outputs hold as data. Two more
//! tests hand the real flake to Nix itself: `nix flake show` with nixpkgs
//! overridden by the stand-in, and `nix flake metadata` refusing to update
//! the lock.

mod nix_support;

use std::collections::BTreeSet;

use nix_support::{
    array_at, at, copy_from_repo, json_output, path_flake, repo_root, str_at, stub_path,
    OfflineNix, CRATE_SOURCE, EVAL_TEST_EXTRA,
};
use serde_json::{json, Value};

const SYSTEMS: [&str; 2] = ["x86_64-linux", "aarch64-linux"];
const LOCKED_REV: &str = "b5aa0fbd538984f6e3d201be0005b4463d8b09f8";
const SELF_REV: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

fn eval_flake(self_info: &Value) -> Value {
    OfflineNix::new().eval_file("eval-flake.nix", self_info)
}

fn outputs() -> Value {
    at(&eval_flake(&json!({ "rev": SELF_REV })), &["outputs"]).clone()
}

fn names(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an attribute set: {value:#}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// The store paths of a list of packages, stand-in or built.
fn package_paths(list: &[Value]) -> Vec<&str> {
    list.iter()
        .map(|package| match package {
            Value::String(path) => path.as_str(),
            built => str_at(built, &["path"]),
        })
        .collect()
}

#[test]
fn both_systems_expose_every_required_output() {
    let outputs = outputs();
    assert_eq!(
        names(&outputs),
        BTreeSet::from(["apps", "checks", "devShells", "formatter", "packages"])
    );
    for system in SYSTEMS {
        for (output, required) in [
            ("packages", &["nixos", "runnerctl", "default"][..]),
            ("apps", &["default"]),
            ("devShells", &["default", "ci"]),
            ("checks", &["runnerctl", "nix-eval-tests"]),
        ] {
            let present = names(at(&outputs, &[output, system]));
            for name in required {
                assert!(
                    present.contains(name),
                    "{output}.{system}.{name} is missing"
                );
            }
        }
        assert_eq!(
            at(&outputs, &["formatter", system]),
            &json!(stub_path("nixfmt-tree")),
            "formatter.{system}"
        );
    }
}

#[test]
fn nixpkgs_is_the_only_input_and_follows_nixos_unstable() {
    let flake = eval_flake(&json!({ "rev": SELF_REV }));
    assert_eq!(
        at(&flake, &["inputs"]),
        &json!({ "nixpkgs": { "url": "github:NixOS/nixpkgs/nixos-unstable" } })
    );
}

#[test]
fn image_labels_carry_the_locked_nixpkgs_and_do_not_depend_on_the_commit() {
    // The same image whatever this repository's commit (clean, dirty, none):
    // bump's image and the release on main after it share one out path.
    for self_info in [
        json!({ "rev": SELF_REV }),
        json!({ "dirtyRev": "0a1b2c3-dirty" }),
        json!({}),
    ] {
        let flake = eval_flake(&self_info);
        for system in SYSTEMS {
            let image = at(&flake, &["outputs", "packages", system, "nixos"]);
            assert_eq!(image["stub"], "dockerTools.buildLayeredImage");
            let labels = at(image, &["args", "config", "Labels"]);
            assert_eq!(labels["org.opencontainers.image.revision"], LOCKED_REV);
            assert_eq!(labels["org.nixos.nixpkgs.rev"], LOCKED_REV);
            assert!(
                str_at(labels, &["org.opencontainers.image.source"]).starts_with("https://"),
                "the source label is a web address"
            );
            assert_eq!(at(image, &["args", "created"]), "2026-06-29T09:01:53Z");
        }
    }
}

#[test]
fn runnerctl_is_built_from_cargo_lock_runs_unit_tests_and_finds_skopeo_and_git() {
    let outputs = outputs();
    for system in SYSTEMS {
        let package = at(&outputs, &["packages", system, "runnerctl"]);
        assert_eq!(package["stub"], "rustPlatform.buildRustPackage");
        assert_eq!(
            at(&outputs, &["packages", system, "default"]),
            package,
            "default is runnerctl"
        );
        let args = at(package, &["args"]);
        assert_eq!(args["pname"], "runnerctl");
        assert_eq!(
            args["cargoLock"]["lockFile"],
            repo_root().join("Cargo.lock").display().to_string()
        );
        assert_eq!(args["cargoTestFlags"], json!(["--bins"]));
        assert_eq!(args["meta"]["mainProgram"], "runnerctl");

        let source: Vec<&str> = array_at(args, &["src", "fileset"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for part in CRATE_SOURCE {
            let path = repo_root().join(part).display().to_string();
            assert!(
                source.contains(&path.as_str()),
                "{part} is not in runnerctl's source"
            );
        }
        let nix_dir = repo_root().join("nix").display().to_string();
        assert!(
            !source.contains(&nix_dir.as_str()),
            "editing nix/ must not rebuild runnerctl"
        );

        let install = str_at(args, &["postInstall"]);
        assert!(
            install.contains(r#"wrapProgram "$out/bin/runnerctl""#),
            "{install}"
        );
        for tool in ["skopeo", "git"] {
            assert!(
                install.contains(&format!("{}/bin", stub_path(tool))),
                "{tool} not on runnerctl's PATH: {install}"
            );
        }
        assert!(package_paths(array_at(args, &["nativeBuildInputs"]))
            .contains(&stub_path("makeWrapper").as_str()));
    }
}

#[test]
fn runnerctl_version_names_the_commit_nix_knows_and_only_that() {
    // Nix puts shortRev on `self` for a clean tree and, in newer versions,
    // dirtyShortRev for a dirty one; a path: flake has neither.
    for (self_info, expected) in [
        (
            json!({ "rev": SELF_REV, "shortRev": &SELF_REV[..7] }),
            Some(&SELF_REV[..7]),
        ),
        (
            json!({ "dirtyRev": "0a1b2c3d-dirty", "dirtyShortRev": "0a1b2c3-dirty" }),
            Some("0a1b2c3-dirty"),
        ),
        (json!({}), None),
    ] {
        let flake = eval_flake(&self_info);
        for system in SYSTEMS {
            let args = at(
                &flake,
                &["outputs", "packages", system, "runnerctl", "args"],
            );
            // build.rs reads this variable; without it, it says "unknown revision".
            assert_eq!(
                args.get("RUNNERCTL_SOURCE_REV").and_then(Value::as_str),
                expected,
                "runnerctl's revision for self = {self_info}"
            );
            // Never the variable build.rs sets: that would hide a missing build.rs.
            assert!(args.get("RUNNERCTL_GIT_REV").is_none(), "{args:#}");
            // The offline test derivation does not name a commit, so it is
            // not rebuilt for each one.
            let eval_tests = at(
                &flake,
                &["outputs", "checks", system, "nix-eval-tests", "args"],
            );
            assert!(
                eval_tests.get("RUNNERCTL_SOURCE_REV").is_none(),
                "{eval_tests:#}"
            );
        }
    }
}

#[test]
fn apps_default_runs_runnerctl() {
    let outputs = outputs();
    for system in SYSTEMS {
        let app = at(&outputs, &["apps", system, "default"]);
        assert_eq!(app["type"], "app");
        let runnerctl = str_at(&outputs, &["packages", system, "runnerctl", "path"]);
        assert_eq!(app["program"], format!("{runnerctl}/bin/runnerctl"));
    }
}

#[test]
fn dev_shells_hold_the_toolchain_and_the_ci_tools() {
    let outputs = outputs();
    for system in SYSTEMS {
        let default = at(&outputs, &["devShells", system, "default"]);
        let packages = package_paths(array_at(default, &["args", "packages"]));
        for tool in [
            "rustc",
            "cargo",
            "clippy",
            "rustfmt",
            "rust-analyzer",
            "skopeo",
            "just",
            "git",
            "nix",
        ] {
            assert!(
                packages.contains(&stub_path(tool).as_str()),
                "devShells.{system}.default lacks {tool}"
            );
        }

        // The workflows run their steps in `nix develop .#ci`.
        let ci = at(&outputs, &["devShells", system, "ci"]);
        let runnerctl = str_at(&outputs, &["packages", system, "runnerctl", "path"]);
        let packages = package_paths(array_at(ci, &["args", "packages"]));
        assert!(
            packages.contains(&runnerctl),
            "devShells.{system}.ci lacks runnerctl"
        );
        assert!(
            packages.contains(&stub_path("just").as_str()),
            "devShells.{system}.ci lacks just"
        );
        assert_eq!(
            ci["args"]["RUNNERCTL_BIN"],
            format!("{runnerctl}/bin/runnerctl"),
            "the justfile's recipes must use the flake's runnerctl in CI"
        );
    }
}

#[test]
fn checks_build_runnerctl_and_run_the_offline_test_crates() {
    let outputs = outputs();
    for system in SYSTEMS {
        assert_eq!(
            at(&outputs, &["checks", system, "runnerctl"]),
            at(&outputs, &["packages", system, "runnerctl"])
        );
        let eval_tests = at(&outputs, &["checks", system, "nix-eval-tests", "args"]);
        let flags: Vec<&str> = array_at(eval_tests, &["cargoTestFlags"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let crates: Vec<&str> = flags
            .iter()
            .copied()
            .filter(|flag| *flag != "--test")
            .collect();
        assert_eq!(
            flags.len(),
            crates.len() * 2,
            "every test crate is named with --test: {flags:?}"
        );
        for test_crate in ["image_nix", "flake_outputs", "workflows"] {
            assert!(
                crates.contains(&test_crate),
                "nix-eval-tests does not run {test_crate}"
            );
        }
        for test_crate in &crates {
            let file = repo_root().join("tests").join(format!("{test_crate}.rs"));
            assert!(
                file.is_file(),
                "nix-eval-tests names {test_crate}, but {} does not exist",
                file.display()
            );
        }
        assert!(
            package_paths(array_at(eval_tests, &["nativeCheckInputs"]))
                .contains(&stub_path("nix").as_str()),
            "the offline tests need nix at check time"
        );
        let source: Vec<&str> = array_at(eval_tests, &["src", "fileset"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for part in EVAL_TEST_EXTRA.iter().chain(CRATE_SOURCE) {
            let path = repo_root().join(part).display().to_string();
            assert!(
                source.contains(&path.as_str()),
                "{part} is not in the offline tests' source"
            );
        }
    }
}

/// JSON with every object's keys sorted, as Nix writes flake.lock.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|key| (key.clone(), sorted(&map[key])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[test]
fn flake_lock_pins_nixpkgs_and_is_formatted_as_nix_writes_it() {
    let text = std::fs::read_to_string(repo_root().join("flake.lock")).expect("read flake.lock");
    let lock: Value = serde_json::from_str(&text).expect("flake.lock is JSON");
    assert_eq!(lock["version"], 7);
    let root = str_at(&lock, &["root"]);
    let node = str_at(&lock, &["nodes", root, "inputs", "nixpkgs"]);
    assert_eq!(
        at(&lock, &["nodes", node]),
        &json!({
            "locked": {
                "lastModified": 1_782_723_713,
                "narHash": "sha256-oPXCU/SSUokcGaJREHibG1CBX3+s/W7orDWQOZDsEeQ=",
                "owner": "NixOS",
                "repo": "nixpkgs",
                "rev": LOCKED_REV,
                "type": "github"
            },
            "original": {
                "owner": "NixOS",
                "ref": "nixos-unstable",
                "repo": "nixpkgs",
                "type": "github"
            }
        })
    );
    let formatted = serde_json::to_string_pretty(&sorted(&lock)).expect("serialise") + "\n";
    assert_eq!(
        text, formatted,
        "flake.lock is not laid out as Nix writes it"
    );
}

/// A copy of the flake (only what evaluating its outputs reads) and a
/// stand-in nixpkgs flake made of tests/nix/stubs.nix, side by side.
fn flake_copies(nix: &OfflineNix) -> (String, String) {
    let flake = nix.scratch().join("flake");
    for file in [
        "flake.nix",
        "flake.lock",
        "nix",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "justfile",
    ] {
        copy_from_repo(file, &flake);
    }
    for dir in ["src", "tests", "proptest-regressions", ".forgejo"] {
        std::fs::create_dir_all(flake.join(dir)).expect("create a directory in the flake copy");
    }

    let nixpkgs = nix.scratch().join("nixpkgs");
    std::fs::create_dir_all(&nixpkgs).expect("create the stand-in nixpkgs flake");
    for file in ["stubs.nix", "stub-lib.nix"] {
        std::fs::copy(repo_root().join("tests/nix").join(file), nixpkgs.join(file))
            .expect("copy a stub");
    }
    let systems = SYSTEMS.map(|s| format!("\"{s}\"")).join(" ");
    std::fs::write(
        nixpkgs.join("flake.nix"),
        format!(
            "{{\n  outputs = {{ self }}: {{\n    lib = import ./stub-lib.nix;\n    \
             legacyPackages = builtins.listToAttrs (map (system: {{ name = system; \
             value = import ./stubs.nix {{ inherit system; }}; }}) [ {systems} ]);\n  }};\n}}\n"
        ),
    )
    .expect("write the stand-in nixpkgs flake");
    (path_flake(&flake), path_flake(&nixpkgs))
}

#[test]
fn nix_flake_show_lists_the_outputs_with_nixpkgs_overridden() {
    let nix = OfflineNix::new();
    let (flake, nixpkgs) = flake_copies(&nix);
    let mut args = vec![
        "flake",
        "show",
        "--json",
        "--offline",
        "--no-write-lock-file",
    ];
    // Since Nix 2.13, `flake show` skips other systems unless asked.
    if nix.version() >= (2, 13) {
        args.push("--all-systems");
    }
    args.extend(["--override-input", "nixpkgs", &nixpkgs, &flake]);
    let shown = json_output(&mut nix.command(args));
    for system in SYSTEMS {
        for (output, name) in [
            ("packages", "nixos"),
            ("packages", "runnerctl"),
            ("packages", "default"),
            ("devShells", "default"),
            ("checks", "runnerctl"),
        ] {
            assert_eq!(
                at(&shown, &[output, system, name, "type"]),
                "derivation",
                "{output}.{system}.{name}"
            );
        }
        assert_eq!(at(&shown, &["apps", system, "default", "type"]), "app");
        assert_eq!(at(&shown, &["formatter", system, "type"]), "derivation");
    }
}

#[test]
fn nix_accepts_flake_lock_as_up_to_date() {
    let nix = OfflineNix::new();
    let (flake, _) = flake_copies(&nix);
    // Fails if flake.nix's inputs no longer match the lock (Nix would have
    // to re-lock, which --no-update-lock-file forbids).
    let metadata = json_output(&mut nix.command([
        "flake",
        "metadata",
        "--json",
        "--offline",
        "--no-update-lock-file",
        &flake,
    ]));
    assert_eq!(
        at(&metadata, &["locks", "nodes", "nixpkgs", "locked", "rev"]),
        LOCKED_REV
    );
}
