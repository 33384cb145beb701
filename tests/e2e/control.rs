//! One quota, many callers, against Apache Kafka: a backfill inside the
//! group's budget (and a killed one giving its share back), a hot park
//! beside quiet ones, and live tuning and a park's pause across a restart
//! without a rebalance. Each prints its figures.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use paysync::tools::emulator::{Emulator, Faults, RateLimit};
use rdkafka::admin::{NewTopic, TopicReplication};

use super::support::{Kafka, Process, SECRET, event_in, wait_accepted};
use super::{PARTITIONS, SERIAL, Scenario, paysync_command, wait_owned};

const QUOTA: u32 = 300;

fn quota() -> Faults {
    Faults {
        latency_ms: 2,
        rate_limit: Some(RateLimit {
            calls_per_second: QUOTA,
            burst: None,
            ban_seconds: 2,
        }),
        ..Faults::default()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Produces `per_tick` events of each park every 100 ms until `running` is
/// cleared; order ids carry their park and production time.
fn produce_paced(
    kafka: Kafka,
    topic: String,
    parks: Vec<(String, usize)>,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut produced = 0;
        let mut n = 0usize;
        while running.load(Ordering::Relaxed) {
            tick.tick().await;
            let mut batch = Vec::new();
            for (park, per_tick) in &parks {
                for _ in 0..*per_tick {
                    let id = format!("{park}~{n}~{}", now_ms());
                    n += 1;
                    batch.push((id.clone(), event_in(park, &id, 1)));
                }
            }
            produced += batch.len();
            kafka.produce(&topic, &batch).await;
        }
        produced
    })
}

/// Accepted orders whose id starts with `prefix`, and the waits (produced →
/// accepted) of those accepted after `since_ms`, in seconds.
fn waits(emulator: &Emulator, prefix: &str, since_ms: i64) -> (usize, Vec<f64>) {
    let mut count = 0;
    let mut waits = Vec::new();
    for order in emulator.gateway().orders() {
        let id = order.order["order_id"].as_str().unwrap_or_default();
        if !id.starts_with(prefix) {
            continue;
        }
        count += 1;
        let produced: i64 = id
            .rsplit('~')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let accepted = chrono::DateTime::parse_from_rfc3339(&order.received_at)
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        if accepted >= since_ms && produced > 0 {
            waits.push((accepted - produced) as f64 / 1_000.0);
        }
    }
    (count, waits)
}

fn p99(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * 0.99).ceil() as usize).clamp(1, values.len()) - 1]
}

fn ban_episodes(emulator: &Emulator) -> u64 {
    emulator.gateway().bans()
}

fn shares(replicas: &[Process]) -> f64 {
    replicas
        .iter()
        .filter_map(|r| r.metric("paysync_rate_limit_share_per_sec"))
        .sum()
}

/// A configuration file holding `toml`, for the operator's commands.
fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paysync.toml");
    std::fs::write(&path, toml).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

