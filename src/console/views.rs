//! The console's page frame and the small pieces every page uses: the
//! layout and navigation, the CSRF field, times, state pills and the
//! server-drawn SVG charts. Pages are rendered on the server with maud,
//! which escapes every value it interpolates: nothing a record holds can
//! become markup. The console runs no script at all, so its Content
//! Security Policy allows none.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::auth::{Role, Session};
use crate::control::ControlView;

/// Where the console lives on its server.
pub const BASE: &str = "/console";

/// The navigation: path below [`BASE`] and label.
const NAVIGATION: &[(&str, &str)] = &[
    ("", "Group"),
    ("/dead-letters", "Dead letters"),
    ("/redrives", "Redrives"),
    ("/ledger", "Ledger"),
    ("/control", "Control"),
    ("/audit", "Audit"),
];

/// Every page's head: readable on a phone, the one stylesheet.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · paysync console" }
            link rel="stylesheet" href={ (BASE) "/static/console.css" };
        }
    }
}

/// A page as the answer (200).
pub fn respond(session: &Session, here: &str, title: &str, body: Markup) -> Response {
    respond_with(StatusCode::OK, session, here, title, body)
}

/// A page as the answer, with its status.
pub fn respond_with(
    status: StatusCode,
    session: &Session,
    here: &str,
    title: &str,
    body: Markup,
) -> Response {
    (status, Html(page(session, here, title, body).into_string())).into_response()
}

/// A whole page for a logged-in user. `here` is the navigation entry.
pub fn page(session: &Session, here: &str, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    a.brand href=(BASE) { "paysync" }
                    nav {
                        @for (path, label) in NAVIGATION {
                            a class=[(*path == here).then_some("here")] href={ (BASE) (path) } { (label) } " "
                        }
                    }
                    span.who {
                        span { (session.user) " · " (session.role.as_str()) }
                        form method="post" action={ (BASE) "/logout" } {
                            (csrf(session))
                            button.quiet type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login page (no session yet).
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main.login {
                    h1 { "paysync console" }
                    @if let Some(error) = error { p.problems id="login-error" { (error) } }
                    form.card.stack method="post" action={ (BASE) "/login" } {
                        label for="user" { "User" }
                        input type="text" id="user" name="user" autocomplete="username" required;
                        label for="password" { "Password" }
                        input type="password" id="password" name="password" autocomplete="current-password" required;
                        p { button type="submit" id="login" { "Log in" } }
                    }
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// Whether the session may change things.
pub fn operates(session: &Session) -> bool {
    session.role == Role::Operator
}

/// A time as people read it (UTC).
pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A state in colour: ready and accepted are good, halts and failures bad.
pub fn pill(state: &str) -> Markup {
    let class = match state {
        "ready" | "closed" | "sent" | "accepted" | "would_send" | "finished" => "ok",
        "degraded" | "half_open" | "starting" | "held_back" | "skipped_delivered" | "gone"
        | "running" => "warn",
        _ => "bad",
    };
    html! { span class={ "pill " (class) } { (state) } }
}

/// The callers sharing the rate, from their leases.
pub fn callers(view: &ControlView, now_ms: i64) -> Markup {
    html! {
        div.scroll {
            table id="callers" {
                thead { tr { th { "Caller" } th { "Kind" } th { "Weight" } th { "Wants" } } }
                tbody {
                    @for lease in view.live_leases(now_ms) {
                        tr {
                            td { code { (lease.caller) } }
                            td { (lease.kind.as_str()) }
                            td.num { (lease.weight) }
                            td.num { (lease.demand_per_sec.map_or("all it gets".to_owned(), |d| format!("{d:.1}/s"))) }
                        }
                    }
                }
            }
        }
    }
}

/// A line chart of `points` (oldest first), scaled to its own maximum.
pub fn chart(label: &str, points: &[f64]) -> Markup {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 80.0;
    let max = points.iter().copied().fold(0.0_f64, f64::max);
    let step = if points.len() > 1 {
        WIDTH / (points.len() - 1) as f64
    } else {
        0.0
    };
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let y = if max > 0.0 {
                HEIGHT - value / max * (HEIGHT - 8.0) - 4.0
            } else {
                HEIGHT - 4.0
            };
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    let last = points.last().copied().unwrap_or(0.0);
    html! {
        div.card {
            div.label { (label) " — now " (format!("{last:.0}")) ", peak " (format!("{max:.0}")) " (last hour, per minute)" }
            svg.chart viewBox="0 0 600 80" preserveAspectRatio="none" role="img" aria-label=(label) {
                polyline points=(line.join(" ")) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_values_are_escaped() {
        let markup = pill("<script>alert(1)</script>").into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"), "{markup}");
    }

    #[test]
    fn a_chart_scales_to_its_peak() {
        let markup = chart("delivered", &[0.0, 5.0, 10.0]).into_string();
        assert!(
            markup.contains("points=\"0.0,76.0 300.0,40.0 600.0,4.0\""),
            "{markup}"
        );
    }
}
