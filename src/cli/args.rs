//! The flags of every subcommand (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::operator_args::{ControlCommand, DlqCommand, LedgerCommand, ReconcileArgs};
use crate::tools::emulator::BadDataStyle;
use crate::top::sign::SignMethod;

#[derive(Debug, Parser)]
#[command(
    name = "paysync",
    version,
    about = "Kafka → Miaojie (TOP) payment bridge"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the configured topics and deliver every event to the API.
    Run(RunArgs),
    /// Run the whole bridge in one process (in-process Kafka, emulator, pipeline).
    Demo(DemoArgs),
    /// Send a bounded range of a source topic to the API again (backfill).
    Replay(ReplayArgs),
    /// Inspect or redrive the dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// What the delivery ledger holds: an order's entries, unknown
    /// outcomes and their resolution, a day's counts.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Build (and with --send, send) the day's orderamount.sync report from the ledger.
    Reconcile(ReconcileArgs),
    /// Tune, pause and resume every running paysync through the control topic.
    #[command(subcommand)]
    Control(ControlCommand),
    /// Serve the operator console on its own (console.listen); it delivers nothing.
    Console(ConsoleArgs),
    /// Measure the pipeline against the mock cluster and the emulator.
    Bench(BenchArgs),
    /// Run a local TOP gateway emulator.
    Emulator(Box<EmulatorArgs>),
    /// Print the TOP signature of a parameter set.
    Sign(SignArgs),
    /// Send one event to the configured gateway and show what happened.
    Call(CallArgs),
    /// Validate a configuration file and report every problem.
    CheckConfig(CheckConfigArgs),
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "PAYSYNC_EMULATOR_APP_KEY")]
    pub app_key: String,
    #[arg(long, env = "PAYSYNC_EMULATOR_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Append every accepted order to this file as a JSON line.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// A TOML file of faults (see config/emulator-scenario.example.toml); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Require one of these session keys (repeatable); without it sessions are not checked.
    #[arg(long = "session")]
    pub sessions: Vec<String>,
    /// How bad DTO data is answered.
    #[arg(long, value_enum, default_value_t = BadDataStyle::Codes40And41)]
    pub bad_data_style: BadDataStyle,
    /// Allowed clock difference for `timestamp`, in seconds.
    #[arg(long, default_value_t = 600)]
    pub max_skew_secs: u64,
    /// Seed for fault draws and request ids (reproducible runs).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub latency_ms: Option<u64>,
    #[arg(long)]
    pub latency_jitter_ms: Option<u64>,
    #[arg(long)]
    pub http_502_rate: Option<f64>,
    #[arg(long)]
    pub http_503_rate: Option<f64>,
    #[arg(long)]
    pub drop_connection_rate: Option<f64>,
    /// Share of calls answered with code 10.
    #[arg(long)]
    pub unavailable_rate: Option<f64>,
    /// Share of calls answered with code 15 + isp.top-remote-connection-error.
    #[arg(long)]
    pub isp_error_rate: Option<f64>,
    /// Share of calls answered success=false.
    #[arg(long)]
    pub service_failure_rate: Option<f64>,
    /// Share of calls answered success=true, model=false.
    #[arg(long)]
    pub reject_rate: Option<f64>,
    /// Answer code 11 to every call.
    #[arg(long)]
    pub permission_denied: bool,
    /// Per-app calls per second before a code-7 ban.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Length of a code-7 ban.
    #[arg(long, default_value_t = 2)]
    pub ban_seconds: u64,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[arg(long, env = "PAYSYNC_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Defaults to the `sign_method` parameter if given, else md5.
    #[arg(long)]
    pub sign_method: Option<SignMethod>,
    /// Also print the exact string that was hashed (the secret shown as <secret>).
    #[arg(long)]
    pub show_base: bool,
    /// Parameters as NAME=VALUE (decoded values, as they are signed).
    #[arg(required = true, value_name = "NAME=VALUE")]
    pub params: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// A file holding one event (JSON), or - for standard input.
    #[arg(default_value = "-")]
    pub event: String,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The source topic (default: the only one in kafka.topics).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions to replay, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// First offset (inclusive) in each partition.
    #[arg(long, conflicts_with = "from_time")]
    pub from_offset: Option<i64>,
    /// Last offset (exclusive) in each partition.
    #[arg(long, conflicts_with = "to_time")]
    pub to_offset: Option<i64>,
    /// Start at the first message at or after this RFC 3339 time.
    #[arg(long)]
    pub from_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Stop before the first message at or after this RFC 3339 time.
    #[arg(long)]
    pub to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The replay's own group, which keeps its progress (default: one per
    /// request, <kafka.group_id>.replay.<hash of topic, partitions, bounds>).
    #[arg(long)]
    pub group: Option<String>,
    /// The most calls per second the replay takes of the group's rate
    /// (without the control topic: its own rate, default --rate-fraction of
    /// delivery.rate_limit_per_sec, on top of the group's).
    #[arg(long)]
    pub rate: Option<u32>,
    #[arg(long, default_value_t = 0.25)]
    pub rate_fraction: f64,
    /// Its weight among the callers sharing the group's rate (default
    /// control.backfill_weight; the live group has control.live_weight).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Decode and validate the range without calling the API or committing.
    #[arg(long)]
    pub dry_run: bool,
    /// Send events the ledger holds as accepted with the same DTO too.
    #[arg(long)]
    pub resend_delivered: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 5_000)]
    pub events: usize,
    /// Calls per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Share of malformed messages.
    #[arg(long, default_value_t = 0.005)]
    pub malformed_rate: f64,
    /// Share of calls answered code 15 + isp.* (retried).
    #[arg(long, default_value_t = 0.03)]
    pub isp_error_rate: f64,
    /// Share of calls answered HTTP 502 (retried).
    #[arg(long, default_value_t = 0.01)]
    pub http_502_rate: f64,
    /// Share of connections dropped (retried).
    #[arg(long, default_value_t = 0.005)]
    pub drop_connection_rate: f64,
    /// Share of calls the API refuses (success=true, model=false: dead-lettered).
    #[arg(long, default_value_t = 0.002)]
    pub reject_rate: f64,
    /// Where /metrics and the health endpoints are served (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Serve the console on the admin listener, print its address and a
    /// one-time login, and keep running until interrupted.
    #[arg(long)]
    pub console: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("console_job").required(true).args(["config", "hash_password"])))]
