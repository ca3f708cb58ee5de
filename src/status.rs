//! `runnerctl status`: the saved state, stage by stage.

use serde::Serialize;

use crate::cli::Common;
use crate::config;
use crate::state::{self, State};

pub const STAGE_ORDER: &[&str] = &[
    "preflight",
    "update",
    "build",
    "verify",
    "smoke",
    "push",
    "promote",
    "commit",
    "git-push",
];

#[derive(Debug, Serialize)]
pub struct StatusDoc {
    pub schema_version: u32,
    pub state_file: String,
    /// False when no run has saved state yet.
    pub exists: bool,
    pub state: State,
    /// With --max-age: how old the published image is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<crate::freshness::Freshness>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::report::ErrorReport>,
}

impl StatusDoc {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.freshness {
            out.push_str(&format!(
                "Freshness: {} ({}): {}\n\n",
                f.message,
                f.source,
                if f.fresh { "fresh" } else { "TOO OLD" }
            ));
        }
        if !self.exists {
            out.push_str(&format!(
                "No saved state at {}: runnerctl has not run here yet.\n",
                self.state_file
            ));
            return out;
        }
        let s = &self.state;
        // A state dir that only prune or rollback wrote has no run to show.
        if s.command.is_some() || !s.stages.is_empty() {
            out.push_str(&format!(
                "Last run: {} — {} (started {}, finished {})\n\n",
                s.command.map(|c| c.as_str()).unwrap_or("?"),
                s.outcome
                    .map(|o| o.as_str())
                    .unwrap_or("unfinished (interrupted; the next run resumes it)"),
                s.started_at.as_deref().unwrap_or("?"),
                s.finished_at.as_deref().unwrap_or("-"),
            ));
        }
        let mut names: Vec<&String> = s.stages.keys().collect();
        names.sort_by_key(|n| {
            STAGE_ORDER
                .iter()
                .position(|o| o == n)
                .unwrap_or(usize::MAX)
        });
        for name in names {
            let Some(r) = s.stages.get(name) else {
                continue;
            };
            out.push_str(&format!(
                "  {} {:<10} {:<8} {:<22} {}\n",
                r.status.symbol(),
                name,
                r.status.as_str(),
                r.finished_at
                    .as_deref()
                    .or(r.started_at.as_deref())
                    .unwrap_or("-"),
                r.note.as_deref().unwrap_or("")
            ));
            let o = &r.outputs;
            let mut facts = Vec::new();
            if let Some(v) = &o.date {
                facts.push(format!("date {v}"));
            }
            if let Some(v) = &o.lock_hash {
                facts.push(format!("lock sha256 {}", &v[..v.len().min(16)]));
            }
            if let Some(v) = &o.out_path {
                facts.push(format!("out {v}"));
            }
            if let Some(v) = &o.digest {
                facts.push(format!("digest {v}"));
            }
            if !o.tags.is_empty() {
                facts.push(format!("tags {}", o.tags.join(",")));
            }
            for system in &o.systems {
                facts.push(format!("system {system}"));
            }
            if let Some(v) = &o.commit {
                facts.push(format!("commit {v}"));
            }
            for fact in facts {
                out.push_str(&format!("      {fact}\n"));
            }
        }
        if let Some(r) = &s.rollback {
            let target = if r.target == r.digest {
                r.digest.clone()
            } else {
                format!("{} ({})", r.target, r.digest)
            };
            let (are, them) = crate::rollback::agreement(r.tags.len());
            out.push_str(&format!(
                "\n{} {are} rolled back to {target} since {}, in {}.\n  A release or bump without --hold leaves {them} there; `runnerctl promote` moves {them} on.\n",
                r.tags.join(", "),
                r.at,
                r.image,
            ));
        }
        if let Some(p) = &s.prune {
            out.push_str(&format!("\n{}\n", p.summary()));
        }
        if !s.images.is_empty() {
            out.push_str("\nImages pushed:\n");
            for (out_path, image) in &s.images {
                out.push_str(&format!(
                    "  {} {} ← {out_path}\n",
                    image.image, image.digest
                ));
            }
        }
        out
    }
}

pub async fn status(common: &Common) -> miette::Result<StatusDoc> {
    let (_, state_dir) = config::dirs(common)?;
    let path = state_dir.join(state::STATE_FILE);
    let exists = path.exists();
    let state = state::load(&state_dir)?;
    Ok(StatusDoc {
        schema_version: crate::report::SCHEMA_VERSION,
        state_file: path.display().to_string(),
        exists,
        state,
        freshness: None,
        error: None,
    })
}
