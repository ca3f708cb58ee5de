//! The stages. Each has a name, a check for "already done", a plan (the
//! commands it would run) and an action, and returns what it produced; a
//! later stage takes what it needs as an argument. The pipeline runs them
//! in order.

pub mod build;
pub mod commit;
pub mod git_push;
pub mod preflight;
pub mod promote;
pub mod push;
pub mod smoke;
pub mod tags;
pub mod target;
pub mod update;
pub mod verify;

use crate::config::Config;
use crate::progress::Reporter;
use crate::report::Report;
use crate::state::{self, Outputs, State};
use crate::tool::Runner;

/// What every stage of one run shares: the options, the command runner,
/// the saved state and the report. What a stage produces is not here: it
/// is the stage's return value.
pub struct Ctx {
    pub cfg: Config,
    pub runner: Runner,
    pub state: State,
    pub report: Report,
}

impl Ctx {
    pub fn reporter(&self) -> &Reporter {
        self.runner.reporter()
    }

    /// Write the state now (stages call this before a step whose effect a
    /// kill could otherwise leave unrecorded).
    pub fn save(&self) -> miette::Result<()> {
        if !self.cfg.dry_run {
            state::save(&self.cfg.state_dir, &self.state)?;
        }
        Ok(())
    }
}

/// What a stage found when it looked at the world.
#[allow(clippy::large_enum_variant)] // one per stage run
pub enum Check<T, F> {
    /// Nothing to do: the work is already done (what was found).
    Done(Done<T>),
    /// Work to do: why, and what the look found that the work needs.
    Todo(String, F),
}

/// What a stage did (or, in a dry run, would do): a note, what the state
/// records, and what it produced for the stages after it.
pub struct Done<T> {
    pub note: String,
    pub outputs: Outputs,
    pub value: T,
}

impl<T> Done<T> {
    pub fn new(note: impl Into<String>, value: T) -> Self {
        Done {
            note: note.into(),
            outputs: Outputs::default(),
            value,
        }
    }

    pub fn with(mut self, outputs: Outputs) -> Self {
        self.outputs = outputs;
        self
    }
}

#[allow(async_fn_in_trait)] // used only inside this crate, on one thread
pub trait Stage {
    /// What the stage hands on to the stages after it.
    type Output;
    /// What its check found that the work needs.
    type Found;

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
    async fn check(&mut self, cx: &mut Ctx) -> miette::Result<Check<Self::Output, Self::Found>>;

    /// The commands the stage would run, for the dry-run plan.
    fn plan(&self, cx: &Ctx, found: &Self::Found) -> Vec<String>;

    /// Do the work.
    async fn run(&mut self, cx: &mut Ctx, found: Self::Found)
        -> miette::Result<Done<Self::Output>>;

    /// In a dry run: work out what can be known without changing anything.
    async fn dry_run(
        &mut self,
        cx: &mut Ctx,
        found: Self::Found,
    ) -> miette::Result<Done<Self::Output>>;
}
