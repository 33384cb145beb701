//! The `paysync` binary as a user runs it: `sign`, `check-config`, the
//! `emulator` as a separate process (found through the URL it prints), and
//! `call` against it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_paysync");

fn paysync(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn sign_reproduces_the_published_vector() {
    let output = paysync(&[
        "sign",
        "--app-secret",
        "helloworld",
        "--show-base",
        "method=taobao.item.seller.get",
        "app_key=12345678",
        "session=test",
        "timestamp=2016-01-01 12:00:00",
        "format=json",
        "v=2.0",
        "sign_method=md5",
        "fields=num_iid,title,nick,price,num",
        "num_iid=11223344",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "66987CB115214E59E6EC978214934FB8");
    assert_eq!(
        lines[1],
        "<secret>app_key12345678fieldsnum_iid,title,nick,price,numformatjsonmethodtaobao.item.seller.getnum_iid11223344sessiontestsign_methodmd5timestamp2016-01-01 12:00:00v2.0<secret>"
    );
    assert!(!text.contains("helloworld"));
}

#[test]
fn sign_takes_the_method_from_the_flag_or_the_parameter() {
    let by_flag = paysync(&[
        "sign",
        "--app-secret",
        "helloworld",
        "--sign-method",
        "hmac",
        "a=1",
    ]);
    let by_param = paysync(&[
        "sign",
        "--app-secret",
        "helloworld",
        "a=1",
        "sign_method=hmac",
    ]);
    assert!(by_flag.status.success() && by_param.status.success());
    assert_eq!(stdout(&by_flag).trim().len(), 32);
    assert_ne!(
        stdout(&by_flag),
        stdout(&by_param),
        "sign_method is itself signed"
    );
    let conflict = paysync(&[
        "sign",
        "--app-secret",
        "x",
        "--sign-method",
        "md5",
        "sign_method=hmac",
    ]);
    assert_eq!(conflict.status.code(), Some(64));
    let malformed = paysync(&["sign", "--app-secret", "x", "novalue"]);
    assert_eq!(malformed.status.code(), Some(64));
    assert!(stderr(&malformed).contains("NAME=VALUE"));
}

#[test]
fn check_config_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[top]\ngateway_url = \"not a url\"\nrequest_timeout_ms = 0\n[delivery]\nmax_in_flight = \"many\"\nretry_max_attemps = 3\n",
    )
    .unwrap();
    let output = paysync(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let text = stderr(&output);
    // Type errors and unknown keys are listed with the semantic problems.
    for key in [
        "delivery.max_in_flight",
        "delivery.retry_max_attemps",
        "top.gateway_url",
        "top.app_key",
        "top.app_secret",
        "top.request_timeout_ms",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/paysync.example.toml");
    let output = Command::new(BIN)
        .args(["check-config", "--config", example.to_str().unwrap()])
        .env("PAYSYNC_TOP__APP_SECRET", "very-secret-value")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("ok"));
    assert!(!stdout(&output).contains("very-secret-value"));
}

#[test]
fn check_config_warns_of_group_settings_that_would_stop_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("group.toml");
    let check = |kafka: &str| {
        std::fs::write(
            &path,
            format!("[top]\napp_key = \"k\"\napp_secret = \"s\"\n[kafka]\n{kafka}\n"),
        )
        .unwrap();
        let output = paysync(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    let text = check(
        "group_protocol = \"classic\"\nsession_timeout_ms = 6000\nrevoke_drain_timeout_ms = 3000",
    );
    assert!(
        text.contains("warning: kafka.session_timeout_ms (6000 ms) is shorter than the cluster needs to notice a dead broker"),
        "{text}"
    );
    assert!(
        text.contains("warning: the classic group protocol without static membership"),
        "{text}"
    );
    let text = check("group_protocol = \"classic\"\ngroup_instance_id = \"paysync-0\"");
    assert!(!text.contains("warning:"), "{text}");
    assert!(
        text.contains("classic protocol, static member paysync-0"),
        "{text}"
    );
}

/// check-config shows where traces go, as the `OTEL_*` variables decided
/// when the file says nothing, and never a header's value.
#[test]
fn check_config_shows_where_traces_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("traces.toml");
    std::fs::write(
        &path,
        "[top]\napp_key = \"k\"\napp_secret = \"s\"\n[tracing]\nenabled = true\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector.example:4318",
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20collector-token",
        )
        .env("OTEL_SERVICE_NAME", "bridge-7")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(
            "traces      http://collector.example:4318/v1/traces over HTTP/protobuf \
             (OTEL_EXPORTER_OTLP_ENDPOINT), service.name bridge-7, sampling 1, headers authorization"
        ),
        "{text}"
    );
    assert!(!text.contains("collector-token"), "{text}");
}

