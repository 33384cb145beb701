//! Per-order ordering: events with the same `order_id` in a partition are
//! sent one after another, in offset order (a refund never overtakes its
//! payment); different orders run concurrently.
//!
//! Each event's task gets the completion signal of the previous event of its
//! order (if that one has not finished) and waits for it before its first call.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::partition::PartitionId;

/// Dropped when an event's task ends, however it ends: the next event of
/// the same order may go.
pub type Turn = oneshot::Sender<()>;

/// Resolves when the previous event of the same order has ended.
pub type Predecessor = oneshot::Receiver<()>;

/// The latest event of every order with one still in flight.
#[derive(Debug, Default)]
pub struct OrderChains {
    latest: HashMap<(PartitionId, String), Predecessor>,
}

impl OrderChains {
    /// Appends an event to its order's chain: returns the signal to wait for
    /// (the order's previous event, if any) and this event's own turn.
    /// Events without an order id (invalid ones) wait for nobody.
    pub fn link(
        &mut self,
        partition: &PartitionId,
        order_id: Option<&str>,
    ) -> (Option<Predecessor>, Turn) {
        let (turn, done) = oneshot::channel();
        let predecessor = order_id.and_then(|order_id| {
            self.latest
                .insert((partition.clone(), order_id.to_owned()), done)
        });
        (predecessor, turn)
    }

    /// Forgets the orders whose latest event has ended.
    pub fn prune(&mut self) {
        self.latest
            .retain(|_, done| matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read by the tests only.
    impl OrderChains {
        /// Orders with an event in flight.
        pub(crate) fn len(&self) -> usize {
            self.latest.len()
        }
    }

    #[test]
    fn the_second_event_of_an_order_waits_for_the_first() {
        let mut chains = OrderChains::default();
        let p = PartitionId::new("t", 0);
        let (none, first) = chains.link(&p, Some("A"));
        assert!(none.is_none());
        let (waits_for_first, _second) = chains.link(&p, Some("A"));
        let mut waits_for_first = waits_for_first.expect("linked to the first");
        assert!(
            waits_for_first.try_recv().is_err(),
            "the first is in flight"
        );
        drop(first);
        assert!(
            !matches!(
                waits_for_first.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            ),
            "the first ended"
        );
    }

    #[test]
    fn other_orders_partitions_and_invalid_events_do_not_wait() {
        let mut chains = OrderChains::default();
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        let _a = chains.link(&p0, Some("A"));
        assert!(chains.link(&p0, Some("B")).0.is_none());
        assert!(chains.link(&p1, Some("A")).0.is_none());
        assert!(chains.link(&p0, None).0.is_none());
        assert_eq!(chains.len(), 3);
    }

    #[test]
    fn prune_forgets_orders_whose_latest_event_ended() {
        let mut chains = OrderChains::default();
        let p = PartitionId::new("t", 0);
        let (_, a) = chains.link(&p, Some("A"));
        let (_, _b) = chains.link(&p, Some("B"));
        drop(a);
        chains.prune();
        assert_eq!(chains.len(), 1);
    }
}
