//! The runs of the scenarios with several services through one client
//! (`noisy-neighbour`, `tiers`): one embedded server whose addresses are
//! the services, each service's load and figures apart, connections
//! counted by the server (in all, and per address for the tiers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

use super::sampler::{ClientSampler, OpenCount};
use super::{Baseline, Env, LabError, Row, Ticker, row};
use crate::driver::{self, Load, LoadOutcome, Progress, Recorder};
use crate::results::{RunResult, ServiceFigures, TierCounts, TierSample};
use crate::scenarios::{NoisyPlan, Scenario, TenantsPlan, TiersPlan};
use crate::server::{AddressSnapshot, OpenSample, Server};
use crate::stacks::{Stack, StackError, StackKind};
use crate::target::Target;
use crate::tls;

/// How often `tiers` samples open connections per tier and dedicated pools.
const TIER_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Runs `kind` on a scenario with several services.
pub(super) async fn run(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: Arc<Env>,
    bar: ProgressBar,
) -> Result<Row, LabError> {
    match scenario.tenants.clone() {
        Some(TenantsPlan::NoisyNeighbour(plan)) => noisy(scenario, kind, &env, &bar, &plan).await,
        Some(TenantsPlan::Tiers(plan)) => tiers(scenario, kind, &env, &bar, &plan).await,
        None => Err("a scenario with several services but no plan".into()),
    }
}

