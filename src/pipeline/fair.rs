//! Fair turns between the car parks of one replica (`[fairness]`): a
//! semaphore whose free permits go to the waiting park that has been served
//! least for its weight — start-time fair queueing, which is weighted
//! max-min fair: a park that sends more than its share waits, the others
//! do not. A park with a floor is served first while its floor allows;
//! ceilings are the callers' (a park over its ceiling waits before it
//! queues). Within one park, first come, first served, so an order's
//! events (already one after another) and a partition's keep their order.
//!
//! Two of these stand in front of every call: the call slots
//! (`delivery.max_in_flight`, resized in place by a tuned setting) and the
//! rate budget's turn (one permit: who takes the next token). Both must be
//! fair, or a hot park's calls holding every slot would queue a quiet
//! park's call behind them for the next token.
//!
//! [`ParkWaits`] measures each park's wait for its turn and exports the
//! longest waits by park, the others summed, so the series stay few.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::oneshot;

use crate::config::{FairnessKey, FairnessSettings};
use crate::event::{OrderType, PaymentEvent};
use crate::metrics::Metrics;

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Parks' weights, floors and ceilings.
#[derive(Default)]
pub struct ParkPolicy {
    key: FairnessKey,
    weights: HashMap<String, f64>,
    floors: HashMap<String, Bucket>,
    ceilings: HashMap<String, Bucket>,
}

fn bucket(per_sec: u32) -> Bucket {
    let per_sec = NonZeroU32::new(per_sec.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_second(per_sec).allow_burst(NonZeroU32::MIN))
}

impl ParkPolicy {
    pub fn of(settings: &FairnessSettings) -> ParkPolicy {
        ParkPolicy {
            key: settings.key,
            weights: settings
                .weights
                .iter()
                .map(|(park, weight)| (park.clone(), f64::from(*weight)))
                .collect(),
            floors: settings
                .floors
                .iter()
                .map(|(park, rate)| (park.clone(), bucket(*rate)))
                .collect(),
            ceilings: settings
                .ceilings
                .iter()
                .map(|(park, rate)| (park.clone(), bucket(*rate)))
                .collect(),
        }
    }

    /// The fairness key of an event (`""` for one that could not be read,
    /// or when fairness is off).
    pub fn key_of(&self, event: Option<&PaymentEvent>) -> Arc<str> {
        match (self.key, event) {
            (FairnessKey::ParkId, Some(event)) => Arc::from(event.park_id.as_str()),
            (FairnessKey::OrderType, Some(event)) => Arc::from(match event.order_type {
                OrderType::Payment => "payment",
                OrderType::Refund => "refund",
            }),
            _ => Arc::from(""),
        }
    }

    fn weight(&self, park: &str) -> f64 {
        self.weights.get(park).copied().unwrap_or(1.0)
    }

    /// Waits while `park` is over its ceiling.
    pub async fn within_ceiling(&self, park: &str) {
        if let Some(ceiling) = self.ceilings.get(park) {
            ceiling.until_ready().await;
        }
    }
}

/// One park's place in a queue.
struct Park {
    /// The virtual time its next turn starts at.
    next_start: f64,
    waiters: VecDeque<oneshot::Sender<()>>,
}

struct QueueState {
    /// Permits not held (negative after a shrink, until enough are returned).
    free: isize,
    capacity: usize,
    waiting: usize,
    virtual_time: f64,
    parks: HashMap<Arc<str>, Park>,
    grants: u64,
}

/// A weighted fair semaphore keyed by park.
pub struct FairQueue {
    state: Mutex<QueueState>,
    policy: Arc<ParkPolicy>,
    /// Whether parks' floors are served first here (the rate's turn, not the slots).
    floors: bool,
}

/// A permit; returned on drop.
pub struct FairPermit<'a> {
    queue: &'a FairQueue,
}

impl Drop for FairPermit<'_> {
    fn drop(&mut self) {
        self.queue.release();
    }
}

/// A waiter whose future was dropped returns a permit it was given meanwhile.
struct Pending<'a> {
    queue: &'a FairQueue,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.queue.release();
            }
        }
    }
}

