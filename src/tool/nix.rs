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

    /// `nix config show` (≥ 2.20, which warns that `show-config` is a
    /// deprecated alias) rather than `nix show-config` (2.8 has only that).
    pub fn has_config_show(self) -> bool {
        (self.major, self.minor) >= (2, 20)
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
    build_all_args(&[installable.to_string()], out_link)
}

/// Build several installables in one call: Nix runs them concurrently
/// (locally, on its `builders`, or emulated, as it is configured), and with
/// `--keep-going` a failure of one does not stop the others, so a rerun
/// finds those in the store.
pub fn build_all_args(installables: &[String], out_link: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "build".to_string(),
        "--json".into(),
        "--log-format".into(),
        "internal-json".into(),
    ];
    if installables.len() > 1 {
        args.push("--keep-going".into());
    }
    match out_link {
        Some(link) => {
            args.push("--out-link".into());
            args.push(link.display().to_string());
        }
        None => args.push("--no-link".into()),
    }
    args.extend(installables.iter().cloned());
    args.extend(base_args());
    args
}

/// Nix's settings as JSON (`{"NAME": {"value": …, …}, …}`).
pub fn config_args(version: NixVersion) -> Vec<String> {
    let mut args: Vec<String> = if version.has_config_show() {
        vec!["config".into(), "show".into()]
    } else {
        vec!["show-config".into()]
    };
    args.push("--json".into());
    args.extend(base_args());
    args
}

/// The value of `build-users-group` in `nix show-config --json` output.
pub fn build_users_group(config_json: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let group = value.get("build-users-group")?.get("value")?.as_str()?;
    Some(group.to_string())
}

/// Is `name` a group in `/etc/group`-format `text`?
pub fn group_listed(text: &str, name: &str) -> bool {
    text.lines()
        .any(|line| line.split(':').next() == Some(name))
}

/// Does this process run as root (real uid 0, from `/proc/self/status`)?
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
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
    drv_path: String,
    outputs: std::collections::BTreeMap<String, String>,
}

/// The nix executable, its version, and the options runnerctl adds to
/// every call.
#[derive(Debug, Clone)]
pub struct Nix {
    pub path: PathBuf,
    pub version: NixVersion,
    /// `--option NAME VALUE` pairs, e.g. an empty `build-users-group` when
    /// the configured group does not exist (see [`Nix::detect`]).
    pub options: Vec<String>,
}

/// What [`Nix::detect`] found.
pub struct Detected {
    pub nix: Nix,
    /// Set when runnerctl runs Nix with an empty `build-users-group`: the
    /// group Nix is configured with, which does not exist.
    pub missing_build_group: Option<String>,
}

impl Nix {
    /// Finds the version, and whether Nix can build here as configured.
    ///
    /// As root without a daemon, Nix builds as the members of
    /// `build-users-group`; Debian's nix-bin sets it to `nixbld`. Where that
    /// group does not exist (a fresh Debian machine), Nix 2.8 warns on every
    /// call and builds as root, and Nix 2.26 refuses to build ("the group
    /// 'nixbld' specified in 'build-users-group' does not exist").
    /// runnerctl creates no groups and edits no nix.conf: it runs Nix with
    /// `--option build-users-group ''`, which is what Nix 2.8 does anyway,
    /// and reports that as a warning.
    pub async fn detect(runner: &Runner, path: PathBuf) -> Result<Detected, ToolError> {
        let cmd = Cmd::new(&path).args(["--version"]);
        let out = runner.run(&cmd).await?;
        let version = parse_version(&out.stdout).ok_or_else(|| ToolError::BadOutput {
            command: cmd.display(),
            reason: format!(
                "no version in {:?}",
                crate::diagnostic::bound(out.stdout.trim(), 200)
            ),
        })?;
        let mut nix = Nix {
            path,
            version,
            options: Vec::new(),
        };
        let missing_build_group = nix.missing_build_group(runner).await?;
        if missing_build_group.is_some() {
            nix.options = vec!["--option".into(), "build-users-group".into(), String::new()];
        }
        Ok(Detected {
            nix,
            missing_build_group,
        })
    }

