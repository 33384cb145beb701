//! One ledger partition in a replica's memory: a fixed-size slot per key
//! (hashes and offsets, no text), the orders held by an unknown outcome, and
//! the counts the metrics read. The topic is the record; this is the index
//! that answers "was this key accepted, with this DTO?" without a read.
//!
//! An entry applies only if it is newer (by ledger offset) than the slot's:
//! the replica applies its own writes when the broker acknowledges them and
//! reads them back later from the topic, and the late read must not undo a
//! newer outcome.

use std::collections::HashMap;

use super::entry::{Entry, Outcome};

/// What memory keeps per key: 40 bytes (with the 16-byte key), about 45
/// with the map's overhead at its load factor (docs/ledger.md measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub ledger_offset: i64,
    pub source_offset: i64,
    pub dto_hash: u64,
    /// Seconds since the epoch the entry was written (for the horizon).
    pub at_secs: u32,
    pub outcome: Outcome,
    /// An intent this process wrote and is still acting on (not unknown).
    pub mine: bool,
}

impl Slot {
    /// The slot of `entry`, read or written at `ledger_offset`; `mine` for
    /// an intent this process wrote.
    pub fn of(entry: &Entry, ledger_offset: i64, mine: bool) -> Slot {
        Slot {
            ledger_offset,
            source_offset: entry.source.offset,
            dto_hash: entry.dto_hash_value().unwrap_or_default(),
            at_secs: seconds(entry.at.timestamp()),
            outcome: entry.outcome,
            mine,
        }
    }

    /// Counted as an unknown outcome: parked as unknown, or an intent no
    /// live call of this process stands behind.
    fn unknown(&self) -> bool {
        self.outcome == Outcome::Unknown || (self.outcome == Outcome::Intent && !self.mine)
    }

    /// Holds the later events of its order.
    fn blocks_order(&self) -> bool {
        self.unknown() || self.outcome == Outcome::Held
    }
}

/// Seconds since the epoch as a slot keeps them (until 2106).
pub fn seconds(timestamp: i64) -> u32 {
    timestamp.clamp(0, i64::from(u32::MAX)) as u32
}

/// One ledger partition's slots.
#[derive(Debug, Default)]
pub struct PartitionStore {
    slots: HashMap<u128, (Slot, u64)>,
    /// Order hash → slots of it that block the order.
    blocked: HashMap<u64, u32>,
    unknown: usize,
    held: usize,
}

impl PartitionStore {
    pub fn get(&self, key: u128) -> Option<&Slot> {
        self.slots.get(&key).map(|(slot, _)| slot)
    }

    /// Whether an earlier event of this order is unknown or held.
    pub fn order_blocked(&self, order: u64) -> bool {
        self.blocked.contains_key(&order)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn unknown(&self) -> usize {
        self.unknown
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes the slots take, the map's spare room included.
    pub fn memory_bytes(&self) -> usize {
        let bucket = std::mem::size_of::<(u128, (Slot, u64))>() + 1;
        self.slots.capacity() * bucket + self.blocked.capacity() * (8 + 4 + 1)
    }

    /// Applies an entry at `ledger_offset` (a tombstone when `slot` is
    /// `None`); an older one than the slot holds is ignored. Returns whether
    /// it changed anything.
    pub fn apply(&mut self, key: u128, order: u64, ledger_offset: i64, slot: Option<Slot>) -> bool {
        if let Some((current, _)) = self.slots.get(&key)
            && current.ledger_offset >= ledger_offset
        {
            return false;
        }
        if let Some((old, old_order)) = self.slots.remove(&key) {
            self.count(&old, old_order, -1);
        }
        if let Some(slot) = slot {
            self.count(&slot, order, 1);
            self.slots.insert(key, (slot, order));
        }
        true
    }

    /// Drops slots written before `horizon_secs`; returns how many.
    pub fn prune(&mut self, horizon_secs: u32) -> usize {
        let expired: Vec<u128> = self
            .slots
            .iter()
            .filter(|(_, (slot, _))| slot.at_secs < horizon_secs)
            .map(|(key, _)| *key)
            .collect();
        for key in &expired {
            if let Some((old, order)) = self.slots.remove(key) {
                self.count(&old, order, -1);
            }
        }
        expired.len()
    }

    fn count(&mut self, slot: &Slot, order: u64, sign: i32) {
        let step = |count: &mut usize| {
            if sign > 0 {
                *count += 1
            } else {
                *count = count.saturating_sub(1)
            }
        };
        if slot.unknown() {
            step(&mut self.unknown);
        }
        if slot.outcome == Outcome::Held {
            step(&mut self.held);
        }
        if slot.blocks_order() {
            if sign > 0 {
                *self.blocked.entry(order).or_insert(0) += 1;
            } else if let Some(count) = self.blocked.get_mut(&order) {
                *count -= 1;
                if *count == 0 {
                    self.blocked.remove(&order);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ledger_offset: i64, outcome: Outcome, mine: bool) -> Slot {
        Slot {
            ledger_offset,
            source_offset: 7,
            dto_hash: 1,
            at_secs: 100,
            outcome,
            mine,
        }
    }

    #[test]
    fn a_late_read_of_an_older_entry_does_not_undo_a_newer_outcome() {
        let mut store = PartitionStore::default();
        assert!(store.apply(1, 9, 10, Some(slot(10, Outcome::Intent, true))));
        assert!(store.apply(1, 9, 11, Some(slot(11, Outcome::Accepted, false))));
        assert!(!store.apply(1, 9, 10, Some(slot(10, Outcome::Intent, false))));
        assert_eq!(store.get(1).unwrap().outcome, Outcome::Accepted);
        assert_eq!(store.unknown(), 0);
    }

    #[test]
    fn unknown_and_held_block_their_order_until_resolved() {
        let mut store = PartitionStore::default();
        store.apply(1, 9, 1, Some(slot(1, Outcome::Intent, true)));
        assert!(
            !store.order_blocked(9),
            "a live intent of this process holds nothing"
        );
        store.apply(2, 9, 2, Some(slot(2, Outcome::Intent, false)));
        assert!(
            store.order_blocked(9),
            "an intent read back is an unknown outcome"
        );
        assert_eq!(store.unknown(), 1);
        store.apply(3, 9, 3, Some(slot(3, Outcome::Held, false)));
        assert_eq!((store.unknown(), store.held()), (1, 1));
        store.apply(2, 9, 4, Some(slot(4, Outcome::Accepted, false)));
        assert!(store.order_blocked(9), "the held event still waits");
        store.apply(3, 9, 5, Some(slot(5, Outcome::Accepted, false)));
        assert!(!store.order_blocked(9));
        assert_eq!((store.unknown(), store.held()), (0, 0));
        // A tombstone removes the key.
        assert!(store.apply(3, 9, 6, None));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_horizon_prunes_old_slots() {
        let mut store = PartitionStore::default();
        store.apply(
            1,
            1,
            1,
            Some(Slot {
                at_secs: 50,
                ..slot(1, Outcome::Unknown, false)
            }),
        );
        store.apply(2, 2, 2, Some(slot(2, Outcome::Accepted, false)));
        assert_eq!(store.prune(60), 1);
        assert_eq!((store.len(), store.unknown()), (1, 0));
        assert!(!store.order_blocked(1));
    }
}
