//! The rate budget: `delivery.rate_limit_per_sec` (and its burst) is the
//! quota of the whole consumer group, not of each replica.
//!
//! With `delivery.rate_limit_scope = "group"` (the default) each replica's
//! token bucket gets the share of the quota proportional to the partitions it
//! owns, out of all partitions of the subscribed topics, recomputed on every
//! assignment and revocation. Partitions are owned by one member at a time,
//! so the shares never add up to more than the quota: during a rebalance a
//! partition is revoked from its old owner before its new owner gets it, and
//! in between neither counts it. No store outside Kafka is needed. With
//! `"replica"` every replica uses the whole rate, as a single process would.
//! `paysync replay` is a separate client with its own, separately configured
//! rate: it takes that part of the app key's quota on top of the group's.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::deliver::Limiter;
pub use crate::config::RateLimitScope;
use crate::metrics::Metrics;
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::{Quota, RateLimiter};

/// One replica's part of the quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Calls per second (fractional: shares add up to the quota exactly).
    pub per_sec: f64,
    /// Calls allowed at once above the rate (at least 1).
    pub burst: u32,
}

/// The share of `rate` and `burst` for `owned` of `total` partitions.
/// Owning nothing gets a token a second and a burst of 1: there are no
/// events to send, and a bucket cannot be empty. Owning more than is known
/// (metadata not yet seen) is owning everything known.
pub fn share(rate: u32, burst: u32, owned: usize, total: usize) -> Share {
    if owned == 0 {
        return Share {
            per_sec: 1.0,
            burst: 1,
        };
    }
    let fraction = (owned as f64) / (total.max(owned) as f64);
    Share {
        per_sec: (f64::from(rate) * fraction).max(f64::MIN_POSITIVE),
        // Rounded down so the group's bursts never exceed the configured one.
        burst: ((f64::from(burst) * fraction).floor() as u32).max(1),
    }
}

/// The longest pause between tokens: a share so small rounds up to a token a day.
const LONGEST_PERIOD: Duration = Duration::from_secs(86_400);

fn limiter(share: Share) -> Limiter {
    let period = Duration::try_from_secs_f64(1.0 / share.per_sec)
        .unwrap_or(LONGEST_PERIOD)
        .clamp(Duration::from_nanos(1), LONGEST_PERIOD);
    let quota = Quota::with_period(period)
        .expect("the period is positive")
        .allow_burst(NonZeroU32::new(share.burst).expect("the burst is at least 1"));
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}

