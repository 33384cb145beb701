//! How the app key's rate is split between the callers that share it:
//! weighted max-min fairness (water-filling). A caller that needs less than
//! its weight's share gets what it needs; what it leaves is split between
//! the others by weight, again and again, so nothing is left idle while
//! someone wants it (work-conserving) and the shares never add up to more
//! than the rate. Pure, so every caller computes the same split from the
//! same announcements.
//!
//! Callers see announcements at slightly different moments, so a share
//! that grows only takes effect once every caller has seen the change that
//! grew it ([`Settled`]); a share that shrinks takes effect at once. While
//! announcements travel, the shares add up to less than the rate, never more.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One caller's claim on the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    pub weight: f64,
    /// Calls per second it would use; `f64::INFINITY`: all it can get.
    pub demand: f64,
}

/// The calls per second each claim gets out of `rate`, in the claims' order.
pub fn allocate(rate: f64, claims: &[Claim]) -> Vec<f64> {
    let mut shares = vec![0.0; claims.len()];
    let mut open: Vec<usize> = (0..claims.len())
        .filter(|&i| claims[i].weight > 0.0 && claims[i].demand > 0.0)
        .collect();
    let mut left = rate.max(0.0);
    // Each round either satisfies at least one claim or splits what is left.
    while !open.is_empty() && left > 1e-9 {
        let weights: f64 = open.iter().map(|&i| claims[i].weight).sum();
        let per_weight = left / weights;
        let satisfied: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| claims[i].demand - shares[i] <= per_weight * claims[i].weight)
            .collect();
        if satisfied.is_empty() {
            for &i in &open {
                shares[i] += per_weight * claims[i].weight;
            }
            break;
        }
        for &i in &satisfied {
            left -= claims[i].demand - shares[i];
            shares[i] = claims[i].demand;
        }
        open.retain(|i| !satisfied.contains(i));
    }
    shares
}

/// A share that shrinks at once and grows only after `settle`: the least
/// value set within the last `settle`.
#[derive(Debug)]
pub struct Settled {
    settle: Duration,
    /// Values set, oldest first; only the current one and those set less
    /// than `settle` ago are kept.
    history: VecDeque<(Instant, f64)>,
}

impl Settled {
    pub fn new(settle: Duration, initial: f64, now: Instant) -> Settled {
        Settled {
            settle,
            history: VecDeque::from([(now, initial)]),
        }
    }

    /// Sets the value at `now`; returns the value in force.
    pub fn set(&mut self, now: Instant, value: f64) -> f64 {
        if self.history.back().is_none_or(|(_, last)| *last != value) {
            self.history.push_back((now, value));
        }
        self.value(now)
    }

    /// The value in force at `now`.
    pub fn value(&mut self, now: Instant) -> f64 {
        while self.history.len() > 1
            && now.saturating_duration_since(self.history[1].0) >= self.settle
        {
            self.history.pop_front();
        }
        self.history
            .iter()
            .map(|(_, value)| *value)
            .fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(weight: f64, demand: f64) -> Claim {
        Claim { weight, demand }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn a_backfill_gets_what_the_live_group_leaves() {
        // Live group needs 200 of 300; the backfill wants everything.
        let shares = allocate(300.0, &[claim(9.0, 200.0), claim(1.0, f64::INFINITY)]);
        assert!(close(&shares, &[200.0, 100.0]), "{shares:?}");
        // Live group idle: the backfill gets the whole rate.
        let shares = allocate(300.0, &[claim(9.0, 0.0), claim(1.0, f64::INFINITY)]);
        assert!(close(&shares, &[0.0, 300.0]), "{shares:?}");
        // Both saturated: by weight.
        let shares = allocate(
            300.0,
            &[claim(9.0, f64::INFINITY), claim(1.0, f64::INFINITY)],
        );
        assert!(close(&shares, &[270.0, 30.0]), "{shares:?}");
    }

    #[test]
    fn what_a_satisfied_claim_leaves_is_split_again_by_weight() {
        let shares = allocate(
            100.0,
            &[claim(1.0, 10.0), claim(1.0, f64::INFINITY), claim(3.0, 1e9)],
        );
        assert!(close(&shares, &[10.0, 22.5, 67.5]), "{shares:?}");
    }

    #[test]
    fn shares_never_exceed_the_rate_nor_any_demand() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / f64::from(1u32 << 31)
        };
        for _ in 0..2_000 {
            let rate = 1.0 + next() * 1_000.0;
            let claims: Vec<Claim> = (0..1 + (next() * 6.0) as usize)
                .map(|_| {
                    let demand = if next() < 0.3 {
                        f64::INFINITY
                    } else {
                        next() * 600.0
                    };
                    claim(1.0 + (next() * 9.0).floor(), demand)
                })
                .collect();
            let shares = allocate(rate, &claims);
            let total: f64 = shares.iter().sum();
            assert!(total <= rate + 1e-6, "{total} > {rate}");
            for (share, claim) in shares.iter().zip(&claims) {
                assert!(*share <= claim.demand + 1e-6);
            }
            let demanded: f64 = claims.iter().map(|c| c.demand).sum();
            // Work-conserving: the rate is used up unless every demand is met.
            assert!(
                (total - rate.min(demanded)).abs() < 1e-6,
                "{total} of {rate}, demanded {demanded}"
            );
        }
    }

    #[test]
    fn a_share_shrinks_at_once_and_grows_after_settling() {
        let t0 = Instant::now();
        let settle = Duration::from_secs(2);
        let mut share = Settled::new(settle, 100.0, t0);
        assert_eq!(share.set(t0 + Duration::from_secs(1), 40.0), 40.0);
        assert_eq!(share.set(t0 + Duration::from_secs(2), 90.0), 40.0);
        assert_eq!(share.value(t0 + Duration::from_millis(3_900)), 40.0);
        assert_eq!(share.value(t0 + Duration::from_secs(4)), 90.0);
    }
}
