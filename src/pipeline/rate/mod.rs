//! The rate budget: `delivery.rate_limit_per_sec` (and its burst) is the
//! quota of the whole consumer group, not of each replica.
//!
//! With `delivery.rate_limit_scope = "group"` (the default) each replica's
//! token bucket gets the share of the group's rate proportional to the
//! partitions it owns, out of all partitions of the subscribed topics.
//! Ownership is recomputed on every assignment and revocation; the
//! partition counts come from topic metadata, read then and every
//! `kafka.metadata_refresh_interval_ms` ([`topics`] keeps the shares within
//! the quota while a topic grows). Partitions are owned by one member at a
//! time, so the shares never add up to more than the quota: during a
//! rebalance a partition is revoked from its old owner before its new owner
//! gets it, and in between neither counts it. No store outside Kafka is
//! needed. With `"replica"` every replica uses the whole rate, as a single
//! process would. `paysync replay` is a separate client with its own,
//! separately configured rate: it takes that part of the app key's quota on
//! top of the group's.
//!
//! With `delivery.rate_limit_mode = "adaptive"` the group's rate is not the
//! configured one but what the [`controller`] finds the gateway allows,
//! between `delivery.rate_limit_min_per_sec` and the configured rate.
//!
//! With the control topic on, the group's rate is also shared with the
//! replays, redrives and reconciliations running on the same app key: each
//! caller's [`tenancy`] announces what it needs and takes its part of the
//! rate (a live replica: its partitions' share of the live group's part).
//!
//! A bucket that is resized starts with one token, not a full burst: a
//! rebalance (or an adaptive step) never adds a burst above the rate.
//!
//! Who takes the next token is decided fairly between car parks
//! ([`super::fair`]).

pub mod controller;
mod shared;
#[cfg(test)]
mod simulation;
pub mod tenancy;
pub mod topics;

pub use shared::SharedRate;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

use super::fair::{FairQueue, ParkPolicy};

use crate::config::DeliverySettings;
pub use crate::config::{RateLimitMode, RateLimitScope};
use crate::kafka;
use crate::metrics::Metrics;
use crate::partition::PartitionId;
use crate::top::classify::{Disposition, RetryCause};
use controller::{ControllerSettings, RateController};
use rdkafka::consumer::{Consumer, ConsumerContext};
use topics::PartitionCounts;

/// The token bucket in front of every call.
pub type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A flow-control answer without a readable ban is taken as a ban this long
/// by the adaptive controller.
const UNANNOUNCED_BAN: Duration = Duration::from_secs(1);
/// An adaptive rate that moved less than this fraction keeps its bucket.
const RESIZE_STEP: f64 = 0.01;

/// One replica's part of the quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Calls per second (fractional: shares add up to the quota exactly).
    pub per_sec: f64,
    /// Calls allowed at once above the rate (at least 1).
    pub burst: u32,
}

/// The share of the group's `rate` and `burst` for a `fraction` of its
/// partitions. Owning nothing (or nothing countable yet) gets
/// [`IDLE_RATE`] and a burst of 1: there are no events to send (or they
/// wait a few seconds for the count to settle), and a bucket cannot be empty.
pub fn share(rate: f64, burst: f64, fraction: Option<f64>) -> Share {
    match fraction {
        Some(fraction) if fraction > 0.0 => Share {
            per_sec: (rate * fraction.min(1.0)).max(f64::MIN_POSITIVE),
            // Rounded down so the group's bursts never exceed the configured one.
            burst: ((burst * fraction.min(1.0)).floor() as u32).max(1),
        },
        _ => Share {
            per_sec: IDLE_RATE,
            burst: 1,
        },
    }
}

/// The rate of a replica that owns nothing it may count: a call every 10 s.
pub const IDLE_RATE: f64 = 0.1;

/// The longest pause between tokens: a share so small rounds up to a token a day.
const LONGEST_PERIOD: Duration = Duration::from_secs(86_400);

