//! The operator's side of the ledger: `paysync ledger show|unknown|stats`,
//! the resolution of parked events (`ledger resolve`), and the daily
//! `orderamount.sync` report (`paysync reconcile`). Each reads the whole
//! topic ([`super::topic::read_all`]): these are an operator's commands, not
//! the delivery path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::NaiveDate;
use serde::Serialize;

use super::entry::{Entry, Outcome, Path};
use super::topic::{EntryWriter, ReadEntry, read_all};
use crate::backoff::backoff;
use crate::config::{DeliverySettings, ReconcileSettings, ReportedIds, Settings};
use crate::control::Pace;
use crate::top::classify::{Classifier, Disposition};
use crate::top::client::{CallReport, TopClient};

/// An entry as the commands print it.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub key: String,
    pub ledger_partition: i32,
    pub ledger_offset: i64,
    #[serde(flatten)]
    pub entry: Entry,
}

impl Shown {
    fn of(read: &ReadEntry) -> Option<Shown> {
        Some(Shown {
            key: read.key.shown(),
            ledger_partition: read.partition,
            ledger_offset: read.offset,
            entry: read.entry.clone()?,
        })
    }

    /// One line for a table.
    pub fn line(&self) -> String {
        let e = &self.entry;
        format!(
            "{:<14} {:<28} type={} park={} fee={} pay_time={} source={} at={}{}{}{}",
            e.outcome.as_str(),
            self.key,
            e.order_type,
            e.park_id,
            e.pay_fee,
            e.pay_time,
            e.source,
            e.at.to_rfc3339(),
            e.request_id
                .as_deref()
                .map(|id| format!(" request_id={id}"))
                .unwrap_or_default(),
            e.trace_id
                .as_deref()
                .map(|id| format!(" trace_id={id}"))
                .unwrap_or_default(),
            e.reason
                .as_deref()
                .map(|why| format!(" reason={why:?}"))
                .unwrap_or_default(),
        )
    }
}

/// Reads the ledger on a blocking thread.
pub async fn read(settings: &Settings) -> anyhow::Result<Vec<ReadEntry>> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || read_all(&settings)).await?
}

/// Every entry of `order_id`.
pub fn show(entries: &[ReadEntry], order_id: &str) -> Vec<Shown> {
    entries
        .iter()
        .filter(|read| read.entry.as_ref().is_some_and(|e| e.order_id == order_id))
        .filter_map(Shown::of)
        .collect()
}

/// Events whose outcome is unknown, parked behind one, or an intent without
/// outcome (a call in flight, or one whose replica died before its next
/// owner read the event again).
pub fn unknown(entries: &[ReadEntry]) -> Vec<Shown> {
    entries
        .iter()
        .filter(|read| {
            read.entry.as_ref().is_some_and(|e| {
                matches!(
                    e.outcome,
                    Outcome::Unknown | Outcome::Held | Outcome::Intent
                )
            })
        })
        .filter_map(Shown::of)
        .collect()
}

/// The GMT+8 date of an entry's payment.
fn pay_date(entry: &Entry) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(entry.pay_time.get(..10)?, "%Y-%m-%d").ok()
}

/// One day's entries by outcome, per park (payment date, GMT+8).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayStats {
    pub date: String,
    /// Outcome → entries (`accepted_payment`, `accepted_refund`, …).
    pub outcomes: BTreeMap<String, usize>,
    /// Park → outcome → entries.
    pub parks: BTreeMap<String, BTreeMap<String, usize>>,
}

fn outcome_name(entry: &Entry) -> String {
    match (entry.outcome, entry.order_type) {
        (Outcome::Accepted, 2) => "accepted_refund".into(),
        (Outcome::Accepted, _) => "accepted_payment".into(),
        (other, _) => other.as_str().into(),
    }
}

pub fn stats(entries: &[ReadEntry], date: NaiveDate) -> DayStats {
    let mut stats = DayStats {
        date: date.to_string(),
        ..DayStats::default()
    };
    for entry in entries.iter().filter_map(|read| read.entry.as_ref()) {
        if pay_date(entry) != Some(date) {
            continue;
        }
        let name = outcome_name(entry);
        *stats.outcomes.entry(name.clone()).or_insert(0) += 1;
        *stats
            .parks
            .entry(entry.park_id.clone())
            .or_default()
            .entry(name)
            .or_insert(0) += 1;
    }
    stats
}

/// One line of `orderamount.sync`'s `order_amount_dtos`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderAmountLine {
    pub order_type: String,
    pub order_amount: usize,
    pub order_ids: Vec<String>,
    pub order_date: String,
    pub park_id: String,
}

