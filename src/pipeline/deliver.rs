//! Per-event delivery: one task takes one event to its final outcome —
//! delivered, or acknowledged by the dead-letter topic — or gives up when
//! its partition is revoked or the pipeline shuts down.
//!
//! Each attempt waits while a pause on the control topic holds the event,
//! takes a call slot, passes the gate ([`super::gate`]), takes a
//! rate-limiter token (slots and tokens fair between parks,
//! [`super::fair`]) and is signed at send time. The answer is classified by
//! the one table ([`crate::top::classify`]); transient failures the gate
//! charges to the event spend its [`RetryBudget`](super::retry::RetryBudget), and an exhausted budget
//! dead-letters the event as `retries_exhausted`.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::fair::{FairQueue, ParkPolicy, ParkWaits};
use super::filing::{Filed, path_of, resend_asked, withdraw};
use super::gate::{Gate, Pass, RetryCharge};
use super::ordering::Predecessor;
use super::rate::RateBudget;
use super::retry::{NextAttempt, RetryBudget};
use super::watch::{EventEnd, EventWatch};
use crate::config::{DeliverySettings, LedgerMode};
use crate::control::Control;
use crate::dead_letter::prior::PriorCopies;
use crate::dead_letter::{DeadLetterClass, DeadLetterProducer, Failure, SourceRecord, Written};
use crate::event::{InvalidEvent, PaymentEvent};
use crate::ledger::entry::{Entry, Outcome, dto_hash};
use crate::ledger::{self, Admit, Ledger};
use crate::metrics::Metrics;
use crate::top::classify::{Classifier, Disposition};
use crate::top::client::TopClient;
use crate::top::request::dto_json;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// The event was delivered.
    Finished,
    /// The event's dead-letter copy was acknowledged. Its offset is committed
    /// at once, not at the next interval: a copy written again after a crash
    /// is a duplicate an operator sees, so the window for one stays as short
    /// as a commit's round trip.
    DeadLettered,
    /// It gave up on revoke or shutdown; its offset stays unfinished, so the
    /// next owner (or the next run) sends it.
    Abandoned,
}

/// What a task needs to deliver or dead-letter one event.
pub(super) struct Deliverer {
    pub(super) client: TopClient,
    pub(super) classifier: Classifier,
    pub(super) gate: Arc<Gate>,
    pub(super) budget: Arc<RateBudget>,
    /// The call slots (`delivery.max_in_flight`), fair between parks.
    pub(super) calls: FairQueue,
    pub(super) parks: Arc<ParkPolicy>,
    pub(super) waits: ParkWaits,
    pub(super) dead_letters: DeadLetterProducer,
    /// `[delivery]`, with the tuned settings applied in place.
    pub(super) delivery: RwLock<DeliverySettings>,
    /// The control topic (pauses), unless `control.enabled` is off.
    pub(super) control: Option<Arc<Control>>,
    pub(super) metrics: Arc<Metrics>,
    /// The delivery ledger, unless `ledger.mode = "off"`.
    pub(super) ledger: Option<Arc<Ledger>>,
    /// A replay's events (the ledger's `replay` path).
    pub(super) replay: bool,
    /// `paysync replay --resend-delivered`: keys accepted before are sent too.
    pub(super) resend_delivered: bool,
}

/// One message, detached from the consumer.
pub(super) struct Job {
    pub(super) source: SourceRecord,
    pub(super) event: Result<PaymentEvent, InvalidEvent>,
    /// Set when an earlier owner may have dead-lettered this offset already.
    pub(super) prior: Option<Arc<PriorCopies>>,
    /// What is told about the event: its log span, trace and metrics.
    pub(super) watch: EventWatch,
}

