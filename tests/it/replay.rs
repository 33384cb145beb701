//! `paysync replay` against the mock cluster: exactly the range, once.

use paysync::tools::emulator::Faults;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_sends_exactly_the_range_once_and_leaves_the_live_group_alone() {
    use paysync::replay::{ReplayRequest, run as replay};
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("replay", 60);
    records[15].1 = b"{broken".to_vec();
    harness.produce(&records).await;
    // The live group delivers everything first.
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("the live run", |s| s.delivered + s.dead_lettered() == 60)
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let live_committed = harness.committed();
    let accepted_live = harness.stack.emulator.gateway().orders().len();

    let request = ReplayRequest {
        partitions: vec![0],
        from_offset: Some(10),
        to_offset: Some(30),
        rate: Some(1_000),
        rate_fraction: 0.25,
        // The range machinery under test: the ledger would skip what the
        // live run delivered (tests/e2e/ledger.rs proves that).
        resend_delivered: true,
        ..ReplayRequest::default()
    };
    // A dry run decodes the range and sends nothing.
    let dry = replay(
        harness.settings(),
        ReplayRequest {
            dry_run: true,
            ..request.clone()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let (valid, invalid, problems) = dry.checked.clone().unwrap();
    assert_eq!((valid, invalid), (19, 1));
    assert!(problems[0].contains("@15"), "{problems:?}");
    assert_eq!(
        harness.stack.emulator.gateway().orders().len(),
        accepted_live
    );

    let report = replay(harness.settings(), request.clone(), std::future::pending())
        .await
        .unwrap();
    assert!(
        report
            .render()
            .starts_with("paysync replay: new run, 20 messages"),
        "{}",
        report.render()
    );
    let summary = report.summary.unwrap();
    assert_eq!(
        (summary.delivered, summary.dead_lettered_invalid_event),
        (19, 1)
    );
    let replayed: Vec<String> = harness.stack.emulator.gateway().orders()[accepted_live..]
        .iter()
        .map(|o| o.order["order_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (10..30)
        .filter(|i| *i != 15)
        .map(|i| format!("replay-{i}"))
        .collect();
    let mut sorted = replayed.clone();
    sorted.sort_by_key(|id| id.trim_start_matches("replay-").parse::<u32>().unwrap());
    assert_eq!(sorted, expected, "exactly the range, not one event more");
    assert_eq!(
        harness.committed(),
        live_committed,
        "the live group's offsets are untouched"
    );
    let progress = harness.kafka.committed(&report.group, SOURCE, 1);
    assert_eq!(progress.get(&0), Some(&30));

    // Run again: the replay continues from its progress, which is the end.
    let again = replay(harness.settings(), request.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(again.ranges[0].start, 30);
    assert!(
        again
            .render()
            .starts_with("paysync replay: resumed run (20 messages of the range were finished before), 0 messages"),
        "{}",
        again.render()
    );
    assert_eq!(
        harness.stack.emulator.gateway().orders().len(),
        accepted_live + 19
    );

    // A different range is a new run: exactly what it names, none skipped.
    let wider = replay(
        harness.settings(),
        ReplayRequest {
            from_offset: Some(0),
            to_offset: Some(40),
            ..request
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_ne!(wider.group, report.group);
    assert!(
        wider
            .render()
            .starts_with("paysync replay: new run, 40 messages")
    );
    assert_eq!((wider.ranges[0].start, wider.ranges[0].end), (0, 40));
    assert_eq!(wider.summary.unwrap().delivered, 39);
    assert_eq!(
        harness.stack.emulator.gateway().orders().len(),
        accepted_live + 19 + 39
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adaptive_replay_finds_the_quota_below_its_rate_and_holds_it() {
    use paysync::config::RateLimitMode;
    use paysync::replay::{ReplayRequest, run as replay};
    use paysync::tools::emulator::RateLimit;
    // The gateway allows 100 calls/s; the group's adaptive rate (which the
    // replay shares, alone on the app key) may go up to 400.
    let harness = Harness::new(
        1,
        Faults {
            rate_limit: Some(RateLimit {
                calls_per_second: 100,
                burst: None,
                ban_seconds: 1,
            }),
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events("adaptive-replay", 1_500);
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.delivery.rate_limit_mode = RateLimitMode::Adaptive;
    settings.delivery.rate_limit_per_sec = 400;
    let report = replay(
        settings,
        ReplayRequest {
            partitions: vec![0],
            rate_fraction: 0.25,
            ..ReplayRequest::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let summary = report.summary.unwrap();
    let bans = harness.stack.emulator.gateway().bans();
    assert_eq!(summary.delivered, 1_500, "{}", report.render());
    assert_eq!(summary.dead_lettered(), 0);
    // At a fixed 400/s against a 100/s bucket a ban would come every second
    // or so; adapting, the replay meets a few and then holds below the quota.
    assert!(bans <= 4, "{bans} bans");
}