/// The day's report: `parking_order_amount_dto` per call.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    pub date: String,
    pub total_amount: usize,
    pub lines: Vec<OrderAmountLine>,
    /// Events of the day the ledger holds as unknown or held: the report
    /// may be short by these.
    pub unresolved: usize,
}

/// The business parameter of one `orderamount.sync` call.
#[derive(Debug, Clone, Serialize)]
pub struct OrderAmountDto<'a> {
    pub total_amount: usize,
    pub order_amount_dtos: &'a [OrderAmountLine],
}

/// Counts, per park, the distinct orders the API accepted a payment of
/// (and refunds, with `reconcile.count_refunds`) on `date` (GMT+8).
pub fn reconcile(
    entries: &[ReadEntry],
    date: NaiveDate,
    park: Option<&str>,
    settings: &ReconcileSettings,
) -> Reconciliation {
    let mut parks: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut unresolved = 0;
    for entry in entries.iter().filter_map(|read| read.entry.as_ref()) {
        if pay_date(entry) != Some(date) || park.is_some_and(|p| p != entry.park_id) {
            continue;
        }
        if entry.outcome.parked() || entry.outcome == Outcome::Intent {
            unresolved += 1;
        }
        let counted = entry.order_type == 1 || settings.count_refunds;
        if entry.outcome != Outcome::Accepted || !counted {
            continue;
        }
        parks
            .entry(&entry.park_id)
            .or_default()
            .insert(&entry.order_id);
        let id = match settings.order_ids {
            ReportedIds::None => None,
            ReportedIds::OrderId => Some(entry.order_id.as_str()),
            ReportedIds::PayOrderId => entry.pay_order_id.as_deref(),
        };
        if let Some(id) = id {
            ids.entry(&entry.park_id).or_default().insert(id);
        }
    }
    let order_date = format!("{date} 00:00:00");
    let lines: Vec<OrderAmountLine> = parks
        .iter()
        .map(|(park_id, orders)| OrderAmountLine {
            order_type: settings.order_type.clone(),
            order_amount: orders.len(),
            order_ids: ids
                .get(park_id)
                .map(|ids| ids.iter().map(|id| (*id).to_owned()).collect())
                .unwrap_or_default(),
            order_date: order_date.clone(),
            park_id: (*park_id).to_owned(),
        })
        .collect();
    Reconciliation {
        date: date.to_string(),
        total_amount: lines.iter().map(|line| line.order_amount).sum(),
        lines,
        unresolved,
    }
}

impl Reconciliation {
    /// The calls' business parameters, `parks_per_call` lines each; each
    /// call's `total_amount` is the sum of its lines.
    pub fn calls(&self, parks_per_call: usize) -> Vec<String> {
        self.lines
            .chunks(parks_per_call.max(1))
            .map(|lines| {
                serde_json::to_string(&OrderAmountDto {
                    total_amount: lines.iter().map(|line| line.order_amount).sum(),
                    order_amount_dtos: lines,
                })
                .expect("strings and numbers always serialise")
            })
            .collect()
    }
}

/// How one call of an operator's command ended.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub what: String,
    pub accepted: bool,
    pub request_id: Option<String>,
    pub detail: String,
}

fn sent(what: String, report: &CallReport, disposition: &Disposition) -> Sent {
    Sent {
        what,
        accepted: *disposition == Disposition::Delivered,
        request_id: report.request_id.clone(),
        detail: disposition.describe(),
    }
}

/// The least time between two calls of an operator's command: a quarter of
/// the configured rate, like a replay's default, so a running pipeline
/// keeps the rest of the quota.
fn spacing(settings: &Settings) -> Duration {
    Duration::from_secs_f64(4.0 / f64::from(settings.delivery.rate_limit_per_sec.max(1)))
}

/// Sends the day's report, one call per `reconcile.parks_per_call` parks,
/// paced by `pace` (its share of the group's rate) or, without the control
/// topic, by [`spacing`].
pub async fn send_reconciliation(
    settings: &Settings,
    report: &Reconciliation,
    pace: Option<&dyn Pace>,
) -> anyhow::Result<Vec<Sent>> {
    let client = settings.top_client()?;
    let classifier = settings.classifier();
    let mut results = Vec::new();
    for (i, call) in report
        .calls(settings.reconcile.parks_per_call)
        .iter()
        .enumerate()
    {
        match pace {
            Some(pace) => pace.turn().await,
            None if i > 0 => tokio::time::sleep(spacing(settings)).await,
            None => {}
        }
        let answer = client.send_order_amount(call).await;
        let disposition = classifier.classify(&answer.outcome);
        if let Some(pace) = pace {
            pace.answered(&disposition);
        }
        results.push(sent(
            format!("report {} call {}", report.date, i + 1),
            &answer,
            &disposition,
        ));
    }
    Ok(results)
}

