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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

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

/// Errors reading or querying a `flake.lock`.
///
/// Each variant says what is wrong; [`LockError::path`] names the file and,
/// when the lock was read with [`parse`], the diagnostic points into its text
/// (`miette` source code and label). The help text says what to do.
///
/// Where in the file the problem is lives in a boxed [`Site`] so that the
/// error stays small enough to return by value.
#[derive(Debug, Error)]
pub enum LockError {
    /// The text is not JSON, or not JSON of the shape of a lock file.
    #[error("{}:{line}:{column}: {message}", .site.path.display())]
    Json {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What serde_json found wrong, without its position suffix.
        message: String,
        /// Whether the text is valid JSON of the wrong shape (rather than
        /// not JSON at all).
        shape: bool,
        site: Box<Site>,
    },

    /// The `version` field is missing or not one of [`SUPPORTED_VERSIONS`].
    #[error("{}: unsupported flake.lock version {found}", .site.path.display())]
    UnsupportedVersion {
        /// The version as written (JSON text), or `missing`.
        found: String,
        site: Box<Site>,
    },

    /// The node named by the top-level `root` field does not exist.
    #[error("{}: the root node `{root}` is not in `nodes`", .site.path.display())]
    MissingRoot { root: String, site: Box<Site> },

    /// The root node has no input of the requested name.
    #[error("{}: the flake has no input named `{input}`", .site.path.display())]
    InputNotInRoot {
        input: String,
        /// Names of the root node's inputs, sorted.
        available: Vec<String>,
        site: Box<Site>,
    },

    /// A node input refers to a node key that does not exist.
    #[error(
        "{}: input `{input}` refers to node `{node}`, which is not in `nodes`",
        .site.path.display()
    )]
    MissingNode {
        /// The root input being resolved.
        input: String,
        /// The node key that is missing.
        node: String,
        site: Box<Site>,
    },

    /// A `follows` path names an input that does not exist.
    #[error(
        "{}: input `{input}` follows `{}`, but `{missing}` has no input `{segment}`",
        .site.path.display(),
        .follows.join("/")
    )]
    DanglingFollows {
        /// The root input being resolved.
        input: String,
        /// The `follows` path that could not be resolved.
        follows: Vec<String>,
        /// The node in which the look-up failed.
        missing: String,
        /// The path segment that was not found.
        segment: String,
        site: Box<Site>,
    },

    /// `follows` declarations refer to each other in a loop.
    #[error(
        "{}: resolving input `{input}` loops through `follows`: {}",
        .site.path.display(),
        .chain.join(" -> ")
    )]
    FollowsCycle {
        input: String,
        /// The chain of `node.inputs.name` look-ups, ending where it repeats.
        chain: Vec<String>,
        site: Box<Site>,
    },

    /// Resolution needed more `follows` look-ups than allowed.
    #[error(
        "{}: resolving input `{input}` needs too many `follows` look-ups \
         (more than {MAX_FOLLOWS_DEPTH} nested or {MAX_RESOLVE_STEPS} in total)",
        .site.path.display()
    )]
    FollowsTooDeep { input: String, site: Box<Site> },

    /// The resolved node records no `lastModified` time.
    #[error(
        "{}: input `{input}` (node `{node}`) has no lastModified time",
        .site.path.display()
    )]
    NoLastModified {
        input: String,
        node: String,
        /// The locked `type`, or `unlocked` if the node has no `locked` attribute.
        kind: String,
        site: Box<Site>,
    },

    /// The resolved node's `lastModified` is not a date a tag can name
    /// (before 1970-01-02 or after 9999-12-31).
    #[error(
        "{}: input `{input}` (node `{node}`) has lastModified {value}, which is not a date between 1970-01-02 and 9999-12-31",
        .site.path.display()
    )]
    LastModifiedOutOfRange {
        input: String,
        node: String,
        value: i64,
        site: Box<Site>,
    },
}

/// Where a [`LockError`] happened: the file, and if known its text and the
/// span of the offending part.
#[derive(Debug)]
pub struct Site {
    path: PathBuf,
    src: Option<NamedSource<String>>,
    span: Option<SourceSpan>,
}

