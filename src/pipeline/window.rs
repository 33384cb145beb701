//! Backpressure: how many messages may be taken from Kafka and not finished,
//! per partition and over all, and when to pause fetching. Pure decisions;
//! the main loop applies them.
//!
//! * A partition with `delivery.partition_window` unfinished messages is
//!   paused; it resumes at half the window, not at the edge, so it does not flap.
//! * A full global window (`delivery.global_window`) is first handled by not
//!   polling: completions free room within milliseconds, and a pause would
//!   drop librdkafka's prefetched messages only to fetch them again. If the
//!   window stays full for [`STALL_BEFORE_PAUSE`] (calls stuck in backoff),
//!   every partition is paused instead, so the consumer can keep polling and
//!   take part in rebalances, until the total falls to half the window.
//! * A closed gate (ban, open breaker, halt) pauses everything.
//!
//! The window remembers which ownerships it paused: a partition revoked and
//! assigned again is a new ownership, which starts unpaused (librdkafka's
//! pause is lifted on assignment too).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::partition::PartitionId;

/// How long the global window may stay full before every partition is paused.
pub const STALL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// The window's limits, its memory of the global window, and the
/// ownerships it paused.
#[derive(Debug)]
pub struct Window {
    partition_limit: usize,
    global_limit: usize,
    /// When the global window was last found full, while it stays full.
    full_since: Option<Instant>,
    /// Every partition paused because the global window stalled.
    paused_all: bool,
    /// The ownerships (partition, generation) paused now.
    paused: HashSet<(PartitionId, u64)>,
}

/// One owned partition's load, as the owner reports it.
#[derive(Debug, Clone, Copy)]
pub struct PartitionLoad<'a> {
    pub id: &'a PartitionId,
    /// The ownership: a partition that comes back is a new one.
    pub generation: u64,
    /// Messages taken from Kafka and not finished.
    pub in_flight: usize,
}

/// What one turn of the window decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WindowTurn {
    /// Messages in flight over all partitions.
    pub in_flight: usize,
    /// Whether the main loop may take another message.
    pub may_poll: bool,
    pub pause: Vec<PartitionId>,
    pub resume: Vec<PartitionId>,
}

impl Window {
    pub fn new(partition_limit: usize, global_limit: usize) -> Window {
        Window {
            partition_limit,
            global_limit,
            full_since: None,
            paused_all: false,
            paused: HashSet::new(),
        }
    }

