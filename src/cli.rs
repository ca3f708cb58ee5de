//! Command-line interface: clap definitions (flags + env).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::progress::ProgressMode;

pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RUNNERCTL_GIT_REV"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "runnerctl",
    version = LONG_VERSION,
    about = "Keep a Nix-built Forgejo runner image fresh: update → build → verify → push → commit → git push",
    long_about = "runnerctl updates the image flake's inputs, builds the image with Nix, checks it, \
pushes it with skopeo, commits flake.lock and pushes the commit. Every stage checks whether its \
work is already done, saves what it did, and a failed or killed run resumes where it stopped.",
    after_help = "Examples:\n  runnerctl bump --dry-run\n  runnerctl bump --image docker://registry.example.org/infra/runners/nixos\n  runnerctl release --json\n  runnerctl status\n  runnerctl demo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Update flake inputs, build, verify and push the image, commit flake.lock and push the commit.
    #[command(
        after_help = "Examples:\n  runnerctl bump\n  runnerctl bump --dry-run\n  runnerctl bump --no-git-push --image oci:/tmp/nixos-oci\n  RUNNERCTL_REGISTRY_USER=ci RUNNERCTL_REGISTRY_PASSWORD=… runnerctl bump --image docker://registry.example.org/infra/runners/nixos"
    )]
    Bump(RunArgs),
    /// Build, verify and push the image for flake.lock as committed (what CI runs on main).
    #[command(after_help = "Examples:\n  runnerctl release\n  runnerctl release --dry-run --json")]
    Release(RunArgs),
    /// Move the floating tags to the image `release --hold` pushed for flake.lock as committed (manifest PUTs only; nothing is built or uploaded).
    #[command(
        after_help = "Examples:\n  runnerctl promote\n  runnerctl promote --dry-run\n  runnerctl promote --image docker://registry.example.org/infra/runners/nixos --json"
    )]
    Promote(RunArgs),
    /// Move floating tags back to an earlier published image (manifest PUTs of its own bytes; needs no flake).
    #[command(
        after_help = "TARGET is a tag (a date tag such as 20260629, nix-<hash>, any tag) or a sha256: digest in the repository.\n\nExamples:\n  runnerctl rollback 20260629 --dry-run\n  runnerctl rollback 20260629 --image docker://registry.example.org/infra/runners/nixos\n  runnerctl rollback sha256:… --tag latest"
    )]
    Rollback(RollbackArgs),
    /// Delete old date tags and the content tags left with them; never what a floating, candidate, kept or unknown tag points to.
    #[command(
        after_help = "Deletes by digest (DELETE /v2/<name>/manifests/<digest>); the registry's garbage collection frees the blobs.\n\nExamples:\n  runnerctl prune --keep 30 --dry-run\n  runnerctl prune --keep 30 --keep-days 90 --image docker://registry.example.org/infra/runners/nixos\n  runnerctl prune --keep 5 --image oci:/srv/oci/nixos --json"
    )]
    Prune(PruneArgs),
    /// Show the saved state, stage by stage; with --max-age, fail when the published image is too old.
    #[command(
        after_help = "Examples:\n  runnerctl status\n  runnerctl status --json\n  runnerctl status --max-age 14 --image docker://registry.example.org/infra/runners/nixos"
    )]
    Status(StatusArgs),
    /// Run a real bump end to end in a throwaway workspace (stand-in nixpkgs, fixture flake, local OCI layout, bare remote).
    Demo(DemoArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  runnerctl completions bash > /etc/bash_completion.d/runnerctl"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The flake directory (a git checkout).
    #[arg(
        short = 'C',
        long = "flake",
        env = "RUNNERCTL_FLAKE",
        value_name = "DIR",
        default_value = "."
    )]
    pub flake: PathBuf,

    /// Where runnerctl keeps its state, logs and run lock [default: DIR/.runnerctl].
    #[arg(long, env = "RUNNERCTL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Print one JSON document on stdout and nothing else there.
    #[arg(long)]
    pub json: bool,

    /// Progress display: live bars on a terminal, plain lines otherwise.
    #[arg(long, value_enum, env = "RUNNERCTL_PROGRESS", default_value = "auto")]
    pub progress: ProgressMode,

    /// Only print errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also stream the output of nix, skopeo and git.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,

    /// The flake output to build: DIR#NAME.
    #[arg(
        long,
        env = "RUNNERCTL_ATTR",
        value_name = "NAME",
        default_value = "nixos"
    )]
    pub attr: String,

    /// Build for these systems (repeatable; RUNNERCTL_SYSTEMS comma-separated): DIR#packages.SYSTEM.NAME each, pushed under one OCI image index [default: this machine's system only, DIR#NAME].
    #[arg(
        long = "system",
        env = "RUNNERCTL_SYSTEMS",
        value_delimiter = ',',
        value_name = "SYSTEM"
    )]
    pub systems: Vec<String>,

    /// The root input whose lastModified gives {date}.
    #[arg(
        long,
        env = "RUNNERCTL_INPUT",
        value_name = "NAME",
        default_value = "nixpkgs"
    )]
    pub input: String,

    /// Update only these inputs (repeatable) [default: all inputs, like `nix flake update`].
    #[arg(
        long = "update-input",
        env = "RUNNERCTL_UPDATE_INPUTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub update_inputs: Vec<String>,

    #[command(flatten)]
    pub destination: DestinationArgs,

    /// Tags to write (repeatable); {date} is the YYYYMMDD of the input's lastModified.
    #[arg(
        long = "tag",
        env = "RUNNERCTL_TAGS",
        value_delimiter = ',',
        value_name = "TAG"
    )]
    pub tags: Vec<String>,

    /// The containers trust policy for skopeo [default: runnerctl writes its own, STATE_DIR/policy.json].
    #[arg(long, env = "RUNNERCTL_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Commit subject template; {date} is the date tag.
    #[arg(
        long,
        env = "RUNNERCTL_COMMIT_MESSAGE",
        value_name = "TMPL",
        default_value = "chore(ci): Update nixos to {date}"
    )]
    pub commit_message: String,

    /// Commit locally, but do not push the commit.
    #[arg(long, env = "RUNNERCTL_NO_GIT_PUSH", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_git_push: bool,

    /// Build even with uncommitted changes to tracked files in the flake
    /// (not flake.lock): the image then is not what is committed.
    #[arg(long, env = "RUNNERCTL_ALLOW_DIRTY", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_dirty: bool,

    /// Do not write the content-addressed `nix-<hash>` tag.
    #[arg(long, env = "RUNNERCTL_NO_NIX_TAG", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_nix_tag: bool,

    /// How new layers are compressed: gzip (every engine pulls it) or zstd (smaller and faster; Docker ≥ 23, containerd ≥ 1.5, podman).
    #[arg(
        long,
        value_enum,
        env = "RUNNERCTL_COMPRESSION",
        value_name = "ALGO",
        default_value = "gzip"
    )]
    pub compression: crate::image::codec::Compression,

    /// Compression level for new layers: gzip 1–12 (default 2), zstd 1–19 (default 3).
    #[arg(long, env = "RUNNERCTL_COMPRESSION_LEVEL", value_name = "N")]
    pub compression_level: Option<u32>,

    /// Skip the verify stage.
    #[arg(long, env = "RUNNERCTL_NO_VERIFY", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_verify: bool,

    /// Extra paths the image must contain (repeatable), e.g. bin/jq.
    #[arg(
        long = "verify-require",
        env = "RUNNERCTL_VERIFY_REQUIRE",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub verify_require: Vec<String>,

    /// Replace the default required paths instead of adding to them.
    #[arg(long, env = "RUNNERCTL_VERIFY_NO_DEFAULTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub verify_no_defaults: bool,

    /// Run the image as a job container before the push: auto (when podman or docker is on PATH), always, never.
    #[arg(
        long,
        value_enum,
        env = "RUNNERCTL_SMOKE",
        value_name = "WHEN",
        default_value = "auto"
    )]
    pub smoke: SmokeMode,

    /// Extra smoke checks (repeatable; one per line in RUNNERCTL_SMOKE_CMDS), each run with `bash -c` in the container.
    #[arg(
        long = "smoke-cmd",
        env = "RUNNERCTL_SMOKE_CMDS",
        value_delimiter = '\n',
        value_name = "CMD"
    )]
    pub smoke_cmds: Vec<String>,

    /// Replace the default smoke checks instead of adding to them.
    #[arg(long, env = "RUNNERCTL_SMOKE_NO_DEFAULTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub smoke_no_defaults: bool,

    /// Push only the content tag `nix-<hash>` and the candidate tag; leave the floating tags for `runnerctl promote`.
    #[arg(long, env = "RUNNERCTL_HOLD", value_parser = clap::builder::BoolishValueParser::new())]
    pub hold: bool,

    /// The tag a held image is pushed under.
    #[arg(
        long,
        env = "RUNNERCTL_CANDIDATE_TAG",
        value_name = "TAG",
        default_value = "candidate"
    )]
    pub candidate_tag: String,

    /// Show the plan and change nothing: flake.lock, git, remote and registry stay as they are.
    #[arg(long)]
    pub dry_run: bool,

    /// Discard the saved state first (after a corrupt or foreign state file).
    #[arg(long)]
    pub reset_state: bool,
}

