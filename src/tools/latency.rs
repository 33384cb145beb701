//! Exact Kafka→acceptance latency quantiles for the demo and bench
//! summaries. The service's own `paysync_delivery_latency_seconds` histogram
//! has buckets only; this recorder is attached to a pipeline by the tools
//! that print p50/p99 ([`crate::pipeline::Pipeline::observe_deliveries`]),
//! so `paysync run` never pays for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::pipeline::DeliveryObserver;

/// Delivery latencies in microseconds, from 1 µs to an hour, 3 significant digits.
#[derive(Clone)]
pub struct LatencyRecorder {
    histogram: Arc<Mutex<Histogram<u64>>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            histogram: Arc::new(Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            )),
        }
    }
}

impl LatencyRecorder {
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(micros);
    }

    /// The observer to attach to a pipeline.
    pub fn observer(&self) -> DeliveryObserver {
        let recorder = self.clone();
        Arc::new(move |latency| recorder.record(latency))
    }

    /// A quantile in milliseconds (0 before any delivery).
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .value_at_quantile(quantile) as f64
            / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_what_was_recorded() {
        let recorder = LatencyRecorder::default();
        assert_eq!(recorder.quantile_ms(0.5), 0.0);
        let observe = recorder.observer();
        for ms in 1..=100 {
            observe(Duration::from_millis(ms));
        }
        let p50 = recorder.quantile_ms(0.5);
        let p99 = recorder.quantile_ms(0.99);
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.5).contains(&p99), "{p99}");
    }
}
