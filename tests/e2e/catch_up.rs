//! A replica killed with -9 one second after it took partitions over, while
//! it catches up a backlog, five times in a row (each replica takes over
//! from the one killed before it): the next owner sends again what the
//! victim finished after its last commit that landed. Commits keep up with
//! progress, so that is at most the calls under way plus the rate times
//! one commit interval (and a commit's round trip). Run unpaced and at a
//! paced rate; each prints its figures per kill.

use std::time::{Duration, Instant};

use paysync::tools::emulator::Faults;

use super::support::{Process, RunConfig, valid_events, wait_accepted};
use super::{SERIAL, Scenario, assigned};

const KILLS: usize = 5;
const MAX_IN_FLIGHT: u64 = 32;
/// `kafka.commit_interval_ms`'s default.
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// Beyond the commit interval: the round trip of the commit on its way at
/// the kill and of the one before it, on a 2-core machine that also runs
/// the broker and the emulator (up to ~230 calls at 2,000/s were seen).
const MARGIN: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_while_catching_up_a_backlog_unpaced_resends_one_commit_interval() {
    catch_up_kills("catchup-unpaced", 40_000, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_while_catching_up_a_backlog_at_a_paced_rate_resends_one_commit_interval()
{
    catch_up_kills("catchup-paced", 4_000, Some(400)).await;
}

async fn catch_up_kills(name: &str, backlog: usize, rate: Option<u32>) {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::new(
        name,
        Faults {
            latency_ms: 5,
            ..Faults::default()
        },
    )
    .await;
    let records = valid_events(name, backlog);
    scenario.kafka.produce(&scenario.topic, &records).await;
    let url = scenario.emulator.url();
    let delivery = format!("max_in_flight = {MAX_IN_FLIGHT}");
    let config = RunConfig {
        commit_interval_ms: COMMIT_INTERVAL.as_millis() as u64,
        ..scenario.config(&url, &delivery)
    };
    let rate_text = rate.map(|rate| rate.to_string());
    let env: Vec<(&str, &str)> = rate_text
        .iter()
        .map(|rate| ("PAYSYNC_DELIVERY__RATE_LIMIT_PER_SEC", rate.as_str()))
        .collect();
    // Each round's replica takes the partitions over from the one killed
    // before it (the first from nobody), and is killed a second later.
    let mut per_kill = Vec::new();
    let mut peak_rate = 0u64;
    for round in 0..=KILLS {
        let (_, _, duplicates_before) = scenario.emulator.gateway().order_counts();
        let replica = Process::start_with_env(&config, &env);
        let deadline = Instant::now() + Duration::from_secs(60);
        while assigned(&replica).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the new replica took nothing over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let taken = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // What the previous victim finished after its last commit is sent
        // again within this replica's first second.
        if round > 0 {
            let (accepted, distinct, duplicates) = scenario.emulator.gateway().order_counts();
            let sent_twice = (duplicates - duplicates_before) as u64;
            println!(
                "e2e {name}: kill {}: {sent_twice} calls sent twice by the next owner; so far accepted {accepted}, distinct {distinct}",
                round - 1
            );
            per_kill.push(sent_twice);
        }
        if round == KILLS {
            // The last one finishes the backlog.
            wait_accepted(&scenario.emulator, records.len()).await;
            scenario.wait_committed_to_end().await;
            replica.signal("TERM");
            assert_eq!(replica.wait_exit(Duration::from_secs(30)).await, Some(0));
            break;
        }
        let delivered = replica.metric("paysync_events_delivered_total");
        let commits = replica.metric("paysync_commits_total");
        let own_rate = delivered.unwrap_or(0.0) / taken.elapsed().as_secs_f64();
        replica.kill();
        let peak = scenario
            .emulator
            .gateway()
            .stats()
            .accepted_per_second
            .values()
            .max()
            .copied()
            .unwrap_or(0);
        peak_rate = peak_rate.max(peak).max(own_rate.ceil() as u64);
        let distinct = scenario.emulator.gateway().order_counts().1;
        println!(
            "e2e {name}: kill {round}: killed {:?} after taking the partitions over, having delivered {delivered:?} in {commits:?} commits",
            taken.elapsed()
        );
        assert!(
            distinct < records.len(),
            "the backlog ran out before kill {round}: the kills must land during catch-up"
        );
    }
    let within = (peak_rate as f64 * (COMMIT_INTERVAL + MARGIN).as_secs_f64()).ceil() as u64;
    let bound = MAX_IN_FLIGHT + within;
    println!(
        "e2e {name}: calls sent twice per kill {per_kill:?} (bound {bound} = max_in_flight {MAX_IN_FLIGHT} + {within} at the peak rate of {peak_rate}/s (a victim's own or the emulator's busiest second) over the {COMMIT_INTERVAL:?} commit interval + {MARGIN:?} margin); rate limit {rate:?}"
    );
    for (round, sent_twice) in per_kill.iter().enumerate() {
        assert!(
            *sent_twice <= bound,
            "kill {round} sent {sent_twice} calls twice, above {bound}"
        );
    }
    let produced: std::collections::HashSet<String> = records.iter().map(|r| r.0.clone()).collect();
    assert_eq!(scenario.accepted_ids(), produced, "nothing lost");
    assert!(scenario.dead_letters().is_empty());
    scenario.report(records.len());
}
