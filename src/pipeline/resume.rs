//! The resume decision, the read side of commits: what a newly assigned
//! partition skips. The group's committed offset and metadata (read on
//! assignment) are merged with what this process remembers finishing there,
//! while the partition's log still reaches that memory, into the tracker the
//! partition resumes with, and the dead-letter look-back it inherits.

use crate::commit_metadata::{self, CompletionMap, LookBack};
use crate::kafka::queries::Committed;
use crate::partition::PartitionId;
use crate::pipeline::tracker::OffsetTracker;

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
        text => match commit_metadata::decode_metadata(text, committed) {
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

/// The tracker a newly assigned partition resumes with, from the group's
/// committed offset and metadata (if any could be read), what this process
/// remembers finishing there, and the partition's end (if read).
pub(super) fn resume_tracker(
    id: &PartitionId,
    committed: Option<&Committed>,
    remembered: Option<CompletionMap>,
    end: Option<i64>,
) -> OffsetTracker {
    let known = remembered.and_then(|map| memory_of_this_log(id, map, end));
    match (committed, known) {
        (Some(committed), known) => {
            let (map, since) = resume_map(id, committed.offset, &committed.metadata, known);
            let look_back = since
                .zip(end)
                .map(|(since_ms, until)| LookBack { since_ms, until });
            OffsetTracker::resuming(map, look_back)
        }
        // No commit of the group landed (a new group whose first commits
        // failed in an outage): what this process finished is all there is
        // to know.
        (None, Some(known)) => {
            tracing::info!(partition = %id, position = known.base, "The group has no committed offset here; resuming from what this process finished before.");
            OffsetTracker::resuming_own(known)
        }
        (None, None) => OffsetTracker::default(),
    }
}

/// What this process remembers finishing in a partition, if the partition's
/// log still reaches it. A topic deleted and created again starts its offsets
/// over: the memory of the old log would skip the new one's events, so it is
/// dropped when the log now ends below it, or when the end cannot be read
/// (events sent twice are safe, events skipped are lost).
fn memory_of_this_log(
    id: &PartitionId,
    map: CompletionMap,
    end: Option<i64>,
) -> Option<CompletionMap> {
    let reached = map.finished.last().map_or(map.base, |range| range.end);
    match end {
        Some(end) if end >= reached => Some(map),
        Some(end) => {
            tracing::warn!(partition = %id, end, reached, "The partition now ends below what this process finished there before (was the topic created again?); forgetting what it finished.");
            None
        }
        None => {
            tracing::warn!(partition = %id, "The partition's end could not be read; events this process finished there before may be sent again.");
            None
        }
    }
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::pipeline::tracker::Started;

    #[test]
    fn memory_is_kept_only_while_the_log_reaches_it() {
        let id = PartitionId::new("t", 0);
        let own = CompletionMap {
            base: 100,
            finished: vec![102..110],
        };
        assert_eq!(
            memory_of_this_log(&id, own.clone(), Some(110)),
            Some(own.clone())
        );
        // The topic was created again: its log ends below what was finished.
        assert_eq!(memory_of_this_log(&id, own.clone(), Some(109)), None);
        assert_eq!(memory_of_this_log(&id, own, None), None, "end unknown");
        let idle = CompletionMap {
            base: 100,
            finished: vec![],
        };
        assert!(memory_of_this_log(&id, idle.clone(), Some(100)).is_some());
        assert!(memory_of_this_log(&id, idle, Some(99)).is_none());
    }

    #[test]
    fn a_partition_without_a_group_commit_resumes_from_memory_only_if_its_log_reaches_it() {
        let id = PartitionId::new("t", 0);
        let own = CompletionMap {
            base: 50,
            finished: vec![52..53],
        };
        let sent = |mut tracker: OffsetTracker| -> Vec<i64> {
            (0..54)
                .filter(|o| tracker.start(*o) == Started::InFlight)
                .collect()
        };
        let resumed = resume_tracker(&id, None, Some(own.clone()), Some(60));
        assert_eq!(sent(resumed), vec![50, 51, 53]);
        // The log ends below the memory (the topic was created again): all is sent.
        let fresh = resume_tracker(&id, None, Some(own), Some(10));
        assert_eq!(sent(fresh).len(), 54);
    }

    #[test]
    fn a_foreign_committed_map_is_ignored() {
        let id = PartitionId::new("t", 0);
        let map = resume_map(&id, 7, "written by another tool", None);
        assert_eq!(
            map,
            (
                CompletionMap {
                    base: 7,
                    finished: vec![]
                },
                None
            )
        );
        let (text, _) = CompletionMap {
            base: 7,
            finished: vec![9..10],
        }
        .encode(4000)
        .unwrap();
        assert_eq!(resume_map(&id, 7, &text, None).0.finished, vec![9..10]);
        // The same map under another committed offset (offsets reset by a
        // tool): neither it nor its look-back time is trusted.
        let moved = format!("{text}~1700000000000");
        assert_eq!(resume_map(&id, 7, &moved, None).1, Some(1_700_000_000_000));
        assert_eq!(
            resume_map(&id, 3, &moved, None),
            (
                CompletionMap {
                    base: 3,
                    finished: vec![]
                },
                None
            )
        );
    }
}