/// Where images go, and how the registry is reached (bump, release,
/// promote and rollback share these).
#[derive(Debug, Clone, Args)]
pub struct DestinationArgs {
    /// Destination: docker://HOST[:PORT]/PATH or oci:DIR [default: oci:STATE_DIR/oci].
    #[arg(long, env = "RUNNERCTL_IMAGE", value_name = "REF")]
    pub image: Option<String>,

    /// Verify TLS certificates of the registry (false for a plain-HTTP registry).
    #[arg(long, env = "RUNNERCTL_TLS_VERIFY", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_verify: bool,

    /// Seconds the registry may take to answer one request (skopeo's --command-timeout; a copy gets more for its upload).
    #[arg(
        long,
        env = "RUNNERCTL_REGISTRY_TIMEOUT",
        value_name = "SECS",
        default_value = "30",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub registry_timeout: u64,
}

/// When the smoke stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmokeMode {
    /// When podman or docker is on PATH; otherwise skip with a note.
    Auto,
    /// Always; fail when no engine is on PATH.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The image to roll back to: a tag or a sha256: digest.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Tags to move (repeatable) [default: latest, unstable].
    #[arg(long = "tag", value_delimiter = ',', value_name = "TAG")]
    pub tags: Vec<String>,

    /// The systems the tags should serve (repeatable; RUNNERCTL_SYSTEMS): a target that lacks one is still rolled back to, with a warning naming it.
    #[arg(
        long = "system",
        env = "RUNNERCTL_SYSTEMS",
        value_delimiter = ',',
        value_name = "SYSTEM"
    )]
    pub systems: Vec<String>,

    #[command(flatten)]
    pub local: LocalArgs,

    /// Show which tag would move from which digest to which, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Keep the newest N date tags (YYYYMMDD).
    #[arg(long, env = "RUNNERCTL_PRUNE_KEEP", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keep: u32,

    /// Also keep every date tag at most D days old (a tag is kept if either rule keeps it).
    #[arg(long, env = "RUNNERCTL_PRUNE_KEEP_DAYS", value_name = "D", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub keep_days: Option<u32>,

    /// Floating tags, whose images are never deleted (repeatable) [default: latest, unstable].
    #[arg(long = "tag", value_delimiter = ',', value_name = "TAG")]
    pub tags: Vec<String>,

    /// The tag `release --hold` pushes; its image is never deleted.
    #[arg(
        long,
        env = "RUNNERCTL_CANDIDATE_TAG",
        value_name = "TAG",
        default_value = "candidate"
    )]
    pub candidate_tag: String,

    #[command(flatten)]
    pub local: LocalArgs,

    /// Print every tag and digest that would be deleted or kept, and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the commands that run without a flake pipeline (rollback, prune)