/// Sends one stored DTO; a call the platform refused (not accepted: flow
/// control, an `isp.*` error) is sent again with backoff, up to
/// `delivery.max_attempts` calls. One whose answer was lost (a timeout,
/// say) is not: it may have been accepted, and stays as it was.
async fn send_refused_again(
    client: &TopClient,
    classifier: Classifier,
    delivery: &DeliverySettings,
    dto: &str,
) -> (CallReport, Disposition) {
    let mut attempt = 0;
    loop {
        let answer = client.send(dto).await;
        let disposition = classifier.classify(&answer.outcome);
        attempt += 1;
        match disposition {
            Disposition::Retry { cause, wait }
                if !cause.may_have_been_accepted() && attempt < delivery.max_attempts =>
            {
                let delay = wait.unwrap_or_else(|| {
                    backoff(
                        attempt - 1,
                        delivery.backoff_initial_ms,
                        delivery.backoff_max_ms,
                    )
                });
                tokio::time::sleep(delay).await;
            }
            _ => return (answer, disposition),
        }
    }
}

/// What `ledger resolve` does with an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Send it again (the operator checked Miaojie does not hold it).
    Resend,
    /// Record it as accepted (the operator checked Miaojie holds it).
    Delivered,
}

/// What a resolution did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resolved {
    pub marked_delivered: usize,
    pub sent: Vec<Sent>,
    /// Orders left unresolved, and why.
    pub left: Vec<String>,
}

