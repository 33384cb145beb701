//! `paysync demo`: the whole bridge on one machine with nothing installed —
//! an in-process Kafka (librdkafka's mock cluster), the emulator with some
//! transient faults, realistic payments and refunds for a few car parks plus a
//! few malformed messages, and the real pipeline, with a progress bar,
//! `/metrics` served while it runs, and a summary at the end.
//!
//! It succeeds only when every produced event is accounted for (delivered or
//! dead-lettered) and the group's committed offsets reached the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{Duration as ChronoDuration, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::FutureRecord;

use crate::admin::{AdminServer, AdminState};
use crate::gmt8;
use crate::ledger::{self, report::Reconciliation};
use crate::pipeline::{Pipeline, Source, Summary};
use crate::tools::emulator::Faults;
use crate::tools::emulator::journal::Journal;
use crate::tools::latency::LatencyRecorder;
use crate::tools::local::{LocalStack, TOPIC};

const PARTITIONS: i32 = 6;
const PARKS: [&str; 4] = [
    "p-hz-xixi-01",
    "p-hz-binjiang-02",
    "p-sh-pudong-07",
    "p-bj-chaoyang-03",
];
const PLATE_PREFIXES: [&str; 4] = ["浙A", "浙B", "沪C", "京N"];
const METHODS: [&str; 3] = ["WX", "ALIPAY", "UNIONPAY"];

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    /// Calls per second.
    pub rate: u32,
    /// Share of messages that are malformed (at least one when there are 50 events or more).
    pub malformed_rate: f64,
    pub faults: Faults,
    pub admin_listen: SocketAddr,
    /// `[tracing]` from `PAYSYNC_TRACING__*` (off unless enabled there).
    pub tracing: crate::config::TracingSettings,
    /// Serve the console on the admin listener with a one-time login, and
    /// keep the stack up after the run until interrupted.
    pub console: bool,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Messages published, the republished ones included.
    pub produced: usize,
    /// Events published a second time (a producer's retry): the ledger
    /// keeps them from being sent twice.
    pub republished: usize,
    pub summary: Summary,
    pub dead_letters_by_reason: Vec<(String, String, u64)>,
    pub duplicate_calls: usize,
    pub events_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub committed_to_end: bool,
    /// The day's `orderamount.sync` report, from the ledger.
    pub reconciliation: Option<Reconciliation>,
}

impl DemoReport {
    /// Messages taken to an end: delivered, dead-lettered, or suppressed
    /// as a duplicate by the ledger.
    pub fn accounted_for(&self) -> u64 {
        self.summary.finished()
    }

    pub fn succeeded(&self) -> bool {
        self.accounted_for() == self.produced as u64 && self.committed_to_end
    }

    pub fn render(&self) -> String {
        let mut out = String::from("paysync demo: summary\n");
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<34} {value}\n"));
        line("produced", self.produced.to_string());
        line("delivered", self.summary.delivered.to_string());
        line("dead-lettered", self.summary.dead_lettered().to_string());
        for (class, reason, count) in &self.dead_letters_by_reason {
            line(&format!("  {class} / {reason}"), count.to_string());
        }
        line("retried calls", self.summary.retried_calls.to_string());
        line("calls", self.summary.calls.to_string());
        line(
            "published twice (producer retries)",
            self.republished.to_string(),
        );
        line(
            "duplicates suppressed (ledger)",
            self.summary.duplicates_suppressed.to_string(),
        );
        line(
            "duplicate calls at the API",
            self.duplicate_calls.to_string(),
        );
        line("throughput", format!("{:.0} events/s", self.events_per_sec));
        line(
            "latency p50 / p99",
            format!(
                "{:.1} / {:.1} ms (Kafka → API acceptance)",
                self.p50_ms, self.p99_ms
            ),
        );
        line(
            "accounted for",
            format!("{} of {}", self.accounted_for(), self.produced),
        );
        line(
            "committed to the end",
            if self.committed_to_end { "yes" } else { "no" }.to_owned(),
        );
        if let Some(report) = &self.reconciliation {
            let parks: Vec<String> = report
                .lines
                .iter()
                .map(|line| format!("{} {}", line.park_id, line.order_amount))
                .collect();
            line(
                &format!("orderamount.sync report {}", report.date),
                format!("{} orders: {}", report.total_amount, parks.join(", ")),
            );
        }
        out
    }
}

