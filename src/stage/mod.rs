//! The stages. Each has a name, a check for "already done", a plan (the
//! commands it would run) and an action. The pipeline runs them in order.

pub mod build;
pub mod commit;
pub mod git_push;
pub mod preflight;
pub mod promote;
pub mod push;
pub mod smoke;
pub mod tags;
pub mod update;
pub mod verify;

use crate::pipeline::Ctx;
use crate::state::Outputs;

/// What a stage found when it looked at the world.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per stage run
pub enum Check {
    /// Nothing to do: the work is already done (what was found).
    Done(Done),
    /// Work to do (why).
    Todo(String),
}

/// What a stage did.
#[derive(Debug, Clone, Default)]
pub struct Done {
    pub note: String,
    pub outputs: Outputs,
}

impl Done {
    pub fn new(note: impl Into<String>) -> Self {
        Done {
            note: note.into(),
            outputs: Outputs::default(),
        }
    }

    pub fn with(mut self, outputs: Outputs) -> Self {
        self.outputs = outputs;
        self
    }
}

#[allow(async_fn_in_trait)] // used only inside this crate, on one thread
pub trait Stage {
    fn name(&self) -> &'static str;

    /// Changes nothing, so it runs in a dry run too.
    fn read_only(&self) -> bool {
        false
    }

    /// A hash of what this stage's result depends on, if it is known before
    /// the stage runs.
    fn fingerprint(&self, _cx: &Ctx) -> Option<String> {
        None
    }

    /// Look at the world (read-only): is the work already done?
    async fn check(&self, cx: &mut Ctx) -> miette::Result<Check>;

    /// The commands the stage would run, for the dry-run plan.
    fn plan(&self, cx: &Ctx) -> Vec<String>;

    /// Do the work.
    async fn run(&self, cx: &mut Ctx) -> miette::Result<Done>;

    /// In a dry run: work out what can be known without changing anything.
    async fn dry_run(&self, _cx: &mut Ctx) -> miette::Result<String> {
        Ok("would run".to_string())
    }
}
