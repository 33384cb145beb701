//! The `paysync` command line: one subcommand per job, each returning the
//! process exit code (0 success, 1 failure, 64 bad usage or configuration,
//! 65 bad input data, following sysexits). Only this module prints to the
//! terminal for a command or chooses an exit code.
//!
//! * [`args`]: the flags of every subcommand.
//! * [`service`]: `paysync run`.
//! * [`operator`]: `replay`, `dlq inspect`, `dlq redrive`.
//! * [`ledger`]: `ledger show|unknown|resolve|stats`, `reconcile`.
//! * [`control`]: `control set|pause|resume|show`.
//! * [`console`]: `console` (the operator console on its own).
//! * [`debugging`]: `check-config`, `sign`, `call`.
//! * [`dev`]: `demo`, `bench`, `emulator`.
//! * [`exit`]: the exit codes, and loading a command's configuration.

mod args;
mod console;
mod control;
mod debugging;
mod dev;
mod exit;
mod ledger;
mod operator;
mod operator_args;
mod service;

use std::process::ExitCode;

use clap::Parser;

pub use args::*;
pub use exit::{EXIT_DATA, EXIT_USAGE};
pub use operator_args::*;

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
        Command::Ledger(command) => ledger::ledger(command).await,
        Command::Reconcile(args) => ledger::reconcile(args).await,
        Command::Control(command) => control::control(command).await,
        Command::Console(args) => console::console(args).await,
        Command::Emulator(args) => dev::emulator(*args).await,
        Command::Sign(args) => debugging::sign(args),
        Command::Call(args) => debugging::call(args).await,
        Command::CheckConfig(args) => debugging::check_config(&args.config),
    }
}
