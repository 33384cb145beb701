//! One caller's tenancy of the app key's rate, through the control topic
//! (`crate::control`): every refresh it announces a lease with what it
//! needs, reads everyone's leases, and takes its part of the split
//! (`control::shares`) — a live replica its partitions' share of the live
//! group's part, a replay, redrive or reconciliation its own part. It also
//! applies tuned settings in place as soon as they are read, and rolls back
//! a guarded rate raise that bans followed.
//!
//! What a caller needs: its calls per second in the busiest of its last
//! [`PEAK_HOLD`] refreshes with `control.headroom_percent` more, or, while calls waited for tokens most of the time, all it
//! may take (a live replica: its partitions' share of the rate; another
//! caller: its ceiling). A new caller starts by asking for all of it, so
//! the others give way before it has measured anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{RateBudget, RateSettings, Usage};
use crate::config::{RateLimitMode, Settings};
use crate::control::record::{self, CallerKind, Lease, Tuning};
use crate::control::shares::{self, Claim, Settled};
use crate::control::{Control, ControlView, tuning};
use crate::metrics::Metrics;

/// A caller's need is the busiest of its last this many refreshes, so a
/// lull of a second does not hand its headroom to a backfill.
const PEAK_HOLD: usize = 3;
/// A caller that did not wait still claims this part of the rate (of its
/// partitions' share, for a replica), so a burst finds tokens while it
/// announces it is busy again.
const MARGIN: f64 = 0.02;

/// Who this caller is among the callers on the app key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// A replica of the live group.
    Member,
    /// A replay, redrive or reconciliation, with its weight and the most
    /// calls per second it may take.
    Tenant {
        kind: CallerKind,
        weight: u32,
        ceiling: Option<f64>,
    },
}

/// What the pipeline does with tuned settings besides the rate.
pub type ApplyTuned = Box<dyn Fn(&Settings) + Send + Sync>;

/// One caller's tenancy.
pub struct Tenancy {
    control: Arc<Control>,
    budget: Arc<RateBudget>,
    metrics: Arc<Metrics>,
    role: Role,
    /// The configuration file's settings, which tuned values apply over.
    base: Settings,
    scope: crate::config::RateLimitScope,
    apply: ApplyTuned,
    tenancy: Settled,
    last_lease: Option<(Instant, Lease)>,
    /// Calls per second of the last refreshes, newest last.
    recent: std::collections::VecDeque<f64>,
    first: bool,
    applied_version: u64,
    bans_seen: u64,
}

impl Tenancy {
    pub fn new(
        control: Arc<Control>,
        budget: Arc<RateBudget>,
        metrics: Arc<Metrics>,
        role: Role,
        base: Settings,
        apply: ApplyTuned,
    ) -> Tenancy {
        let now = Instant::now();
        let settle = control.settings().refresh_ms * 2;
        let scope = budget.lock().settings.scope;
        let bans_seen = metrics.rate_limit_bans.get();
        let view = control.view();
        // A replica alone on the app key has the whole rate at once; beside
        // other callers it waits until they have seen its lease.
        let alone = role == Role::Member && !has_tenants(&view, Utc::now().timestamp_millis());
        let initial = if alone { 1.0 } else { 0.0 };
        budget.set_tenancy(initial);
        let mut tenancy = Tenancy {
            control,
            budget,
            metrics,
            role,
            base,
            scope,
            apply,
            tenancy: Settled::new(settle, initial, now),
            last_lease: None,
            recent: std::collections::VecDeque::new(),
            first: true,
            applied_version: 0,
            bans_seen,
        };
        tenancy.apply_tuning(&view);
        tenancy
    }