/// Resolves the unknown outcomes of `orders` (all of them when empty) with
/// `resolution`, then sends the events held behind them, in their source
/// order. An order whose call is not accepted is left as it was (unknown or
/// held) and named. Reads the ledger again after each round: a pipeline may
/// park another event of the order meanwhile.
pub async fn resolve(
    settings: &Settings,
    orders: &[String],
    resolution: Resolution,
) -> anyhow::Result<Resolved> {
    let client = settings.top_client()?;
    let classifier = settings.classifier();
    let writer = EntryWriter::new(settings)?;
    let mut done = Resolved::default();
    let mut given_up: BTreeSet<String> = BTreeSet::new();
    let mut first_call = true;
    for _round in 0..10 {
        let entries = read(settings).await?;
        let mut pending: BTreeMap<String, Vec<&ReadEntry>> = BTreeMap::new();
        for read in &entries {
            let Some(entry) = &read.entry else { continue };
            let wanted = orders.is_empty() || orders.contains(&entry.order_id);
            if wanted && entry.outcome.parked() && !given_up.contains(&entry.order_id) {
                pending
                    .entry(entry.order_id.clone())
                    .or_default()
                    .push(read);
            }
        }
        if pending.is_empty() {
            break;
        }
        for (order_id, mut parked) in pending {
            // Unknown first (what the others wait behind), then in source order.
            parked.sort_by_key(|read| {
                let entry = read.entry.as_ref().expect("filtered");
                (entry.outcome != Outcome::Unknown, entry.source.offset)
            });
            for read in parked {
                let entry = read.entry.as_ref().expect("filtered");
                let write = |outcome: Outcome, fill: &dyn Fn(&mut Entry)| {
                    let mut next = entry.becomes(outcome, Path::Resolve);
                    fill(&mut next);
                    let writer = &writer;
                    async move { writer.write(read.partition, &read.key.text, &next).await }
                };
                if entry.outcome == Outcome::Unknown && resolution == Resolution::Delivered {
                    write(Outcome::Accepted, &|next: &mut Entry| {
                        next.reason = Some("resolved by an operator: Miaojie holds it".into());
                    })
                    .await?;
                    done.marked_delivered += 1;
                    continue;
                }
                let Some(dto) = &entry.dto else {
                    done.left.push(format!(
                        "{order_id}: {} holds no DTO to send",
                        read.key.shown()
                    ));
                    given_up.insert(order_id.clone());
                    break;
                };
                if !first_call {
                    tokio::time::sleep(spacing(settings)).await;
                }
                first_call = false;
                let (answer, disposition) =
                    send_refused_again(&client, classifier, &settings.delivery, dto).await;
                let result = sent(read.key.shown(), &answer, &disposition);
                let accepted = result.accepted;
                let request_id = result.request_id.clone();
                done.sent.push(result);
                if !accepted {
                    done.left.push(format!(
                        "{order_id}: {} was not accepted ({}); it stays {}",
                        read.key.shown(),
                        disposition.describe(),
                        entry.outcome.as_str()
                    ));
                    given_up.insert(order_id.clone());
                    break;
                }
                write(Outcome::Accepted, &|next: &mut Entry| {
                    next.request_id = request_id.clone();
                })
                .await?;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::OrderType;
    use crate::ledger::entry::KeyField;
    use crate::ledger::entry::{LedgerKey, Position};

    fn read(
        order_id: &str,
        park: &str,
        order_type: OrderType,
        outcome: Outcome,
        offset: i64,
    ) -> ReadEntry {
        let event = crate::event::PaymentEvent {
            car_no: "浙A1".into(),
            order_id: order_id.into(),
            park_id: park.into(),
            // 2026-12-05 23:30 GMT+8.
            pay_time: chrono::DateTime::parse_from_rfc3339("2026-12-05T15:30:00Z")
                .unwrap()
                .into(),
            order_type,
            pay_fee: 500,
            pay_order_id: Some(format!("w{offset}")),
            pay_method: None,
        };
        let position = Position {
            topic: "t".into(),
            partition: 0,
            offset,
        };
        ReadEntry {
            partition: 0,
            offset,
            key: LedgerKey::of(&event, &KeyField::DEFAULT),
            entry: Some(Entry::of(outcome, &event, "{}", position, Path::Live)),
        }
    }

    #[test]
    fn the_report_counts_accepted_payments_per_park_by_payment_date() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let entries = vec![
            read("o1", "p1", OrderType::Payment, Outcome::Accepted, 1),
            // Two payments of one order: one order.
            read("o1", "p1", OrderType::Payment, Outcome::Accepted, 2),
            read("o2", "p1", OrderType::Payment, Outcome::Accepted, 3),
            read("o2", "p1", OrderType::Refund, Outcome::Accepted, 4),
            read("o3", "p2", OrderType::Payment, Outcome::Accepted, 5),
            read("o4", "p2", OrderType::Payment, Outcome::DeadLettered, 6),
            read("o5", "p2", OrderType::Payment, Outcome::Unknown, 7),
        ];
        let settings = ReconcileSettings::default();
        let report = reconcile(&entries, day, None, &settings);
        let counts: Vec<(&str, usize)> = report
            .lines
            .iter()
            .map(|line| (line.park_id.as_str(), line.order_amount))
            .collect();
        assert_eq!(counts, [("p1", 2), ("p2", 1)]);
        assert_eq!(report.total_amount, 3);
        assert_eq!(report.unresolved, 1);
        assert_eq!(report.lines[0].order_date, "2026-12-05 00:00:00");
        assert!(report.lines[0].order_ids.is_empty(), "no ids by default");
        let calls = report.calls(1);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0],
            r#"{"total_amount":2,"order_amount_dtos":[{"order_type":"ISV_ORDER","order_amount":2,"order_ids":[],"order_date":"2026-12-05 00:00:00","park_id":"p1"}]}"#
        );
        assert_eq!(report.calls(10).len(), 1);
        let one_park = reconcile(&entries, day, Some("p2"), &settings);
        assert_eq!(one_park.total_amount, 1);
        let next_day = reconcile(&entries, day.succ_opt().unwrap(), None, &settings);
        assert_eq!(next_day.total_amount, 0, "the payment date is GMT+8's");
        let with_ids = ReconcileSettings {
            order_ids: ReportedIds::OrderId,
            ..ReconcileSettings::default()
        };
        assert_eq!(
            reconcile(&entries, day, None, &with_ids).lines[0].order_ids,
            ["o1", "o2"]
        );
    }

    #[test]
    fn stats_and_unknown_name_what_is_parked() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let entries = vec![
            read("o1", "p1", OrderType::Payment, Outcome::Accepted, 1),
            read("o2", "p1", OrderType::Refund, Outcome::Accepted, 2),
            read("o3", "p2", OrderType::Payment, Outcome::Unknown, 3),
            read("o3", "p2", OrderType::Refund, Outcome::Held, 4),
        ];
        let stats = stats(&entries, day);
        assert_eq!(stats.outcomes["accepted_payment"], 1);
        assert_eq!(stats.outcomes["accepted_refund"], 1);
        assert_eq!(stats.parks["p2"]["unknown"], 1);
        let parked: Vec<String> = unknown(&entries).iter().map(|s| s.key.clone()).collect();
        assert_eq!(parked, ["o3/1/w3", "o3/2/w4"]);
        assert_eq!(show(&entries, "o3").len(), 2);
    }
}
