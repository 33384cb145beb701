//! The gateway's quota as the group's ceiling, against Apache Kafka: a topic
//! that grows under load, the adaptive rate following a quota that changes at
//! run time, and the default burst at the quota. Each prints its figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paysync::tools::emulator::{Faults, RateLimit};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;

use super::support::{Process, valid_events, wait_accepted};
use super::{PARTITIONS, SERIAL, Scenario, wait_owned};

/// The emulator's flow control: a bucket of `quota` refilled at `quota`/s,
/// 2 s bans.
pub(super) fn quota(quota: u32) -> Faults {
    Faults {
        latency_ms: 2,
        rate_limit: Some(RateLimit {
            calls_per_second: quota,
            burst: None,
            ban_seconds: 2,
        }),
        ..Faults::default()
    }
}

/// The replicas' shares of the rate, summed, and whether all answered.
fn shares(replicas: &[Process]) -> Option<f64> {
    replicas
        .iter()
        .map(|r| r.metric("paysync_rate_limit_share_per_sec"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_grown_under_load_keeps_the_classic_group_within_its_quota() {
    topic_growth("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_grown_under_load_keeps_the_kip_848_group_within_its_quota() {
    topic_growth("consumer").await;
}

async fn topic_growth(protocol: &str) {
    let _serial = SERIAL.lock().await;
    const QUOTA: u32 = 300;
    const GROWN: i32 = PARTITIONS + 3;
    let name = format!("growth-{protocol}");
    let scenario = Scenario::new(&name, quota(QUOTA)).await;
    let before = valid_events(&format!("{name}-before"), 3_000);
    scenario.kafka.produce(&scenario.topic, &before).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 32");
    let rate = QUOTA.to_string();
    let env = [
        ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str()),
        ("PAYSYNC_KAFKA__GROUP_PROTOCOL", protocol),
        ("RUST_LOG", "info"),
    ];
    let replicas: Vec<Process> = (0..3)
        .map(|_| Process::start_with_env(&config, &env))
        .collect();
    wait_owned(&replicas, 2).await;
    let admin: AdminClient<DefaultClientContext> = scenario.kafka.client_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let grown_at = Instant::now();
    for result in admin
        .create_partitions(
            &[NewPartitions::new(&scenario.topic, GROWN as usize)],
            &options,
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // Keys spread over all partitions, the new ones included.
    let after = valid_events(&format!("{name}-after"), 1_500);
    scenario.kafka.produce(&scenario.topic, &after).await;
    let ends = scenario.kafka.end_offsets(&scenario.topic, GROWN);
    assert!(
        (PARTITIONS..GROWN).all(|p| ends[&p] > 0),
        "every new partition has events: {ends:?}"
    );
    // Until everything is committed: the shares' sum, when every new
    // partition has an owner (and is fetched from), and when the new
    // partitions' events are first committed (behind the backlog's).
    let new_ids: Vec<String> = (PARTITIONS..GROWN)
        .map(|p| format!("partition={}/{p}", scenario.topic))
        .collect();
    let mut highest: f64 = 0.0;
    let mut assigned_at: Option<Duration> = None;
    let mut back_at_quota: Option<Duration> = None;
    let mut committed_at: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(sum) = shares(&replicas) {
            highest = highest.max(sum);
            if assigned_at.is_some() && back_at_quota.is_none() && sum >= f64::from(QUOTA) - 1.0 {
                back_at_quota = Some(grown_at.elapsed());
            }
        }
        if assigned_at.is_none() {
            let logs: Vec<String> = replicas.iter().map(Process::log).collect();
            let owned = |id: &String| {
                logs.iter().any(|log| {
                    log.lines().any(|l| {
                        l.contains("Partition assigned.") && l.split_whitespace().any(|w| w == id)
                    })
                })
            };
            if new_ids.iter().all(owned) {
                assigned_at = Some(grown_at.elapsed());
            }
        }
        let committed = scenario
            .kafka
            .committed(&scenario.group, &scenario.topic, GROWN);
        if committed_at.is_none() && (PARTITIONS..GROWN).all(|p| committed[&p] > 0) {
            committed_at = Some(grown_at.elapsed());
        }
        if committed == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not committed to the end: {committed:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bans = scenario.emulator.gateway().bans();
    for replica in replicas {
        replica.signal("TERM");
        assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
    }
    let accepted = scenario.accepted_ids();
    let lost = before
        .iter()
        .chain(&after)
        .filter(|(id, _)| !accepted.contains(id))
        .count();
    let assigned_at = assigned_at.expect("the new partitions were assigned");
    let seconds = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "e2e growth ({protocol}): {PARTITIONS} → {GROWN} partitions under load at a {QUOTA}/s quota; highest sum of shares {highest:.1}/s; new partitions owned and fetched {:.1} s after the growth, shares back at the quota {:.1} s after it, first new events committed {:.1} s after it (behind the backlog); {bans} bans, {lost} lost",
        assigned_at.as_secs_f64(),
        seconds(back_at_quota),
        seconds(committed_at)
    );
    scenario.report(before.len() + after.len());
    // Idle buckets (a replica owning nothing countable) hold a token every 10 s.
    assert!(
        highest <= f64::from(QUOTA) + 0.5,
        "the shares summed to {highest:.1}/s"
    );
    assert!(
        back_at_quota.is_some(),
        "the shares never added up to the quota again"
    );
    assert!(
        assigned_at <= Duration::from_secs(10),
        "new partitions waited {assigned_at:?}"
    );
    assert_eq!(bans, 0);
    assert_eq!(lost, 0);
    assert!(scenario.dead_letters().is_empty());
}

/// Accepted calls per wall-clock second over `[from, to)` unix seconds.
/// Three adaptive replicas whose ceiling is above every phase's quota
/// (nobody tells paysync the quota), once each owns its partitions; and
/// their configuration file's text.
pub(super) async fn adaptive_group(scenario: &Scenario) -> (Vec<Process>, String) {
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 32\nrate_limit_mode = \"adaptive\"");
    let env = [("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", ADAPTIVE_CEILING)];
    let replicas: Vec<Process> = (0..3)
        .map(|_| Process::start_with_env(&config, &env))
        .collect();
    wait_owned(&replicas, 2).await;
    (replicas, config.toml())
}

/// The adaptive scenarios' ceiling, calls/s.
pub(super) const ADAPTIVE_CEILING: &str = "600";

/// Changes the emulator's quota as an operator would: through its control API.
pub(super) async fn set_quota(scenario: &Scenario, quota: u32) {
    let faults_url = format!("http://{}/emulator/faults", scenario.emulator.addr());
    let answer = paysync::top::client::loopback_client()
        .unwrap()
        .put(&faults_url)
        .header("content-type", "application/json")
        .body(serde_json::to_string(&self::quota(quota)).unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{faults_url}: {}",
        answer.status()
    );
}

pub(super) fn accepted_between(per_second: &BTreeMap<i64, u64>, from: i64, to: i64) -> f64 {
    let calls: u64 = per_second.range(from..to).map(|(_, n)| n).sum();
    calls as f64 / (to - from) as f64
}

pub(super) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_adaptive_rate_follows_a_quota_that_changes_at_run_time() {
    let _serial = SERIAL.lock().await;
    const PHASE: Duration = Duration::from_secs(40);
    const QUOTAS: [u32; 3] = [300, 150, 450];
    let scenario = Scenario::new("adaptive", quota(QUOTAS[0])).await;
    let records = valid_events("adaptive", 40_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let (replicas, _) = adaptive_group(&scenario).await;
    let mut phases = Vec::new();
    for quota in QUOTAS {
        set_quota(&scenario, quota).await;
        let started = unix_now();
        let bans_before = scenario.emulator.gateway().bans();
        tokio::time::sleep(PHASE).await;
        let ended = unix_now();
        let bans = scenario.emulator.gateway().bans() - bans_before;
        let per_second = scenario.emulator.gateway().stats().accepted_per_second;
        let used = accepted_between(&per_second, ended - 20, ended) / f64::from(quota);
        let learned: Vec<f64> = replicas
            .iter()
            .filter_map(|r| r.metric("paysync_rate_limit_learned_per_sec"))
            .collect();
        println!(
            "e2e adaptive: quota {quota}/s for {} s: {:.3} of it used in the last 20 s, {bans} bans; learned {learned:.0?}",
            ended - started,
            used
        );
        phases.push((quota, used, bans));
    }
    wait_accepted(&scenario.emulator, records.len()).await;
    scenario.wait_committed_to_end().await;
    for replica in replicas {
        replica.signal("TERM");
        assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
    }
    scenario.report(records.len());
    let accepted = scenario.accepted_ids();
    assert!(
        records.iter().all(|(id, _)| accepted.contains(id)),
        "nothing is lost"
    );
    assert!(
        scenario.dead_letters().is_empty(),
        "nothing is dead-lettered"
    );
    for (quota, used, bans) in phases {
        assert!(used >= 0.9, "quota {quota}/s: {used:.3} used");
        assert!(bans <= 3, "quota {quota}/s: {bans} bans");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_at_the_quota_with_the_default_burst_draw_no_ban() {
    let _serial = SERIAL.lock().await;
    const QUOTA: u32 = 300;
    const RUNS: usize = 5;
    const RUN: Duration = Duration::from_secs(12);
    let scenario = Scenario::new("default-burst", quota(QUOTA)).await;
    let records = valid_events("default-burst", 20_000);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 64");
    let rate = QUOTA.to_string();
    let env = [("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str())];
    let mut bans_per_run = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let bans_before = scenario.emulator.gateway().bans();
        let accepted_before = scenario.emulator.gateway().order_counts().0;
        // Each run starts the group again: joining replicas resize their buckets.
        let replicas: Vec<Process> = (0..3)
            .map(|_| Process::start_with_env(&config, &env))
            .collect();
        let started = Instant::now();
        tokio::time::sleep(RUN).await;
        for replica in replicas {
            replica.signal("TERM");
            assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
        }
        let accepted = scenario.emulator.gateway().order_counts().0 - accepted_before;
        rates.push(accepted as f64 / started.elapsed().as_secs_f64());
        bans_per_run.push(scenario.emulator.gateway().bans() - bans_before);
    }
    println!(
        "e2e default burst: 3 replicas at a {QUOTA}/s quota, {RUNS} runs of {} s: bans {bans_per_run:?}, calls/s accepted {:.0?}",
        RUN.as_secs(),
        rates
    );
    assert!(bans_per_run.iter().all(|b| *b == 0), "{bans_per_run:?}");
}
