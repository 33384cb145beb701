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

use std::time::{Duration, Instant};

/// How long the global window may stay full before every partition is paused.
pub const STALL_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// The window's limits and its memory of the global window.
#[derive(Debug)]
pub struct Window {
    partition_limit: usize,
    global_limit: usize,
    /// When the global window was last found full, while it stays full.
    full_since: Option<Instant>,
    /// Every partition paused because the global window stalled.
    paused_all: bool,
}

impl Window {
    pub fn new(partition_limit: usize, global_limit: usize) -> Window {
        Window {
            partition_limit,
            global_limit,
            full_since: None,
            paused_all: false,
        }
    }

    /// Takes in this turn's total of unfinished messages, and says whether
    /// the main loop may take another message from Kafka.
    pub fn update(&mut self, total: usize, gate_closed: bool, now: Instant) -> bool {
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
    pub fn wants_paused(&self, in_flight: usize, paused_now: bool, gate_closed: bool) -> bool {
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
    fn a_closed_gate_keeps_the_loop_polling_even_when_full() {
        let mut window = Window::new(1_000, 100);
        assert!(window.update(100, true, Instant::now()));
    }
}
