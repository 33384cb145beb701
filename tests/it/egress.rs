//! How calls leave the host, against real sockets: the emulator over HTTPS
//! with a certificate authority made at run time (trusted through
//! `top.ca_file`, refused without it, and the refusal halts), and a forward
//! proxy that answers 407 (to a CONNECT and to a plain request), which halts
//! too. The real forward proxy (tinyproxy) is in the end-to-end suite.

use std::path::Path;

use paysync::tools::emulator::Faults;
use paysync::top::classify::{Classifier, Disposition, HaltCause, Outcome};
use paysync::top::client::{Egress, TopClient};
use paysync::top::egress::{ProxySettings, TlsRoots, TlsTrust, decide_proxy};
use paysync::top::request::SystemParams;
use paysync::top::sign::SignMethod;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{SECRET, test_ca, top_client, top_profile};

fn client(url: &str, egress: Egress) -> TopClient {
    top_client(
        url,
        top_profile(SignMethod::HmacSha256, SECRET, SystemParams::Query),
        egress,
    )
}

fn trusting(ca_file: Option<&Path>, roots: TlsRoots) -> Egress {
    Egress {
        trust: TlsTrust {
            roots,
            ca_file: ca_file.map(Path::to_path_buf),
        },
        ..Egress::default()
    }
}

const DTO: &str = r#"{"car_no":"浙A12345","order_id":"tls-1","park_id":"p1","pay_time":"2020-10-10 12:00:00","order_type":1,"pay_fee":100}"#;

#[tokio::test]
async fn a_gateway_behind_a_private_ca_is_trusted_with_its_bundle_and_halts_without_it() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &ca.ca_pem).unwrap();
    let emulator = crate::support::https_emulator(Faults::default(), &ca).await;
    assert!(emulator.url().starts_with("https://127.0.0.1:"));
    let classifier = Classifier::default();

    for (name, egress) in [
        (
            "builtin + ca_file",
            trusting(Some(&bundle), TlsRoots::Builtin),
        ),
        ("only ca_file", trusting(Some(&bundle), TlsRoots::File)),
    ] {
        let report = client(&emulator.url(), egress).send(DTO).await;
        assert_eq!(
            classifier.classify(&report.outcome),
            Disposition::Delivered,
            "{name}: {:?}",
            report.outcome
        );
    }

    let refused = client(&emulator.url(), trusting(None, TlsRoots::Builtin))
        .send(DTO)
        .await;
    let Outcome::Untrusted { reason } = &refused.outcome else {
        panic!(
            "expected an untrusted certificate, got {:?}",
            refused.outcome
        );
    };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(!reason.contains("sign="), "the signed URL leaked: {reason}");
    assert_eq!(
        classifier.classify(&refused.outcome),
        Disposition::Halt {
            cause: HaltCause::Tls
        }
    );
    // Only the two trusted calls reached the gateway.
    assert_eq!(emulator.gateway().order_counts().0, 2);
}

/// A forward proxy that answers every request with 407.
async fn refusing_proxy() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut first_lines = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0; 4096];
            let read = stream.read(&mut buffer).await.unwrap();
            let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
            first_lines.push(text.lines().next().unwrap_or("").to_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        first_lines
    });
    (addr, task)
}

#[tokio::test]
async fn a_proxy_that_refuses_the_credentials_halts_for_https_and_for_http() {
    let (proxy, seen) = refusing_proxy().await;
    let settings = ProxySettings {
        url: Some(format!("http://{proxy}")),
        username: Some("svc".into()),
        password: Some(SecretString::from("wrong-password")),
        ..ProxySettings::default()
    };
    let classifier = Classifier::default();
    let mut outcomes = Vec::new();
    // 127.0.0.1:9 is never contacted: the proxy answers first.
    for gateway in [
        "https://127.0.0.1:9/router/rest",
        "http://127.0.0.1:9/router/rest",
    ] {
        let proxy = decide_proxy(&gateway.parse().unwrap(), &settings, |_| None).unwrap();
        assert!(proxy.route().is_some());
        let egress = Egress {
            proxy,
            ..Egress::default()
        };
        let report = client(gateway, egress).send(DTO).await;
        assert_eq!(
            classifier.classify(&report.outcome),
            Disposition::Halt {
                cause: HaltCause::Proxy
            },
            "{gateway}: {:?}",
            report.outcome
        );
        assert!(!format!("{:?}", report.outcome).contains("wrong-password"));
        outcomes.push(report.outcome);
    }
    assert!(matches!(outcomes[0], Outcome::ProxyAuth { .. }));
    assert!(matches!(
        outcomes[1],
        Outcome::HttpStatus { status: 407, .. }
    ));
    let lines = seen.await.unwrap();
    assert!(lines[0].starts_with("CONNECT 127.0.0.1:9 "), "{lines:?}");
    assert!(
        lines[1].starts_with("POST http://127.0.0.1:9/router/rest?"),
        "{lines:?}"
    );
}
