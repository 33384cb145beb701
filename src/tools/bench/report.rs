//! What a benchmark run reports, in both modes (in process and against a
//! broker), and the arithmetic behind it: throughput from acceptances, the
//! ceiling the calls in flight allow, quantiles and means read from a
//! Prometheus text exposition, the process's peak memory.

use std::time::Instant;

use serde::Serialize;

use crate::tools::emulator::Emulator;

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `in-process` (mock cluster, one process) or `broker` (`paysync run`
    /// as a child process against a real broker).
    pub mode: &'static str,
    pub events: usize,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub rate_limit: Option<u32>,
    pub burst: Option<u32>,
    /// Pipeline throughput from the first to the last acceptance.
    pub events_per_sec: f64,
    /// Mean acceptances per whole wall-clock second (first and last seconds left out).
    pub sustained_per_sec: f64,
    /// Raw signed POSTs to the emulator, same concurrency, no Kafka.
    pub baseline_per_sec: f64,
    pub ratio: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Most acceptances in one wall-clock second.
    pub max_in_one_second: u64,
    /// In process: the whole process (pipeline, emulator and mock broker);
    /// against a broker: `paysync run` alone.
    pub peak_rss_mb: f64,
    /// CPU seconds of `paysync run` (broker mode only).
    pub cpu_seconds: Option<f64>,
    pub events_per_cpu_second: Option<f64>,
    /// `max_in_flight / latency` (when the emulator adds latency).
    pub ceiling_per_sec: Option<f64>,
    /// Throughput over the ceiling.
    pub ceiling_ratio: Option<f64>,
    /// Mean gateway call as `paysync run` timed it (broker mode): the
    /// emulator's latency plus what the machine adds to it.
    pub call_mean_ms: Option<f64>,
    /// Share of the `max_in_flight` call slots in use on average (Little's
    /// law: events/s × mean call ÷ slots; broker mode). Near 1, paysync kept
    /// every slot busy and the gateway's answer time is the limit.
    pub slots_busy_ratio: Option<f64>,
    /// Offset commits `paysync run` sent per second of the run (broker
    /// mode): what keeping commits up with progress costs the broker.
    pub commits_per_sec: Option<f64>,
    pub partitions: i32,
    /// Distinct order ids per partition (`None`: one event per order).
    pub orders_per_partition: Option<usize>,
    /// The child's restore of `--ledger-entries` (broker mode).
    pub ledger: Option<LedgerFigures>,
    /// Ledger writes' p50 / p99 (broker mode, ledger on): what each adds
    /// to its event.
    pub ledger_write_ms: Option<(f64, f64)>,
}

/// A ledger restore as the benchmark measured it.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerFigures {
    /// From the child's start to its last ledger partition restored.
    pub restore_seconds: f64,
    pub entries: u64,
    /// `paysync_ledger_memory_bytes`: the index.
    pub memory_mb: f64,
    /// The child's peak RSS once restored.
    pub rss_mb: f64,
}

impl BenchReport {
    /// A few lines for people.
    pub fn render(&self) -> String {
        let limit = match (self.rate_limit, self.burst) {
            (Some(rate), Some(burst)) => format!("{rate}/s (burst {burst})"),
            _ => "none".to_owned(),
        };
        let cpu = match (self.cpu_seconds, self.events_per_cpu_second) {
            (Some(seconds), Some(per)) => {
                format!("{seconds:.2} s ({per:.0} events per CPU-second)")
            }
            _ => "not measured (in-process mode)".to_owned(),
        };
        let ceiling = match (self.ceiling_per_sec, self.ceiling_ratio) {
            (Some(c), Some(r)) => format!("{c:.0}/s (reached {:.0} %)", r * 100.0),
            _ => "none (no emulator latency)".to_owned(),
        };
        let slots = match (self.call_mean_ms, self.slots_busy_ratio) {
            (Some(call), Some(busy)) => {
                format!("{:.0} % busy (mean call {call:.1} ms)", busy * 100.0)
            }
            _ => "not measured (in-process mode)".to_owned(),
        };
        let commits = match self.commits_per_sec {
            Some(per) => format!("{per:.1} per second"),
            None => "not measured (in-process mode)".to_owned(),
        };
        let writes = match self.ledger_write_ms {
            Some((p50, p99)) => format!("ledger writes     p50 {p50:.1} / p99 {p99:.1} ms\n"),
            None => String::new(),
        };
        let ledger = match &self.ledger {
            Some(l) => format!(
                "ledger restore    {} entries in {:.1} s; index {:.1} MiB, RSS {:.1} MiB\n",
                l.entries, l.restore_seconds, l.memory_mb, l.rss_mb
            ),
            None => String::new(),
        };
        format!(
            "mode              {}\nevents            {}\nemulator latency  {} ms\nmax in flight     {}\nrate limit        {limit}\nthroughput        {:.0} events/s (sustained {:.0}/s)\nbaseline (HTTP)   {:.0} calls/s\nratio             {:.2}\nlatency p50/p99   {:.1} / {:.1} ms (Kafka → API acceptance)\nmost in 1 s       {}\npeak RSS          {:.1} MiB\npaysync CPU       {cpu}\nceiling           {ceiling}\ncall slots        {slots}\noffset commits    {commits}\n{writes}{ledger}",
            self.mode,
            self.events,
            self.latency_ms,
            self.max_in_flight,
            self.events_per_sec,
            self.sustained_per_sec,
            self.baseline_per_sec,
            self.ratio,
            self.p50_ms,
            self.p99_ms,
            self.max_in_one_second,
            self.peak_rss_mb
        )
    }
}

