//! The redrive's previews: a dry run of the records chosen (how many would
//! be sent, which the ledger would skip as already delivered, which are held
//! back or would fail) and, for one record's edit, the check by the event
//! decoder that names each field and why, and the diff of what will be sent.
//! A preview ends in the form that starts the run ([`super::runs`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use maud::{Markup, html};
use serde_json::Value;

use super::context::{Action, Console, Form};
use super::dead_letters::{
    filter_inputs, filter_of, problem_page, read_one, readable, record_body,
};
use super::views::{BASE, csrf, pill, respond, respond_with};
use crate::dead_letter::reader::Filter;
use crate::dead_letter::redrive::{
    self, RecordOutcome, RecordResult, Redrive, RedriveReport, Target,
};

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route(
            &format!("{BASE}/dead-letters/{{partition}}/{{offset}}/preview"),
            post(preview_one),
        )
        .route(&format!("{BASE}/redrive/preview"), post(preview_filtered))
}

/// The JSON object's fields whose values differ, for the audit (names only).
pub(super) fn edited_fields(original: Option<&[u8]>, edited: &[u8]) -> Vec<String> {
    let parse = |bytes: &[u8]| serde_json::from_slice::<serde_json::Map<String, Value>>(bytes).ok();
    match (original.and_then(parse), parse(edited)) {
        (Some(before), Some(after)) => {
            let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            names
                .into_iter()
                .filter(|name| before.get(*name) != after.get(*name))
                .cloned()
                .collect()
        }
        _ => vec!["(the whole value)".to_owned()],
    }
}

fn diff(before: &str, after: &str) -> Markup {
    let diff = similar::TextDiff::from_lines(before, after);
    html! {
        pre.diff id="diff" {
            @for change in diff.iter_all_changes() {
                @match change.tag() {
                    similar::ChangeTag::Delete => span.del { "- " (change.value().trim_end()) },
                    similar::ChangeTag::Insert => span.ins { "+ " (change.value().trim_end()) },
                    similar::ChangeTag::Equal => span.same { "  " (change.value().trim_end()) },
                }
            }
        }
    }
}

pub(super) fn target_of(form: &Form) -> Target {
    match form.get("target") {
        "source" => Target::Source,
        _ => Target::Api,
    }
}

async fn dry_run(
    console: &Console,
    filter: &Filter,
    options: Redrive,
) -> Result<RedriveReport, String> {
    redrive::redrive(
        &console.settings,
        filter,
        &Redrive {
            dry_run: true,
            ..options
        },
    )
    .await
    .map_err(|error| format!("{error:#}"))
}

fn outcome_name(outcome: &RecordOutcome) -> (&'static str, String) {
    match outcome {
        RecordOutcome::Sent => ("sent", String::new()),
        RecordOutcome::WouldSend => ("would_send", String::new()),
        RecordOutcome::SkippedDelivered => (
            "skipped_delivered",
            "the ledger holds its key as accepted with the same DTO: already delivered".to_owned(),
        ),
        RecordOutcome::HeldBack(why) => ("held_back", why.clone()),
        RecordOutcome::Failed(why) => ("failed", why.clone()),
    }
}

pub(super) fn results_table(results: &[RecordResult]) -> Markup {
    html! {
        div.scroll {
            table id="results" {
                thead { tr { th { "Record" } th { "Result" } th { "Detail" } } }
                tbody {
                    @for result in results {
                        @let (name, detail) = outcome_name(&result.outcome);
                        tr.result {
                            td { a href={ (BASE) "/dead-letters/" (result.partition) "/" (result.offset) } { (result.partition) "@" (result.offset) } @if result.edited { " (edited)" } }
                            td { (pill(name)) }
                            td { (detail) }
                        }
                    }
                }
            }
        }
    }
}

fn preview_summary(report: &RedriveReport) -> Markup {
    let would = report
        .results
        .iter()
        .filter(|r| r.outcome == RecordOutcome::WouldSend)
        .count();
    html! {
        p id="preview-summary" {
            (report.selected) " selected: " (would) " would be sent, "
            (report.skipped_delivered.len()) " skipped as already delivered, "
            (report.held_back.len()) " held back, " (report.failed.len()) " would fail."
        }
    }
}

