//! Dead letters on the console: a filtered list (class, reason, TOP code
//! and sub_code, park, order, time), a record's page (payload, headers,
//! source position, the TOP answer, the trace, its redrive history), and
//! the redrive's first steps ([`super::preview`]) — a dry-run preview (how many, which
//! the ledger would skip as delivered), an optional edit of one record's
//! value checked by the event decoder (the rules of
//! `schemas/payment-event.schema.json`) and shown as a diff, then the run
//! through the group's rate and the ledger ([`super::runs`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde_json::Value;

use super::auth::Session;
use super::context::{Console, Viewer};
use super::views::{BASE, csrf, operates, respond, respond_with, time};
use crate::dead_letter::DeadLetterRecord;
use crate::dead_letter::reader::{self, Filter};

/// The most records a list shows (newest first).
const LISTED: usize = 200;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route(&format!("{BASE}/dead-letters"), get(list))
        .route(
            &format!("{BASE}/dead-letters/{{partition}}/{{offset}}"),
            get(record),
        )
}

/// The filter's fields, as the list's form and the redrive forms carry them.
const FILTER_FIELDS: [&str; 8] = [
    "class", "reason", "code", "sub_code", "park", "order", "since", "until",
];

/// The filter from form or query fields; an unreadable time names its field.
pub(super) fn filter_of(fields: &HashMap<String, String>) -> Result<Filter, String> {
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, String> {
        text(name)
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        format!("{name}: {t:?} is not an RFC 3339 time like 2026-12-06T08:00:00Z")
                    })
            })
            .transpose()
    };
    Ok(Filter {
        class: text("class"),
        reason: text("reason"),
        code: text("code"),
        sub_code: text("sub_code"),
        park: text("park"),
        order: text("order"),
        since: time("since")?,
        until: time("until")?,
    })
}

pub(super) fn filter_inputs(fields: &HashMap<String, String>) -> Markup {
    html! {
        @for name in FILTER_FIELDS {
            @if let Some(value) = fields.get(name).filter(|v| !v.is_empty()) {
                input type="hidden" name=(name) value=(value);
            }
        }
    }
}

/// A licence plate as a viewer sees it: the province and the last two.
fn mask_plate(plate: &str) -> String {
    let chars: Vec<char> = plate.chars().collect();
    if chars.len() <= 4 {
        return chars.first().map_or(String::new(), |c| format!("{c}•••"));
    }
    let mut shown: String = chars[..2].iter().collect();
    shown.push_str("•••");
    shown.extend(&chars[chars.len() - 2..]);
    shown
}

/// A value pretty-printed for reading (JSON when it is), plates masked for
/// viewers when `console.mask_car_no`.
pub(super) fn readable(value: Option<&[u8]>, mask: bool) -> String {
    let Some(bytes) = value else {
        return "(no value)".to_owned();
    };
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut json) => {
            if mask {
                for name in ["car_no", "carNo"] {
                    if let Some(plate) = json.get_mut(name)
                        && let Some(text) = plate.as_str()
                    {
                        *plate = Value::String(mask_plate(text));
                    }
                }
            }
            serde_json::to_string_pretty(&json).unwrap_or_default()
        }
        Err(_) if mask => "(not JSON; hidden from viewers because it may hold a plate)".to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn masks(console: &Console, session: &Session) -> bool {
    console.settings.console.mask_car_no && !operates(session)
}

/// A field of the record's value, for the list.
fn field(record: &DeadLetterRecord, name: &str) -> Option<String> {
    let value: Value = serde_json::from_slice(record.original.value.as_deref()?).ok()?;
    reader::event_field(&value, name).map(str::to_owned)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(error) => Err(error.to_string()),
    }
}

pub(super) fn problem_page(
    session: &Session,
    here: &str,
    title: &str,
    status: StatusCode,
    text: &str,
) -> Response {
    respond_with(
        status,
        session,
        here,
        title,
        html! { p.problems { (text) } },
    )
}

