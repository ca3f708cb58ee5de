//! Thin: parse, run, map the outcome to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use runnerctl::cli::{Cli, Command};
use runnerctl::config::{self, Config, Mode};
use runnerctl::progress::Reporter;
use runnerctl::{demo, pipeline, status};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    install_error_hook();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("runnerctl: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// A usage error: clap's message on stderr, exit 2, and with `--json` the
/// one JSON document on stdout that every path prints.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) || matches!(
        err.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A bad value from the environment: name the variable.
    let mut note = None;
    if let Some(clap::error::ContextValue::String(value)) =
        err.get(clap::error::ContextKind::InvalidValue)
    {
        let from_env: Vec<String> = std::env::vars()
            .filter(|(k, v)| k.starts_with("RUNNERCTL_") && v == value)
            .map(|(k, _)| k)
            .collect();
        if !from_env.is_empty() && !args.iter().any(|a| a.contains(value.as_str())) {
            note = Some(format!(
                "the value comes from the environment variable {} (booleans: 1/0, true/false, yes/no, on/off)",
                from_env.join(", ")
            ));
        }
    }
    if args.iter().any(|a| a == "--json") {
        let command = args
            .iter()
            .find(|a| {
                matches!(
                    a.as_str(),
                    "bump" | "release" | "promote" | "rollback" | "prune" | "status"
                )
            })
            .cloned()
            .unwrap_or_default();
        let mut report =
            runnerctl::report::Report::new(&command, args.iter().any(|a| a == "--dry-run"));
        let text = err.kind().as_str().unwrap_or("usage error").to_string();
        report.error = Some(runnerctl::report::ErrorReport {
            message: runnerctl::diagnostic::bound(
                err.to_string().lines().next().unwrap_or(&text),
                runnerctl::diagnostic::MAX_MESSAGE,
            ),
            help: Some(
                note.clone()
                    .unwrap_or_else(|| "see `runnerctl help` for the options".into()),
            ),
        });
        print_json(&report);
    }
    let _ = err.print();
    if let Some(note) = note {
        let _ = writeln!(std::io::stderr().lock(), "note: {note}");
    }
    ExitCode::from(2)
}

/// Diagnostics in colour only on a terminal, without NO_COLOR, outside CI.
fn install_error_hook() {
    let color = runnerctl::progress::colour_on_stderr();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .unicode(color)
                .terminal_links(false)
                .context_lines(2)
                .tab_width(4)
                .build(),
        )
    }));
}

/// The diagnostic, bounded (a window of the source around each label, a
/// few KB at most).
fn print_error(err: miette::Report) {
    let text = runnerctl::diagnostic::render(err);
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Write to stdout; a reader that went away (`runnerctl status | true`,
/// EPIPE) is not an error: the exit code says how the work went.
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn print_json<T: serde::Serialize>(value: &T) {
    if let Ok(text) = serde_json::to_string_pretty(value) {
        print_out(&format!("{text}\n"));
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Bump(args) => run_pipeline(Mode::Bump, args).await,
        Command::Release(args) => run_pipeline(Mode::Release, args).await,
        Command::Promote(args) => run_pipeline(Mode::Promote, args).await,
        Command::Rollback(args) => {
            let (report, err) = runnerctl::rollback::rollback(&args).await;
            finish(&report, err, args.local.json, args.local.quiet)
        }
        Command::Prune(args) => {
            let (report, err) = runnerctl::prune::prune(&args).await;
            if args.local.json {
                print_json(&report);
            } else if !args.local.quiet {
                print_out(&report.render());
            }
            match err {
                None => ExitCode::SUCCESS,
                Some(err) => {
                    print_error(err);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status(args) => {
            let out = config::output(&args.common);
            match status::status(&args.common).await {
                Ok(mut doc) => {
                    let mut failure = None;
                    if let Some(max_age) = args.max_age {
                        match runnerctl::freshness::check(
                            &args,
                            max_age,
                            &doc.state,
                            &doc.state_file,
                        ) {
                            Ok(f) => {
                                if !f.fresh {
                                    failure = Some(runnerctl::freshness::stale_error(&f));
                                }
                                doc.freshness = Some(f);
                            }
                            Err(err) => failure = Some(err),
                        }
                    }
                    if let Some(err) = &failure {
                        doc.error = Some(runnerctl::report::ErrorReport::of(err));
                    }
                    if out.json {
                        print_json(&doc);
                    } else {
                        print_out(&doc.render());
                    }
                    match failure {
                        None => ExitCode::SUCCESS,
                        Some(err) => {
                            print_error(err);
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(err) => {
                    if out.json {
                        print_json(&serde_json::json!({
                            "schema_version": 1,
                            "state_file": null,
                            "exists": null,
                            "state": null,
                            "error": {
                                "message": runnerctl::diagnostic::message(&err),
                                "help": err.help().map(|h| h.to_string()),
                            },
                        }));
                    }
                    print_error(err);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => match demo::demo(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                print_error(err);
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "runnerctl", &mut script);
            print_out(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
    }
}

async fn run_pipeline(mode: Mode, args: runnerctl::cli::RunArgs) -> ExitCode {
    let out = config::output(&args.common);
    let cfg = match Config::resolve(mode, &args) {
        Ok(cfg) => cfg,
        Err(err) => {
            let err = miette::Report::new(err);
            if out.json {
                let mut report = runnerctl::report::Report::new(mode.as_str(), args.dry_run);
                report.flake = args.common.flake.display().to_string();
                report.image = args.destination.image.clone().unwrap_or_default();
                report.error = Some(runnerctl::report::ErrorReport::of(&err));
                print_json(&report);
            }
            print_error(err);
            return ExitCode::FAILURE;
        }
    };
    let reporter = Reporter::new(out.progress, out.verbosity);
    let (report, err) = pipeline::run(cfg, reporter.clone()).await;
    reporter.finish();
    finish(
        &report,
        err,
        out.json,
        out.verbosity == runnerctl::progress::Verbosity::Quiet,
    )
}

/// Print a run's report (JSON, or the human summary unless quiet), then
/// its error, and map the outcome to the exit code.
fn finish(
    report: &runnerctl::report::Report,
    err: Option<miette::Report>,
    json: bool,
    quiet: bool,
) -> ExitCode {
    if json {
        print_json(report);
    } else if !quiet {
        print_out(&report.render());
    }
    match err {
        None => ExitCode::SUCCESS,
        Some(err) => {
            let code = err
                .downcast_ref::<runnerctl::tool::children::Interrupted>()
                .map(|i| ExitCode::from(i.exit_code()))
                .unwrap_or(ExitCode::FAILURE);
            print_error(err);
            if std::path::Path::new(&report.log_file).is_file() {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "The full output of every command is in {}",
                    report.log_file
                );
            }
            code
        }
    }
}