impl FairQueue {
    pub fn new(capacity: usize, policy: Arc<ParkPolicy>, floors: bool) -> FairQueue {
        FairQueue {
            state: Mutex::new(QueueState {
                free: capacity as isize,
                capacity,
                waiting: 0,
                virtual_time: 0.0,
                parks: HashMap::new(),
                grants: 0,
            }),
            policy,
            floors,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit for `park`.
    pub async fn acquire(&self, park: &Arc<str>) -> FairPermit<'_> {
        let receiver = {
            let mut state = self.lock();
            let weight = self.policy.weight(park);
            let virtual_time = state.virtual_time;
            let entry = state.parks.entry(park.clone()).or_insert(Park {
                next_start: virtual_time,
                waiters: VecDeque::new(),
            });
            if entry.waiters.is_empty() {
                // Idle time is not saved up: a park that comes back starts now.
                entry.next_start = entry.next_start.max(virtual_time);
            }
            if state.free > 0 && state.waiting == 0 {
                state.free -= 1;
                serve(&mut state, park, weight);
                return FairPermit { queue: self };
            }
            let (sender, receiver) = oneshot::channel();
            state
                .parks
                .get_mut(park)
                .expect("inserted above")
                .waiters
                .push_back(sender);
            state.waiting += 1;
            receiver
        };
        let mut pending = Pending {
            queue: self,
            receiver: Some(receiver),
        };
        let granted = pending.receiver.as_mut().expect("set above").await.is_ok();
        debug_assert!(granted, "a waiter's sender is only dropped after sending");
        pending.receiver = None;
        FairPermit { queue: self }
    }

    /// Callers waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Resizes the semaphore; permits held above a smaller size are not
    /// given out again when returned.
    pub fn set_capacity(&self, capacity: usize) {
        let mut state = self.lock();
        state.free += capacity as isize - state.capacity as isize;
        state.capacity = capacity;
        self.hand_out(&mut state);
    }

    fn release(&self) {
        let mut state = self.lock();
        state.free += 1;
        self.hand_out(&mut state);
    }

    fn hand_out(&self, state: &mut QueueState) {
        while state.free > 0 && state.waiting > 0 {
            let Some(park) = self.next_park(state) else {
                break;
            };
            let weight = self.policy.weight(&park);
            let waiter = {
                let entry = state.parks.get_mut(&park).expect("chosen among the parks");
                entry.waiters.pop_front().expect("chosen for its waiters")
            };
            state.waiting -= 1;
            // A waiter that gave up is skipped; its turn is not charged.
            if waiter.send(()).is_ok() {
                state.free -= 1;
                serve(state, &park, weight);
            }
        }
    }

    /// The waiting park to serve next: one under its floor first, then the
    /// least served for its weight.
    fn next_park(&self, state: &QueueState) -> Option<Arc<str>> {
        let waiting = state
            .parks
            .iter()
            .filter(|(_, park)| !park.waiters.is_empty());
        if self.floors && !self.policy.floors.is_empty() {
            let mut under_floor: Vec<(&Arc<str>, f64)> = waiting
                .clone()
                .filter(|(name, _)| self.policy.floors.contains_key(name.as_ref()))
                .map(|(name, park)| (name, park.next_start))
                .collect();
            under_floor.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (name, _) in under_floor {
                if self.policy.floors[name.as_ref()].check().is_ok() {
                    return Some(name.clone());
                }
            }
        }
        // One pass, no allocation: this runs for every permit handed out.
        waiting
            .min_by(|a, b| a.1.next_start.total_cmp(&b.1.next_start))
            .map(|(name, _)| name.clone())
    }
}

/// Charges one turn to `park`.
fn serve(state: &mut QueueState, park: &Arc<str>, weight: f64) {
    let entry = state.parks.get_mut(park).expect("served parks are known");
    state.virtual_time = state.virtual_time.max(entry.next_start);
    entry.next_start += 1.0 / weight;
    state.grants += 1;
    if state.grants % 4_096 == 0 {
        // Parks gone quiet would restart at the virtual time anyway.
        let now = state.virtual_time;
        state
            .parks
            .retain(|_, park| !park.waiters.is_empty() || park.next_start > now);
    }
}

/// Each park's calls and seconds waited since a window began.
type WaitWindow = (std::time::Instant, HashMap<Arc<str>, (u64, f64)>);

/// Each park's waits for its turn over the last [`WAIT_WINDOW`].
pub struct ParkWaits {
    window: Mutex<WaitWindow>,
    top: usize,
}

/// How long waits are summed for one reading of the park-wait gauge.
const WAIT_WINDOW: Duration = Duration::from_secs(10);

/// The series that sums the parks outside the top.
pub const OTHER_PARKS: &str = "other";

impl ParkWaits {
    pub fn new(top: usize) -> ParkWaits {
        ParkWaits {
            window: Mutex::new((std::time::Instant::now(), HashMap::new())),
            top,
        }
    }

    pub fn record(&self, park: &Arc<str>, waited: Duration) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let entry = window.1.entry(park.clone()).or_default();
        entry.0 += 1;
        entry.1 += waited.as_secs_f64();
    }

