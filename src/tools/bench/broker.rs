//! `paysync bench --bootstrap ADDR`: the production binary against a real
//! broker. The benchmark creates its own topics (a source topic and its
//! dead-letter topic, both deleted at the end), produces the backlog, starts
//! the emulator in this process, and runs `paysync run` as a child process:
//! CPU seconds and peak RSS are that child's alone (from `/proc`), not the
//! broker's, the emulator's or the producer's. Latency quantiles come from
//! the child's own `paysync_delivery_latency_seconds` histogram (taken from
//! Kafka → accepted by the API), interpolated within its buckets. The run
//! counts only when every event was accepted and the group's committed
//! offsets reached the end of every partition.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use secrecy::SecretString;

use super::in_process::{baseline, record};
use super::report::{
    BenchReport, LedgerFigures, Throughput, ceiling_per_sec, histogram, mean, quantile, value,
};
use crate::config::Settings;
use crate::event::{OrderType, PaymentEvent};
use crate::ledger::entry::{Entry, KeyField, LedgerKey, Outcome, Path, Position};
use crate::tools::emulator::journal::Journal;
use crate::tools::emulator::{Emulator, Faults, Gateway, GatewaySettings};
use crate::tools::local::{APP_KEY, APP_SECRET};
use crate::top::request::dto_json;

/// What to run against a real broker.
#[derive(Debug, Clone)]
pub struct BrokerBenchOptions {
    pub bootstrap: String,
    pub events: usize,
    pub partitions: i32,
    /// Distinct order ids per partition (events of one order go one after
    /// another); `None`: every event its own order.
    pub orders_per_partition: Option<usize>,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub rate: Option<u32>,
    pub burst: Option<u32>,
    /// Extra settings for the child, each one TOML line with a dotted key
    /// (`delivery.global_window = 2000`); they override the benchmark's own.
    pub settings: Vec<String>,
    /// Ledger entries written before the child starts (0: none): the
    /// child's restore of them is timed.
    pub ledger_entries: usize,
    /// Serve the console in the child, with one group page open (loaded
    /// as often as the page's own refresh does).
    pub console: bool,
}

/// Runs the benchmark; the child is the binary running this one.
pub async fn run(options: BrokerBenchOptions) -> anyhow::Result<BenchReport> {
    ensure!(options.events > 0, "--events must be above 0");
    ensure!(options.partitions > 0, "--partitions must be above 0");
    let suffix = rand::random::<u32>();
    let topic = format!("paysync-bench-{suffix}");
    let dlq = format!("{topic}.dlq");
    // The child's group is the topic's name: this is its ledger.
    let ledger = format!("{topic}.ledger");
    let admin: AdminClient<DefaultClientContext> = client_config(&options.bootstrap)
        .create()
        .context("cannot create a Kafka admin client")?;
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&topic, options.partitions, TopicReplication::Fixed(1)),
                NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .with_context(|| format!("cannot reach the broker at {}", options.bootstrap))?;
    for result in created {
        result.map_err(|(topic, error)| anyhow::anyhow!("cannot create {topic}: {error}"))?;
    }
    if options.ledger_entries > 0 {
        let compacted = NewTopic::new(&ledger, options.partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact");
        for result in admin
            .create_topics(&[compacted], &AdminOptions::new())
            .await?
        {
            result.map_err(|(topic, error)| anyhow::anyhow!("cannot create {topic}: {error}"))?;
        }
        fill_ledger(&options, &ledger).await?;
    }
    let measured = measure(&options, &topic, &dlq).await;
    // Deleted whatever happened: the benchmark leaves the broker as it was
    // (the ledger is there when the child ran with it).
    let _ = admin
        .delete_topics(&[&topic, &dlq, &ledger], &AdminOptions::new())
        .await;
    measured
}

