//! How calls leave the host, against Apache Kafka and real sockets: the
//! emulator serving HTTPS with a certificate authority made at run time
//! (refused without `top.ca_file`: delivery halts, nothing dead-lettered or
//! committed; delivered with it), and a real forward proxy (Debian's
//! tinyproxy, which `.ci/run` installs) carrying plain HTTP calls and CONNECT
//! tunnels, with `NO_PROXY` going around it. Each prints its counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paysync::tools::emulator::{Emulator, Faults};

use super::support::{
    Process, TestCa, https_emulator, test_ca, valid_events, wait_accepted, wait_until,
};
use super::{SERIAL, Scenario};

const EVENTS: usize = 300;

/// The CA's bundle in a file, as an operator would mount it.
fn bundle(ca: &TestCa, dir: &Path) -> PathBuf {
    let path = dir.join("gateway-ca.pem");
    std::fs::write(&path, &ca.ca_pem).unwrap();
    path
}

/// Produces the scenario's events and waits until all are accepted, committed
/// to the end and none dead-lettered.
async fn delivered_through(scenario: &Scenario, process: &Process, prefix: &str) {
    let records = valid_events(prefix, EVENTS);
    scenario.kafka.produce(&scenario.topic, &records).await;
    wait_accepted(&scenario.emulator, EVENTS).await;
    scenario.wait_committed_to_end().await;
    assert_eq!(scenario.dead_letters().len(), 0, "{}", process.log());
    scenario.report(EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_https_gateway_behind_a_private_ca_halts_without_its_bundle_and_delivers_with_it() {
    let _serial = SERIAL.lock().await;
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = bundle(&ca, dir.path());
    let scenario = Scenario::serving("tls", https_emulator(Faults::default(), &ca).await).await;
    let url = scenario.emulator.url();
    assert!(url.starts_with("https://"), "{url}");
    let records = valid_events("tls", EVENTS);
    scenario.kafka.produce(&scenario.topic, &records).await;

    let untrusting = Process::start(&scenario.config(&url, ""));
    wait_until("readiness says the TLS trust is broken", || {
        let ready = untrusting.readiness();
        ready.contains("halted") && ready.contains("tls")
    })
    .await;
    // Probes keep failing the same way while the partitions hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = untrusting.log();
    assert!(log.contains("not trusted") && log.contains(&url), "{log}");
    assert!(!log.contains("sign="), "the signed URL reached the log");
    assert_eq!(scenario.emulator.gateway().order_counts().0, 0);
    assert_eq!(
        scenario.dead_letters().len(),
        0,
        "an untrusted gateway is not bad data"
    );
    assert!(
        scenario.committed().values().all(|offset| *offset == 0),
        "nothing may be committed: {:?}",
        scenario.committed()
    );
    println!(
        "e2e tls: without top.ca_file: halted (tls), 0 calls accepted, 0 dead-lettered, nothing committed"
    );
    untrusting.kill();

    let top = format!("ca_file = \"{}\"", ca_file.display());
    let trusting = Process::start(&super::support::RunConfig {
        top: &top,
        ..scenario.config(&url, "")
    });
    wait_accepted(&scenario.emulator, EVENTS).await;
    scenario.wait_committed_to_end().await;
    assert_eq!(scenario.dead_letters().len(), 0);
    assert!(
        trusting.readiness().contains(r#""status":"ready""#),
        "{}",
        trusting.readiness()
    );
    println!("e2e tls: with top.ca_file: every event delivered over HTTPS");
    scenario.report(records.len());
}

/// tinyproxy on a free port, logging every request to its stderr; killed on
/// drop.
struct ForwardProxy {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ForwardProxy {
    async fn start() -> ForwardProxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tinyproxy.log");
        let config = dir.path().join("tinyproxy.conf");
        // No ConnectPort line: CONNECT is allowed to any port (the emulator's
        // is chosen at run time).
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Info\nMaxClients 64\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("tinyproxy")
            .args(["-d", "-c", config.to_str().unwrap()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("tinyproxy is installed (.ci/run installs it)");
        let proxy = ForwardProxy {
            child,
            port,
            log,
            _dir: dir,
        };
        wait_until("tinyproxy listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log lines that name the emulator's port.
    fn requests_to(&self, emulator: &Emulator) -> Vec<String> {
        let port = emulator
            .url()
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&format!("127.0.0.1:{port}")))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_pass_through_a_real_forward_proxy_and_no_proxy_goes_around_it() {
    let _serial = SERIAL.lock().await;
    let proxy = ForwardProxy::start().await;
    let proxy_url = proxy.url();

    // Plain HTTP: the proxy receives the calls themselves (absolute URLs).
    let scenario = Scenario::new("proxy-http", Faults::default()).await;
    let url = scenario.emulator.url();
    let process =
        Process::start_with_env(&scenario.config(&url, ""), &[("HTTP_PROXY", &proxy_url)]);
    delivered_through(&scenario, &process, "proxy-http").await;
    assert!(
        process.log().contains(&format!("{proxy_url} (HTTP_PROXY)")),
        "the start-up log names the proxy: {}",
        process.log()
    );
    let plain = proxy.requests_to(&scenario.emulator);
    assert!(
        plain.iter().any(|l| l.contains("POST http://127.0.0.1:")),
        "the proxy saw no call: {plain:?}"
    );
    println!(
        "e2e proxy: plain HTTP through tinyproxy: {} proxy log lines name the gateway",
        plain.len()
    );
    drop(process);

    // HTTPS: a CONNECT tunnel, TLS end to end with the gateway.
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let top = format!("ca_file = \"{}\"", bundle(&ca, dir.path()).display());
    let scenario =
        Scenario::serving("proxy-https", https_emulator(Faults::default(), &ca).await).await;
    let url = scenario.emulator.url();
    let config = super::support::RunConfig {
        top: &top,
        ..scenario.config(&url, "")
    };
    let process = Process::start_with_env(&config, &[("HTTPS_PROXY", &proxy_url)]);
    delivered_through(&scenario, &process, "proxy-https").await;
    let tunnels = proxy.requests_to(&scenario.emulator);
    assert!(
        tunnels.iter().any(|l| l.contains("CONNECT 127.0.0.1:")),
        "the proxy saw no CONNECT: {tunnels:?}"
    );
    println!(
        "e2e proxy: HTTPS through a CONNECT tunnel: {} proxy log lines name the gateway",
        tunnels.len()
    );
    drop(process);

    // NO_PROXY: the gateway's address goes around the proxy.
    let scenario = Scenario::new("proxy-bypass", Faults::default()).await;
    let url = scenario.emulator.url();
    let process = Process::start_with_env(
        &scenario.config(&url, ""),
        &[
            ("HTTP_PROXY", &proxy_url),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    );
    delivered_through(&scenario, &process, "proxy-bypass").await;
    assert!(process.log().contains("none, direct"), "{}", process.log());
    let bypassed = proxy.requests_to(&scenario.emulator);
    assert!(
        bypassed.is_empty(),
        "NO_PROXY did not bypass the proxy: {bypassed:?}"
    );
    println!("e2e proxy: NO_PROXY: delivered directly, 0 proxy log lines name the gateway");
}