    /// Runs until `stop`; then withdraws the lease.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut changes = self.control.changes();
        let mut refresh = tokio::time::interval(self.control.settings().refresh_ms);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = refresh.tick() => self.refresh().await,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let view = changes.borrow_and_update().clone();
                    self.apply_tuning(&view);
                }
            }
        }
        let key = record::lease_key(self.control.caller());
        if let Err(error) = self.control.put(&key, None).await {
            tracing::debug!(error = %error, "Withdrawing the lease failed; it expires by itself.");
        }
    }

    /// One refresh: announce, recompute the split, watch a guarded raise.
    pub async fn refresh(&mut self) {
        let now = Instant::now();
        let view = self.control.view();
        self.apply_tuning(&view);
        let now_ms = Utc::now().timestamp_millis();
        if let Some(learned) = view.learned(now_ms) {
            self.budget.adopt(learned);
        }
        if matches!(self.role, Role::Tenant { .. }) {
            // Adaptive: the live group's controllers learn the quota, this
            // caller follows their rate rather than probe on its own.
            self.budget.follow(view.live_group_rate(now_ms));
        }
        let usage = self.budget.take_usage();
        let mut lease = self.lease(usage);
        let moved = self.last_lease.as_ref().is_none_or(|(_, last)| {
            moved(last.demand_per_sec, lease.demand_per_sec)
                || last.busy_share.is_some() != lease.busy_share.is_some()
        });
        if !moved && let Some((_, last)) = &self.last_lease {
            // A need that moved little is announced as before: the split,
            // and every bucket, stay as they are.
            lease.demand_per_sec = last.demand_per_sec;
            lease.busy_share = last.busy_share;
        }
        let due = moved
            || self.last_lease.as_ref().is_none_or(|(at, _)| {
                now.saturating_duration_since(*at) >= self.control.settings().lease_ms / 3
            });
        if due {
            let key = record::lease_key(&lease.caller);
            match self.control.put(&key, Some(record::encode(&lease))).await {
                Ok(()) => self.last_lease = Some((now, lease.clone())),
                Err(error) => {
                    tracing::warn!(error = %error, "Announcing this caller's lease on the control topic failed; the others keep its last one until it expires.");
                }
            }
        }
        let part = self.split(&view, &lease);
        let held = self.tenancy.set(now, part);
        self.budget.set_tenancy(held);
        self.guard(&view).await;
    }

    /// This caller's lease from what it used.
    fn lease(&mut self, usage: Usage) -> Lease {
        let rate = self.budget.group_rate();
        let settings = self.control.settings();
        let full = std::mem::take(&mut self.first) || usage.backlogged;
        self.recent.push_back(usage.calls_per_sec);
        if self.recent.len() > PEAK_HOLD {
            self.recent.pop_front();
        }
        let used = self.recent.iter().copied().fold(0.0, f64::max)
            * (1.0 + f64::from(settings.headroom_percent) / 100.0);
        let mut busy_share = None;
        let (kind, weight, demand) = match self.role {
            Role::Member => {
                let fraction = self.budget.partition_fraction().unwrap_or(0.0);
                let most = fraction * rate;
                let demand = if full {
                    busy_share = Some(fraction);
                    most
                } else {
                    (used + MARGIN * most).min(most)
                };
                (CallerKind::Member, settings.live_weight, Some(demand))
            }
            Role::Tenant {
                kind,
                weight,
                ceiling,
            } => {
                let demand = if full {
                    ceiling
                } else {
                    let wanted = used + MARGIN * rate;
                    Some(ceiling.map_or(wanted, |c| wanted.min(c)))
                };
                (kind, weight, demand)
            }
        };
        Lease {
            caller: self.control.caller().to_owned(),
            kind,
            weight,
            demand_per_sec: demand,
            busy_share,
            learned_per_sec: self.budget.learned(),
            group_rate_per_sec: Some(rate),
            expires_at_ms: Utc::now().timestamp_millis() + settings.lease_ms.as_millis() as i64,
        }
    }

    /// This caller's part of the group's rate, from everyone's leases
    /// (its own as just made), and the shares as metrics.
    fn split(&self, view: &ControlView, mine: &Lease) -> f64 {
        let rate = self.budget.group_rate();
        let now_ms = Utc::now().timestamp_millis();
        let leases: Vec<&Lease> = view
            .live_leases(now_ms)
            .filter(|lease| lease.caller != mine.caller)
            .chain(std::iter::once(mine))
            .collect();
        let live_demand: f64 = leases
            .iter()
            .filter(|lease| lease.kind == CallerKind::Member)
            .map(|lease| match lease.busy_share {
                Some(share) => share * rate,
                None => lease.demand_per_sec.unwrap_or(f64::INFINITY),
            })
            .sum();
        let tenants: Vec<&&Lease> = leases
            .iter()
            .filter(|lease| lease.kind != CallerKind::Member)
            .collect();
        let mut claims = vec![Claim {
            weight: f64::from(self.control.settings().live_weight),
            demand: live_demand,
        }];
        claims.extend(tenants.iter().map(|lease| Claim {
            weight: f64::from(lease.weight.max(1)),
            demand: lease.demand_per_sec.unwrap_or(f64::INFINITY),
        }));
        let split = shares::allocate(rate, &claims);
        if self.role == Role::Member && rate > 0.0 {
            let busy = Claim {
                demand: f64::INFINITY,
                ..claims[0]
            };
            let entitled = shares::allocate(rate, &[&[busy], &claims[1..]].concat())[0] / rate;
            self.budget.set_entitled(entitled);
        }
        self.metrics.caller_share.reset();
        self.metrics
            .caller_share
            .with_label_values(&[CallerKind::Member.as_str(), "live"])
            .set(split[0]);
        for (lease, share) in tenants.iter().zip(&split[1..]) {
            self.metrics
                .caller_share
                .with_label_values(&[lease.kind.as_str(), &lease.caller])
                .set(*share);
        }
        if rate <= 0.0 {
            return 0.0;
        }
        if tenants.is_empty() && self.role == Role::Member {
            // Nobody else on the app key: the live group has it all.
            return 1.0;
        }
        let mine_share = match self.role {
            Role::Member => split[0],
            Role::Tenant { .. } => tenants
                .iter()
                .zip(&split[1..])
                .find(|(lease, _)| lease.caller == mine.caller)
                .map_or(0.0, |(_, share)| *share),
        };
        mine_share / rate
    }

    /// Applies a new version of the tuned settings (once each).
    fn apply_tuning(&mut self, view: &ControlView) {
        let tuning = &view.tuning;
        if tuning.version == self.applied_version {
            return;
        }
        let tuned = match tuning::tuned(&self.base, &tuning.values) {
            Ok(tuned) => tuned,
            Err(error) => {
                // Checked when set; a configuration file that differs between
                // callers can still refuse it here.
                tracing::error!(version = tuning.version, error = %error, "Tuned settings refused by this caller's configuration; the previous ones stay in force.");
                self.applied_version = tuning.version;
                return;
            }
        };
        self.applied_version = tuning.version;
        let refresh = self.base.kafka.metadata_refresh_interval_ms;
        self.budget
            .retune(RateSettings::of(&tuned.delivery, self.scope, refresh));
        (self.apply)(&tuned);
        publish_tuned(&self.metrics, tuning.version, &tuned);
        self.metrics.control_changes_applied.inc();
        tracing::info!(
            version = tuning.version,
            values = ?tuning.values,
            "Tuned settings applied in place."
        );
    }

    /// Rolls back a guarded rate raise when a ban follows it.
    async fn guard(&mut self, view: &ControlView) {
        let bans = self.metrics.rate_limit_bans.get();
        let banned = bans > self.bans_seen;
        self.bans_seen = bans;
        let Some(guard) = &view.tuning.guard else {
            return;
        };
        if !banned || Utc::now().timestamp_millis() > guard.until_ms {
            return;
        }
        let rolled_back = Tuning {
            version: view.tuning.version + 1,
            values: guard.previous.clone(),
            guard: None,
        };
        tracing::warn!(
            version = view.tuning.version,
            "The gateway banned the app key after a guarded rate raise; rolling it back."
        );
        let what = format!(
            "rolled back version {} to {:?}: a ban followed the raise",
            view.tuning.version, rolled_back.values
        );
        if let Err(error) = self
            .control
            .change(
                record::SETTINGS_KEY,
                Some(record::encode(&rolled_back)),
                "paysync (rate guard)",
                what,
                "bans after a guarded raise",
            )
            .await
        {
            tracing::warn!(error = %error, "Writing the rollback failed; the next ban tries again.");
        }
    }
}

