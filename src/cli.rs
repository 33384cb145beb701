//! The `paysync` command line: one subcommand per job, each returning the
//! process exit code (0 success, 1 failure, 64 bad usage or configuration,
//! 65 bad input data, following sysexits).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::config::{LogSettings, Settings};
use crate::emulator::{
    BadDataStyle, Emulator, Faults, Gateway, GatewaySettings, RateLimit, journal::Journal,
};
use crate::event;
use crate::top::classify::Disposition;
use crate::top::request::dto_json;
use crate::top::sign::{self, EmptyValues, SignMethod};

/// Exit code for bad usage or configuration (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for bad input data (sysexits `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;

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

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with their reason, code, message and source position.
    Inspect(DlqInspectArgs),
    /// Send selected dead letters back to their source topic, or straight to the API.
    Redrive(DlqRedriveArgs),
}

/// Selects dead letters.
#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    /// invalid_event, rejected or retries_exhausted.
    #[arg(long)]
    pub class: Option<String>,
    /// The paysync.error.reason header, e.g. business_rejected.
    #[arg(long)]
    pub reason: Option<String>,
    /// The TOP code, e.g. 41.
    #[arg(long)]
    pub code: Option<String>,
    /// Dead-lettered at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Dead-lettered before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl DlqFilterArgs {
    fn filter(&self) -> crate::dlq::Filter {
        crate::dlq::Filter {
            class: self.class.clone(),
            reason: self.reason.clone(),
            code: self.code.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqInspectArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    #[arg(long, value_enum, default_value_t = crate::dlq::Target::Source)]
    pub to: crate::dlq::Target,
    /// The group that keeps the redrive's cursor (default: <kafka.group_id>.redrive).
    #[arg(long)]
    pub group: Option<String>,
    /// Show what would be redriven; send nothing and keep the cursor.
    #[arg(long)]
    pub dry_run: bool,
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
    /// The replay's own group, which keeps its progress (default: <kafka.group_id>.replay).
    #[arg(long)]
    pub group: Option<String>,
    /// Calls per second (default: --rate-fraction of delivery.rate_limit_per_sec).
    #[arg(long)]
    pub rate: Option<u32>,
    #[arg(long, default_value_t = 0.25)]
    pub rate_fraction: f64,
    /// Decode and validate the range without calling the API or committing.
    #[arg(long)]
    pub dry_run: bool,
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
        Command::Run(args) => run_pipeline(&args.config).await,
        Command::Bench(args) => bench(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Dlq(command) => dlq(command).await,
        Command::Emulator(args) => emulator(*args).await,
        Command::Sign(args) => sign_command(args),
        Command::Call(args) => call(args).await,
        Command::CheckConfig(args) => check_config(&args.config),
    }
}

fn sign_command(args: SignArgs) -> ExitCode {
    let mut params = Vec::with_capacity(args.params.len());
    for param in &args.params {
        match param.split_once('=') {
            Some((name, value)) if !name.is_empty() => params.push((name, value)),
            _ => {
                eprintln!("paysync sign: {param:?} is not NAME=VALUE");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let from_params = params
        .iter()
        .find(|(n, _)| *n == "sign_method")
        .map(|(_, v)| *v);
    let method = match (args.sign_method, from_params.map(str::parse::<SignMethod>)) {
        (Some(flag), Some(Ok(param))) if flag != param => {
            eprintln!(
                "paysync sign: --sign-method {flag} disagrees with the parameter sign_method={param}"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (_, Some(Err(error))) => {
            eprintln!("paysync sign: sign_method parameter: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(flag), _) => flag,
        (None, Some(Ok(param))) => param,
        (None, None) => SignMethod::Md5,
    };
    let secret = SecretString::from(args.app_secret);
    let base = sign::string_to_sign(params.iter().copied(), EmptyValues::Drop);
    println!("{}", sign::digest(method, &secret, &base));
    if args.show_base {
        println!("{}", sign::describe_base(method, &base));
    }
    ExitCode::SUCCESS
}

/// Loads and validates a configuration file; on failure prints every
/// problem and gives the exit code for a bad configuration.
fn load_settings(path: &Path) -> Result<Settings, ExitCode> {
    Settings::load(Some(path)).map_err(|error| {
        eprint!("{}: {error}", path.display());
        ExitCode::from(EXIT_USAGE)
    })
}

fn check_config(path: &Path) -> ExitCode {
    match Settings::load(Some(path)) {
        Ok(settings) => {
            println!("{}: ok", path.display());
            println!("  gateway     {}", settings.top.gateway_url);
            println!("  app_key     {}", settings.top.app_key);
            println!("  sign_method {}", settings.top.sign_method);
            println!("  app_secret  [redacted]");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{}: {error}", path.display());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

async fn dlq(command: DlqCommand) -> ExitCode {
    let config = match &command {
        DlqCommand::Inspect(args) => &args.config,
        DlqCommand::Redrive(args) => &args.config,
    };
    let settings = match load_settings(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&LogSettings {
        level: "error".into(),
        ..settings.log.clone()
    });
    match command {
        DlqCommand::Inspect(args) => {
            let filter = args.filter.filter();
            match tokio::task::spawn_blocking(move || crate::dlq::inspect(&settings, &filter)).await
            {
                Ok(Ok(records)) if args.json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&records).expect("records serialise")
                    );
                    ExitCode::SUCCESS
                }
                Ok(Ok(records)) => {
                    print!("{}", crate::dlq::render_table(&records));
                    ExitCode::SUCCESS
                }
                Ok(Err(error)) => {
                    eprintln!("paysync dlq inspect: {error:#}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("paysync dlq inspect: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        DlqCommand::Redrive(args) => {
            match crate::dlq::redrive(
                &settings,
                &args.filter.filter(),
                args.to,
                args.group.as_deref(),
                args.dry_run,
            )
            .await
            {
                Ok(report) => {
                    let verb = if report.dry_run {
                        "would redrive"
                    } else {
                        "redrove"
                    };
                    println!(
                        "paysync dlq redrive: examined {}, selected {}, {verb} {} to {:?}",
                        report.examined,
                        report.selected,
                        if report.dry_run {
                            report.selected
                        } else {
                            report.redriven
                        },
                        args.to
                    );
                    for failure in &report.failed {
                        println!("  not accepted: {failure}");
                    }
                    if report.failed.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => {
                    eprintln!("paysync dlq redrive: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn replay(args: ReplayArgs) -> ExitCode {
    let settings = match load_settings(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&LogSettings {
        level: "error".into(),
        ..settings.log.clone()
    });
    let request = crate::replay::ReplayRequest {
        topic: args.topic,
        partitions: args.partitions,
        from_offset: args.from_offset,
        to_offset: args.to_offset,
        from_time: args.from_time,
        to_time: args.to_time,
        group: args.group,
        rate: args.rate,
        rate_fraction: args.rate_fraction,
        dry_run: args.dry_run,
    };
    match crate::replay::run(settings, request, crate::shutdown::signal()).await {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("paysync replay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> ExitCode {
    crate::telemetry::init(&LogSettings {
        level: "error".into(),
        ..LogSettings::default()
    });
    let faults = Faults {
        isp_error_rate: args.isp_error_rate,
        http_502_rate: args.http_502_rate,
        drop_connection_rate: args.drop_connection_rate,
        reject_rate: args.reject_rate,
        ..Faults::default()
    };
    if let Err(reason) = faults.validate() {
        eprintln!("paysync demo: {reason}");
        return ExitCode::from(EXIT_USAGE);
    }
    let options = crate::demo::DemoOptions {
        events: args.events,
        rate: args.rate,
        malformed_rate: args.malformed_rate,
        faults,
        admin_listen: args.admin_listen,
    };
    match crate::demo::run(options).await {
        Ok(report) => {
            print!("{}", report.render());
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                eprintln!("paysync demo: not every event was accounted for and committed");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("paysync demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> ExitCode {
    crate::telemetry::init(&LogSettings {
        level: "warn".into(),
        ..LogSettings::default()
    });
    let options = crate::bench::BenchOptions {
        events: args.events,
        latency_ms: args.latency_ms,
        max_in_flight: args.max_in_flight,
        rate: args.rate,
        burst: args.burst,
    };
    match crate::bench::run(options).await {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report serialises")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("paysync bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_pipeline(path: &Path) -> ExitCode {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    // The first signal drains and commits; a second one exits at once. Stored
    // offsets only ever cover finished events, so nothing unfinished is committed.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first_signal = crate::shutdown::signal();
    tokio::spawn(async move {
        first_signal.await;
        let _ = stop.send(());
        crate::shutdown::signal().await;
        eprintln!("paysync: second signal, exiting now");
        std::process::exit(130);
    });
    let admin_listen: SocketAddr = settings
        .admin
        .listen
        .parse()
        .expect("validated in Settings::validate");
    let liveness_timeout = Duration::from_millis(settings.admin.liveness_timeout_ms);
    let built =
        tokio::task::spawn_blocking(move || crate::pipeline::Pipeline::build(settings)).await;
    let pipeline = match built {
        Ok(Ok(pipeline)) => pipeline,
        Ok(Err(error)) => {
            tracing::error!(error = format!("{error:#}"), "Cannot start.");
            eprintln!("paysync: {error:#}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("paysync: start-up failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let admin_state = crate::admin::AdminState {
        metrics: pipeline.metrics(),
        health: pipeline.health(),
        gate: pipeline.gate_handle(),
        liveness_timeout,
    };
    let admin = match crate::admin::AdminServer::start(admin_listen, admin_state).await {
        Ok(admin) => admin,
        Err(error) => {
            eprintln!("paysync: cannot listen on admin.listen {admin_listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %admin.addr(), "Pipeline started; /metrics, /health/live and /health/ready are served.");
    let result = pipeline
        .run(async {
            let _ = stopped.await;
        })
        .await;
    admin.stop().await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("paysync: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_event_source(source: &str) -> std::io::Result<Vec<u8>> {
    if source == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(source)
    }
}

async fn call(args: CallArgs) -> ExitCode {
    let settings = match load_settings(&args.config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    crate::telemetry::init(&settings.log);
    let bytes = match read_event_source(&args.event) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("paysync call: cannot read {}: {error}", args.event);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let event = match event::decode(Some(&bytes), settings.event.max_bytes) {
        Ok(event) => event,
        Err(invalid) => {
            eprintln!("paysync call: invalid event:");
            for problem in &invalid.problems {
                eprintln!("  - {}: {}", problem.field, problem.reason);
            }
            return ExitCode::from(EXIT_DATA);
        }
    };
    let client = match settings.top_client() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("paysync call: {error:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let report = client.send(&dto_json(&event)).await;
    let disposition = settings.classifier().classify(&report.outcome);
    println!("request  POST {}", client.endpoint());
    print!("{}", report.request.describe());
    println!("response ({} ms)", report.elapsed.as_millis());
    if let Some(body) = &report.body_excerpt {
        println!("  {body}");
    }
    println!(
        "  request_id = {}",
        report.request_id.as_deref().unwrap_or("-")
    );
    println!("outcome  {:?}", report.outcome);
    println!("disposition {}", describe_disposition(&disposition));
    if disposition == Disposition::Delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One line for people: what the disposition means for the event.
pub fn describe_disposition(disposition: &Disposition) -> String {
    match disposition {
        Disposition::Delivered => "delivered: the API accepted the event".into(),
        Disposition::Retry { cause, wait } => match wait {
            Some(wait) => format!("retry ({}) after {} s", cause.as_str(), wait.as_secs()),
            None => format!("retry ({}) with backoff", cause.as_str()),
        },
        Disposition::DeadLetter { cause } => {
            format!(
                "dead-letter ({}): the event's data was refused",
                cause.as_str()
            )
        }
        Disposition::Halt { cause } => format!(
            "halt ({}): the configuration is broken; nothing would be delivered or dead-lettered",
            cause.as_str()
        ),
    }
}

async fn emulator(args: EmulatorArgs) -> ExitCode {
    crate::telemetry::init(&LogSettings::default());
    let mut faults = match &args.scenario {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Faults::from_toml(&t))
        {
            Ok(faults) => faults,
            Err(error) => {
                eprintln!("paysync emulator: scenario {}: {error}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => Faults::default(),
    };
    let overrides = [
        (&mut faults.http_502_rate, args.http_502_rate),
        (&mut faults.http_503_rate, args.http_503_rate),
        (&mut faults.drop_connection_rate, args.drop_connection_rate),
        (&mut faults.unavailable_rate, args.unavailable_rate),
        (&mut faults.isp_error_rate, args.isp_error_rate),
        (&mut faults.service_failure_rate, args.service_failure_rate),
        (&mut faults.reject_rate, args.reject_rate),
    ];
    for (slot, value) in overrides {
        if let Some(value) = value {
            *slot = value;
        }
    }
    if let Some(latency) = args.latency_ms {
        faults.latency_ms = latency;
    }
    if let Some(jitter) = args.latency_jitter_ms {
        faults.latency_jitter_ms = jitter;
    }
    faults.permission_denied |= args.permission_denied;
    if let Some(calls_per_second) = args.rate_limit {
        faults.rate_limit = Some(RateLimit {
            calls_per_second,
            ban_seconds: args.ban_seconds,
        });
    }
    if let Err(reason) = faults.validate() {
        eprintln!("paysync emulator: {reason}");
        return ExitCode::from(EXIT_USAGE);
    }
    let journal = match Journal::new(args.journal.as_deref()) {
        Ok(journal) => journal,
        Err(error) => {
            eprintln!("paysync emulator: cannot open the journal: {error}");
            return ExitCode::FAILURE;
        }
    };
    let settings = GatewaySettings {
        apps: HashMap::from([(args.app_key.clone(), SecretString::from(args.app_secret))]),
        sessions: (!args.sessions.is_empty())
            .then(|| args.sessions.into_iter().collect::<HashSet<_>>()),
        max_skew: Duration::from_secs(args.max_skew_secs),
        bad_data_style: args.bad_data_style,
        seed: args.seed,
    };
    // Handlers first: a test may signal as soon as it reads the URL below.
    let shutdown = crate::shutdown::signal();
    let emulator = match Emulator::start(args.listen, Gateway::new(settings, faults, journal)).await
    {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!(
                "paysync emulator: cannot listen on {}: {error}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    // Tests that start the emulator on port 0 read this line to find it.
    println!("emulator listening on {}", emulator.url());
    tracing::info!(url = %emulator.url(), app_key = %args.app_key, "Emulator started.");
    emulator.run_until(shutdown).await;
    tracing::info!("Emulator stopped.");
    ExitCode::SUCCESS
}
