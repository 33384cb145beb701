//! Every metric paysync exports, in one place: names (`paysync_…`, with
//! units), help texts, label sets, and the `record_*` functions that the rest
//! of the code calls when something happens.
//!
//! Labels come from closed sets only — dispositions, cause names, TOP codes
//! from the classification table (anything else is `other`), topic and
//! partition — never order ids, car numbers or raw messages. Each pipeline owns
//! its own [`Registry`], so tests and in-process tools do not share series.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::labels::{BreakerState, RebalanceKind};
use crate::top::classify::HaltCause;

mod record;

/// TOP error codes that get their own label value (the classification
/// table's rows); every other code is counted as `other`.
const KNOWN_TOP_CODES: [i64; 33] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
    32, 33, 34, 40, 41, 43, 50,
];

/// The ledger's label values: `ledger::entry::Path` and `Outcome` (a test
/// there keeps them equal), so their series exist from the start.
pub const LEDGER_PATHS: [&str; 4] = ["live", "replay", "redrive", "resolve"];
pub const LEDGER_OUTCOMES: [&str; 6] = [
    "intent",
    "accepted",
    "dead_lettered",
    "unknown",
    "held",
    "failed",
];

/// Buckets for call and delivery latency, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The gauges with one series per owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionGauge {
    /// The group's committed offset, from librdkafka's statistics.
    CommittedOffset,
    /// The position this replica finished up to.
    CompletedOffset,
    /// Messages between the committed offset and the partition's end.
    Lag,
    /// 1 while the window holds the partition paused.
    Paused,
}

impl PartitionGauge {
    const ALL: [PartitionGauge; 4] = [
        PartitionGauge::CommittedOffset,
        PartitionGauge::CompletedOffset,
        PartitionGauge::Lag,
        PartitionGauge::Paused,
    ];
}

pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounter,
    pub events_delivered: IntCounter,
    pub events_dead_lettered: IntCounterVec,
    pub call_outcomes: IntCounterVec,
    pub top_errors: IntCounterVec,
    pub call_duration: Histogram,
    pub delivery_latency: Histogram,
    pub limiter_wait: Histogram,
    pub limiter_tokens: IntGauge,
    pub rate_limit_share: Gauge,
    pub rate_limit_group: Gauge,
    pub rate_limit_learned: Gauge,
    pub rate_limit_bans: IntCounter,
    pub rate_limit_headroom: Gauge,
    pub backlog_drain: Gauge,
    pub calls_in_flight: IntGauge,
    pub window_messages: IntGauge,
    pub oldest_in_flight_age: Gauge,
    pub dead_letter_stalled: Gauge,
    pub breaker_state: IntGaugeVec,
    pub halted: IntGaugeVec,
    pub ban_remaining: Gauge,
    pub assigned_partitions: IntGauge,
    pub partition_committed_offset: IntGaugeVec,
    pub partition_completed_offset: IntGaugeVec,
    pub partition_lag: IntGaugeVec,
    pub partition_paused: IntGaugeVec,
    pub rebalances: IntCounterVec,
    pub dlq_produce_failures: IntCounter,
    pub commits_sent: IntCounter,
    pub commit_failures: IntCounter,
    pub seconds_since_last_commit: Gauge,
    pub tasks_abandoned: IntCounter,
    pub events_already_finished: IntCounter,
    /// Trace headers (`traceparent`, `b3`, …) whose value could not be read.
    pub trace_context_malformed: IntCounter,
    /// Spans not exported, by reason (`queue_full`, `export_failed`).
    pub trace_spans_dropped: IntCounterVec,
    pub dead_letters_written_before: IntCounter,
    pub dead_letter_read_back_failures: IntCounter,
    pub completion_maps_truncated: IntCounter,
    pub ledger_duplicates_suppressed: IntCounterVec,
    pub ledger_corrections: IntCounterVec,
    pub ledger_parked: IntCounterVec,
    pub ledger_writes: IntCounterVec,
    pub ledger_write_failures: IntCounter,
    pub ledger_write_duration: Histogram,
    pub ledger_entries: IntGauge,
    pub ledger_unknown_outcomes: IntGauge,
    pub ledger_held_events: IntGauge,
    pub ledger_memory_bytes: IntGauge,
    pub ledger_restoring_partitions: IntGauge,
    pub ledger_restore_seconds: Gauge,
    pub control_version: IntGauge,
    pub control_setting: GaugeVec,
    pub control_changes_applied: IntCounter,
    pub control_pauses: IntGauge,
    pub events_held: IntGauge,
    pub caller_share: GaugeVec,
    pub park_wait: GaugeVec,
    last_commit: Mutex<Instant>,
    /// Typed totals beside the labelled families, for the run summary: it
    /// reads these instead of matching label strings.
    tallies: Tallies,
}