impl Deliverer {
    /// Runs one event to its final outcome, after its order's predecessor.
    pub(super) async fn run(
        &self,
        job: Job,
        predecessor: Option<Predecessor>,
        cancel: CancellationToken,
    ) -> TaskEnd {
        let after_predecessor = match predecessor {
            Some(predecessor) => tokio::select! {
                _ = predecessor => true,
                _ = cancel.cancelled() => false,
            },
            None => true,
        };
        let end = if !after_predecessor {
            EventEnd::Abandoned
        } else {
            match &job.event {
                Err(invalid) => {
                    job.watch.invalid(invalid);
                    self.dead_letter(&job, Failure::invalid_event(invalid), &cancel)
                        .await
                }
                Ok(event) => self.deliver(&job, event, &cancel).await,
            }
        };
        job.watch.ended(&end);
        match end {
            EventEnd::Delivered | EventEnd::Duplicate { .. } | EventEnd::Parked { .. } => {
                TaskEnd::Finished
            }
            EventEnd::DeadLettered { .. } | EventEnd::DeadLetteredBefore { .. } => {
                TaskEnd::DeadLettered
            }
            EventEnd::Abandoned => TaskEnd::Abandoned,
        }
    }

    async fn dead_letter(
        &self,
        job: &Job,
        mut failure: Failure,
        cancel: &CancellationToken,
    ) -> EventEnd {
        failure.trace_id = job.watch.trace_id();
        if let Some(prior) = &job.prior {
            tokio::select! {
                held = Box::pin(self.dead_letters.written_before(prior, job.source.offset)) => if held {
                    return EventEnd::DeadLetteredBefore { class: failure.class, reason: failure.reason };
                },
                _ = cancel.cancelled() => return EventEnd::Abandoned,
            }
        }
        let sent = Box::pin(
            self.dead_letters
                .send(&job.source, &failure, cancel.cancelled()),
        );
        match sent.await {
            Written::Acknowledged => EventEnd::DeadLettered {
                class: failure.class,
                reason: failure.reason,
            },
            Written::Cancelled => EventEnd::Abandoned,
        }
    }

