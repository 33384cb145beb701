//! Which offset may be committed: per partition, the lowest offset still in
//! flight, or one past the highest offset seen when nothing is in flight.
//!
//! Completions arrive out of order (many calls run at once); an offset must
//! never be committed past a message that is not finished, or a crash would
//! skip it. Because offsets within a partition only grow, "everything below
//! the lowest unfinished offset is finished" is exactly the contiguous
//! completed prefix, and it stays correct across the gaps that compaction
//! and transaction markers leave in offset sequences.
//!
//! This is rust-rdkafka's `at_least_once` recipe (store an offset only after
//! processing it) without its limit ("only works when messages are processed
//! in order"): completions may come in any order.

use std::collections::BTreeMap;
use std::time::Instant;

/// One partition's unfinished offsets and commit position.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Unfinished offsets and when each was taken from Kafka.
    in_flight: BTreeMap<i64, Instant>,
    /// One past the highest offset ever started; the position when idle.
    next_after_seen: Option<i64>,
    /// The last position handed out by [`OffsetTracker::take_advance`].
    stored: Option<i64>,
}

impl OffsetTracker {
    /// A tracker whose position is `offset` until messages arrive (a replay range's start).
    pub fn starting_at(offset: i64) -> OffsetTracker {
        OffsetTracker {
            next_after_seen: Some(offset),
            ..OffsetTracker::default()
        }
    }

    /// A message was taken from Kafka and is now in flight.
    pub fn start(&mut self, offset: i64) {
        self.in_flight.insert(offset, Instant::now());
        if self.next_after_seen.is_none_or(|next| offset >= next) {
            self.next_after_seen = Some(offset + 1);
        }
    }

    /// A message reached its final outcome (delivered or dead-lettered).
    /// Returns false if the offset was not in flight (a late or repeated completion).
    pub fn finish(&mut self, offset: i64) -> bool {
        self.in_flight.remove(&offset).is_some()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The offset to commit: the next message to consume after a restart.
    pub fn position(&self) -> Option<i64> {
        match self.in_flight.first_key_value() {
            Some((lowest, _)) => Some(*lowest),
            None => self.next_after_seen,
        }
    }

    /// The position if it moved since the last call.
    pub fn take_advance(&mut self) -> Option<i64> {
        let position = self.position()?;
        if self.stored.is_some_and(|stored| stored >= position) {
            return None;
        }
        self.stored = Some(position);
        Some(position)
    }

    /// When the oldest unfinished message was taken (offsets arrive in order,
    /// so it is the lowest one's).
    pub fn oldest_start(&self) -> Option<Instant> {
        self.in_flight
            .first_key_value()
            .map(|(_, started)| *started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completions_wait_for_the_gap() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..15 {
            tracker.start(offset);
        }
        assert_eq!(tracker.position(), Some(10));
        assert!(tracker.finish(12));
        assert!(tracker.finish(11));
        assert_eq!(tracker.position(), Some(10), "10 is still in flight");
        assert!(tracker.finish(10));
        assert_eq!(tracker.position(), Some(13));
        assert!(tracker.finish(13));
        assert!(tracker.finish(14));
        assert_eq!(tracker.position(), Some(15));
        assert!(!tracker.finish(14), "a repeated completion is ignored");
    }

    #[test]
    fn offset_gaps_do_not_block_the_position() {
        let mut tracker = OffsetTracker::default();
        tracker.start(3);
        tracker.start(7);
        tracker.finish(7);
        assert_eq!(tracker.position(), Some(3));
        tracker.finish(3);
        assert_eq!(tracker.position(), Some(8));
    }

    #[test]
    fn take_advance_reports_each_move_once() {
        let mut tracker = OffsetTracker::default();
        assert_eq!(tracker.take_advance(), None);
        tracker.start(0);
        assert_eq!(tracker.take_advance(), Some(0));
        assert_eq!(tracker.take_advance(), None);
        tracker.finish(0);
        assert_eq!(tracker.take_advance(), Some(1));
        assert_eq!(tracker.take_advance(), None);
    }

    proptest! {
        /// Whatever the completion order, the position never passes an
        /// unfinished offset, and reaches the end once all are finished.
        #[test]
        fn position_never_passes_an_unfinished_offset(
            offsets in prop::collection::btree_set(0i64..500, 1..100),
            order in prop::collection::vec(any::<prop::sample::Index>(), 100),
        ) {
            let offsets: Vec<i64> = offsets.into_iter().collect();
            let mut tracker = OffsetTracker::default();
            for offset in &offsets {
                tracker.start(*offset);
            }
            let mut unfinished = offsets.clone();
            let mut last_position = i64::MIN;
            for index in order {
                if unfinished.is_empty() {
                    break;
                }
                let offset = unfinished.remove(index.index(unfinished.len()));
                prop_assert!(tracker.finish(offset));
                let position = tracker.position().unwrap();
                prop_assert!(position >= last_position, "the position went back");
                last_position = position;
                for pending in &unfinished {
                    prop_assert!(position <= *pending, "position {} passed unfinished {}", position, pending);
                }
            }
            for offset in unfinished {
                tracker.finish(offset);
            }
            prop_assert_eq!(tracker.position(), Some(offsets.last().unwrap() + 1));
        }
    }
}
