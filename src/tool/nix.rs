//! Nix: version detection and argv for update, eval, build and path-info.
//!
//! Supports Nix 2.8 (Debian's) and Nix ≥ 2.19, whose `flake update` takes
//! input names instead of a flake reference.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Cmd, Runner, ToolError};
use crate::store::NixPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NixVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for NixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl NixVersion {
    /// `flake update INPUT…` (≥ 2.19) rather than `flake lock --update-input`.
    pub fn has_new_flake_update(self) -> bool {
        (self.major, self.minor) >= (2, 19)
    }
}

/// Parse the output of `nix --version`, e.g. `nix (Nix) 2.8.0` or
/// `nix (Determinate Nix 3.6.2) 2.29.0`: the last version-looking word wins.
pub fn parse_version(text: &str) -> Option<NixVersion> {
    text.split_whitespace().rev().find_map(|word| {
        let word = word.trim_end_matches(|c: char| !c.is_ascii_digit());
        let mut parts = word.split(['.', 'p', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(NixVersion {
            major,
            minor,
            patch,
        })
    })
}

/// Flags every nix call gets.
pub fn base_args() -> Vec<String> {
    vec![
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
    ]
}

/// `nix flake update` for all inputs (as the seed did), or for some inputs.
pub fn update_args(version: NixVersion, inputs: &[String]) -> Vec<String> {
    let mut args = vec!["flake".to_string()];
    if inputs.is_empty() {
        args.push("update".into());
    } else if version.has_new_flake_update() {
        args.push("update".into());
        args.extend(inputs.iter().cloned());
    } else {
        args.push("lock".into());
        for input in inputs {
            args.push("--update-input".into());
            args.push(input.clone());
        }
    }
    args.extend(base_args());
    args
}

/// The installable `DIR#ATTR`.
pub fn installable(flake: &Path, attr: &str) -> String {
    format!("{}#{attr}", flake.display())
}

/// Evaluate to drvPath and outPath in one call, without building.
pub fn eval_args(installable: &str) -> Vec<String> {
    let mut args = vec![
        "eval".to_string(),
        "--json".into(),
        installable.to_string(),
        "--apply".into(),
        // Not `outPath`: an attrset with one serialises as that string.
        "d: { drv = d.drvPath; out = d.outPath; }".into(),
    ];
    args.extend(base_args());
    args
}

/// Does the installable exist? A cheap evaluation: the attribute is looked
/// up, the derivation is not evaluated.
pub fn exists_args(installable: &str) -> Vec<String> {
    let mut args = vec![
        "eval".to_string(),
        "--json".into(),
        installable.to_string(),
        "--apply".into(),
        "_: true".into(),
    ];
    args.extend(base_args());
    args
}

/// Build, with a GC root at `out_link` so the image survives a garbage
/// collection until it is pushed.
pub fn build_args(installable: &str, out_link: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "build".to_string(),
        "--json".into(),
        "--log-format".into(),
        "internal-json".into(),
    ];
    match out_link {
        Some(link) => {
            args.push("--out-link".into());
            args.push(link.display().to_string());
        }
        None => args.push("--no-link".into()),
    }
    args.push(installable.to_string());
    args.extend(base_args());
    args
}

pub fn path_info_args(path: &str) -> Vec<String> {
    let mut args = vec!["path-info".to_string(), path.to_string()];
    args.extend(base_args());
    args
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    pub drv_path: NixPath,
    pub out_path: NixPath,
}

#[derive(Deserialize)]
struct EvalJson {
    drv: String,
    out: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildJson {
    outputs: std::collections::BTreeMap<String, String>,
}

/// The nix executable and its version.
#[derive(Debug, Clone)]
pub struct Nix {
    pub path: PathBuf,
    pub version: NixVersion,
}

impl Nix {
    pub async fn detect(runner: &Runner, path: PathBuf) -> Result<Nix, ToolError> {
        let cmd = Cmd::new(&path).args(["--version"]);
        let out = runner.run(&cmd).await?;
        let version = parse_version(&out.stdout).ok_or_else(|| ToolError::BadOutput {
            command: cmd.display(),
            reason: format!(
                "no version in {:?}",
                crate::diagnostic::bound(out.stdout.trim(), 200)
            ),
        })?;
        Ok(Nix { path, version })
    }

    pub fn cmd(&self, args: Vec<String>) -> Cmd {
        Cmd::new(&self.path).args(args)
    }

    pub fn update_cmd(&self, flake: &Path, inputs: &[String]) -> Cmd {
        self.cmd(update_args(self.version, inputs)).cwd(flake)
    }

    pub fn exists_cmd(&self, flake: &Path, attr: &str) -> Cmd {
        self.cmd(exists_args(&installable(flake, attr)))
    }

    pub fn eval_cmd(&self, flake: &Path, attr: &str) -> Cmd {
        self.cmd(eval_args(&installable(flake, attr)))
    }

    pub fn build_cmd(&self, flake: &Path, attr: &str, out_link: Option<&Path>) -> Cmd {
        self.cmd(build_args(&installable(flake, attr), out_link))
            .nix_log()
    }

    pub async fn eval(
        &self,
        runner: &Runner,
        flake: &Path,
        attr: &str,
    ) -> Result<Evaluated, ToolError> {
        let cmd = self.eval_cmd(flake, attr);
        let out = runner.run(&cmd).await?;
        let bad = |reason: String| ToolError::BadOutput {
            command: cmd.display(),
            reason,
        };
        let json: EvalJson =
            serde_json::from_str(out.stdout.trim()).map_err(|e| bad(e.to_string()))?;
        Ok(Evaluated {
            drv_path: NixPath::parse(&json.drv).map_err(|e| bad(e.to_string()))?,
            out_path: NixPath::parse(&json.out).map_err(|e| bad(e.to_string()))?,
        })
    }

    /// Is this path valid (realised) in the store?
    pub async fn is_valid(&self, runner: &Runner, path: &NixPath) -> Result<bool, ToolError> {
        let out = runner
            .run_unchecked(&self.cmd(path_info_args(path.as_str())))
            .await?;
        Ok(out.success())
    }

    pub async fn build(
        &self,
        runner: &Runner,
        flake: &Path,
        attr: &str,
        out_link: Option<&Path>,
    ) -> Result<NixPath, ToolError> {
        let cmd = self.build_cmd(flake, attr, out_link);
        let out = runner.run(&cmd).await?;
        let bad = |reason: String| ToolError::BadOutput {
            command: cmd.display(),
            reason,
        };
        let results: Vec<BuildJson> =
            serde_json::from_str(out.stdout.trim()).map_err(|e| bad(e.to_string()))?;
        let path = results
            .first()
            .and_then(|r| r.outputs.get("out"))
            .ok_or_else(|| bad("no `out` output in the build result".into()))?;
        NixPath::parse(path).map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> NixVersion {
        NixVersion {
            major,
            minor,
            patch: 0,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("nix (Nix) 2.8.0\n"), Some(v(2, 8)));
        assert_eq!(
            parse_version("nix (Nix) 2.24.10"),
            Some(NixVersion {
                major: 2,
                minor: 24,
                patch: 10
            })
        );
        assert_eq!(
            parse_version("nix (Determinate Nix 3.6.2) 2.29.0"),
            Some(v(2, 29))
        );
        assert_eq!(
            parse_version("nix (Nix) 2.19pre20231012_dirty"),
            Some(v(2, 19))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn update_argv_by_version() {
        let flags = ["--extra-experimental-features", "nix-command flakes"];
        let all = update_args(v(2, 8), &[]);
        assert_eq!(all[..2], ["flake", "update"]);
        assert_eq!(all[2..], flags);
        assert_eq!(update_args(v(2, 24), &[]), all);
        let one = vec!["nixpkgs".to_string()];
        assert_eq!(
            update_args(v(2, 8), &one)[..4],
            ["flake", "lock", "--update-input", "nixpkgs"]
        );
        assert_eq!(
            update_args(v(2, 19), &one)[..3],
            ["flake", "update", "nixpkgs"]
        );
    }

    #[test]
    fn build_and_eval_argv() {
        let i = installable(Path::new("/src/flake"), "nixos");
        assert_eq!(i, "/src/flake#nixos");
        let b = build_args(&i, Some(Path::new("/state/result")));
        assert_eq!(
            b[..7],
            [
                "build",
                "--json",
                "--log-format",
                "internal-json",
                "--out-link",
                "/state/result",
                "/src/flake#nixos"
            ]
        );
        assert!(build_args(&i, None).contains(&"--no-link".to_string()));
        let e = eval_args(&i);
        assert_eq!(e[..3], ["eval", "--json", "/src/flake#nixos"]);
        assert!(!e.iter().any(|a| a == "build"));
    }
}
