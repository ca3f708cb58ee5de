//! Thin: parse, run, map the outcome to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use runnerctl::cli::{Cli, Command};
use runnerctl::config::{self, Config, Mode};
use runnerctl::progress::Reporter;
use runnerctl::{demo, pipeline, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Status(args) => {
            let out = config::output(&args.common);
            match status::status(&args.common).await {
                Ok(doc) => {
                    if out.json {
                        print_json(&doc);
                    } else {
                        print_out(&doc.render());
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
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
                report.error = Some(runnerctl::report::ErrorReport {
                    message: runnerctl::diagnostic::message(&err),
                    help: err.help().map(|h| h.to_string()),
                });
                print_json(&report);
            }
            print_error(err);
            return ExitCode::FAILURE;
        }
    };
    let reporter = Reporter::new(out.progress, out.verbosity);
    let (report, err) = pipeline::run(cfg, reporter.clone()).await;
    reporter.finish();
    if out.json {
        print_json(&report);
    } else if out.verbosity > runnerctl::progress::Verbosity::Quiet {
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
