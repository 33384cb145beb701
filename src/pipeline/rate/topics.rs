//! How many partitions the subscribed topics have, as this replica has seen
//! them in metadata, and which of its partitions it may count toward its
//! share of the group's quota while the counts change.
//!
//! Replicas read metadata at different moments, so for up to one refresh
//! interval after a topic grows some replicas still divide by the old
//! count. A replica that already knows the new count could add its new
//! partitions' shares while the others still divide by the old count, and the
//! shares would add up to more than the quota. So for `settle` (two refresh
//! intervals: by then every replica has seen the change) after a count
//! changes, a replica divides by the largest count it saw in that time and
//! counts only partitions below the smallest. Every replica then counts only
//! partitions that exist in both the old and the new count, and divides by
//! at least the old one: the shares add up to at most the quota during the
//! change, and to exactly the quota once it has settled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::partition::PartitionId;

/// The partition counts of the subscribed topics, with their recent changes.
#[derive(Debug)]
pub struct PartitionCounts {
    settle: Duration,
    /// Per topic, each count seen and since when, oldest first; only the
    /// latest and those replaced less than `settle` ago are kept.
    topics: BTreeMap<String, Vec<(Instant, usize)>>,
}

impl PartitionCounts {
    pub fn new(settle: Duration) -> PartitionCounts {
        PartitionCounts {
            settle,
            topics: BTreeMap::new(),
        }
    }

    /// Metadata says `topic` has `count` partitions. Returns whether that is news.
    pub fn observe(&mut self, now: Instant, topic: &str, count: usize) -> bool {
        let seen = self.topics.entry(topic.to_owned()).or_default();
        if seen.last().is_some_and(|(_, last)| *last == count) {
            return false;
        }
        seen.push((now, count));
        // Counts replaced more than `settle` ago say nothing any more.
        let settle = self.settle;
        while seen.len() > 1 && now.saturating_duration_since(seen[1].0) >= settle {
            seen.remove(0);
        }
        true
    }

