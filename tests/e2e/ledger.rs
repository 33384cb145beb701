//! The delivery ledger against Apache Kafka: a strict-mode kill -9 storm
//! across three replicas (no call sent twice; every unknown outcome listed,
//! resolved, and each event accepted once), a backfill that sends only what
//! is missing and the day's reconciliation from it, and a double publish
//! with a redriven dead letter. Each prints its figures.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use paysync::tools::emulator::Faults;

use super::support::{Process, valid_events, wait_accepted};
use super::{PARTITIONS, SERIAL, Scenario, paysync_command};

/// Writes `config`'s TOML with extra sections to a file the commands read.
fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    file
}

fn json_of(output: &str) -> serde_json::Value {
    let start = output.find(['[', '{']).expect("JSON on stdout");
    serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_kill_9_storm_sends_no_call_twice_and_parks_what_it_cannot_know() {
    let _serial = SERIAL.lock().await;
    // Transient faults the platform answers (retried) and ones that leave
    // the outcome open (a dropped connection: parked as unknown).
    let faults = Faults {
        isp_error_rate: 0.03,
        drop_connection_rate: 0.002,
        latency_ms: 3,
        ..Faults::default()
    };
    let scenario = Scenario::new("ledger-strict", faults).await;
    let records = valid_events("strict", 8_000);
    const MAX_IN_FLIGHT: usize = 16;
    const KILLS: usize = 4;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "max_in_flight = 16\nmax_attempts = 100");
    let toml = format!("{}\n[ledger]\nmode = \"strict\"\n", config.toml());
    let file = config_file(&toml);
    let config_path = file.path().to_str().unwrap().to_owned();
    scenario.kafka.produce(&scenario.topic, &records).await;
    let mut replicas: Vec<Process> = (0..3).map(|_| Process::start_toml(&toml, &[])).collect();
    for round in 0..KILLS {
        let before = scenario.emulator.gateway().order_counts().1;
        wait_accepted(&scenario.emulator, (before + 800).min(records.len() - 100)).await;
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 700)).await;
        replicas.remove(round % replicas.len()).kill();
        replicas.push(Process::start_toml(&toml, &[]));
        println!(
            "e2e ledger-strict: kill {round}; (accepted, distinct, duplicates) {:?}",
            scenario.emulator.gateway().order_counts()
        );
    }
    scenario.wait_committed_to_end().await;
    for replica in &replicas {
        replica.signal("TERM");
    }
    for replica in replicas {
        assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
    }
    let (_, _, duplicates_before_resolution) = scenario.emulator.gateway().order_counts();
    assert_eq!(
        duplicates_before_resolution, 0,
        "strict mode sent a call twice"
    );

    // What the ledger cannot know is listed, and only that.
    let (status, output) =
        paysync_command(&["ledger", "unknown", "--config", &config_path, "--json"]).await;
    assert_eq!(status, Some(0), "{output}");
    let parked = json_of(&output);
    let parked = parked.as_array().unwrap();
    let accepted = scenario.accepted_ids();
    let (mut unknown, mut held, mut in_miaojie) = (0, 0, Vec::new());
    for entry in parked {
        let order = entry["order_id"].as_str().unwrap().to_owned();
        match entry["outcome"].as_str().unwrap() {
            "unknown" => unknown += 1,
            "held" => held += 1,
            other => panic!("{other} left after every replica stopped: {entry}"),
        }
        if accepted.contains(&order) {
            in_miaojie.push(order);
        }
    }
    let dropped = scenario
        .emulator
        .gateway()
        .stats()
        .answers
        .get("dropped")
        .copied()
        .unwrap_or(0) as usize;
    println!(
        "e2e ledger-strict: {unknown} unknown ({} of them accepted by Miaojie before the answer was lost), {held} held; {dropped} connections dropped, {KILLS} kills × {MAX_IN_FLIGHT} in flight",
        in_miaojie.len()
    );
    assert!(
        unknown <= dropped + KILLS * MAX_IN_FLIGHT,
        "{unknown} unknown outcomes: more than the answers lost ({dropped}) and the calls in flight at the kills"
    );

    // The operator checks Miaojie once the storm is over (the gateway
    // answers again): those it holds are recorded as delivered, the rest
    // sent again.
    scenario.emulator.gateway().set_faults(Faults::default());
    if !in_miaojie.is_empty() {
        let mut args = vec!["ledger", "resolve", "--config", &config_path, "--delivered"];
        for order in &in_miaojie {
            args.extend(["--order", order.as_str()]);
        }
        let (status, output) = paysync_command(&args).await;
        assert_eq!(status, Some(0), "{output}");
    }
    let (status, output) = paysync_command(&[
        "ledger",
        "resolve",
        "--config",
        &config_path,
        "--resend",
        "--all",
    ])
    .await;
    assert_eq!(status, Some(0), "{output}");
    println!("e2e ledger-strict: {}", output.trim());
    let (status, output) =
        paysync_command(&["ledger", "unknown", "--config", &config_path, "--json"]).await;
    assert_eq!(status, Some(0));
    assert_eq!(json_of(&output), serde_json::json!([]), "all resolved");

    let (_, distinct, duplicates) = scenario.emulator.gateway().order_counts();
    assert_eq!(distinct, records.len(), "nothing lost");
    assert_eq!(duplicates, 0, "every event accepted exactly once");
    assert_eq!(scenario.committed(), scenario.end_offsets());
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_sends_only_what_is_missing_and_the_days_report_matches_miaojie() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new("ledger-backfill", Faults::default()).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "");
    let toml = config.toml();
    let file = config_file(&toml);
    let config_path = file.path().to_str().unwrap().to_owned();
    // 70 % delivered live; the rest published while no replica runs.
    let records = valid_events("backfill", 1_000);
    scenario
        .kafka
        .produce(&scenario.topic, &records[..700])
        .await;
    let live = Process::start_toml(&toml, &[]);
    wait_accepted(&scenario.emulator, 700).await;
    scenario.wait_committed_to_end().await;
    live.signal("TERM");
    assert_eq!(live.wait_exit(Duration::from_secs(30)).await, Some(0));
    scenario
        .kafka
        .produce(&scenario.topic, &records[700..])
        .await;
    let calls_before = scenario.emulator.gateway().order_counts().0;

    let ends = scenario.end_offsets();
    let to = ends.values().max().copied().unwrap();
    let replay = |extra: &'static [&'static str]| {
        let path = config_path.clone();
        async move {
            let mut args = vec!["replay", "--config", path.as_str(), "--from-offset", "0"];
            let to = to.to_string();
            args.extend(["--to-offset", to.as_str(), "--rate", "2000"]);
            args.extend(extra);
            paysync_command(&args).await
        }
    };
    let (status, output) = replay(&[]).await;
    assert_eq!(status, Some(0), "{output}");
    let (calls, distinct, duplicates) = scenario.emulator.gateway().order_counts();
    println!(
        "e2e ledger-backfill: replay of 1000 events, 700 accepted before: {} calls, {distinct} distinct, {duplicates} duplicates",
        calls - calls_before
    );
    assert_eq!(
        calls - calls_before,
        300,
        "exactly the missing 30 % is sent"
    );
    assert_eq!((distinct, duplicates), (1_000, 0));
    let (status, output) = replay(&["--resend-delivered", "--group", "backfill-again"]).await;
    assert_eq!(status, Some(0), "{output}");
    let resent = scenario.emulator.gateway().order_counts().0 - calls;
    println!("e2e ledger-backfill: --resend-delivered sent {resent}");
    assert_eq!(resent, 1_000);

    // The day's report: the events are paid 2020-10-10 (GMT+8), at park p1.
    let (status, output) = paysync_command(&[
        "reconcile",
        "--config",
        &config_path,
        "--date",
        "2020-10-10",
        "--send",
        "--json",
    ])
    .await;
    assert_eq!(status, Some(0), "{output}");
    let report = json_of(&output);
    let mut miaojie: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for order in scenario.emulator.gateway().orders() {
        miaojie
            .entry(order.order["park_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(order.order["order_id"].as_str().unwrap().to_owned());
    }
    let reported: BTreeMap<String, usize> = report["report"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["park_id"].as_str().unwrap().to_owned(),
                line["order_amount"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let expected: BTreeMap<String, usize> = miaojie
        .iter()
        .map(|(park, orders)| (park.clone(), orders.len()))
        .collect();
    println!(
        "e2e ledger-backfill: reconcile 2020-10-10 reported {reported:?}, Miaojie holds {expected:?}"
    );
    assert_eq!(reported, expected);
    let sent = scenario.emulator.gateway().reports();
    assert_eq!(sent.len(), 1, "one park, one call");
    assert_eq!(sent[0]["total_amount"], 1_000);
    let _ = PARTITIONS;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_double_publish_is_sent_once_a_correction_is_sent_and_a_redriven_duplicate_is_not() {
    let _serial = SERIAL.lock().await;
    let faults = Faults {
        reject_order_ids: vec!["double-late".into()],
        ..Faults::default()
    };
    let scenario = Scenario::new("ledger-double", faults).await;
    let url = scenario.emulator.url();
    let config = scenario.config(&url, "");
    let toml = config.toml();
    let file = config_file(&toml);
    let config_path = file.path().to_str().unwrap().to_owned();
    let event = |order: &str, fee: u32| {
        (
            order.to_owned(),
            format!(
                r#"{{"car_no":"浙A888888","order_id":"{order}","park_id":"p1","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":{fee}}}"#
            )
            .into_bytes(),
        )
    };
    let process = Process::start_toml(&toml, &[]);
    // The same payment twice (a producer's retry), then a corrected fee.
    scenario
        .kafka
        .produce(
            &scenario.topic,
            &[event("double-1", 1000), event("double-1", 1000)],
        )
        .await;
    scenario
        .kafka
        .produce(&scenario.topic, &[event("double-1", 1200)])
        .await;
    // Refused first (dead-lettered), then accepted when published again.
    scenario
        .kafka
        .produce(&scenario.topic, &[event("double-late", 500)])
        .await;
    scenario.wait_committed_to_end().await;
    assert_eq!(scenario.dead_letters().len(), 1);
    let mut faults = scenario.emulator.gateway().faults();
    faults.reject_order_ids.clear();
    scenario.emulator.gateway().set_faults(faults);
    scenario
        .kafka
        .produce(&scenario.topic, &[event("double-late", 500)])
        .await;
    scenario.wait_committed_to_end().await;
    let (status, output) =
        paysync_command(&["dlq", "redrive", "--config", &config_path, "--to", "source"]).await;
    assert_eq!(status, Some(0), "{output}");
    scenario.wait_committed_to_end().await;
    let suppressed_live =
        process.metric("paysync_ledger_duplicates_suppressed_total{path=\"live\"}");
    let suppressed_redrive =
        process.metric("paysync_ledger_duplicates_suppressed_total{path=\"redrive\"}");
    let corrections = process.metric("paysync_ledger_corrections_total{path=\"live\"}");
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));
    let calls: Vec<(String, u64)> = scenario
        .emulator
        .gateway()
        .orders()
        .iter()
        .map(|o| {
            (
                o.order["order_id"].as_str().unwrap().to_owned(),
                o.order["pay_fee"].as_u64().unwrap(),
            )
        })
        .collect();
    println!(
        "e2e ledger-double: calls accepted {calls:?}; suppressed live {suppressed_live:?}, redrive {suppressed_redrive:?}; corrections {corrections:?}"
    );
    assert_eq!(
        calls,
        [
            ("double-1".to_owned(), 1000),
            ("double-1".to_owned(), 1200),
            ("double-late".to_owned(), 500)
        ]
    );
    assert_eq!(suppressed_live, Some(1.0));
    assert_eq!(suppressed_redrive, Some(1.0));
    assert_eq!(corrections, Some(1.0));
    let (status, output) =
        paysync_command(&["ledger", "show", "--config", &config_path, "double-1"]).await;
    assert_eq!(status, Some(0));
    assert!(
        output.contains("fee=1200") && output.contains("request_id="),
        "{output}"
    );
}
