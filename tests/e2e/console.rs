//! The operator console in a real browser (Debian's chromium, driven over
//! WebDriver by chromedriver) against Apache Kafka, the emulator and two
//! replicas: a failed and a good login, the whole group with every
//! partition's lag, dead letters filtered by reason, an invalid edit named
//! by field, the fix shown as a diff and redriven once, the audit, a record
//! already delivered skipped, and a viewer with no redrive control whose
//! forged POST is refused. Every page is saved as a screenshot under
//! `target/console-screenshots/` (docs/console.md shows them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use paysync::console::auth::hash_password;
use paysync::tools::emulator::Faults;

use super::support::{Process, accepted_order_ids, event, wait_accepted};
use super::{PARTITIONS, SERIAL, Scenario};

const OPERATOR_PASSWORD: &str = "console-op-7Qx";
const VIEWER_PASSWORD: &str = "console-view-3Lm";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let driver = Driver { child, port };
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("cannot start chromium through chromedriver: {error}"),
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fill(client: &Client, css: &str, text: &str) {
    let field = client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits (30 s at most) for the page to show `css`: a click's navigation ended.
async fn shown(client: &Client, css: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css} not shown: {error}"));
}

/// Waits (30 s at most) until the address holds `needle`.
async fn at(client: &Client, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "never reached a page at {needle}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(client: &Client, base: &str, user: &str, password: &str) {
    client.goto(&format!("{base}/login")).await.unwrap();
    fill(client, "#user", user).await;
    fill(client, "#password", password).await;
    click(client, "#login").await;
}

