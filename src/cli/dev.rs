//! The development tools' commands: `demo`, `bench`, `emulator`.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use secrecy::SecretString;

use super::args::{BenchArgs, DemoArgs, EmulatorArgs};
use super::exit::{EXIT_USAGE, failed};
use crate::config::LogSettings;
use crate::tools::emulator::{
    Emulator, Faults, Gateway, GatewaySettings, RateLimit, journal::Journal,
};

pub(super) async fn demo(args: DemoArgs) -> ExitCode {
    // Like every setting, PAYSYNC_TRACING__ENABLED=true turns tracing on.
    let tracing = match crate::config::TracingSettings::from_env(std::env::vars()) {
        Ok(tracing) => tracing,
        Err(error) => {
            eprint!("paysync demo: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
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
    let options = crate::tools::demo::DemoOptions {
        events: args.events,
        rate: args.rate,
        malformed_rate: args.malformed_rate,
        faults,
        admin_listen: args.admin_listen,
        tracing,
        console: args.console,
    };
    let ran = crate::tools::demo::run(options).await;
    match ran {
        Ok(report) => {
            print!("{}", report.render());
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                eprintln!("paysync demo: not every event was accounted for and committed");
                ExitCode::FAILURE
            }
        }
        Err(error) => failed("demo", &error),
    }
}

pub(super) async fn bench(args: BenchArgs) -> ExitCode {
    crate::telemetry::init(&LogSettings {
        level: "warn".into(),
        ..LogSettings::default()
    });
    let measured = match &args.bootstrap {
        Some(bootstrap) => {
            crate::tools::bench::broker::run(crate::tools::bench::broker::BrokerBenchOptions {
                bootstrap: bootstrap.clone(),
                events: args.events,
                partitions: args.partitions,
                orders_per_partition: args.orders_per_partition,
                latency_ms: args.latency_ms,
                max_in_flight: args.max_in_flight,
                rate: args.rate,
                burst: args.burst,
                settings: args.settings.clone(),
                ledger_entries: args.ledger_entries,
                console: args.console,
            })
            .await
        }
        None if !args.settings.is_empty() => Err(anyhow::anyhow!(
            "--set configures the `paysync run` child of broker mode: give --bootstrap too"
        )),
        None => {
            crate::tools::bench::in_process::run(crate::tools::bench::in_process::BenchOptions {
                events: args.events,
                latency_ms: args.latency_ms,
                max_in_flight: args.max_in_flight,
                rate: args.rate,
                burst: args.burst,
            })
            .await
        }
    };
    match measured {
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
        Err(error) => failed("bench", &error),
    }
}

pub(super) async fn emulator(args: EmulatorArgs) -> ExitCode {
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
            burst: None,
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