/// Totals by closed label, indexed by the label's position in its `ALL`.
#[derive(Debug, Default)]
struct Tallies {
    dead_lettered: [AtomicU64; 3],
    calls: [AtomicU64; 4],
    rebalances: [AtomicU64; 3],
}

fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("valid metric"))
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric"),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build_info = int_gauge_vec(
            &r,
            "paysync_build_info",
            "Always 1; the version is a label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let metrics = Metrics {
            events_consumed: counter(
                &r,
                "paysync_events_consumed_total",
                "Messages taken from Kafka.",
            ),
            events_delivered: counter(
                &r,
                "paysync_events_delivered_total",
                "Events the API accepted (success=true, model=true).",
            ),
            events_dead_lettered: counter_vec(
                &r,
                "paysync_events_dead_lettered_total",
                "Events written to the dead-letter topic (acknowledged by the broker), by class and reason.",
                &["class", "reason"],
            ),
            call_outcomes: counter_vec(
                &r,
                "paysync_call_outcomes_total",
                "Calls to the TOP gateway by disposition (delivered, retry, dead_letter, halt) and reason.",
                &["disposition", "reason"],
            ),
            top_errors: counter_vec(
                &r,
                "paysync_top_errors_total",
                "TOP error_response answers by code (codes outside the classification table are 'other') and sub_code class (isp, isv, accesscontrol, other, none).",
                &["code", "sub_code_class"],
            ),
            call_duration: histogram(
                &r,
                "paysync_call_duration_seconds",
                "Duration of one call to the TOP gateway.",
                &LATENCY_BUCKETS,
            ),
            delivery_latency: histogram(
                &r,
                "paysync_delivery_latency_seconds",
                "From taking a message from Kafka to the API accepting it (waits and retries included).",
                &LATENCY_BUCKETS,
            ),
            limiter_wait: histogram(
                &r,
                "paysync_rate_limiter_wait_seconds",
                "Time a call waited for a rate-limiter token.",
                &LATENCY_BUCKETS,
            ),
            limiter_tokens: int_gauge(
                &r,
                "paysync_rate_limiter_tokens",
                "Tokens left in the rate limiter's bucket after the last call took one.",
            ),
            rate_limit_share: gauge(
                &r,
                "paysync_rate_limit_share_per_sec",
                "This replica's rate limit: its share of the group's rate (the whole rate with rate_limit_scope = replica).",
            ),
            rate_limit_group: gauge(
                &r,
                "paysync_rate_limit_group_per_sec",
                "The group's rate this replica takes its share of: delivery.rate_limit_per_sec, or in adaptive mode the rate the controller found.",
            ),
            rate_limit_learned: gauge(
                &r,
                "paysync_rate_limit_learned_per_sec",
                "Adaptive mode: the group's quota the latest ban measured (0 before the first ban).",
            ),
            rate_limit_bans: counter(
                &r,
                "paysync_rate_limit_bans_total",
                "Flow-control bans (code 7 and the legacy 4/5/6/8) this replica met, one per ban however many calls met it.",
            ),
            rate_limit_headroom: gauge(
                &r,
                "paysync_rate_limit_headroom_ratio",
                "Part of this replica's share the calls did not use over the last 5 s (0: the quota is the limit, more replicas cannot help).",
            ),
            backlog_drain: gauge(
                &r,
                "paysync_backlog_drain_seconds",
                "Seconds this replica needs to send its partitions' lag at its current share of the rate.",
            ),
            calls_in_flight: int_gauge(
                &r,
                "paysync_calls_in_flight",
                "Calls to the TOP gateway under way.",
            ),
            window_messages: int_gauge(
                &r,
                "paysync_window_messages",
                "Messages taken from Kafka and not finished (delivered or dead-lettered).",
            ),
            oldest_in_flight_age: gauge(
                &r,
                "paysync_oldest_in_flight_age_seconds",
                "Age of the oldest unfinished message (0 when none).",
            ),
            dead_letter_stalled: gauge(
                &r,
                "paysync_dead_letter_stalled_seconds",
                "How long the longest-failing dead-letter write has held its partition (0 when none fails).",
            ),
            breaker_state: int_gauge_vec(
                &r,
                "paysync_breaker_state",
                "Circuit breaker: 1 for the current state (closed, open, half_open), 0 for the others.",
                &["state"],
            ),
            halted: int_gauge_vec(
                &r,
                "paysync_halted",
                "1 while delivery is halted for this cause (broken configuration), else 0.",
                &["cause"],
            ),
            ban_remaining: gauge(
                &r,
                "paysync_ban_remaining_seconds",
                "Seconds left of a code-7 ban (0 when none).",
            ),
            assigned_partitions: int_gauge(
                &r,
                "paysync_assigned_partitions",
                "Partitions assigned to this consumer.",
            ),
            partition_committed_offset: int_gauge_vec(
                &r,
                "paysync_partition_committed_offset",
                "The group's committed offset for an assigned partition (from librdkafka statistics).",
                &["topic", "partition"],
            ),
            partition_completed_offset: int_gauge_vec(
                &r,
                "paysync_partition_completed_offset",
                "One past the highest contiguous finished offset: what paysync stores for the next commit.",
                &["topic", "partition"],
            ),
            partition_lag: int_gauge_vec(
                &r,
                "paysync_partition_lag_messages",
                "High watermark minus committed offset for an assigned partition; never negative, reported while paused.",
                &["topic", "partition"],
            ),
            partition_paused: int_gauge_vec(
                &r,
                "paysync_partition_paused",
                "1 while paysync has paused fetching from the partition.",
                &["topic", "partition"],
            ),
            rebalances: counter_vec(
                &r,
                "paysync_rebalances_total",
                "Rebalance callbacks by kind (assign, revoke, error).",
                &["kind"],
            ),
            dlq_produce_failures: counter(
                &r,
                "paysync_dlq_produce_failures_total",
                "Failed attempts to write a dead letter (each is retried).",
            ),
            commits_sent: counter(
                &r,
                "paysync_commits_total",
                "Offset commits sent to the broker (each an OffsetCommit request; failures are counted in paysync_commit_failures_total too).",
            ),
            commit_failures: counter(
                &r,
                "paysync_commit_failures_total",
                "Offset commits that failed.",
            ),
            seconds_since_last_commit: gauge(
                &r,
                "paysync_seconds_since_last_commit",
                "Seconds since the last successful offset commit (or since start).",
            ),
            tasks_abandoned: counter(
                &r,
                "paysync_tasks_abandoned_total",
                "Events given up on revoke or shutdown; the next owner or run sends them.",
            ),
            events_already_finished: counter(
                &r,
                "paysync_events_already_finished_total",
                "Events skipped on consumption because a committed completion map (or this process's own record) says they were already delivered or dead-lettered.",
            ),
            trace_context_malformed: counter(
                &r,
                "paysync_trace_context_malformed_total",
                "Events whose trace header (traceparent, b3, X-B3-*) could not be read; the event is delivered without a link to its producer's span.",
            ),
            trace_spans_dropped: counter_vec(
                &r,
                "paysync_trace_spans_dropped_total",
                "Spans not exported: the export queue was full (queue_full) or their export failed (export_failed). Delivery never waits for the collector.",
                &["reason"],
            ),
            dead_letters_written_before: counter(
                &r,
                "paysync_dead_letters_written_before_total",
                "Dead letters not written because an earlier owner of the partition had written the copy before the group committed it (found by reading the dead-letter topic back after a takeover).",
            ),
            dead_letter_read_back_failures: counter(
                &r,
                "paysync_dead_letter_read_back_failures_total",
                "Takeovers whose dead-letter topic stayed unreadable past the read-back patience (120 s): that partition's dead letters were written without checking for an earlier owner's copies.",
            ),
            completion_maps_truncated: counter(
                &r,
                "paysync_completion_maps_truncated_total",
                "Commits whose completion map did not fit kafka.completion_map_max_bytes and kept only its first part.",
            ),
            ledger_duplicates_suppressed: counter_vec(
                &r,
                "paysync_ledger_duplicates_suppressed_total",
                "Events not sent because the ledger holds their key as accepted with the same DTO, by path (live, replay, redrive).",
                &["path"],
            ),
            ledger_corrections: counter_vec(
                &r,
                "paysync_ledger_corrections_total",
                "Events sent although their key was accepted before, because their DTO differs (a corrected fee, say), by path.",
                &["path"],
            ),
            ledger_parked: counter_vec(
                &r,
                "paysync_ledger_parked_total",
                "Strict mode: events parked instead of sent, by outcome (unknown: a call whose answer was lost; held: behind an unknown event of the same order).",
                &["outcome"],
            ),
            ledger_writes: counter_vec(
                &r,
                "paysync_ledger_writes_total",
                "Ledger entries the broker acknowledged, by outcome (intent, accepted, dead_lettered, unknown, held).",
                &["outcome"],
            ),
            ledger_write_failures: counter(
                &r,
                "paysync_ledger_write_failures_total",
                "Failed attempts to write a ledger entry (each is retried; the event's offset waits).",
            ),
            ledger_write_duration: histogram(
                &r,
                "paysync_ledger_write_duration_seconds",
                "From sending a ledger entry to the broker's acknowledgement, retries included: what each write adds to its event (strict mode writes one more per call, before it).",
                &LATENCY_BUCKETS,
            ),
            ledger_entries: int_gauge(
                &r,
                "paysync_ledger_entries",
                "Ledger entries in this replica's memory (the ledger partitions of its source partitions, within ledger.retain_days).",
            ),
            ledger_unknown_outcomes: int_gauge(
                &r,
                "paysync_ledger_unknown_outcomes",
                "Events whose outcome is unknown (an intent without outcome, or parked as unknown) in this replica's ledger partitions: resolve them with paysync ledger resolve.",
            ),
            ledger_held_events: int_gauge(
                &r,
                "paysync_ledger_held_events",
                "Events parked behind an unknown event of the same order, released by its resolution.",
            ),
            ledger_memory_bytes: int_gauge(
                &r,
                "paysync_ledger_memory_bytes",
                "Bytes the ledger's in-memory index takes (slots and spare room).",
            ),
            ledger_restoring_partitions: int_gauge(
                &r,
                "paysync_ledger_restoring_partitions",
                "Ledger partitions being read to their end; their source partitions' events wait.",
            ),
            ledger_restore_seconds: gauge(
                &r,
                "paysync_ledger_restore_seconds",
                "How long the latest ledger partition restore took.",
            ),
            control_version: int_gauge(
                &r,
                "paysync_control_version",
                "Version of the tuned settings in force (0: the configuration file's alone).",
            ),
            control_setting: gauge_vec(
                &r,
                "paysync_control_setting",
                "Each setting that can change in place, as in force (rate_limit_mode: 0 fixed, 1 adaptive).",
                &["key"],
            ),
            control_changes_applied: counter(
                &r,
                "paysync_control_changes_applied_total",
                "Tuned settings applied in place (each new version once).",
            ),
            control_pauses: int_gauge(
                &r,
                "paysync_control_pauses",
                "Pauses in force (everything, parks, partitions) on the control topic.",
            ),
            events_held: int_gauge(
                &r,
                "paysync_events_held",
                "Events of this replica held by a pause; nothing past them is committed.",
            ),
            caller_share: gauge_vec(
                &r,
                "paysync_caller_share_calls_per_second",
                "Each caller's share of the app key's rate (live group, replays, redrives, reconciliations), as this caller computes it.",
                &["kind", "caller"],
            ),
            park_wait: gauge_vec(
                &r,
                "paysync_park_wait_seconds",
                "Mean wait for a call's turn over the last 10 s, for the parks that waited longest; the rest as park=\"other\".",
                &["park"],
            ),
            last_commit: Mutex::new(Instant::now()),
            tallies: Tallies::default(),
            registry: r,
        };
        // Series with a closed label set exist from the start, at zero.
        for state in BreakerState::ALL {
            metrics
                .breaker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(*state == BreakerState::Closed));
        }
        for cause in HaltCause::ALL {
            metrics.halted.with_label_values(&[cause.as_str()]).set(0);
        }
        for kind in RebalanceKind::ALL {
            metrics.rebalances.with_label_values(&[kind.as_str()]);
        }
        for path in LEDGER_PATHS {
            metrics
                .ledger_duplicates_suppressed
                .with_label_values(&[path]);
            metrics.ledger_corrections.with_label_values(&[path]);
        }
        for outcome in LEDGER_OUTCOMES {
            metrics.ledger_writes.with_label_values(&[outcome]);
            if outcome == "unknown" || outcome == "held" {
                metrics.ledger_parked.with_label_values(&[outcome]);
            }
        }
        metrics
    }

    /// The text exposition for `/metrics`.
    pub fn render(&self) -> String {
        let elapsed = self
            .last_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        self.seconds_since_last_commit.set(elapsed.as_secs_f64());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::top::classify::{Disposition, Outcome, RejectCause, RetryCause};
    use crate::top::response::{ErrorResponse, TopResponse};

    #[test]
    fn unknown_codes_and_sub_codes_stay_in_closed_label_sets() {
        let metrics = Metrics::new();
        let error = |code, sub_code: &str| Outcome::Answered {
            status: 200,
            response: TopResponse::Error(ErrorResponse {
                code,
                sub_code: Some(sub_code.into()),
                ..Default::default()
            }),
        };
        let retry = Disposition::Retry {
            cause: RetryCause::UnknownError,
            wait: None,
        };
        metrics.record_call(
            &error(123_456, "weird.thing"),
            &retry,
            Duration::from_millis(3),
        );
        metrics.record_call(&error(15, "isp.remote"), &retry, Duration::from_millis(3));
        metrics.record_call(
            &error(41, "isv.bad"),
            &Disposition::DeadLetter {
                cause: RejectCause::InvalidArguments,
            },
            Duration::from_millis(3),
        );
        let text = metrics.render();
        assert!(
            text.contains(r#"paysync_top_errors_total{code="other",sub_code_class="other"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"paysync_top_errors_total{code="15",sub_code_class="isp"} 1"#));
        assert!(text.contains(
            r#"paysync_call_outcomes_total{disposition="dead_letter",reason="invalid_arguments"} 1"#
        ));
        assert!(!text.contains("123456"));
    }
}

#[cfg(test)]
mod documentation {
    use super::*;

    /// The metrics table of docs/monitoring.md lists exactly the exported families.
    #[test]
    fn the_monitoring_page_documents_every_metric() {
        let readme = include_str!("../../docs/monitoring.md");
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter(|l| l.starts_with("| `paysync_"))
            .map(|l| l.split('`').nth(1).unwrap().to_owned())
            .collect();
        let metrics = Metrics::new();
        // Labelled families appear once they have a series.
        metrics
            .events_dead_lettered
            .with_label_values(&["c", "r"])
            .inc();
        metrics.call_outcomes.with_label_values(&["d", "r"]).inc();
        metrics.top_errors.with_label_values(&["1", "none"]).inc();
        metrics.publish_dropped_spans((1, 0));
        for vec in [
            &metrics.partition_committed_offset,
            &metrics.partition_completed_offset,
            &metrics.partition_lag,
            &metrics.partition_paused,
        ] {
            vec.with_label_values(&["t", "0"]).set(0);
        }
        metrics.control_setting.with_label_values(&["k"]).set(0.0);
        metrics.caller_share.with_label_values(&["k", "c"]).set(0.0);
        metrics.park_wait.with_label_values(&["p"]).set(0.0);
        let exported: std::collections::BTreeSet<String> = metrics
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(documented, exported);
    }
}