    /// The configured `build-users-group`, if Nix would build as its members
    /// here (root, local store) and the group does not exist.
    async fn missing_build_group(&self, runner: &Runner) -> Result<Option<String>, ToolError> {
        let daemon = std::env::var_os("NIX_REMOTE").is_some_and(|r| !r.is_empty() && r != "local");
        if daemon || !running_as_root() {
            return Ok(None);
        }
        // Only stdout is read: Nix's warnings go to stderr.
        let out = runner
            .run_unchecked(&self.cmd(config_args(self.version)))
            .await?;
        let Some(group) = out
            .success()
            .then(|| build_users_group(&out.stdout))
            .flatten()
            .filter(|g| !g.is_empty())
        else {
            return Ok(None);
        };
        // getent asks NSS (LDAP groups too); /etc/group where it is missing.
        let exists = match runner
            .run_unchecked(&Cmd::new("getent").args(["group", group.as_str()]))
            .await
        {
            Ok(out) => out.success(),
            Err(_) => {
                std::fs::read_to_string("/etc/group").is_ok_and(|text| group_listed(&text, &group))
            }
        };
        Ok((!exists).then_some(group))
    }

    pub fn cmd(&self, args: Vec<String>) -> Cmd {
        Cmd::new(&self.path).args(args).args(self.options.clone())
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
        self.build_all_cmd(flake, &[attr.to_string()], out_link)
    }

    pub fn build_all_cmd(&self, flake: &Path, attrs: &[String], out_link: Option<&Path>) -> Cmd {
        let installables: Vec<String> = attrs.iter().map(|a| installable(flake, a)).collect();
        self.cmd(build_all_args(&installables, out_link)).nix_log()
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

    /// Build every attr in one call (see [`build_all_args`]). Returns each
    /// result's derivation and out path.
    pub async fn build_all(
        &self,
        runner: &Runner,
        flake: &Path,
        attrs: &[String],
        out_link: Option<&Path>,
    ) -> Result<Vec<(NixPath, NixPath)>, ToolError> {
        let cmd = self.build_all_cmd(flake, attrs, out_link);
        let out = runner.run(&cmd).await?;
        let bad = |reason: String| ToolError::BadOutput {
            command: cmd.display(),
            reason,
        };
        let results: Vec<BuildJson> =
            serde_json::from_str(out.stdout.trim()).map_err(|e| bad(e.to_string()))?;
        if results.len() != attrs.len() {
            return Err(bad(format!(
                "{} build results for {} outputs",
                results.len(),
                attrs.len()
            )));
        }
        results
            .iter()
            .map(|r| {
                let drv = NixPath::parse(&r.drv_path).map_err(|e| bad(e.to_string()))?;
                let path = r
                    .outputs
                    .get("out")
                    .ok_or_else(|| bad("no `out` output in the build result".into()))?;
                let out = NixPath::parse(path).map_err(|e| bad(e.to_string()))?;
                Ok((drv, out))
            })
            .collect()
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
    fn config_argv_and_build_users_group() {
        assert_eq!(config_args(v(2, 8))[..2], ["show-config", "--json"]);
        assert_eq!(config_args(v(2, 26))[..3], ["config", "show", "--json"]);
        assert_eq!(
            build_users_group(r#"{"build-users-group":{"value":"nixbld","aliases":[]}}"#),
            Some("nixbld".to_string())
        );
        assert_eq!(
            build_users_group(r#"{"build-users-group":{"value":""}}"#),
            Some(String::new())
        );
        assert_eq!(build_users_group("warning: x"), None);
        let etc_group = "root:x:0:\nnixbld:x:30000:nixbld1\n";
        assert!(group_listed(etc_group, "nixbld"));
        assert!(!group_listed(etc_group, "nixbl"));
        assert!(!group_listed("root:x:0:\n", "nixbld"));
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
