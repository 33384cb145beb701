//! What a commit carries and what its answer means: each partition's commit
//! point (position, completion map, dead-letter look-back time) as the
//! metadata text the broker stores, that text read back on assignment, and
//! the one broker refusal that changes what is committed next (a map too
//! large for `offset.metadata.max.bytes`).

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::completion::{self, CompletionMap};
use crate::kafka::PartitionId;
use crate::metrics::Metrics;

/// A partition's commit point: position and completion map, and the
/// dead-letter look-back time.
pub(super) type CommitPoint = (PartitionId, CompletionMap, i64);

/// The commit list: each position with its metadata within `budget` bytes
/// (no metadata when the budget is 0: maps are off).
pub(super) fn encode_points(
    points: Vec<CommitPoint>,
    budget: usize,
    metrics: &Metrics,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (id, map, since) in points {
        let mut element = list.add_partition(&id.topic, id.partition);
        // Setting the offset of a fresh element cannot fail.
        let _ = element.set_offset(Offset::Offset(map.base));
        if budget == 0 {
            continue;
        }
        let (text, kept) = completion::encode_metadata(&map, Some(since), budget);
        if kept < map.finished.len() {
            metrics.completion_maps_truncated.inc();
        }
        element.set_metadata(text);
    }
    list
}

/// The completion map to resume a partition with, and the look-back time:
/// the group's committed metadata (ignored with a warning when it is not
/// valid for `committed`), merged with what this process remembers
/// finishing there.
pub(super) fn resume_map(
    id: &PartitionId,
    committed: i64,
    metadata: &str,
    remembered: Option<CompletionMap>,
) -> (CompletionMap, Option<i64>) {
    let (group, since) = match metadata {
        "" => (None, None),
        text => match completion::decode_metadata(text, committed) {
            (Ok(map), since) => (Some(map), since),
            (Err(error), _) => {
                tracing::warn!(partition = %id, %error, "Ignoring the committed completion map; resuming from the committed offset alone.");
                (None, None)
            }
        },
    };
    let map = CompletionMap::union_at(committed, group.iter().chain(remembered.iter()));
    (map, since)
}

/// Whether the broker refused a completion map as too large.
pub(super) fn too_large(list: &TopicPartitionList, result: &KafkaResult<()>) -> bool {
    const TOO_LARGE: RDKafkaErrorCode = RDKafkaErrorCode::OffsetMetadataTooLarge;
    list.elements().iter().any(|e| {
        matches!(
            e.error(),
            Err(KafkaError::OffsetFetch(TOO_LARGE)) | Err(KafkaError::ConsumerCommit(TOO_LARGE))
        )
    }) || matches!(result, Err(KafkaError::ConsumerCommit(TOO_LARGE)))
}