impl Site {
    fn in_text(path: &Path, text: &str, span: SourceSpan) -> Box<Site> {
        Box::new(Site {
            path: path.to_owned(),
            src: Some(NamedSource::new(
                path.display().to_string(),
                text.to_owned(),
            )),
            span: Some(span),
        })
    }
}

const RESTORE_HELP: &str = "restore it with `git checkout -- flake.lock` or regenerate it with \
                            `nix flake lock`";

impl LockError {
    fn site(&self) -> &Site {
        match self {
            LockError::Json { site, .. }
            | LockError::UnsupportedVersion { site, .. }
            | LockError::MissingRoot { site, .. }
            | LockError::InputNotInRoot { site, .. }
            | LockError::MissingNode { site, .. }
            | LockError::DanglingFollows { site, .. }
            | LockError::FollowsCycle { site, .. }
            | LockError::FollowsTooDeep { site, .. }
            | LockError::NoLastModified { site, .. }
            | LockError::LastModifiedOutOfRange { site, .. } => site,
        }
    }

    /// The lock file the error is about (`flake.lock` if the lock was not
    /// read with [`parse`]).
    pub fn path(&self) -> &Path {
        &self.site().path
    }

    /// Byte span of the offending part of the file, if known.
    pub fn span(&self) -> Option<SourceSpan> {
        self.site().span
    }

    fn code_name(&self) -> &'static str {
        match self {
            LockError::Json { .. } => "json",
            LockError::UnsupportedVersion { .. } => "unsupported_version",
            LockError::MissingRoot { .. } => "missing_root",
            LockError::InputNotInRoot { .. } => "input_not_in_root",
            LockError::MissingNode { .. } => "missing_node",
            LockError::DanglingFollows { .. } => "dangling_follows",
            LockError::FollowsCycle { .. } => "follows_cycle",
            LockError::FollowsTooDeep { .. } => "follows_too_deep",
            LockError::NoLastModified { .. } => "no_last_modified",
            LockError::LastModifiedOutOfRange { .. } => "last_modified_range",
        }
    }

    fn label(&self) -> String {
        match self {
            LockError::Json { message, .. } => message.clone(),
            LockError::UnsupportedVersion { found, .. } => {
                format!("version {found} is not supported")
            }
            LockError::MissingRoot { .. } => "no node with this name".to_owned(),
            LockError::InputNotInRoot { .. } => {
                "the root node's inputs are declared here".to_owned()
            }
            LockError::MissingNode { .. } => "refers to a missing node".to_owned(),
            LockError::DanglingFollows { .. } => "this follows path does not resolve".to_owned(),
            LockError::FollowsCycle { .. } => "this follows path leads back to itself".to_owned(),
            LockError::FollowsTooDeep { .. } => "resolution starts here".to_owned(),
            LockError::NoLastModified { .. } => "locked without lastModified".to_owned(),
            LockError::LastModifiedOutOfRange { .. } => "lastModified out of range".to_owned(),
        }
    }

    fn help_text(&self) -> String {
        match self {
            LockError::Json { shape: false, .. } => {
                format!("flake.lock is not valid JSON; {RESTORE_HELP}")
            }
            LockError::Json { shape: true, .. } => format!(
                "the file is JSON but not shaped like a flake.lock (`version`, `root` and \
                 `nodes` with `inputs`/`locked` entries); {RESTORE_HELP}"
            ),
            LockError::UnsupportedVersion { .. } => format!(
                "runnerctl reads flake.lock versions {}; regenerate the lock file with \
                 `nix flake lock` using a Nix that writes one of those, or upgrade runnerctl",
                supported_list()
            ),
            LockError::MissingRoot { .. } | LockError::MissingNode { .. } => {
                format!("the lock file is inconsistent; {RESTORE_HELP}")
            }
            LockError::InputNotInRoot { available, .. } if available.is_empty() => {
                "the flake has no inputs at all, so there is nothing to take a date from; add \
                 an input to flake.nix and run `nix flake lock`"
                    .to_owned()
            }
            LockError::InputNotInRoot { available, .. } => format!(
                "the flake's inputs are: {}; pass one of them with `--input NAME`",
                available.join(", ")
            ),
            LockError::DanglingFollows { .. } => {
                "fix the `follows` declaration in flake.nix (`nix flake metadata` shows the \
                 input tree), then run `nix flake lock`"
                    .to_owned()
            }
            LockError::FollowsCycle { .. } => {
                "fix the `follows` declarations in flake.nix so they do not refer to each \
                 other in a loop, then run `nix flake lock`"
                    .to_owned()
            }
            LockError::FollowsTooDeep { .. } => {
                "simplify the `follows` declarations in flake.nix and run `nix flake lock`, \
                 or pick another input with `--input NAME`"
                    .to_owned()
            }
            LockError::LastModifiedOutOfRange { input, .. } => format!(
                "the lock entry's time cannot be a date tag; run `nix flake update {input}` to \
                 lock it again, or pick another input with `--input NAME`"
            ),
            LockError::NoLastModified { input, kind, .. } => format!(
                "the lock entry of type `{kind}` records no lastModified time (as for `path:` \
                 inputs), so no date tag can be derived from `{input}`; pick another input, \
                 e.g. a `github:` one, with `--input NAME`"
            ),
        }
    }
}

