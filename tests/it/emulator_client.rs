//! paysync's TOP client against the emulator over real loopback HTTP: every
//! sign method is accepted, tampered requests get the gateway's codes, other
//! SDK styles are accepted, and each fault surfaces as the outcome and
//! disposition the pipeline relies on.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use paysync::event::{OrderType, PaymentEvent};
use paysync::gmt8;
use paysync::tools::emulator::journal::Journal;
use paysync::tools::emulator::{Emulator, Faults, Gateway, GatewaySettings, RateLimit};
use paysync::top::classify::{
    Classifier, Disposition, HaltCause, Outcome, RejectCause, RetryCause,
};
use paysync::top::client::{Egress, TopClient};
use paysync::top::request::{RequestProfile, ResponseFormat, SystemParams, dto_json};
use paysync::top::response::TopResponse;
use paysync::top::sign::{self, SignMethod};
use secrecy::SecretString;

async fn emulator(faults: Faults) -> Emulator {
    crate::support::emulator_seeded(faults, 1).await
}

use crate::support::{APP_KEY, SECRET, top_client, top_profile};

fn profile(method: SignMethod, secret: &str) -> RequestProfile {
    top_profile(method, secret, SystemParams::Body)
}

fn client(url: &str, profile: RequestProfile) -> TopClient {
    top_client(url, profile, Egress::default())
}

fn event(order_id: &str) -> PaymentEvent {
    PaymentEvent {
        car_no: "浙A888888".into(),
        order_id: order_id.into(),
        park_id: "p123456".into(),
        pay_time: Utc.with_ymd_and_hms(2020, 10, 10, 12, 0, 0).unwrap(),
        order_type: OrderType::Payment,
        pay_fee: 1000,
        pay_order_id: None,
        pay_method: Some("WX".into()),
    }
}

fn classify(outcome: &Outcome) -> Disposition {
    Classifier::default().classify(outcome)
}

fn error_code(outcome: &Outcome) -> Option<i64> {
    match outcome {
        Outcome::Answered {
            response: TopResponse::Error(error),
            ..
        } => Some(error.code),
        _ => None,
    }
}

#[tokio::test]
async fn every_sign_method_format_and_parameter_place_is_accepted_and_journaled() {
    let emulator = emulator(Faults::default()).await;
    let mut n = 0;
    for method in SignMethod::ALL {
        for (format, simplify, place) in [
            (ResponseFormat::Json, false, SystemParams::Body),
            (ResponseFormat::Json, false, SystemParams::Query),
            (ResponseFormat::Json, true, SystemParams::Body),
            (ResponseFormat::Xml, false, SystemParams::Query),
        ] {
            let mut profile = profile(method, SECRET);
            profile.format = format;
            profile.simplify = simplify;
            profile.system_params = place;
            n += 1;
            let report = client(&emulator.url(), profile)
                .send(&dto_json(&event(&format!("BK{n}"))))
                .await;
            assert_eq!(
                classify(&report.outcome),
                Disposition::Delivered,
                "{method} {format:?} simplify={simplify} {place:?}: {:?}",
                report.outcome
            );
            assert_eq!(report.request_id.as_deref().map(str::len), Some(13));
        }
    }
    let orders = emulator.gateway().orders();
    assert_eq!(orders.len(), n);
    assert_eq!(orders[0].order["car_no"], "浙A888888");
    assert_eq!(orders[0].order["pay_time"], "2020-10-10 20:00:00");
    assert_eq!(emulator.gateway().order_counts(), (n, n, 0));
}

#[tokio::test]
async fn a_wrong_secret_is_an_invalid_signature_that_halts() {
    let emulator = emulator(Faults::default()).await;
    let report = client(
        &emulator.url(),
        profile(SignMethod::HmacSha256, "not-the-secret"),
    )
    .send(&dto_json(&event("BK1")))
    .await;
    assert_eq!(error_code(&report.outcome), Some(25));
    assert_eq!(
        classify(&report.outcome),
        Disposition::Halt {
            cause: HaltCause::Signature
        }
    );
    assert!(emulator.gateway().orders().is_empty());
}

#[tokio::test]
async fn a_value_changed_after_signing_is_rejected() {
    let emulator = emulator(Faults::default()).await;
    let client = client(&emulator.url(), profile(SignMethod::Md5, SECRET));
    let mut request = client.profile().sign(&dto_json(&event("BK1")), Utc::now());
    let business = request
        .body
        .iter_mut()
        .find(|(_, value)| value.contains("1000"))
        .expect("the order's amount is in the body");
    business.1 = business.1.replace("1000", "1");
    let report = client.send_request(request).await;
    assert_eq!(error_code(&report.outcome), Some(25));
    assert!(emulator.gateway().orders().is_empty());
}

