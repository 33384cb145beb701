//! The `paysync` command line: one subcommand per job, each returning the
//! process exit code (0 success, 1 failure, 64 bad usage or configuration,
//! 65 bad input data, following sysexits). Only this module prints to the
//! terminal for a command or chooses an exit code.
//!
//! * [`args`]: the flags of every subcommand.
//! * [`service`]: `paysync run`.
//! * [`operator`]: `replay`, `dlq inspect`, `dlq redrive`.
//! * [`debugging`]: `check-config`, `sign`, `call`.
//! * [`dev`]: `demo`, `bench`, `emulator`.

mod args;
mod debugging;
mod dev;
mod operator;
mod service;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{LogSettings, Settings};
pub use args::*;

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for bad input data (sysexits `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("paysync: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => service::run(&args.config).await,
        Command::Bench(args) => dev::bench(args).await,
        Command::Demo(args) => dev::demo(args).await,
        Command::Replay(args) => operator::replay(args).await,
        Command::Dlq(command) => operator::dlq(command).await,
        Command::Emulator(args) => dev::emulator(*args).await,
        Command::Sign(args) => debugging::sign(args),
        Command::Call(args) => debugging::call(args).await,
        Command::CheckConfig(args) => debugging::check_config(&args.config),
    }
}

/// Loads and validates a configuration file; on failure prints every
/// problem and gives the exit code for a bad configuration.
fn load_settings(path: &Path) -> Result<Settings, ExitCode> {
    Settings::load(Some(path)).map_err(|error| {
        eprint!("{}: {error}", path.display());
        ExitCode::from(EXIT_USAGE)
    })
}

/// Loads a tool's configuration and sets up quiet logging (errors only, so
/// its report stays readable).
fn load_for_tool(path: &Path) -> Result<Settings, ExitCode> {
    let settings = load_settings(path)?;
    crate::telemetry::init(&LogSettings {
        level: "error".into(),
        ..settings.log.clone()
    });
    Ok(settings)
}

/// Reports a command's failure the one way: `paysync <command>: <error chain>`.
fn failed(command: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("paysync {command}: {error:#}");
    ExitCode::FAILURE
}
