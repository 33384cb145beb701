//! The tracker, the engine's memory of one owned partition: which offset may
//! be committed (the lowest offset still in flight, or one past the highest
//! offset seen when nothing is in flight), which offsets above it are
//! already finished (the completion map), and the partition's commit point
//! built from them ([`CommitPoint`]).
//!
//! Completions arrive out of order (many calls run at once); an offset must
//! never be committed past a message that is not finished, or a crash would
//! skip it. Because offsets within a partition only grow, "everything below
//! the lowest unfinished offset is finished" is exactly the contiguous
//! completed prefix, and it stays correct across the gaps that compaction
//! and transaction markers leave in offset sequences. For the same reason an
//! offset between the position and the highest one seen that is not in
//! flight is finished (or does not exist), which is what the completion map
//! records.
//!
//! This is rust-rdkafka's `at_least_once` recipe (store an offset only after
//! processing it) without its limit ("only works when messages are processed
//! in order"): completions may come in any order.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::commit_metadata::{CompletionMap, LookBack};
use crate::partition::PartitionId;

/// A partition's commit point: its position (the map's base) with the
/// offsets finished above it, and the dead-letter look-back time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitPoint {
    pub(crate) id: PartitionId,
    pub(crate) map: CompletionMap,
    /// Epoch milliseconds: no dead letter at or above the position was
    /// written before it.
    pub(crate) look_back_since: i64,
}

/// One partition's unfinished offsets and commit position.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Unfinished offsets and when each was taken from Kafka.
    in_flight: BTreeMap<i64, Instant>,
    /// One past the highest offset ever started; the position when idle.
    next_after_seen: Option<i64>,
    /// Finished offsets not yet seen again, from a completion map (sorted,
    /// all at or above `next_after_seen`).
    finished_ahead: VecDeque<Range<i64>>,
    /// The last position handed out by [`OffsetTracker::take_advance`].
    reported: Option<i64>,
    /// Whether the commit point may have moved since [`OffsetTracker::take_changed`].
    changed: bool,
    /// The look-back this owner took over with, passed on until its
    /// position leaves the range earlier owners may have reached.
    inherited: Option<LookBack>,
    /// Offsets below this are finished: set when resuming where this
    /// process itself left off and the group has no committed offset, so
    /// librdkafka starts below it (at `auto.offset.reset`'s end).
    finished_below: Option<i64>,
}

/// What to do with a message taken from Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// It is in flight: deliver it.
    InFlight,
    /// The completion map says it was finished before: skip it.
    AlreadyFinished,
}

impl OffsetTracker {
    /// A tracker whose position is `offset` until messages arrive (a replay range's start).
    pub fn starting_at(offset: i64) -> OffsetTracker {
        OffsetTracker {
            next_after_seen: Some(offset),
            ..OffsetTracker::default()
        }
    }

    /// A tracker resuming at a committed offset whose completion map says
    /// which offsets above it are finished.
    pub fn resuming(map: CompletionMap, inherited: Option<LookBack>) -> OffsetTracker {
        OffsetTracker {
            finished_ahead: map.finished.into_iter().collect(),
            changed: true,
            inherited,
            ..OffsetTracker::starting_at(map.base)
        }
    }

    /// A tracker resuming where this process itself left off when the group
    /// has no committed offset for the partition (none was ever committed,
    /// or it could not be read). librdkafka then starts at
    /// `auto.offset.reset`'s end, which only moves forward (the log's start
    /// or its end): every offset between it and the map's base is one this
    /// process took before and finished, so it is skipped, not sent again.
    pub fn resuming_own(map: CompletionMap) -> OffsetTracker {
        OffsetTracker {
            finished_below: Some(map.base),
            ..OffsetTracker::resuming(map, None)
        }
    }

    /// A message was taken from Kafka.
    pub fn start(&mut self, offset: i64) -> Started {
        if self.finished_below.is_some_and(|floor| offset < floor) {
            return Started::AlreadyFinished;
        }
        self.changed = true;
        if self.next_after_seen.is_none_or(|next| offset >= next) {
            self.next_after_seen = Some(offset + 1);
        }
        // Ranges now behind the highest offset seen are spent.
        while let Some(front) = self.finished_ahead.front_mut() {
            if front.end <= offset {
                self.finished_ahead.pop_front();
            } else if front.start <= offset {
                front.start = offset + 1;
                if front.is_empty() {
                    self.finished_ahead.pop_front();
                }
                return Started::AlreadyFinished;
            } else {
                break;
            }
        }
        self.in_flight.insert(offset, Instant::now());
        Started::InFlight
    }

