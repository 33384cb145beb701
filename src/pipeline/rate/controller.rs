//! The adaptive rate controller (`delivery.rate_limit_mode = "adaptive"`):
//! finds the gateway's quota when nobody knows it, and holds just below it.
//! Pure: time comes in as arguments, so the simulation suite drives it with
//! a simulated gateway and clock. `docs/adaptive-rate.md` gives the reasoning.
//!
//! Everything here is in *group units*: the calls per second of the whole
//! consumer group. Each replica scales its own accepted calls up by its
//! share and its rate down by it, and every replica sees the same bans (the
//! quota is the app key's), so replicas that never talk to each other take
//! the same decisions and their rates add up to the group's.
//!
//! The only signal the gateway gives is the ban (code 7, or the legacy
//! flow-control codes): its token bucket says nothing until it is empty.
//! So the controller
//! * **estimates** the quota at each ban from the calls the gateway accepted
//!   since the last ban ended: with a bucket that holds about one second of
//!   its rate ([`GATEWAY_BUCKET`]) and ran empty now, the quota is the
//!   largest `accepted(s..now) / (now - s + 1 s)` over start points `s`; an
//!   overshoot of the rate does not bias it, as the rate at the ban would;
//! * **cruises** at [`CRUISE_FRACTION`] of that estimate, so a right
//!   estimate never bans again by itself;
//! * **probes** upward after a quiet interval (the quota may have grown, or
//!   a caller sharing the app key left), doubling every [`PROBE_DOUBLING`],
//!   until the next ban measures the quota again. Each probe costs one ban,
//!   so probes that confirm the same quota come less and less often (the
//!   interval doubles up to its maximum), and any other answer starts them
//!   over at the minimum.
//!
//! A cold start has no estimate: it probes from the floor.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The gateway bucket's assumed depth, in seconds of its rate: TOP's quotas
/// are per second (docs/top-protocol.md §5.1). A shallower bucket makes the
/// estimate low (safe: fewer bans, less of the quota used), a deeper one high
/// (the next ban measures a longer window and corrects it).
const GATEWAY_BUCKET: Duration = Duration::from_secs(1);
/// The cruise rate, as a fraction of the estimated quota.
pub const CRUISE_FRACTION: f64 = 0.97;
/// A probe doubles the rate every this long.
const PROBE_DOUBLING: Duration = Duration::from_secs(2);
/// The estimate is never below this fraction of the rate sent when the ban
/// came (multiplicative decrease, as in AIMD): a bucket far shallower than
/// [`GATEWAY_BUCKET`] cannot drag the rate down to nothing.
const DECREASE_FLOOR: f64 = 0.5;
/// How far back accepted calls are counted for an estimate.
const HISTORY: Duration = Duration::from_secs(30);
/// Accepted calls are counted in bins this long.
const BIN: Duration = Duration::from_millis(100);
/// Code-7 answers within this long after a ban ends belong to the same ban
/// (calls sent before it was known).
pub const SAME_BAN: Duration = Duration::from_secs(1);
/// A probe that finds the quota within this fraction of the last estimate
/// confirms it.
const CONFIRMS: f64 = 0.1;
/// The rate only grows while the group uses at least this much of it (a
/// rate nobody needs proves nothing about the quota).
const UTILISED: f64 = 0.8;

/// The controller's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerSettings {
    /// Calls per second the group may never exceed.
    pub ceiling: f64,
    /// Calls per second the group never goes below, and starts from.
    pub floor: f64,
    /// The first quiet interval before a probe.
    pub probe_interval_min: Duration,
    /// The longest quiet interval between probes that confirm the quota.
    pub probe_interval_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Growing until a ban (or the ceiling).
    Probing,
    /// Holding; probing again at `probe_at`.
    Cruising { probe_at: Instant },
}

/// One replica's controller (see the module doc).
#[derive(Debug)]
pub struct RateController {
    settings: ControllerSettings,
    rate: f64,
    estimate: Option<f64>,
    phase: Phase,
    banned_until: Option<Instant>,
    /// When the last ban ended: the gateway's bucket was full again then.
    last_ban_end: Option<Instant>,
    probe_interval: Duration,
    /// Accepted calls (group units) per [`BIN`], oldest first.
    accepted: VecDeque<(Instant, f64)>,
    last_tick: Instant,
    bans: u64,
}

impl RateController {
    pub fn new(settings: ControllerSettings, now: Instant) -> RateController {
        let floor = settings.floor.clamp(f64::MIN_POSITIVE, settings.ceiling);
        RateController {
            settings: ControllerSettings { floor, ..settings },
            rate: floor,
            estimate: None,
            phase: Phase::Probing,
            banned_until: None,
            last_ban_end: None,
            probe_interval: settings.probe_interval_min,
            accepted: VecDeque::new(),
            last_tick: now,
            bans: 0,
        }
    }