/// Whether a caller other than the live group holds a lease.
fn has_tenants(view: &ControlView, now_ms: i64) -> bool {
    view.live_leases(now_ms)
        .any(|lease| lease.kind != CallerKind::Member)
}

/// Whether a demand moved enough to announce before the lease is due.
fn moved(before: Option<f64>, now: Option<f64>) -> bool {
    match (before, now) {
        (Some(a), Some(b)) => (a - b).abs() > 0.1 * a.max(b).max(1.0),
        (None, None) => false,
        _ => true,
    }
}

/// The tuned settings in force, as metrics.
pub fn publish_tuned(metrics: &Metrics, version: u64, settings: &Settings) {
    metrics.control_version.set(version as i64);
    let delivery = &settings.delivery;
    let values: BTreeMap<&str, f64> = BTreeMap::from([
        ("rate_limit_per_sec", f64::from(delivery.rate_limit_per_sec)),
        ("rate_limit_min_per_sec", f64::from(delivery.min_rate())),
        (
            "rate_limit_mode",
            f64::from(u8::from(
                delivery.rate_limit_mode == RateLimitMode::Adaptive,
            )),
        ),
        ("rate_limit_burst", f64::from(delivery.burst())),
        ("max_in_flight", delivery.max_in_flight as f64),
        ("max_attempts", f64::from(delivery.max_attempts)),
        (
            "max_retry_elapsed_ms",
            delivery.max_retry_elapsed_ms.as_millis() as f64,
        ),
        (
            "backoff_initial_ms",
            delivery.backoff_initial_ms.as_millis() as f64,
        ),
        ("backoff_max_ms", delivery.backoff_max_ms.as_millis() as f64),
    ]);
    for (key, value) in values {
        metrics.control_setting.with_label_values(&[key]).set(value);
    }
}