/// A bucket for `share`, holding one token: resizing never adds a burst.
fn limiter(share: Share) -> Limiter {
    let period = Duration::try_from_secs_f64(1.0 / share.per_sec)
        .unwrap_or(LONGEST_PERIOD)
        .clamp(Duration::from_nanos(1), LONGEST_PERIOD);
    let quota = Quota::with_period(period)
        .expect("the period is positive")
        .allow_burst(NonZeroU32::new(share.burst).expect("the burst is at least 1"));
    let limiter = RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>();
    if let Some(spent) = NonZeroU32::new(share.burst - 1) {
        // A fresh bucket is full; a burst is earned at the rate, never given.
        let _ = limiter.check_n(spent);
    }
    limiter
}

/// What the budget is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// The group's rate (`fixed`), or the ceiling it may reach (`adaptive`).
    pub rate: u32,
    pub burst: u32,
    pub scope: RateLimitScope,
    pub mode: RateLimitMode,
    /// The adaptive floor.
    pub min_rate: u32,
    pub probe_interval_min: Duration,
    pub probe_interval_max: Duration,
    /// How long a change of partition count takes to reach every replica
    /// (two metadata refreshes).
    pub settle: Duration,
}

impl RateSettings {
    /// From `[delivery]`, with partition counts refreshed every `refresh`.
    pub fn of(delivery: &DeliverySettings, scope: RateLimitScope, refresh: Duration) -> Self {
        RateSettings {
            rate: delivery.rate_limit_per_sec,
            burst: delivery.burst(),
            scope,
            mode: delivery.rate_limit_mode,
            min_rate: delivery.min_rate(),
            probe_interval_min: delivery.rate_probe_interval_ms,
            probe_interval_max: delivery.rate_probe_interval_max_ms,
            settle: refresh * 2,
        }
    }
}

/// The replica's token bucket, resized as its partitions (and, in adaptive
/// mode, the group's rate) change.
pub struct RateBudget {
    state: Mutex<BudgetState>,
    /// Wakes the caller waiting on a bucket that was just replaced.
    resized: Notify,
    /// One caller at a time waits on the bucket; the others queue here,
    /// fairly between parks. governor's `until_ready` wakes every waiter
    /// for each token (all but one go back to sleep), which at a low rate
    /// with many calls waiting cost more CPU than the calls themselves.
    turn: FairQueue,
    metrics: Arc<Metrics>,
}

struct BudgetState {
    settings: RateSettings,
    owned: Vec<PartitionId>,
    counts: PartitionCounts,
    controller: Option<RateController>,
    /// The end of the latest ban, to tell a new ban from answers to the same one.
    ban_until: Option<Instant>,
    /// This replica's part of the partitions (1 for a caller outside the group).
    fraction: Option<f64>,
    /// The part of the group's rate this caller's kind holds among the
    /// callers on the app key (1 without the control topic).
    tenancy: f64,
    /// Adaptive, outside the group: the live group's rate, followed instead
    /// of this caller's own controller while live replicas announce one.
    followed: Option<f64>,
    /// When `followed` last changed, and when the latest new ban came: a ban
    /// newer than the followed rate is met with this caller's own controller
    /// until the live group's lowered rate arrives.
    followed_at: Instant,
    banned_at: Option<Instant>,
    /// The part of the group's rate the live group would get if it needed
    /// all it could (its weight's share beside busy backfills): what the
    /// drain time divides by, so a backfill does not look like live backlog.
    entitled: f64,
    /// The ownership last logged.
    logged: (usize, Option<f64>),
    group_rate: f64,
    share: Share,
    limiter: Arc<Limiter>,
    /// Tokens taken since `usage_since`, for the headroom gauge.
    calls: u64,
    usage_since: Instant,
    /// What the caller used and whether calls waited, since the last
    /// [`RateBudget::take_usage`].
    usage: UsageCount,
}

