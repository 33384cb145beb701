//! Closed label sets: the names that metrics, logs and dead-letter headers
//! use for a kind of thing, each written once, and the `label_names!` macro
//! that gives an enum its `ALL` list and stable `as_str` name.
//!
//! A leaf: it imports nothing from the crate, so the engine, the metrics and
//! the tools can all name these values without importing one another.

/// Gives an enum `ALL` (every value, for pre-registering series) and
/// `as_str` (the stable snake_case name).
macro_rules! label_names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, for pre-registering metric series.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];

            /// The stable snake_case name used in metrics, logs and DLQ headers.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $name),* }
            }

            /// The position of this value in [`Self::ALL`], for arrays of counters.
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
            }
        }
    };
}
pub(crate) use label_names;

/// Why a record was dead-lettered (`paysync.error.class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterClass {
    /// The message could not be decoded into a payment event.
    InvalidEvent,
    /// The API refused the event's data.
    Rejected,
    /// Transient failures outlasted the retry budget.
    RetriesExhausted,
}

label_names!(DeadLetterClass {
    InvalidEvent => "invalid_event",
    Rejected => "rejected",
    RetriesExhausted => "retries_exhausted",
});

/// Circuit-breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

label_names!(BreakerState {
    Closed => "closed",
    Open => "open",
    HalfOpen => "half_open",
});

/// What a call's disposition was, as counted (`paysync_call_outcomes_total{disposition}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Delivered,
    Retry,
    DeadLetter,
    Halt,
}

label_names!(CallKind {
    Delivered => "delivered",
    Retry => "retry",
    DeadLetter => "dead_letter",
    Halt => "halt",
});

/// A rebalance callback (`paysync_rebalances_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    Assign,
    Revoke,
    Error,
}

label_names!(RebalanceKind {
    Assign => "assign",
    Revoke => "revoke",
    Error => "error",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_the_position_in_all() {
        for (i, class) in DeadLetterClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i);
        }
        for (i, kind) in CallKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
