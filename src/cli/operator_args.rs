//! The flags of the operator's commands (clap derive): `dlq`, `ledger`,
//! `reconcile` and `control`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with their reason, code, message and source position.
    Inspect(DlqInspectArgs),
    /// Send selected dead letters back to their source topic, or straight to the API.
    Redrive(DlqRedriveArgs),
}

/// Selects dead letters.
#[derive(Debug, Args)]
pub struct DlqFilterArgs {
    /// invalid_event, rejected or retries_exhausted.
    #[arg(long)]
    pub class: Option<String>,
    /// The paysync.error.reason header, e.g. business_rejected.
    #[arg(long)]
    pub reason: Option<String>,
    /// The TOP code, e.g. 41.
    #[arg(long)]
    pub code: Option<String>,
    /// Dead-lettered at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Dead-lettered before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// The TOP sub_code, e.g. isv.invalid-parameter.
    #[arg(long)]
    pub sub_code: Option<String>,
    /// The event's park_id.
    #[arg(long)]
    pub park: Option<String>,
    /// The event's order_id.
    #[arg(long)]
    pub order: Option<String>,
}

impl DlqFilterArgs {
    pub(super) fn filter(&self) -> crate::dead_letter::reader::Filter {
        crate::dead_letter::reader::Filter {
            class: self.class.clone(),
            reason: self.reason.clone(),
            code: self.code.clone(),
            since: self.since,
            until: self.until,
            sub_code: self.sub_code.clone(),
            park: self.park.clone(),
            order: self.order.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqInspectArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    #[arg(long, value_enum, default_value_t = crate::dead_letter::redrive::Target::Source)]
    pub to: crate::dead_letter::redrive::Target,
    /// The group that keeps the redrive's cursor (default: one per filter,
    /// <kafka.group_id>.redrive, then .<hash of the filter> when filtered).
    #[arg(long)]
    pub group: Option<String>,
    /// Records already redriven this many times are held back (they stay in
    /// the dead-letter topic), so a record that keeps failing cannot circle.
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
    /// Show what would be redriven; send nothing and keep the cursor.
    #[arg(long)]
    pub dry_run: bool,
    /// Send records the ledger holds as accepted with the same DTO too.
    #[arg(long)]
    pub resend_delivered: bool,
    /// To the API: its weight among the callers sharing the group's rate
    /// (default control.backfill_weight).
    #[arg(long)]
    pub weight: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Every entry of one order: outcomes, request ids, trace ids, positions.
    Show(LedgerShowArgs),
    /// Events whose outcome is unknown, held behind one, or in flight.
    Unknown(LedgerUnknownArgs),
    /// Release parked events: resend them, or record them as delivered.
    Resolve(LedgerResolveArgs),
    /// One day's entries by outcome, per park.
    Stats(LedgerStatsArgs),
}

#[derive(Debug, Args)]
pub struct LedgerShowArgs {
    #[arg(long)]
    pub config: PathBuf,
    pub order_id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LedgerUnknownArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("resolution").required(true))]
pub struct LedgerResolveArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Send the unknown events again (Miaojie does not hold them).
    #[arg(long, group = "resolution")]
    pub resend: bool,
    /// Record the unknown events as accepted (Miaojie holds them).
    #[arg(long, group = "resolution")]
    pub delivered: bool,
    /// The orders to resolve (repeatable).
    #[arg(long = "order", required_unless_present = "all")]
    pub orders: Vec<String>,
    /// Every parked order.
    #[arg(long, conflicts_with = "orders")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct LedgerStatsArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The payment date (GMT+8): YYYY-MM-DD, or `yesterday`.
    #[arg(long, value_parser = day)]
    pub date: chrono::NaiveDate,
    #[arg(long)]
    pub json: bool,
}

/// A day: `YYYY-MM-DD`, or `yesterday` (in GMT+8, the API's clock).
fn day(text: &str) -> Result<chrono::NaiveDate, String> {
    if text == "yesterday" {
        let today = chrono::Utc::now()
            .with_timezone(&crate::gmt8::offset())
            .date_naive();
        return today
            .pred_opt()
            .ok_or_else(|| "no day before today".to_owned());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|error| format!("{text:?} is not YYYY-MM-DD or yesterday: {error}"))
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The payment date (GMT+8) to report: YYYY-MM-DD, or `yesterday`.
    #[arg(long, value_parser = day)]
    pub date: chrono::NaiveDate,
    /// Only this park.
    #[arg(long)]
    pub park: Option<String>,
    /// Send the report through taobao.taojie.parking.orderamount.sync.
    #[arg(long)]
    pub send: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Change settings in every running paysync, in place (KEY=VALUE…;
    /// KEY= returns a key to the configuration file's value).
    Set(ControlSetArgs),
    /// Hold the events of a park, a partition or all: nothing past them is
    /// committed; the pause outlives restarts and rebalances.
    Pause(ControlPauseArgs),
    /// Release what a pause holds; held events go out in order.
    Resume(ControlPauseArgs),
    /// The tuned settings, pauses, callers sharing the rate and recent changes.
    Show(ControlShowArgs),
}

/// Who changes what, and why (kept in the audit log).
#[derive(Debug, Args)]
pub struct ControlAuditArgs {
    /// Why (kept with the change).
    #[arg(long, default_value = "")]
    pub why: String,
    /// Who (default: $USER@host).
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Debug, Args)]
pub struct ControlSetArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// KEY=VALUE pairs: rate, min_rate, mode, burst, max_in_flight,
    /// max_attempts, max_retry_elapsed_ms, backoff_initial_ms,
    /// backoff_max_ms (or their full delivery.* names).
    #[arg(required = true)]
    pub assignments: Vec<String>,
    /// Roll the change back if the gateway bans the app key within this many seconds.
    #[arg(long)]
    pub guard_secs: Option<u64>,
    #[command(flatten)]
    pub audit: ControlAuditArgs,
}

#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false, args = ["park", "partition", "all"])]
pub struct ControlPauseArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// A car park (the `fairness.key` value of its events).
    #[arg(long)]
    pub park: Option<String>,
    /// A source partition, as TOPIC/N.
    #[arg(long)]
    pub partition: Option<String>,
    /// Every event.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub audit: ControlAuditArgs,
}

#[derive(Debug, Args)]
pub struct ControlShowArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}
