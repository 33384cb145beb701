//! The adaptive controller against a simulated gateway, in simulated time:
//! a token bucket per app key that bans for a fixed time when it runs empty
//! (as the emulator's flow control and TOP's `accesscontrol` do), replicas
//! that each pace their share of the group's rate, and scenarios that assert
//! a band for the quota the group used and the bans it drew, like Vector's
//! adaptive-concurrency simulations do for concurrency.

use std::time::{Duration, Instant};

use super::controller::{ControllerSettings, RateController};

const STEP: Duration = Duration::from_millis(10);

/// The gateway's flow control for one app key.
struct Bucket {
    quota: f64,
    /// Depth in seconds of the quota.
    depth: f64,
    ban: Duration,
    tokens: f64,
    refilled: f64,
    banned_until: Option<f64>,
    bans: u32,
}

impl Bucket {
    fn new(quota: f64, depth: f64, ban: Duration) -> Bucket {
        Bucket {
            quota,
            depth,
            ban,
            tokens: quota * depth,
            refilled: 0.0,
            banned_until: None,
            bans: 0,
        }
    }

    /// One call at `t` seconds: accepted, or the ban's remaining time.
    fn call(&mut self, t: f64) -> Result<(), Duration> {
        if let Some(until) = self.banned_until {
            if t < until {
                return Err(Duration::from_secs_f64(until - t));
            }
            self.banned_until = None;
            self.tokens = self.quota * self.depth;
            self.refilled = t;
        }
        self.tokens = (self.tokens + (t - self.refilled) * self.quota).min(self.quota * self.depth);
        self.refilled = t;
        if self.tokens < 1.0 {
            self.banned_until = Some(t + self.ban.as_secs_f64());
            self.bans += 1;
            return Err(self.ban);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// One replica: its controller, its pacing and its view of the ban.
struct Replica {
    controller: RateController,
    /// Its share of the group's partitions.
    fraction: f64,
    credit: f64,
    waiting_until: f64,
}

/// What a phase of a scenario measured.
#[derive(Debug, Clone, Copy)]
struct PhaseResult {
    quota: f64,
    /// Accepted calls per second over the phase's second half, as a fraction of its quota.
    used: f64,
    bans: u32,
}

/// A scenario: the quota per phase, the bucket's depth and ban, the
/// replicas' shares, and another caller of the same app key per phase.
struct Scenario {
    phases: Vec<(f64, Duration)>,
    depth: f64,
    ban: Duration,
    fractions: Vec<f64>,
    other_caller: Vec<f64>,
    /// One extra ban of this length at this time (a spent daily quota).
    long_ban: Option<(f64, Duration)>,
}

impl Scenario {
    fn new(phases: &[(f64, u64)]) -> Scenario {
        Scenario {
            phases: phases
                .iter()
                .map(|(q, s)| (*q, Duration::from_secs(*s)))
                .collect(),
            depth: 1.0,
            ban: Duration::from_secs(2),
            fractions: vec![1.0 / 3.0; 3],
            other_caller: vec![0.0; phases.len()],
            long_ban: None,
        }
    }

    fn run(&self) -> Vec<PhaseResult> {
        let origin = Instant::now();
        let settings = ControllerSettings {
            ceiling: 600.0,
            floor: 30.0,
            probe_interval_min: Duration::from_secs(15),
            probe_interval_max: Duration::from_secs(240),
        };
        let mut replicas: Vec<Replica> = self
            .fractions
            .iter()
            .map(|fraction| Replica {
                controller: RateController::new(settings, origin),
                fraction: *fraction,
                credit: 0.0,
                waiting_until: 0.0,
            })
            .collect();
        let mut bucket = Bucket::new(self.phases[0].0, self.depth, self.ban);
        let mut other_credit = 0.0;
        let mut t = 0.0;
        let mut results = Vec::new();
        for (index, (quota, length)) in self.phases.iter().enumerate() {
            bucket.quota = *quota;
            let start = t;
            let end = t + length.as_secs_f64();
            let bans_before = bucket.bans;
            let mut accepted_second_half = 0u64;
            while t < end {
                let now = origin + Duration::from_secs_f64(t);
                if let Some((at, ban)) = self.long_ban
                    && t >= at
                    && t < at + STEP.as_secs_f64()
                {
                    bucket.banned_until = Some(t + ban.as_secs_f64());
                    bucket.bans += 1;
                }
                other_credit += self.other_caller[index] * STEP.as_secs_f64();
                while other_credit >= 1.0 {
                    other_credit -= 1.0;
                    let _ = bucket.call(t);
                }
                for replica in &mut replicas {
                    let rate = replica.controller.tick(now) * replica.fraction;
                    if t < replica.waiting_until {
                        continue;
                    }
                    // A token bucket with a burst of a tenth of a second.
                    replica.credit =
                        (replica.credit + rate * STEP.as_secs_f64()).min((rate / 10.0).max(1.0));
                    while replica.credit >= 1.0 {
                        replica.credit -= 1.0;
                        match bucket.call(t) {
                            Ok(()) => {
                                replica.controller.accepted(now, 1.0 / replica.fraction);
                                if t >= (start + end) / 2.0 {
                                    accepted_second_half += 1;
                                }
                            }
                            Err(wait) => {
                                replica.controller.banned(now, wait);
                                replica.waiting_until = t + wait.as_secs_f64();
                                replica.credit = 0.0;
                                break;
                            }
                        }
                    }
                }
                t += STEP.as_secs_f64();
            }
            let half = (end - start) / 2.0;
            results.push(PhaseResult {
                quota: *quota - self.other_caller[index],
                used: accepted_second_half as f64 / half / (*quota - self.other_caller[index]),
                bans: bucket.bans - bans_before,
            });
        }
        println!("{results:?}");
        results
    }
}

fn assert_band(result: PhaseResult, used: std::ops::RangeInclusive<f64>, max_bans: u32) {
    assert!(
        used.contains(&result.used),
        "used {:.3} of the quota {}, wanted {used:?}",
        result.used,
        result.quota
    );
    assert!(
        result.bans <= max_bans,
        "{} bans at quota {}, wanted at most {max_bans}",
        result.bans,
        result.quota
    );
}

#[test]
fn a_steady_quota_is_found_from_a_cold_start_and_held_with_rare_bans() {
    let results = Scenario::new(&[(300.0, 40), (300.0, 120), (300.0, 240)]).run();
    assert_band(results[0], 0.9..=1.02, 3);
    // Probes that confirm the quota come less and less often.
    assert_band(results[1], 0.93..=1.02, 4);
    assert_band(results[2], 0.95..=1.02, 2);
}

#[test]
fn a_quota_halved_then_grown_threefold_is_followed_within_each_phase() {
    let results = Scenario::new(&[(300.0, 40), (150.0, 40), (450.0, 40)]).run();
    for result in results {
        assert_band(result, 0.9..=1.02, 3);
    }
}

#[test]
fn a_doubled_quota_is_found_by_the_next_probe() {
    let results = Scenario::new(&[(150.0, 60), (300.0, 60)]).run();
    assert_band(results[0], 0.9..=1.02, 4);
    assert_band(results[1], 0.9..=1.02, 4);
}

#[test]
fn replicas_with_unequal_shares_hold_the_group_quota_together() {
    let mut scenario = Scenario::new(&[(300.0, 40), (300.0, 60)]);
    scenario.fractions = vec![0.5, 1.0 / 3.0, 1.0 / 6.0];
    let results = scenario.run();
    assert_band(results[1], 0.9..=1.02, 3);
}

#[test]
fn a_caller_sharing_the_app_key_takes_its_part_and_the_group_yields_it() {
    let mut scenario = Scenario::new(&[(300.0, 40), (300.0, 60)]);
    // Another service on the same app key starts calling at 100/s.
    scenario.other_caller = vec![0.0, 100.0];
    let results = scenario.run();
    assert_band(results[1], 0.88..=1.02, 4);
}

#[test]
fn a_long_ban_is_waited_out_and_the_rate_comes_back() {
    let mut scenario = Scenario::new(&[(300.0, 40), (300.0, 60), (300.0, 40)]);
    // A spent daily quota: 60 s of ban from 50 s on.
    scenario.long_ban = Some((50.0, Duration::from_secs(60)));
    let results = scenario.run();
    assert_eq!(results[1].used, 0.0, "nothing is accepted during the ban");
    assert_band(results[2], 0.9..=1.02, 3);
}

#[test]
fn a_shallow_gateway_bucket_costs_quota_but_not_bans() {
    // A bucket of a tenth of a second: the estimate is low, so the group uses
    // less of the quota (docs/adaptive-rate.md), but it does not ban more.
    let mut scenario = Scenario::new(&[(300.0, 40), (300.0, 120)]);
    scenario.depth = 0.1;
    let results = scenario.run();
    assert_band(results[1], 0.55..=1.02, 3);
}
