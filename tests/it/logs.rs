//! What the logs carry (each event's position) and never carry (secrets).

use std::time::Duration;

use paysync::tools::emulator::Faults;

use crate::harness::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_each_events_position_and_never_a_secret() {
    const SESSION: &str = "session-token-never-logged";
    const WRONG: &str = "wrong-secret-never-logged";
    let harness = Harness::new(1, Faults::default()).await;
    let mut records = valid_events("logs", 3);
    records.push(("logs-bad".into(), b"{\"pay_fee\": -1}".to_vec()));
    harness.produce(&records).await;
    let url = harness.stack.emulator.url();
    let top = format!("session = \"{SESSION}\"");
    let config = harness.run_config(&url, "", &top);
    let json_debug = [
        ("RUST_LOG", "paysync=debug"),
        ("PAYSYNC_LOG__FORMAT", "json"),
    ];
    let process = Process::start_with_env(&config, &json_debug);
    wait_accepted(&harness.stack.emulator, 3).await;
    wait_committed(&harness, &harness.end_offsets()).await;
    process.signal("TERM");
    let log = process.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let answered = lines
        .iter()
        .find(|l| l["message"] == "Call answered.")
        .expect("a debug line per call");
    let span = &answered["span"];
    assert_eq!(span["topic"], SOURCE);
    assert_eq!(span["partition"], 0);
    assert!(
        span["order_id"].as_str().unwrap().starts_with("logs-"),
        "{answered}"
    );
    assert_eq!(
        span["request_id"].as_str().map(str::len),
        Some(13),
        "{answered}"
    );
    let dead = lines
        .iter()
        .find(|l| l["message"] == "Event dead-lettered.")
        .expect("the dead letter is logged");
    assert_eq!(dead["span"]["offset"], 3);
    assert_eq!(process.wait_exit(Duration::from_secs(30)).await, Some(0));

    // A wrong secret halts, and the halt's log names the cause, not the secret.
    let halting = Process::start_with_env(
        &config,
        &[
            json_debug[0],
            json_debug[1],
            ("PAYSYNC_TOP__APP_SECRET", WRONG),
        ],
    );
    harness.produce(&valid_events("logs-halt", 2)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !halting.log().contains("Delivery halted") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never halted:\n{}",
            halting.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = format!("{log}\n{}", halting.log());
    for secret in [SECRET, WRONG, SESSION] {
        assert!(!all.contains(secret), "{secret} reached the logs");
    }
    assert!(!all.contains("sign="), "no signature in the logs");
    halting.kill();
}
