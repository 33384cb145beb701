//! The ledger as a redrive to the API reads it: which keys Miaojie already
//! holds with the same DTO (skipped), and the `accepted` entries a redrive
//! adds for what it sends.

use std::collections::HashMap;

use anyhow::Context;

use super::DeadLetterRecord;
use super::reader::consumer;
use crate::config::Settings;
use crate::event::PaymentEvent;
use crate::kafka;
use crate::ledger::entry::{Entry, LedgerKey, Outcome, Path, Position, dto_hash};
use crate::ledger::topic::EntryWriter;

/// The ledger as a redrive to the API reads it: what each key holds, and the
/// writer of the outcomes it adds.
pub(super) struct RedriveLedger {
    /// Key text → (outcome, DTO hash).
    keys: HashMap<String, (Outcome, Option<u64>)>,
    partitions: i32,
    writer: EntryWriter,
}

/// A redriven event as the ledger files it.
pub(super) enum Filed {
    Accepted,
    Send {
        key: LedgerKey,
        entry: Box<Entry>,
        ledger_partition: i32,
    },
}

impl RedriveLedger {
    pub(super) async fn read(settings: &Settings) -> anyhow::Result<RedriveLedger> {
        let writer = EntryWriter::new(settings)?;
        let consumer = consumer(settings, &format!("{}.redrive", settings.kafka.group_id))?;
        let partitions = kafka::queries::topic_partitions(&consumer, writer.topic())?
            .map_or(1, |partitions| partitions.len() as i32);
        let entries = crate::ledger::report::read(settings).await?;
        let keys = entries
            .into_iter()
            .filter_map(|read| {
                let entry = read.entry?;
                Some((read.key.text, (entry.outcome, entry.dto_hash_value())))
            })
            .collect();
        Ok(RedriveLedger {
            keys,
            partitions,
            writer,
        })
    }

    pub(super) fn file(
        &self,
        settings: &Settings,
        record: &DeadLetterRecord,
        event: &PaymentEvent,
        dto: &str,
    ) -> Filed {
        let key = LedgerKey::of(event, &settings.ledger.key_fields);
        if let Some((Outcome::Accepted, Some(hash))) = self.keys.get(&key.text)
            && *hash == dto_hash(dto)
        {
            return Filed::Accepted;
        }
        let source_partition = record.source_partition.unwrap_or(0);
        let position = Position {
            topic: record.source_topic.clone(),
            partition: source_partition,
            offset: record.source_offset.unwrap_or(-1),
        };
        Filed::Send {
            entry: Box::new(Entry::of(
                Outcome::Accepted,
                event,
                dto,
                position,
                Path::Redrive,
            )),
            key,
            ledger_partition: crate::ledger::topic::partition_for(
                source_partition,
                self.partitions,
            ),
        }
    }

    /// Records an accepted redrive.
    pub(super) async fn accepted(
        &self,
        filed: Filed,
        request_id: Option<String>,
    ) -> anyhow::Result<()> {
        let Filed::Send {
            key,
            mut entry,
            ledger_partition,
        } = filed
        else {
            return Ok(());
        };
        entry.request_id = request_id;
        self.writer
            .write(ledger_partition, &key.text, &entry)
            .await
            .context("cannot record the redrive in the ledger")
    }
}