impl Diagnostic for LockError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!(
            "runnerctl::flake_lock::{}",
            self.code_name()
        )))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.help_text()))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.site().src.as_ref().map(|src| src as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let site = self.site();
        let span = site.span.filter(|_| site.src.is_some())?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.label()),
            span,
        ))))
    }
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

fn supported_list() -> String {
    let mut out = String::new();
    for (i, v) in SUPPORTED_VERSIONS.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == SUPPORTED_VERSIONS.len() {
                " and "
            } else {
                ", "
            });
        }
        out.push_str(&v.to_string());
    }
    out
}

fn json_error(err: &serde_json::Error, text: &str, path: &Path) -> LockError {
    use serde_json::error::Category;

    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let mut message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();

    // serde_json reports the position of the last byte it consumed (column 0:
    // nothing consumed on that line yet).
    let next = next_unread_offset(text, err.line(), err.column());
    let last = (err.column() > 0).then(|| floor_char_boundary(text, next.saturating_sub(1)));
    let bytes = text.as_bytes();

    let offset = match err.classify() {
        Category::Data => {
            // For a scalar, the last consumed byte is the end of the offending
            // value; for an object or array it is the byte before it.
            let before_value = match last {
                Some(i) => matches!(
                    bytes.get(i),
                    Some(b' ' | b'\t' | b'\n' | b'\r' | b':' | b',' | b'[' | b'{')
                ),
                None => true,
            };
            match last {
                Some(i) if !before_value => i,
                _ => skip_json_ws(bytes, next).min(text.len()),
            }
        }
        _ => {
            let at = last.unwrap_or(next);
            match trailing_comma(bytes, at) {
                Some(comma) => {
                    let closer = bytes.get(at).map_or('}', |&b| char::from(b));
                    message = format!("trailing comma before `{closer}`");
                    comma
                }
                None => at,
            }
        }
    };
    let offset = floor_char_boundary(text, offset);
    let (line, column) = offset_to_line_col(text, offset);
    let len = text
        .get(offset..)
        .and_then(|rest| rest.chars().next())
        .map_or(0, char::len_utf8);

    LockError::Json {
        line,
        column,
        message,
        shape: err.classify() == Category::Data,
        site: Site::in_text(path, text, (offset, len).into()),
    }
}

/// If the byte at `at` is `}` or `]` preceded (ignoring whitespace) by a
/// comma, returns the comma's offset.
fn trailing_comma(bytes: &[u8], at: usize) -> Option<usize> {
    if !matches!(bytes.get(at), Some(b'}' | b']')) {
        return None;
    }
    let before = bytes.get(..at)?;
    let i = before
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    (before.get(i) == Some(&b',')).then_some(i)
}

