//! Typed, read-only view of a Nix `flake.lock` file.
//!
//! [`parse`] turns the text of a lock file into a [`FlakeLock`]. Lock files of
//! the versions in [`SUPPORTED_VERSIONS`] are accepted; fields this module does
//! not know about are kept (see [`Node::rest`] and [`Locked::rest`]), so new
//! kinds of inputs do not break parsing.
//!
//! Root inputs are resolved the way Nix does it: an input is either the key of
//! a node, or a `follows` path such as `["upstream", "nixpkgs"]`, which is
//! walked from the root node (root input `upstream`, then that node's input
//! `nixpkgs`), recursively.
//!
//! Errors are [`LockError`] values: `miette` diagnostics that name the file,
//! point into its text where possible, and say what to do next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod date;
mod error;
#[cfg(test)]
mod fixtures;
mod follows;
pub(crate) mod span;

pub use date::{diff_inputs, format_day, DateTag, InputChange};
use error::json_error;
pub use error::{LockError, Site};
use span::{locate, Part};

/// The `version` values of `flake.lock` that this module understands.
pub const SUPPORTED_VERSIONS: &[u32] = &[5, 6, 7];

/// Longest chain of nested `follows` resolutions before giving up.
const MAX_FOLLOWS_DEPTH: usize = 64;

/// Upper bound on the input look-ups performed while resolving one root input.
/// Guards against lock files crafted to make resolution take exponential time.
const MAX_RESOLVE_STEPS: usize = 10_000;

/// File name used in messages when a [`FlakeLock`] was not built by [`parse`].
const DEFAULT_FILE_NAME: &str = "flake.lock";

/// A parsed `flake.lock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlakeLock {
    /// Lock file format version (one of [`SUPPORTED_VERSIONS`] after [`parse`]).
    pub version: u32,
    /// Key of the root node in [`FlakeLock::nodes`] (normally `"root"`).
    pub root: String,
    /// All nodes of the lock file, by key.
    pub nodes: BTreeMap<String, Node>,
    /// The file this lock was parsed from, used to point errors at its text.
    #[serde(skip)]
    source: Option<Arc<LockSource>>,
}

#[derive(Debug)]
struct LockSource {
    path: PathBuf,
    text: String,
}

/// One node of the lock graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's own inputs, by input name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputRef>,
    /// The locked reference (absent for the root node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<Locked>,
    /// The reference as written in `flake.nix`, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Value>,
    /// `false` for non-flake inputs (`flake = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flake: Option<bool>,
    /// Any other fields (e.g. `parent` of relative path inputs), kept verbatim.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// Where a node input points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "each input to be a node name (string) or a follows path (array of strings)"
)]
pub enum InputRef {
    /// The key of another node.
    Node(String),
    /// A `follows` path, resolved from the root node.
    Follows(Vec<String>),
}

/// The `locked` attribute set of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Locked {
    /// The fetcher type (`github`, `git`, `path`, `tarball`, ...). JSON `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Revision (commit hash), if the fetcher has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    /// Commit/modification time in seconds since the Unix epoch. JSON `lastModified`.
    #[serde(
        rename = "lastModified",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified: Option<i64>,
    /// SRI hash of the NAR serialisation. JSON `narHash`.
    #[serde(rename = "narHash", default, skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    /// Any other fields (`owner`, `repo`, `url`, `ref`, ...), kept verbatim.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// The lock information of one root input, after resolving `follows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedInput {
    /// Name of the root input (as in `flake.nix`).
    pub input: String,
    /// Key of the node it resolves to.
    pub node: String,
    pub rev: Option<String>,
    pub last_modified: Option<i64>,
    pub nar_hash: Option<String>,
}

