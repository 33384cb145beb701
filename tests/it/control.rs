//! The control topic on librdkafka's mock cluster: tuned settings applied in
//! place without leaving the group, a park paused while the others flow
//! (and still paused after a restart), and a replay sharing the group's rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paysync::config::Settings;
use paysync::control::record::{self, SETTINGS_KEY};
use paysync::control::{Control, PauseTarget, Tuning, ops};
use paysync::tools::emulator::Faults;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;

use crate::harness::{Harness, Running};
use crate::support::{event_in, wait_until};

/// The operator's connection to the harness's control topic.
async fn operator(settings: &Settings) -> Arc<Control> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
            .set("group.id", "control-test-operator")
            .create()
            .unwrap();
        Control::open(&settings, &consumer, "operator-test".to_owned(), None)
            .unwrap()
            .expect("the control topic is on by default")
    })
    .await
    .unwrap()
}

async fn tune(control: &Control, version: u64, values: &[(&str, &str)]) {
    let tuning = Tuning {
        version,
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        guard: None,
    };
    control
        .change(
            SETTINGS_KEY,
            Some(record::encode(&tuning)),
            "test",
            format!("version {version}"),
            "tuning test",
        )
        .await
        .unwrap();
}

fn rebalances(running: &Running) -> u64 {
    let metrics = running.pipeline.metrics();
    ["assign", "revoke", "error"]
        .iter()
        .map(|kind| metrics.rebalances.with_label_values(&[kind]).get())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tuned_settings_apply_in_place_without_a_rebalance() {
    let harness = Harness::new(2, Faults::default()).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 400;
    let running = Running::start(settings.clone()).await;
    wait_until("both partitions owned", || {
        running.assigned_partitions() == 2
    })
    .await;
    wait_until("the whole rate", || {
        (running.rate_share() - 400.0).abs() < 1.0
    })
    .await;
    let joined = rebalances(&running);
    let control = operator(&settings).await;
    tune(
        &control,
        1,
        &[
            ("delivery.rate_limit_per_sec", "150"),
            ("delivery.max_in_flight", "4"),
        ],
    )
    .await;
    wait_until("the tuned rate in force", || {
        (running.rate_share() - 150.0).abs() < 1.0
    })
    .await;
    let metrics = running.pipeline.metrics();
    assert_eq!(metrics.control_version.get(), 1);
    assert_eq!(
        metrics
            .control_setting
            .with_label_values(&["max_in_flight"])
            .get(),
        4.0
    );
    // Back to the file's values: an empty overlay is version 2.
    tune(&control, 2, &[]).await;
    wait_until("the file's rate again", || {
        (running.rate_share() - 400.0).abs() < 1.0
    })
    .await;
    assert_eq!(rebalances(&running), joined, "no rebalance for a tuning");
    assert_eq!(metrics.control_changes_applied.get(), 2);
    running.stop().await;
    control.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_park_is_held_across_a_restart_while_other_parks_flow() {
    let harness = Harness::new(1, Faults::default()).await;
    let settings = harness.settings();
    let control = operator(&settings).await;
    let held_park = PauseTarget::Park("held".into());
    ops::pause(&control, &held_park, true, "test", "wrong data")
        .await
        .unwrap();
    // Interleaved in one partition: 5 held orders (payment then refund) and 20 flowing.
    let mut records = Vec::new();
    for i in 0..20 {
        let id = format!("flow-{i}");
        records.push((id.clone(), event_in("flows", &id, 1)));
        if i < 5 {
            let id = format!("held-{i}");
            records.push((id.clone(), event_in("held", &id, 1)));
            records.push((id.clone(), event_in("held", &id, 2)));
        }
    }
    harness.produce(&records).await;
    let first_held = records
        .iter()
        .position(|(id, _)| id.starts_with("held"))
        .unwrap() as i64;

    let running = Running::start(settings.clone()).await;
    let accepted = || harness.accepted_order_ids();
    wait_until("the flowing park delivered", || {
        accepted()
            .iter()
            .filter(|id| id.starts_with("flow"))
            .count()
            == 20
    })
    .await;
    wait_until("the held park's first events held", || {
        running.pipeline.metrics().events_held.get() == 5
    })
    .await;
    assert!(
        !accepted().iter().any(|id| id.starts_with("held")),
        "nothing of the paused park was sent"
    );
    running.stop().await;
    let committed = harness.committed()[&0];
    assert!(
        committed <= first_held,
        "committed {committed} past the first held event at {first_held}"
    );

    // A new process finds the pause on the topic.
    let running = Running::start(settings.clone()).await;
    wait_until("held again after the restart", || {
        running.pipeline.metrics().events_held.get() == 5
    })
    .await;
    assert!(!accepted().iter().any(|id| id.starts_with("held")));

    ops::pause(&control, &held_park, false, "test", "fixed")
        .await
        .unwrap();
    wait_until("everything delivered", || accepted().len() == 30).await;
    // Each held order's payment went before its refund.
    let orders = harness.stack.emulator.gateway().orders();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for order in &orders {
        let id = order.order["order_id"].as_str().unwrap().to_owned();
        seen.entry(id)
            .or_default()
            .push(order.order["order_type"].as_i64().unwrap());
    }
    for i in 0..5 {
        assert_eq!(seen[&format!("held-{i}")], [1, 2], "held-{i} in order");
    }
    let end = harness.end_offsets()[&0];
    wait_until("committed to the end", || harness.committed()[&0] == end).await;
    assert_eq!(running.pipeline.metrics().events_held.get(), 0);
    running.stop().await;
    control.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_takes_its_share_of_the_group_rate_and_gives_it_back() {
    use paysync::replay::{ReplayRequest, run as replay};
    let harness = Harness::new(1, Faults::default()).await;
    let records = crate::support::valid_events("shared", 300);
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 200;
    settings.control.refresh_ms = Duration::from_millis(300);
    settings.control.lease_ms = Duration::from_millis(1_200);
    // The live group has read everything: only the replay has calls to make.
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("live delivered", |s| s.delivered == 300)
        .await;
    let metrics = running.pipeline.metrics().clone();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut least = f64::MAX;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                least = least.min(metrics.rate_limit_share.get());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            least
        })
    };
    let report = replay(
        settings.clone(),
        ReplayRequest {
            partitions: vec![0],
            resend_delivered: true,
            rate_fraction: 0.25,
            ..ReplayRequest::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(
        report.pacing.contains("sharing the group's 200 calls/s"),
        "{}",
        report.headline()
    );
    assert_eq!(report.summary.unwrap().delivered, 300);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let least = sampler.await.unwrap();
    // Idle, the live group claims only a margin over what it used.
    assert!(
        least < 50.0,
        "the live share went down to {least}, not below 50 of 200"
    );
    // While the replay ran the live replica's share shrank; it is whole again
    // once the replay's lease is withdrawn.
    wait_until("the live group's whole rate back", || {
        (running.rate_share() - 200.0).abs() < 1.0
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guarded_raise_that_bans_follow_is_rolled_back() {
    use paysync::control::record::Guard;
    use paysync::tools::emulator::RateLimit;
    // The gateway allows 50 calls/s; the group sends 40 until raised to 400.
    let harness = Harness::new(
        1,
        Faults {
            rate_limit: Some(RateLimit {
                calls_per_second: 50,
                burst: None,
                ban_seconds: 1,
            }),
            ..Faults::default()
        },
    )
    .await;
    harness
        .produce(&crate::support::valid_events("guarded", 3_000))
        .await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_per_sec = 40;
    let running = Running::start(settings.clone()).await;
    wait_until("40 calls/s", || (running.rate_share() - 40.0).abs() < 1.0).await;
    let control = operator(&settings).await;
    let raise = Tuning {
        version: 1,
        values: BTreeMap::from([("delivery.rate_limit_per_sec".into(), "400".into())]),
        guard: Some(Guard::watching(BTreeMap::new(), Duration::from_secs(60))),
    };
    control
        .change(
            SETTINGS_KEY,
            Some(record::encode(&raise)),
            "test",
            "version 1".into(),
            "guarded raise",
        )
        .await
        .unwrap();
    assert!(
        control
            .wait_for(Duration::from_secs(20), |view| view.tuning.version == 2)
            .await,
        "no rollback: {:?}",
        control.view().tuning
    );
    let view = control.view();
    assert!(view.tuning.values.is_empty(), "{:?}", view.tuning);
    assert!(view.tuning.guard.is_none());
    assert!(
        view.audit.iter().any(|a| a.by == "paysync (rate guard)"),
        "{:?}",
        view.audit
    );
    wait_until("40 calls/s again", || {
        (running.rate_share() - 40.0).abs() < 1.0
    })
    .await;
    assert!(harness.stack.emulator.gateway().bans() >= 1);
    running.stop().await;
    control.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redrive_to_the_api_announces_itself_and_takes_its_share() {
    use paysync::control::{CallerKind, Pace};
    use paysync::dead_letter::reader::Filter;
    use paysync::dead_letter::redrive::{Redrive, Target, redrive};
    use paysync::pipeline::rate::SharedRate;
    let records = crate::support::valid_events("redriven", 20);
    let harness = Harness::new(
        1,
        Faults {
            reject_order_ids: records.iter().map(|(id, _)| id.clone()).collect(),
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&records).await;
    let mut settings = harness.settings();
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("20 dead letters", |s| s.dead_lettered() == 20)
        .await;
    running.stop().await;
    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    // Slow enough to be seen while it runs: 10 calls/s, alone on the app key.
    settings.delivery.rate_limit_per_sec = 10;
    let operator = operator(&settings).await;
    let shared = SharedRate::join(&settings, CallerKind::Redrive, 1, None)
        .await
        .unwrap()
        .map(Arc::new)
        .expect("the control topic is on");
    let options = Redrive {
        target: Target::Api,
        pace: Some(shared.clone() as Arc<dyn Pace>),
        ..Redrive::default()
    };
    let task = tokio::spawn({
        let settings = settings.clone();
        async move { redrive(&settings, &Filter::default(), &options).await }
    });
    let announced = || {
        operator
            .view()
            .live_leases(chrono::Utc::now().timestamp_millis())
            .any(|lease| lease.kind == CallerKind::Redrive)
    };
    wait_until("the redrive's lease", announced).await;
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.redriven, 20, "{:?}", report.failed);
    Arc::into_inner(shared)
        .expect("the redrive let go of it")
        .leave()
        .await;
    wait_until("the lease withdrawn", || !announced()).await;
    assert_eq!(harness.accepted_order_ids().len(), 20);
    operator.close();
}