fn skip_json_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Converts serde_json's 1-based line and byte column to the offset of the
/// byte after the one it points at, clamped to the end of that line.
fn next_unread_offset(text: &str, line: usize, column: usize) -> usize {
    let mut line_start = 0;
    if line > 1 {
        let nth_newline = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .nth(line - 2);
        match nth_newline {
            Some((i, _)) => line_start = i + 1,
            None => return text.len(),
        }
    }
    let line_end = text
        .get(line_start..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| line_start + i + 1);
    line_start.saturating_add(column).min(line_end)
}

/// 1-based line and column (in characters) of byte `offset`.
fn offset_to_line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Which part of a located JSON member to point at.
#[derive(Clone, Copy)]
enum Part {
    Key,
    Value,
}

/// Byte spans of an object member found by [`locate`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Located {
    key: SourceSpan,
    value: SourceSpan,
}

/// Finds the member at `path` (a sequence of object keys from the top-level
/// object) in JSON `text`. Returns `None` if it is not there or the text is
/// not well-formed enough to tell. Never panics; does not recurse.
fn locate(text: &str, path: &[&str]) -> Option<Located> {
    let mut sc = Scanner {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let (last, parents) = path.split_last()?;
    sc.skip_ws();
    for segment in parents {
        sc.find_member(text, segment)?;
        sc.skip_ws();
    }
    let key = sc.find_member(text, last)?;
    sc.skip_ws();
    let start = sc.pos;
    sc.skip_value()?;
    Some(Located {
        key: (key.0, key.1 - key.0).into(),
        value: (start, sc.pos - start).into(),
    })
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Some(())
        } else {
            None
        }
    }

    /// Skips a string starting at the current `"`; returns its span (with quotes).
    fn skip_string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        self.expect(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Some((start, self.pos));
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Skips one JSON value of any kind, tracking nesting without recursion.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.pos += 1;
                        }
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            self.pos += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.pos += 1,
                    }
                }
            }
            _ => {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }

    /// With the scanner at an object, finds the member `name` and leaves the
    /// scanner at its value. Returns the span of the key (with quotes).
    fn find_member(&mut self, text: &str, name: &str) -> Option<(usize, usize)> {
        self.expect(b'{')?;
        loop {
            self.skip_ws();
            if self.peek()? == b'}' {
                return None;
            }
            let (start, end) = self.skip_string()?;
            let key: String = serde_json::from_str(text.get(start..end)?).ok()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            if key == name {
                return Some((start, end));
            }
            self.skip_value()?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                _ => return None,
            }
        }
    }
}

/// State of one root-input resolution: the look-ups in progress (for cycle
/// detection) and the total number of steps taken.
struct Resolver<'a> {
    input: &'a str,
    stack: Vec<(&'a str, &'a str)>,
    steps: usize,
}

