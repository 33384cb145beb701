//! A redrive started from the console: a delivery run through
//! [`crate::dead_letter::redrive::redrive`], the code path of `paysync dlq
//! redrive` — to the API through the group's rate (its own lease on the
//! control topic) and the ledger — with its progress shown live and a
//! result per record. Every run is audited on the control topic when it
//! starts and when it ends. One runs at a time on a console.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::html;

use super::context::{Action, Console, Viewer};
use super::dead_letters::{filter_of, problem_page, read_one};
use super::preview::{edited_fields, results_table, target_of};
use super::views::{BASE, pill, respond, time};
use crate::control::{CallerKind, Pace};
use crate::dead_letter::reader::Filter;
use crate::dead_letter::redrive::{self, RecordResult, Redrive, RedriveReport, Target};
use crate::pipeline::rate::SharedRate;

/// A redrive refused before it started, and why.
fn refuse(session: &super::auth::Session, status: StatusCode, why: &str) -> Response {
    problem_page(session, "/redrives", "Redrive", status, why)
}

/// Runs a console remembers.
const RUNS_KEPT: usize = 20;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route(&format!("{BASE}/redrive"), post(start))
        .route(&format!("{BASE}/redrives"), get(runs))
        .route(&format!("{BASE}/redrives/{{id}}"), get(run))
}

/// One redrive started from the console.
struct Run {
    id: u64,
    by: String,
    what: String,
    why: String,
    started: DateTime<Utc>,
    results: Mutex<Vec<RecordResult>>,
    finished: Mutex<Option<Result<RedriveReport, String>>>,
}

impl Run {
    fn running(&self) -> bool {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

/// The console's runs, newest last; one runs at a time.
#[derive(Default)]
pub(super) struct Runs {
    list: Mutex<Vec<Arc<Run>>>,
    next: AtomicU64,
}

impl Runs {
    /// Adds `run` unless another is running (checked and added under one lock).
    fn admit(&self, run: Arc<Run>) -> bool {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|other| other.running()) {
            return false;
        }
        list.push(run);
        if list.len() > RUNS_KEPT {
            list.remove(0);
        }
        true
    }

    fn running(&self) -> bool {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|run| run.running())
    }

    fn get(&self, id: u64) -> Option<Arc<Run>> {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|run| run.id == id)
            .cloned()
    }
}

fn summary(report: &RedriveReport) -> String {
    format!(
        "sent {}, skipped as delivered {}, held back {}, failed {}",
        report.redriven,
        report.skipped_delivered.len(),
        report.held_back.len(),
        report.failed.len()
    )
}

async fn start(
    State(console): State<Arc<Console>>,
    Extension(runs): Extension<Arc<Runs>>,
    Action { session, form }: Action,
) -> Response {
    let why = match form.why() {
        Ok(why) => why,
        Err(problem) => {
            return refuse(&session, StatusCode::BAD_REQUEST, &problem);
        }
    };
    if runs.running() {
        return refuse(
            &session,
            StatusCode::CONFLICT,
            "A redrive is running on this console: wait for it to end.",
        );
    }
    let target = target_of(&form);
    let mut options = Redrive {
        target,
        ..Redrive::default()
    };
    let (filter, what) = if let Some(chosen) = form.optional("record") {
        let Some((partition, offset)) = chosen
            .split_once('@')
            .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
        else {
            return refuse(
                &session,
                StatusCode::BAD_REQUEST,
                "record: not PARTITION@OFFSET",
            );
        };
        let mut what = format!("redrive of dead letter {partition}@{offset} ");
        if let Some(value) = form.optional("value") {
            // Checked again: the preview's check is not trusted.
            if let Err(invalid) =
                crate::event::decode(Some(value.as_bytes()), &console.settings.event.limits())
            {
                return refuse(
                    &session,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("value: {invalid}"),
                );
            }
            let original = match read_one(&console, partition, offset).await {
                Ok(record) => record,
                Err(problem) => {
                    return refuse(&session, StatusCode::NOT_FOUND, &problem);
                }
            };
            what.push_str(&format!(
                "(edited: {}) ",
                edited_fields(original.original.value.as_deref(), value.as_bytes()).join(", ")
            ));
            options
                .replacements
                .insert((partition, offset), value.into_bytes());
        }
        options.records = Some(vec![(partition, offset)]);
        (Filter::default(), what)
    } else {
        let filter = match filter_of(&form.0) {
            Ok(filter) => filter,
            Err(problem) => {
                return refuse(&session, StatusCode::BAD_REQUEST, &problem);
            }
        };
        let what = format!("redrive of the dead letters matching {filter:?} ");
        (filter, what)
    };
    let what = format!(
        "{what}{}",
        if target == Target::Api {
            "to the API"
        } else {
            "to the source topic"
        }
    );
    let run = Arc::new(Run {
        id: runs.next.fetch_add(1, Ordering::Relaxed) + 1,
        by: session.user.clone(),
        what: what.clone(),
        why: why.clone(),
        started: Utc::now(),
        results: Mutex::new(Vec::new()),
        finished: Mutex::new(None),
    });
    if !runs.admit(run.clone()) {
        return refuse(
            &session,
            StatusCode::CONFLICT,
            "A redrive is running on this console: wait for it to end.",
        );
    }
    if let Err(error) = console
        .control
        .audit(
            &session.user,
            what.clone(),
            &why,
            Some("started".to_owned()),
        )
        .await
    {
        *run.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(format!(
            "not started: the audit record could not be written: {error}"
        )));
        return Redirect::to(&format!("{BASE}/redrives/{}", run.id)).into_response();
    }
    tracing::info!(user = session.user, what, why, "Console redrive started.");
    let id = run.id;
    tokio::spawn(execute(console.clone(), run, filter, options));
    Redirect::to(&format!("{BASE}/redrives/{id}")).into_response()
}

