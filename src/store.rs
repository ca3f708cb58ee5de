//! Nix store paths at the edges, validated with harmonia-store-core.

use std::fmt;

use harmonia_store_core::store_path::{StoreDir, StorePath};
use miette::Diagnostic;
use thiserror::Error;

/// A full store path such as `/nix/store/<hash>-nixos.tar`, parsed and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixPath {
    full: String,
    path: StorePath,
}

#[derive(Debug, Error, Diagnostic)]
#[error("`{text}` is not a Nix store path: {reason}")]
#[diagnostic(
    code(runnerctl::store_path),
    help("this came from Nix's output; run the nix command by hand to see what it printed")
)]
pub struct StorePathError {
    pub text: String,
    pub reason: String,
}

impl NixPath {
    pub fn parse(text: &str) -> Result<Self, StorePathError> {
        let text = text.trim();
        let err = |reason: String| StorePathError {
            text: text.to_string(),
            reason,
        };
        let (dir, _) = text
            .rsplit_once('/')
            .ok_or_else(|| err("it has no directory part".into()))?;
        if dir.is_empty() {
            return Err(err("it is not inside a store directory".into()));
        }
        let store = StoreDir::new(dir).map_err(|e| err(e.to_string()))?;
        let path = store
            .parse::<StorePath>(text)
            .map_err(|e| err(e.to_string()))?;
        Ok(NixPath {
            full: text.to_string(),
            path,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The 32-character hash part, e.g. for the `nix-<hash>` registry tag.
    pub fn hash_part(&self) -> String {
        self.path.hash().to_string()
    }

    pub fn is_derivation(&self) -> bool {
        self.path.is_derivation()
    }
}

impl fmt::Display for NixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_paths() {
        let p = NixPath::parse("/nix/store/0c3mnzkcb8b3iz3j3vfzdk5lwaxwh7xa-nixos-image.tar\n")
            .expect("valid");
        assert_eq!(p.hash_part(), "0c3mnzkcb8b3iz3j3vfzdk5lwaxwh7xa");
        assert!(!p.is_derivation());
        let d = NixPath::parse("/nix/store/0c3mnzkcb8b3iz3j3vfzdk5lwaxwh7xa-x.drv").expect("drv");
        assert!(d.is_derivation());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "nix-store",
            "/nix/store/short-name",
            "/nix/store/0c3mnzkcb8b3iz3j3vfzdk5lwaxwh7xe-x",
            "/nix/store/0c3mnzkcb8b3iz3j3vfzdk5lwaxwh7xa-",
        ] {
            assert!(NixPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
