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

/// Where one named derivation (a system's image) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Waiting,
    /// Its builder runs: here (`machine` None) or on a remote builder.
    Building {
        machine: Option<String>,
        phase: Option<String>,
    },
    Built,
}

/// A derivation the progress follows by name (e.g. `aarch64-linux`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub drv: String,
    pub label: String,
    pub state: TargetState,
    activity: Option<u64>,
}

impl Target {
    /// `building on ssh-ng://… (buildPhase)`, `waiting`, `built`.
    pub fn describe(&self) -> String {
        match &self.state {
            TargetState::Waiting => "waiting".into(),
            TargetState::Built => "built".into(),
            TargetState::Building { machine, phase } => {
                let mut text = "building".to_string();
                if let Some(machine) = machine {
                    text.push_str(&format!(" on {machine}"));
                }
                if let Some(phase) = phase {
                    text.push_str(&format!(" ({phase})"));
                }
                text
            }
        }
    }
}

/// Build progress derived from a stream of messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildProgress {
    /// The derivations followed by name, one line each.
    pub targets: Vec<Target>,
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
    /// Follow these derivations (`(drv path, label)`) by name.
    pub fn follow(&mut self, targets: &[(String, String)]) {
        self.targets = targets
            .iter()
            .map(|(drv, label)| Target {
                drv: drv.clone(),
                label: label.clone(),
                state: TargetState::Waiting,
                activity: None,
            })
            .collect();
    }

    /// Fold one message into the counters.
    pub fn apply(&mut self, msg: &NixMsg) {
        self.apply_targets(msg);
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

impl BuildProgress {
    fn apply_targets(&mut self, msg: &NixMsg) {
        match msg {
            NixMsg::Start {
                id,
                kind: ACT_BUILD,
                fields,
                ..
            } => {
                let drv = fields.first().and_then(Value::as_str).unwrap_or_default();
                let machine = fields
                    .get(1)
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string);
                if let Some(t) = self.targets.iter_mut().find(|t| t.drv == drv) {
                    t.state = TargetState::Building {
                        machine,
                        phase: None,
                    };
                    t.activity = Some(*id);
                }
            }
            NixMsg::Result {
                id,
                kind: RES_SET_PHASE,
                fields,
            } => {
                if let Some(t) = self.targets.iter_mut().find(|t| t.activity == Some(*id)) {
                    if let TargetState::Building { phase, .. } = &mut t.state {
                        *phase = fields.first().and_then(Value::as_str).map(str::to_string);
                    }
                }
            }
            NixMsg::Stop { id } => {
                if let Some(t) = self.targets.iter_mut().find(|t| t.activity == Some(*id)) {
                    t.state = TargetState::Built;
                    t.activity = None;
                }
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

    #[test]
    fn followed_derivations_go_from_waiting_to_building_to_built() {
        let mut progress = BuildProgress::default();
        progress.follow(&[
            ("/nix/store/a-x.drv".into(), "x86_64-linux".into()),
            ("/nix/store/b-x.drv".into(), "aarch64-linux".into()),
        ]);
        let start = |id, drv: &str, machine: &str| NixMsg::Start {
            id,
            kind: ACT_BUILD,
            level: LVL_INFO,
            text: String::new(),
            parent: 0,
            fields: vec![drv.into(), machine.into()],
        };
        progress.apply(&start(7, "/nix/store/b-x.drv", "ssh-ng://builder"));
        progress.apply(&NixMsg::Result {
            id: 7,
            kind: RES_SET_PHASE,
            fields: vec!["buildPhase".into()],
        });
        assert_eq!(progress.targets[0].describe(), "waiting");
        assert_eq!(
            progress.targets[1].describe(),
            "building on ssh-ng://builder (buildPhase)"
        );
        progress.apply(&start(8, "/nix/store/a-x.drv", ""));
        assert_eq!(progress.targets[0].describe(), "building");
        progress.apply(&NixMsg::Stop { id: 7 });
        assert_eq!(progress.targets[1].state, TargetState::Built);
        assert_eq!(progress.targets[0].describe(), "building");
    }
}
