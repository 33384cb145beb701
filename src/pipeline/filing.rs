//! An event's place in the delivery ledger while its task runs: the entry
//! each outcome is made from, the outcomes written after each answer, the
//! withdrawal of a strict-mode intent the platform refused, and the path
//! (live, replay, redrive) an event is filed under.

use tokio_util::sync::CancellationToken;

use crate::dead_letter::SourceRecord;
use crate::ledger::Ledger;
use crate::ledger::entry::{Entry, LedgerKey, Outcome, Path};

/// An event's place in the ledger while its task runs.
pub(crate) struct Filed<'a> {
    pub(crate) ledger: &'a Ledger,
    pub(crate) key: LedgerKey,
    /// The entry as first written; each outcome is made from it.
    pub(crate) entry: Entry,
}

impl Filed<'_> {
    /// Writes the event's `outcome`; false when cancelled first.
    pub(crate) async fn write(
        &self,
        source: &SourceRecord,
        outcome: Outcome,
        fill: impl FnOnce(&mut Entry),
        cancel: &CancellationToken,
    ) -> bool {
        let mut entry = self.entry.becomes(outcome, self.entry.path);
        fill(&mut entry);
        self.ledger
            .write(&source.id, &self.key, &entry, cancel)
            .await
    }
}

/// Strict mode: withdraws the standing intent of a call the platform
/// refused (`failed`: it was not accepted), so a crash before the next
/// attempt leaves no unknown outcome. False when the write was cancelled.
pub(crate) async fn withdraw(
    filed: &Option<Filed<'_>>,
    source: &SourceRecord,
    intent_standing: &mut bool,
    after_call: &CancellationToken,
) -> bool {
    let Some(filed) = filed.as_ref().filter(|_| *intent_standing) else {
        return true;
    };
    let written = filed
        .write(source, Outcome::Failed, |_| {}, after_call)
        .await;
    *intent_standing = !written;
    written
}

/// The path of an event by where it came from.
pub(crate) fn path_of(replay: bool, source: &SourceRecord) -> Path {
    if replay {
        Path::Replay
    } else if source
        .payload
        .headers
        .iter()
        .any(|(name, _)| name == crate::dead_letter::header::REDRIVEN_FROM)
    {
        Path::Redrive
    } else {
        Path::Live
    }
}

/// Whether the record asks to be sent even if its key was accepted
/// (`paysync dlq redrive --resend-delivered`).
pub(crate) fn resend_asked(source: &SourceRecord) -> bool {
    source
        .payload
        .headers
        .iter()
        .any(|(name, _)| name == crate::dead_letter::header::RESEND_DELIVERED)
}