/// share: where their state is, the destination, and how they print.
#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// A flake checkout whose state dir (DIR/.runnerctl) and default destination to use.
    #[arg(short = 'C', long = "flake", value_name = "DIR")]
    pub flake: Option<PathBuf>,

    /// Where runnerctl keeps its state [default: DIR/.runnerctl with -C, else $XDG_STATE_HOME/runnerctl].
    #[arg(long, env = "RUNNERCTL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(flatten)]
    pub destination: DestinationArgs,

    /// Print one JSON document on stdout and nothing else there.
    #[arg(long)]
    pub json: bool,

    /// Only print errors.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,

    /// Exit 1 when the published image is older than DAYS (from its config with --image, else from the last push's date tag).
    #[arg(long, env = "RUNNERCTL_MAX_AGE", value_name = "DAYS", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub max_age: Option<u32>,

    /// The floating tag whose image --max-age checks [default: latest].
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// The root input the image is built from, for the message.
    #[arg(
        long,
        env = "RUNNERCTL_INPUT",
        value_name = "NAME",
        default_value = "nixpkgs"
    )]
    pub input: String,

    /// With --max-age: read the date from this image (docker://HOST[:PORT]/PATH or oci:DIR) instead of the state's last push.
    #[arg(long, env = "RUNNERCTL_IMAGE", value_name = "REF")]
    pub image: Option<String>,

    /// Verify TLS certificates of the registry (false for a plain-HTTP registry).
    #[arg(long, env = "RUNNERCTL_TLS_VERIFY", value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub tls_verify: bool,

    /// Seconds the registry may take to answer one request.
    #[arg(
        long,
        env = "RUNNERCTL_REGISTRY_TIMEOUT",
        value_name = "SECS",
        default_value = "30",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub registry_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where to make the throwaway workspace [default: a new temp dir, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep the workspace (printed at the end).
    #[arg(long)]
    pub keep: bool,

    #[arg(long, value_enum, env = "RUNNERCTL_PROGRESS", default_value = "auto")]
    pub progress: ProgressMode,
}