    /// librdkafka's position (one past the last message it handed over) is
    /// `position`: every offset below it that never arrived is not a message
    /// (a transaction's commit or abort marker, a compacted gap), so the
    /// position may move past it. Without this, a partition whose last
    /// record is a transaction marker would commit one short of its end for ever.
    pub fn skip_to(&mut self, position: i64) {
        if self.next_after_seen.is_none_or(|next| position > next) {
            self.next_after_seen = Some(position);
            self.changed = true;
            while self
                .finished_ahead
                .front()
                .is_some_and(|range| range.end <= position)
            {
                self.finished_ahead.pop_front();
            }
            if let Some(front) = self.finished_ahead.front_mut() {
                front.start = front.start.max(position);
            }
        }
    }

    /// A message reached its final outcome (delivered or dead-lettered).
    /// Returns false if the offset was not in flight (a late or repeated completion).
    pub fn finish(&mut self, offset: i64) -> bool {
        let finished = self.in_flight.remove(&offset).is_some();
        self.changed |= finished;
        finished
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

    /// The position and the finished offsets above it.
    pub fn completion_map(&self) -> Option<CompletionMap> {
        let base = self.position()?;
        let mut finished: Vec<Range<i64>> = Vec::new();
        let mut push = |range: Range<i64>| match finished.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ if range.is_empty() => {}
            _ => finished.push(range),
        };
        let mut cursor = base;
        for offset in self.in_flight.keys() {
            push(cursor..*offset);
            cursor = offset + 1;
        }
        if let Some(next) = self.next_after_seen {
            push(cursor..next.max(cursor));
        }
        for range in &self.finished_ahead {
            push(range.start.max(base)..range.end.max(base));
        }
        Some(CompletionMap { base, finished })
    }

    /// The commit point of partition `id`, if it has a position yet.
    pub(crate) fn commit_point(&self, id: &PartitionId, now: Instant) -> Option<CommitPoint> {
        Some(CommitPoint {
            id: id.clone(),
            map: self.completion_map()?,
            look_back_since: self.dead_letters_since(now),
        })
    }

    /// The look-back time to commit with the position: no dead letter for an
    /// offset at or above it was written before. This owner took every such
    /// offset no earlier than the position's own message (offsets arrive in
    /// order); with nothing in flight, it has written none yet. An inherited
    /// time stays while the position is inside the range earlier owners
    /// may have reached.
    pub fn dead_letters_since(&self, now: Instant) -> i64 {
        let wall_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let own = match self.in_flight.first_key_value() {
            Some((_, taken)) => wall_now - now.saturating_duration_since(*taken).as_millis() as i64,
            None => wall_now,
        };
        match (self.inherited, self.position()) {
            (Some(inherited), Some(position)) if inherited.covers(position) => {
                own.min(inherited.since_ms)
            }
            _ => own,
        }
    }

    /// The look-back this owner took over with.
    pub fn inherited(&self) -> Option<LookBack> {
        self.inherited
    }

