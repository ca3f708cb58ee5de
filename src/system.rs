//! Nix systems (`x86_64-linux`, `aarch64-linux`, …) and the OCI platform
//! an image built for each must declare.

use std::fmt;
use std::str::FromStr;

use miette::Diagnostic;
use thiserror::Error;

/// A Nix system an image is built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct System(String);

/// The OCI platform of an image: what its config declares and what an
/// index entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub architecture: &'static str,
    pub os: &'static str,
    pub variant: Option<&'static str>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Nix's CPU names and the Go/OCI architecture names, for Linux.
const ARCHITECTURES: &[(&str, &str, Option<&str>)] = &[
    ("x86_64", "amd64", None),
    ("aarch64", "arm64", None),
    ("i686", "386", None),
    ("armv7l", "arm", Some("v7")),
    ("armv6l", "arm", Some("v6")),
    ("riscv64", "riscv64", None),
    ("powerpc64le", "ppc64le", None),
    ("s390x", "s390x", None),
];

#[derive(Debug, Error, Diagnostic)]
#[error("`{given}` is not a Linux system runnerctl can build an image for")]
#[diagnostic(
    code(runnerctl::config::system),
    help("pass a Nix system such as x86_64-linux or aarch64-linux to --system (RUNNERCTL_SYSTEMS, comma-separated); known: {known}")
)]
pub struct UnknownSystem {
    pub given: String,
    pub known: String,
}

/// `--system` values (repeated, or RUNNERCTL_SYSTEMS split): blanks
/// skipped, each parsed, a repeat dropped, in the order given.
pub fn parse_list(texts: &[String]) -> Result<Vec<System>, UnknownSystem> {
    let mut systems: Vec<System> = Vec::new();
    for text in texts.iter().filter(|s| !s.trim().is_empty()) {
        let system: System = text.parse()?;
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    Ok(systems)
}

impl FromStr for System {
    type Err = UnknownSystem;

    fn from_str(text: &str) -> Result<System, UnknownSystem> {
        let text = text.trim();
        let known = text
            .strip_suffix("-linux")
            .is_some_and(|cpu| ARCHITECTURES.iter().any(|(nix, _, _)| *nix == cpu));
        if !known {
            return Err(UnknownSystem {
                given: crate::diagnostic::bound(text, 80).to_string(),
                known: ARCHITECTURES
                    .iter()
                    .map(|(nix, _, _)| format!("{nix}-linux"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(System(text.to_string()))
    }
}

impl System {
    /// This machine's system, as a container engine here runs it natively
    /// (None where runnerctl knows no image platform for it).
    pub fn host() -> Option<System> {
        format!("{}-linux", std::env::consts::ARCH).parse().ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The platform an image for this system declares.
    pub fn platform(&self) -> Platform {
        let cpu = self.0.strip_suffix("-linux").unwrap_or(&self.0);
        let (_, architecture, variant) = ARCHITECTURES
            .iter()
            .find(|(nix, _, _)| *nix == cpu)
            .copied()
            .unwrap_or(("", "unknown", None));
        Platform {
            architecture,
            os: "linux",
            variant,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_map_to_platforms() {
        let x86: System = "x86_64-linux".parse().unwrap();
        assert_eq!(x86.platform().architecture, "amd64");
        assert_eq!(x86.platform().to_string(), "linux/amd64");
        let arm: System = "aarch64-linux".parse().unwrap();
        assert_eq!(arm.platform().architecture, "arm64");
        let v7: System = "armv7l-linux".parse().unwrap();
        assert_eq!(v7.platform().to_string(), "linux/arm/v7");
        for bad in ["x86_64-darwin", "amd64", "", "aarch64-linux-gnu"] {
            let err = bad.parse::<System>().unwrap_err();
            assert!(err.known.contains("aarch64-linux"), "{bad}");
        }
    }
}