    async fn deliver(
        &self,
        job: &Job,
        event: &PaymentEvent,
        cancel: &CancellationToken,
    ) -> EventEnd {
        let dto = dto_json(event);
        let filed = match &self.ledger {
            None => None,
            Some(ledger) => match self.file(ledger, job, event, &dto, cancel).await {
                Ok(filed) => Some(filed),
                Err(end) => return end,
            },
        };
        let strict = filed
            .as_ref()
            .is_some_and(|f| f.ledger.mode() == LedgerMode::Strict);
        // Once a call went out, its outcome is written whatever a revoke
        // says: the drain waits for it, and an intent left without outcome
        // would be an unknown outcome for the next owner.
        let after_call = CancellationToken::new();
        // Strict mode: an intent stands while a call may be under way.
        let mut intent_standing = false;
        let mut budget = RetryBudget::new(&self.delivery());
        let park = self.parks.key_of(Some(event));
        let mut calls = 0u32;
        let mut first_attempt = None;
        loop {
            if !self.wait_while_held(job, &park, cancel).await {
                return EventEnd::Abandoned;
            }
            let queued = Instant::now();
            // The call slot first, then the gate: at most `max_in_flight` calls
            // are past the gate, so a ban or an open breaker stops everyone else.
            let permit = tokio::select! {
                permit = async {
                    self.parks.within_ceiling(&park).await;
                    self.calls.acquire(&park).await
                } => permit,
                _ = cancel.cancelled() => return EventEnd::Abandoned,
            };
            let at_gate = Instant::now();
            let admitted = tokio::select! {
                admitted = self.gate.pass() => admitted,
                _ = cancel.cancelled() => return EventEnd::Abandoned,
            };
            job.watch.passed_gate(admitted.held, at_gate.elapsed());
            let pass = admitted.pass;
            let waiting = Instant::now();
            let snapshot = tokio::select! {
                snapshot = self.budget.until_ready(&park) => snapshot,
                _ = cancel.cancelled() => { self.gate.release(pass); return EventEnd::Abandoned; }
            };
            job.watch
                .took_token(waiting.elapsed(), snapshot.remaining_burst_capacity());
            self.waits.record(&park, queued.elapsed());
            if pass == Pass::Normal && self.gate.status().closed() {
                // A ban, a halt or an open breaker began while this call waited for a token.
                continue;
            }
            if strict
                && !intent_standing
                && let Some(filed) = &filed
            {
                if !filed
                    .write(&job.source, Outcome::Intent, |_| {}, cancel)
                    .await
                {
                    self.gate.release(pass);
                    return EventEnd::Abandoned;
                }
                intent_standing = true;
            }
            // Signed here, after every wait: the timestamp is fresh on each attempt.
            let call = job.watch.sending();
            // Boxed: a task waiting for its turn stays small (see docs/performance.md).
            let report = Box::pin(self.client.send(&dto)).await;
            // Strict mode keeps the call slot until the call's outcome is
            // written, so a replica never has more intents without an
            // outcome than call slots: a crash leaves at most
            // `delivery.max_in_flight` unknown outcomes.
            let slot = strict.then_some(permit);
            calls += 1;
            let now = Utc::now();
            first_attempt.get_or_insert(now);
            let disposition = self.classifier.classify(&report.outcome);
            job.watch.answered(call, &report, &disposition);
            let halted_before = self.gate.status().halted.is_some();
            let charge = self.gate.record(pass, &disposition);
            self.budget.answered(&disposition);
            let failure = |class: DeadLetterClass, reason: &str| {
                Failure {
                    class,
                    reason: reason.to_owned(),
                    message: String::new(),
                    top_code: None,
                    top_sub_code: None,
                    request_id: None,
                    attempts: calls,
                    first_attempt,
                    last_attempt: Some(now),
                    trace_id: None,
                }
                .with_outcome(&report.outcome, report.request_id.as_deref())
            };
            match disposition {
                Disposition::Delivered => {
                    if let Some(filed) = &filed {
                        let request_id = report.request_id.clone();
                        let trace_id = job.watch.trace_id();
                        let fill = |entry: &mut Entry| {
                            entry.request_id = request_id;
                            entry.trace_id = trace_id;
                        };
                        if !filed
                            .write(&job.source, Outcome::Accepted, fill, &after_call)
                            .await
                        {
                            return EventEnd::Abandoned;
                        }
                    }
                    return EventEnd::Delivered;
                }
                Disposition::DeadLetter { cause } => {
                    let failure = failure(DeadLetterClass::Rejected, cause.as_str());
                    return self
                        .dead_letter_filed(job, failure, filed.as_ref(), cancel, &after_call)
                        .await;
                }
                Disposition::Halt { cause } => {
                    // Refused for the configuration, not accepted.
                    if !withdraw(&filed, &job.source, &mut intent_standing, &after_call).await {
                        return EventEnd::Abandoned;
                    }
                    // The gate is now halted; the loop waits there for a probe.
                    job.watch.halted(
                        cause,
                        !halted_before,
                        self.client.endpoint().as_str(),
                        &report,
                    );
                }
                Disposition::Retry { cause, wait } => {
                    if strict
                        && cause.may_have_been_accepted()
                        && let Some(filed) = &filed
                    {
                        // Never sent again by itself: parked as unknown.
                        let why = format!("no answer read ({})", cause.as_str());
                        let reason = why.clone();
                        let fill = |entry: &mut Entry| entry.reason = Some(reason);
                        if !filed
                            .write(&job.source, Outcome::Unknown, fill, &after_call)
                            .await
                        {
                            return EventEnd::Abandoned;
                        }
                        return EventEnd::Parked {
                            outcome: Outcome::Unknown,
                            why,
                        };
                    }
                    // Refused, not accepted.
                    if !withdraw(&filed, &job.source, &mut intent_standing, &after_call).await {
                        return EventEnd::Abandoned;
                    }
                    if charge == RetryCharge::Free {
                        continue;
                    }
                    budget.retune(&self.delivery());
                    match budget.charge(report.elapsed, wait) {
                        NextAttempt::Exhausted => {
                            let failure =
                                failure(DeadLetterClass::RetriesExhausted, cause.as_str());
                            return self
                                .dead_letter_filed(
                                    job,
                                    failure,
                                    filed.as_ref(),
                                    cancel,
                                    &after_call,
                                )
                                .await;
                        }
                        NextAttempt::After(delay) => {
                            drop(slot);
                            job.watch.backing_off(delay);
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = cancel.cancelled() => return EventEnd::Abandoned,
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Deliverer {
    /// `[delivery]` as in force now.
    pub(super) fn delivery(&self) -> DeliverySettings {
        self.delivery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tuned settings: the call slots resize, retries take the new limits.
    pub(super) fn retune(&self, settings: &DeliverySettings) {
        self.calls.set_capacity(settings.max_in_flight);
        *self.delivery.write().unwrap_or_else(|p| p.into_inner()) = settings.clone();
    }

    /// Waits while a pause holds the event (its partition, its park, or
    /// everything); false when cancelled first. Nothing past a held event
    /// is committed: its offset stays unfinished.
    async fn wait_while_held(
        &self,
        job: &Job,
        park: &Arc<str>,
        cancel: &CancellationToken,
    ) -> bool {
        let Some(control) = &self.control else {
            return true;
        };
        let id = &job.source.id;
        // Most events are not held: read the current view, and subscribe to
        // its changes only when one is (`wait_for` looks at the view first).
        if !control.view().holds(id, Some(park)) {
            return true;
        }
        let mut changes = control.changes();
        self.metrics.events_held.inc();
        job.watch.held();
        let released = tokio::select! {
            released = changes.wait_for(|view| !view.holds(id, Some(park))) => released.is_ok(),
            _ = cancel.cancelled() => false,
        };
        self.metrics.events_held.dec();
        released
    }
}

impl Deliverer {
    /// Judges the event by the ledger: `Ok` to send it (filed under its
    /// key), or how its task ends without a call.
    async fn file<'l>(
        &self,
        ledger: &'l Ledger,
        job: &Job,
        event: &PaymentEvent,
        dto: &str,
        cancel: &CancellationToken,
    ) -> Result<Filed<'l>, EventEnd> {
        let key = ledger.key(event);
        let path = path_of(self.replay, &job.source);
        let resend = self.resend_delivered || resend_asked(&job.source);
        let admitted = ledger
            .admit(&job.source, &key, dto_hash(dto), resend, cancel)
            .await;
        let park = |outcome| Entry::of(outcome, event, dto, ledger::position_of(&job.source), path);
        match admitted {
            Admit::Cancelled => Err(EventEnd::Abandoned),
            Admit::Duplicate { earlier_offset } => Err(EventEnd::Duplicate {
                path,
                earlier: format!("{}@{earlier_offset}", job.source.id),
            }),
            Admit::AlreadyParked { outcome } => Err(EventEnd::Parked {
                outcome,
                why: "parked already".into(),
            }),
            Admit::Park { outcome, behind } => {
                let mut entry = park(outcome);
                let why = match &behind {
                    Some(behind) => format!("behind the unknown outcome of {behind}"),
                    None => "a call went out before a crash and its answer was never read".into(),
                };
                entry.behind = behind;
                entry.reason = Some(why.clone());
                if ledger.write(&job.source.id, &key, &entry, cancel).await {
                    Err(EventEnd::Parked { outcome, why })
                } else {
                    Err(EventEnd::Abandoned)
                }
            }
            Admit::Send { correction } => {
                if correction {
                    job.watch.correction(path);
                }
                // The template keeps the DTO only where strict mode may park it.
                let template = match ledger.mode() {
                    LedgerMode::Strict => Outcome::Intent,
                    _ => Outcome::Accepted,
                };
                Ok(Filed {
                    ledger,
                    key,
                    entry: park(template),
                })
            }
        }
    }

    /// Dead-letters the event, then records it in the ledger.
    async fn dead_letter_filed(
        &self,
        job: &Job,
        failure: Failure,
        filed: Option<&Filed<'_>>,
        cancel: &CancellationToken,
        after_call: &CancellationToken,
    ) -> EventEnd {
        let class = failure.class;
        let end = self.dead_letter(job, failure, cancel).await;
        if let Some(filed) = filed
            && matches!(
                end,
                EventEnd::DeadLettered { .. } | EventEnd::DeadLetteredBefore { .. }
            )
        {
            let fill = |entry: &mut Entry| entry.class = Some(class.as_str().to_owned());
            // The dead-letter topic holds the event whatever happens here.
            let _written = filed
                .write(&job.source, Outcome::DeadLettered, fill, after_call)
                .await;
        }
        end
    }
}