/// The replica's token bucket, resized as its partitions change.
pub struct RateBudget {
    rate: u32,
    burst: u32,
    scope: RateLimitScope,
    state: RwLock<BudgetState>,
    /// One caller at a time waits on the bucket; the others queue here in
    /// order. governor's `until_ready` wakes every waiter for each token
    /// (all but one go back to sleep), which at a low rate with many calls
    /// waiting cost more CPU than the calls themselves.
    turn: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

struct BudgetState {
    owned: usize,
    total: usize,
    share: Share,
    limiter: Arc<Limiter>,
}

impl RateBudget {
    /// A budget for `total` partitions of the subscribed topics, none owned yet.
    pub fn new(
        rate: u32,
        burst: u32,
        scope: RateLimitScope,
        total: usize,
        metrics: Arc<Metrics>,
    ) -> RateBudget {
        let share = match scope {
            RateLimitScope::Replica => share(rate, burst, 1, 1),
            RateLimitScope::Group => share(rate, burst, 0, total),
        };
        metrics.rate_limit_share.set(share.per_sec);
        RateBudget {
            rate,
            burst,
            scope,
            state: RwLock::new(BudgetState {
                owned: 0,
                total,
                share,
                limiter: Arc::new(limiter(share)),
            }),
            turn: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// Waits for this caller's turn, then for a token of the current bucket.
    pub async fn until_ready(&self) -> StateSnapshot {
        let _turn = self.turn.lock().await;
        self.limiter().until_ready().await
    }

    /// The bucket every call takes a token from.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.read().limiter.clone()
    }

    /// The current share.
    pub fn share(&self) -> Share {
        self.read().share
    }

    /// Partitions of the subscribed topics, as last known.
    pub fn total(&self) -> usize {
        self.read().total
    }

    /// This replica now owns `owned` partitions.
    pub fn set_owned(&self, owned: usize) {
        self.update(|state| state.owned = owned);
    }

    /// The subscribed topics now have `total` partitions (they grew).
    pub fn set_total(&self, total: usize) {
        self.update(|state| state.total = total);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BudgetState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut BudgetState)) {
        if self.scope == RateLimitScope::Replica {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        let share = share(self.rate, self.burst, state.owned, state.total);
        if share != state.share {
            tracing::info!(
                owned = state.owned,
                total = state.total,
                calls_per_sec = share.per_sec,
                burst = share.burst,
                "Rate budget: this replica's share of the group's quota changed."
            );
            state.share = share;
            state.limiter = Arc::new(limiter(share));
            self.metrics.rate_limit_share.set(share.per_sec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_group_add_up_to_the_quota() {
        // 7 partitions over 3 replicas: 2, 2, 3.
        let shares: Vec<Share> = [2, 2, 3].iter().map(|o| share(150, 30, *o, 7)).collect();
        let total: f64 = shares.iter().map(|s| s.per_sec).sum();
        assert!((total - 150.0).abs() < 1e-9, "{total}");
        let bursts: u32 = shares.iter().map(|s| s.burst).sum();
        assert!(bursts <= 30, "bursts are rounded down: {bursts}");
        assert_eq!(shares[2].burst, 12, "floor(30 · 3/7)");
    }

    #[test]
    fn topics_with_different_partition_counts_count_partitions_not_topics() {
        // A 6-partition topic and a 2-partition topic: owning all of the
        // small one is a quarter of the quota.
        let s = share(100, 100, 2, 8);
        assert!((s.per_sec - 25.0).abs() < 1e-9);
        assert_eq!(s.burst, 25);
    }

    #[test]
    fn nothing_owned_or_known_gets_a_minimal_bucket() {
        for (owned, total) in [(0, 6), (0, 0)] {
            let s = share(100, 100, owned, total);
            assert_eq!((s.per_sec, s.burst), (1.0, 1), "{owned}/{total}");
        }
        // A zero rate (refused by validation) still makes a usable bucket.
        let zero = RateBudget::new(0, 0, RateLimitScope::Group, 2, Arc::new(Metrics::new()));
        zero.set_owned(1);
        assert_eq!(zero.share().burst, 1);
    }

    #[test]
    fn a_tiny_share_still_has_a_token_of_burst() {
        let s = share(10, 5, 1, 1_000);
        assert!((s.per_sec - 0.01).abs() < 1e-12);
        assert_eq!(s.burst, 1);
    }

    #[test]
    fn owning_more_than_known_is_the_whole_quota() {
        assert_eq!(share(100, 50, 9, 6).per_sec, 100.0);
        assert_eq!(share(100, 50, 3, 0).per_sec, 100.0, "no metadata yet");
    }

    #[test]
    fn the_budget_follows_assignments_and_the_replica_scope_ignores_them() {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::new(120, 60, RateLimitScope::Group, 6, metrics.clone());
        assert_eq!(budget.share().per_sec, 1.0);
        budget.set_owned(2);
        assert!((budget.share().per_sec - 40.0).abs() < 1e-9);
        assert!((metrics.rate_limit_share.get() - 40.0).abs() < 1e-9);
        budget.set_owned(3);
        assert!((budget.share().per_sec - 60.0).abs() < 1e-9);
        budget.set_total(12);
        assert!((budget.share().per_sec - 30.0).abs() < 1e-9);

        let replica = RateBudget::new(120, 60, RateLimitScope::Replica, 6, metrics);
        replica.set_owned(1);
        assert_eq!(replica.share().per_sec, 120.0);
        assert_eq!(replica.share().burst, 60);
    }

    /// Real time: the limiter has its own clock.
    #[tokio::test]
    async fn the_limiter_admits_the_share() {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::new(100, 1, RateLimitScope::Group, 4, metrics);
        budget.set_owned(1);
        let limiter = budget.limiter();
        let started = std::time::Instant::now();
        for _ in 0..26 {
            limiter.until_ready().await;
        }
        // 25 calls/s with a burst of 1: 26 tokens take about 1 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
    }
}