#[tokio::test]
async fn a_stale_timestamp_is_invalid_and_halts_as_a_clock_problem() {
    let emulator = emulator(Faults::default()).await;
    let client = client(&emulator.url(), profile(SignMethod::HmacMd5, SECRET));
    let request = client.profile().sign(
        &dto_json(&event("BK1")),
        Utc::now() - chrono::Duration::minutes(11),
    );
    let report = client.send_request(request).await;
    assert_eq!(error_code(&report.outcome), Some(31));
    assert_eq!(
        classify(&report.outcome),
        Disposition::Halt {
            cause: HaltCause::Clock
        }
    );
    // Nine minutes off is within the allowed skew.
    let request = client.profile().sign(
        &dto_json(&event("BK2")),
        Utc::now() + chrono::Duration::minutes(9),
    );
    assert_eq!(
        classify(&client.send_request(request).await.outcome),
        Disposition::Delivered
    );
}

/// The .NET and Node SDKs put everything in the body; the Python SDK sends epoch milliseconds.
#[tokio::test]
async fn all_parameters_in_the_body_with_epoch_millis_are_accepted() {
    let emulator = emulator(Faults::default()).await;
    let timestamp = Utc::now().timestamp_millis().to_string();
    let dto = dto_json(&event("BK-PY"));
    let mut params = vec![
        ("method", "taobao.taojie.parking.order.payinfo.sync"),
        ("app_key", APP_KEY),
        ("timestamp", timestamp.as_str()),
        ("v", "2.0"),
        ("format", "json"),
        ("sign_method", "md5"),
        ("pay_order_info_dto", dto.as_str()),
    ];
    let signature = sign::sign(
        SignMethod::Md5,
        &SecretString::from(SECRET),
        params.iter().copied(),
    );
    params.push(("sign", signature.as_str()));
    let response = paysync::top::client::loopback_client()
        .unwrap()
        .post(emulator.url())
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("\"model\":true"), "{body}");
    assert_eq!(emulator.gateway().orders()[0].order["order_id"], "BK-PY");
}

