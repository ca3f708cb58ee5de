//! Resolving root inputs through `follows` paths, and the queries built on it.

use std::path::PathBuf;

use miette::NamedSource;

use super::date::{DateTag, MAX_DATE_SECS};
use super::error::{LockError, Site};
use super::span::{locate, Part};
use super::{
    FlakeLock, InputRef, LockedInput, Node, DEFAULT_FILE_NAME, MAX_FOLLOWS_DEPTH, MAX_RESOLVE_STEPS,
};

/// State of one root-input resolution: the look-ups in progress (for cycle
/// detection) and the total number of steps taken.
struct Resolver<'a> {
    input: &'a str,
    stack: Vec<(&'a str, &'a str)>,
    steps: usize,
}

impl FlakeLock {
    /// Locates `json_path` in the original text (if known) for an error label.
    pub(super) fn context(&self, json_path: &[&str], part: Part) -> Box<Site> {
        match &self.source {
            Some(source) => {
                let span = locate(&source.text, json_path).map(|loc| match part {
                    Part::Key => loc.key,
                    Part::Value => loc.value,
                });
                Box::new(Site {
                    path: source.path.clone(),
                    src: Some(NamedSource::new(
                        source.path.display().to_string(),
                        source.text.clone(),
                    )),
                    span,
                })
            }
            None => Box::new(Site {
                path: PathBuf::from(DEFAULT_FILE_NAME),
                src: None,
                span: None,
            }),
        }
    }

    fn root_node(&self) -> Result<&Node, LockError> {
        self.nodes.get(&self.root).ok_or_else(|| {
            let ctx = self.context(&["root"], Part::Value);
            LockError::MissingRoot {
                root: self.root.clone(),
                site: ctx,
            }
        })
    }

    /// Returns the key of the node that root input `name` refers to,
    /// following `follows` paths from the root node.
    pub fn resolve_root_input(&self, name: &str) -> Result<&str, LockError> {
        let root = self.root_node()?;
        let Some((input, _)) = root.inputs.get_key_value(name) else {
            let available: Vec<String> = root.inputs.keys().cloned().collect();
            let mut site = self.context(&["nodes", &self.root, "inputs"], Part::Key);
            if site.span.is_none() {
                site = self.context(&["nodes", &self.root], Part::Key);
            }
            return Err(LockError::InputNotInRoot {
                input: name.to_owned(),
                available,
                site,
            });
        };
        let mut resolver = Resolver {
            input,
            stack: Vec::new(),
            steps: 0,
        };
        self.resolve_input(&mut resolver, &self.root, input)
    }

