//! How a command ends: the exit codes beyond 0 and 1, loading a command's
//! configuration (every problem printed, the exit code for a bad one), and
//! the one way a failure is reported.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{LogSettings, Settings};

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for bad input data (sysexits `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;

/// Loads and validates a configuration file; on failure prints every
/// problem and gives the exit code for a bad configuration.
pub(super) fn load_settings(path: &Path) -> Result<Settings, ExitCode> {
    Settings::load(Some(path)).map_err(|error| {
        eprint!("{}: {error}", path.display());
        ExitCode::from(EXIT_USAGE)
    })
}

/// Loads a tool's configuration and sets up quiet logging (errors only, so
/// its report stays readable).
pub(super) fn load_for_tool(path: &Path) -> Result<Settings, ExitCode> {
    let settings = load_settings(path)?;
    crate::telemetry::init(&LogSettings {
        level: "error".into(),
        ..settings.log.clone()
    });
    Ok(settings)
}

/// Reports a command's failure the one way: `paysync <command>: <error chain>`.
pub(super) fn failed(command: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("paysync {command}: {error:#}");
    ExitCode::FAILURE
}
