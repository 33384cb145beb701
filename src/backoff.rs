//! Exponential backoff with full jitter, the one retry delay paysync uses
//! (calls to the gateway, dead-letter writes).
//!
//! Full jitter (uniform in `[0, min(max, initial·2^attempt)]`) spreads the
//! retries of many events that failed together, so a recovering gateway or
//! broker does not meet them all in the same instant.

use std::time::Duration;

/// The delay before retry number `attempt` (0 for the first retry).
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_bounds() {
        for attempt in 0..40 {
            let delay = backoff(attempt, Duration::from_millis(100), Duration::from_secs(5));
            assert!(delay <= Duration::from_secs(5));
            assert!(delay <= Duration::from_millis(100) * 2u32.pow(attempt.min(20)));
        }
    }
}