    /// One turn: from the owned partitions' loads, which to pause or resume
    /// and whether the main loop may take another message. Only changes are
    /// returned; ownerships that ended are forgotten.
    pub fn turn(
        &mut self,
        loads: &[PartitionLoad<'_>],
        gate_closed: bool,
        now: Instant,
    ) -> WindowTurn {
        let in_flight = loads.iter().map(|load| load.in_flight).sum();
        let may_poll = self.update(in_flight, gate_closed, now);
        if !self.paused.is_empty() {
            self.paused.retain(|(id, generation)| {
                loads
                    .iter()
                    .any(|load| load.id == id && load.generation == *generation)
            });
        }
        let mut turn = WindowTurn {
            in_flight,
            may_poll,
            ..WindowTurn::default()
        };
        for load in loads {
            // The set is small (usually empty): no key is built unless a pause changes.
            let paused_now = self
                .paused
                .iter()
                .any(|(id, generation)| id == load.id && *generation == load.generation);
            if self.wants_paused(load.in_flight, paused_now, gate_closed) == paused_now {
                continue;
            }
            let key = (load.id.clone(), load.generation);
            if paused_now {
                self.paused.remove(&key);
                turn.resume.push(key.0);
            } else {
                self.paused.insert(key);
                turn.pause.push(load.id.clone());
            }
        }
        turn
    }

    /// Takes in this turn's total of unfinished messages, and says whether
    /// the main loop may take another message from Kafka.
    fn update(&mut self, total: usize, gate_closed: bool, now: Instant) -> bool {
        if total >= self.global_limit {
            let since = *self.full_since.get_or_insert(now);
            if now.duration_since(since) >= STALL_BEFORE_PAUSE {
                self.paused_all = true;
            }
        } else {
            // Room appeared: the window is moving, not stuck.
            self.full_since = None;
            if total <= self.global_limit / 2 {
                self.paused_all = false;
            }
        }
        // While everything is paused, polling only serves the group protocol.
        total < self.global_limit || self.paused_all || gate_closed
    }

    /// Whether a partition with `in_flight` unfinished messages should be
    /// paused, given whether it is paused now.
    fn wants_paused(&self, in_flight: usize, paused_now: bool, gate_closed: bool) -> bool {
        let partition_full = if paused_now {
            in_flight > self.partition_limit / 2
        } else {
            in_flight >= self.partition_limit
        };
        gate_closed || self.paused_all || partition_full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_pauses_at_its_window_and_resumes_at_half() {
        let window = Window::new(10, 1_000);
        assert!(!window.wants_paused(9, false, false));
        assert!(window.wants_paused(10, false, false));
        assert!(
            window.wants_paused(6, true, false),
            "no flapping below the edge"
        );
        assert!(!window.wants_paused(5, true, false));
    }

    #[test]
    fn a_closed_gate_pauses_every_partition() {
        let window = Window::new(10, 1_000);
        assert!(window.wants_paused(0, false, true));
        assert!(window.wants_paused(0, true, true));
    }

    #[test]
    fn a_full_global_window_stops_polling_then_pauses_all_after_a_stall() {
        let mut window = Window::new(1_000, 100);
        let start = Instant::now();
        assert!(window.update(99, false, start));
        assert!(!window.update(100, false, start), "full: no more polling");
        assert!(!window.wants_paused(1, false, false), "not paused yet");
        let later = start + STALL_BEFORE_PAUSE / 2;
        assert!(!window.update(100, false, later));
        let stalled = start + STALL_BEFORE_PAUSE;
        assert!(
            window.update(100, false, stalled),
            "paused all: poll for the group"
        );
        assert!(window.wants_paused(1, false, false));
        // Room appears, but the pause holds until half the window.
        assert!(window.update(60, false, stalled));
        assert!(window.wants_paused(1, true, false));
        window.update(50, false, stalled);
        assert!(!window.wants_paused(1, true, false));
    }

    #[test]
    fn room_in_the_global_window_resets_the_stall_clock() {
        let mut window = Window::new(1_000, 100);
        let start = Instant::now();
        window.update(100, false, start);
        window.update(99, false, start + STALL_BEFORE_PAUSE / 2);
        window.update(100, false, start + STALL_BEFORE_PAUSE);
        assert!(
            !window.wants_paused(0, false, false),
            "full twice, but not for a whole stall"
        );
    }

    #[test]
    fn a_turn_pauses_a_full_partition_resumes_it_at_half_and_forgets_ended_ownerships() {
        let mut window = Window::new(4, 100);
        let (p0, p1) = (PartitionId::new("t", 0), PartitionId::new("t", 1));
        let load = |id, generation, in_flight| PartitionLoad {
            id,
            generation,
            in_flight,
        };
        let now = Instant::now();
        let full = window.turn(&[load(&p0, 1, 4), load(&p1, 2, 1)], false, now);
        assert_eq!(
            (full.in_flight, full.pause.clone(), full.resume.len()),
            (5, vec![p0.clone()], 0)
        );
        let again = window.turn(&[load(&p0, 1, 3), load(&p1, 2, 1)], false, now);
        assert!(
            again.pause.is_empty() && again.resume.is_empty(),
            "no flapping"
        );
        let drained = window.turn(&[load(&p0, 1, 2), load(&p1, 2, 1)], false, now);
        assert_eq!(drained.resume, vec![p0.clone()]);
        window.turn(&[load(&p0, 1, 4)], false, now);
        // Revoked and assigned again: a new ownership, unpaused, not resumed.
        let back = window.turn(&[load(&p0, 3, 0)], false, now);
        assert_eq!(
            back,
            WindowTurn {
                in_flight: 0,
                may_poll: true,
                pause: vec![],
                resume: vec![]
            }
        );
        let closed = window.turn(&[load(&p0, 3, 0), load(&p1, 4, 0)], true, now);
        assert_eq!(
            closed.pause.len(),
            2,
            "a closed gate pauses every partition"
        );
    }

    #[test]
    fn a_closed_gate_keeps_the_loop_polling_even_when_full() {
        let mut window = Window::new(1_000, 100);
        assert!(window.update(100, true, Instant::now()));
    }
}