    /// Forgets counts replaced more than `settle` ago.
    fn recent(&self, now: Instant) -> impl Iterator<Item = (&str, &[(Instant, usize)])> + '_ {
        self.topics.iter().map(move |(topic, seen)| {
            // The first count still in force at `now - settle`, and every later one.
            let first = seen
                .windows(2)
                .position(|pair| now.saturating_duration_since(pair[1].0) < self.settle)
                .unwrap_or(seen.len().saturating_sub(1));
            (topic.as_str(), &seen[first..])
        })
    }

    /// The share of the quota that owning `owned` gives: the countable
    /// partitions over all partitions (`None` when no count is known yet).
    pub fn fraction<'a>(
        &self,
        now: Instant,
        owned: impl IntoIterator<Item = &'a PartitionId>,
    ) -> Option<f64> {
        let mut divisor = 0;
        let mut smallest = BTreeMap::new();
        for (topic, seen) in self.recent(now) {
            divisor += seen.iter().map(|(_, count)| *count).max().unwrap_or(0);
            smallest.insert(
                topic,
                seen.iter().map(|(_, count)| *count).min().unwrap_or(0),
            );
        }
        if divisor == 0 {
            return None;
        }
        let countable = owned
            .into_iter()
            .filter(|id| {
                smallest
                    .get(id.topic.as_str())
                    .is_some_and(|count| id.partition >= 0 && (id.partition as usize) < *count)
            })
            .count();
        Some(countable as f64 / divisor as f64)
    }

    /// Partitions of the subscribed topics, as last seen.
    pub fn total(&self) -> usize {
        self.topics
            .values()
            .filter_map(|seen| seen.last().map(|(_, count)| *count))
            .sum()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Read by the tests only.
    impl PartitionCounts {
        /// Whether a count changed less than `settle` ago.
        pub(crate) fn settling(&self, now: Instant) -> bool {
            self.recent(now).any(|(_, seen)| seen.len() > 1)
        }
    }

    const SETTLE: Duration = Duration::from_secs(4);

    /// Partition ids of one topic.
    pub(in crate::pipeline::rate) fn ids(
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Vec<PartitionId> {
        partitions
            .into_iter()
            .map(|p| PartitionId::new(topic, p))
            .collect()
    }

    #[test]
    fn a_steady_group_divides_by_every_partition_of_every_topic() {
        let now = Instant::now();
        let mut counts = PartitionCounts::new(SETTLE);
        counts.observe(now, "a", 6);
        counts.observe(now, "b", 2);
        assert_eq!(counts.fraction(now, &ids("b", 0..2)), Some(0.25));
        assert_eq!(counts.fraction(now, &ids("a", [0, 5])), Some(0.25));
        assert_eq!(counts.total(), 8);
        assert_eq!(
            PartitionCounts::new(SETTLE).fraction(now, &ids("a", [0])),
            None
        );
    }

    #[test]
    fn shares_never_add_up_above_the_quota_while_a_topic_grows() {
        // 5 replicas, 12 partitions grown to 18. Each replica sees the growth
        // at its own moment within one refresh; new partitions are assigned
        // to some of them as soon as the group sees it.
        let t0 = Instant::now();
        let refresh = SETTLE / 2;
        let mut replicas: Vec<PartitionCounts> =
            (0..5).map(|_| PartitionCounts::new(SETTLE)).collect();
        for counts in &mut replicas {
            counts.observe(t0, "t", 12);
        }
        let before: Vec<Vec<PartitionId>> = (0..5)
            .map(|r| ids("t", (0..12).filter(|p| p % 5 == r)))
            .collect();
        let after: Vec<Vec<PartitionId>> = (0..5)
            .map(|r| ids("t", (0..18).filter(|p| p % 5 == r)))
            .collect();
        let grown = t0 + Duration::from_secs(10);
        let seen_at: Vec<Instant> = (0..5)
            .map(|r| grown + refresh.mul_f64(f64::from(r) / 4.0))
            .collect();
        let mut step = grown - Duration::from_secs(1);
        while step < grown + SETTLE * 3 {
            let mut sum = 0.0;
            for (r, counts) in replicas.iter_mut().enumerate() {
                if step >= seen_at[r] {
                    counts.observe(seen_at[r], "t", 18);
                }
                // The new assignment arrives with the replica's own view of the growth.
                let owned = if step >= seen_at[r] {
                    &after[r]
                } else {
                    &before[r]
                };
                sum += counts.fraction(step, owned).unwrap();
            }
            assert!(
                sum <= 1.0 + 1e-9,
                "shares sum to {sum} at {:?}",
                step - grown
            );
            step += Duration::from_millis(50);
        }
        let settled: f64 = replicas
            .iter()
            .zip(&after)
            .map(|(counts, owned)| counts.fraction(step, owned).unwrap())
            .sum();
        assert!((settled - 1.0).abs() < 1e-9, "settled at {settled}");
        assert!(!replicas[0].settling(step));
    }

    #[test]
    fn a_topic_created_again_with_fewer_partitions_keeps_the_larger_divisor_for_a_while() {
        let t0 = Instant::now();
        let mut counts = PartitionCounts::new(SETTLE);
        counts.observe(t0, "t", 12);
        assert!(counts.observe(t0 + Duration::from_secs(1), "t", 8));
        assert!(!counts.observe(t0 + Duration::from_secs(2), "t", 8));
        let during = t0 + Duration::from_secs(3);
        assert!(counts.settling(during));
        assert_eq!(counts.fraction(during, &ids("t", 0..8)), Some(8.0 / 12.0));
        let after = t0 + Duration::from_secs(6);
        assert_eq!(counts.fraction(after, &ids("t", 0..8)), Some(1.0));
    }

    #[test]
    fn partitions_beyond_what_metadata_shows_are_not_counted() {
        let now = Instant::now();
        let mut counts = PartitionCounts::new(SETTLE);
        counts.observe(now, "t", 4);
        assert_eq!(counts.fraction(now, &ids("t", [2, 3, 4, 5])), Some(0.5));
        assert_eq!(counts.fraction(now, &ids("other", [0])), Some(0.0));
    }
}