#[derive(Debug, Clone, Copy)]
struct UsageCount {
    since: Instant,
    calls: u64,
    ticks: u32,
    backlogged_ticks: u32,
}

impl UsageCount {
    fn new(now: Instant) -> UsageCount {
        UsageCount {
            since: now,
            calls: 0,
            ticks: 0,
            backlogged_ticks: 0,
        }
    }
}

/// What a caller used of its share since it last asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub calls_per_sec: f64,
    /// Calls waited for a token most of the time: it would use more.
    pub backlogged: bool,
}

/// How long calls are counted for one reading of the headroom.
const USAGE_WINDOW: Duration = Duration::from_secs(5);

impl RateBudget {
    /// A budget owning nothing yet, with no partition counts known.
    pub fn new(
        settings: RateSettings,
        metrics: Arc<Metrics>,
        parks: Arc<ParkPolicy>,
    ) -> RateBudget {
        let now = Instant::now();
        let controller = new_controller(&settings, now);
        let fraction = (settings.scope == RateLimitScope::Replica).then_some(1.0);
        let group_rate = controller
            .as_ref()
            .map_or(f64::from(settings.rate), RateController::rate);
        let share = share(group_rate, f64::from(settings.burst), fraction);
        let budget = RateBudget {
            state: Mutex::new(BudgetState {
                settings,
                owned: Vec::new(),
                counts: PartitionCounts::new(settings.settle),
                controller,
                ban_until: None,
                fraction,
                tenancy: 1.0,
                followed: None,
                followed_at: now,
                banned_at: None,
                entitled: 1.0,
                logged: (0, fraction),
                group_rate,
                share,
                limiter: Arc::new(limiter(share)),
                calls: 0,
                usage_since: now,
                usage: UsageCount::new(now),
            }),
            resized: Notify::new(),
            turn: FairQueue::new(1, parks, true),
            metrics,
        };
        budget.publish(&budget.lock());
        budget
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this caller's turn (fair between parks: `park` is the
    /// call's), then for a token of the current bucket (moving to a new
    /// bucket if it is replaced meanwhile).
    pub async fn until_ready(&self, park: &Arc<str>) -> StateSnapshot {
        let _turn = self.turn.acquire(park).await;
        loop {
            let resized = self.resized.notified();
            tokio::pin!(resized);
            resized.as_mut().enable();
            let limiter = self.limiter();
            tokio::select! {
                snapshot = limiter.until_ready() => {
                    let mut state = self.lock();
                    state.calls += 1;
                    state.usage.calls += 1;
                    return snapshot;
                }
                _ = resized => {}
            }
        }
    }

    /// The bucket every call takes a token from.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.lock().limiter.clone()
    }

    /// The current share.
    pub fn share(&self) -> Share {
        self.lock().share
    }

    /// This replica now owns `owned`.
    pub fn set_owned(&self, owned: impl IntoIterator<Item = PartitionId>) {
        let mut state = self.lock();
        state.owned = owned.into_iter().collect();
        self.reshare(&mut state, Instant::now());
    }

