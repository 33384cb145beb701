//! How large an event and its text fields may be.

use serde::Deserialize;

use super::DEFAULT_MAX_EVENT_BYTES;

/// The most characters each text field may hold. The API documents no
/// limits; these defaults are generous for plates and identifiers, and a
/// platform with longer ones raises them (`[event.max_chars]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldLengths {
    pub car_no: usize,
    pub order_id: usize,
    pub park_id: usize,
    pub pay_order_id: usize,
    pub pay_method: usize,
}

impl Default for FieldLengths {
    fn default() -> Self {
        FieldLengths {
            // Plates are 7 or 8 characters; room for foreign and temporary ones.
            car_no: 32,
            order_id: 128,
            park_id: 128,
            pay_order_id: 128,
            pay_method: 64,
        }
    }
}

impl FieldLengths {
    pub(super) fn of(&self, field: &str) -> usize {
        match field {
            "car_no" => self.car_no,
            "order_id" => self.order_id,
            "park_id" => self.park_id,
            "pay_order_id" => self.pay_order_id,
            "pay_method" => self.pay_method,
            _ => usize::MAX,
        }
    }
}

/// What an event may be: its size in bytes and its text fields' lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_chars: FieldLengths,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_chars: FieldLengths::default(),
        }
    }
}
