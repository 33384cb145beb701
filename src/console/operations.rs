//! The console's pages on the state the CLI uses: the ledger (an order's
//! outcomes, the unknown ones and their resolution — `paysync ledger`),
//! the control topic (tuning, pauses, the callers — `paysync control`) and
//! the audit of every change, from the console or the command line.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::{Markup, html};

use super::auth::Session;
use super::context::{Action, Console, Viewer};
use super::views::{BASE, callers, csrf, operates, pill, respond, respond_with, time};
use crate::config::LedgerMode;
use crate::control::{ops, tuning};
use crate::ledger::report::{self, Resolution, Shown};

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route(&format!("{BASE}/ledger"), get(ledger))
        .route(&format!("{BASE}/ledger/unknown"), get(unknown))
        .route(&format!("{BASE}/ledger/resolve"), post(resolve))
        .route(&format!("{BASE}/control"), get(control))
        .route(&format!("{BASE}/control/pause"), post(pause))
        .route(&format!("{BASE}/control/resume"), post(pause))
        .route(&format!("{BASE}/control/set"), post(set))
        .route(&format!("{BASE}/audit"), get(audit))
}

fn entries_table(entries: &[Shown]) -> Markup {
    html! {
        div.scroll {
            table id="ledger-entries" {
                thead { tr { th { "Outcome" } th { "Key" } th { "Park" } th { "Fee" } th { "Paid" } th { "Source" } th { "At" } th { "Path" } th { "Request" } } }
                tbody {
                    @for shown in entries {
                        @let e = &shown.entry;
                        tr {
                            td { (pill(e.outcome.as_str())) }
                            td { code { (shown.key) } }
                            td { (e.park_id) }
                            td.num { (e.pay_fee) }
                            td { (e.pay_time) }
                            td { code { (e.source) } }
                            td { (time(e.at)) }
                            td { (e.path.as_str()) }
                            td { (e.request_id.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        }
    }
}

fn ledger_off(console: &Console) -> Option<Markup> {
    (console.settings.ledger.mode == LedgerMode::Off).then(|| {
        html! { p.notice { "The ledger is off (ledger.mode = \"off\"): paysync keeps no record of outcomes." } }
    })
}

async fn ledger(
    State(console): State<Arc<Console>>,
    Viewer(session): Viewer,
    Query(fields): Query<HashMap<String, String>>,
) -> Response {
    if let Some(off) = ledger_off(&console) {
        return respond(&session, "/ledger", "Ledger", off);
    }
    let order = fields
        .get("order")
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty());
    let found = match &order {
        Some(order) => Some(
            report::read(&console.settings)
                .await
                .map(|entries| report::show(&entries, order))
                .map_err(|error| format!("{error:#}")),
        ),
        None => None,
    };
    let body = html! {
        form.filters method="get" action={ (BASE) "/ledger" } {
            label { "order_id" input type="text" name="order" id="order" value=[order.as_deref()]; }
            button type="submit" id="find" { "Find" }
            a href={ (BASE) "/ledger/unknown" } { "Unknown outcomes →" }
        }
        @match (&order, &found) {
            (Some(order), Some(Ok(entries))) => {
                @if entries.is_empty() { p { "No entry for order " code { (order) } "." } }
                @else { (entries_table(entries)) }
            }
            (_, Some(Err(error))) => { p.problems { "Cannot read the ledger: " (error) } }
            _ => { p.muted { "Find an order to see every outcome the ledger holds for it." } }
        }
    };
    respond(&session, "/ledger", "Ledger", body)
}

async fn unknown(State(console): State<Arc<Console>>, Viewer(session): Viewer) -> Response {
    if let Some(off) = ledger_off(&console) {
        return respond(&session, "/ledger", "Unknown outcomes", off);
    }
    let body = match report::read(&console.settings).await {
        Err(error) => html! { p.problems { "Cannot read the ledger: " (format!("{error:#}")) } },
        Ok(entries) => {
            let shown = report::unknown(&entries);
            html! {
                p { (shown.len()) " unknown outcome(s), held event(s) or intent(s) in flight." }
                (entries_table(&shown))
                @if operates(&session) && !shown.is_empty() {
                    h2 { "Resolve" }
                    form.card.stack method="post" action={ (BASE) "/ledger/resolve" } {
                        (csrf(&session))
                        label for="orders" { "Orders (space-separated; empty: all of them)" }
                        input type="text" name="orders" id="orders";
                        label for="resolution" { "Miaojie…" }
                        select name="resolution" id="resolution" {
                            option value="delivered" { "holds it: record it as delivered" }
                            option value="resend" { "does not hold it: send it again" }
                        }
                        label for="why" { "Why (kept in the audit)" }
                        input type="text" name="why" id="why" required;
                        p { button type="submit" { "Resolve" } }
                    }
                }
            }
        }
    };
    respond(&session, "/ledger", "Unknown outcomes", body)
}

async fn resolve(
    State(console): State<Arc<Console>>,
    Action { session, form }: Action,
) -> Response {
    let why = match form.why() {
        Ok(why) => why,
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let orders: Vec<String> = form
        .get("orders")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let resolution = match form.get("resolution") {
        "resend" => Resolution::Resend,
        _ => Resolution::Delivered,
    };
    let what = format!(
        "ledger resolve {} as {}",
        if orders.is_empty() {
            "every unknown outcome".to_owned()
        } else {
            orders.join(" ")
        },
        if resolution == Resolution::Resend {
            "resend"
        } else {
            "delivered"
        }
    );
    let resolved = report::resolve(&console.settings, &orders, resolution).await;
    let result = match &resolved {
        Ok(resolved) => format!(
            "{} recorded as delivered, {} sent ({} accepted), {} left",
            resolved.marked_delivered,
            resolved.sent.len(),
            resolved.sent.iter().filter(|sent| sent.accepted).count(),
            resolved.left.len()
        ),
        Err(error) => format!("failed: {error:#}"),
    };
    let audited = console
        .control
        .audit(&session.user, what.clone(), &why, Some(result.clone()))
        .await;
    let body = html! {
        p id="resolve-result" { (what) ": " (result) }
        @if let Ok(resolved) = &resolved { ul { @for left in &resolved.left { li { "left parked: " (left) } } } }
        @if let Err(error) = audited { p.problems { "The audit record could not be written: " (error) } }
        p { a href={ (BASE) "/ledger/unknown" } { "Back to the unknown outcomes" } }
    };
    respond(&session, "/ledger", "Resolve", body)
}

async fn control(State(console): State<Arc<Console>>, Viewer(session): Viewer) -> Response {
    let view = console.control.view();
    let now_ms = Utc::now().timestamp_millis();
    let body = html! {
        h2 { "Tuned settings" }
        p id="tuning" { "Version " (view.tuning.version) ": " (ops::describe(&view.tuning.values)) }
        @if let Some(guard) = view.tuning.guard.as_ref().filter(|g| g.until_ms > now_ms) {
            p.warn { "Guarded: rolled back to " (ops::describe(&guard.previous)) " if the gateway bans within " ((guard.until_ms - now_ms) / 1_000) " s." }
        }
        @if operates(&session) {
            form.card.stack method="post" action={ (BASE) "/control/set" } {
                (csrf(&session))
                label for="assignments" { "KEY=VALUE … (KEY= returns to the file's value). Tunable: "
                    @for (i, (name, _)) in tuning::TUNABLE.iter().enumerate() { @if i > 0 { ", " } code { (name) } } }
                input type="text" name="assignments" id="assignments" required;
                label for="guard" { "Roll back if the gateway bans within (seconds, optional)" }
                input type="text" name="guard" id="guard";
                label for="set-why" { "Why (kept in the audit)" }
                input type="text" name="why" id="set-why" required;
                p { button type="submit" id="set" { "Apply to every replica" } }
            }
        }
        h2 { "Pauses" }
        div.scroll {
            table id="pauses" {
                thead { tr { th { "What" } th { "Since" } th { "By" } th { "Why" } th {} } }
                tbody {
                    @for (target, held) in &view.pauses {
                        tr {
                            td { (target.describe()) }
                            td { (time(held.at)) }
                            td { (held.by) }
                            td { (held.why) }
                            td {
                                @if operates(&session) {
                                    form method="post" action={ (BASE) "/control/resume" } {
                                        (csrf(&session))
                                        input type="hidden" name="key" value=(target.key());
                                        input type="hidden" name="why" value="resumed from the console";
                                        button.quiet type="submit" { "Resume" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if view.pauses.is_empty() { p.muted { "Nothing is paused." } }
        @if operates(&session) {
            form.card.filters method="post" action={ (BASE) "/control/pause" } {
                (csrf(&session))
                label { "park_id" input type="text" name="park" id="pause-park"; }
                label { "or partition (TOPIC/N)" input type="text" name="partition" id="pause-partition"; }
                label { "or everything" select name="all" { option value="" { "no" } option value="yes" { "yes" } } }
                label { "why" input type="text" name="why" id="pause-why" required; }
                button type="submit" id="pause" { "Pause" }
            }
        }
        h2 { "Callers" }
        (callers(&view, now_ms))
    };
    respond(&session, "/control", "Control", body)
}

fn change_result(session: &Session, result: Result<String, String>) -> Response {
    let (status, body) = match result {
        Ok(what) => (
            StatusCode::OK,
            html! { p.notice id="change-result" { (what) } },
        ),
        Err(problem) => (
            StatusCode::BAD_REQUEST,
            html! { p.problems id="change-result" { (problem) } },
        ),
    };
    let body = html! { (body) p { a href={ (BASE) "/control" } { "Back to control" } } };
    respond_with(status, session, "/control", "Control", body)
}

async fn pause(
    State(console): State<Arc<Console>>,
    uri: axum::http::Uri,
    Action { session, form }: Action,
) -> Response {
    let pausing = uri.path().ends_with("/pause");
    let why = match form.why() {
        Ok(why) => why,
        Err(problem) => return change_result(&session, Err(problem)),
    };
    let target = match form.optional("key") {
        Some(key) => {
            crate::control::PauseTarget::of_key(key.strip_prefix("pause/").unwrap_or(&key))
                .ok_or_else(|| format!("key: {key:?} is not a pause"))
        }
        None => ops::target(
            form.get("all") == "yes",
            form.optional("park").as_deref(),
            form.optional("partition").as_deref(),
        ),
    };
    let target = match target {
        Ok(target) => target,
        Err(problem) => return change_result(&session, Err(problem)),
    };
    let result = match ops::pause(&console.control, &target, pausing, &session.user, &why).await {
        Ok(Some(what)) => Ok(what),
        Ok(None) => Ok(format!("{} was so already", target.describe())),
        Err(error) => Err(error.to_string()),
    };
    change_result(&session, result)
}

async fn set(State(console): State<Arc<Console>>, Action { session, form }: Action) -> Response {
    let why = match form.why() {
        Ok(why) => why,
        Err(problem) => return change_result(&session, Err(problem)),
    };
    let guard = match form.optional("guard").map(|g| g.parse::<u64>()) {
        None => None,
        Some(Ok(secs)) => Some(std::time::Duration::from_secs(secs)),
        Some(Err(_)) => {
            return change_result(&session, Err("guard: not a number of seconds".to_owned()));
        }
    };
    let assignments: Vec<String> = form
        .get("assignments")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let result = ops::set(
        &console.control,
        &console.settings,
        &assignments,
        guard,
        &session.user,
        &why,
    )
    .await
    .map_err(|error| error.to_string());
    change_result(&session, result)
}

async fn audit(State(console): State<Arc<Console>>, Viewer(session): Viewer) -> Response {
    let view = console.control.view();
    let body = html! {
        p.muted { "Every change, from the console or the command line, newest first (the control topic keeps the latest " (view.audit.len()) " here)." }
        div.scroll {
            table id="audit" {
                thead { tr { th { "When" } th { "Who" } th { "What" } th { "Why" } th { "Result" } } }
                tbody {
                    @for entry in view.audit.iter().rev() {
                        tr.audit {
                            td { (time(entry.at)) }
                            td { (entry.by) }
                            td { (entry.what) }
                            td { (entry.why) }
                            td { (entry.result.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        }
    };
    respond(&session, "/audit", "Audit", body)
}