async fn measure(
    options: &BrokerBenchOptions,
    topic: &str,
    dlq: &str,
) -> anyhow::Result<BenchReport> {
    let gateway = Gateway::new(
        GatewaySettings {
            apps: HashMap::from([(APP_KEY.to_owned(), SecretString::from(APP_SECRET))]),
            seed: Some(1),
            ..GatewaySettings::default()
        },
        Faults {
            latency_ms: options.latency_ms,
            ..Faults::default()
        },
        Journal::new(None)?.without_retention(),
    );
    let emulator = Emulator::start("127.0.0.1:0".parse()?, gateway).await?;
    let mut settings = Settings::default();
    settings.top.gateway_url = emulator.url();
    settings.top.app_key = APP_KEY.to_owned();
    settings.top.app_secret = Some(SecretString::from(APP_SECRET));
    let baseline_per_sec =
        baseline(&settings, options.events.min(20_000), options.max_in_flight).await?;
    emulator.gateway().reset_stats();
    // The baseline's calls are in the emulator's counts too.
    let accepted_before = emulator.gateway().order_counts().0;

    produce(options, topic).await?;

    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("paysync-bench-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let mut options = options.clone();
    let password = crate::console::auth::random_token();
    if options.console {
        let users = dir.join("users.toml");
        std::fs::write(
            &users,
            format!(
                "[[user]]\nname = \"bench\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
                crate::console::auth::hash_password(&password)
            ),
        )?;
        options.settings.push("console.enabled = true".to_owned());
        options.settings.push(format!(
            "console.users_file = {:?}",
            users.display().to_string()
        ));
    }
    let options = &options;
    let config = child_config(options, topic, dlq, &emulator.url(), admin_port)?;
    let config_path = dir.join("paysync.toml");
    std::fs::write(&config_path, config)?;
    let child = Child::start(&config_path, &dir)?;
    let page_loads = Arc::new(AtomicUsize::new(0));
    let page = options.console.then(|| {
        tokio::spawn(super::open_page::open_page(
            admin_port,
            password,
            page_loads.clone(),
        ))
    });
    let ledger = if options.ledger_entries > 0 {
        Some(ledger_restored(&child, admin_port, &dir).await?)
    } else {
        None
    };

    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<Instant> = None;
    let last = loop {
        let accepted = emulator.gateway().order_counts().0 - accepted_before;
        if accepted > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if accepted >= options.events {
            break Instant::now();
        }
        if let Some(status) = child.exited()? {
            bail!(
                "paysync run exited ({status}) after {accepted} accepted; its log is in {}",
                dir.display()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "not finished in 15 minutes ({accepted} accepted)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let cpu_seconds = child.cpu_seconds()?;
    let peak_rss_mb = child.peak_rss_mb()?;
    if let Some(page) = page {
        page.abort();
        tracing::warn!(
            page_loads = page_loads.load(Ordering::Relaxed),
            "The console's group page was open during the run."
        );
    }
    let committed_to_end =
        wait_committed_to_end(&options.bootstrap, topic, options.partitions).await?;
    let metrics = get_text(&format!("http://127.0.0.1:{admin_port}/metrics")).await?;
    child.stop().await?;
    // The child's log stays for a failed run: it is where to look first.
    ensure!(
        committed_to_end,
        "the group's committed offsets did not reach the end (paysync run's log: {})",
        dir.join("paysync.log").display()
    );
    let _ = std::fs::remove_dir_all(&dir);

    let Throughput {
        events_per_sec,
        sustained_per_sec,
        max_in_one_second,
    } = Throughput::measure(options.events, first, last, &emulator);
    let buckets = histogram(&metrics, "paysync_delivery_latency_seconds");
    let call_mean = mean(&metrics, "paysync_call_duration_seconds");
    let ceiling = ceiling_per_sec(options.max_in_flight, options.latency_ms);
    Ok(BenchReport {
        mode: "broker",
        events: options.events,
        latency_ms: options.latency_ms,
        max_in_flight: options.max_in_flight,
        rate_limit: options.rate,
        burst: options
            .rate
            .map(|rate| options.burst.unwrap_or((rate / 50).max(1))),
        events_per_sec,
        sustained_per_sec,
        baseline_per_sec,
        ratio: events_per_sec / baseline_per_sec,
        p50_ms: quantile(&buckets, 0.50) * 1000.0,
        p99_ms: quantile(&buckets, 0.99) * 1000.0,
        max_in_one_second,
        peak_rss_mb,
        cpu_seconds: Some(cpu_seconds),
        events_per_cpu_second: Some(options.events as f64 / cpu_seconds.max(1e-3)),
        ceiling_per_sec: ceiling,
        ceiling_ratio: ceiling.map(|c| events_per_sec / c),
        call_mean_ms: call_mean.map(|mean| mean * 1000.0),
        slots_busy_ratio: call_mean
            .map(|mean| events_per_sec * mean / options.max_in_flight as f64),
        commits_per_sec: value(&metrics, "paysync_commits_total").map(|commits| {
            commits
                / last
                    .duration_since(first.unwrap_or(last))
                    .as_secs_f64()
                    .max(1e-3)
        }),
        partitions: options.partitions,
        orders_per_partition: options.orders_per_partition,
        ledger,
        ledger_write_ms: {
            let writes = histogram(&metrics, "paysync_ledger_write_duration_seconds");
            (value(&metrics, "paysync_ledger_write_duration_seconds_count").unwrap_or(0.0) > 0.0)
                .then(|| {
                    (
                        quantile(&writes, 0.50) * 1000.0,
                        quantile(&writes, 0.99) * 1000.0,
                    )
                })
        },
    })
}

/// Writes `--ledger-entries` accepted entries, spread over the partitions.
async fn fill_ledger(options: &BrokerBenchOptions, ledger: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = client_config(&options.bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    let now = chrono::Utc::now();
    for chunk in (0..options.ledger_entries)
        .collect::<Vec<_>>()
        .chunks(20_000)
    {
        let records: Vec<(i32, String, Vec<u8>)> = chunk
            .iter()
            .map(|i| {
                let event = PaymentEvent {
                    car_no: "浙A12345".into(),
                    order_id: format!("bench-ledger-{i}"),
                    park_id: "p1".into(),
                    pay_time: now,
                    order_type: OrderType::Payment,
                    pay_fee: 1000,
                    pay_order_id: Some(format!("pay-{i}")),
                    pay_method: None,
                };
                let partition = (*i as i32) % options.partitions;
                let position = Position {
                    topic: "bench".into(),
                    partition,
                    offset: *i as i64,
                };
                let entry = Entry::of(
                    Outcome::Accepted,
                    &event,
                    &dto_json(&event),
                    position,
                    Path::Live,
                );
                (
                    partition,
                    LedgerKey::of(&event, &KeyField::DEFAULT).text,
                    entry.encode(),
                )
            })
            .collect();
        let sends = records.iter().map(|(partition, key, value)| {
            producer.send(
                FutureRecord::to(ledger)
                    .partition(*partition)
                    .key(key)
                    .payload(value),
                Duration::from_secs(60),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(error, _)| error)
                .context("writing ledger entries")?;
        }
    }
    Ok(())
}

/// Waits until the child restored every ledger partition; the time from its
/// start, the entries and the memory its index takes.
async fn ledger_restored(
    child: &Child,
    admin_port: u16,
    dir: &std::path::Path,
) -> anyhow::Result<LedgerFigures> {
    let deadline = child.started + Duration::from_secs(600);
    loop {
        if let Ok(metrics) = get_text(&format!("http://127.0.0.1:{admin_port}/metrics")).await
            && let (Some(restoring), Some(entries), Some(bytes)) = (
                value(&metrics, "paysync_ledger_restoring_partitions"),
                value(&metrics, "paysync_ledger_entries"),
                value(&metrics, "paysync_ledger_memory_bytes"),
            )
            && restoring == 0.0
            && entries > 0.0
        {
            return Ok(LedgerFigures {
                restore_seconds: child.started.elapsed().as_secs_f64(),
                entries: entries as u64,
                memory_mb: bytes / 1_048_576.0,
                rss_mb: child.peak_rss_mb()?,
            });
        }
        if let Some(status) = child.exited()? {
            bail!(
                "paysync run exited ({status}) during its ledger restore; its log is in {}",
                dir.display()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the ledger restore did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Produces the backlog, event `i` to partition `i % partitions` so every
/// partition gets its share and exactly `orders_per_partition` orders (keys
/// hashed by the partitioner could leave a partition with none).
async fn produce(options: &BrokerBenchOptions, topic: &str) -> anyhow::Result<()> {
    let producer: FutureProducer = client_config(&options.bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let partitions = options.partitions as usize;
    for chunk in (0..options.events).collect::<Vec<_>>().chunks(20_000) {
        let sends = chunk.iter().map(|&index| {
            let partition = index % partitions;
            let order_id = options.orders_per_partition.map(|per| {
                let order = (index / partitions) % per.max(1);
                format!("bench-order-{partition}-{order}")
            });
            let (key, value) = record(index, order_id);
            let producer = producer.clone();
            let topic = topic.to_owned();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .partition(partition as i32)
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(error, _)| error)
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
    }
    Ok(())
}

fn child_config(
    options: &BrokerBenchOptions,
    topic: &str,
    dlq: &str,
    url: &str,
    admin_port: u16,
) -> anyhow::Result<String> {
    let rate = options.rate.unwrap_or(1_000_000);
    let burst = options.rate.map_or(1_000_000, |rate| {
        options.burst.unwrap_or((rate / 50).max(1))
    });
    let base = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{topic}\"\ntopics = [\"{topic}\"]\ndlq_topic = \"{dlq}\"\n\n\
         [top]\ngateway_url = \"{url}\"\napp_key = \"{APP_KEY}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [delivery]\nmax_in_flight = {}\nrate_limit_per_sec = {rate}\nrate_limit_burst = {burst}\n\n\
         [log]\nlevel = \"warn\"\n",
        options.bootstrap, options.max_in_flight,
    );
    let mut config: toml::Table = base.parse().context("the benchmark's own configuration")?;
    for line in &options.settings {
        let extra: toml::Table = line.parse().with_context(|| {
            format!("--set {line:?} is not a TOML line like `delivery.global_window = 2000`")
        })?;
        merge(&mut config, extra);
    }
    Ok(config.to_string())
}

/// Merges `extra` into `base`, table by table; `extra`'s values win.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Whether the group committed every partition's end, waiting up to 30 s.
async fn wait_committed_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<bool> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config(&bootstrap).set("group.id", &topic).create()?;
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            let (_, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            ends.insert(partition, high);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
            let at_end = committed.elements().iter().all(
                // An empty partition has nothing to commit.
                |e| ends.get(&e.partition()) == Some(&0)
                    || matches!(e.offset(), Offset::Offset(o) if Some(&o) == ends.get(&e.partition())),
            );
            if at_end || Instant::now() >= deadline {
                return Ok(at_end);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// A plain-HTTP GET on loopback, read as text.
async fn get_text(uri: &str) -> anyhow::Result<String> {
    let response = crate::top::client::loopback_client()?
        .get(uri)
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "GET {uri}: {}",
        response.status()
    );
    Ok(response.text().await?)
}

/// `paysync run` as a child process.
struct Child {
    child: std::process::Child,
    started: Instant,
}

impl Child {
    fn start(config: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<Child> {
        let log = std::fs::File::create(dir.join("paysync.log"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(config)
            .env("PAYSYNC_TOP__APP_SECRET", APP_SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start paysync run")?;
        Ok(Child {
            child,
            started: Instant::now(),
        })
    }

    fn proc_file(&self, name: &str) -> anyhow::Result<String> {
        let path = PathBuf::from(format!("/proc/{}/{name}", self.child.id()));
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    fn exited(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .proc_file("stat")
            .map_or(Some("gone".to_owned()), |stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .filter(|state| *state == "Z")
                    .map(|_| "exited".to_owned())
            }))
    }

    /// User and system CPU seconds so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = self.proc_file("stat")?;
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .context("unreadable /proc stat")?
            .1
            .split_whitespace()
            .collect();
        // Fields 14 and 15 of stat(5), counted after the command name.
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / clock_ticks_per_second())
    }

    /// The peak resident set (VmHWM), MiB.
    fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = self.proc_file("status")?;
        let kb = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .context("no VmHWM")?
            .parse::<f64>()?;
        Ok(kb / 1024.0)
    }

    /// SIGTERM, then waits for the exit (the final commit included).
    async fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "paysync run did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}