    /// Resolves input `input` of node `node` (which must exist).
    fn resolve_input<'a>(
        &'a self,
        r: &mut Resolver<'a>,
        node: &'a str,
        input: &'a str,
    ) -> Result<&'a str, LockError> {
        if r.stack.contains(&(node, input)) {
            let mut chain: Vec<String> = r
                .stack
                .iter()
                .map(|(n, i)| format!("{n}.inputs.{i}"))
                .collect();
            chain.push(format!("{node}.inputs.{input}"));
            let ctx = self.context(&["nodes", node, "inputs", input], Part::Value);
            return Err(LockError::FollowsCycle {
                input: r.input.to_owned(),
                chain,
                site: ctx,
            });
        }
        r.steps += 1;
        if r.stack.len() >= MAX_FOLLOWS_DEPTH || r.steps > MAX_RESOLVE_STEPS {
            return Err(LockError::FollowsTooDeep {
                input: r.input.to_owned(),
                site: self.context(&["nodes", &self.root, "inputs", r.input], Part::Value),
            });
        }

        let reference = self
            .nodes
            .get(node)
            .and_then(|n| n.inputs.get(input))
            .ok_or_else(|| {
                // Callers check existence first; report it as a dangling
                // look-up rather than panicking if that ever changes.
                let ctx = self.context(&["nodes", node], Part::Key);
                LockError::DanglingFollows {
                    input: r.input.to_owned(),
                    follows: vec![input.to_owned()],
                    missing: node.to_owned(),
                    segment: input.to_owned(),
                    site: ctx,
                }
            })?;

        r.stack.push((node, input));
        let result = match reference {
            InputRef::Node(key) => {
                if self.nodes.contains_key(key) {
                    Ok(key.as_str())
                } else {
                    let ctx = self.context(&["nodes", node, "inputs", input], Part::Value);
                    Err(LockError::MissingNode {
                        input: r.input.to_owned(),
                        node: key.clone(),
                        site: ctx,
                    })
                }
            }
            InputRef::Follows(follows) => self.resolve_follows(r, node, input, follows),
        };
        r.stack.pop();
        result
    }

    /// Resolves a `follows` path declared at `node.inputs.input`, from the root.
    fn resolve_follows<'a>(
        &'a self,
        r: &mut Resolver<'a>,
        node: &'a str,
        input: &'a str,
        follows: &'a [String],
    ) -> Result<&'a str, LockError> {
        let mut current: &'a str = &self.root;
        for segment in follows {
            let has_input = self
                .nodes
                .get(current)
                .is_some_and(|n| n.inputs.contains_key(segment));
            if !has_input {
                let ctx = self.context(&["nodes", node, "inputs", input], Part::Value);
                return Err(LockError::DanglingFollows {
                    input: r.input.to_owned(),
                    follows: follows.to_vec(),
                    missing: current.to_owned(),
                    segment: segment.clone(),
                    site: ctx,
                });
            }
            current = self.resolve_input(r, current, segment)?;
        }
        Ok(current)
    }

    /// The lock information of root input `name`.
    pub fn locked_input(&self, name: &str) -> Result<LockedInput, LockError> {
        let node_key = self.resolve_root_input(name)?;
        let locked = self.nodes.get(node_key).and_then(|n| n.locked.as_ref());
        Ok(LockedInput {
            input: name.to_owned(),
            node: node_key.to_owned(),
            rev: locked.and_then(|l| l.rev.clone()),
            last_modified: locked.and_then(|l| l.last_modified),
            nar_hash: locked.and_then(|l| l.nar_hash.clone()),
        })
    }

    /// The `YYYYMMDD` tag of root input `input`'s `lastModified` time.
    pub fn date_tag(&self, input: &str) -> Result<DateTag, LockError> {
        let locked = self.locked_input(input)?;
        match locked.last_modified {
            Some(secs) if !(86_400..=MAX_DATE_SECS).contains(&secs) => {
                let site = self.context(
                    &["nodes", &locked.node, "locked", "lastModified"],
                    Part::Value,
                );
                Err(LockError::LastModifiedOutOfRange {
                    input: locked.input,
                    node: locked.node,
                    value: secs,
                    site,
                })
            }
            Some(secs) => Ok(DateTag::from_unix(secs)),
            None => {
                let node = self.nodes.get(&locked.node);
                let kind = node
                    .and_then(|n| n.locked.as_ref())
                    .map_or_else(|| "unlocked".to_owned(), |l| l.kind.clone());
                let ctx = match node.and_then(|n| n.locked.as_ref()) {
                    Some(_) => self.context(&["nodes", &locked.node, "locked"], Part::Key),
                    None => self.context(&["nodes", &locked.node], Part::Key),
                };
                Err(LockError::NoLastModified {
                    input: locked.input,
                    node: locked.node,
                    kind,
                    site: ctx,
                })
            }
        }
    }

    /// All root inputs that resolve, sorted by name. Inputs whose resolution
    /// fails (dangling or cyclic `follows`) are left out.
    pub fn root_inputs(&self) -> Vec<LockedInput> {
        let Some(root) = self.nodes.get(&self.root) else {
            return Vec::new();
        };
        root.inputs
            .keys()
            .filter_map(|name| self.locked_input(name).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake_lock::fixtures::*;
    use crate::flake_lock::parse;
    use miette::Diagnostic;
    use serde_json::json;

    #[test]
    fn root_input_may_point_at_a_renamed_node() {
        let lock = lock_from(json!({
            "nodes": {
                // An older nixpkgs pulled in by some other input.
                "nixpkgs": github("0000000000000000000000000000000000000000", 1_600_000_000, "sha256-old="),
                "nixpkgs_2": github(NIXPKGS_REV, NIXPKGS_DATE, "sha256-new="),
                "other": { "inputs": { "nixpkgs": "nixpkgs" }, "locked": { "type": "github", "lastModified": 5 } },
                "root": { "inputs": { "nixpkgs": "nixpkgs_2", "other": "other" } }
            },
            "root": "root",
            "version": 7
        }));
        assert_eq!(lock.resolve_root_input("nixpkgs").unwrap(), "nixpkgs_2");
        let input = lock.locked_input("nixpkgs").unwrap();
        assert_eq!(input.node, "nixpkgs_2");
        assert_eq!(input.rev.as_deref(), Some(NIXPKGS_REV));
        assert_eq!(lock.date_tag("nixpkgs").unwrap().as_str(), "20260629");
    }

    #[test]
    fn resolves_follows_paths_from_the_root() {
        let lock = lock_from(json!({
            "nodes": {
                "nixpkgs": github("1111111111111111111111111111111111111111", 1, "sha256-a="),
                "nixpkgs_2": github(NIXPKGS_REV, NIXPKGS_DATE, "sha256-b="),
                "upstream": {
                    "inputs": { "nixpkgs": "nixpkgs_2", "pkgs": ["upstream", "nixpkgs"] },
                    "locked": { "type": "git", "lastModified": 2 }
                },
                "tools": {
                    "inputs": { "nixpkgs": ["nixpkgs"] },
                    "locked": { "type": "git", "lastModified": 3 }
                },
                "root": { "inputs": {
                    "upstream": "upstream",
                    "nixpkgs": ["upstream", "nixpkgs"],
                    "chained": ["upstream", "pkgs"],
                    "via-tools": ["tools", "nixpkgs"],
                    "tools": "tools",
                    "self": []
                } }
            },
            "root": "root",
            "version": 7
        }));
        assert_eq!(lock.resolve_root_input("nixpkgs").unwrap(), "nixpkgs_2");
        assert_eq!(lock.resolve_root_input("chained").unwrap(), "nixpkgs_2");
        // tools.inputs.nixpkgs follows root's `nixpkgs`, which follows upstream's.
        assert_eq!(lock.resolve_root_input("via-tools").unwrap(), "nixpkgs_2");
        // An empty follows path refers to the root flake itself.
        assert_eq!(lock.resolve_root_input("self").unwrap(), "root");
        assert_eq!(lock.locked_input("nixpkgs").unwrap().input, "nixpkgs");
        assert_eq!(lock.date_tag("chained").unwrap().as_str(), "20260629");
        assert!(matches!(
            lock.date_tag("self"),
            Err(LockError::NoLastModified { kind, .. }) if kind == "unlocked"
        ));
    }

    #[test]
    fn detects_follows_cycles() {
        let value = json!({
            "nodes": {
                "x": { "inputs": { "y": ["c"] }, "locked": { "type": "git" } },
                "root": { "inputs": {
                    "a": ["b"],
                    "b": ["a"],
                    "c": ["x", "y"],
                    "x": "x",
                    "ok": "x"
                } }
            },
            "root": "root",
            "version": 7
        });
        let text = serde_json::to_string_pretty(&value).unwrap();
        let lock = parse(&text, path()).unwrap();
        let err = lock.resolve_root_input("a").unwrap_err();
        match &err {
            LockError::FollowsCycle { input, chain, .. } => {
                assert_eq!(input, "a");
                assert_eq!(chain, &["root.inputs.a", "root.inputs.b", "root.inputs.a"]);
            }
            e => panic!("{e:?}"),
        }
        let label: String = label_text(&err, &text).split_whitespace().collect();
        assert_eq!(label, "[\"b\"]");
        assert!(matches!(
            lock.resolve_root_input("c"),
            Err(LockError::FollowsCycle { .. })
        ));
        assert_eq!(lock.resolve_root_input("ok").unwrap(), "x");
        // Unresolvable inputs are skipped, the rest are listed.
        let names: Vec<String> = lock.root_inputs().into_iter().map(|i| i.input).collect();
        assert_eq!(names, ["ok", "x"]);
    }

    #[test]
    fn deep_follows_chains_are_cut_off() {
        let mut inputs = serde_json::Map::new();
        for i in 0..200 {
            inputs.insert(format!("i{i}"), json!([format!("i{}", i + 1)]));
        }
        inputs.insert("i200".into(), json!("n"));
        let lock = lock_from(json!({
            "nodes": { "n": { "locked": { "type": "git" } }, "root": { "inputs": inputs } },
            "root": "root",
            "version": 7
        }));
        assert_eq!(lock.resolve_root_input("i150").unwrap(), "n");
        assert!(matches!(
            lock.resolve_root_input("i0"),
            Err(LockError::FollowsTooDeep { .. })
        ));
    }

    /// Each level's `x` follows two paths that both resolve the next
    /// level's `x`: 2^levels look-ups without a step budget.
    fn doubling_graph(levels: usize) -> FlakeLock {
        let mut root = serde_json::Map::new();
        let mut leaf = serde_json::Map::new();
        let mut nodes = serde_json::Map::new();
        for k in 0..levels {
            let next = format!("i{}", k + 1);
            root.insert(format!("i{k}"), json!(format!("n{k}")));
            root.insert(format!("p{k}"), json!([next, "x"]));
            leaf.insert(format!("q{k}"), json!([next, "x"]));
            nodes.insert(
                format!("n{k}"),
                json!({ "inputs": { "x": [format!("p{k}"), format!("q{k}")] } }),
            );
        }
        root.insert(format!("i{levels}"), json!(format!("n{levels}")));
        nodes.insert(format!("n{levels}"), json!({ "inputs": { "x": "leaf" } }));
        nodes.insert(
            "leaf".into(),
            json!({ "inputs": leaf, "locked": { "type": "git", "lastModified": 0 } }),
        );
        nodes.insert("root".into(), json!({ "inputs": root }));
        lock_from(json!({ "nodes": nodes, "root": "root", "version": 7 }))
    }

    #[test]
    fn exponential_follows_graphs_hit_the_step_budget() {
        let small = doubling_graph(6);
        small.resolve_root_input("p0").unwrap();
        assert_eq!(small.resolve_root_input("p0").unwrap(), "leaf");
        // 2^28 look-ups if unbounded; nesting stays below MAX_FOLLOWS_DEPTH.
        let big = doubling_graph(28);
        assert_eq!(big.resolve_root_input("p27").unwrap(), "leaf");
        assert!(matches!(
            big.resolve_root_input("p0"),
            Err(LockError::FollowsTooDeep { .. })
        ));
        // Skipped, not fatal, when listing inputs.
        assert!(big.root_inputs().iter().any(|i| i.input == "p27"));
        assert!(!big.root_inputs().iter().any(|i| i.input == "p0"));
    }

    #[test]
    fn missing_input_lists_available_ones() {
        let lock = parse(REALISTIC, path()).unwrap();
        let err = lock.resolve_root_input("nixos").unwrap_err();
        match &err {
            LockError::InputNotInRoot {
                input, available, ..
            } => {
                assert_eq!(input, "nixos");
                assert_eq!(available, &["flake-utils", "nixpkgs", "secrets"]);
            }
            e => panic!("{e:?}"),
        }
        let help = err.help().unwrap().to_string();
        assert!(help.contains("flake-utils, nixpkgs, secrets"), "{help}");
        assert!(help.contains("--input"), "{help}");
        assert_eq!(label_text(&err, REALISTIC), "\"inputs\"");
        // The label is the root node's inputs, not flake-utils'.
        let offset = err.labels().unwrap().next().unwrap().offset();
        assert!(offset > REALISTIC.find("\"root\": {").unwrap());
        assert!(matches!(
            lock.locked_input("nixos"),
            Err(LockError::InputNotInRoot { .. })
        ));
    }

    #[test]
    fn dangling_follows_and_missing_nodes() {
        let value = json!({
            "nodes": {
                "upstream": { "inputs": {}, "locked": { "type": "git" } },
                "root": { "inputs": {
                    "upstream": "upstream",
                    "nixpkgs": ["upstream", "nixpkgs"],
                    "gone": "ghost"
                } }
            },
            "root": "root",
            "version": 7
        });
        let text = serde_json::to_string_pretty(&value).unwrap();
        let lock = parse(&text, path()).unwrap();
        let err = lock.resolve_root_input("nixpkgs").unwrap_err();
        match &err {
            LockError::DanglingFollows {
                input,
                follows,
                missing,
                segment,
                ..
            } => {
                assert_eq!(input, "nixpkgs");
                assert_eq!(follows, &["upstream", "nixpkgs"]);
                assert_eq!(
                    (missing.as_str(), segment.as_str()),
                    ("upstream", "nixpkgs")
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(
            err.to_string().contains("follows `upstream/nixpkgs`"),
            "{err}"
        );
        assert!(label_text(&err, &text).starts_with('['));

        let err = lock.resolve_root_input("gone").unwrap_err();
        assert!(matches!(&err, LockError::MissingNode { node, .. } if node == "ghost"));
        assert_eq!(label_text(&err, &text), "\"ghost\"");
    }

    #[test]
    fn inputs_without_last_modified_cannot_give_a_date() {
        let lock = parse(REALISTIC, path()).unwrap();
        let secrets = lock.locked_input("secrets").unwrap();
        assert_eq!(secrets.last_modified, None);
        assert_eq!(secrets.rev, None);
        let err = lock.date_tag("secrets").unwrap_err();
        match &err {
            LockError::NoLastModified {
                input, node, kind, ..
            } => {
                assert_eq!(
                    (input.as_str(), node.as_str(), kind.as_str()),
                    ("secrets", "secrets", "path")
                );
            }
            e => panic!("{e:?}"),
        }
        let help = err.help().unwrap().to_string();
        assert!(
            help.contains("`path`") && help.contains("--input"),
            "{help}"
        );
        assert_eq!(label_text(&err, REALISTIC), "\"locked\"");
        let offset = err.labels().unwrap().next().unwrap().offset();
        assert!(offset > REALISTIC.find("\"secrets\": {").unwrap());
        let rendered = render(&err);
        assert!(
            rendered.contains("locked without lastModified"),
            "{rendered}"
        );
    }
}
