//! What a prune leaves in the state file: the plan, and each delete before
//! and after it is sent, so a prune killed half-way and run again deletes
//! no more than one uninterrupted prune would (see `prune::run`).

use serde::{Deserialize, Serialize};

use crate::report::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteStatus {
    /// In the plan, not sent yet.
    Planned,
    /// About to be sent (or sent, and the run died before it heard back).
    Sending,
    /// The destination confirmed it.
    Deleted,
    /// Nothing was there any more (an earlier run deleted it).
    Gone,
    /// The destination refused it.
    Failed,
    /// Not sent: a floating or candidate tag moved to it during the prune.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecord {
    pub digest: String,
    pub tags: Vec<String>,
    pub status: DeleteStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// The last prune (a dry run is not recorded: it changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    pub image: String,
    pub keep: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `success` or `failure`; absent while it runs, or after it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Tags kept.
    pub kept: usize,
    pub deletes: Vec<DeleteRecord>,
    /// Blobs an `oci:` layout's garbage collection removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_removed: Option<usize>,
}

impl PruneRecord {
    /// The digests an interrupted prune of `image` with the same rules
    /// planned and did not finish, or None if there is no such prune.
    pub fn unfinished_plan(
        &self,
        image: &str,
        keep: usize,
        keep_days: Option<u32>,
    ) -> Option<Vec<String>> {
        let same = self.image == image && self.keep == keep && self.keep_days == keep_days;
        (same && self.outcome.is_none()).then(|| {
            self.deletes
                .iter()
                .filter(|d| matches!(d.status, DeleteStatus::Planned | DeleteStatus::Sending))
                .map(|d| d.digest.clone())
                .collect()
        })
    }

    /// One line for `runnerctl status`.
    pub fn summary(&self) -> String {
        let done = self
            .deletes
            .iter()
            .filter(|d| matches!(d.status, DeleteStatus::Deleted | DeleteStatus::Gone))
            .count();
        let outcome = self
            .outcome
            .map(Outcome::as_str)
            .unwrap_or("unfinished (interrupted; the next prune finishes its plan)");
        format!(
            "Last prune of {}: {outcome} (started {}): {done} of {} planned digests deleted, {} tags kept (--keep {}{})",
            self.image,
            self.started_at,
            self.deletes.len(),
            self.kept,
            self.keep,
            self.keep_days
                .map(|d| format!(", --keep-days {d}"))
                .unwrap_or_default()
        )
    }
}
