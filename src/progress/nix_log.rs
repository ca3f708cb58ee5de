//! Nix's `--log-format internal-json`: `@nix {…}` lines on stderr.
//!
//! Only the parts runnerctl uses are modelled: messages, build log lines,
//! phases, and the progress counters of the top-level "builds" activity.

use serde_json::Value;

/// Activity types (`type` of a `start` action).
pub const ACT_FILE_TRANSFER: u64 = 101;
pub const ACT_REALISE: u64 = 102;
pub const ACT_BUILDS: u64 = 104;
pub const ACT_BUILD: u64 = 105;
pub const ACT_COPY_PATHS: u64 = 103;
pub const ACT_SUBSTITUTE: u64 = 108;

/// Verbosity levels: error 0, warn 1, notice 2, info 3, talkative 4 …
pub const LVL_WARN: u64 = 1;
pub const LVL_INFO: u64 = 3;

/// Result types (`type` of a `result` action).
pub const RES_BUILD_LOG_LINE: u64 = 101;
pub const RES_SET_PHASE: u64 = 104;
pub const RES_PROGRESS: u64 = 105;
pub const RES_SET_EXPECTED: u64 = 106;

#[derive(Debug, Clone, PartialEq)]
pub enum NixMsg {
    /// A plain message (`action: msg`).
    Msg { level: u64, text: String },
    /// An activity started.
    Start {
        id: u64,
        kind: u64,
        level: u64,
        text: String,
        parent: u64,
        fields: Vec<Value>,
    },
    /// An activity stopped.
    Stop { id: u64 },
    /// A result for an activity.
    Result {
        id: u64,
        kind: u64,
        fields: Vec<Value>,
    },
}

impl NixMsg {
    /// A message at warning level (e.g. "Git tree '…' is dirty").
    pub fn is_warning(&self) -> bool {
        matches!(self, NixMsg::Msg { level, .. } if *level == LVL_WARN)
    }

    /// The human text of this message, if it has one worth keeping in a log
    /// (Nix's default verbosity: errors, warnings, notices and info).
    pub fn text(&self) -> Option<String> {
        match self {
            NixMsg::Msg { text, level } if *level <= LVL_INFO => Some(strip_ansi(text)),
            NixMsg::Start { text, level, .. } if !text.is_empty() && *level <= LVL_INFO => {
                Some(strip_ansi(text))
            }
            NixMsg::Result { kind, fields, .. } if *kind == RES_BUILD_LOG_LINE => {
                fields.first().and_then(Value::as_str).map(strip_ansi)
            }
            NixMsg::Result { kind, fields, .. } if *kind == RES_SET_PHASE => fields
                .first()
                .and_then(Value::as_str)
                .map(|p| format!("phase: {p}")),
            _ => None,
        }
    }
}

/// Parse one stderr line. `None` if it is not an `@nix` line.
pub fn parse_line(line: &str) -> Option<NixMsg> {
    let json = line.strip_prefix("@nix ")?;
    let value: Value = serde_json::from_str(json).ok()?;
    let u = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    let s = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let fields = || {
        value
            .get("fields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match value.get("action").and_then(Value::as_str)? {
        "msg" => Some(NixMsg::Msg {
            level: u("level"),
            text: s("msg"),
        }),
        "start" => Some(NixMsg::Start {
            id: u("id"),
            kind: u("type"),
            level: u("level"),
            text: s("text"),
            parent: u("parent"),
            fields: fields(),
        }),
        "stop" => Some(NixMsg::Stop { id: u("id") }),
        "result" => Some(NixMsg::Result {
            id: u("id"),
            kind: u("type"),
            fields: fields(),
        }),
        _ => None,
    }
}

/// Remove ANSI escape sequences (Nix colours its messages).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Build progress derived from a stream of messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildProgress {
    /// Derivations built so far.
    pub done: u64,
    /// Derivations expected to be built.
    pub expected: u64,
    /// Downloads finished / expected (substitutions and file transfers).
    pub downloads_done: u64,
    pub downloads_expected: u64,
    /// The phase of the most recently active builder, e.g. `buildPhase`.
    pub phase: Option<String>,
    /// The derivation currently building.
    pub current: Option<String>,
    builds_id: Option<u64>,
    copy_id: Option<u64>,
}

impl BuildProgress {
    /// Fold one message into the counters.
    pub fn apply(&mut self, msg: &NixMsg) {
        match msg {
            NixMsg::Start {
                id, kind, fields, ..
            } => match *kind {
                ACT_BUILDS => self.builds_id = Some(*id),
                ACT_COPY_PATHS => self.copy_id = Some(*id),
                ACT_BUILD => {
                    self.current = fields
                        .first()
                        .and_then(Value::as_str)
                        .map(|drv| short_drv_name(drv).to_string());
                    self.phase = None;
                }
                _ => {}
            },
            NixMsg::Result {
                id, kind, fields, ..
            } => {
                let n = |i: usize| fields.get(i).and_then(Value::as_u64).unwrap_or(0);
                match *kind {
                    RES_PROGRESS if Some(*id) == self.builds_id => {
                        self.done = n(0);
                        self.expected = self.expected.max(n(1));
                    }
                    RES_PROGRESS if Some(*id) == self.copy_id => {
                        self.downloads_done = n(0);
                        self.downloads_expected = self.downloads_expected.max(n(1));
                    }
                    RES_SET_EXPECTED => {
                        let what = n(0);
                        if what == ACT_BUILD {
                            self.expected = self.expected.max(n(1));
                        } else if what == ACT_SUBSTITUTE || what == ACT_COPY_PATHS {
                            self.downloads_expected = self.downloads_expected.max(n(1));
                        }
                    }
                    RES_SET_PHASE => {
                        self.phase = fields.first().and_then(Value::as_str).map(str::to_string);
                    }
                    _ => {}
                }
            }
            NixMsg::Stop { id } if Some(*id) == self.builds_id => {
                self.done = self.done.max(self.expected);
            }
            _ => {}
        }
    }
}

/// `/nix/store/abc…-name.drv` → `name`.
pub fn short_drv_name(drv: &str) -> &str {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 => name,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_ignores_other_lines() {
        assert_eq!(parse_line("warning: Git tree is dirty"), None);
        assert_eq!(
            parse_line(
                r#"@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m boom"}"#
            ),
            Some(NixMsg::Msg {
                level: 0,
                text: "\u{1b}[31;1merror:\u{1b}[0m boom".into()
            })
        );
        let msg = parse_line(
            r#"@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m boom"}"#,
        );
        assert_eq!(msg.and_then(|m| m.text()).as_deref(), Some("error: boom"));
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short_drv_name("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-image.tar.drv"),
            "nixos-image.tar"
        );
        assert_eq!(short_drv_name("odd"), "odd");
    }
}