    /// Topic metadata says the subscribed topics have these partition counts.
    pub fn observe_counts<'a>(&self, counts: impl IntoIterator<Item = (&'a str, usize)>) {
        let now = Instant::now();
        let mut state = self.lock();
        for (topic, count) in counts {
            if state.counts.observe(now, topic, count) {
                tracing::info!(
                    topic,
                    partitions = count,
                    "Partition count of a subscribed topic seen."
                );
            }
        }
        self.reshare(&mut state, now);
    }

    /// Reads the partition counts of `topics` from metadata. Blocks on the brokers.
    pub fn refresh_counts<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        topics: &[String],
    ) {
        match kafka::queries::partition_counts(consumer, topics) {
            Ok(counts) => {
                self.observe_counts(counts.iter().map(|(topic, count)| (topic.as_str(), *count)))
            }
            Err(error) => {
                tracing::debug!(error = %error, "Reading partition counts failed; the last ones stand.");
            }
        }
    }

    /// A call was answered: the adaptive controller learns from it, and a
    /// new ban is counted.
    pub fn answered(&self, disposition: &Disposition) {
        let now = Instant::now();
        let ban = match disposition {
            Disposition::Retry {
                cause: RetryCause::Throttled,
                wait,
            } => Some(wait.unwrap_or(UNANNOUNCED_BAN)),
            // No answer from the gateway: it said nothing about the quota.
            Disposition::Retry {
                cause:
                    RetryCause::Timeout
                    | RetryCause::Connect
                    | RetryCause::Transport
                    | RetryCause::HttpStatus
                    | RetryCause::UnreadableBody,
                ..
            } => return,
            _ => None,
        };
        let mut state = self.lock();
        let fraction = state.effective_fraction();
        match ban {
            Some(wait) => {
                let until = now + wait;
                let new = state
                    .ban_until
                    .is_none_or(|current| now >= current + controller::SAME_BAN);
                state.ban_until = Some(state.ban_until.map_or(until, |c| c.max(until)));
                if !new {
                    return;
                }
                self.metrics.rate_limit_bans.inc();
                state.banned_at = Some(now);
                let Some(controller) = state.controller.as_mut() else {
                    return;
                };
                controller.banned(now, wait);
                tracing::warn!(
                    learned_calls_per_sec = controller.estimate(),
                    next_calls_per_sec = controller.rate(),
                    "Adaptive rate: the gateway banned the app key; the group's rate is set just below the quota this ban measured."
                );
                self.reshare(&mut state, now);
                self.publish(&state);
            }
            None => {
                if let (Some(controller), Some(fraction)) = (state.controller.as_mut(), fraction) {
                    controller.accepted(now, 1.0 / fraction);
                }
            }
        }
    }

    /// Moves the adaptive controller on, re-derives the share (a count
    /// change settles with time) and the headroom. Called every 100 ms.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        self.reshare(&mut state, now);
        state.usage.ticks += 1;
        if self.turn.waiting() > 0 {
            state.usage.backlogged_ticks += 1;
        }
        let counted = now.saturating_duration_since(state.usage_since);
        if counted >= USAGE_WINDOW {
            let capacity = state.share.per_sec * counted.as_secs_f64();
            let used = (state.calls as f64 / capacity).min(1.0);
            self.metrics.rate_limit_headroom.set(1.0 - used);
            state.calls = 0;
            state.usage_since = now;
        }
    }

    fn reshare(&self, state: &mut BudgetState, now: Instant) {
        if state.settings.scope == RateLimitScope::Group {
            state.fraction = state.counts.fraction(now, &state.owned);
        }
        let ceiling = f64::from(state.settings.rate);
        let since_followed = state.followed_at;
        let banned_since = state.banned_at.is_some_and(|ban| ban > since_followed);
        let group_rate = match (state.controller.as_mut(), state.followed) {
            (Some(controller), Some(followed)) => {
                let own = controller.tick(now);
                let followed = followed.clamp(f64::MIN_POSITIVE, ceiling);
                if banned_since {
                    followed.min(own)
                } else {
                    followed
                }
            }
            (Some(controller), None) => controller.tick(now),
            (None, _) => ceiling,
        };
        let burst = f64::from(state.settings.burst) * group_rate / ceiling;
        let share = share(group_rate, burst, state.effective_fraction());
        let moved = (share.per_sec - state.share.per_sec).abs() > RESIZE_STEP * state.share.per_sec
            || share.burst != state.share.burst;
        state.group_rate = group_rate;
        let ownership = (state.owned.len(), state.fraction);
        if ownership != state.logged {
            // Ownership and counts, not each adaptive step.
            state.logged = ownership;
            tracing::info!(
                owned = state.owned.len(),
                total = state.counts.total(),
                calls_per_sec = share.per_sec,
                burst = share.burst,
                "Rate budget: this replica's share of the group's quota changed."
            );
        }
        if !moved {
            return;
        }
        state.share = share;
        state.limiter = Arc::new(limiter(share));
        self.resized.notify_waiters();
        self.publish(state);
    }

    /// The settings changed in place (`paysync control set`): a new rate,
    /// burst or mode takes effect at once; an adaptive controller keeps
    /// the quota it learned.
    pub fn retune(&self, settings: RateSettings) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.settings == settings {
            return;
        }
        let learned = state.controller.as_ref().and_then(RateController::estimate);
        let controller_changed = state.settings.mode != settings.mode
            || state.settings.rate != settings.rate
            || state.settings.min_rate != settings.min_rate
            || state.settings.probe_interval_min != settings.probe_interval_min
            || state.settings.probe_interval_max != settings.probe_interval_max;
        let scope = state.settings.scope;
        state.settings = RateSettings { scope, ..settings };
        if controller_changed {
            state.controller = new_controller(&state.settings, now);
            if let (Some(controller), Some(learned)) = (state.controller.as_mut(), learned) {
                controller.adopt(now, learned);
            }
        }
        // Forces a new bucket even when the share is within the resize step.
        state.share = Share {
            per_sec: f64::NAN,
            burst: 0,
        };
        self.reshare(&mut state, now);
    }

    /// Adaptive mode outside the group: follow the live group's `rate`
    /// (`None`: no live replica announces one; the own controller decides).
    pub fn follow(&self, rate: Option<f64>) {
        let mut state = self.lock();
        if state.controller.is_some() && state.followed != rate {
            state.followed = rate;
            state.followed_at = Instant::now();
            self.reshare(&mut state, Instant::now());
        }
    }

    /// This caller's kind holds `tenancy` of the group's rate.
    pub fn set_tenancy(&self, tenancy: f64) {
        let mut state = self.lock();
        let tenancy = tenancy.clamp(0.0, 1.0);
        if (state.tenancy - tenancy).abs() > f64::EPSILON {
            state.tenancy = tenancy;
            self.reshare(&mut state, Instant::now());
        }
    }

    /// The live group would get `entitled` of the group's rate if it needed all.
    pub fn set_entitled(&self, entitled: f64) {
        self.lock().entitled = entitled.clamp(0.0, 1.0);
    }

    /// Calls per second this replica's backlog drains at when the live group
    /// is busy: its partitions' part of what the live group is entitled to.
    pub fn drain_rate(&self) -> f64 {
        let state = self.lock();
        match state.fraction.filter(|f| *f > 0.0) {
            Some(fraction) => state.group_rate * fraction * state.entitled,
            None => IDLE_RATE,
        }
        .max(IDLE_RATE)
    }

    /// An adaptive caller that has learned nothing yet takes the quota
    /// another caller on the app key measured, instead of probing for it.
    pub fn adopt(&self, learned: f64) {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(controller) = state.controller.as_mut()
            && controller.estimate().is_none()
        {
            controller.adopt(now, learned);
            tracing::info!(
                learned_calls_per_sec = learned,
                "Adaptive rate: starting from the quota another caller on the app key measured."
            );
            self.reshare(&mut state, now);
            self.publish(&state);
        }
    }

    /// What was used of the share and whether calls waited, since the last call.
    pub fn take_usage(&self) -> Usage {
        let now = Instant::now();
        let mut state = self.lock();
        let usage = std::mem::replace(&mut state.usage, UsageCount::new(now));
        let elapsed = now.saturating_duration_since(usage.since).as_secs_f64();
        Usage {
            calls_per_sec: if elapsed > 0.0 {
                usage.calls as f64 / elapsed
            } else {
                0.0
            },
            backlogged: usage.ticks > 0 && usage.backlogged_ticks * 2 >= usage.ticks,
        }
    }

    /// This replica's part of the live group's partitions (`None`: not known yet).
    pub fn partition_fraction(&self) -> Option<f64> {
        self.lock().fraction
    }

    /// The group's rate: the configured one, or what the adaptive controller found.
    pub fn group_rate(&self) -> f64 {
        self.lock().group_rate
    }

    /// The quota the adaptive controller measured, if it did.
    pub fn learned(&self) -> Option<f64> {
        self.lock()
            .controller
            .as_ref()
            .and_then(RateController::estimate)
    }

    fn publish(&self, state: &BudgetState) {
        self.metrics.rate_limit_share.set(state.share.per_sec);
        self.metrics.rate_limit_group.set(state.group_rate);
        if let Some(estimate) = state.controller.as_ref().and_then(RateController::estimate) {
            self.metrics.rate_limit_learned.set(estimate);
        }
    }
}

