//! The emulator's record of accepted orders: in memory for `GET /emulator/orders`
//! and in-process tests, and as JSON lines in an optional file for tests that
//! run the emulator as a separate process.
//!
//! An order counts as a duplicate when the same DTO content (compared as
//! parsed JSON, so key order does not matter) was accepted before: that is
//! what an at-least-once bridge produces after a crash or a rebalance.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// One accepted call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AcceptedOrder {
    pub request_id: String,
    pub received_at: String,
    pub app_key: String,
    pub sign_method: String,
    /// The DTO as sent.
    pub order: Value,
    /// True if an identical order was accepted earlier.
    pub duplicate: bool,
}

/// Accepted orders and duplicate counts.
#[derive(Debug)]
pub struct Journal {
    orders: Vec<AcceptedOrder>,
    /// Keep accepted orders in memory (for `GET /emulator/orders`); long
    /// benchmarks turn this off and rely on the counts and the file.
    retain: bool,
    /// Times each order content was accepted, by a 64-bit hash of its canonical JSON.
    seen: HashMap<u64, u32>,
    accepted: usize,
    file: Option<BufWriter<File>>,
}

impl Journal {
    pub fn new(path: Option<&Path>) -> io::Result<Journal> {
        let file = match path {
            Some(path) => Some(BufWriter::new(
                File::options().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Journal {
            orders: Vec::new(),
            retain: true,
            seen: HashMap::new(),
            accepted: 0,
            file,
        })
    }

    /// Stops keeping orders in memory; counts and the file still work.
    pub fn without_retention(mut self) -> Journal {
        self.retain = false;
        self
    }

    /// Records an accepted order; returns whether it was a duplicate.
    pub fn record(&mut self, mut order: AcceptedOrder) -> io::Result<bool> {
        // serde_json's map is ordered, so this string is a canonical form.
        let mut hasher = DefaultHasher::new();
        order.order.to_string().hash(&mut hasher);
        let count = self.seen.entry(hasher.finish()).or_insert(0);
        *count += 1;
        order.duplicate = *count > 1;
        if let Some(file) = &mut self.file {
            serde_json::to_writer(&mut *file, &order)?;
            file.write_all(b"\n")?;
            // Flushed per line: a test may read the file while the emulator runs.
            file.flush()?;
        }
        let duplicate = order.duplicate;
        self.accepted += 1;
        if self.retain {
            self.orders.push(order);
        }
        Ok(duplicate)
    }

    pub fn orders(&self) -> &[AcceptedOrder] {
        &self.orders
    }

    /// Accepted calls, distinct orders, and accepted calls that repeated an order.
    pub fn counts(&self) -> (usize, usize, usize) {
        let unique = self.seen.len();
        (self.accepted, unique, self.accepted - unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str) -> AcceptedOrder {
        AcceptedOrder {
            request_id: "r".into(),
            received_at: "t".into(),
            app_key: "k".into(),
            sign_method: "md5".into(),
            order: serde_json::json!({"order_id": id, "pay_fee": 1}),
            duplicate: false,
        }
    }

    #[test]
    fn duplicates_are_counted_and_written_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut journal = Journal::new(Some(&path)).unwrap();
        assert!(!journal.record(order("a")).unwrap());
        assert!(!journal.record(order("b")).unwrap());
        assert!(journal.record(order("a")).unwrap());
        assert_eq!(journal.counts(), (3, 2, 1));
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["duplicate"], Value::Bool(true));
        assert_eq!(lines[2]["order"]["order_id"], "a");
    }
}
