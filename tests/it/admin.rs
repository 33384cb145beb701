//! `/metrics`, `/health/live` and `/health/ready` over a running pipeline.

use std::time::Duration;

use paysync::tools::emulator::Faults;
use secrecy::SecretString;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_run_show_every_documented_series_with_sane_values() {
    let faults = Faults {
        isp_error_rate: 0.2,
        reject_order_ids: vec!["metrics-7".into()],
        ..Faults::default()
    };
    let harness = Harness::new(3, faults).await;
    let mut records = valid_events("metrics", 100);
    records.push(("broken".into(), b"not json".to_vec()));
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.kafka.statistics_interval_ms = Duration::from_millis(200);
    settings.delivery.max_attempts = 50;
    settings.delivery.breaker_failure_threshold = 1_000;
    let running = Running::start(settings).await;
    running
        .wait_for("all outcomes", |s| {
            s.delivered == 99 && s.dead_lettered() == 2
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let (admin, base) = admin_for(&running).await;
    // Statistics arrive every 200 ms; wait for the committed offsets to show.
    let ends = harness.end_offsets();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = crate::support::http_get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let all_committed = ends.iter().all(|(p, end)| {
            sample(
                &text,
                &format!(
                    r#"paysync_partition_committed_offset{{partition="{p}",topic="parking-payments"}}"#
                ),
            ) == Some(*end as f64)
        });
        if all_committed {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed offsets never showed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(value("paysync_events_consumed_total"), 101.0);
    assert_eq!(value("paysync_events_delivered_total"), 99.0);
    assert_eq!(
        value(
            r#"paysync_events_dead_lettered_total{class="invalid_event",reason="invalid_event"}"#
        ),
        1.0
    );
    assert_eq!(
        value(r#"paysync_events_dead_lettered_total{class="rejected",reason="business_rejected"}"#),
        1.0
    );
    assert_eq!(
        value(r#"paysync_call_outcomes_total{disposition="delivered",reason="accepted"}"#),
        99.0
    );
    assert!(
        value(r#"paysync_call_outcomes_total{disposition="retry",reason="server_error"}"#) >= 1.0
    );
    assert!(value(r#"paysync_top_errors_total{code="15",sub_code_class="isp"}"#) >= 1.0);
    assert!(value("paysync_call_duration_seconds_count") >= 100.0);
    assert_eq!(value("paysync_delivery_latency_seconds_count"), 99.0);
    assert!(value("paysync_rate_limiter_wait_seconds_count") >= 100.0);
    assert!(value("paysync_rate_limiter_tokens") >= 0.0);
    assert_eq!(value("paysync_calls_in_flight"), 0.0);
    assert_eq!(value("paysync_window_messages"), 0.0);
    assert_eq!(value("paysync_oldest_in_flight_age_seconds"), 0.0);
    assert_eq!(value(r#"paysync_breaker_state{state="closed"}"#), 1.0);
    assert_eq!(value(r#"paysync_halted{cause="signature"}"#), 0.0);
    assert_eq!(value("paysync_ban_remaining_seconds"), 0.0);
    assert_eq!(value("paysync_assigned_partitions"), 3.0);
    for (partition, end) in &ends {
        let labels = format!(r#"{{partition="{partition}",topic="parking-payments"}}"#);
        assert_eq!(
            value(&format!("paysync_partition_completed_offset{labels}")),
            *end as f64
        );
        assert_eq!(
            value(&format!("paysync_partition_lag_messages{labels}")),
            0.0
        );
    }
    assert!(value(r#"paysync_rebalances_total{kind="assign"}"#) >= 1.0);
    assert_eq!(value("paysync_dlq_produce_failures_total"), 0.0);
    assert!(value("paysync_seconds_since_last_commit") < 10.0);
    assert_eq!(
        value(&format!(
            r#"paysync_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert!(
        !text.contains("metrics-1"),
        "no order id may become a label"
    );
    admin.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_is_degraded_while_the_breaker_is_open_and_liveness_holds() {
    let harness = Harness::new(
        1,
        Faults {
            http_503_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("ready", 20)).await;
    let mut settings = harness.settings();
    settings.delivery.breaker_failure_threshold = 3;
    let running = Running::start(settings).await;
    let (admin, base) = admin_for(&running).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body: paysync::admin::Readiness = loop {
        let response = crate::support::http_get(format!("{base}/health/ready"))
            .await
            .unwrap();
        let code = response.status();
        let body: paysync::admin::Readiness =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if body.status == "degraded" {
            assert_eq!(
                code, 200,
                "degraded is still ready: no restarts during an outage"
            );
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never degraded: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.joined);
    assert_eq!(body.assigned_partitions, 1);
    assert!(
        body.reasons.iter().any(|r| r.contains("circuit breaker")),
        "{body:?}"
    );
    assert_eq!(
        crate::support::http_get(format!("{base}/health/live"))
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, r#"paysync_breaker_state{state="closed"}"#),
        Some(0.0),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("breaker") || l.contains("halted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    running.wait_for("recovery", |s| s.delivered == 20).await;
    let ready: paysync::admin::Readiness = serde_json::from_str(
        &crate::support::http_get(format!("{base}/health/ready"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ready.status, "ready");
    admin.stop().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_reports_a_halt_as_not_ready_with_its_cause() {
    let harness = Harness::new(1, Faults::default()).await;
    harness.produce(&valid_events("halted", 5)).await;
    let mut settings = harness.settings();
    settings.top.app_secret = Some(SecretString::from("wrong"));
    let running = Running::start(settings).await;
    let (admin, base) = admin_for(&running).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = crate::support::http_get(format!("{base}/health/ready"))
            .await
            .unwrap();
        let code = response.status();
        let body: paysync::admin::Readiness =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if body.status == "halted" {
            assert_eq!(code, 503);
            assert_eq!(body.halted.as_deref(), Some("signature"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never halted: {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::support::http_get(format!("{base}/health/live"))
            .await
            .unwrap()
            .status(),
        200,
        "a halt is not a stuck process"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(&metrics, r#"paysync_halted{cause="signature"}"#),
        Some(1.0)
    );
    assert!(
        !metrics.contains("wrong"),
        "the secret never reaches the metrics"
    );
    admin.stop().await;
    running.stop().await;
}

/// A `paysync run` configuration whose Kafka is not there (nothing listens on port 1).
fn unreachable_kafka(gateway_url: &str) -> RunConfig<'_> {
    RunConfig {
        bootstrap: "127.0.0.1:1",
        group: "startup",
        topic: "parking-payments",
        dlq: "parking-payments.dlq",
        gateway_url,
        delivery: "",
        top: "",
        commit_interval_ms: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paysync_waits_for_an_unreachable_kafka_then_exits_with_a_clear_error() {
    let emulator = emulator(Faults::default()).await;
    let url = emulator.url();
    let config = unreachable_kafka(&url);
    let started = std::time::Instant::now();
    let process =
        Process::start_with_env(&config, &[("PAYSYNC_KAFKA__STARTUP_TIMEOUT_MS", "11000")]);
    // Each attempt waits up to 10 s for metadata: two attempts, one retry line.
    // Alive and serving while it waits, but not ready.
    let mut address = None;
    wait_until("the admin address in the log", || {
        address = process
            .log()
            .split("admin=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        address.is_some()
    })
    .await;
    let base = format!("http://{}", address.unwrap());
    let ready = crate::support::http_get(format!("{base}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "starting");
    let live = crate::support::http_get(format!("{base}/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let mut process = process;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "it never gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = process.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        started.elapsed() >= Duration::from_secs(11),
        "it waited for kafka.startup_timeout_ms"
    );
    assert!(
        log.contains("Kafka is not reachable yet; trying again."),
        "{log}"
    );
    assert!(
        log.contains("Kafka was not reachable within kafka.startup_timeout_ms (11 s, 2 attempts)"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_fails_while_the_main_loop_is_stuck_and_recovers_after() {
    // Calls that outlast the revoke drain, so the rebalance callback holds
    // the main loop for the whole drain, 3 s, whenever the revoke comes
    // (production settings keep the liveness timeout above the revoke drain;
    // here it is below on purpose).
    let harness = Harness::new(
        2,
        Faults {
            latency_ms: 30_000,
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("stuck", 40)).await;
    let mut settings = harness.settings();
    settings.delivery.max_in_flight = 4;
    settings.top.request_timeout_ms = Duration::from_secs(60);
    settings.kafka.revoke_drain_timeout_ms = Duration::from_secs(3);
    settings.delivery.shutdown_drain_timeout_ms = Duration::from_secs(1);
    let first = Running::start(settings.clone()).await;
    first.wait_for("calls under way", |s| s.consumed >= 4).await;
    let state = paysync::admin::AdminState {
        liveness_timeout: Duration::from_millis(1_000),
        ..paysync::admin::AdminState::of(&first.pipeline, Duration::ZERO)
    };
    let admin = paysync::admin::AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let live = format!("http://{}/health/live", admin.addr());
    assert_eq!(crate::support::http_get(&live).await.unwrap().status(), 200);
    // A second member joins: the first revokes and drains its calls.
    let second = Running::start(settings).await;
    let mut saw_stuck = false;
    let mut recovered = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline && !recovered {
        let status = crate::support::http_get(&live).await.unwrap().status();
        saw_stuck |= status == 503;
        recovered = saw_stuck && status == 200;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_stuck, "liveness never failed while the loop was held");
    assert!(recovered, "liveness did not recover after the drain");
    admin.stop().await;
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_waiting_for_kafka_stops_paysync_cleanly() {
    let emulator = emulator(Faults::default()).await;
    let url = emulator.url();
    let config = unreachable_kafka(&url);
    let process = Process::start(&config);
    wait_until("the start-up line", || process.log().contains("Starting;")).await;
    process.signal("TERM");
    // The attempt under way (up to 10 s) ends first; then it stops.
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
}