/// `paysync replay` of all of `topic` as a child process (killable).
fn replay_process(config: &str, topic: &str, rate: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_paysync"))
        .args(["replay", "--config", config, "--topic", topic])
        .env("PAYSYNC_TOP__APP_SECRET", SECRET)
        .env("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_takes_what_live_traffic_leaves_and_a_killed_one_gives_it_back() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("tenants", quota()).await;
    let backfill = format!("{}-backfill", scenario.topic);
    scenario
        .kafka
        .create_topics(&[NewTopic::new(&backfill, 2, TopicReplication::Fixed(1))])
        .await;
    const BACKFILL: usize = 12_000;
    let records: Vec<(String, Vec<u8>)> = (0..BACKFILL)
        .map(|i| {
            let id = format!("backfill~{i}~0");
            (id.clone(), event_in("archive", &id, 1))
        })
        .collect();
    scenario.kafka.produce(&backfill, &records).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 32");
    let rate = QUOTA.to_string();
    let env = [
        ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str()),
        ("RUST_LOG", "info"),
    ];
    let replicas: Vec<Process> = (0..2)
        .map(|_| Process::start_with_env(&config, &env))
        .collect();
    wait_owned(&replicas, PARTITIONS as usize / 2).await;
    let (_dir, path) = config_file(&config.toml());

    // Live traffic at 200/s, then the backfill beside it.
    let live = Arc::new(AtomicBool::new(true));
    let producer = produce_paced(
        scenario.kafka.clone(),
        scenario.topic.clone(),
        vec![("live".to_owned(), 20)],
        live.clone(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let live_alone_from = now_ms();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, live_alone) = waits(&scenario.emulator, "live", live_alone_from);
    let spawned = Instant::now();
    let mut replay = replay_process(&path, &backfill, &rate);
    // Its share is measured once it runs: its first acceptance, then a lease
    // and a refresh or two to settle.
    let deadline = spawned + Duration::from_secs(60);
    while waits(&scenario.emulator, "backfill", 0).0 == 0 {
        assert!(Instant::now() < deadline, "the replay sent nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_sent = spawned.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let bans_before = ban_episodes(&scenario.emulator);
    let beside_from = now_ms();
    let (backfilled_before, _) = waits(&scenario.emulator, "backfill", 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (backfilled_beside, _) = waits(&scenario.emulator, "backfill", 0);
    let (_, live_beside) = waits(&scenario.emulator, "live", beside_from);
    let beside_rate = (backfilled_beside - backfilled_before) as f64 / 10.0;
    // Live traffic stops: the backfill gets the whole quota.
    live.store(false, Ordering::Relaxed);
    let produced_live = producer.await.unwrap();
    // The live group's need is held 3 refreshes, then the backfill's share
    // settles two refreshes after it read that.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (idle_before, _) = waits(&scenario.emulator, "backfill", 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (idle_after, _) = waits(&scenario.emulator, "backfill", 0);
    let alone_rate = (idle_after - idle_before) as f64 / 6.0;
    let bans = ban_episodes(&scenario.emulator) - bans_before;
    // Killed: no goodbye; its lease expires and the live group takes the quota back.
    replay.kill().unwrap();
    replay.wait().unwrap();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    while (shares(&replicas) - f64::from(QUOTA)).abs() > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the live group's shares stayed at {}",
            shares(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let returned = killed.elapsed();
    let (live_delivered, _) = waits(&scenario.emulator, "live", 0);
    println!(
        "e2e tenants: quota {QUOTA}/s, live 200/s: the replay's first call {:.1} s after it started; backfill {beside_rate:.0}/s beside live traffic, {alone_rate:.0}/s alone; ban episodes {bans}; live p99 {:.3} s alone, {:.3} s beside the backfill; live produced {produced_live}, delivered {live_delivered}; the killed backfill's share back in {:.1} s",
        first_sent.as_secs_f64(),
        p99(live_alone),
        p99(live_beside.clone()),
        returned.as_secs_f64()
    );
    // What the live group leaves is about 64/s (300 - 200 × 1.15 - 2 %),
    // less while its measured need runs above 200/s: runs here gave 44 to
    // 60. A starved backfill would get a few per second; one crowding the
    // live group, more than 100.
    assert!(
        (25.0..=140.0).contains(&beside_rate),
        "beside 200/s of live traffic the backfill should get what the live group leaves (300 - 200 × 1.15 - 2 %), got {beside_rate:.0}"
    );
    assert!(
        alone_rate >= 0.85 * f64::from(QUOTA),
        "alone the backfill should get about the quota, got {alone_rate:.0}"
    );
    assert_eq!(bans, 0, "no ban while the callers share the quota");
    assert!(
        returned < Duration::from_secs(12),
        "a lease (6 s) and a settle (2 s) give the share back, took {returned:?}"
    );
    wait_accepted(&scenario.emulator, produced_live).await;
    assert_eq!(live_delivered.max(produced_live), produced_live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_park_waits_for_its_share_and_the_quiet_parks_do_not() {
    let _serial = SERIAL.lock().await;
    // Ten quiet parks at 3/s each; a hot park at the whole quota, ten times
    // all of them together.
    let mut figures = Vec::new();
    for hot in [false, true] {
        let name = if hot { "hot-park" } else { "quiet-parks" };
        let scenario = Scenario::new(name, quota()).await;
        let url = scenario.emulator.url();
        let config = scenario.config(&url, "max_in_flight = 32");
        let rate = QUOTA.to_string();
        let replica = Process::start_with_env(
            &config,
            &[("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str())],
        );
        wait_owned(std::slice::from_ref(&replica), PARTITIONS as usize).await;
        let running = Arc::new(AtomicBool::new(true));
        let quiet_producer = {
            let (kafka, topic, running) = (
                scenario.kafka.clone(),
                scenario.topic.clone(),
                running.clone(),
            );
            // Three events every 100 ms, the parks taking turns: 3/s each.
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut produced = 0;
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let batch: Vec<(String, Vec<u8>)> = (0..3)
                        .map(|_| {
                            let park = format!("quiet{}", n % 10);
                            let id = format!("{park}~{n}~{}", now_ms());
                            n += 1;
                            (id.clone(), event_in(&park, &id, 1))
                        })
                        .collect();
                    produced += batch.len();
                    kafka.produce(&topic, &batch).await;
                }
                produced
            })
        };
        let hot_producer = hot.then(|| {
            produce_paced(
                scenario.kafka.clone(),
                scenario.topic.clone(),
                vec![("hot".to_owned(), QUOTA as usize / 10)],
                running.clone(),
            )
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let from = now_ms();
        tokio::time::sleep(Duration::from_secs(12)).await;
        running.store(false, Ordering::Relaxed);
        let produced = quiet_producer.await.unwrap();
        if let Some(hot) = hot_producer {
            hot.await.unwrap();
        }
        let (_, quiet_waits) = waits(&scenario.emulator, "quiet", from);
        let (hot_count, hot_waits) = waits(&scenario.emulator, "hot", from);
        let (quiet_p99, hot_p99) = (p99(quiet_waits.clone()), p99(hot_waits));
        wait_accepted(&scenario.emulator, produced).await;
        println!(
            "e2e {name}: quiet parks' p99 wait {:.3} s over {} events; hot park {} events accepted, p99 wait {:.3} s; ban episodes {}",
            quiet_p99,
            quiet_waits.len(),
            hot_count,
            hot_p99,
            ban_episodes(&scenario.emulator)
        );
        figures.push((quiet_p99, hot_p99));
    }
    let ((alone, _), (beside_hot, hot)) = (figures[0], figures[1]);
    // The hot park must have built a backlog, or the scenario proves nothing.
    assert!(
        hot >= 0.5,
        "the hot park's p99 wait was {hot:.3} s: no backlog to queue behind"
    );
    // Queued behind the hot park's backlog, a quiet event would wait as long
    // as the hot park's own events. Beside it, the quiet parks may wait a
    // little more than alone, by the busier producer and fetches: their p99
    // alone ranges 16–105 ms from run to run on this machine, so the bound
    // is alone plus that spread, and far below the hot park's wait.
    assert!(
        beside_hot <= alone + 0.15 && beside_hot <= hot / 4.0,
        "the quiet parks waited {beside_hot:.3} s at p99 beside the hot park (whose own p99 was {hot:.3} s), {alone:.3} s without it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tuning_and_a_park_pause_take_effect_in_place_and_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("tuning", Faults::default()).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 32");
    let env = [
        ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", "300"),
        ("RUST_LOG", "info"),
    ];
    let mut replicas: Vec<Process> = (0..2)
        .map(|_| Process::start_with_env(&config, &env))
        .collect();
    wait_owned(&replicas, PARTITIONS as usize / 2).await;
    let (_dir, path) = config_file(&config.toml());
    let assignments: Vec<usize> = replicas
        .iter()
        .map(|r| r.log().matches("Partition assigned.").count())
        .collect();

    // Halve the rate and restore it: in place, within a refresh.
    let set_at = Instant::now();
    let (code, out) = paysync_command(&[
        "control",
        "set",
        "--config",
        &path,
        "rate=150",
        "--why",
        "incident at Miaojie",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    while (shares(&replicas) - 150.0).abs() > 1.0 {
        assert!(
            set_at.elapsed() < Duration::from_secs(10),
            "{}",
            shares(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let halved_in = set_at.elapsed();
    let ready = replicas[1].readiness();
    assert!(
        ready.contains(r#""delivery.rate_limit_per_sec":"150""#)
            && ready.contains(r#""version":1"#),
        "the readiness detail shows the tuned settings: {ready}"
    );
    let (code, out) = paysync_command(&["control", "set", "--config", &path, "rate="]).await;
    assert_eq!(code, Some(0), "{out}");
    while (shares(&replicas) - 300.0).abs() > 1.0 {
        assert!(set_at.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after: Vec<usize> = replicas
        .iter()
        .map(|r| r.log().matches("Partition assigned.").count())
        .collect();
    assert_eq!(assignments, after, "a tuning moves no partition");
    let version = replicas[0].metric("paysync_control_version");

    // A park paused: its events wait, the others flow.
    let (code, out) = paysync_command(&[
        "control",
        "pause",
        "--config",
        &path,
        "--park",
        "held",
        "--why",
        "wrong data",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}");
    let mut records = Vec::new();
    for i in 0..600 {
        let id = format!("flows-{i}");
        records.push((id.clone(), event_in("flows", &id, 1)));
        if i % 10 == 0 {
            let id = format!("held-{i}");
            records.push((id.clone(), event_in("held", &id, 1)));
            records.push((id.clone(), event_in("held", &id, 2)));
        }
    }
    scenario.kafka.produce(&scenario.topic, &records).await;
    let accepted = |prefix: &str| {
        scenario
            .accepted_ids()
            .iter()
            .filter(|id| id.starts_with(prefix))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted("flows") < 600 {
        assert!(Instant::now() < deadline, "flows: {}", accepted("flows"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A replica killed and started again while the pause holds.
    replicas.pop().unwrap().kill();
    replicas.push(Process::start_with_env(&config, &env));
    wait_owned(&replicas, PARTITIONS as usize / 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held: f64 = replicas
        .iter()
        .filter_map(|r| r.metric("paysync_events_held"))
        .sum();
    let held_sent = accepted("held");
    let committed = scenario.committed();
    let ends = scenario.end_offsets();
    assert_eq!(held_sent, 0, "nothing of the paused park was sent");
    assert_eq!(
        held, 60.0,
        "each held order's first event waits (its second waits behind it)"
    );
    assert!(
        committed.iter().any(|(p, c)| c < &ends[p]),
        "nothing is committed past a held event: {committed:?} of {ends:?}"
    );

    let (code, out) =
        paysync_command(&["control", "resume", "--config", &path, "--park", "held"]).await;
    assert_eq!(code, Some(0), "{out}");
    scenario.wait_committed_to_end().await;
    let orders = scenario.emulator.gateway().orders();
    let mut types: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for order in &orders {
        types
            .entry(order.order["order_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(order.order["order_type"].as_i64().unwrap());
    }
    let out_of_order: HashSet<&String> = types
        .iter()
        .filter(|(id, seen)| id.starts_with("held") && seen.as_slice() != [1, 2])
        .map(|(id, _)| id)
        .collect();
    let (_, unique, duplicates) = scenario.emulator.gateway().order_counts();
    let (code, show) = paysync_command(&["control", "show", "--config", &path]).await;
    assert_eq!(code, Some(0), "{show}");
    println!(
        "e2e tuning: rate halved across 2 replicas in {:.2} s, no partition moved (assignments {assignments:?}), control version {version:?}; park paused: 600 others delivered, 0 of it sent, {held} held across a restart; resumed: {} delivered, {} out of order, duplicates {duplicates}, committed to the end",
        halved_in.as_secs_f64(),
        unique,
        out_of_order.len()
    );
    assert!(out_of_order.is_empty(), "{out_of_order:?}");
    assert_eq!(unique, records.len());
    assert!(
        show.contains("incident at Miaojie") && show.contains("paused park held"),
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adaptive_backfill_beside_the_adaptive_group_learns_one_quota_and_bans_no_more() {
    let _serial = SERIAL.lock().await;
    // The phases of the live-only scenario (quota.rs), to compare with it.
    const PHASE: Duration = Duration::from_secs(40);
    const QUOTAS: [u32; 3] = [300, 150, 450];
    let scenario = Scenario::new("adaptive-tenants", super::quota::quota(QUOTAS[0])).await;
    let live = super::support::valid_events("live", 36_000);
    scenario.kafka.produce(&scenario.topic, &live).await;
    let backfill = format!("{}-backfill", scenario.topic);
    scenario
        .kafka
        .create_topics(&[NewTopic::new(&backfill, 2, TopicReplication::Fixed(1))])
        .await;
    let archived = super::support::valid_events("backfill", 10_000);
    scenario.kafka.produce(&backfill, &archived).await;
    // As the live-only scenario (quota.rs).
    let (replicas, toml) = super::quota::adaptive_group(&scenario).await;
    let (_dir, path) = config_file(&toml);
    let mut replay = replay_process(&path, &backfill, super::quota::ADAPTIVE_CEILING);
    let mut phases = Vec::new();
    for quota in QUOTAS {
        super::quota::set_quota(&scenario, quota).await;
        let bans_before = ban_episodes(&scenario.emulator);
        let (backfilled_before, _) = waits(&scenario.emulator, "backfill", 0);
        tokio::time::sleep(PHASE).await;
        let ended = super::quota::unix_now();
        let bans = ban_episodes(&scenario.emulator) - bans_before;
        let (backfilled, _) = waits(&scenario.emulator, "backfill", 0);
        let per_second = scenario.emulator.gateway().stats().accepted_per_second;
        let used =
            super::quota::accepted_between(&per_second, ended - 20, ended) / f64::from(quota);
        println!(
            "e2e adaptive-tenants: quota {quota}/s for {} s: {used:.3} of it used in the last 20 s by the group and the backfill ({:.0}/s of it the backfill's), {bans} ban episodes",
            PHASE.as_secs(),
            (backfilled - backfilled_before) as f64 / PHASE.as_secs_f64()
        );
        phases.push((quota, used, bans));
    }
    replay.kill().unwrap();
    replay.wait().unwrap();
    drop(replicas);
    for (quota, used, bans) in phases {
        assert!(used >= 0.85, "quota {quota}/s: {used:.3} used");
        // The live group alone meets at most 3 a phase (quota.rs).
        assert!(bans <= 3, "quota {quota}/s: {bans} ban episodes");
    }
}