/// One demo message: key (the order id) and value.
fn message(index: usize, events: usize, malformed_every: Option<usize>) -> (String, Vec<u8>) {
    if let Some(every) = malformed_every
        && index % every == every / 2
    {
        // Truncated JSON, a negative fee, and a message missing and mangling fields.
        let broken = match (index / every) % 3 {
            0 => r#"{"carNo": "浙A1"#,
            1 => {
                r#"{"carNo":"浙A12345","orderId":"X","parkId":"p1","payTime":"2026-11-26 10:00:00","orderType":1,"payFee":-300}"#
            }
            _ => {
                r#"{"orderId":"Y","parkId":"p1","payTime":"yesterday","orderType":3,"payFee":100}"#
            }
        };
        return (format!("malformed-{index}"), broken.as_bytes().to_vec());
    }
    // Every tenth event refunds the previous order (same key, so same partition, after it).
    let refund = index % 10 == 9;
    let order = if refund { index - 1 } else { index };
    let order_id = format!("PK{:08}", order);
    let fee = 200 + (order * 7919) % 4800;
    let paid_at = Utc::now() - ChronoDuration::seconds((events - index) as i64);
    let value = serde_json::json!({
        "carNo": format!("{}{:05}", PLATE_PREFIXES[order % PLATE_PREFIXES.len()], (order * 104_729) % 100_000),
        "orderId": order_id,
        "parkId": PARKS[order % PARKS.len()],
        "payTime": paid_at.timestamp_millis(),
        "orderType": if refund { 2 } else { 1 },
        "payFee": fee,
        "payOrderId": format!("PO{:012}", index),
        "payMethod": METHODS[order % METHODS.len()],
    });
    (order_id, value.to_string().into_bytes())
}

