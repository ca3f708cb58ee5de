//! `runnerctl demo`: a real bump, end to end, in a throwaway workspace.

use miette::miette;

use crate::cli::DemoArgs;

pub async fn demo(_args: DemoArgs) -> miette::Result<()> {
    Err(miette!("demo is being written"))
}
