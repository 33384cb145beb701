//! The commit list built from partitions' commit points (which the tracker
//! makes, [`CommitPoint`]) within the completion-map byte budget.

use rdkafka::{Offset, TopicPartitionList};

use crate::commit_metadata;
use crate::pipeline::tracker::CommitPoint;

/// The commit list for `points`: each position with its metadata within
/// `budget` bytes (no metadata when the budget is 0: maps are off), and how
/// many maps had to be cut to fit.
pub(super) fn commit_list(points: &[CommitPoint], budget: usize) -> (TopicPartitionList, u64) {
    let mut list = TopicPartitionList::new();
    let mut truncated = 0;
    for point in points {
        let mut element = list.add_partition(&point.id.topic, point.id.partition);
        // Setting the offset of a fresh element cannot fail.
        let _ = element.set_offset(Offset::Offset(point.map.base));
        if budget == 0 {
            continue;
        }
        let (text, kept) =
            commit_metadata::encode_metadata(&point.map, Some(point.look_back_since), budget);
        if kept < point.map.finished.len() {
            truncated += 1;
        }
        element.set_metadata(text);
    }
    (list, truncated)
}

/// The same list without metadata: positions alone, after the broker refused
/// a map as too large.
pub(super) fn without_maps(list: &TopicPartitionList) -> TopicPartitionList {
    let mut bare = TopicPartitionList::new();
    for element in list.elements() {
        // Adding an offset to a fresh element cannot fail.
        let _ = bare.add_partition_offset(element.topic(), element.partition(), element.offset());
    }
    bare
}

#[cfg(test)]
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::commit_metadata::CompletionMap;
    use crate::partition::PartitionId;

    fn point(partition: i32, finished: Vec<std::ops::Range<i64>>) -> CommitPoint {
        CommitPoint {
            id: PartitionId::new("t", partition),
            map: CompletionMap { base: 10, finished },
            look_back_since: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_list_carries_positions_and_maps_within_the_budget() {
        let points = [point(0, vec![12..13]), point(1, vec![])];
        let (list, truncated) = commit_list(&points, 4000);
        assert_eq!(truncated, 0);
        let first = list.find_partition("t", 0).unwrap();
        assert_eq!(first.offset(), Offset::Offset(10));
        let (map, since) = commit_metadata::decode_metadata(first.metadata(), 10);
        assert_eq!(map.unwrap().finished, vec![12..13]);
        assert_eq!(since, Some(1_700_000_000_000));
        let (off, _) = commit_list(&points, 0);
        assert!(off.elements().iter().all(|e| e.metadata().is_empty()));
        let bare = without_maps(&list);
        assert_eq!(bare.count(), 2);
        assert_eq!(
            bare.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(10)
        );
        assert!(bare.elements().iter().all(|e| e.metadata().is_empty()));
    }

    #[test]
    fn a_map_cut_to_fit_is_counted() {
        let many: Vec<_> = (0..400).map(|i| 12 + i * 3..13 + i * 3).collect();
        let (list, truncated) = commit_list(&[point(0, many)], 40);
        assert_eq!(truncated, 1);
        assert!(list.elements()[0].metadata().len() <= 40);
    }
}