async fn list(
    State(console): State<Arc<Console>>,
    Viewer(session): Viewer,
    Query(fields): Query<HashMap<String, String>>,
) -> Response {
    let filter = match filter_of(&fields) {
        Ok(filter) => filter,
        Err(problem) => {
            return problem_page(
                &session,
                "/dead-letters",
                "Dead letters",
                StatusCode::BAD_REQUEST,
                &problem,
            );
        }
    };
    let settings = console.settings.clone();
    let read = {
        let filter = filter.clone();
        blocking(move || reader::newest(&settings, &filter, LISTED)).await
    };
    let body = match read {
        Err(error) => html! { p.problems { "Cannot read the dead-letter topic: " (error) } },
        Ok(reader::Newest {
            matching: total,
            records,
        }) => {
            html! {
                form.filters method="get" action={ (BASE) "/dead-letters" } {
                    @for (name, hint) in [("class", "rejected"), ("reason", "business_rejected"), ("code", "41"), ("sub_code", "isv.…"), ("park", "park_id"), ("order", "order_id"), ("since", "2026-12-06T00:00:00Z"), ("until", "")] {
                        label { (name) input type="text" name=(name) id={ "filter-" (name) } placeholder=(hint) value=[fields.get(name)]; }
                    }
                    button type="submit" id="filter" { "Filter" }
                }
                p { (total) " dead letter(s) match" @if total > LISTED { "; the newest " (LISTED) " are shown" } "." }
                @if operates(&session) && total > 0 {
                    form method="post" action={ (BASE) "/redrive/preview" } {
                        (csrf(&session)) (filter_inputs(&fields))
                        (target_choice())
                        " " button type="submit" id="preview-all" { "Preview a redrive of these " (total) }
                    }
                }
                div.scroll {
                    table id="dead-letters" {
                        thead { tr { th { "Record" } th { "Dead-lettered" } th { "Class" } th { "Reason" } th { "Code" } th { "Park" } th { "Order" } th { "Message" } } }
                        tbody {
                            @for r in &records {
                                tr.dead-letter {
                                    td { a href={ (BASE) "/dead-letters/" (r.partition) "/" (r.offset) } { (r.partition) "@" (r.offset) } }
                                    td { (r.dead_lettered_at.map_or("—".to_owned(), time)) }
                                    td { (r.class) }
                                    td.reason { (r.reason) }
                                    td { (r.code.as_deref().unwrap_or("—")) @if let Some(sub) = &r.sub_code { br; code { (sub) } } }
                                    td { (field(r, "park_id").unwrap_or_default()) }
                                    td { (field(r, "order_id").unwrap_or_default()) }
                                    td { (r.message.chars().take(120).collect::<String>()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(&session, "/dead-letters", "Dead letters", body)
}

pub(super) fn target_choice() -> Markup {
    html! {
        select name="target" id="target" {
            option value="api" selected { "to the API (the group's rate, the ledger)" }
            option value="source" { "back to the source topic" }
        }
    }
}

pub(super) async fn read_one(
    console: &Console,
    partition: i32,
    offset: i64,
) -> Result<DeadLetterRecord, String> {
    let settings = console.settings.clone();
    match blocking(move || reader::read_dead_letter(&settings, partition, offset)).await? {
        Some(record) => Ok(record),
        None => Err(format!(
            "dead letter {partition}@{offset} is not in the topic"
        )),
    }
}

async fn record(
    State(console): State<Arc<Console>>,
    Viewer(session): Viewer,
    Path((partition, offset)): Path<(i32, i64)>,
) -> Response {
    match read_one(&console, partition, offset).await {
        Ok(record) => {
            let body = record_body(&console, &session, &record, None, &[]);
            let title = format!("Dead letter {partition}@{offset}");
            respond(&session, "/dead-letters", &title, body)
        }
        Err(problem) => problem_page(
            &session,
            "/dead-letters",
            "Dead letter",
            StatusCode::NOT_FOUND,
            &problem,
        ),
    }
}

/// A record's page; `edited` and `problems` when an edit was refused.
pub(super) fn record_body(
    console: &Console,
    session: &Session,
    record: &DeadLetterRecord,
    edited: Option<&str>,
    problems: &[String],
) -> Markup {
    let mask = masks(console, session);
    let at = format!("{}@{}", record.partition, record.offset);
    let history: Vec<_> = console
        .control
        .view()
        .audit
        .iter()
        .filter(|audit| audit.what.contains(&format!("dead letter {at} ")))
        .cloned()
        .collect();
    let trace_link = record.trace_id.as_ref().and_then(|id| {
        console
            .settings
            .console
            .trace_url
            .as_ref()
            .map(|url| url.replace("{trace_id}", id))
    });
    html! {
        div.cards {
            div.card { div.label { "Class" } div.figure { (record.class) } }
            div.card { div.label { "Reason" } div.figure id="record-reason" { (record.reason) } }
            div.card { div.label { "TOP code" } div.figure { (record.code.as_deref().unwrap_or("—")) } div.label { (record.sub_code.as_deref().unwrap_or("")) } }
            div.card { div.label { "Source" } div { code { (record.source_topic) "/" (record.source_partition.map_or("?".into(), |p| p.to_string())) "@" (record.source_offset.map_or("?".into(), |o| o.to_string())) } } }
        }
        div.card {
            div.label { "The API's answer" }
            p id="record-message" { (record.message) }
            div.label { "Trace" }
            p {
                @match (&record.trace_id, &trace_link) {
                    (Some(id), Some(link)) => { a href=(link) rel="noreferrer" { code { (id) } } }
                    (Some(id), None) => { code { (id) } }
                    _ => { "—" }
                }
            }
            @if record.left_out { p.warn { "The copy left parts of the source record out; a redrive reads the source record back." } }
        }
        h2 { "Value" }
        pre id="record-value" { (readable(record.original.value.as_deref(), mask)) }
        h2 { "Failure headers" }
        div.scroll { table { tbody { @for (name, value) in &record.failure_headers { tr { th { code { (name) } } td { (value) } } } } } }
        @if !record.original.headers.is_empty() {
            h2 { "Source headers" }
            div.scroll { table { tbody { @for (name, value) in &record.original.headers {
                tr { th { code { (name) } } td { (value.as_deref().map(String::from_utf8_lossy).unwrap_or_default()) } }
            } } } }
        }
        h2 { "Redrive history" }
        p { "Redriven to the source " (record.redrives) " time(s) before." }
        @if !history.is_empty() {
            ul id="redrive-history" { @for audit in &history { li { (time(audit.at)) " · " (audit.by) " · " (audit.what) @if let Some(result) = &audit.result { " → " (result) } } } }
        }
        @if operates(session) {
            h2 { "Redrive" }
            @if !problems.is_empty() {
                div.problems id="edit-problems" {
                    p { "The edited value is not a valid payment event; nothing was sent:" }
                    ul { @for problem in problems { li { (problem) } } }
                }
            }
            form.card.stack method="post" action={ (BASE) "/dead-letters/" (record.partition) "/" (record.offset) "/preview" } {
                (csrf(session))
                label for="value" { "Value to send (edit it to fix the record; it is checked before anything is sent)" }
                textarea name="value" id="value" spellcheck="false" {
                    (edited.map(str::to_owned).unwrap_or_else(|| readable(record.original.value.as_deref(), false)))
                }
                label for="why" { "Why (kept in the audit)" }
                input type="text" name="why" id="why" required;
                label for="target" { "Send" }
                (target_choice())
                p { button type="submit" id="preview" { "Preview the redrive" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plates_are_masked_but_recognisable() {
        assert_eq!(mask_plate("浙A12345"), "浙A•••45");
        assert_eq!(mask_plate("AB1"), "A•••");
        let shown = readable(
            Some(r#"{"car_no":"浙A12345","park_id":"P1"}"#.as_bytes()),
            true,
        );
        assert!(
            shown.contains("浙A•••45") && !shown.contains("12345"),
            "{shown}"
        );
        let camel = readable(Some(r#"{"carNo":"浙A12345"}"#.as_bytes()), true);
        assert!(!camel.contains("12345"), "{camel}");
        let whole = readable(Some(r#"{"car_no":"浙A12345"}"#.as_bytes()), false);
        assert!(whole.contains("浙A12345"));
    }

    #[test]
    fn a_bad_time_in_a_filter_names_its_field() {
        let fields = HashMap::from([("since".to_owned(), "yesterday".to_owned())]);
        let problem = filter_of(&fields).unwrap_err();
        assert!(problem.starts_with("since:"), "{problem}");
    }
}