/// Parses the text of a `flake.lock` read from `path`.
///
/// `path` is only used in error messages and to name the source in
/// diagnostics. The version is checked before the structure, so a lock file
/// of a newer format is reported as [`LockError::UnsupportedVersion`] rather
/// than as a shape error.
pub fn parse(text: &str, path: &Path) -> Result<FlakeLock, LockError> {
    #[derive(Deserialize)]
    struct Probe {
        version: Option<Value>,
    }

    // Validates the JSON syntax and that the top level is an object.
    let probe: Probe = serde_json::from_str(text).map_err(|e| json_error(&e, text, path))?;

    let supported = match probe.version.as_ref().and_then(Value::as_u64) {
        Some(v) => SUPPORTED_VERSIONS.iter().any(|&s| u64::from(s) == v),
        None => false,
    };
    if !supported {
        let found = match &probe.version {
            Some(v) => v.to_string(),
            None => "missing".to_owned(),
        };
        let span = locate(text, &["version"])
            .map(|loc| loc.value)
            .unwrap_or_else(|| (0, 0).into());
        return Err(LockError::UnsupportedVersion {
            found,
            site: Site::in_text(path, text, span),
        });
    }

    let mut lock: FlakeLock = serde_json::from_str(text).map_err(|e| json_error(&e, text, path))?;
    lock.source = Some(Arc::new(LockSource {
        path: path.to_owned(),
        text: text.to_owned(),
    }));

    if !lock.nodes.contains_key(&lock.root) {
        let ctx = lock.context(&["root"], Part::Value);
        return Err(LockError::MissingRoot {
            root: lock.root,
            site: ctx,
        });
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake_lock::fixtures::*;
    use miette::Diagnostic;
    use serde_json::json;

    #[test]
    fn parses_realistic_lock() {
        let lock = parse(REALISTIC, path()).unwrap();
        assert_eq!(lock.version, 7);
        assert_eq!(lock.root, "root");
        assert_eq!(lock.nodes.len(), 5);

        let nixpkgs = lock.locked_input("nixpkgs").unwrap();
        assert_eq!(
            nixpkgs,
            LockedInput {
                input: "nixpkgs".into(),
                node: "nixpkgs".into(),
                rev: Some(NIXPKGS_REV.into()),
                last_modified: Some(NIXPKGS_DATE),
                nar_hash: Some("sha256-3kIgx7j9hl1lXyTgqTmEwTMTUKDi7xFt9sQ6Pb1zWio=".into()),
            }
        );
        assert_eq!(lock.date_tag("nixpkgs").unwrap().as_str(), "20260629");

        let names: Vec<String> = lock.root_inputs().into_iter().map(|i| i.input).collect();
        assert_eq!(names, ["flake-utils", "nixpkgs", "secrets"]);

        let node = &lock.nodes["nixpkgs"];
        let locked = node.locked.as_ref().unwrap();
        assert_eq!(locked.kind, "github");
        assert_eq!(locked.rest["owner"], "NixOS");
        assert_eq!(node.original.as_ref().unwrap()["ref"], "nixos-unstable");
        let secrets = &lock.nodes["secrets"];
        assert_eq!(secrets.flake, Some(false));
        assert_eq!(secrets.rest["parent"], json!([]));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let lock = parse(REALISTIC, path()).unwrap();
        let original: serde_json::Value = serde_json::from_str(REALISTIC).unwrap();
        assert_eq!(serde_json::to_value(&lock).unwrap(), original);

        let mut value = original;
        value["nodes"]["future"] = json!({
            "locked": { "type": "sourcehut", "lastModified": 172800, "frobnicate": { "x": [1, 2] } },
            "novel": true
        });
        value["nodes"]["root"]["inputs"]["future"] = json!("future");
        let lock = lock_from(value.clone());
        assert_eq!(lock.nodes["future"].rest["novel"], json!(true));
        assert_eq!(serde_json::to_value(&lock).unwrap(), value);
        assert_eq!(lock.date_tag("future").unwrap().as_str(), "19700103");
        // Out of range: rejected with the node and the value, not clamped.
        for secs in [1, -5, 253_402_300_800] {
            value["nodes"]["future"]["locked"]["lastModified"] = json!(secs);
            let err = lock_from(value.clone()).date_tag("future").unwrap_err();
            assert!(
                matches!(&err, LockError::LastModifiedOutOfRange { node, value, .. } if node == "future" && *value == secs),
                "{err:?}"
            );
        }
    }

    #[test]
    fn supports_versions_5_to_7_only() {
        for version in SUPPORTED_VERSIONS {
            let text = REALISTIC.replace("\"version\": 7", &format!("\"version\": {version}"));
            assert_eq!(parse(&text, path()).unwrap().version, *version);
        }
        let text = REALISTIC.replace("\"version\": 7", "\"version\": 8");
        let err = parse(&text, path()).unwrap_err();
        match &err {
            LockError::UnsupportedVersion { found, .. } => assert_eq!(found, "8"),
            e => panic!("{e:?}"),
        }
        assert_eq!(label_text(&err, &text), "8");
        assert!(err.to_string().contains("/srv/runner/flake.lock"), "{err}");
        assert!(err.help().unwrap().to_string().contains("5, 6 and 7"));

        let text = REALISTIC.replace("\"version\": 7", "\"version\": \"7\"");
        let err = parse(&text, path()).unwrap_err();
        assert!(matches!(&err, LockError::UnsupportedVersion { found, .. } if found == "\"7\""));
        assert_eq!(label_text(&err, &text), "\"7\"");

        let text = REALISTIC.replace(",\n  \"version\": 7", "");
        let err = parse(&text, path()).unwrap_err();
        assert!(matches!(&err, LockError::UnsupportedVersion { found, .. } if found == "missing"));
    }

    #[test]
    fn missing_root_node() {
        let text = REALISTIC.replace("\"root\": \"root\"", "\"root\": \"main\"");
        let err = parse(&text, path()).unwrap_err();
        assert!(matches!(&err, LockError::MissingRoot { root, .. } if root == "main"));
        assert_eq!(label_text(&err, &text), "\"main\"");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Parses and, on success, exercises every query. Checks that error
        /// labels stay inside the text and that diagnostics render.
        fn exercise(text: &str) -> Result<(), TestCaseError> {
            let check = |err: &LockError| -> Result<(), TestCaseError> {
                if let Some(labels) = err.labels() {
                    for label in labels {
                        prop_assert!(label.offset() + label.len() <= text.len());
                        prop_assert!(text.is_char_boundary(label.offset()));
                    }
                }
                render(err);
                Ok(())
            };
            match parse(text, path()) {
                Err(err) => check(&err)?,
                Ok(lock) => {
                    let names: Vec<String> = lock
                        .nodes
                        .get(&lock.root)
                        .map(|r| r.inputs.keys().cloned().collect())
                        .unwrap_or_default();
                    for name in names.iter().map(String::as_str).chain(["missing"]) {
                        if let Err(err) = lock.date_tag(name) {
                            check(&err)?;
                        }
                    }
                    let _ = lock.root_inputs();
                    for change in diff_inputs(&lock, &parse(REALISTIC, path()).unwrap()) {
                        let _ = change.render();
                    }
                }
            }
            Ok(())
        }

        #[derive(Debug, Clone)]
        enum Edit {
            Replace(usize, u8),
            Insert(usize, u8),
            Delete(usize),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            let byte = prop_oneof![
                prop::sample::select(b"{}[]\",:0123456789-.e \n\\ab".to_vec()),
                any::<u8>(),
            ];
            prop_oneof![
                (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
                (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
                any::<usize>().prop_map(Edit::Delete),
            ]
        }

        const NODE_KEYS: &[&str] = &["root", "a", "b", "nixpkgs", "nixpkgs_2"];
        const INPUT_NAMES: &[&str] = &["a", "b", "nixpkgs", "x"];

        fn input_ref() -> impl Strategy<Value = InputRef> {
            let mut targets = NODE_KEYS.to_vec();
            targets.push("ghost");
            prop_oneof![
                prop::sample::select(targets).prop_map(|k| InputRef::Node(k.to_owned())),
                prop::collection::vec(prop::sample::select(INPUT_NAMES), 0..4)
                    .prop_map(|p| InputRef::Follows(p.into_iter().map(String::from).collect())),
            ]
        }

        fn node() -> impl Strategy<Value = Node> {
            (
                prop::collection::btree_map(
                    prop::sample::select(INPUT_NAMES).prop_map(String::from),
                    input_ref(),
                    0..4,
                ),
                prop::option::of(prop::option::of(any::<i64>())),
            )
                .prop_map(|(inputs, locked)| Node {
                    inputs,
                    locked: locked.map(|last_modified| Locked {
                        kind: "github".into(),
                        rev: Some("0123456789abcdef".into()),
                        last_modified,
                        nar_hash: None,
                        rest: BTreeMap::new(),
                    }),
                    original: None,
                    flake: None,
                    rest: BTreeMap::new(),
                })
        }

        fn graph() -> impl Strategy<Value = FlakeLock> {
            prop::collection::btree_map(
                prop::sample::select(NODE_KEYS).prop_map(String::from),
                node(),
                0..6,
            )
            .prop_map(|nodes| FlakeLock {
                version: 7,
                root: "root".into(),
                nodes,
                source: None,
            })
        }

        fn kind(r: &Result<&str, LockError>) -> String {
            match r {
                Ok(k) => format!("ok {k}"),
                Err(e) => format!("{:?}", std::mem::discriminant(e)),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn parse_never_panics_on_arbitrary_strings(text in any::<String>()) {
                exercise(&text)?;
            }

            #[test]
            fn parse_never_panics_on_json_like_strings(
                text in "[{}\\[\\]\":, \n0-9a-z\\\\]{0,120}",
            ) {
                exercise(&text)?;
            }

            #[test]
            fn parse_never_panics_on_mutated_locks(
                edits in prop::collection::vec(edit(), 1..6),
            ) {
                let mut bytes = REALISTIC.as_bytes().to_vec();
                for edit in edits {
                    match edit {
                        Edit::Replace(i, b) => {
                            let i = i % bytes.len().max(1);
                            if let Some(slot) = bytes.get_mut(i) {
                                *slot = b;
                            }
                        }
                        Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                        Edit::Delete(i) => {
                            if !bytes.is_empty() {
                                bytes.remove(i % bytes.len());
                            }
                        }
                    }
                }
                exercise(&String::from_utf8_lossy(&bytes))?;
            }

            #[test]
            fn resolution_never_panics_on_arbitrary_graphs(lock in graph()) {
                let text = serde_json::to_string_pretty(&lock).unwrap();
                let parsed = parse(&text, path());
                for name in INPUT_NAMES.iter().copied().chain(["absent"]) {
                    let resolved = lock.resolve_root_input(name);
                    if let Ok(key) = resolved {
                        prop_assert!(lock.nodes.contains_key(key));
                        let direct = lock.nodes["root"].inputs.get(name);
                        if let Some(InputRef::Node(target)) = direct {
                            prop_assert_eq!(key, target.as_str());
                        }
                    }
                    // The same graph parsed from text resolves the same way.
                    if let Ok(parsed) = &parsed {
                        prop_assert_eq!(kind(&parsed.resolve_root_input(name)), kind(&resolved));
                        if let Err(err) = parsed.date_tag(name) {
                            for label in err.labels().into_iter().flatten() {
                                prop_assert!(label.offset() + label.len() <= text.len());
                            }
                        }
                    }
                    let _ = lock.date_tag(name);
                }
                prop_assert_eq!(parsed.is_ok(), lock.nodes.contains_key("root"));
                let _ = lock.root_inputs();
                let _ = diff_inputs(&lock, &lock);
            }
        }
    }
}