/// Throughput figures of a run, from its first and last acceptance and the
/// emulator's acceptances per wall-clock second; both modes use them.
pub(super) struct Throughput {
    pub(super) events_per_sec: f64,
    /// Mean acceptances per whole second (the first and last are partial).
    pub(super) sustained_per_sec: f64,
    pub(super) max_in_one_second: u64,
}

impl Throughput {
    pub(super) fn measure(
        events: usize,
        first: Option<Instant>,
        last: Instant,
        emulator: &Emulator,
    ) -> Throughput {
        let elapsed = last
            .duration_since(first.unwrap_or(last))
            .as_secs_f64()
            .max(1e-3);
        // n acceptances span n - 1 intervals.
        let events_per_sec = (events.saturating_sub(1)).max(1) as f64 / elapsed;
        let per_second: Vec<u64> = emulator
            .gateway()
            .stats()
            .accepted_per_second
            .values()
            .copied()
            .collect();
        let interior = per_second
            .get(1..per_second.len().saturating_sub(1))
            .unwrap_or_default();
        let sustained_per_sec = if interior.is_empty() {
            events_per_sec
        } else {
            interior.iter().sum::<u64>() as f64 / interior.len() as f64
        };
        Throughput {
            events_per_sec,
            sustained_per_sec,
            max_in_one_second: per_second.iter().copied().max().unwrap_or(0),
        }
    }
}

/// `max_in_flight / latency`: what the calls in flight allow at the emulator's latency.
pub fn ceiling_per_sec(max_in_flight: usize, latency_ms: u64) -> Option<f64> {
    (latency_ms > 0).then(|| max_in_flight as f64 * 1000.0 / latency_ms as f64)
}

/// The process's peak resident set (VmHWM), in MiB; 0 where /proc is missing.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// `name`'s cumulative buckets in Prometheus text: (upper bound, count).
pub(super) fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// An unlabelled counter's or gauge's value.
pub(super) fn value(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
}

/// A histogram's mean (`_sum / _count`), when it has observations.
pub(super) fn mean(text: &str, name: &str) -> Option<f64> {
    let count = value(text, &format!("{name}_count")).filter(|count| *count > 0.0)?;
    Some(value(text, &format!("{name}_sum"))? / count)
}

/// The `q` quantile of cumulative buckets, linear within its bucket (0 when empty).
pub(super) fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank && count > below {
            if bound.is_infinite() {
                return lower;
            }
            return lower + (bound - lower) * (rank - below) / (count - below);
        }
        (lower, below) = (bound, count);
    }
    lower
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_prometheus_buckets() {
        let text = "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.02\"} 90\nx_bucket{le=\"+Inf\"} 100\nx_count 100\n";
        let buckets = histogram(text, "x");
        assert_eq!(buckets.len(), 3);
        assert!((quantile(&buckets, 0.5) - 0.01).abs() < 1e-9);
        assert!((quantile(&buckets, 0.7) - 0.015).abs() < 1e-9);
        // In the open last bucket the answer is its lower bound.
        assert!((quantile(&buckets, 0.99) - 0.02).abs() < 1e-9);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_ceiling_is_what_the_calls_in_flight_allow() {
        assert_eq!(ceiling_per_sec(256, 50), Some(5_120.0));
        assert_eq!(ceiling_per_sec(64, 0), None);
    }
}