pub struct ConsoleArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read a password on stdin and print its argon2 hash for console.users_file.
    #[arg(long)]
    pub hash_password: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Latency the emulator adds to every call.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,
    /// Calls per second (default: no limit).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Token-bucket burst (default: rate / 50).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run `paysync run` as a child process against this Kafka broker
    /// instead of in process against the mock cluster. The benchmark creates
    /// its own topics and deletes them at the end.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Source partitions (broker mode).
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Distinct order ids per partition (broker mode; default: every event
    /// its own order). Events of one order are delivered one after another.
    #[arg(long)]
    pub orders_per_partition: Option<usize>,
    /// A setting for the benchmarked `paysync run` (broker mode), as one TOML
    /// line with a dotted key; repeatable. For example
    /// `--set 'delivery.global_window = 2000'` or
    /// `--set 'kafka.consumer."queued.max.messages.kbytes" = "8192"'`.
    #[arg(long = "set", value_name = "KEY = VALUE")]
    pub settings: Vec<String>,
    /// Ledger entries written before `paysync run` starts (broker mode):
    /// its restore is timed and its memory reported.
    #[arg(long, default_value_t = 0)]
    pub ledger_entries: usize,
    /// Serve the console in `paysync run` (broker mode) with one group page
    /// open, loaded every 10 s as its own refresh does.
    #[arg(long)]
    pub console: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[arg(long)]
    pub config: PathBuf,
}

impl clap::ValueEnum for SignMethod {
    fn value_variants<'a>() -> &'a [Self] {
        &SignMethod::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}
