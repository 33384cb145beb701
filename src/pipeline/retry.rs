//! One event's retry budget: how many transient failures and how much time
//! it may spend before it is dead-lettered as `retries_exhausted`, and the
//! backoff between attempts (a server-given wait counts as time spent).

use std::time::Duration;

use crate::backoff::backoff;
use crate::config::DeliverySettings;

/// One event's allowance of transient failures: attempts and time.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    max_attempts: u32,
    max_elapsed: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    failures: u32,
    spent: Duration,
}

/// What to do after a charged failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Try again after this delay.
    After(Duration),
    /// The budget is spent: dead-letter the event.
    Exhausted,
}

impl RetryBudget {
    pub fn new(settings: &DeliverySettings) -> RetryBudget {
        RetryBudget {
            max_attempts: settings.max_attempts,
            max_elapsed: settings.max_retry_elapsed_ms,
            backoff_initial: settings.backoff_initial_ms,
            backoff_max: settings.backoff_max_ms,
            failures: 0,
            spent: Duration::ZERO,
        }
    }

    /// Takes tuned limits (`paysync control set`): an event already
    /// retrying is judged by them from its next failure on.
    pub fn retune(&mut self, settings: &DeliverySettings) {
        self.max_attempts = settings.max_attempts;
        self.max_elapsed = settings.max_retry_elapsed_ms;
        self.backoff_initial = settings.backoff_initial_ms;
        self.backoff_max = settings.backoff_max_ms;
    }

    /// Charges a failed call that took `call` and asked to wait `wait` (a
    /// `Retry-After`, say); the delay before the next attempt counts too.
    pub fn charge(&mut self, call: Duration, wait: Option<Duration>) -> NextAttempt {
        self.failures += 1;
        self.spent += call;
        if self.failures >= self.max_attempts || self.spent >= self.max_elapsed {
            return NextAttempt::Exhausted;
        }
        let delay = wait
            .unwrap_or_else(|| backoff(self.failures - 1, self.backoff_initial, self.backoff_max));
        self.spent += delay;
        NextAttempt::After(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_attempts: u32, max_elapsed_ms: u64) -> RetryBudget {
        RetryBudget::new(&DeliverySettings {
            max_attempts,
            max_retry_elapsed_ms: Duration::from_millis(max_elapsed_ms),
            backoff_initial_ms: Duration::from_millis(100),
            backoff_max_ms: Duration::from_millis(400),
            ..DeliverySettings::default()
        })
    }

    #[test]
    fn the_budget_is_exhausted_at_max_attempts() {
        let mut budget = budget(3, 600_000);
        let call = Duration::from_millis(5);
        assert!(matches!(budget.charge(call, None), NextAttempt::After(_)));
        assert!(matches!(budget.charge(call, None), NextAttempt::After(_)));
        assert_eq!(budget.charge(call, None), NextAttempt::Exhausted);
    }

    #[test]
    fn the_budget_is_exhausted_by_time_spent_calling_and_waiting() {
        let mut budget = budget(100, 1_000);
        // A server-given wait is honoured, and counts as time spent.
        assert_eq!(
            budget.charge(Duration::from_millis(100), Some(Duration::from_millis(700))),
            NextAttempt::After(Duration::from_millis(700))
        );
        assert_eq!(
            budget.charge(Duration::from_millis(200), None),
            NextAttempt::Exhausted,
            "100 + 700 + 200 ms reach the 1 s budget"
        );
    }

    #[test]
    fn backoff_delays_grow_within_the_maximum() {
        let mut budget = budget(100, 600_000);
        for failure in 0..10u32 {
            let NextAttempt::After(delay) = budget.charge(Duration::ZERO, None) else {
                panic!("exhausted early");
            };
            let ceiling = Duration::from_millis(100 * 2u64.pow(failure.min(20)));
            assert!(
                delay <= ceiling.min(Duration::from_millis(400)),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn a_single_attempt_budget_dead_letters_the_first_failure() {
        let mut budget = budget(1, 600_000);
        assert_eq!(budget.charge(Duration::ZERO, None), NextAttempt::Exhausted);
    }
}
