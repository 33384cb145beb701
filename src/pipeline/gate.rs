//! The gate every call passes before it is sent: it closes for a code-7 ban,
//! while the circuit breaker is open, and while delivery is halted.
//!
//! * **Ban**: code 7 announces "This ban will last for N more seconds"; every
//!   call waits until then. Waiting costs no retry attempt.
//! * **Breaker**: `failure_threshold` transient failures in a row mean the
//!   gateway is down, not that the events are bad. The breaker opens, calls
//!   wait, and one probe call goes through every `probe_interval`; the first
//!   answer from a healthy gateway closes it. Failures seen while the breaker
//!   is open (or that open it) cost no retry attempt, so an outage never
//!   exhausts an event's retries and never reaches the dead-letter topic.
//! * **Warm-up**: at start and after every ban, one call goes first and the
//!   rest wait for its answer, so a restart into a ban (or a ban that is
//!   extended) meets one code 7, not a window of `max_in_flight` calls.
//! * **Halt**: the configuration is broken (signature, app key, permissions,
//!   session, clock). Every call waits; one probe goes through every
//!   `halt_probe_interval`, and the cause is logged each time it fails.
//!
//! The pipeline's main loop is woken on every change so it can pause or
//! resume partitions and report readiness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use crate::labels::BreakerState;
use crate::metrics::Metrics;
use crate::top::classify::{Disposition, HaltCause, RetryCause};

/// Breaker and halt timing.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    pub failure_threshold: u32,
    pub probe_interval: Duration,
    pub halt_probe_interval: Duration,
}

/// The kind of passage a call was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    /// The one call allowed through an open breaker, a halt or a warm-up, to test it.
    Probe,
}

/// What held a call at the gate before it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A code-7 ban was running.
    Ban,
    /// The configuration was broken: only the halt's probe may go.
    Halt,
    /// The breaker was open: only its probe may go.
    Breaker,
    /// At start or after a ban, the first call goes alone and the others
    /// wait for its answer.
    WarmUp,
}

impl Hold {
    /// The wait, as an event's trace names it.
    pub fn waited_for(self) -> &'static str {
        match self {
            Hold::Ban => "waited for the gateway's ban to end",
            Hold::Halt => "waited at the halt for a probe to succeed",
            Hold::Breaker => "waited at the open breaker for a probe to succeed",
            Hold::WarmUp => "waited for the first call's answer (at start or after a ban)",
        }
    }
}

/// A call let through the gate, and what held it first, if anything did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub pass: Pass,
    pub held: Option<Hold>,
}

/// Whether a call's transient failure is charged to its event's retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCharge {
    /// The gateway is otherwise healthy: the failure is the event's, and counts.
    Counted,
    /// An outage, a ban or a halt: waiting for it costs the event nothing.
    Free,
}

/// A snapshot for readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateStatus {
    pub breaker: BreakerState,
    pub halted: Option<HaltCause>,
    pub ban_remaining: Option<Duration>,
}

impl GateStatus {
    /// True when no call can go out now (apart from probes).
    pub fn closed(&self) -> bool {
        self.breaker != BreakerState::Closed
            || self.halted.is_some()
            || self.ban_remaining.is_some()
    }

    /// Sets the gate's gauges: one-hot breaker state and halt cause, ban time left.
    pub fn publish(&self, metrics: &Metrics) {
        for state in BreakerState::ALL {
            metrics
                .breaker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(*state == self.breaker));
        }
        for cause in HaltCause::ALL {
            metrics
                .halted
                .with_label_values(&[cause.as_str()])
                .set(i64::from(self.halted == Some(*cause)));
        }
        metrics
            .ban_remaining
            .set(self.ban_remaining.map_or(0.0, |d| d.as_secs_f64()));
    }
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    breaker: BreakerState,
    /// When the breaker next lets a probe through.
    breaker_probe_at: Instant,
    halted: Option<HaltCause>,
    halt_probe_at: Instant,
    probe_in_flight: bool,
    ban_until: Option<Instant>,
    /// Nothing is known of the gateway since start or since a ban ended:
    /// one probe goes first.
    warming: bool,
}

