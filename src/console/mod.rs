//! The operator console (docs/console.md): the whole group — members and
//! their partitions with lag, the rate shares, the learned quota, bans,
//! the breaker and halts, an hour of charts — from the status topic every
//! replica publishes to; the dead letters with their redrive as a delivery
//! run (the same code path as `paysync dlq redrive`, through the group's
//! rate and the ledger); the ledger's outcomes; pauses and tuning; and the
//! audit of every change. `paysync run` serves it under `/console` on the
//! admin listener when `console.enabled`; `paysync console` serves it on
//! its own and delivers nothing.
//!
//! * [`auth`]: users, sessions, the CSRF token, the login throttle.
//! * [`views`]: the page frame and shared pieces (maud; no scripts).
//! * [`group`]: the group's page.
//! * [`context`]: the console's state and the handlers' extractors.
//! * [`dead_letters`]: browsing dead letters and one record's page.
//! * [`preview`]: a redrive's dry run, an edit's check and its diff.
//! * [`runs`]: a redrive run, its progress and its audit.
//! * [`operations`]: the ledger, control and audit pages.
//! * [`tls`]: HTTPS for `paysync console` on its own.
//!
//! Every request passes [`guard`]: security headers on every answer, and a
//! POST whose `Origin` or `Sec-Fetch-Site` is not this console refused
//! before any handler runs. Handlers take a [`Viewer`] or an [`Operator`]:
//! no session redirects a page to the login (401 for a POST); a viewer's
//! POST to an operator's action is refused with 403.

pub mod auth;
mod context;
mod dead_letters;
mod group;
mod operations;
mod preview;
mod runs;
pub mod tls;
pub mod views;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use context::{COOKIE, Form, Viewer, cookie_token};
pub use context::{Console, ConsoleError};
use views::BASE;

/// The console's routes, under [`BASE`].
pub fn router(console: &Arc<Console>) -> Router {
    Router::new()
        .route(BASE, get(group::show))
        .route(&format!("{BASE}/"), get(group::show))
        .route(&format!("{BASE}/static/console.css"), get(stylesheet))
        .route(&format!("{BASE}/login"), get(login_page).post(login))
        .route(&format!("{BASE}/logout"), post(logout))
        .merge(dead_letters::routes())
        .merge(preview::routes())
        .merge(operations::routes())
        .merge(runs::routes())
        .layer(axum::Extension(Arc::new(runs::Runs::default())))
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console.clone())
}

/// Security headers on every answer; a cross-site POST refused.
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST
        && let Err(why) = same_origin(request.headers())
    {
        tracing::warn!(why, path = %request.uri().path(), "A console POST from another site was refused.");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if console.settings.console.secure_cookie() {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// A POST must come from the console's own pages: browsers say where a
/// request comes from in `Sec-Fetch-Site` and `Origin`, and a forged one
/// cannot hide it. (A client that sends neither still needs the token.)
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Err("refused: the request came from another site (Sec-Fetch-Site)");
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or_default();
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("");
        if origin_host.is_empty() || origin_host != host {
            return Err("refused: the request came from another origin (Origin)");
        }
    }
    Ok(())
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

async fn login_page(headers: HeaderMap, State(console): State<Arc<Console>>) -> Response {
    if cookie_token(&headers).is_some_and(|token| console.sessions.get(&token).is_some()) {
        return Redirect::to(BASE).into_response();
    }
    Html(views::login(None).into_string()).into_response()
}

async fn login(State(console): State<Arc<Console>>, request: Request) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
    let axum::Form(fields): axum::Form<HashMap<String, String>> =
        match axum::Form::from_request(request, &()).await {
            Ok(form) => form,
            Err(rejection) => return rejection.into_response(),
        };
    let user = fields.get("user").cloned().unwrap_or_default();
    let password = fields.get("password").cloned().unwrap_or_default();
    if !console.throttle.allow(&user, address) {
        tracing::warn!(user, %address, "Console login throttled.");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Html(
                views::login(Some("Too many attempts: wait a minute and try again.")).into_string(),
            ),
        )
            .into_response();
    }
    let checking = console.clone();
    let name = user.clone();
    let role = tokio::task::spawn_blocking(move || checking.users.verify(&name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        tracing::warn!(user, %address, "Console login failed.");
        return (
            StatusCode::UNAUTHORIZED,
            Html(views::login(Some("Wrong user or password.")).into_string()),
        )
            .into_response();
    };
    tracing::info!(user, role = role.as_str(), "Console login.");
    let token = console.sessions.start(&user, role);
    let secure = if console.settings.console.secure_cookie() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        console.sessions.ttl().as_secs()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, BASE.to_owned()),
        ],
    )
        .into_response()
}

async fn logout(
    State(console): State<Arc<Console>>,
    Viewer(session): Viewer,
    headers: HeaderMap,
    axum::Form(fields): axum::Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = Form::checked(&session, fields) {
        return refused.into_response();
    }
    if let Some(token) = cookie_token(&headers) {
        console.sessions.end(&token);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, format!("{BASE}/login")),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9480")])).is_ok());
        assert!(
            same_origin(&headers(&[
                ("host", "127.0.0.1:9480"),
                ("origin", "http://127.0.0.1:9480"),
                ("sec-fetch-site", "same-origin"),
            ]))
            .is_ok()
        );
        assert!(
            same_origin(&headers(&[
                ("host", "127.0.0.1:9480"),
                ("origin", "http://evil.example"),
            ]))
            .is_err()
        );
        assert!(
            same_origin(&headers(&[
                ("host", "127.0.0.1:9480"),
                ("sec-fetch-site", "cross-site"),
            ]))
            .is_err()
        );
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9480"), ("origin", "null")])).is_err());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let found = cookie_token(&headers(&[("cookie", "a=1; paysync_console=tok; b=2")]));
        assert_eq!(found.as_deref(), Some("tok"));
    }
}
