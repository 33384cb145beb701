//! Delivery against the mock cluster and the emulator: every event reaches
//! the API or the dead-letter topic, outages and bad configuration dead-letter
//! nothing, order and rate hold, rebalances, crashes and signals lose nothing.
//! One behaviour per test.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use paysync::config::Settings;
use paysync::dead_letter::header;
use paysync::pipeline::gate::BreakerState;
use paysync::pipeline::{Pipeline, Source, StartError};
use paysync::tools::emulator::{Faults, RateLimit};
use paysync::top::classify::HaltCause;
use secrecy::SecretString;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_delivers_every_event_of_many_partitions_and_commits_the_end() {
    let harness = Harness::new(6, Faults::default()).await;
    let events = valid_events("ok", 600);
    harness.produce(&events).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("600 deliveries", |s| s.delivered == 600)
        .await;
    let ends = harness.end_offsets();
    wait_committed(&harness, &ends).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    let accepted: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
    assert_eq!(accepted, events.iter().map(|(k, _)| k.clone()).collect());
    assert_eq!(ends.values().sum::<i64>(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_goes_to_the_dlq_with_every_header_and_does_not_block_its_partition() {
    let faults = Faults {
        reject_order_ids: vec!["refused-by-api".into()],
        ..Faults::default()
    };
    let harness = Harness::new(1, faults).await;
    let mut records = valid_events("before", 20);
    records.push(("bad-json".into(), b"{not json".to_vec()));
    records.push((
        "negative-fee".into(),
        event("negative-fee", 1)
            .into_iter()
            .collect::<Vec<u8>>()
            .replace_fee(),
    ));
    records.push(("refused-by-api".into(), event("refused-by-api", 1)));
    records.extend(valid_events("after", 20));
    harness.produce(&records).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("40 deliveries and 3 dead letters", |s| {
            s.delivered == 40 && s.dead_lettered() == 3
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered_invalid_event, 2);
    assert_eq!(summary.dead_lettered_rejected, 1);

    let dead = harness.dead_letters();
    assert_eq!(dead.len(), 3);
    let by_offset: HashMap<String, &DeadLetter> = dead
        .iter()
        .map(|d| (d.1[header::SOURCE_OFFSET].clone(), d))
        .collect();
    let (value, headers) = by_offset["20"];
    assert_eq!(
        value.as_deref(),
        Some(&b"{not json"[..]),
        "the original value is kept unchanged"
    );
    assert_eq!(headers[header::CLASS], "invalid_event");
    assert!(headers[header::MESSAGE].contains("not valid JSON"));
    assert_eq!(
        headers["source-system"], "parking-platform",
        "original headers are kept"
    );
    let (_, headers) = by_offset["21"];
    assert!(headers[header::MESSAGE].contains("pay_fee"), "{headers:?}");
    let (_, headers) = by_offset["22"];
    assert_eq!(headers[header::CLASS], "rejected");
    assert_eq!(headers[header::REASON], "business_rejected");
    assert_eq!(headers[header::TOP_CODE], "404");
    assert_eq!(headers[header::ATTEMPTS], "1");
    assert_eq!(headers[header::TOP_REQUEST_ID].len(), 13);
    for name in [
        header::SOURCE_TOPIC,
        header::SOURCE_PARTITION,
        header::SOURCE_TIMESTAMP,
        header::CONSUMER_GROUP,
        header::FIRST_ATTEMPT_AT,
        header::LAST_ATTEMPT_AT,
        header::DEAD_LETTERED_AT,
    ] {
        assert!(headers.contains_key(name), "{name} missing: {headers:?}");
    }
    assert_eq!(headers[header::CONSUMER_GROUP], harness.group);
    for (_, headers) in &dead {
        for value in headers.values() {
            assert!(
                !value.contains(SECRET),
                "the secret leaked into a dead letter"
            );
        }
        assert!(
            !headers.keys().any(|k| k.contains("sign")),
            "no signature header"
        );
    }
}

trait ReplaceFee {
    fn replace_fee(self) -> Vec<u8>;
}

impl ReplaceFee for Vec<u8> {
    fn replace_fee(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("\"pay_fee\":1000", "\"pay_fee\":-5")
            .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_then_committed() {
    let faults = Faults {
        isp_error_rate: 0.3,
        unavailable_rate: 0.1,
        http_502_rate: 0.1,
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    harness.produce(&valid_events("flaky", 200)).await;
    let mut settings = harness.settings();
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("200 deliveries", |s| s.delivered == 200)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    assert!(
        summary.retried_calls > 20,
        "faults were injected: {summary:?}"
    );
    assert_eq!(summary.calls, summary.delivered + summary.retried_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_total_gateway_outage_dead_letters_nothing_and_delivery_resumes() {
    let harness = Harness::new(
        2,
        Faults {
            drop_connection_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("outage", 100)).await;
    let mut settings = harness.settings();
    settings.delivery.max_attempts = 3;
    settings.delivery.breaker_failure_threshold = 5;
    let running = Running::start(settings).await;
    running
        .wait_for("the breaker to see failures", |s| s.retried_calls >= 5)
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while running.gate.status().breaker == BreakerState::Closed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for many probes and far more than max_attempts per event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = running.summary();
    assert_eq!(
        during.dead_lettered(),
        0,
        "an outage is not poison: {during:?}"
    );
    assert_eq!(during.delivered, 0);
    assert_eq!(
        harness.committed().values().sum::<i64>(),
        0,
        "nothing committed past unsent messages"
    );
    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    running.wait_for("recovery", |s| s.delivered == 100).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    assert_eq!(running.gate.status().breaker, BreakerState::Closed);
    assert_eq!(running.stop().await.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_halts_with_zero_dead_letters() {
    let harness = Harness::new(2, Faults::default()).await;
    harness.produce(&valid_events("halt", 50)).await;
    let mut settings = harness.settings();
    settings.top.app_secret = Some(SecretString::from("not-the-secret"));
    let running = Running::start(settings).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while running.gate.status().halted.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never halted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running.gate.status().halted, Some(HaltCause::Signature));
    // Calls already under way finish; after that only one probe per interval (500 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_when_halted = running.summary().calls;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = running.summary();
    assert_eq!(summary.dead_lettered(), 0);
    assert_eq!(summary.delivered, 0);
    assert!(
        summary.calls - calls_when_halted <= 5,
        "a halt probes slowly: {summary:?}"
    );
    assert_eq!(harness.committed().values().sum::<i64>(), 0);
    let summary = running.stop().await;
    assert_eq!(summary.dead_lettered(), 0);
    assert!(harness.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_7_ban_pauses_every_call_for_the_announced_time() {
    let faults = Faults {
        rate_limit: Some(RateLimit {
            calls_per_second: 30,
            burst: None,
            ban_seconds: 2,
        }),
        ..Faults::default()
    };
    let harness = Harness::new(4, faults).await;
    harness.produce(&valid_events("ban", 120)).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 8;
    settings.delivery.max_attempts = 2;
    let running = Running::start(settings).await;
    running
        .wait_for("120 deliveries", |s| s.delivered == 120)
        .await;
    let summary = running.stop().await;
    assert_eq!(
        summary.dead_lettered(),
        0,
        "waiting for a ban spends no attempts"
    );
    let stats = harness.stack.emulator.gateway().stats();
    let bans = stats.answers.get("error_7").copied().unwrap_or(0);
    assert!(bans >= 1, "the limit was reached: {stats:?}");
    // Everyone waits for the ban: only the calls already in flight meet it.
    let windows = 120 / 30;
    assert!(
        bans <= (8 + 1) * windows as u64,
        "calls kept hitting the ban: {bans}"
    );
    // Accepted orders never arrive during a ban: each 2 s ban follows at most 30 accepted.
    let times: Vec<chrono::DateTime<chrono::Utc>> = harness
        .stack
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| o.received_at.parse().unwrap())
        .collect();
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= chrono::Duration::seconds(2 * (windows as i64 - 1)),
        "bans were honoured: {span}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_never_overtakes_its_payment() {
    let faults = Faults {
        latency_ms: 1,
        latency_jitter_ms: 20,
        isp_error_rate: 0.2,
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    let mut records = Vec::new();
    for i in 0..60 {
        let order = format!("ord-{i}");
        records.push((order.clone(), event(&order, 1)));
        records.push((order.clone(), event(&order, 2)));
    }
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 64;
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("120 deliveries", |s| s.delivered == 120)
        .await;
    running.stop().await;
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for order in harness.stack.emulator.gateway().orders() {
        seen.entry(order.order["order_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(order.order["order_type"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), 60);
    for (order, types) in seen {
        assert_eq!(
            types,
            vec![1, 2],
            "{order}: the refund overtook the payment"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_holds() {
    let harness = Harness::new(2, Faults::default()).await;
    harness.produce(&valid_events("rate", 150)).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 50;
    settings.delivery.rate_limit_burst = Some(5);
    let running = Running::start(settings).await;
    running
        .wait_for("150 deliveries", |s| s.delivered == 150)
        .await;
    running.stop().await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = harness
        .stack
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| o.received_at.parse().unwrap())
        .collect();
    // In any one-second window, no more than the rate plus the burst, with
    // 100 ms of allowance (5 calls) for when the emulator stamps a call: on
    // a loaded machine a few admitted calls are received in a bunch.
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t - *start < chrono::Duration::seconds(1))
            .count();
        assert!(
            in_window <= 50 + 5 + 5,
            "{in_window} calls within one second"
        );
    }
    // And over the whole run the rate holds: 150 calls take at least
    // (150 - burst) / rate seconds.
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= chrono::Duration::milliseconds(2_900 - 200),
        "150 calls in {span}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_of_one_group_split_the_rate_by_their_partitions() {
    let harness = Harness::new(4, Faults::default()).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 1_000;
    let first = Running::start(settings.clone()).await;
    wait_until("the first replica owns every partition", || {
        first.assigned_partitions() == 4
    })
    .await;
    assert_eq!(first.rate_share(), 1_000.0);
    let second = Running::start(settings.clone()).await;
    wait_until("two partitions each", || {
        first.assigned_partitions() == 2 && second.assigned_partitions() == 2
    })
    .await;
    assert_eq!((first.rate_share(), second.rate_share()), (500.0, 500.0));
    second.stop().await;
    wait_until("the survivor's share grows back", || {
        first.assigned_partitions() == 4 && first.rate_share() == 1_000.0
    })
    .await;
    first.stop().await;

    settings.delivery.rate_limit_scope = paysync::config::RateLimitScope::Replica;
    let alone = Running::start(settings).await;
    wait_until("an assignment", || alone.assigned_partitions() == 4).await;
    assert_eq!(alone.rate_share(), 1_000.0, "a replica's own quota");
    alone.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cooperative_assignment_a_joining_replica_takes_partitions_without_stopping_the_others()
 {
    let harness = Harness::new(
        4,
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    let mut events = valid_events("coop", 600);
    let later = events.split_off(400);
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.kafka.consumer.insert(
        "partition.assignment.strategy".into(),
        "cooperative-sticky".into(),
    );
    // About 100 events/s: the stream is still flowing when the second joins.
    settings.delivery.max_in_flight = 2;
    let first = Running::start(settings.clone()).await;
    wait_until("the first replica owns every partition", || {
        first.assigned_partitions() == 4
    })
    .await;
    let second = Running::start(settings).await;
    // Only the partitions that move are revoked: the first replica never
    // drops to zero while the second joins.
    let mut fewest = usize::MAX;
    wait_until("two partitions each", || {
        fewest = fewest.min(first.assigned_partitions());
        first.assigned_partitions() == 2 && second.assigned_partitions() == 2
    })
    .await;
    assert_eq!(fewest, 2, "an incremental revocation, not a full one");
    // Events for every partition after the move: each replica has work.
    harness.produce(&later).await;
    events.extend(later);
    wait_until("every event delivered", || {
        first.summary().delivered + second.summary().delivered >= 600
    })
    .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let (a, b) = (first.stop().await, second.stop().await);
    assert!(b.delivered > 0, "the joining replica took its share: {b:?}");
    let accepted: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
    assert_eq!(accepted, events.iter().map(|(k, _)| k.clone()).collect());
    assert_eq!(a.dead_lettered() + b.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kip_848_consumer_protocol_delivers_and_commits() {
    let harness = Harness::new(3, Faults::default()).await;
    let events = valid_events("kip848", 300);
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.kafka.group_protocol = paysync::config::GroupProtocol::Consumer;
    let running = Running::start(settings).await;
    running
        .wait_for("300 deliveries", |s| s.delivered == 300)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    assert_eq!(harness.accepted_order_ids().len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_consumer_joining_mid_stream_loses_nothing() {
    let harness = Harness::new(
        6,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let events = valid_events("join", 800);
    harness.produce(&events[..400]).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 4;
    let first = Running::start(settings.clone()).await;
    first
        .wait_for("some deliveries", |s| s.delivered >= 50)
        .await;
    let second = Running::start(settings).await;
    // The second half is published once the second consumer is in the
    // group: some of it is its own to deliver.
    second
        .wait_for("joining the group", |s| s.rebalances >= 1)
        .await;
    harness.produce(&events[400..]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let accepted: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
        if accepted.len() == events.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} delivered",
            accepted.len(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_committed(&harness, &harness.end_offsets()).await;
    let (a, b) = (first.stop().await, second.stop().await);
    assert!(a.rebalances >= 1, "the first consumer saw the rebalance");
    assert!(
        b.delivered > 0,
        "the second consumer took partitions over: {b:?}"
    );
    // What the first delivered and the rebalance left uncommitted, the
    // ledger keeps the second from sending again.
    let (_, distinct, duplicates) = harness.stack.emulator.gateway().order_counts();
    assert_eq!(
        (distinct, duplicates),
        (800, 0),
        "first {a:?}, second {b:?}"
    );
    assert_eq!(a.dead_lettered() + b.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_and_commits_so_a_restart_sends_nothing_again() {
    let harness = Harness::new(
        3,
        Faults {
            latency_ms: 20,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("drain", 150)).await;
    let mut settings = harness.settings();
    settings.kafka.commit_interval_ms = Duration::from_millis(60_000);
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("all deliveries", |s| s.delivered == 150)
        .await;
    running.stop().await;
    assert_eq!(
        harness.committed(),
        harness.end_offsets(),
        "the final commit covers everything delivered"
    );
    let again = Running::start(settings).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = again.stop().await;
    assert_eq!(summary.consumed, 0, "nothing was redelivered: {summary:?}");
    assert_eq!(
        harness.stack.emulator.gateway().order_counts(),
        (150, 150, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_redelivers_everything_uncommitted_and_loses_nothing() {
    let harness = Harness::new(
        3,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("crash", 500)).await;
    let url = harness.stack.emulator.url();
    let config = harness.run_config(&url, "max_in_flight = 8", "");
    // What the commits alone bring back; the ledger's share is tests/e2e/ledger.rs's.
    let without_ledger = [("PAYSYNC_LEDGER__MODE", "off")];
    let process = Process::start_with_env(&config, &without_ledger);
    wait_accepted(&harness.stack.emulator, 150).await;
    process.kill(); // SIGKILL: no drain, no final commit.
    let accepted_before = harness.stack.emulator.gateway().order_counts().0;
    let committed_at_crash: i64 = harness.committed().values().sum();
    assert!(committed_at_crash < 500, "the crash came before the end");
    assert!(
        committed_at_crash as usize <= accepted_before,
        "nothing is committed before it is accepted"
    );

    // The committed offsets and their completion maps: what the group knows is finished.
    let known_at_crash = harness
        .kafka
        .known_finished(&harness.group, SOURCE, harness.partitions);
    assert!(known_at_crash >= committed_at_crash);
    assert!(
        known_at_crash as usize <= accepted_before,
        "nothing is claimed finished before it is accepted"
    );

    let restarted = Process::start_with_env(&config, &without_ledger);
    wait_accepted(&harness.stack.emulator, 500).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    restarted.signal("TERM");
    assert_eq!(restarted.wait_exit(Duration::from_secs(20)).await, Some(0));

    let (accepted, unique, duplicates) = harness.stack.emulator.gateway().order_counts();
    assert_eq!(unique, 500, "nothing lost");
    // What the group did not know finished is sent again: no more, except
    // the calls (at most max_in_flight = 8) the gateway answered after the
    // kill, which count here as sent after the restart.
    let sent_after_restart = accepted as i64 - accepted_before as i64;
    let unknown = 500 - known_at_crash;
    assert!(
        (unknown..=unknown + 8).contains(&sent_after_restart),
        "{sent_after_restart} sent again, {unknown} not known finished ({committed_at_crash} committed, {known_at_crash} known finished)"
    );
    println!(
        "crash: accepted {accepted}, unique {unique}, duplicates {duplicates}, committed {committed_at_crash}, known finished {known_at_crash}"
    );
    assert!(harness.dead_letters().is_empty());
}

/// One partition, and a gateway that fails every call of order `stuck-0`.
async fn with_a_stuck_order() -> Harness {
    Harness::new(
        1,
        Faults {
            fail_order_ids: vec!["stuck-0".into()],
            ..Faults::default()
        },
    )
    .await
}

/// The stuck event keeps retrying until shutdown, which gives it up quickly.
fn retrying_until_shutdown(mut settings: Settings) -> Settings {
    settings.delivery.max_attempts = 1_000;
    settings.delivery.max_retry_elapsed_ms = Duration::from_secs(600);
    settings.delivery.shutdown_drain_timeout_ms = Duration::from_millis(500);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_event_does_not_make_a_restart_resend_what_finished_behind_it() {
    let harness = with_a_stuck_order().await;
    harness.produce(&valid_events("stuck", 200)).await;
    let settings = retrying_until_shutdown(harness.settings());
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("all but the stuck event", |s| s.delivered == 199)
        .await;
    let first = running.stop().await;
    assert_eq!(
        first.abandoned, 1,
        "the stuck event was given up at shutdown"
    );
    let (offset, map) = harness
        .kafka
        .committed_maps(&harness.group, SOURCE, 1)
        .remove(&0)
        .unwrap();
    assert_eq!(offset, 0, "the stuck event holds the position");
    assert_eq!(
        map.expect("a completion map was committed").finished,
        vec![1..200]
    );

    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    let again = Running::start(settings).await;
    again
        .wait_for("the stuck event", |s| s.delivered == 1)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let second = again.stop().await;
    assert_eq!(second.already_finished, 199, "{second:?}");
    assert_eq!(second.consumed, 1);
    assert_eq!(
        harness.stack.emulator.gateway().order_counts(),
        (200, 200, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::single_range_in_vec_init)]
async fn a_dead_letter_is_committed_at_once_not_at_the_next_interval() {
    // A stuck event keeps the window from draining and the interval is a
    // hour: only the commit that follows the dead letter can name it.
    let harness = with_a_stuck_order().await;
    let mut records = valid_events("stuck", 1);
    records.push(("bad-json".into(), b"{not json".to_vec()));
    harness.produce(&records).await;
    let mut settings = retrying_until_shutdown(harness.settings());
    settings.kafka.commit_interval_ms = Duration::from_secs(3_600);
    let running = Running::start(settings).await;
    running
        .wait_for("the dead letter", |s| s.dead_lettered() == 1)
        .await;
    wait_until("the dead letter's offset in the committed map", || {
        harness
            .kafka
            .committed_maps(&harness.group, SOURCE, 1)
            .remove(&0)
            .and_then(|(offset, map)| Some((offset, map?.finished)))
            == Some((0, vec![1..2]))
    })
    .await;
    assert_eq!(
        running.summary().delivered,
        0,
        "the stuck event is still under way"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_paused_when_its_assignment_was_lost_flows_again_when_it_comes_back() {
    // Slow calls and a window of 4: the partition fills its window and is paused.
    let harness = Harness::new(
        1,
        Faults {
            latency_ms: 5_000,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("lost", 40)).await;
    let mut settings = harness.settings();
    settings.delivery.partition_window = 4;
    settings.delivery.max_in_flight = 4;
    settings.kafka.revoke_drain_timeout_ms = Duration::from_millis(500);
    settings.top.request_timeout_ms = Duration::from_millis(10_000);
    let running = Running::start(settings).await;
    running
        .wait_for("the window to fill", |s| s.consumed >= 4)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The coordinator forgets the member: the assignment is lost, and the
    // same partition comes back to the same consumer.
    harness.stack.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Heartbeat,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
    );
    running
        .wait_for("the assignment lost and given back", |s| s.rebalances >= 3)
        .await;
    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    running.wait_for("every event", |s| s.delivered >= 40).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let distinct: HashSet<String> = harness.accepted_order_ids().into_iter().collect();
    assert_eq!(distinct.len(), 40, "every event reached the API");
}

/// A valid event whose identifiers are long: its request is larger than most.
fn large_event(order_id: &str) -> Vec<u8> {
    let long = "x".repeat(120);
    format!(
        r#"{{"car_no":"浙A888888","order_id":"{order_id}","park_id":"p-{long}","pay_order_id":"po-{long}","pay_method":"WX","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":1000}}"#
    )
    .into_bytes()
}

/// 300 ordinary events and one too large for the gateway; `top` is extra settings.
async fn one_event_too_large(gateway_limit: Option<usize>, sender_limit: usize) -> Harness {
    let harness = Harness::new(
        3,
        Faults {
            max_request_bytes: gateway_limit,
            ..Faults::default()
        },
    )
    .await;
    let mut records = valid_events("size", 300);
    records.insert(150, ("size-big".into(), large_event("size-big")));
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.top.max_request_bytes = sender_limit;
    let running = Running::start(settings).await;
    running
        .wait_for("every event settled", |s| {
            s.delivered + s.dead_lettered() == 301
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let summary = running.stop().await;
    assert_eq!(summary.delivered, 300, "{summary:?}");
    assert_eq!(summary.dead_lettered_rejected, 1, "{summary:?}");
    let dead = harness.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1[header::CLASS], "rejected");
    assert_eq!(dead[0].1[header::REASON], "request_too_large");
    assert!(
        !harness
            .accepted_order_ids()
            .contains(&"size-big".to_owned())
    );
    harness
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_the_gateway_finds_too_large_is_dead_lettered_and_nothing_halts() {
    let harness = one_event_too_large(Some(700), 0).await;
    let answers = harness.stack.emulator.gateway().stats().answers;
    assert_eq!(answers.get("http_413"), Some(&1), "one 413, never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_over_the_configured_request_size_is_dead_lettered_without_a_call() {
    let harness = one_event_too_large(None, 700).await;
    assert_eq!(
        harness.stack.emulator.gateway().stats().received,
        300,
        "the large event was never sent"
    );
    let dead = harness.dead_letters();
    assert!(dead[0].1[header::MESSAGE].contains("top.max_request_bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_signal_exits_at_once_without_committing_unfinished_work() {
    // Calls that take 30 s keep the first signal's drain waiting.
    let harness = Harness::new(
        1,
        Faults {
            latency_ms: 30_000,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("signal", 5)).await;
    let url = harness.stack.emulator.url();
    let mut process = Process::start(&harness.run_config(
        &url,
        "shutdown_drain_timeout_ms = 60000",
        "request_timeout_ms = 60000",
    ));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while harness.stack.emulator.gateway().stats().received == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no call was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        harness.stack.emulator.gateway().stats().requests,
        0,
        "the calls are still under way"
    );
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "the first signal waits for calls under way"
    );
    process.signal("TERM");
    let started = tokio::time::Instant::now();
    assert_eq!(process.wait_exit(Duration::from_secs(10)).await, Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        harness.committed().values().sum::<i64>(),
        0,
        "nothing unfinished was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_dead_letter_topic_is_a_clear_start_up_error() {
    let harness = Harness::new(1, Faults::default()).await;
    let mut settings = harness.settings();
    settings.kafka.dlq_topic = "no-such-topic".to_owned();
    let error = Pipeline::build(settings, Source::Group)
        .await
        .err()
        .expect("start-up must fail");
    assert!(
        matches!(&error, StartError::MissingDeadLetterTopic { topic } if topic == "no-such-topic"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("\"no-such-topic\" does not exist"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_brokers_are_a_metadata_start_up_error() {
    let harness = Harness::new(1, Faults::default()).await;
    let mut settings = harness.settings();
    // A port nothing listens on: every connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.kafka.bootstrap_servers = closed.local_addr().unwrap().to_string();
    drop(closed);
    let error = Pipeline::build(settings, Source::Group)
        .await
        .err()
        .expect("start-up must fail");
    assert!(matches!(error, StartError::Metadata { .. }), "{error:?}");
    assert!(
        error.to_string().contains("kafka.bootstrap_servers"),
        "the message names the setting to check: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_rate_is_a_configuration_start_up_error_naming_the_key() {
    let harness = Harness::new(1, Faults::default()).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 0;
    let error = Pipeline::build(settings, Source::Group)
        .await
        .err()
        .expect("start-up must fail");
    let StartError::Config(config) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(config.problems[0].key, "delivery.rate_limit_per_sec");
}

/// A failed commit is counted once and its points handed out again, so the
/// next commit lands them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_is_counted_once() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let harness = Harness::new(1, Faults::default()).await;
    harness.produce(&valid_events("commit", 10)).await;
    let failing = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE; 3];
    harness
        .stack
        .cluster
        .request_errors(RDKafkaApiKey::OffsetCommit, &failing);
    let running = Running::start(harness.settings()).await;
    running.wait_for("every event", |s| s.delivered >= 10).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let metrics = running.pipeline.metrics();
    let (sent, failed) = (metrics.commits_sent.get(), metrics.commit_failures.get());
    running.stop().await;
    assert!(
        sent > 3,
        "the failed commits and the one that landed: {sent}"
    );
    assert_eq!(failed, 3, "each failed commit counted once ({sent} sent)");
}

/// Whether librdkafka reports a consumer's own commits to its commit
/// callback. It does not: only its automatic commits report there. paysync
/// commits only by itself (synchronously, auto-commit off), so its consumer
/// has no commit callback, and each answer is judged once, by the committer
/// that sent the commit. The automatic commit shows the callback is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reports_only_automatic_commits_to_the_commit_callback() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
    use rdkafka::error::KafkaResult;
    use rdkafka::{ClientContext, Offset, TopicPartitionList};

    struct Counting(AtomicUsize);
    impl ClientContext for Counting {}
    impl ConsumerContext for Counting {
        fn commit_callback(&self, _: KafkaResult<()>, _: &TopicPartitionList) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let harness = Harness::new(1, Faults::default()).await;
    harness.produce(&valid_events("callback", 3)).await;
    let consumer = |auto_commit: &str| -> BaseConsumer<Counting> {
        harness
            .stack
            .client_config()
            .set("group.id", &harness.group)
            .set("enable.auto.commit", auto_commit)
            .set("auto.commit.interval.ms", "100")
            .create_with_context(Counting(AtomicUsize::new(0)))
            .unwrap()
    };
    let (own, automatic) = (consumer("false"), consumer("true"));
    let reported = tokio::task::spawn_blocking(move || {
        let poll_for = |consumer: &BaseConsumer<Counting>, how_long: Duration| {
            let until = std::time::Instant::now() + how_long;
            while std::time::Instant::now() < until {
                consumer.poll(Duration::from_millis(20));
            }
            consumer.context().0.load(Ordering::SeqCst)
        };
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(SOURCE, 0, Offset::Offset(1))
            .unwrap();
        own.assign(&list).unwrap();
        own.commit(&list, CommitMode::Sync).unwrap();
        list.set_all_offsets(Offset::Offset(2)).unwrap();
        own.commit(&list, CommitMode::Async).unwrap();
        let own_reported = poll_for(&own, Duration::from_secs(2));
        assert_eq!(
            own.committed(Duration::from_secs(5)).unwrap().elements()[0].offset(),
            Offset::Offset(2),
            "both commits landed"
        );
        drop(own);
        list.set_all_offsets(Offset::Beginning).unwrap();
        automatic.assign(&list).unwrap();
        (own_reported, poll_for(&automatic, Duration::from_secs(2)))
    })
    .await
    .unwrap();
    assert_eq!(reported.0, 0, "a consumer's own commits are not reported");
    assert!(reported.1 > 0, "automatic commits are");
}