/// Runs a redrive, through the group's rate when to the API, and audits its end.
async fn execute(console: Arc<Console>, run: Arc<Run>, filter: Filter, mut options: Redrive) {
    let settings = &console.settings;
    let shared = if options.target == Target::Api {
        match SharedRate::join(
            settings,
            CallerKind::Redrive,
            settings.control.backfill_weight,
            None,
        )
        .await
        {
            Ok(shared) => shared.map(Arc::new),
            Err(error) => {
                finish(
                    &console,
                    &run,
                    Err(format!("cannot join the group's rate: {error:#}")),
                )
                .await;
                return;
            }
        }
    } else {
        None
    };
    options.pace = shared.clone().map(|shared| shared as Arc<dyn Pace>);
    let progress = run.clone();
    options.progress = Some(Arc::new(move |result: &RecordResult| {
        progress
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(result.clone());
    }));
    let report = redrive::redrive(settings, &filter, &options).await;
    drop(options);
    if let Some(shared) = shared.and_then(Arc::into_inner) {
        shared.leave().await;
    }
    finish(&console, &run, report.map_err(|error| format!("{error:#}"))).await;
}

async fn finish(console: &Console, run: &Run, report: Result<RedriveReport, String>) {
    let result = match &report {
        Ok(report) => summary(report),
        Err(error) => format!("stopped: {error}"),
    };
    tracing::info!(
        user = run.by,
        what = run.what,
        result,
        "Console redrive ended."
    );
    if let Err(error) = console
        .control
        .audit(&run.by, run.what.clone(), &run.why, Some(result))
        .await
    {
        tracing::error!(error = %error, "The end of a console redrive could not be audited.");
    }
    *run.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
}

async fn runs(Extension(runs): Extension<Arc<Runs>>, Viewer(session): Viewer) -> Response {
    let list: Vec<Arc<Run>> = runs.list.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let body = html! {
        p.muted { "Redrives started from this console since it started; the audit keeps every console's." }
        div.scroll {
            table {
                thead { tr { th { "Run" } th { "Started" } th { "By" } th { "What" } th { "State" } } }
                tbody {
                    @for run in list.iter().rev() {
                        @let done = !run.running();
                        tr {
                            td { a href={ (BASE) "/redrives/" (run.id) } { "#" (run.id) } }
                            td { (time(run.started)) }
                            td { (run.by) }
                            td { (run.what) }
                            td { (pill(if done { "finished" } else { "running" })) }
                        }
                    }
                }
            }
        }
    };
    respond(&session, "/redrives", "Redrives", body)
}

async fn run(
    Extension(runs): Extension<Arc<Runs>>,
    Viewer(session): Viewer,
    Path(id): Path<u64>,
) -> Response {
    let Some(run) = runs.get(id) else {
        return refuse(
            &session,
            StatusCode::NOT_FOUND,
            "no such run on this console",
        );
    };
    let results = run
        .results
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let finished = run
        .finished
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let body = html! {
        @if finished.is_none() {
            // Live progress without a script: the page reloads itself.
            meta http-equiv="refresh" content="1";
        }
        div.card {
            p { "By " (run.by) " at " (time(run.started)) ": " (run.what) }
            p { "Why: " (run.why) }
            p id="run-state" {
                @match &finished {
                    None => { (pill("running")) " " (results.len()) " record(s) done so far" }
                    Some(Ok(report)) => { (pill("finished")) " " (summary(report)) }
                    Some(Err(error)) => { (pill("failed")) " " (error) }
                }
            }
        }
        (results_table(&results))
    };
    respond(&session, "/redrives", &format!("Redrive #{id}"), body)
}