fn new_controller(settings: &RateSettings, now: Instant) -> Option<RateController> {
    (settings.mode == RateLimitMode::Adaptive).then(|| {
        RateController::new(
            ControllerSettings {
                ceiling: f64::from(settings.rate),
                floor: f64::from(settings.min_rate),
                probe_interval_min: settings.probe_interval_min,
                probe_interval_max: settings.probe_interval_max,
            },
            now,
        )
    })
}

impl BudgetState {
    /// The part of the group's rate this caller may use.
    fn effective_fraction(&self) -> Option<f64> {
        self.fraction
            .map(|fraction| fraction * self.tenancy)
            .filter(|fraction| *fraction > 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::topics::tests::ids as owned;
    use super::*;

    /// Read by the tests only.
    impl RateBudget {
        /// A budget with no park policy (first come, first served).
        pub(crate) fn plain(settings: RateSettings, metrics: Arc<Metrics>) -> RateBudget {
            RateBudget::new(settings, metrics, Arc::new(ParkPolicy::default()))
        }

        /// Partitions of the subscribed topics, as last known.
        pub(crate) fn total(&self) -> usize {
            self.lock().counts.total()
        }

        /// Whether a partition count changed too recently for every replica to know.
        pub(crate) fn settling(&self) -> bool {
            self.lock().counts.settling(Instant::now())
        }
    }

    fn settings(rate: u32, burst: u32, scope: RateLimitScope) -> RateSettings {
        RateSettings {
            rate,
            burst,
            scope,
            mode: RateLimitMode::Fixed,
            min_rate: 1,
            probe_interval_min: Duration::from_secs(15),
            probe_interval_max: Duration::from_secs(240),
            settle: Duration::from_secs(4),
        }
    }

    #[test]
    fn shares_of_a_group_add_up_to_the_quota() {
        // 7 partitions over 3 replicas: 2, 2, 3.
        let shares: Vec<Share> = [2, 2, 3]
            .iter()
            .map(|o| share(150.0, 30.0, Some(f64::from(*o) / 7.0)))
            .collect();
        let total: f64 = shares.iter().map(|s| s.per_sec).sum();
        assert!((total - 150.0).abs() < 1e-9, "{total}");
        let bursts: u32 = shares.iter().map(|s| s.burst).sum();
        assert!(bursts <= 30, "bursts are rounded down: {bursts}");
        assert_eq!(shares[2].burst, 12, "floor(30 · 3/7)");
    }

    #[test]
    fn nothing_owned_or_known_gets_a_minimal_bucket() {
        for fraction in [None, Some(0.0)] {
            let s = share(100.0, 100.0, fraction);
            assert_eq!((s.per_sec, s.burst), (IDLE_RATE, 1), "{fraction:?}");
        }
        let tiny = share(10.0, 5.0, Some(0.001));
        assert!((tiny.per_sec - 0.01).abs() < 1e-12);
        assert_eq!(tiny.burst, 1);
    }

    #[test]
    fn the_budget_follows_assignments_and_metadata_and_the_replica_scope_ignores_them() {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::plain(settings(120, 60, RateLimitScope::Group), metrics.clone());
        assert_eq!(budget.share().per_sec, IDLE_RATE, "nothing owned");
        budget.observe_counts([("t", 6)]);
        budget.set_owned(owned("t", 0..2));
        assert!((budget.share().per_sec - 40.0).abs() < 1e-9);
        assert!((metrics.rate_limit_share.get() - 40.0).abs() < 1e-9);
        budget.set_owned(owned("t", 0..3));
        assert!((budget.share().per_sec - 60.0).abs() < 1e-9);
        // A second topic: the divisor is every partition of both at once.
        budget.observe_counts([("t", 6), ("u", 6)]);
        assert!((budget.share().per_sec - 30.0).abs() < 1e-9);
        assert_eq!(budget.total(), 12);

        let replica = RateBudget::plain(settings(120, 60, RateLimitScope::Replica), metrics);
        replica.set_owned(owned("t", [1]));
        assert_eq!(replica.share().per_sec, 120.0);
        assert_eq!(replica.share().burst, 60);
    }

    #[test]
    fn a_grown_topic_lowers_the_share_at_once_and_counts_new_partitions_once_settled() {
        let budget = RateBudget::plain(
            settings(120, 12, RateLimitScope::Group),
            Arc::new(Metrics::new()),
        );
        budget.observe_counts([("t", 4)]);
        budget.set_owned(owned("t", [0, 1]));
        assert!((budget.share().per_sec - 60.0).abs() < 1e-9);
        budget.observe_counts([("t", 8)]);
        budget.set_owned(owned("t", [0, 1, 4, 5]));
        assert!(budget.settling());
        assert!(
            (budget.share().per_sec - 30.0).abs() < 1e-9,
            "the new partitions wait until every replica divides by 8"
        );
    }

    /// Real time: the limiter has its own clock.
    #[tokio::test]
    async fn a_resized_bucket_admits_the_share_and_no_burst() {
        let budget = RateBudget::plain(
            settings(100, 100, RateLimitScope::Group),
            Arc::new(Metrics::new()),
        );
        budget.observe_counts([("t", 4)]);
        budget.set_owned(owned("t", [0]));
        let started = std::time::Instant::now();
        for _ in 0..26 {
            budget.until_ready(&Arc::from("")).await;
        }
        // 25 calls/s and a fresh bucket with one token: 26 calls take about 1 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_caller_waiting_on_a_slow_bucket_moves_to_the_new_one() {
        let budget = Arc::new(RateBudget::plain(
            settings(100, 1, RateLimitScope::Group),
            Arc::new(Metrics::new()),
        ));
        // Owning nothing: a token every 10 s; the first is in the bucket.
        budget.until_ready(&Arc::from("")).await;
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.until_ready(&Arc::from("")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        budget.observe_counts([("t", 1)]);
        budget.set_owned(owned("t", [0]));
        waiter.await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }

    #[test]
    fn adaptive_mode_starts_at_the_floor_and_a_ban_is_counted_once() {
        let metrics = Arc::new(Metrics::new());
        let budget = RateBudget::plain(
            RateSettings {
                mode: RateLimitMode::Adaptive,
                min_rate: 30,
                ..settings(600, 60, RateLimitScope::Group)
            },
            metrics.clone(),
        );
        budget.observe_counts([("t", 3)]);
        budget.set_owned(owned("t", [0]));
        assert!((budget.group_rate() - 30.0).abs() < 1e-9);
        assert!((budget.share().per_sec - 10.0).abs() < 1e-9);
        let ban = Disposition::Retry {
            cause: RetryCause::Throttled,
            wait: Some(Duration::from_secs(2)),
        };
        budget.answered(&ban);
        budget.answered(&ban);
        assert_eq!(metrics.rate_limit_bans.get(), 1, "two answers, one ban");
        assert!(metrics.rate_limit_learned.get() >= 30.0);
    }
}
