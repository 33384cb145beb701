//! `paysync dlq inspect` and `redrive` against the mock cluster.

use std::time::Duration;

use paysync::dead_letter::header;
use paysync::tools::emulator::Faults;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_inspect_lists_dead_letters_and_redrive_moves_only_the_selected_ones_once() {
    use paysync::dead_letter::reader::{Filter, inspect};
    use paysync::dead_letter::redrive::{Redrive, Target, redrive};
    let harness = Harness::new(
        1,
        Faults {
            reject_order_ids: vec!["dlq-5".into()],
            ..Faults::default()
        },
    )
    .await;
    let mut records = valid_events("dlq", 10);
    records[3].1 = b"not json".to_vec();
    harness.produce(&records).await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("8 deliveries and 2 dead letters", |s| {
            s.delivered == 8 && s.dead_lettered() == 2
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let settings = harness.settings();

    let all = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || inspect(&settings, &Filter::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(all.len(), 2);
    let rejected_only = Filter {
        class: Some("rejected".into()),
        ..Filter::default()
    };
    let rejected: Vec<_> = all.iter().filter(|r| rejected_only.matches(r)).collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].code.as_deref(), Some("404"));
    assert_eq!(rejected[0].source_offset, Some(5));
    assert_eq!(rejected[0].reason, "business_rejected");
    assert!(paysync::dead_letter::reader::render_table(&all).contains("invalid_event"));

    let source_end = harness.end_offsets()[&0];
    let dry = redrive(
        &settings,
        &rejected_only,
        &Redrive {
            dry_run: true,
            ..Redrive::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((dry.selected, dry.redriven), (1, 0));
    assert_eq!(
        harness.end_offsets()[&0],
        source_end,
        "a dry run sends nothing"
    );

    // The API takes the order now; redrive it to the source topic, once.
    harness
        .stack
        .emulator
        .gateway()
        .set_faults(Faults::default());
    let done = redrive(&settings, &rejected_only, &Redrive::default())
        .await
        .unwrap();
    assert_eq!((done.examined, done.selected, done.redriven), (2, 1, 1));
    assert_eq!(harness.end_offsets()[&0], source_end + 1);
    let again = redrive(&settings, &rejected_only, &Redrive::default())
        .await
        .unwrap();
    assert_eq!(
        (again.examined, again.redriven),
        (0, 0),
        "a record is redriven once"
    );

    let running = Running::start(settings.clone()).await;
    running
        .wait_for("the redriven event", |s| s.delivered == 1)
        .await;
    running.stop().await;
    assert_eq!(
        harness
            .accepted_order_ids()
            .iter()
            .filter(|id| *id == "dlq-5")
            .count(),
        1
    );

    // Straight to the API: an invalid event is reported, not accepted. Its
    // filter has its own cursor: the rejected-only redrives passed over
    // this record without hiding it.
    let invalid_only = Filter {
        class: Some("invalid_event".into()),
        ..Filter::default()
    };
    let to_api = Redrive {
        target: Target::Api,
        ..Redrive::default()
    };
    let api = redrive(&settings, &invalid_only, &to_api).await.unwrap();
    assert_ne!(api.group, done.group);
    assert_eq!((api.selected, api.redriven, api.failed.len()), (1, 0, 1));
    // Each filter's cursor passed the unselected record after its selected
    // one as well (whichever of the two was dead-lettered first): nothing
    // is examined again.
    let again = redrive(&settings, &invalid_only, &to_api).await.unwrap();
    assert_eq!((again.examined, again.selected), (0, 0), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_keeps_failing_is_held_back_after_max_redrives() {
    use paysync::dead_letter::reader::Filter;
    use paysync::dead_letter::redrive::{Redrive, redrive};
    let harness = Harness::new(
        1,
        Faults {
            reject_order_ids: vec!["circle-1".into()],
            ..Faults::default()
        },
    )
    .await;
    harness.produce(&valid_events("circle", 3)).await;
    let settings = harness.settings();
    let running = Running::start(settings.clone()).await;
    running
        .wait_for("one dead letter", |s| s.dead_lettered() == 1)
        .await;
    // Redriven once: refused again, dead-lettered again, carrying the count.
    // At most one redrive per record.
    let everything = Filter::default();
    let once = Redrive {
        max_redrives: 1,
        ..Redrive::default()
    };
    let redrive_all = || redrive(&settings, &everything, &once);
    let first = redrive_all().await.unwrap();
    assert_eq!((first.redriven, first.held_back.len()), (1, 0));
    running
        .wait_for("the second dead letter", |s| s.dead_lettered() == 2)
        .await;
    let second = redrive_all().await.unwrap();
    assert_eq!((second.selected, second.redriven), (1, 0), "{second:?}");
    assert_eq!(second.held_back.len(), 1);
    assert!(second.held_back[0].contains("redriven 1 times already"));
    running.stop().await;
    let copies = harness.dead_letters();
    assert_eq!(copies.len(), 2, "no third copy");
    assert_eq!(copies[1].1[header::REDRIVES], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_too_large_for_its_topic_is_written_without_its_value() {
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("big", 20);
    // Larger than event.max_bytes (invalid), and than the producer may write.
    records.insert(10, ("big-x".into(), vec![b'x'; 20_000]));
    harness.produce(&records).await;
    let mut settings = harness.settings();
    settings.event.max_bytes = 8_000;
    settings
        .kafka
        .producer
        .insert("message.max.bytes".into(), "10000".into());
    let running = Running::start(settings).await;
    running
        .wait_for("every event settled", |s| {
            s.delivered == 20 && s.dead_lettered() == 1
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    running.stop().await;
    let dead = harness.dead_letters();
    assert_eq!(dead.len(), 1);
    let (value, headers) = &dead[0];
    assert_eq!(value, &None, "the value was left out");
    assert_eq!(headers[header::VALUE_OMITTED_BYTES], "20000");
    assert_eq!(headers[header::CLASS], "invalid_event");
    assert_eq!(headers[header::SOURCE_OFFSET], "10");
    assert_eq!(
        headers["source-system"], "parking-platform",
        "source headers kept"
    );
    assert!(!headers.contains_key(header::KEY_OMITTED_BYTES));
    let listed = tokio::task::spawn_blocking({
        let settings = harness.settings();
        move || {
            paysync::dead_letter::reader::inspect(
                &settings,
                &paysync::dead_letter::reader::Filter::default(),
            )
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(listed[0].left_out);
    assert!(paysync::dead_letter::reader::render_table(&listed).contains("[value left out]"));

    // Redrive reads the value back from the source record.
    let before = harness.end_offsets()[&0];
    let report = paysync::dead_letter::redrive::redrive(
        &harness.settings(),
        &paysync::dead_letter::reader::Filter::default(),
        &paysync::dead_letter::redrive::Redrive::default(),
    )
    .await
    .unwrap();
    assert_eq!((report.redriven, report.failed.len()), (1, 0), "{report:?}");
    assert_eq!(harness.end_offsets()[&0], before + 1);
    let (value, headers) = harness
        .kafka
        .read_one(SOURCE, 0, before)
        .expect("the redriven record");
    assert_eq!(
        value.map(|v| v.len()),
        Some(20_000),
        "the whole value again"
    );
    assert_eq!(headers[header::REDRIVEN_FROM], "0@0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_held_by_failing_dead_letter_writes_shows_in_readiness_until_they_succeed() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("stall", 5);
    records[2].1 = b"{broken".to_vec();
    harness.produce(&records).await;
    // From now on, every write is refused (only dead letters are written).
    harness.stack.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 500],
    );
    let mut settings = harness.settings();
    // Only the dead-letter writes are under test: the ledger's would fail too.
    settings.ledger.mode = paysync::config::LedgerMode::Off;
    settings.delivery.dead_letter_stall_ms = Duration::from_millis(1_000);
    settings
        .kafka
        .producer
        .insert("message.timeout.ms".into(), "500".into());
    let running = Running::start(settings).await;
    let (admin, base) = admin_for(&running).await;
    let ready = || async {
        let response = crate::support::http_get(format!("{base}/health/ready"))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        (status, body)
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    let (status, body) = loop {
        let (status, body) = ready().await;
        if body["status"] == "degraded" {
            break (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never degraded: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200);
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("the dead-letter topic")
            && reason.contains("has failed")
            && reason.contains(&format!("{SOURCE}/0")),
        "{reason}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(sample(&metrics, "paysync_dead_letter_stalled_seconds").unwrap() >= 1.0);
    // Meanwhile nothing passes the held event (offset 2), though 3 and 4 are delivered.
    running.wait_for("the others", |s| s.delivered == 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(harness.committed()[&0] <= 2, "{:?}", harness.committed());
    // The topic takes writes again: the letter is written, the partition moves.
    harness
        .stack
        .cluster
        .clear_request_errors(RDKafkaApiKey::Produce);
    running
        .wait_for("the dead letter and the rest", |s| {
            s.dead_lettered() == 1 && s.delivered == 4
        })
        .await;
    wait_committed(&harness, &harness.end_offsets()).await;
    let (status, body) = ready().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    admin.stop().await;
    running.stop().await;
    assert_eq!(harness.dead_letters().len(), 1);
}