/// Runs the demo; the mock cluster stays on the calling task.
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(options.events > 0, "--events must be above 0");
    let stack = LocalStack::start(
        PARTITIONS,
        options.faults.clone(),
        Journal::new(None)?,
        "paysync-demo",
    )
    .await?;
    let mut settings = stack.settings.clone();
    settings.tracing = options.tracing.clone();
    settings.delivery.rate_limit_per_sec = options.rate;
    settings.delivery.rate_limit_burst = Some((options.rate / 10).max(1));
    settings.validate()?;

    let malformed_every = (options.malformed_rate > 0.0)
        .then(|| ((1.0 / options.malformed_rate) as usize).clamp(2, options.events.max(2)))
        .filter(|_| options.events >= 50);
    let producer = stack.producer()?;
    let mut messages: Vec<(String, Vec<u8>)> = (0..options.events)
        .map(|i| message(i, options.events, malformed_every))
        .collect();
    // A producer's retry: every hundredth payment published once more.
    let republished: Vec<(String, Vec<u8>)> = messages
        .iter()
        .enumerate()
        .filter(|(i, (key, _))| i % 100 == 37 && !key.starts_with("malformed"))
        .map(|(_, message)| message.clone())
        .collect();
    messages.extend(republished.iter().cloned());
    for chunk in messages.chunks(10_000) {
        let sends = chunk.iter().map(|(key, value)| {
            producer.send(
                FutureRecord::to(TOPIC).key(key).payload(value),
                Duration::from_secs(30),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(error, _)| error)
                .context("producing demo events")?;
        }
    }

    // A one-time login: a random password, its hash in a file that lives
    // as long as the demo.
    let console_login = if options.console {
        let login = OneTimeLogin::new()?;
        settings.console.enabled = true;
        settings.console.users_file = Some(login.users_file.path().to_owned());
        Some(login)
    } else {
        None
    };
    let latency = LatencyRecorder::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ledger_settings = settings.clone();
    let running = Pipeline::build(settings, Source::Group)
        .await?
        .observe_deliveries(latency.observer())
        .spawn(async move {
            let _ = stopped.await;
        });
    let state = AdminState::of(&running, Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind(options.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.admin_listen))?;
    let console = match &console_login {
        Some(_) => Some(DemoConsole::start(&ledger_settings, &running, state.clone()).await?),
        None => None,
    };
    let admin = match &console {
        Some(console) => {
            AdminServer::serve_with(listener, state, crate::console::router(&console.console))?
        }
        None => AdminServer::serve(listener, state)?,
    };
    eprintln!(
        "paysync demo: {} events ({} partitions, in-process Kafka), emulator at {}, metrics at http://{}/metrics",
        options.events,
        PARTITIONS,
        stack.emulator.url(),
        admin.addr()
    );
    if let Some(login) = &console_login {
        eprintln!(
            "paysync demo: console at http://{}{} — user {}, one-time password {}",
            admin.addr(),
            crate::console::views::BASE,
            login.user,
            login.password
        );
    }

    let bar = ProgressBar::new(options.events as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ({eta} left) {msg}",
        )
        .expect("a valid template"),
    );
    let started = Instant::now();
    let deadline = started
        + Duration::from_secs(60)
        + Duration::from_secs_f64(options.events as f64 / f64::from(options.rate) * 3.0);
    let mut first_done: Option<Instant> = None;
    let mut committed_to_end = false;
    let probe = stack.commit_probe();
    loop {
        let summary = running.summary();
        let done = summary.finished();
        if done > 0 {
            first_done.get_or_insert_with(Instant::now);
        }
        bar.set_position(done.min(options.events as u64));
        bar.set_message(format!(
            "delivered {}, dead-lettered {}, retried calls {}",
            summary.delivered,
            summary.dead_lettered(),
            summary.retried_calls
        ));
        if done >= messages.len() as u64 {
            let probe = probe.clone();
            committed_to_end =
                tokio::task::spawn_blocking(move || probe.committed_to_end()).await??;
            if committed_to_end {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = first_done
        .map_or(started.elapsed(), |t| t.elapsed())
        .as_secs_f64()
        .max(1e-3);
    bar.finish_and_clear();
    if let (Some(console), Some(login)) = (console, &console_login) {
        eprintln!(
            "paysync demo: the run is over; the console stays up at http://{}{} (user {}, password {}) until Ctrl-C",
            admin.addr(),
            crate::console::views::BASE,
            login.user,
            login.password
        );
        crate::shutdown::signal().await;
        console.stop().await;
    }
    let _ = stop.send(());
    let metrics = running.metrics().clone();
    let summary = running.finished().await;
    admin.stop().await;
    let mut dead_letters_by_reason = metrics.dead_letter_counts();
    dead_letters_by_reason.sort();
    // The day's report, as `paysync reconcile` builds it from the ledger.
    let today = Utc::now().with_timezone(&gmt8::offset()).date_naive();
    let reconciliation = ledger::report::read(&ledger_settings)
        .await
        .map(|entries| ledger::report::reconcile(&entries, today, None, &ledger_settings.reconcile))
        .ok();
    Ok(DemoReport {
        produced: messages.len(),
        republished: republished.len(),
        dead_letters_by_reason,
        duplicate_calls: stack.emulator.gateway().order_counts().2,
        events_per_sec: (summary.delivered + summary.dead_lettered()) as f64 / elapsed,
        p50_ms: latency.quantile_ms(0.5),
        p99_ms: latency.quantile_ms(0.99),
        summary,
        committed_to_end,
        reconciliation,
    })
}

/// The demo console's one login.
struct OneTimeLogin {
    user: &'static str,
    password: String,
    users_file: tempfile::NamedTempFile,
}

impl OneTimeLogin {
    fn new() -> anyhow::Result<OneTimeLogin> {
        use std::io::Write;
        let password = crate::console::auth::random_token()[..16].to_owned();
        let mut users_file = tempfile::NamedTempFile::new()?;
        writeln!(
            users_file,
            "[[user]]\nname = \"demo\"\nrole = \"operator\"\npassword_hash = \"{}\"",
            crate::console::auth::hash_password(&password)
        )?;
        Ok(OneTimeLogin {
            user: "demo",
            password,
            users_file,
        })
    }
}

/// The console on the demo's stack, with the status the replica publishes.
struct DemoConsole {
    console: std::sync::Arc<crate::console::Console>,
    status: Option<crate::status::StatusPublisher>,
}

impl DemoConsole {
    async fn start(
        settings: &crate::config::Settings,
        running: &crate::pipeline::RunningPipeline,
        state: AdminState,
    ) -> anyhow::Result<DemoConsole> {
        let status =
            crate::status::StatusPublisher::start(settings, state, running.producer().clone());
        let console = crate::console::Console::open(settings, running.control().cloned()).await?;
        Ok(DemoConsole { console, status })
    }

    async fn stop(self) {
        if let Some(status) = self.status {
            status.stop().await;
        }
        let console = self.console;
        let _ = tokio::task::spawn_blocking(move || console.close()).await;
    }
}
