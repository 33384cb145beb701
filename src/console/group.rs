//! The group's page: every replica as it last published (a replica that
//! missed three publications shows as gone), every partition of the source
//! topics with its owner, committed offset, end and lag (read from the
//! brokers, so a partition nobody owns shows too), the rate and the quota,
//! and the last hour of the group's history summed over its replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use maud::{Markup, html};
use rdkafka::consumer::Consumer;

use super::context::{Console, Viewer};
use super::views::{callers, chart, pill, respond, time};
use crate::kafka::queries;
use crate::status::{GroupView, Sample};

/// One source partition as the page shows it.
struct PartitionRow {
    topic: String,
    partition: i32,
    owner: Option<String>,
    committed: Option<i64>,
    end: i64,
    lag: i64,
}

/// Reads every source partition's committed offset and end. Blocks.
fn partitions(console: &Console, view: &GroupView) -> anyhow::Result<Vec<PartitionRow>> {
    let now = Utc::now();
    let mut owners = BTreeMap::new();
    for replica in view.replicas.values().filter(|r| !r.gone(now)) {
        for held in &replica.partitions {
            owners.insert((held.topic.clone(), held.partition), replica.caller.clone());
        }
    }
    let consumer = console.offsets.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows = Vec::new();
    for topic in &console.settings.kafka.topics {
        let Some(partitions) = queries::topic_partitions(&*consumer, topic)? else {
            continue;
        };
        let committed = queries::committed_offsets(&*consumer, topic, &partitions)?;
        for partition in partitions {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition, queries::REQUEST_TIMEOUT)?;
            let committed = committed.get(&partition).copied().flatten();
            rows.push(PartitionRow {
                owner: owners.get(&(topic.clone(), partition)).cloned(),
                lag: (high - committed.unwrap_or(low)).max(0),
                topic: topic.clone(),
                partition,
                committed,
                end: high,
            });
        }
    }
    Ok(rows)
}

/// The group's minutes: each replica's samples summed by minute.
fn history(view: &GroupView) -> Vec<Sample> {
    let now = Utc::now();
    let mut minutes: BTreeMap<i64, Sample> = BTreeMap::new();
    for replica in view.replicas.values().filter(|r| !r.gone(now)) {
        for sample in &replica.history {
            let sum = minutes.entry(sample.minute).or_insert(Sample {
                minute: sample.minute,
                delivered: 0,
                dead_lettered: 0,
                bans: 0,
                lag: 0,
                share_per_sec: 0.0,
            });
            sum.delivered += sample.delivered;
            sum.dead_lettered += sample.dead_lettered;
            sum.bans += sample.bans;
            sum.lag += sample.lag;
            sum.share_per_sec += sample.share_per_sec;
        }
    }
    minutes.into_values().collect()
}

pub(super) async fn show(State(console): State<Arc<Console>>, Viewer(session): Viewer) -> Response {
    let view = console.group.view();
    let read = {
        let (console, view) = (console.clone(), view.clone());
        tokio::task::spawn_blocking(move || partitions(&console, &view)).await
    };
    let rows = match read {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(error) => Err(error.to_string()),
    };
    let body = render(&console, &view, rows);
    respond(&session, "", "Group", body)
}