/// Reloads `url` until `ready` holds for the page's source (two minutes).
async fn until_page(
    client: &Client,
    url: &str,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        client.goto(url).await.unwrap();
        let source = client.source().await.unwrap();
        if ready(&source) {
            return source;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen; the page:\n{source}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The console's address, from the replica's start-up log.
fn console_url(replica: &Process) -> Option<String> {
    replica
        .log()
        .split("console=")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(|url| url.trim_matches('"').to_owned())
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_fixes_and_redrives_a_dead_letter_in_a_real_browser() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        "console",
        Faults {
            reject_order_ids: vec!["con-9".into()],
            ..Faults::default()
        },
    )
    .await;
    // Sixty payments; con-9 is refused by the API, con-bad has a negative fee.
    let mut records: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("con-{i}"), event(&format!("con-{i}"), 1)))
        .collect();
    let broken = String::from_utf8(event("con-bad", 1))
        .unwrap()
        .replace("\"pay_fee\":1000", "\"pay_fee\":-1");
    records.push(("con-bad".to_owned(), broken.clone().into_bytes()));
    scenario.kafka.produce(&scenario.topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ops\"\nrole = \"operator\"\npassword_hash = \"{}\"\n\n[[user]]\nname = \"eve\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
            hash_password(OPERATOR_PASSWORD),
            hash_password(VIEWER_PASSWORD)
        ),
    )
    .unwrap();
    let url = scenario.emulator.url();
    let base_toml = scenario.config(&url, "").toml();
    let console_toml = format!(
        "{base_toml}\n[console]\nenabled = true\nusers_file = \"{}\"\nstatus_interval_ms = 1000\n",
        users.display()
    );
    let status_only = format!("{base_toml}\n[console]\nstatus_interval_ms = 1000\n");
    let serving = Process::start_toml(&console_toml, &[]);
    let other = Process::start_toml(&status_only, &[]);
    wait_accepted(&scenario.emulator, 59).await;
    scenario.wait_committed_to_end().await;
    // con-9 is taken now: published again, it is delivered, so its dead
    // letter is one a redrive must skip.
    scenario.emulator.gateway().set_faults(Faults::default());
    scenario
        .kafka
        .produce(&scenario.topic, &[("con-9".to_owned(), event("con-9", 1))])
        .await;
    wait_accepted(&scenario.emulator, 60).await;
    scenario.wait_committed_to_end().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        if let Some(url) = console_url(&serving) {
            break url;
        }
        assert!(
            Instant::now() < deadline,
            "the console's address is not logged:\n{}",
            serving.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_driver, client) = browser().await;

    // A wrong password is refused and says so.
    log_in(&client, &base, "ops", "not-the-password").await;
    shown(&client, "#login-error").await;
    shoot(&client, "01-login-refused").await;
    assert!(
        text_of(&client, "#login-error")
            .await
            .contains("Wrong user or password")
    );
    log_in(&client, &base, "ops", OPERATOR_PASSWORD).await;

    // The group: both replicas ready, every partition with its lag.
    let group = until_page(
        &client,
        &base,
        "two live replicas owning all partitions",
        |page| {
            count(page, "class=\"replica\"") == 2
                && count(page, "pill ok\">ready") == 2
                && count(page, "class=\"partition\"") == PARTITIONS as usize
                && !page.contains("nobody")
        },
    )
    .await;
    assert_eq!(count(&group, "class=\"num lag\""), PARTITIONS as usize);
    shoot(&client, "02-group").await;

    // Dead letters, filtered by reason.
    client.goto(&format!("{base}/dead-letters")).await.unwrap();
    fill(&client, "#filter-reason", "invalid_event").await;
    click(&client, "#filter").await;
    at(&client, "reason=invalid_event").await;
    let listed = client.source().await.unwrap();
    assert_eq!(count(&listed, "class=\"dead-letter\""), 1, "{listed}");
    assert!(listed.contains("con-bad") && !listed.contains(">con-9<"));
    shoot(&client, "03-dead-letters-filtered").await;
    click(&client, "#dead-letters a").await;
    shown(&client, "#record-message").await;
    assert!(
        text_of(&client, "#record-message")
            .await
            .contains("pay_fee")
    );
    shoot(&client, "04-dead-letter").await;

    // An invalid edit is refused with the field named; nothing is sent.
    let invalid = broken.replace("\"pay_fee\":-1", "\"pay_fee\":\"ten\"");
    fill(&client, "#value", &invalid).await;
    fill(&client, "#why", "fee fixed by the park's operator").await;
    click(&client, "#preview").await;
    shown(&client, "#edit-problems").await;
    let problems = text_of(&client, "#edit-problems").await;
    assert!(problems.contains("pay_fee"), "{problems}");
    shoot(&client, "05-edit-refused").await;

    // The fix: a diff, a preview, then the run.
    let fixed = broken.replace("\"pay_fee\":-1", "\"pay_fee\":1500");
    fill(&client, "#value", &fixed).await;
    fill(&client, "#why", "fee fixed by the park's operator").await;
    click(&client, "#preview").await;
    shown(&client, "#diff").await;
    let diff = text_of(&client, "#diff").await;
    assert!(diff.contains("- ") && diff.contains("1500"), "{diff}");
    assert!(
        text_of(&client, "#preview-summary")
            .await
            .contains("1 would be sent")
    );
    shoot(&client, "06-redrive-preview").await;
    click(&client, "#send").await;
    at(&client, "/redrives/").await;
    let run_url = client.current_url().await.unwrap().to_string();
    let run = until_page(&client, &run_url, "the run's end", |page| {
        page.contains("pill ok\">finished")
    })
    .await;
    assert!(run.contains("sent 1, skipped as delivered 0"), "{run}");
    shoot(&client, "07-redrive-done").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = accepted_order_ids(&scenario.emulator);
    assert_eq!(
        accepted.iter().filter(|id| *id == "con-bad").count(),
        1,
        "the emulator accepted the fixed record exactly once"
    );
    let fee = scenario
        .emulator
        .gateway()
        .orders()
        .iter()
        .find(|o| o.order["order_id"] == "con-bad")
        .map(|o| o.order["pay_fee"].clone());
    assert_eq!(
        fee,
        Some(serde_json::json!(1500)),
        "the edited value was sent"
    );

    // The audit shows who did what, why and how it ended.
    client.goto(&format!("{base}/audit")).await.unwrap();
    let audit = text_of(&client, "#audit").await;
    assert!(
        audit.contains("ops") && audit.contains("(edited: pay_fee)"),
        "{audit}"
    );
    assert!(
        audit.contains("fee fixed by the park's operator") && audit.contains("sent 1"),
        "{audit}"
    );
    shoot(&client, "08-audit").await;

    // A record already delivered is skipped, and the page says so.
    client
        .goto(&format!("{base}/dead-letters?reason=business_rejected"))
        .await
        .unwrap();
    click(&client, "#dead-letters a").await;
    shown(&client, "#value").await;
    fill(&client, "#why", "customer asked again").await;
    click(&client, "#preview").await;
    shown(&client, "#preview-summary").await;
    let summary = text_of(&client, "#preview-summary").await;
    assert!(
        summary.contains("1 skipped as already delivered"),
        "{summary}"
    );
    shoot(&client, "09-already-delivered").await;
    click(&client, "#send").await;
    at(&client, "/redrives/2").await;
    let run_url = client.current_url().await.unwrap().to_string();
    let run = until_page(&client, &run_url, "the skip's end", |page| {
        page.contains("pill ok\">finished")
    })
    .await;
    assert!(run.contains("sent 0, skipped as delivered 1"), "{run}");
    assert_eq!(
        accepted_order_ids(&scenario.emulator)
            .iter()
            .filter(|id| *id == "con-9")
            .count(),
        1,
        "con-9 was not sent again"
    );

    // The ledger page finds the order with its redriven outcome; control.
    client
        .goto(&format!("{base}/ledger?order=con-bad"))
        .await
        .unwrap();
    let ledger = text_of(&client, "#ledger-entries").await;
    assert!(
        ledger.contains("accepted") && ledger.contains("redrive"),
        "{ledger}"
    );
    shoot(&client, "10-ledger").await;
    client.goto(&format!("{base}/control")).await.unwrap();
    shoot(&client, "11-control").await;

    // A viewer: plates masked, no redrive or edit control, and a forged
    // POST with its own session and token refused.
    client.delete_all_cookies().await.unwrap();
    log_in(&client, &base, "eve", VIEWER_PASSWORD).await;
    shown(&client, "#replicas").await;
    client
        .goto(&format!("{base}/dead-letters?reason=business_rejected"))
        .await
        .unwrap();
    let listed = client.source().await.unwrap();
    assert!(
        !listed.contains("preview-all"),
        "no bulk redrive for a viewer"
    );
    click(&client, "#dead-letters a").await;
    shown(&client, "#record-value").await;
    let seen = client.source().await.unwrap();
    assert!(!seen.contains("<textarea") && !seen.contains("id=\"preview\""));
    assert!(
        seen.contains("浙A•••88") && !seen.contains("浙A888888"),
        "the plate is masked"
    );
    shoot(&client, "12-viewer").await;

    // On a phone's width the group page fits: wide tables scroll inside
    // their own box, the page itself does not.
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&base).await.unwrap();
    shown(&client, "#replicas").await;
    let widths = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .unwrap();
    let (page_width, viewport) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(
        page_width <= viewport,
        "the page is {page_width} px wide on a {viewport} px screen"
    );
    shoot(&client, "13-phone-group").await;
    client.set_window_size(1280, 1000).await.unwrap();
    let cookie = client.get_named_cookie("paysync_console").await.unwrap();
    let token = seen
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let forged = reqwest::Client::new()
        .post(format!("{base}/redrive"))
        .header("cookie", format!("paysync_console={}", cookie.value()))
        .form(&[
            ("csrf", token.as_str()),
            ("record", "0@0"),
            ("why", "x"),
            ("target", "api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::FORBIDDEN);

    // A replica killed without a goodbye shows as gone once it misses three
    // publications; the survivor takes its partitions.
    other.kill();
    let killed = Instant::now();
    until_page(&client, &base, "the killed replica gone", |page| {
        page.contains("pill warn\">gone") && !page.contains("nobody")
    })
    .await;
    println!(
        "e2e console: the killed replica showed as gone after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    client.close().await.unwrap();

    println!(
        "e2e console: 2 replicas, {} partitions, 2 dead letters; the fixed one accepted once, the delivered one skipped; screenshots in {}",
        PARTITIONS,
        screenshots().display()
    );
    drop(serving);
    scenario.report(records.len());
}