async fn preview_one(
    State(console): State<Arc<Console>>,
    Path((partition, offset)): Path<(i32, i64)>,
    Action { session, form }: Action,
) -> Response {
    let title = format!("Redrive dead letter {partition}@{offset}");
    let record = match read_one(&console, partition, offset).await {
        Ok(record) => record,
        Err(problem) => {
            return problem_page(
                &session,
                "/dead-letters",
                &title,
                StatusCode::NOT_FOUND,
                &problem,
            );
        }
    };
    let value = form.0.get("value").cloned().unwrap_or_default();
    let original_pretty = readable(record.original.value.as_deref(), false);
    let edited = value.trim() != original_pretty.trim();
    // An edit is checked by the decoder the pipeline uses: every problem
    // names its field and why.
    if edited
        && let Err(invalid) =
            crate::event::decode(Some(value.as_bytes()), &console.settings.event.limits())
    {
        let problems: Vec<String> = invalid
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.reason))
            .collect();
        let body = record_body(&console, &session, &record, Some(&value), &problems);
        let title = format!("Dead letter {partition}@{offset}");
        return respond_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            &session,
            "/dead-letters",
            &title,
            body,
        );
    }
    let mut replacements = HashMap::new();
    if edited {
        replacements.insert((partition, offset), value.as_bytes().to_vec());
    }
    let target = target_of(&form);
    let options = Redrive {
        target,
        records: Some(vec![(partition, offset)]),
        replacements,
        ..Redrive::default()
    };
    let report = dry_run(&console, &Filter::default(), options).await;
    let after_pretty = if edited {
        readable(Some(value.as_bytes()), false)
    } else {
        original_pretty.clone()
    };
    let body = html! {
        @match &report {
            Err(error) => { p.problems { "The preview failed: " (error) } }
            Ok(report) => {
                (preview_summary(report))
                (results_table(&report.results))
            }
        }
        @if edited { h2 { "The change" } (diff(&original_pretty, &after_pretty)) } @else { p.muted { "The value is sent as it was dead-lettered." } }
        form.card method="post" action={ (BASE) "/redrive" } {
            (csrf(&session))
            input type="hidden" name="record" value={ (partition) "@" (offset) };
            @if edited { input type="hidden" name="value" value=(value); }
            input type="hidden" name="target" value=(if target == Target::Api { "api" } else { "source" });
            input type="hidden" name="why" value=(form.get("why"));
            p { "Why: " (form.get("why")) }
            button type="submit" id="send" { "Send it " (if target == Target::Api { "to the API" } else { "back to the source topic" }) }
        }
    };
    respond(&session, "/dead-letters", &title, body)
}

async fn preview_filtered(
    State(console): State<Arc<Console>>,
    Action { session, form }: Action,
) -> Response {
    let filter = match filter_of(&form.0) {
        Ok(filter) => filter,
        Err(problem) => {
            return problem_page(
                &session,
                "/dead-letters",
                "Redrive",
                StatusCode::BAD_REQUEST,
                &problem,
            );
        }
    };
    let target = target_of(&form);
    let report = dry_run(
        &console,
        &filter,
        Redrive {
            target,
            ..Redrive::default()
        },
    )
    .await;
    let body = html! {
        p.notice { "Records before this filter's cursor (group " code { (filter.default_group(&console.settings)) } ") were redriven or passed over by an earlier run, as with " code { "paysync dlq redrive" } "." }
        @match &report {
            Err(error) => { p.problems { "The preview failed: " (error) } }
            Ok(report) => {
                (preview_summary(report))
                (results_table(&report.results))
                @if report.selected > 0 {
                    form.card.stack method="post" action={ (BASE) "/redrive" } {
                        (csrf(&session)) (filter_inputs(&form.0))
                        input type="hidden" name="target" value=(if target == Target::Api { "api" } else { "source" });
                        label for="why" { "Why (kept in the audit)" }
                        input type="text" name="why" id="why" required;
                        p { button type="submit" id="send" { "Redrive these " (report.selected) } }
                    }
                }
            }
        }
    };
    respond(&session, "/dead-letters", "Redrive: preview", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_names_the_edited_fields_not_their_values() {
        let fields = edited_fields(
            Some(br#"{"pay_fee":-1,"park_id":"P1"}"#),
            br#"{"pay_fee":100,"park_id":"P1"}"#,
        );
        assert_eq!(fields, vec!["pay_fee".to_owned()]);
    }
}
