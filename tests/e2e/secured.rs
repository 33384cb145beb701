//! paysync against the broker's SASL_SSL listener (SCRAM-SHA-512, the
//! standard authorizer; `scripts/kafka secure` names its CA, user and
//! password): the bulk path under ACLs, a wrong password that ends start-up
//! with a clear error, and a dead-letter topic the user may not write, which
//! holds its partition until the ACL is granted. Each prints its counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use paysync::tools::emulator::Faults;

use super::support::{Process, event, valid_events, wait_accepted, wait_until};
use super::{SERIAL, Scenario};

/// The SASL_SSL listener's settings, as `scripts/kafka secure` prints them.
struct Secured {
    bootstrap: String,
    ca_file: String,
    username: String,
    password: String,
}

fn secured() -> Secured {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("secure")
        .output()
        .unwrap();
    assert!(output.status.success(), "scripts/kafka secure failed");
    let settings: BTreeMap<String, String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Secured {
        bootstrap: settings["bootstrap"].clone(),
        ca_file: settings["ca_file"].clone(),
        username: settings["username"].clone(),
        password: std::fs::read_to_string(&settings["password_file"]).unwrap(),
    }
}

/// `scripts/kafka acl …` (the broker's AclCommand, as a super user).
fn acl(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("acl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/kafka acl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every right the scenario's user needs on its topics and group (they
/// share the scenario's name as a prefix).
fn grant_scenario(secured: &Secured, scenario: &Scenario) {
    let principal = format!("User:{}", secured.username);
    acl(&[
        "--add",
        "--allow-principal",
        &principal,
        "--operation",
        "All",
        "--resource-pattern-type",
        "prefixed",
        "--topic",
        &scenario.topic,
        "--group",
        &scenario.group,
    ]);
}

/// The environment that points paysync at the SASL_SSL listener.
fn sasl_env<'a>(secured: &'a Secured, password: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("PAYSYNC_KAFKA__BOOTSTRAP_SERVERS", &secured.bootstrap),
        ("PAYSYNC_KAFKA__LIBRDKAFKA__security.protocol", "SASL_SSL"),
        (
            "PAYSYNC_KAFKA__LIBRDKAFKA__sasl.mechanisms",
            "SCRAM-SHA-512",
        ),
        (
            "PAYSYNC_KAFKA__LIBRDKAFKA__sasl.username",
            &secured.username,
        ),
        ("PAYSYNC_KAFKA__LIBRDKAFKA__sasl.password", password),
        (
            "PAYSYNC_KAFKA__LIBRDKAFKA__ssl.ca.location",
            &secured.ca_file,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bulk_path_runs_over_sasl_ssl_with_scram_and_acls() {
    let _serial = SERIAL.lock().await;
    let secured = secured();
    let scenario = Scenario::new(
        "sasl",
        Faults {
            isp_error_rate: 0.02,
            ..Faults::default()
        },
    )
    .await;
    grant_scenario(&secured, &scenario);
    let mut records = valid_events("sasl", 3_000);
    records.push(("sasl-bad".to_owned(), b"{not json".to_vec()));
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &scenario.config(&url, "max_in_flight = 64"),
        &sasl_env(&secured, &secured.password),
    );
    wait_accepted(&scenario.emulator, 3_000).await;
    scenario.wait_committed_to_end().await;
    let dead = scenario.dead_letters();
    assert_eq!(dead.len(), 1, "only the bad record is dead-lettered");
    assert!(
        !process.log().contains(&secured.password),
        "the SASL password reached the log"
    );
    scenario.report(records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_kafka_password_ends_start_up_with_the_cause_and_status_1() {
    let _serial = SERIAL.lock().await;
    let secured = secured();
    let scenario = Scenario::new("sasl-password", Faults::default()).await;
    grant_scenario(&secured, &scenario);
    let url = scenario.emulator.url();
    let wrong = "not-the-password-4711";
    let mut env = sasl_env(&secured, wrong);
    env.push(("PAYSYNC_KAFKA__STARTUP_TIMEOUT_MS", "6000"));
    let mut process = Process::start_with_env(&scenario.config(&url, ""), &env);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = process.log();
    let cause = log
        .lines()
        .find(|line| line.contains("kafka.startup_timeout_ms"))
        .unwrap_or_else(|| panic!("the error names the setting: {log}"));
    assert!(
        cause.contains("librdkafka said") && cause.contains("Authentication failed"),
        "the final error names the cause: {cause}"
    );
    assert!(!log.contains(wrong), "the wrong password reached the log");
    assert_eq!(status, Some(1));
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "gave up before kafka.startup_timeout_ms"
    );
    println!(
        "e2e sasl-password: wrong password: exit status 1 after {:.1} s: {cause}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_topic_the_user_may_not_write_holds_the_partition_until_granted() {
    let _serial = SERIAL.lock().await;
    let secured = secured();
    let scenario = Scenario::new("sasl-dlq", Faults::default()).await;
    grant_scenario(&secured, &scenario);
    let principal = format!("User:{}", secured.username);
    let deny = [
        "--deny-principal",
        &principal,
        "--operation",
        "Write",
        "--topic",
        &scenario.dlq,
    ];
    acl(&[&["--add"][..], &deny[..]].concat());
    // One partition: the bad record first, then valid ones behind it.
    let mut records = vec![("held".to_owned(), b"{not json".to_vec())];
    records.extend((0..50).map(|i| ("held".to_owned(), event(&format!("sasl-dlq-{i}"), 1))));
    scenario.kafka.produce(&scenario.topic, &records).await;
    let ends = scenario.end_offsets();
    let (held, _) = ends.iter().find(|(_, end)| **end > 0).unwrap();
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &scenario.config(&url, "dead_letter_stall_ms = 2000"),
        &sasl_env(&secured, &secured.password),
    );
    wait_until("readiness names the dead-letter topic", || {
        let ready = process.readiness();
        ready.contains("degraded") && ready.contains(&scenario.dlq)
    })
    .await;
    wait_accepted(&scenario.emulator, 50).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        scenario.committed()[held],
        0,
        "nothing passes the event whose copy was refused"
    );
    assert_eq!(scenario.dead_letters().len(), 0);
    println!(
        "e2e sasl-dlq: DLQ write denied: partition {held} held at 0, readiness: {}",
        process.readiness()
    );

    acl(&[&["--remove", "--force"][..], &deny[..]].concat());
    scenario.wait_committed_to_end().await;
    assert_eq!(scenario.dead_letters().len(), 1);
    let accepted = scenario.accepted_ids();
    assert!((0..50).all(|i| accepted.contains(&format!("sasl-dlq-{i}"))));
    wait_until("readiness is ready again", || {
        process.readiness().contains(r#""status":"ready""#)
    })
    .await;
    println!("e2e sasl-dlq: after the grant: dead letter written, committed to the end");
    scenario.report(records.len());
}