impl FlakeLock {
    /// Locates `json_path` in the original text (if known) for an error label.
    fn context(&self, json_path: &[&str], part: Part) -> Box<Site> {
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

/// Last second representable as a four-digit year: 9999-12-31T23:59:59Z.
const MAX_DATE_SECS: i64 = 253_402_300_799;

/// The UTC calendar date of `secs`, clamped to 1970-01-01 ..= 9999-12-31.
fn utc_date(secs: i64) -> time::Date {
    let secs = secs.clamp(0, MAX_DATE_SECS);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_or(time::macros::date!(1970 - 01 - 01), |t| t.date())
}

/// A `YYYYMMDD` date used as an image tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DateTag(String);

impl DateTag {
    /// The UTC date of `secs` (seconds since the Unix epoch) as `YYYYMMDD`.
    ///
    /// Times outside 1970-01-01 ..= 9999-12-31 are clamped to that range, so
    /// the result is always exactly eight digits (and a valid image tag).
    pub fn from_unix(secs: i64) -> DateTag {
        let d = utc_date(secs);
        DateTag(format!(
            "{:04}{:02}{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DateTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The UTC date of `secs` as `YYYY-MM-DD`, for messages. Clamped like
/// [`DateTag::from_unix`].
pub fn format_day(secs: i64) -> String {
    let d = utc_date(secs);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A root input that differs between two lock files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChange {
    pub input: String,
    /// `None` if the input was added.
    pub old: Option<LockedInput>,
    /// `None` if the input was removed.
    pub new: Option<LockedInput>,
}

/// Root inputs that were added, removed, or whose (rev, narHash,
/// lastModified) changed between `old` and `new`, sorted by name.
pub fn diff_inputs(old: &FlakeLock, new: &FlakeLock) -> Vec<InputChange> {
    fn by_name(lock: &FlakeLock) -> BTreeMap<String, LockedInput> {
        lock.root_inputs()
            .into_iter()
            .map(|i| (i.input.clone(), i))
            .collect()
    }
    let mut old = by_name(old);
    let mut new = by_name(new);
    let names: BTreeSet<String> = old.keys().chain(new.keys()).cloned().collect();

    names
        .into_iter()
        .filter_map(|name| {
            let o = old.remove(&name);
            let n = new.remove(&name);
            let same = match (&o, &n) {
                (Some(a), Some(b)) => {
                    a.rev == b.rev && a.nar_hash == b.nar_hash && a.last_modified == b.last_modified
                }
                _ => false,
            };
            (!same).then_some(InputChange {
                input: name,
                old: o,
                new: n,
            })
        })
        .collect()
}

/// Short description of a locked input: 12-char rev (or narHash) and day.
fn describe(input: &LockedInput) -> String {
    let id = match (&input.rev, &input.nar_hash) {
        (Some(rev), _) => rev.chars().take(12).collect(),
        (None, Some(hash)) => match hash.split_once('-') {
            Some((algo, digest)) => {
                format!("{algo}-{}", digest.chars().take(12).collect::<String>())
            }
            None => hash.chars().take(12).collect(),
        },
        (None, None) => "unknown".to_owned(),
    };
    match input.last_modified {
        Some(secs) => format!("{id} ({})", format_day(secs)),
        None => id,
    }
}

impl InputChange {
    /// One line for humans, e.g.
    /// `nixpkgs: b5aa0fbd5389 (2026-06-29) → 0123456789ab (2026-07-05)`.
    pub fn render(&self) -> String {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => {
                format!("{}: {} → {}", self.input, describe(old), describe(new))
            }
            (None, Some(new)) => format!("{}: added, {}", self.input, describe(new)),
            (Some(old), None) => format!("{}: removed, was {}", self.input, describe(old)),
            (None, None) => format!("{}: unchanged", self.input),
        }
    }
}

impl fmt::Display for InputChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miette::{GraphicalReportHandler, GraphicalTheme};
    use serde_json::json;

    const NIXPKGS_REV: &str = "b5aa0fbd538984f6e3d201be0005b4463d8b09f8";
    const NIXPKGS_DATE: i64 = 1_782_723_713; // 2026-06-29T09:01:53Z

    const REALISTIC: &str = r#"{
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

    fn path() -> &'static Path {
        Path::new("/srv/runner/flake.lock")
    }

    fn lock_from(value: serde_json::Value) -> FlakeLock {
        let text = serde_json::to_string_pretty(&value).unwrap();
        parse(&text, path()).unwrap()
    }

    fn github(rev: &str, last_modified: i64, hash: &str) -> serde_json::Value {
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
    fn label_text<'a>(err: &LockError, text: &'a str) -> &'a str {
        let label = err.labels().and_then(|mut l| l.next()).expect("a label");
        &text[label.offset()..label.offset() + label.len()]
    }

    fn render(err: &LockError) -> String {
        let mut out = String::new();
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(200)
            .render_report(&mut out, err)
            .unwrap();
        out
    }

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
    fn invalid_json_reports_line_and_column() {
        let text = "{\n  \"nodes\": {\n    \"root\": {\n      \"inputs\": {}\n    },\n  },\n  \"root\": \"root\",\n  \"version\": 7\n}\n";
        // Line 5 ends with a trailing comma (serde_json notices it at the `}`
        // on line 6; the error points at the comma itself).
        let err = parse(text, path()).unwrap_err();
        match &err {
            LockError::Json {
                line,
                column,
                message,
                shape,
                ..
            } => {
                assert_eq!((*line, *column), (5, 6));
                assert_eq!(message, "trailing comma before `}`");
                assert!(!shape);
                let line5 = text.lines().take(4).map(|l| l.len() + 1).sum::<usize>();
                assert_eq!(err.span().unwrap().offset(), line5 + 5);
                assert_eq!(err.path(), path());
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(label_text(&err, text), ",");
        let msg = err.to_string();
        assert_eq!(msg, "/srv/runner/flake.lock:5:6: trailing comma before `}`");
        let help = err.help().unwrap().to_string();
        assert!(help.contains("git checkout -- flake.lock"), "{help}");
        assert!(help.contains("nix flake lock"), "{help}");
        let rendered = render(&err);
        assert!(
            rendered.contains("/srv/runner/flake.lock:5:6"),
            "{rendered}"
        );

        // Comma before `]`, and other syntax errors.
        let text = "{\n\n\n\n  \"nodes\": [1, ]}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(":5:14: trailing comma before `]`"),
            "{err}"
        );
        let text = "{\"version\": 7, \"root\": \"r\" \"nodes\": {}}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string().ends_with(":1:28: expected `,` or `}`"),
            "{err}"
        );
        assert_eq!(label_text(&err, text), "\"");
        let text = "{\n  \"root\": tru }";
        let err = parse(text, path()).unwrap_err();
        assert!(err.to_string().ends_with(":2:14: expected ident"), "{err}");
    }

    #[test]
    fn trailing_comma_on_line_five() {
        for text in [
            "{\n  \"root\": \"root\",\n  \"version\": 7,\n  \"nodes\": {\n    \"root\": {},\n  }\n}",
            "{\n  \"root\": \"root\",\n  \"version\": 7,\n  \"nodes\": {\n    \"root\": {}, }\n}",
        ] {
            let err = parse(text, path()).unwrap_err();
            assert!(
                matches!(&err, LockError::Json { line: 5, column: 15, message, .. } if message.starts_with("trailing comma")),
                "{err:?}"
            );
            assert_eq!(label_text(&err, text), ",");
        }
    }

    #[test]
    fn column_counts_characters() {
        let text = "{\"é\": 1, \"ü\": x}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Json {
                    line: 1,
                    column: 15,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(label_text(&err, text), "x");
    }

    #[test]
    fn json_errors_at_end_of_input_are_clamped() {
        for text in ["", "{", "{\"version\": 7", "\n\n", "{\"a\": \"é"] {
            let err = parse(text, path()).unwrap_err();
            assert!(matches!(err, LockError::Json { .. }), "{err:?}");
            let span = err.span().unwrap();
            assert!(span.offset() + span.len() <= text.len(), "{text:?}");
            render(&err);
        }
    }

    #[test]
    fn wrong_shape_is_a_json_error_with_shape_help() {
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\": []}";
        let err = parse(text, path()).unwrap_err();
        let LockError::Json { line, column, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *column), (1, 41));
        assert_eq!(label_text(&err, text), "[");
        assert!(err
            .to_string()
            .contains("invalid type: sequence, expected a map"));
        assert!(err
            .help()
            .unwrap()
            .to_string()
            .contains("not shaped like a flake.lock"));

        // Compound value without a space before it.
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\":{\"root\":{\"inputs\":[]}}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "[");

        // Scalar of the wrong type: the label ends the value.
        let text = "{\"version\": 7, \"root\": \"root\", \"nodes\": 35}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "5");
        let text = "{\"version\": 7, \"root\": 5, \"nodes\": {}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "5");

        // Input references are buffered (they are untagged), so a bad one is
        // reported just after its value, with a message saying what fits.
        let text =
            "{\"version\": 7, \"root\": \"root\", \"nodes\": {\"root\": {\"inputs\": {\"a\": 1}}}}";
        let err = parse(text, path()).unwrap_err();
        assert_eq!(label_text(&err, text), "}");
        assert_eq!(
            err.labels().unwrap().next().unwrap().offset(),
            text.len() - 4
        );
        assert!(
            err.to_string().contains("follows path (array of strings)"),
            "{err}"
        );

        // Missing field: the label is the end of the object lacking it.
        let text = "{\"version\": 7,\n \"nodes\": {}\n}";
        let err = parse(text, path()).unwrap_err();
        assert!(
            err.to_string().ends_with(":3:1: missing field `root`"),
            "{err}"
        );

        let err = parse("[7]", path()).unwrap_err();
        assert_eq!(label_text(&err, "[7]"), "]");
        assert!(err.to_string().contains("invalid length 1"), "{err}");
        let err = parse("  \"x\"", path()).unwrap_err();
        assert_eq!(label_text(&err, "  \"x\""), "\"");
    }

    #[test]
    fn missing_root_node() {
        let text = REALISTIC.replace("\"root\": \"root\"", "\"root\": \"main\"");
        let err = parse(&text, path()).unwrap_err();
        assert!(matches!(&err, LockError::MissingRoot { root, .. } if root == "main"));
        assert_eq!(label_text(&err, &text), "\"main\"");
    }

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

    #[test]
    fn errors_stay_small() {
        // Keeps `Result<_, LockError>` below clippy's `result_large_err` limit.
        assert!(std::mem::size_of::<LockError>() <= 128);
    }

    #[test]
    fn errors_without_source_text_still_name_a_file() {
        let lock: FlakeLock = serde_json::from_str(REALISTIC).unwrap();
        let err = lock.resolve_root_input("nope").unwrap_err();
        assert!(err.to_string().starts_with("flake.lock: "), "{err}");
        assert_eq!(err.labels().into_iter().flatten().count(), 0);
        render(&err);
        let lock = FlakeLock {
            version: 7,
            root: "root".into(),
            nodes: BTreeMap::new(),
            source: None,
        };
        assert!(matches!(
            lock.resolve_root_input("x"),
            Err(LockError::MissingRoot { .. })
        ));
        assert!(lock.root_inputs().is_empty());
    }

    #[test]
    fn date_tags() {
        assert_eq!(DateTag::from_unix(NIXPKGS_DATE).as_str(), "20260629");
        assert_eq!(DateTag::from_unix(0).to_string(), "19700101");
        assert_eq!(DateTag::from_unix(1_782_691_199).as_str(), "20260628");
        assert_eq!(DateTag::from_unix(1_782_691_200).as_str(), "20260629");
        assert_eq!(DateTag::from_unix(951_782_400).as_str(), "20000229");
        assert_eq!(DateTag::from_unix(951_782_399).as_str(), "20000228");
        // Clamped to four-digit years after the epoch.
        assert_eq!(DateTag::from_unix(-1).as_str(), "19700101");
        assert_eq!(DateTag::from_unix(i64::MIN).as_str(), "19700101");
        assert_eq!(DateTag::from_unix(MAX_DATE_SECS).as_str(), "99991231");
        assert_eq!(DateTag::from_unix(i64::MAX).as_str(), "99991231");
        assert_eq!(format_day(NIXPKGS_DATE), "2026-06-29");
        assert_eq!(format_day(1_782_691_199), "2026-06-28");
        assert_eq!(format_day(i64::MAX), "9999-12-31");
    }

    fn with_nixpkgs(rev: &str, last_modified: i64, hash: &str) -> FlakeLock {
        let mut value: serde_json::Value = serde_json::from_str(REALISTIC).unwrap();
        value["nodes"]["nixpkgs"] = github(rev, last_modified, hash);
        lock_from(value)
    }

    #[test]
    fn diff_reports_changed_inputs_only() {
        let old = parse(REALISTIC, path()).unwrap();
        assert!(diff_inputs(&old, &old).is_empty());

        let new = with_nixpkgs(
            "0123456789abcdef0123456789abcdef01234567",
            1_783_209_600,
            "sha256-new=",
        );
        let changes = diff_inputs(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].input, "nixpkgs");
        assert_eq!(
            changes[0].render(),
            "nixpkgs: b5aa0fbd5389 (2026-06-29) → 0123456789ab (2026-07-05)"
        );
        assert_eq!(changes[0].to_string(), changes[0].render());

        // Same rev and date but a different narHash still counts.
        let rehashed = with_nixpkgs(NIXPKGS_REV, NIXPKGS_DATE, "sha256-other=");
        assert_eq!(diff_inputs(&old, &rehashed).len(), 1);
    }

    #[test]
    fn diff_reports_added_and_removed_inputs_sorted() {
        let old = parse(REALISTIC, path()).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(REALISTIC).unwrap();
        let root_inputs = value["nodes"]["root"]["inputs"].as_object_mut().unwrap();
        root_inputs.remove("flake-utils");
        root_inputs.insert("systems".into(), json!("systems"));
        let new = lock_from(value);

        let changes = diff_inputs(&old, &new);
        let rendered: Vec<String> = changes.iter().map(InputChange::render).collect();
        assert_eq!(
            rendered,
            [
                "flake-utils: removed, was 11707dc2f618 (2024-11-13)",
                "systems: added, da67096a3b9b (2023-04-09)",
            ]
        );
        assert!(changes[0].new.is_none() && changes[1].old.is_none());
    }

    #[test]
    fn render_falls_back_to_nar_hash() {
        let change = InputChange {
            input: "secrets".into(),
            old: Some(LockedInput {
                input: "secrets".into(),
                node: "secrets".into(),
                rev: None,
                last_modified: None,
                nar_hash: Some("sha256-Dq4Lc4VhsNHYuP4NOP0PzSWsjvqwO3RRSGJIXcFVwLc=".into()),
            }),
            new: Some(LockedInput {
                input: "secrets".into(),
                node: "secrets".into(),
                rev: None,
                last_modified: Some(0),
                nar_hash: None,
            }),
        };
        assert_eq!(
            change.render(),
            "secrets: sha256-Dq4Lc4VhsNHY → unknown (1970-01-01)"
        );
    }

    #[test]
    fn locate_finds_nested_members() {
        let text =
            r#"{ "a": [1, {"b": "}"}], "n\u0061me": { "x": "a\"b", "y" : { "z": -1.5e3 } } }"#;
        let loc = locate(text, &["name", "y", "z"]).unwrap();
        assert_eq!(&text[loc.value.offset()..][..loc.value.len()], "-1.5e3");
        assert_eq!(&text[loc.key.offset()..][..loc.key.len()], "\"z\"");
        let loc = locate(text, &["name", "x"]).unwrap();
        assert_eq!(&text[loc.value.offset()..][..loc.value.len()], "\"a\\\"b\"");
        let loc = locate(text, &["a"]).unwrap();
        assert_eq!(
            &text[loc.value.offset()..][..loc.value.len()],
            "[1, {\"b\": \"}\"}]"
        );
        assert_eq!(locate(text, &["name", "q"]), None);
        assert_eq!(locate(text, &["a", "b"]), None);
        assert_eq!(locate(text, &[]), None);
        assert_eq!(locate("{\"a\": ", &["a"]), None);
    }

    #[test]
    fn offsets_and_positions_are_clamped() {
        let text = "ab\ncé\n";
        assert_eq!(next_unread_offset(text, 1, 0), 0);
        assert_eq!(next_unread_offset(text, 1, 1), 1);
        assert_eq!(next_unread_offset(text, 2, 2), 5);
        assert_eq!(next_unread_offset(text, 2, 99), 7);
        assert_eq!(next_unread_offset(text, 9, 1), text.len());
        assert_eq!(next_unread_offset(text, 0, 0), 0);
        assert_eq!(next_unread_offset("", 1, 5), 0);
        assert_eq!(floor_char_boundary(text, 5), 4); // inside `é`
        assert_eq!(floor_char_boundary(text, 99), text.len());
        assert_eq!(offset_to_line_col(text, 0), (1, 1));
        assert_eq!(offset_to_line_col(text, 3), (2, 1));
        assert_eq!(offset_to_line_col(text, 6), (2, 3));
        assert_eq!(offset_to_line_col(text, 7), (3, 1));
        assert_eq!(trailing_comma(b"[1, ]", 4), Some(2));
        assert_eq!(trailing_comma(b"[1 ]", 3), None);
        assert_eq!(trailing_comma(b",", 0), None);
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