/// The scenario's server, its addresses' URLs as targets, and a stack of
/// `kind`; `Ok(Err(why))` when the stack cannot run here.
async fn set_up(
    scenario: &Scenario,
    kind: StackKind,
    env: &Env,
) -> Result<Result<(Server, Vec<Target>, Stack), String>, LabError> {
    let server = Server::start(
        scenario
            .server
            .clone()
            .addresses(scenario.addresses)
            .worker_threads(env.server_threads),
    )?;
    let targets = (0..server.addrs().len())
        .map(|i| Target::parse(&server.url(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = scenario
        .tenants
        .as_ref()
        .ok_or("a scenario with several services but no plan")?;
    let tls = tls::client_config(env.identity.root_store())?;
    Ok(Stack::build_for_tenants(kind, tls, plan, &targets[0])
        .await
        .map(|stack| (server, targets, stack))
        .map_err(|e| e.to_string()))
}

/// [`set_up`], or the skipped row (the bar moved past it).
async fn set_up_or_skip(
    scenario: &Scenario,
    kind: StackKind,
    env: &Env,
    bar: &ProgressBar,
) -> Result<Result<(Server, Vec<Target>, Stack), Row>, LabError> {
    Ok(set_up(scenario, kind, env).await?.map_err(|why| {
        bar.inc(100);
        Row::Skipped(why)
    }))
}

/// One service's figures from its record.
fn figures(outcome: &LoadOutcome) -> ServiceFigures {
    let rec = &outcome.recorder;
    let seconds = outcome.elapsed.as_secs_f64();
    ServiceFigures {
        requests: rec.requests(),
        rps: if seconds > 0.0 {
            rec.ok() as f64 / seconds
        } else {
            0.0
        },
        p50_us: rec.quantile_us(0.5),
        p99_us: rec.quantile_us(0.99),
        errors: rec.errors(),
    }
}

/// Both services' records as one, over the longer of their times.
fn merged(outcomes: &[&LoadOutcome]) -> LoadOutcome {
    let mut recorder = Recorder::new();
    for outcome in outcomes {
        recorder.merge(&outcome.recorder);
    }
    LoadOutcome {
        recorder,
        elapsed: outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default(),
    }
}

/// The quiet service's Poisson load over `duration`, bounded in count by
/// twice its expected arrivals.
fn quiet_load(plan: &NoisyPlan, duration: Duration) -> Load {
    let expected = plan.quiet_rate * duration.as_secs_f64();
    Load::Poisson {
        rate: plan.quiet_rate,
        duration,
        max_in_flight: plan.quiet_in_flight,
        zipf_exponent: None,
        max_requests: Some((expected * 2.0) as u64 + 100),
        keys: None,
    }
}

/// `noisy-neighbour`: a warm-up of both loads, then both measured; then
/// service B alone through a new client of the same stack.
async fn noisy(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: &Env,
    bar: &ProgressBar,
    plan: &NoisyPlan,
) -> Result<Row, LabError> {
    let (server, targets, stack) = match set_up_or_skip(&scenario, kind, env, bar).await? {
        Ok(set) => set,
        Err(skipped) => return Ok(skipped),
    };
    // Connections count from before the warm-up; retries from after it.
    let mut baseline = Baseline::take(Some(&server), Some(&stack));
    let (a, b): (Arc<[Target]>, Arc<[Target]>) = (
        vec![targets[0].clone()].into(),
        vec![targets[1].clone()].into(),
    );
    let noisy_load = |duration| Load::Closed {
        workers: plan.noisy_workers,
        duration,
        max_requests: match scenario.load {
            Load::Closed { max_requests, .. } => max_requests,
            _ => None,
        },
        think: None,
        post_every: None,
        keys: None,
    };
    let progress = Progress::new();
    let ticker = Ticker::start(bar, &progress, &scenario.load, 100);
    bar.set_message(format!("{kind} (warm-up)"));
    let (noisy_warm, quiet_warm) = both(
        &stack,
        [
            (&a, noisy_load(plan.warm_up)),
            (&b, quiet_load(plan, plan.warm_up)),
        ],
        &progress,
        0,
    )
    .await?;
    let mut warmup = merged(&[&noisy_warm, &quiet_warm]).recorder;
    baseline.retries = stack.retries();
    bar.set_message(kind.name());
    let measured = both(
        &stack,
        [
            (&a, noisy_load(plan.measured)),
            (&b, quiet_load(plan, plan.measured)),
        ],
        &progress,
        1,
    )
    .await;
    ticker.stop().await;
    let (noisy_out, quiet_out) = measured?;
    let outcome = merged(&[&noisy_out, &quiet_out]);
    let mut r = row(&scenario, kind, &outcome, Some(&server), &baseline, &stack);
    r.load_end_s = outcome.elapsed.as_secs_f64();
    r.client_peak_open_connections = Some(stack.client_stats().snapshot().peak_open);
    r.services = Some(BTreeMap::from([
        ("A".to_owned(), figures(&noisy_out)),
        ("B".to_owned(), figures(&quiet_out)),
    ]));
    drop((stack, server));

    bar.set_message(format!("{kind} (B alone)"));
    let (_server, targets, stack) = set_up(&scenario, kind, env)
        .await?
        .map_err(|why| format!("{kind}: B alone: {why}"))?;
    let b: Arc<[Target]> = vec![targets[1].clone()].into();
    let progress = Progress::new();
    let warm = driver::run(
        &stack,
        &b,
        &quiet_load(plan, plan.solo_warm_up),
        &progress,
        false,
        0,
    )
    .await?;
    warmup.merge(&warm.recorder);
    let solo = driver::run(
        &stack,
        &b,
        &quiet_load(plan, plan.solo),
        &progress,
        false,
        0,
    )
    .await?;
    r.solo_p99_us = Some(solo.recorder.quantile_us(0.99));
    if solo.recorder.errors() > 0 {
        r.errors_by_kind
            .insert("solo".into(), solo.recorder.errors());
    }
    r.lost += solo.recorder.lost();
    r.misdelivered += solo.recorder.misdelivered() + solo.recorder.unechoed();
    note_warmup(&mut r, &warmup);
    Ok(Row::Done(Box::new(r)))
}

/// Two services' loads at once through `stack` (`round` numbers the
/// closed loops' request ids apart).
async fn both(
    stack: &Stack,
    [(a, load_a), (b, load_b)]: [(&Arc<[Target]>, Load); 2],
    progress: &Arc<Progress>,
    round: u32,
) -> Result<(LoadOutcome, LoadOutcome), StackError> {
    let (a, b) = tokio::join!(
        driver::run(stack, a, &load_a, progress, false, round),
        driver::run(stack, b, &load_b, progress, false, round),
    );
    Ok((a?, b?))
}

/// Failed warm-up requests show in the row's errors by kind; lost or
/// misdelivered ones fail the run as the measured ones do.
fn note_warmup(r: &mut RunResult, warmup: &Recorder) {
    if warmup.errors() > 0 {
        r.errors_by_kind.insert("warmup".into(), warmup.errors());
    }
    r.lost += warmup.lost();
    r.misdelivered += warmup.misdelivered() + warmup.unechoed();
}

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

/// `tiers`: the hot bursts and the cold arrivals together, open
/// connections per tier and dedicated pools sampled meanwhile and in the
/// tail after (sampled while the next stack runs).
async fn tiers(
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
        let mut snapshot = Server::start(crate::server::ServerConfig::default())
            .expect("a loopback server")
            .address_snapshots()
            .remove(0);
        snapshot.addr = SocketAddr::from(([127, 0, 0, 1], port));
        snapshot.open = open;
        snapshot.accepted = accepted;
        snapshot
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
