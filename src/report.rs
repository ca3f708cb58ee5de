//! The run report: the `--json` document and the human summary.

use serde::{Deserialize, Serialize};

use crate::progress::format_duration;
use crate::state::StageStatus;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    pub status: StageStatus,
    /// What the stage did or found, or why it was skipped.
    pub note: String,
    pub duration_ms: u64,
    /// In a dry run: the exact commands the stage would run.
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub message: String,
    pub help: Option<String>,
}

/// How a command that runs once (rollback, prune) ended, for its document:
/// its outcome and error, and the error to print.
pub fn conclude(
    result: miette::Result<()>,
    dry_run: bool,
    outcome: &mut Outcome,
    error: &mut Option<ErrorReport>,
) -> Option<miette::Report> {
    match result {
        Ok(()) => {
            *outcome = if dry_run {
                Outcome::DryRun
            } else {
                Outcome::Success
            };
            None
        }
        Err(err) => {
            *outcome = Outcome::Failure;
            *error = Some(ErrorReport::of(&err));
            Some(err)
        }
    }
}

impl ErrorReport {
    /// What an error says, and what to do, for a JSON document.
    pub fn of(err: &miette::Report) -> ErrorReport {
        ErrorReport {
            message: crate::diagnostic::message(err),
            help: err.help().map(|h| h.to_string()),
        }
    }
}

/// How a run ended (`outcome` in the report and the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    /// bump: nothing new upstream, and the lock is on the remote.
    UpToDate,
    DryRun,
    Failure,
    /// A signal stopped it (the state only: the report says failure).
    Interrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpToDate => "up-to-date",
            Outcome::DryRun => "dry-run",
            Outcome::Failure => "failure",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// A recorded outcome after which nothing is left to resume.
    pub fn finished(recorded: Option<Outcome>) -> bool {
        matches!(recorded, Some(Outcome::Success | Outcome::UpToDate))
    }
}

/// One system's image in a multi-system run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemReport {
    pub system: String,
    pub drv_path: String,
    pub out_path: String,
    /// Its manifest's digest, once pushed.
    pub digest: Option<String>,
}

/// One document per run. Every field is always present (null or empty when
/// unknown), so success, no-op and failure have the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub command: String,
    /// `success`, `up-to-date`, `dry-run` or `failure`.
    pub outcome: Outcome,
    pub dry_run: bool,
    pub flake: String,
    pub image: String,
    pub date: Option<String>,
    pub tags: Vec<String>,
    pub digest: Option<String>,
    pub drv_path: Option<String>,
    pub out_path: Option<String>,
    /// With several `--system`s: each system's image (`digest` is then
    /// the index's); empty otherwise.
    pub systems: Vec<SystemReport>,
    pub commit: Option<String>,
    pub commit_message: Option<String>,
    pub changes: Vec<String>,
    pub stages: Vec<StageReport>,
    pub duration_ms: u64,
    pub state_file: String,
    pub log_file: String,
    pub error: Option<ErrorReport>,
}

impl Report {
    pub fn new(command: &str, dry_run: bool) -> Self {
        Report {
            schema_version: SCHEMA_VERSION,
            command: command.to_string(),
            outcome: Outcome::Failure,
            dry_run,
            flake: String::new(),
            image: String::new(),
            date: None,
            tags: Vec::new(),
            digest: None,
            drv_path: None,
            out_path: None,
            systems: Vec::new(),
            commit: None,
            commit_message: None,
            changes: Vec::new(),
            stages: Vec::new(),
            duration_ms: 0,
            state_file: String::new(),
            log_file: String::new(),
            error: None,
        }
    }

    /// The human summary: the plan in a dry run, else a table of stages.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            out.push_str(&format!(
                "Plan for `runnerctl {}` (dry run: nothing is changed)\n",
                self.command
            ));
        } else {
            out.push_str(&format!("runnerctl {}: {}\n", self.command, self.outcome));
        }
        out.push('\n');
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(8);
        for stage in &self.stages {
            out.push_str(&format!(
                "  {} {:<width$}  {:<8} {:>6}  {}\n",
                stage.status.symbol(),
                stage.name,
                stage.status.as_str(),
                if self.dry_run {
                    String::new()
                } else {
                    format_duration(std::time::Duration::from_millis(stage.duration_ms))
                },
                stage.note,
            ));
            for command in &stage.commands {
                out.push_str(&format!("      $ {command}\n"));
            }
        }
        out.push('\n');
        let mut facts: Vec<(&str, String)> = Vec::new();
        if let Some(date) = &self.date {
            facts.push(("date tag", date.clone()));
        }
        facts.push(("image", self.image.clone()));
        if !self.tags.is_empty() {
            facts.push(("tags", self.tags.join(", ")));
        }
        if let Some(out_path) = &self.out_path {
            facts.push(("out path", out_path.clone()));
        }
        if let Some(digest) = &self.digest {
            facts.push(("digest", digest.clone()));
        }
        if let Some(msg) = &self.commit_message {
            facts.push(("commit message", msg.clone()));
        }
        if let Some(commit) = &self.commit {
            facts.push(("commit", commit.clone()));
        }
        for change in &self.changes {
            facts.push(("input change", change.clone()));
        }
        for (key, value) in facts {
            out.push_str(&format!("  {key:<15} {value}\n"));
        }
        if !self.dry_run {
            out.push_str(&format!(
                "  {:<15} {}\n",
                "took",
                format_duration(std::time::Duration::from_millis(self.duration_ms))
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the schema: the exact set of top-level keys and their order.
    #[test]
    fn schema_is_pinned() {
        let report = Report::new("bump", false);
        let value = serde_json::to_value(&report).expect("serialize");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "schema_version",
                "command",
                "outcome",
                "dry_run",
                "flake",
                "image",
                "date",
                "tags",
                "digest",
                "drv_path",
                "out_path",
                "systems",
                "commit",
                "commit_message",
                "changes",
                "stages",
                "duration_ms",
                "state_file",
                "log_file",
                "error"
            ]
        );
        assert_eq!(value["schema_version"], 1);
        let stage = StageReport {
            name: "build".into(),
            status: StageStatus::Skipped,
            note: "already in the store".into(),
            duration_ms: 5,
            commands: vec![],
        };
        let v = serde_json::to_value(&stage).expect("stage");
        assert_eq!(v["status"], "skipped");
        let keys: Vec<&str> = v
            .as_object()
            .expect("obj")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["name", "status", "note", "duration_ms", "commands"]);
    }
}
