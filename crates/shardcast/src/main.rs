//! The `shardcast` command line: every subcommand of the product in one
//! binary. It wires settings to the library crates (store, model, server,
//! planner, daemon, plot), which do the work, and prints their results.
//!
//! Printing results is this binary's job, so `print_stdout` is allowed here.
#![allow(clippy::print_stdout)]

mod cli;
mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Serve(_))
        && std::env::var_os("RAYON_NUM_THREADS").is_none()
    {
        // Each inference thread of the server runs its batches alone:
        // splitting small matrix products across threads costs more than it
        // saves, and the server scales with `--workers` instead.
        // SAFETY: no other thread exists yet to read the environment.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    // A server logs what it does (versions served, switches, refusals);
    // the other subcommands print their results and log only trouble.
    let default_filter = match cli.command {
        cli::Command::Serve(_) | cli::Command::Plan(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