fn render(console: &Console, view: &GroupView, rows: Result<Vec<PartitionRow>, String>) -> Markup {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let control = console.control.view();
    let live: Vec<_> = view.replicas.values().filter(|r| !r.gone(now)).collect();
    let configured = console.settings.delivery.rate_limit_per_sec;
    let tuned_rate = control.tuning.values.get("delivery.rate_limit_per_sec");
    let bans: u64 = live.iter().map(|r| r.bans_total).sum();
    let history = history(view);
    let last_ban = history.iter().rev().find(|s| s.bans > 0).map(|s| s.minute);
    let total_lag: Option<i64> = rows
        .as_ref()
        .ok()
        .map(|rows| rows.iter().map(|r| r.lag).sum());
    html! {
        // An open page stays current without a script.
        meta http-equiv="refresh" content="10";
        div.cards {
            div.card { div.label { "Replicas live" } div.figure id="replicas-live" { (live.len()) } }
            div.card { div.label { "Lag (messages)" } div.figure id="total-lag" { (total_lag.map_or("?".to_owned(), |l| l.to_string())) } }
            div.card {
                div.label { "Rate (calls/s)" }
                div.figure { (tuned_rate.cloned().unwrap_or_else(|| configured.to_string())) }
                div.label { @if tuned_rate.is_some() { "tuned; file says " (configured) } @else { "from the configuration" } }
            }
            div.card {
                div.label { "Learned quota" }
                div.figure { (control.learned(now_ms).map_or("—".to_owned(), |q| format!("{q:.0}/s"))) }
                div.label { "group rate " (control.live_group_rate(now_ms).map_or("—".to_owned(), |q| format!("{q:.0}/s"))) }
            }
            div.card {
                div.label { "Bans (code 7)" }
                div.figure { (bans) }
                div.label { "last: " (last_ban.and_then(|m| chrono::DateTime::from_timestamp(m, 0)).map_or("none this hour".to_owned(), time)) }
            }
            div.card { div.label { "Pauses" } div.figure { (control.pauses.len()) } }
        }
        h2 { "Replicas" }
        div.scroll {
            table id="replicas" {
                thead { tr { th { "Replica" } th { "State" } th { "Partitions" } th { "Share/s" } th { "Breaker" } th { "Halt" } th { "Delivered" } th { "Dead letters" } th { "Published" } } }
                tbody {
                    @for replica in view.replicas.values() {
                        @let gone = replica.gone(now);
                        tr.replica {
                            td { code { (replica.caller) } br; span.muted { "v" (replica.version) " since " (time(replica.started_at)) } }
                            td {
                                @if gone { (pill("gone")) } @else { (pill(&replica.state)) }
                                @for reason in &replica.reasons { br; span.muted { (reason) } }
                            }
                            td.num { (replica.partitions.len()) }
                            td.num { (format!("{:.1}", replica.share_per_sec)) }
                            td { (pill(&replica.breaker)) @if replica.ban_remaining_s > 0.0 { " ban " (format!("{:.0}", replica.ban_remaining_s)) " s" } }
                            td { @if let Some(halt) = &replica.halted { (pill(halt)) } @else { "—" } }
                            td.num { (replica.delivered_total) }
                            td.num { (replica.dead_lettered_total) }
                            td { (time(replica.published_at)) }
                        }
                    }
                }
            }
        }
        @if view.replicas.is_empty() { p.muted { "No replica has published to the status topic yet." } }
        h2 { "Partitions" }
        @match &rows {
            Err(error) => { p.problems { "Cannot read the partitions from Kafka: " (error) } }
            Ok(rows) => {
                div.scroll {
                    table id="partitions" {
                        thead { tr { th { "Partition" } th { "Owner" } th { "Committed" } th { "End" } th { "Lag" } } }
                        tbody {
                            @for row in rows {
                                tr.partition {
                                    td { code { (row.topic) "/" (row.partition) } }
                                    td { @if let Some(owner) = &row.owner { code { (owner) } } @else { span.warn { "nobody" } } }
                                    td.num { (row.committed.map_or("—".to_owned(), |c| c.to_string())) }
                                    td.num { (row.end) }
                                    td.num.lag { (row.lag) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Callers sharing the rate" }
        (callers(&control, now_ms))
        h2 { "The last hour" }
        (chart("Delivered per minute", &history.iter().map(|s| s.delivered as f64).collect::<Vec<_>>()))
        (chart("Dead-lettered per minute", &history.iter().map(|s| s.dead_lettered as f64).collect::<Vec<_>>()))
        (chart("Lag (messages)", &history.iter().map(|s| s.lag as f64).collect::<Vec<_>>()))
        (chart("Share of the rate (calls/s)", &history.iter().map(|s| s.share_per_sec).collect::<Vec<_>>()))
        p.muted { "Each replica publishes every " (console.settings.console.status_interval_ms.as_secs()) " s to " code { (console.settings.console.status_topic(&console.settings.kafka.group_id)) } "." }
    }
}
