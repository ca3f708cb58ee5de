//! The human summary of a prune: every delete and keep with its reason
//! (at most [`MAX_LINES`] of each; `--json` has them all).

use super::PruneReport;

/// Lines listed per section before "… and N more".
pub const MAX_LINES: usize = 200;

fn short(digest: &str) -> &str {
    let end = digest.len().min("sha256:".len() + 12);
    digest.get(..end).unwrap_or(digest)
}

impl PruneReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rules = format!(
            "--keep {}{}",
            self.keep,
            self.keep_days
                .map(|d| format!(" --keep-days {d}"))
                .unwrap_or_default()
        );
        if self.dry_run {
            out.push_str(&format!(
                "Plan for `runnerctl prune {rules}` on {} (dry run: nothing is changed)\n",
                self.image
            ));
        } else {
            out.push_str(&format!(
                "runnerctl prune {rules} on {}: {}\n",
                self.image,
                self.outcome.as_str()
            ));
        }
        let listed = if self.pages > 0 {
            format!(
                "{} tags listed in {} page{}",
                self.tags_listed,
                self.pages,
                if self.pages == 1 { "" } else { "s" }
            )
        } else {
            format!("{} tags listed", self.tags_listed)
        };
        out.push_str(&format!("{listed}\n\n"));
        let verb = if self.dry_run {
            "Would delete"
        } else if self.error.is_some() {
            "Planned to delete (stopped by the error below)"
        } else {
            "Deleted"
        };
        out.push_str(&format!(
            "{verb} {} digests ({} tags):\n",
            self.deletes.len(),
            self.deletes.iter().map(|d| d.tags.len()).sum::<usize>()
        ));
        for d in self.deletes.iter().take(MAX_LINES) {
            out.push_str(&format!(
                "  - {} ({}): {}\n",
                d.digest,
                d.tags.join(", "),
                d.reason
            ));
        }
        if self.deletes.len() > MAX_LINES {
            out.push_str(&format!(
                "  … and {} more (see --json)\n",
                self.deletes.len() - MAX_LINES
            ));
        }
        out.push_str(&format!("Keep {} tags:\n", self.keeps.len()));
        for k in self.keeps.iter().take(MAX_LINES) {
            let tag = if k.tag.is_empty() {
                "(untagged)"
            } else {
                k.tag.as_str()
            };
            out.push_str(&format!("  = {tag} → {}: {}\n", short(&k.digest), k.reason));
        }
        if self.keeps.len() > MAX_LINES {
            out.push_str(&format!(
                "  … and {} more (see --json)\n",
                self.keeps.len() - MAX_LINES
            ));
        }
        if !self.dry_run && self.error.is_none() {
            let gone = self.deletes.len().saturating_sub(self.deleted);
            out.push_str(&format!("\n{} deleted now", self.deleted));
            if gone > 0 {
                out.push_str(&format!(
                    ", {gone} gone already (an interrupted prune sent them)"
                ));
            }
            out.push('.');
            if let Some(n) = self.blobs_removed {
                out.push_str(&format!(" Removed {n} unreferenced blobs."));
            }
            out.push('\n');
        }
        if !self.note.is_empty() {
            out.push_str(&format!("Note: {}.\n", self.note));
        }
        out
    }
}