#[tokio::test]
async fn bad_dto_data_is_dead_lettered_not_halted() {
    let emulator = emulator(Faults::default()).await;
    let client = client(&emulator.url(), profile(SignMethod::HmacSha256, SECRET));
    let report = client.send(r#"{"car_no":"A","order_id":"B","park_id":"C","pay_time":"2020-10-10 20:00:00","order_type":5,"pay_fee":1}"#).await;
    assert_eq!(error_code(&report.outcome), Some(41));
    assert_eq!(
        classify(&report.outcome),
        Disposition::DeadLetter {
            cause: RejectCause::InvalidArguments
        }
    );
}

#[tokio::test]
async fn transport_faults_are_retried() {
    let emulator = emulator(Faults::default()).await;
    let client = client(&emulator.url(), profile(SignMethod::HmacSha256, SECRET));
    let cases = [
        (
            Faults {
                drop_connection_rate: 1.0,
                ..Faults::default()
            },
            RetryCause::Transport,
        ),
        (
            Faults {
                http_502_rate: 1.0,
                ..Faults::default()
            },
            RetryCause::HttpStatus,
        ),
        (
            Faults {
                unavailable_rate: 1.0,
                ..Faults::default()
            },
            RetryCause::Unavailable,
        ),
        (
            Faults {
                isp_error_rate: 1.0,
                ..Faults::default()
            },
            RetryCause::ServerError,
        ),
        (
            Faults {
                service_failure_rate: 1.0,
                ..Faults::default()
            },
            RetryCause::ServiceFailure,
        ),
        (
            Faults {
                latency_ms: 3_000,
                ..Faults::default()
            },
            RetryCause::Timeout,
        ),
    ];
    for (faults, cause) in cases {
        emulator.gateway().set_faults(faults.clone());
        let report = client.send(&dto_json(&event("BK1"))).await;
        assert_eq!(
            classify(&report.outcome),
            Disposition::Retry { cause, wait: None },
            "{faults:?}: {:?}",
            report.outcome
        );
    }
    emulator.gateway().set_faults(Faults {
        http_503_rate: 1.0,
        ..Faults::default()
    });
    let report = client.send(&dto_json(&event("BK1"))).await;
    assert_eq!(
        report.outcome,
        Outcome::HttpStatus {
            status: 503,
            retry_after: Some(Duration::from_secs(1))
        }
    );
    assert!(
        emulator.gateway().orders().is_empty(),
        "no fault may accept an order"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let emulator = emulator(Faults::default()).await;
    let url = emulator.url();
    emulator.stop().await;
    let report = client(&url, profile(SignMethod::HmacSha256, SECRET))
        .send(&dto_json(&event("BK1")))
        .await;
    assert!(
        matches!(report.outcome, Outcome::Connect { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        classify(&report.outcome),
        Disposition::Retry {
            cause: RetryCause::Connect,
            wait: None
        }
    );
}

#[tokio::test]
async fn flow_control_bans_with_the_announced_time() {
    let faults = Faults {
        rate_limit: Some(RateLimit {
            calls_per_second: 3,
            burst: None,
            ban_seconds: 5,
        }),
        ..Faults::default()
    };
    let emulator = emulator(faults).await;
    let client = client(&emulator.url(), profile(SignMethod::HmacSha256, SECRET));
    let mut dispositions = Vec::new();
    for n in 0..5 {
        dispositions.push(classify(
            &client
                .send(&dto_json(&event(&format!("BK{n}"))))
                .await
                .outcome,
        ));
    }
    assert_eq!(&dispositions[..3], &[Disposition::Delivered; 3]);
    for disposition in &dispositions[3..] {
        let Disposition::Retry {
            cause: RetryCause::Throttled,
            wait: Some(wait),
        } = disposition
        else {
            panic!("expected a ban, got {disposition:?}");
        };
        assert!((4..=5).contains(&wait.as_secs()), "{wait:?}");
    }
    assert_eq!(emulator.gateway().orders().len(), 3);
}

#[tokio::test]
async fn permission_and_session_problems_halt() {
    let emulator = emulator(Faults {
        permission_denied: true,
        ..Faults::default()
    })
    .await;
    let report = client(&emulator.url(), profile(SignMethod::HmacSha256, SECRET))
        .send(&dto_json(&event("BK1")))
        .await;
    assert_eq!(
        classify(&report.outcome),
        Disposition::Halt {
            cause: HaltCause::Permission
        }
    );

    let settings = GatewaySettings {
        apps: HashMap::from([(APP_KEY.to_owned(), SecretString::from(SECRET))]),
        sessions: Some(["good-session".to_owned()].into()),
        ..GatewaySettings::default()
    };
    let with_sessions = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        Gateway::new(settings, Faults::default(), Journal::new(None).unwrap()),
    )
    .await
    .unwrap();
    let mut profile = profile(SignMethod::HmacSha256, SECRET);
    let missing = client(&with_sessions.url(), profile.clone())
        .send(&dto_json(&event("BK1")))
        .await;
    assert_eq!(error_code(&missing.outcome), Some(26));
    profile.session = Some(SecretString::from("expired"));
    let invalid = client(&with_sessions.url(), profile.clone())
        .send(&dto_json(&event("BK1")))
        .await;
    assert_eq!(error_code(&invalid.outcome), Some(27));
    assert_eq!(
        classify(&invalid.outcome),
        Disposition::Halt {
            cause: HaltCause::Session
        }
    );
    profile.session = Some(SecretString::from("good-session"));
    let good = client(&with_sessions.url(), profile)
        .send(&dto_json(&event("BK1")))
        .await;
    assert_eq!(classify(&good.outcome), Disposition::Delivered);
}

/// A client that formats the host's UTC wall clock instead of GMT+8 is eight hours off.
#[tokio::test]
async fn a_timestamp_in_the_wrong_zone_is_refused() {
    let emulator = emulator(Faults::default()).await;
    let dto = dto_json(&event("BK1"));
    let utc_wall_clock = Utc::now().format(gmt8::FORMAT).to_string();
    let mut params = vec![
        ("method", "taobao.taojie.parking.order.payinfo.sync"),
        ("app_key", APP_KEY),
        ("timestamp", utc_wall_clock.as_str()),
        ("v", "2.0"),
        ("format", "json"),
        ("sign_method", "hmac"),
        ("pay_order_info_dto", dto.as_str()),
    ];
    let signature = sign::sign(
        SignMethod::HmacMd5,
        &SecretString::from(SECRET),
        params.iter().copied(),
    );
    params.push(("sign", signature.as_str()));
    let body = paysync::top::client::loopback_client()
        .unwrap()
        .post(emulator.url())
        .form(&params)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"code\":31"), "{body}");
}