pub struct Gate {
    settings: GateSettings,
    state: Mutex<State>,
    /// Wakes calls waiting to pass.
    changed: Notify,
    /// Wakes the pipeline's main loop.
    observer: Arc<Notify>,
}

impl Gate {
    pub fn new(settings: GateSettings, observer: Arc<Notify>) -> Gate {
        let now = Instant::now();
        Gate {
            settings,
            state: Mutex::new(State {
                consecutive_failures: 0,
                breaker: BreakerState::Closed,
                breaker_probe_at: now,
                halted: None,
                halt_probe_at: now,
                probe_in_flight: false,
                ban_until: None,
                warming: true,
            }),
            changed: Notify::new(),
            observer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> GateStatus {
        let state = self.lock();
        let now = Instant::now();
        GateStatus {
            breaker: state.breaker,
            halted: state.halted,
            ban_remaining: state
                .ban_until
                .filter(|until| *until > now)
                .map(|until| until - now),
        }
    }

    /// Waits until a call may be sent.
    pub async fn pass(&self) -> Admitted {
        let mut held = None;
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut state = self.lock();
                match admit(&mut state, Instant::now()) {
                    Ok(pass) => return Admitted { pass, held },
                    Err((until, hold)) => {
                        held.get_or_insert(hold);
                        until
                    }
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Gives back a probe that was not used (the call was abandoned).
    pub fn release(&self, pass: Pass) {
        if pass == Pass::Probe {
            self.lock().probe_in_flight = false;
            self.changed.notify_waiters();
        }
    }

    /// Records a call's disposition, and says whether a transient failure is
    /// charged to the event's retry budget (only while the breaker is closed).
    pub fn record(&self, pass: Pass, disposition: &Disposition) -> RetryCharge {
        let now = Instant::now();
        let mut state = self.lock();
        if pass == Pass::Probe {
            state.probe_in_flight = false;
        }
        let before = (state.breaker, state.halted);
        let ban_before = state.ban_until;
        let charge = match disposition {
            Disposition::Halt { cause } => {
                if state.halted.is_none() || pass == Pass::Probe {
                    tracing::error!(
                        cause = cause.as_str(),
                        next_probe_in_s = self.settings.halt_probe_interval.as_secs_f64(),
                        "Delivery halted: the configuration is broken. Nothing is dead-lettered; fix the cause and delivery resumes after the next probe."
                    );
                }
                state.halted = Some(*cause);
                state.halt_probe_at = now + self.settings.halt_probe_interval;
                RetryCharge::Free
            }
            Disposition::Retry { cause, wait } if is_gateway_failure(*cause) => {
                let _ = wait;
                state.consecutive_failures += 1;
                let trips = state.consecutive_failures >= self.settings.failure_threshold;
                if state.breaker != BreakerState::Closed || trips {
                    if state.breaker == BreakerState::Closed {
                        tracing::warn!(
                            consecutive_failures = state.consecutive_failures,
                            "Circuit breaker opened: the gateway looks down. Calls wait and a probe goes out every {:?}.",
                            self.settings.probe_interval
                        );
                    }
                    state.breaker = BreakerState::Open;
                    state.breaker_probe_at = now + self.settings.probe_interval;
                    RetryCharge::Free
                } else {
                    // A halt probe that meets an outage keeps the halt.
                    if state.halted.is_none() {
                        RetryCharge::Counted
                    } else {
                        RetryCharge::Free
                    }
                }
            }
            Disposition::Retry { wait, .. } => {
                // Throttling or a per-event service failure: the gateway answered.
                healthy(&mut state);
                if let Some(wait) = wait {
                    let until = now + *wait;
                    if state.ban_until.is_none_or(|current| current < until) {
                        tracing::warn!(
                            ban_s = wait.as_secs(),
                            "Calls are banned by flow control (code 7); every call waits."
                        );
                        state.ban_until = Some(until);
                    }
                    RetryCharge::Free
                } else {
                    RetryCharge::Counted
                }
            }
            Disposition::Delivered | Disposition::DeadLetter { .. } => {
                healthy(&mut state);
                RetryCharge::Free
            }
        };
        if before != (state.breaker, state.halted) && state.halted.is_none() && before.1.is_some() {
            tracing::info!("Delivery resumed: the halt probe succeeded.");
        }
        let changed = pass == Pass::Probe
            || before != (state.breaker, state.halted)
            || state.ban_until != ban_before;
        drop(state);
        // Waking every waiter on every answer would cost more than the call;
        // only a change of state (or a returned probe) can let someone pass.
        if changed {
            self.changed.notify_waiters();
            self.observer.notify_one();
        }
        charge
    }
}

/// The gateway answered sensibly: close the breaker and lift a halt.
fn healthy(state: &mut State) {
    if state.breaker != BreakerState::Closed {
        tracing::info!("Circuit breaker closed: the gateway answers again.");
    }
    state.consecutive_failures = 0;
    state.breaker = BreakerState::Closed;
    state.halted = None;
    state.warming = false;
}

/// Failures that say the gateway (or the way to it) is unwell, as opposed to
/// answers about this particular event.
fn is_gateway_failure(cause: RetryCause) -> bool {
    !matches!(cause, RetryCause::Throttled)
}

/// Lets a call through, or says until when it waits and why.
fn admit(state: &mut State, now: Instant) -> Result<Pass, (Instant, Hold)> {
    if let Some(until) = state.ban_until {
        if now < until {
            return Err((until, Hold::Ban));
        }
        state.ban_until = None;
        state.warming = true;
    }
    if state.halted.is_some() {
        if state.probe_in_flight || now < state.halt_probe_at {
            return Err((
                state.halt_probe_at.max(now + Duration::from_millis(50)),
                Hold::Halt,
            ));
        }
        state.probe_in_flight = true;
        return Ok(Pass::Probe);
    }
    match state.breaker {
        BreakerState::Closed if state.warming => {
            if state.probe_in_flight {
                return Err((now + Duration::from_millis(50), Hold::WarmUp));
            }
            state.probe_in_flight = true;
            Ok(Pass::Probe)
        }
        BreakerState::Closed => Ok(Pass::Normal),
        BreakerState::Open | BreakerState::HalfOpen => {
            if state.probe_in_flight || now < state.breaker_probe_at {
                return Err((
                    state.breaker_probe_at.max(now + Duration::from_millis(50)),
                    Hold::Breaker,
                ));
            }
            state.breaker = BreakerState::HalfOpen;
            state.probe_in_flight = true;
            Ok(Pass::Probe)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::classify::RejectCause;

    fn gate(threshold: u32) -> Gate {
        Gate::new(
            GateSettings {
                failure_threshold: threshold,
                probe_interval: Duration::from_millis(100),
                halt_probe_interval: Duration::from_millis(200),
            },
            Arc::new(Notify::new()),
        )
    }

    const TIMEOUT: Disposition = Disposition::Retry {
        cause: RetryCause::Timeout,
        wait: None,
    };

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_the_breaker_and_a_probe_closes_it() {
        let gate = gate(3);
        assert_eq!(
            gate.record(Pass::Normal, &TIMEOUT),
            RetryCharge::Counted,
            "below the threshold a failure counts"
        );
        assert_eq!(gate.record(Pass::Normal, &TIMEOUT), RetryCharge::Counted);
        assert_eq!(
            gate.record(Pass::Normal, &TIMEOUT),
            RetryCharge::Free,
            "the failure that trips the breaker does not count"
        );
        assert_eq!(gate.status().breaker, BreakerState::Open);
        assert_eq!(
            gate.record(Pass::Normal, &TIMEOUT),
            RetryCharge::Free,
            "failures while open do not count"
        );
        let started = Instant::now();
        assert_eq!(gate.pass().await.pass, Pass::Probe);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(gate.status().breaker, BreakerState::HalfOpen);
        gate.record(Pass::Probe, &Disposition::Delivered);
        assert_eq!(gate.status().breaker, BreakerState::Closed);
        assert_eq!(gate.pass().await.pass, Pass::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_the_breaker() {
        let gate = gate(1);
        gate.record(Pass::Normal, &TIMEOUT);
        assert_eq!(gate.pass().await.pass, Pass::Probe);
        assert_eq!(gate.record(Pass::Probe, &TIMEOUT), RetryCharge::Free);
        assert_eq!(gate.status().breaker, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ban_makes_everyone_wait_without_spending_attempts() {
        let gate = gate(3);
        let ban = Disposition::Retry {
            cause: RetryCause::Throttled,
            wait: Some(Duration::from_secs(2)),
        };
        assert_eq!(gate.record(Pass::Normal, &ban), RetryCharge::Free);
        assert!(gate.status().ban_remaining.is_some());
        let started = Instant::now();
        assert_eq!(
            gate.pass().await.pass,
            Pass::Probe,
            "one call first after the ban"
        );
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_halt_lets_one_probe_through_per_interval_and_lifts_on_success() {
        let gate = gate(3);
        gate.record(
            Pass::Normal,
            &Disposition::Halt {
                cause: HaltCause::Signature,
            },
        );
        assert_eq!(gate.status().halted, Some(HaltCause::Signature));
        let started = Instant::now();
        assert_eq!(gate.pass().await.pass, Pass::Probe);
        assert!(started.elapsed() >= Duration::from_millis(200));
        gate.record(
            Pass::Probe,
            &Disposition::Halt {
                cause: HaltCause::Signature,
            },
        );
        assert_eq!(gate.pass().await.pass, Pass::Probe);
        gate.record(
            Pass::Probe,
            &Disposition::DeadLetter {
                cause: RejectCause::InvalidArguments,
            },
        );
        assert_eq!(gate.status().halted, None);
        assert_eq!(gate.pass().await.pass, Pass::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn one_call_goes_first_at_start_and_after_a_ban() {
        let gate = std::sync::Arc::new(gate(3));
        assert_eq!(
            gate.pass().await.pass,
            Pass::Probe,
            "the first call tests the gateway"
        );
        let second = tokio::time::timeout(Duration::from_secs(5), gate.pass()).await;
        assert!(second.is_err(), "the rest wait for its answer");
        let ban = Disposition::Retry {
            cause: RetryCause::Throttled,
            wait: Some(Duration::from_secs(30)),
        };
        gate.record(Pass::Probe, &ban);
        let started = Instant::now();
        assert_eq!(
            gate.pass().await,
            Admitted {
                pass: Pass::Probe,
                held: Some(Hold::Ban)
            },
            "after the ban, one call again, held by the ban"
        );
        assert!(started.elapsed() >= Duration::from_secs(25));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), gate.pass())
                .await
                .is_err()
        );
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        gate.record(Pass::Probe, &Disposition::Delivered);
        assert_eq!(
            waiting.await.unwrap(),
            Admitted {
                pass: Pass::Normal,
                held: Some(Hold::WarmUp)
            },
            "a call behind the warm-up probe was held by it, not by a ban"
        );
        assert_eq!(gate.pass().await.pass, Pass::Normal);
        assert_eq!(
            gate.pass().await.pass,
            Pass::Normal,
            "then the whole window"
        );
    }

    #[test]
    fn gate_state_is_published_one_hot() {
        let metrics = Metrics::new();
        GateStatus {
            breaker: BreakerState::Open,
            halted: Some(HaltCause::Clock),
            ban_remaining: Some(Duration::from_secs(3)),
        }
        .publish(&metrics);
        let text = metrics.render();
        assert!(text.contains(r#"paysync_breaker_state{state="open"} 1"#));
        assert!(text.contains(r#"paysync_breaker_state{state="closed"} 0"#));
        assert!(text.contains(r#"paysync_halted{cause="clock"} 1"#));
        assert!(text.contains(r#"paysync_halted{cause="signature"} 0"#));
        assert!(text.contains("paysync_ban_remaining_seconds 3"));
    }
}