    /// Whether the commit point may have moved since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Makes the next [`OffsetTracker::take_changed`] true (a commit failed).
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// The position if it moved since the last call.
    pub fn take_advance(&mut self) -> Option<i64> {
        let position = self.position()?;
        if self.reported.is_some_and(|reported| reported >= position) {
            return None;
        }
        self.reported = Some(position);
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
// Single ranges of offsets are meant, not vectors of their offsets.
#[allow(clippy::single_range_in_vec_init)]
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
    fn resuming_its_own_map_skips_what_it_finished_below_and_above_the_base() {
        let own = CompletionMap {
            base: 100,
            finished: vec![102..104],
        };
        let mut tracker = OffsetTracker::resuming_own(own);
        assert_eq!(tracker.position(), Some(100));
        // librdkafka starts at the log's start: the prefix this process
        // finished before is skipped, the position does not move back.
        let sent: Vec<i64> = (0..106)
            .filter(|o| tracker.start(*o) == Started::InFlight)
            .collect();
        assert_eq!(sent, vec![100, 101, 104, 105]);
        assert_eq!(tracker.position(), Some(100));
        for offset in sent {
            tracker.finish(offset);
        }
        assert_eq!(tracker.position(), Some(106));
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

    #[test]
    fn the_completion_map_holds_what_finished_behind_a_stuck_offset() {
        let mut tracker = OffsetTracker::default();
        for offset in 100..110 {
            tracker.start(offset);
        }
        for offset in [101, 102, 103, 105, 109] {
            tracker.finish(offset);
        }
        let map = tracker.completion_map().unwrap();
        assert_eq!(map.base, 100);
        assert_eq!(map.finished, vec![101..104, 105..106, 109..110]);
        assert!(tracker.take_changed());
        assert!(!tracker.take_changed());
    }

    #[test]
    fn a_resumed_tracker_skips_what_its_map_says_is_finished() {
        let map = CompletionMap {
            base: 50,
            finished: vec![51..53, 60..62],
        };
        let mut tracker = OffsetTracker::resuming(map.clone(), None);
        assert_eq!(
            tracker.completion_map(),
            Some(map),
            "carried over until seen"
        );
        let started: Vec<(i64, Started)> = (50..63).map(|o| (o, tracker.start(o))).collect();
        let skipped: Vec<i64> = started
            .iter()
            .filter(|(_, s)| *s == Started::AlreadyFinished)
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(skipped, vec![51, 52, 60, 61]);
        assert_eq!(tracker.position(), Some(50));
        assert_eq!(tracker.in_flight(), 9);
        let map = tracker.completion_map().unwrap();
        assert_eq!(map.finished, vec![51..53, 60..62]);
        for offset in (50..63).filter(|o| !skipped.contains(o)) {
            tracker.finish(offset);
        }
        assert_eq!(tracker.position(), Some(63));
    }

    #[test]
    fn map_ranges_that_compaction_removed_are_dropped_when_passed() {
        let mut tracker = OffsetTracker::resuming(
            CompletionMap {
                base: 0,
                finished: vec![2..4, 10..12],
            },
            None,
        );
        // Offsets 2..4 were compacted away: 5 arrives first.
        assert_eq!(tracker.start(0), Started::InFlight);
        assert_eq!(tracker.start(5), Started::InFlight);
        assert_eq!(tracker.start(11), Started::AlreadyFinished);
        let map = tracker.completion_map().unwrap();
        assert_eq!(map.finished, vec![1..5, 6..12], "gaps count as finished");
    }

    fn epoch_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn the_look_back_time_is_when_the_position_was_taken_or_inherited() {
        let mut tracker = OffsetTracker::default();
        let before = epoch_ms();
        tracker.start(0);
        tracker.start(1);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let since = tracker.dead_letters_since(Instant::now());
        assert!(
            (before - 5..=before + 20).contains(&since),
            "offset 0 was taken at about {before}, not {since}"
        );
        // Idle: nothing at or above the position was dead-lettered yet.
        tracker.finish(0);
        tracker.finish(1);
        assert!(tracker.dead_letters_since(Instant::now()) >= before + 30);

        // An inherited time holds while the position is where earlier owners
        // may have been, then gives way to this owner's own.
        let inherited = LookBack {
            since_ms: 1_000,
            until: 20,
        };
        let mut tracker = OffsetTracker::resuming(
            CompletionMap {
                base: 10,
                finished: vec![],
            },
            Some(inherited),
        );
        assert_eq!(tracker.inherited(), Some(inherited));
        tracker.start(10);
        assert_eq!(tracker.dead_letters_since(Instant::now()), 1_000);
        for offset in 11..25 {
            tracker.start(offset);
        }
        for offset in 10..20 {
            tracker.finish(offset);
        }
        assert_eq!(tracker.position(), Some(20));
        assert!(tracker.dead_letters_since(Instant::now()) >= before);
    }

    #[test]
    fn a_trailing_transaction_marker_does_not_hold_the_position() {
        let mut tracker = OffsetTracker::default();
        for offset in 0..10 {
            tracker.start(offset);
            tracker.finish(offset);
        }
        assert_eq!(tracker.position(), Some(10));
        // Offset 10 is the commit marker: librdkafka's position is 11.
        tracker.skip_to(11);
        assert_eq!(tracker.position(), Some(11));
        tracker.skip_to(5);
        assert_eq!(tracker.position(), Some(11), "never backwards");
        // With a message in flight the position stays at it.
        tracker.start(12);
        tracker.skip_to(14);
        assert_eq!(tracker.position(), Some(12));
        tracker.finish(12);
        assert_eq!(tracker.position(), Some(14));
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
