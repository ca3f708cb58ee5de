//! Fixtures shared by the unit tests of the `flake_lock` modules.

use std::path::Path;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};
use serde_json::json;

use super::{parse, FlakeLock, LockError};

pub(super) const NIXPKGS_REV: &str = "b5aa0fbd538984f6e3d201be0005b4463d8b09f8";
pub(super) const NIXPKGS_DATE: i64 = 1_782_723_713; // 2026-06-29T09:01:53Z

pub(super) const REALISTIC: &str = r#"{
  "nodes": {
    "flake-utils": {
      "inputs": {
        "systems": "systems"
      },
      "locked": {
        "lastModified": 1731533236,
        "narHash": "sha256-l0KFg5HjrsfsO/JpG+r7fRrqm12kzFHyUHqHCVpMMbI=",
        "owner": "numtide",
        "repo": "flake-utils",
        "rev": "11707dc2f618dd54ca8739b309ec4fc024de578b",
        "type": "github"
      },
      "original": {
        "owner": "numtide",
        "repo": "flake-utils",
        "type": "github"
      }
    },
    "nixpkgs": {
      "locked": {
        "lastModified": 1782723713,
        "narHash": "sha256-3kIgx7j9hl1lXyTgqTmEwTMTUKDi7xFt9sQ6Pb1zWio=",
        "owner": "NixOS",
        "repo": "nixpkgs",
        "rev": "b5aa0fbd538984f6e3d201be0005b4463d8b09f8",
        "type": "github"
      },
      "original": {
        "owner": "NixOS",
        "ref": "nixos-unstable",
        "repo": "nixpkgs",
        "type": "github"
      }
    },
    "root": {
      "inputs": {
        "flake-utils": "flake-utils",
        "nixpkgs": "nixpkgs",
        "secrets": "secrets"
      }
    },
    "secrets": {
      "flake": false,
      "locked": {
        "narHash": "sha256-Dq4Lc4VhsNHYuP4NOP0PzSWsjvqwO3RRSGJIXcFVwLc=",
        "path": "./secrets",
        "type": "path"
      },
      "original": {
        "path": "./secrets",
        "type": "path"
      },
      "parent": []
    },
    "systems": {
      "locked": {
        "lastModified": 1681028828,
        "narHash": "sha256-Vy1rq5AaRuLzOxct8nz4T6wlgyUR7zLU309k9mBC768=",
        "owner": "nix-systems",
        "repo": "default",
        "rev": "da67096a3b9bf56a91d16901293e51ba5b49a27e",
        "type": "github"
      },
      "original": {
        "owner": "nix-systems",
        "repo": "default",
        "type": "github"
      }
    }
  },
  "root": "root",
  "version": 7
}
"#;

pub(super) fn path() -> &'static Path {
    Path::new("/srv/runner/flake.lock")
}

pub(super) fn lock_from(value: serde_json::Value) -> FlakeLock {
    let text = serde_json::to_string_pretty(&value).unwrap();
    parse(&text, path()).unwrap()
}

pub(super) fn github(rev: &str, last_modified: i64, hash: &str) -> serde_json::Value {
    json!({
        "locked": {
            "lastModified": last_modified,
            "narHash": hash,
            "owner": "NixOS",
            "repo": "nixpkgs",
            "rev": rev,
            "type": "github"
        },
        "original": { "owner": "NixOS", "repo": "nixpkgs", "type": "github" }
    })
}

/// The text a diagnostic's first label points at.
pub(super) fn label_text<'a>(err: &LockError, text: &'a str) -> &'a str {
    let label = err.labels().and_then(|mut l| l.next()).expect("a label");
    &text[label.offset()..label.offset() + label.len()]
}

pub(super) fn render(err: &LockError) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(200)
        .render_report(&mut out, err)
        .unwrap();
    out
}
