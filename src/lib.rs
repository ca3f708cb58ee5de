//! runnerctl: keeps a Nix-built Forgejo runner image fresh.
//!
//! The pipeline (`pipeline`) runs stages (`stage`) that call external tools
//! through one runner (`tool`), save what they did (`state`) and send
//! progress events (`progress`).

// Diagnostics carry their source text and spans; boxing every error would
// only move that cost around.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diagnostic;
pub mod digest;
pub mod flake_lock;
pub mod freshness;
pub mod image;
pub mod local;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod report;
pub mod rollback;
pub mod stage;
pub mod state;
pub mod status;
pub mod store;
pub mod system;
pub mod tool;