    /// The group's rate now, in calls per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The quota the last ban measured, if one did.
    pub fn estimate(&self) -> Option<f64> {
        self.estimate
    }

    /// Starts from a quota another caller on the app key measured: cruises
    /// below it and probes only after the longest interval (the quota is
    /// known; every probe would cost every caller a ban).
    pub fn adopt(&mut self, now: Instant, learned: f64) {
        let estimate = learned.clamp(self.settings.floor, self.settings.ceiling);
        self.estimate = Some(estimate);
        self.rate = (CRUISE_FRACTION * estimate).max(self.settings.floor);
        self.probe_interval = self.settings.probe_interval_max;
        self.phase = Phase::Cruising {
            probe_at: now + self.probe_interval,
        };
    }

    /// The gateway accepted `calls` (in group units) at `now`.
    pub fn accepted(&mut self, now: Instant, calls: f64) {
        match self.accepted.back_mut() {
            Some((start, count)) if now.saturating_duration_since(*start) < BIN => {
                *count += calls;
            }
            _ => self.accepted.push_back((now, calls)),
        }
        while let Some((start, _)) = self.accepted.front() {
            if now.saturating_duration_since(*start) <= HISTORY {
                break;
            }
            self.accepted.pop_front();
        }
    }

    /// A call met a ban that lasts `wait` more. Returns whether this is a new
    /// ban (the first answer of it), which the controller reacted to.
    pub fn banned(&mut self, now: Instant, wait: Duration) -> bool {
        let until = now + wait;
        if let Some(current) = self.banned_until
            && now < current + SAME_BAN
        {
            self.banned_until = Some(current.max(until));
            self.last_ban_end = self.banned_until;
            return false;
        }
        let previous = self.estimate;
        let probing = self.phase == Phase::Probing;
        let estimate = self
            .measured_quota(now)
            .max(DECREASE_FLOOR * self.recent_rate(now))
            .clamp(self.settings.floor, self.settings.ceiling);
        let confirmed = probing && previous.is_some_and(|p| (estimate - p).abs() <= CONFIRMS * p);
        self.probe_interval = if confirmed {
            (self.probe_interval * 2).min(self.settings.probe_interval_max)
        } else {
            self.settings.probe_interval_min
        };
        self.estimate = Some(estimate);
        self.rate = (CRUISE_FRACTION * estimate).max(self.settings.floor);
        self.banned_until = Some(until);
        self.last_ban_end = Some(until);
        self.phase = Phase::Cruising {
            probe_at: until + self.probe_interval,
        };
        self.bans += 1;
        true
    }

    /// Moves the controller on to `now` and returns the group's rate.
    pub fn tick(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if self.banned_until.is_some_and(|until| now < until) {
            return self.rate;
        }
        let utilised = self.recent_rate(now) >= UTILISED * self.rate;
        match self.phase {
            Phase::Cruising { probe_at } if now >= probe_at && utilised => {
                self.phase = Phase::Probing;
            }
            Phase::Cruising { .. } => {}
            Phase::Probing if utilised => {
                let doublings = elapsed.as_secs_f64() / PROBE_DOUBLING.as_secs_f64();
                self.rate = (self.rate * doublings.exp2()).min(self.settings.ceiling);
                if self.rate >= self.settings.ceiling {
                    // Nothing above the ceiling to find.
                    self.phase = Phase::Cruising {
                        probe_at: now + self.settings.probe_interval_max,
                    };
                }
            }
            Phase::Probing => {}
        }
        self.rate
    }

    /// The quota the calls accepted since the bucket was last full say:
    /// the largest `accepted(s..now) / (now - s + GATEWAY_BUCKET)`.
    fn measured_quota(&self, now: Instant) -> f64 {
        let mut accepted = 0.0;
        let mut best: f64 = 0.0;
        for (start, count) in self.accepted.iter().rev() {
            if self.last_ban_end.is_some_and(|end| *start < end) {
                break;
            }
            accepted += count;
            let span = now.saturating_duration_since(*start) + GATEWAY_BUCKET;
            best = best.max(accepted / span.as_secs_f64());
        }
        best
    }

    /// Calls accepted over the last second, per second.
    fn recent_rate(&self, now: Instant) -> f64 {
        self.accepted
            .iter()
            .rev()
            .take_while(|(start, _)| now.saturating_duration_since(*start) < Duration::from_secs(1))
            .map(|(_, count)| count)
            .sum()
    }
}
