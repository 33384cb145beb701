//! The console's security on the mock cluster, over real HTTP: every route
//! refuses a request without a session, a POST from another origin or
//! without the form's token, and a viewer's POST to an operator's action;
//! the cookie's flags; throttled logins; dead letters carrying markup shown
//! inert; plates masked for viewers; and no secret in any response body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paysync::admin::AdminServer;
use paysync::console::{Console, auth::hash_password};
use paysync::tools::emulator::Faults;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use secrecy::ExposeSecret;

use crate::harness::*;
use crate::support::*;

const OPERATOR_PASSWORD: &str = "op-pass-3d1f";
const VIEWER_PASSWORD: &str = "view-pass-9a2c";

/// Markup an attacker could put into an event.
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(2)>";

/// A console on the harness, with an operator `ops` and a viewer `eve`.
struct Served {
    base: String,
    server: AdminServer,
    console: Arc<Console>,
    /// The users file's text (it holds the hashes, which no page may show).
    users: String,
    _dir: tempfile::TempDir,
}

async fn serve(harness: &Harness, per_minute: u32) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "[[user]]\nname = \"ops\"\nrole = \"operator\"\npassword_hash = \"{}\"\n\n[[user]]\nname = \"eve\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
        hash_password(OPERATOR_PASSWORD),
        hash_password(VIEWER_PASSWORD)
    );
    let path = dir.path().join("users.toml");
    std::fs::write(&path, &users).unwrap();
    let mut settings = harness.settings();
    settings.console.enabled = true;
    settings.console.users_file = Some(path);
    settings.console.login_attempts_per_minute = per_minute;
    let console = Console::open(&settings, None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = AdminServer::serve_router(listener, paysync::console::router(&console)).unwrap();
    Served {
        base: format!("http://{}/console", server.addr()),
        server,
        console,
        users,
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Every body a test read, to look for secrets in at the end.
#[derive(Default)]
struct Bodies(Vec<String>);

impl Bodies {
    async fn read(&mut self, response: reqwest::Response) -> (StatusCode, String) {
        let status = response.status();
        let body = response.text().await.unwrap();
        self.0.push(body.clone());
        (status, body)
    }
}

/// Logs in; the session cookie (`name=value`) and the Set-Cookie line.
async fn login(base: &str, user: &str, password: &str) -> (String, String) {
    let response = client()
        .post(format!("{base}/login"))
        .form(&[("user", user), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "login as {user}");
    let line = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = line.split(';').next().unwrap().to_owned();
    (pair, line)
}

/// The CSRF token on a page.
fn token(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a token")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_refuses_what_it_must_and_shows_records_inert() {
    let harness = Harness::new(1, Faults::default()).await;
    // One valid payment, and one carrying markup in every text field it has
    // (dead-lettered as invalid: its fee is negative).
    let hostile = format!(
        r#"{{"car_no":"浙A12345","order_id":"{}","park_id":"{}","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":-1}}"#,
        SCRIPT.replace('"', "\\\""),
        IMG.replace('"', "\\\"")
    );
    harness
        .produce(&[
            ("ok-1".to_owned(), event("ok-1", 1)),
            ("hostile".to_owned(), hostile.into_bytes()),
        ])
        .await;
    let running = Running::start(harness.settings()).await;
    running
        .wait_for("one delivery and one dead letter", |s| {
            s.delivered == 1 && s.dead_lettered() == 1
        })
        .await;
    running.stop().await;
    let served = serve(&harness, 4).await;
    let base = &served.base;
    let http = client();
    let mut bodies = Bodies::default();

    // Without a session: every page goes to the login, every action is 401.
    let pages = [
        "",
        "/",
        "/dead-letters",
        "/dead-letters/0/0",
        "/redrives",
        "/redrives/1",
        "/ledger",
        "/ledger/unknown",
        "/control",
        "/audit",
    ];
    for path in pages {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "GET {path}");
        assert_eq!(response.headers()[LOCATION], "/console/login", "GET {path}");
    }
    let actions = [
        "/logout",
        "/dead-letters/0/0/preview",
        "/redrive/preview",
        "/redrive",
        "/ledger/resolve",
        "/control/pause",
        "/control/resume",
        "/control/set",
    ];
    for path in actions {
        let response = http
            .post(format!("{base}{path}"))
            .form(&[("why", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "POST {path}");
    }

    // A wrong password says so; the fifth attempt in a minute is throttled.
    for attempt in 1..=4 {
        let response = http
            .post(format!("{base}/login"))
            .form(&[("user", "mallory"), ("password", "guess")])
            .send()
            .await
            .unwrap();
        let (status, body) = bodies.read(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
        assert!(body.contains("Wrong user or password"), "{body}");
    }
    let response = http
        .post(format!("{base}/login"))
        .form(&[("user", "mallory"), ("password", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    // The session cookie: HttpOnly, SameSite=Strict, scoped to the console.
    let (operator, line) = login(base, "ops", OPERATOR_PASSWORD).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(line.contains(flag), "{line} lacks {flag}");
    }
    assert!(
        !line.contains("Secure"),
        "a loopback console without TLS: {line}"
    );

    // The hostile dead letter is shown as text, on the list and its page.
    let get = |path: &str, cookie: &str| {
        http.get(format!("{base}{path}"))
            .header(COOKIE, cookie.to_owned())
            .send()
    };
    let (status, list) = bodies
        .read(get("/dead-letters", &operator).await.unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, record) = bodies
        .read(get("/dead-letters/0/0", &operator).await.unwrap())
        .await;
    for page in [&list, &record] {
        assert!(!page.contains("<script>alert"), "markup in a page");
        assert!(!page.contains("<img src=x"), "markup in a page");
    }
    assert!(
        record.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{record}"
    );
    assert!(
        record.contains("pay_fee"),
        "the reason names the field: {record}"
    );
    assert!(record.contains("浙A12345"), "operators see plates whole");

    // With a session, a POST from another origin, from another site, or
    // without the page's token is refused, and changes nothing.
    let csrf = token(&record);
    let edit = [
        ("csrf", csrf.as_str()),
        ("value", "{}"),
        ("why", "test"),
        ("target", "api"),
    ];
    let forged = http
        .post(format!("{base}/dead-letters/0/0/preview"))
        .header(COOKIE, operator.clone())
        .header(ORIGIN, "http://evil.example")
        .form(&edit)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let cross_site = http
        .post(format!("{base}/control/pause"))
        .header(COOKIE, operator.clone())
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str()), ("all", "yes"), ("why", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let tokenless = http
        .post(format!("{base}/control/pause"))
        .header(COOKIE, operator.clone())
        .form(&[("all", "yes"), ("why", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(tokenless.status(), StatusCode::FORBIDDEN);
    assert!(served.console_pauses().is_empty(), "nothing was paused");

    // An invalid edit names the field and sends nothing.
    let (status, refused) = bodies
        .read(
            http.post(format!("{base}/dead-letters/0/0/preview"))
                .header(COOKIE, operator.clone())
                .header(ORIGIN, base.trim_end_matches("/console").to_owned())
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("value", r#"{"car_no":"浙A1","order_id":"x","park_id":"p","pay_time":"2020-10-10 20:00:00","order_type":1,"pay_fee":"ten"}"#),
                    ("why", "fix"),
                    ("target", "api"),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.contains("pay_fee:"), "{refused}");

    // A viewer sees plates masked and no redrive or edit control, and the
    // server refuses its POST even with a valid token.
    let (viewer, _) = login(base, "eve", VIEWER_PASSWORD).await;
    let (_, seen) = bodies
        .read(get("/dead-letters/0/0", &viewer).await.unwrap())
        .await;
    assert!(
        !seen.contains("浙A12345") && seen.contains("浙A•••45"),
        "plate masked for viewers"
    );
    assert!(
        !seen.contains("/preview\""),
        "no redrive control for a viewer"
    );
    assert!(!seen.contains("<textarea"), "no edit control for a viewer");
    let (_, listed) = bodies
        .read(get("/dead-letters", &viewer).await.unwrap())
        .await;
    assert!(
        !listed.contains("/redrive/preview"),
        "no redrive control for a viewer"
    );
    let viewer_csrf = token(&seen);
    for path in [
        "/dead-letters/0/0/preview",
        "/redrive",
        "/control/pause",
        "/control/set",
        "/ledger/resolve",
    ] {
        let response = http
            .post(format!("{base}{path}"))
            .header(COOKIE, viewer.clone())
            .form(&[
                ("csrf", viewer_csrf.as_str()),
                ("record", "0@0"),
                ("all", "yes"),
                ("assignments", "rate=1"),
                ("why", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "viewer POST {path}"
        );
    }

    // Every page answers with a policy that allows no script.
    let response = get("/control", &viewer).await.unwrap();
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("default-src 'none'") && !policy.contains("script-src"),
        "{policy}"
    );
    for path in pages {
        bodies.read(get(path, &operator).await.unwrap()).await;
    }

    // No secret in any body: the app secret, a password, a hash.
    let secret = harness
        .stack
        .settings
        .top
        .app_secret
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_owned();
    let hashes: Vec<&str> = served
        .users
        .lines()
        .filter_map(|line| line.strip_prefix("password_hash = \""))
        .map(|hash| hash.trim_end_matches('"'))
        .collect();
    assert_eq!(hashes.len(), 2);
    for body in &bodies.0 {
        for secret in [secret.as_str(), OPERATOR_PASSWORD, VIEWER_PASSWORD]
            .into_iter()
            .chain(hashes.iter().copied())
        {
            assert!(!body.contains(secret), "a secret in a response body");
        }
    }
    assert!(bodies.0.len() > 15, "the check saw the pages");
    served.stop().await;
}

impl Served {
    fn console_pauses(&self) -> HashMap<String, String> {
        self.console
            .control_view()
            .pauses
            .keys()
            .map(|target| (target.key(), target.describe()))
            .collect()
    }

    async fn stop(self) {
        self.server.stop().await;
        let console = self.console;
        tokio::task::spawn_blocking(move || console.close())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `paysync console` over HTTPS: the handshake with its certificate, the
/// peer's address known to the handlers (the login throttle needs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_https_from_pem_files() {
    use axum::extract::ConnectInfo;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (
        dir.path().join("console.crt"),
        dir.path().join("console.key"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls = paysync::console::tls::server_config(&cert_file, &key_file).unwrap();
    let router =
        axum::Router::new().route(
            "/console/login",
            axum::routing::get(
                |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move {
                    peer.ip().to_string()
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(paysync::console::tls::serve(listener, router, tls));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://{address}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "127.0.0.1");
    // Plain HTTP gets no answer from a TLS listener.
    assert!(
        client
            .get(format!("http://{address}/console/login"))
            .send()
            .await
            .is_err()
    );
    // A key file that holds no key is named, and the key never printed.
    std::fs::write(&key_file, "not a key").unwrap();
    let error = paysync::console::tls::server_config(&cert_file, &key_file)
        .err()
        .unwrap()
        .to_string();
    assert!(error.starts_with("console.tls_key_file"), "{error}");
    server.abort();
}