/// A running `paysync emulator` child; killed on drop.
struct EmulatorProcess {
    child: Child,
    url: String,
}

impl EmulatorProcess {
    fn start(extra: &[&str]) -> EmulatorProcess {
        let mut child = Command::new(BIN)
            .args([
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--app-key",
                "12345678",
                "--app-secret",
                "helloworld",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("emulator listening on ")
            .expect("the emulator prints its URL")
            .to_owned();
        EmulatorProcess { child, url }
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(config: &str, event: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("paysync.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["call", "--config", config_path.to_str().unwrap(), "-"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const EVENT: &str = r#"{"carNo":"浙A888888","orderId":"BK1","parkId":"p1","payTime":"2020-10-10 20:00:00","orderType":1,"payFee":1000}"#;

#[test]
fn call_delivers_one_event_to_the_emulator_process() {
    let emulator = EmulatorProcess::start(&[]);
    let output = call(
        &format!(
            "[top]\ngateway_url = \"{}\"\napp_key = \"12345678\"\napp_secret = \"helloworld\"\n",
            emulator.url
        ),
        EVENT,
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(text.contains("disposition delivered"), "{text}");
    assert!(text.contains("pay_order_info_dto"), "{text}");
    assert!(!text.contains("helloworld"), "the secret leaked: {text}");
    let orders: serde_json::Value =
        http::blocking_get(&emulator.url.replace("/router/rest", "/emulator/orders"));
    assert_eq!(orders["accepted"], 1);
    assert_eq!(orders["orders"][0]["order"]["order_id"], "BK1");
}

#[test]
fn call_with_a_wrong_secret_reports_a_halt() {
    let emulator = EmulatorProcess::start(&[]);
    let output = call(
        &format!(
            "[top]\ngateway_url = \"{}\"\napp_key = \"12345678\"\napp_secret = \"wrong-secret\"\n",
            emulator.url
        ),
        EVENT,
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("halt (signature)"), "{text}");
    assert!(!text.contains("wrong-secret") && !stderr(&output).contains("wrong-secret"));
}

#[test]
fn call_refuses_an_invalid_event_naming_the_field() {
    let output = call(
        "[top]\napp_key = \"k\"\napp_secret = \"s\"\n",
        r#"{"car_no":"A","order_id":"B","park_id":"C","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":-3}"#,
    );
    assert_eq!(output.status.code(), Some(65));
    assert!(
        stderr(&output).contains("pay_fee: must not be negative"),
        "{}",
        stderr(&output)
    );
}

#[cfg(unix)]
#[test]
fn the_emulator_stops_cleanly_on_sigterm() {
    let mut emulator = EmulatorProcess::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &emulator.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = emulator.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}

mod http {
    /// A tiny blocking GET for JSON, on its own runtime (tests here are sync).
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let body = crate::support::http_get(url)
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            serde_json::from_str(&body).unwrap()
        })
    }
}

/// A number on the summary line that starts with `label`.
fn summary_number(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} in:\n{text}"));
    line[line.find(label).unwrap() + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number on {line:?}"))
}

#[test]
fn the_demo_accounts_for_every_event_and_its_summary_adds_up() {
    let output = paysync(&[
        "demo",
        "--events",
        "400",
        "--rate",
        "5000",
        "--malformed-rate",
        "0.02",
        "--reject-rate",
        "0.01",
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        stderr(&output).contains("/metrics"),
        "the demo says where its metrics are"
    );
    let produced = summary_number(&text, "produced");
    let delivered = summary_number(&text, "delivered");
    let dead = summary_number(&text, "dead-lettered");
    // Every hundredth payment is published twice: sent once, the copy suppressed.
    let republished = summary_number(&text, "published twice (producer retries)");
    let suppressed = summary_number(&text, "duplicates suppressed (ledger)");
    assert_eq!(republished, 4, "{text}");
    assert_eq!(produced, 400 + republished);
    // A copy of a payment the API refused is sent again, not suppressed.
    assert!((1..=republished).contains(&suppressed), "{text}");
    assert!(text.contains("orderamount.sync report"), "{text}");
    assert_eq!(
        summary_number(&text, "duplicate calls at the API"),
        0,
        "{text}"
    );
    assert_eq!(delivered + dead + suppressed, produced, "{text}");
    assert!(
        summary_number(&text, "invalid_event / invalid_event") >= 5,
        "{text}"
    );
    assert!(
        text.contains("accounted for                      404 of 404"),
        "{text}"
    );
    assert!(
        text.contains("committed to the end               yes"),
        "{text}"
    );
}
