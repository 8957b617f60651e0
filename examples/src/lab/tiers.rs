//! The `tiers` run: hot services in timed bursts and cold targets under
//! Poisson arrivals through one client, each on an address of the
//! embedded server; connections counted per tier of addresses, and open
//! connections per tier and the stack's dedicated pools sampled over the
//! load and the tail after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

use super::sampler::{ClientSampler, OpenCount};
use super::tenants::{figures, merged, set_up_or_skip};
use super::{Baseline, Env, LabError, Row, Ticker, row};
use crate::driver::{self, Progress};
use crate::results::{TierCounts, TierSample};
use crate::scenarios::{Scenario, TiersPlan};
use crate::server::{AddressSnapshot, OpenSample, Server};
use crate::stacks::{Stack, StackKind};
use crate::target::Target;

/// How often open connections per tier and dedicated pools are sampled.
const TIER_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The hot services' bursts, every service's in time order.
fn hot_schedule(plan: &TiersPlan, hot: &[Target]) -> Vec<(Duration, Target)> {
    let mut schedule: Vec<(Duration, Target)> = hot
        .iter()
        .enumerate()
        .flat_map(|(i, target)| {
            let (offset, bursts) = plan.bursts(i);
            (0..bursts).map(move |k| (offset + plan.period * k as u32, target.clone()))
        })
        .collect();
    schedule.sort_by_key(|(at, _)| *at);
    schedule
}

/// Runs `kind` on `tiers`: the hot bursts and the cold arrivals together,
/// open connections per tier and dedicated pools sampled meanwhile and in
/// the tail after (sampled while the next stack runs).
pub(super) async fn run(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: &Env,
    bar: &ProgressBar,
    plan: &TiersPlan,
) -> Result<Row, LabError> {
    let (server, targets, stack) = match set_up_or_skip(&scenario, kind, env, bar).await? {
        Ok(set) => set,
        Err(skipped) => return Ok(skipped),
    };
    let (hot, cold) = targets.split_at(plan.hot.min(targets.len()));
    let cold: Arc<[Target]> = cold.to_vec().into();
    let schedule = hot_schedule(plan, hot);
    let baseline = Baseline::take(Some(&server), Some(&stack));
    let accepted_before = server.address_snapshots();
    let progress = Progress::new();
    let ticker = Ticker::start(bar, &progress, &scenario.load, 100);
    let started = Instant::now();
    let server_idle_before = server.stats().idle_socket_seconds();
    let sampler = ClientSampler::start(OpenCount::Server(server.stats().clone()), progress.clone());
    let (load_done, watching) = oneshot::channel();
    let load = async {
        let both = tokio::join!(
            driver::run(&stack, &cold, &scenario.load, &progress, true, 0),
            driver::timed_bursts(&stack, &schedule, plan.burst, &progress, true),
        );
        let _ = load_done.send(());
        both
    };
    let ((cold_out, hot_out), mut samples) = tokio::join!(
        load,
        watch_tiers(&server, &stack, plan.hot, started, async {
            let _ = watching.await;
        }),
    );
    ticker.stop().await;
    let (cold_out, hot_out) = (cold_out?, hot_out?);
    let load_window = sampler.finish();
    let server_idle_load = server.stats().idle_socket_seconds() - server_idle_before;
    let outcome = merged(&[&cold_out, &hot_out]);
    let (tail, hot_n) = (plan.tail, plan.hot);
    Ok(Row::Pending(tokio::spawn(async move {
        let server_idle_before = server.stats().idle_socket_seconds();
        let sampler =
            ClientSampler::start(OpenCount::Server(server.stats().clone()), Progress::new());
        samples.extend(watch_tiers(&server, &stack, hot_n, started, sleep(tail)).await);
        let tail_window = sampler.finish();
        let tail_idle = tail_window.0;
        let load_end_s = outcome.elapsed.as_secs_f64();
        let mut r = row(&scenario, kind, &outcome, Some(&server), &baseline, &stack);
        let (idle, open) = joined(load_window, tail_window, load_end_s);
        r.idle_socket_seconds = idle;
        r.tail_idle_socket_seconds = Some(tail_idle);
        r.server_idle_socket_seconds =
            server_idle_load + server.stats().idle_socket_seconds() - server_idle_before;
        r.open_connections = open;
        r.load_end_s = load_end_s;
        r.services = Some(BTreeMap::from([
            ("hot".to_owned(), figures(&hot_out)),
            ("cold".to_owned(), figures(&cold_out)),
        ]));
        r.hot_p99_us = Some(hot_out.recorder.quantile_us(0.99));
        r.connections_by_tier = Some(opened_by_tier(
            &accepted_before,
            &server.address_snapshots(),
            hot_n,
        ));
        r.dedicated_pools_peak = samples.iter().filter_map(|s| s.dedicated_pools).max();
        r.tier_samples = samples;
        r
    })))
}