    /// Every [`WAIT_WINDOW`]: the mean wait of the `top` parks that waited
    /// longest in total, and of all the others as one series.
    pub fn publish(&self, metrics: &Metrics) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.0.elapsed() < WAIT_WINDOW {
            return;
        }
        let mut parks: Vec<(Arc<str>, (u64, f64))> = window.1.drain().collect();
        window.0 = std::time::Instant::now();
        drop(window);
        parks.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        metrics.park_wait.reset();
        let mut other = (0u64, 0.0f64);
        for (i, (park, (calls, waited))) in parks.into_iter().enumerate() {
            if i < self.top && park.as_ref() != OTHER_PARKS {
                let label = if park.is_empty() { "(none)" } else { &park };
                metrics
                    .park_wait
                    .with_label_values(&[label])
                    .set(waited / calls as f64);
            } else {
                other.0 += calls;
                other.1 += waited;
            }
        }
        if other.0 > 0 {
            metrics
                .park_wait
                .with_label_values(&[OTHER_PARKS])
                .set(other.1 / other.0 as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn policy(weights: &[(&str, u32)], floors: &[(&str, u32)]) -> Arc<ParkPolicy> {
        Arc::new(ParkPolicy::of(&FairnessSettings {
            weights: weights.iter().map(|(p, w)| (p.to_string(), *w)).collect(),
            floors: floors.iter().map(|(p, w)| (p.to_string(), *w)).collect(),
            ceilings: BTreeMap::new(),
            ..FairnessSettings::default()
        }))
    }

    /// Queues `calls` of each park behind one held permit, then lets them
    /// through one at a time; returns the order they were served in.
    async fn served_order(queue: Arc<FairQueue>, calls: &[(&str, usize)]) -> Vec<String> {
        let held = queue.acquire(&Arc::from("holder")).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (park, count) in calls {
            for _ in 0..*count {
                let (queue, order) = (queue.clone(), order.clone());
                let park: Arc<str> = Arc::from(*park);
                tasks.push(tokio::spawn(async move {
                    let _permit = queue.acquire(&park).await;
                    order.lock().unwrap().push(park.to_string());
                    tokio::task::yield_now().await;
                }));
                // Queued in this order.
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_quiet_park_is_served_before_the_backlog_of_a_hot_one() {
        let queue = Arc::new(FairQueue::new(1, policy(&[], &[]), false));
        let order = served_order(queue, &[("hot", 20), ("quiet", 2)]).await;
        let quiet: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, p)| *p == "quiet")
            .map(|(i, _)| i)
            .collect();
        // FIFO would serve them 20th and 21st.
        assert!(quiet[1] <= 4, "quiet served at {quiet:?} of {order:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn weights_split_turns_between_backlogged_parks() {
        let queue = Arc::new(FairQueue::new(1, policy(&[("big", 3)], &[]), false));
        let order = served_order(queue, &[("big", 40), ("small", 40)]).await;
        let first_40 = &order[..40];
        let big = first_40.iter().filter(|p| *p == "big").count();
        assert!((28..=32).contains(&big), "3:1 of 40 is 30, got {big}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_park_under_its_floor_goes_first() {
        let queue = Arc::new(FairQueue::new(
            1,
            policy(&[("hot", 100)], &[("cold", 1_000)]),
            true,
        ));
        let order = served_order(queue, &[("hot", 10), ("cold", 1)]).await;
        assert_eq!(order[0], "cold", "{order:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_waiter_loses_no_permit_and_a_shrink_holds() {
        let queue = Arc::new(FairQueue::new(1, policy(&[], &[]), false));
        let park: Arc<str> = Arc::from("p");
        let held = queue.acquire(&park).await;
        let waiter = {
            let (queue, park) = (queue.clone(), park.clone());
            tokio::spawn(async move {
                let _permit = queue.acquire(&park).await;
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(queue.waiting(), 1);
        drop(held);
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        // The permit the aborted task held came back.
        let again = tokio::time::timeout(Duration::from_secs(1), queue.acquire(&park)).await;
        assert!(again.is_ok());
        drop(again);
        queue.set_capacity(2);
        let (a, b) = (queue.acquire(&park).await, queue.acquire(&park).await);
        queue.set_capacity(1);
        drop(a);
        let blocked = tokio::time::timeout(Duration::from_millis(50), queue.acquire(&park)).await;
        assert!(blocked.is_err(), "two held over a capacity of one");
        drop(b);
        let freed = tokio::time::timeout(Duration::from_secs(1), queue.acquire(&park)).await;
        assert!(freed.is_ok());
    }
}