/// Samples open connections per tier and the stack's dedicated pools every
/// [`TIER_SAMPLE_EVERY`] until `until` resolves, and once more then.
async fn watch_tiers(
    server: &Server,
    stack: &Stack,
    hot: usize,
    started: Instant,
    until: impl Future<Output = ()>,
) -> Vec<TierSample> {
    let sample = || {
        tier_sample(
            &server.address_snapshots(),
            hot,
            started.elapsed().as_secs_f64(),
            stack.dedicated_pools(),
        )
    };
    let mut samples = vec![sample()];
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = sleep(TIER_SAMPLE_EVERY) => samples.push(sample()),
            _ = &mut until => break,
        }
    }
    samples.push(sample());
    samples
}

/// One sample: the first `hot` addresses' open connections and the rest's.
fn tier_sample(
    addresses: &[AddressSnapshot],
    hot: usize,
    at_s: f64,
    dedicated_pools: Option<u64>,
) -> TierSample {
    let (hot, cold) = addresses.split_at(hot.min(addresses.len()));
    TierSample {
        at_s,
        open_hot: hot.iter().map(|a| a.open).sum(),
        open_cold: cold.iter().map(|a| a.open).sum(),
        dedicated_pools,
    }
}

/// Connections accepted between two snapshots of the addresses, the first
/// `hot` addresses' apart from the rest's.
fn opened_by_tier(before: &[AddressSnapshot], after: &[AddressSnapshot], hot: usize) -> TierCounts {
    let mut counts = TierCounts::default();
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let opened = a.accepted.saturating_sub(b.accepted);
        if i < hot {
            counts.hot += opened;
        } else {
            counts.cold += opened;
        }
    }
    counts
}

/// A load window and the tail after it as one: the idle socket-seconds
/// added up, the tail's samples moved after the load's end.
fn joined(
    load: (f64, Vec<OpenSample>),
    tail: (f64, Vec<OpenSample>),
    load_end_s: f64,
) -> (f64, Vec<OpenSample>) {
    let (idle, mut samples) = load;
    samples.extend(tail.1.into_iter().map(|mut sample| {
        sample.at_s += load_end_s;
        sample
    }));
    (idle + tail.0, samples)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn at(at_s: f64, open: u64, idle: u64) -> OpenSample {
        OpenSample { at_s, open, idle }
    }

    fn address(port: u16, open: u64, accepted: u64) -> AddressSnapshot {
        AddressSnapshot {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            up: true,
            in_flight: 0,
            cache_hits: 0,
            cache_misses: 0,
            open,
            accepted,
        }
    }

    /// The load's window and the tail's, each integrated on its own, add
    /// up; the tail's samples follow the load's end.
    #[test]
    fn idle_socket_seconds_cover_load_and_tail() {
        let load = (4.0, vec![at(0.0, 2, 2), at(2.0, 2, 2)]);
        let tail = (3.0, vec![at(0.0, 2, 2), at(1.0, 1, 1), at(3.0, 0, 0)]);
        let (idle, samples) = joined(load, tail, 2.0);
        assert_eq!(idle, 7.0);
        let times: Vec<f64> = samples.iter().map(|s| s.at_s).collect();
        assert_eq!(times, [0.0, 2.0, 2.0, 3.0, 5.0]);
    }

    /// The first `hot` addresses count as hot, the rest as cold, for
    /// open connections and for connections opened since a snapshot.
    #[test]
    fn connections_split_by_tier_of_address() {
        let before = [address(1, 0, 2), address(2, 0, 0), address(3, 0, 5)];
        let after = [address(1, 3, 10), address(2, 1, 4), address(3, 2, 6)];
        assert_eq!(
            opened_by_tier(&before, &after, 1),
            TierCounts { hot: 8, cold: 5 }
        );
        let sample = tier_sample(&after, 2, 1.5, Some(3));
        assert_eq!((sample.open_hot, sample.open_cold), (4, 2));
        assert_eq!(sample.dedicated_pools, Some(3));
    }

    /// Every hot service's bursts, in time order, phases spread.
    #[test]
    fn hot_schedule_orders_every_services_bursts() {
        let plan = TiersPlan {
            hot: 2,
            burst: 32,
            period: Duration::from_secs(3),
            cold: 0,
            cold_zipf: 1.1,
            cold_rate: 0.0,
            load: Duration::from_secs(6),
            tail: Duration::ZERO,
        };
        let hot = [
            Target::parse("http://127.0.0.1:1").expect("a URL"),
            Target::parse("http://127.0.0.2:1").expect("a URL"),
        ];
        let schedule = hot_schedule(&plan, &hot);
        let seen: Vec<(u128, &str)> = schedule
            .iter()
            .map(|(at, t)| (at.as_millis(), t.uri.host().unwrap_or_default()))
            .collect();
        assert_eq!(
            seen,
            [
                (0, "127.0.0.1"),
                (1_500, "127.0.0.2"),
                (3_000, "127.0.0.1"),
                (4_500, "127.0.0.2")
            ]
        );
    }
}
