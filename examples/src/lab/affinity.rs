//! The affinity scenarios' runs: one logical service on the embedded
//! server's addresses, the stack told its endpoints, the same warm-up for
//! every stack, then the load while the plan's steps change the endpoints;
//! the row gains the server's cache and load figures and the keys' moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use http::HeaderValue;
use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use super::{Baseline, Env, LabError, Row, Ticker, row};
use crate::driver::{self, Progress, Recorder, Routes, moved_fraction};
use crate::results::KeysMoved;
use crate::scenarios::{Scenario, ServicePlan, Step};
use crate::server::Server;
use crate::stacks::{Stack, StackKind};
use crate::target::Target;
use crate::tls;

/// The warm-up's key sequence is drawn from this seed: the same for every stack.
const WARM_UP_SEED: u64 = 0x5EED_0015;

/// A key's endpoint in a phase is the one that served most of its
/// requests, among keys requested at least this often in the phase.
const MIN_REQUESTS_PER_KEY: u32 = 3;

/// Concurrent requests of the warm-up: near the measured loads' requests
/// in flight, so that the warm-up spills no more keys off their endpoint
/// (a load-bounded router's overflow) than the load would.
const WARM_UP_WORKERS: usize = 8;

/// Runs `kind` on an affinity scenario from start to end.
pub(super) async fn run(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: Arc<Env>,
    bar: ProgressBar,
) -> Result<Row, LabError> {
    let plan = scenario
        .service
        .as_ref()
        .ok_or("an affinity scenario without a service plan")?;
    let mut server = Server::start(
        scenario
            .server
            .clone()
            .addresses(plan.endpoints)
            .worker_threads(env.server_threads),
    )?;
    let service = Target::parse(&format!("http://svc.lab:{}/", server.addrs()[0].port()))?;
    // Connections count from before the stack exists (the warm-up's
    // included); retries, the cache and the load from after the warm-up.
    let mut baseline = Baseline::take(Some(&server), None);
    let tls = tls::client_config(env.identity.root_store())?;
    let stack = match Stack::build_for_service(kind, tls, &service, env.policy.as_ref()) {
        Ok(stack) => stack,
        Err(why) => {
            bar.inc(100);
            return Ok(Row::Skipped(why.to_string()));
        }
    };
    stack.set_endpoints(&service, server.addrs())?;
    bar.set_message(format!("{kind} (warm-up)"));
    let warmup = warm_up(&stack, &service, plan).await?;
    let warm = server.stats().snapshot();
    baseline.retries = stack.retries();
    let (ejections_before, detours_before) = (stack.ejections(), stack.warm_detours());
    let load_from_s = server.stats().uptime().as_secs_f64();

    bar.set_message(kind.name());
    plan.keys.set_phase(0);
    let targets: Arc<[Target]> = vec![service.clone()].into();
    let progress = Progress::new();
    let ticker = Ticker::start(&bar, &progress, &scenario.load, 100);
    // The steps stop with the load (a shorter `--duration` or a
    // `--requests` cap ends it before the last ones).
    let mut steps = Applied::default();
    let outcome = {
        let load = driver::run(&stack, &targets, &scenario.load, &progress, false, 0);
        let apply = apply(&mut server, &stack, &service, plan, &mut steps);
        tokio::pin!(load, apply);
        tokio::select! {
            outcome = &mut load => outcome,
            applied = &mut apply => {
                applied?;
                load.await
            }
        }
    };
    ticker.stop().await;
    let outcome = outcome?;

    let mut r = row(&scenario, kind, &outcome, Some(&server), &baseline, &stack);
    let now = server.stats().snapshot();
    r.cache_hits = Some(now.cache_hits - warm.cache_hits);
    r.cache_misses = Some(now.cache_misses - warm.cache_misses);
    r.max_load_ratio = server.stats().max_load_ratio_since(load_from_s);
    r.max_load_over_bound = server.stats().max_load_over_bound_since(load_from_s);
    let (ejections, detours) = (stack.ejections(), stack.warm_detours());
    r.ejections = ejections.map(|n| n - ejections_before.unwrap_or(0));
    r.warm_detours = detours.map(|n| n - detours_before.unwrap_or(0));
    r.load_end_s = outcome.elapsed.as_secs_f64();
    let routes = outcome.recorder.routes();
    if !steps.moves.is_empty() {
        r.keys_moved = Some(keys_moved(routes, &steps.moves));
    }
    if let Some((down_phase, settled_phase, failed)) = &steps.failure {
        let (fraction, compared) = keys_returned(routes, *down_phase, *settled_phase, failed);
        r.keys_returned_fraction = fraction;
        r.keys_returned_compared = Some(compared);
    }
    if warmup.errors() > 0 {
        r.errors_by_kind.insert("warmup".into(), warmup.errors());
    }
    Ok(Row::Done(Box::new(r)))
}

/// What the steps did, for the row.
#[derive(Debug, Default)]
struct Applied {
    /// Per change of the endpoint set: (endpoints before, after, phase
    /// before; the phase after is the next).
    moves: Vec<(usize, usize, u32)>,
    /// The phase before an endpoint went down, the phase once it had
    /// returned and settled, and its address.
    failure: Option<(u32, u32, HeaderValue)>,
}

/// Applies the plan's steps at their times, noting each in `applied`;
/// step `j` starts phase `j + 1`.
async fn apply(
    server: &mut Server,
    stack: &Stack,
    service: &Target,
    plan: &ServicePlan,
    applied: &mut Applied,
) -> Result<(), LabError> {
    let start = Instant::now();
    let mut endpoints = plan.endpoints;
    let mut down: Option<(u32, HeaderValue)> = None;
    for (j, (at, step)) in plan.steps.iter().enumerate() {
        sleep_until(start + *at).await;
        let (before, after) = (j as u32, j as u32 + 1);
        plan.keys.set_phase(after);
        match *step {
            Step::Endpoints(n) => {
                while server.addrs().len() < n {
                    server.add_address()?;
                }
                for i in endpoints..n {
                    server.bring_up(i)?;
                }
                stack.set_endpoints(service, &server.addrs()[..n])?;
                applied.moves.push((endpoints, n, before));
                if n < endpoints {
                    // The removed endpoints' connections drain, out of the
                    // load samples, then their addresses close: a stack
                    // still sending there fails.
                    for i in n..endpoints {
                        server.retire(i);
                    }
                    sleep(plan.drain).await;
                    for i in n..endpoints {
                        server.take_down(i).await;
                    }
                }
                endpoints = n;
            }
            Step::Down(i) => {
                let addr = HeaderValue::from_str(&server.addrs()[i].to_string())?;
                down = Some((before, addr));
                server.take_down(i).await;
            }
            Step::Up(i) => server.bring_up(i)?,
            Step::Mark => {
                if let Some((down_phase, addr)) = &down {
                    applied.failure = Some((*down_phase, after, addr.clone()));
                }
            }
        }
    }
    Ok(())
}

fn keys_moved(routes: &Routes, moves: &[(usize, usize, u32)]) -> Vec<KeysMoved> {
    moves
        .iter()
        .map(|&(from, to, phase)| {
            let (moved, compared) = moved_fraction(
                &routes.endpoint_per_key(phase, MIN_REQUESTS_PER_KEY),
                &routes.endpoint_per_key(phase + 1, MIN_REQUESTS_PER_KEY),
            );
            let minimum = if to > from {
                (to - from) as f64 / to as f64
            } else {
                (from - to) as f64 / from as f64
            };
            KeysMoved {
                from,
                to,
                moved_fraction: moved,
                minimum_fraction: minimum,
                keys_compared: compared,
            }
        })
        .collect()
}

/// Of the keys `failed` served before it went down (phase `before`) and
/// requested once it had returned and settled (phase `settled`), the
/// share it serves again, and how many such keys there were.
fn keys_returned(
    routes: &Routes,
    before: u32,
    settled: u32,
    failed: &HeaderValue,
) -> (Option<f64>, usize) {
    let after = routes.endpoint_per_key(settled, MIN_REQUESTS_PER_KEY);
    let (mut seen, mut back) = (0usize, 0usize);
    for (key, by) in routes.endpoint_per_key(before, MIN_REQUESTS_PER_KEY) {
        if by != failed {
            continue;
        }
        if let Some(now) = after.get(&key) {
            seen += 1;
            back += usize::from(now == failed);
        }
    }
    ((seen > 0).then(|| back as f64 / seen as f64), seen)
}

/// Sends the plan's warm-up, keyed GETs in an order drawn from
/// [`WARM_UP_SEED`] (the same sequence for every stack),
/// `WARM_UP_WORKERS` at a time.
async fn warm_up(
    stack: &Stack,
    service: &Target,
    plan: &ServicePlan,
) -> Result<Recorder, LabError> {
    let keys = &plan.keys;
    let mut rng = fastrand::Rng::with_seed(WARM_UP_SEED);
    let mut every_key: Vec<u32> = Vec::new();
    if plan.warm_every_key {
        every_key.extend(0..keys.len() as u32);
        rng.shuffle(&mut every_key);
    }
    let order: Arc<[u32]> = every_key
        .into_iter()
        .chain((0..plan.warm_up).map(|_| keys.draw_with(&mut rng)))
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..WARM_UP_WORKERS {
        let mut client = stack
            .shared()
            .ok_or_else(|| format!("{}: no shared client", stack.kind()))?;
        let (order, next, sent, keys, service) = (
            order.clone(),
            next.clone(),
            sent.clone(),
            keys.clone(),
            service.clone(),
        );
        tasks.spawn(async move {
            let mut recorder = Recorder::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                let Some(&key) = order.get(i) else {
                    return recorder;
                };
                let id = HeaderValue::from(i as u64);
                let (latency, answer) = driver::send(
                    &mut client,
                    &service,
                    &id,
                    false,
                    Some(keys.value(key)),
                    &sent,
                )
                .await;
                driver::note(&mut recorder, latency, answer, &id, None);
            }
        });
    }
    let mut all = Recorder::new();
    while let Some(done) = tasks.join_next().await {
        all.merge(&done?);
    }
    all.reconcile(sent.load(Relaxed));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(name: &'static str) -> HeaderValue {
        HeaderValue::from_static(name)
    }

    #[test]
    fn keys_moved_compares_each_step_with_its_minimum() {
        let mut routes = Routes::default();
        for key in 0..4 {
            for _ in 0..MIN_REQUESTS_PER_KEY {
                routes.record(0, key, &by("a"));
                routes.record(1, key, &by(if key == 0 { "b" } else { "a" }));
                routes.record(2, key, &by(if key < 2 { "b" } else { "a" }));
            }
        }
        // A key seen too rarely is not compared.
        routes.record(0, 9, &by("a"));
        routes.record(1, 9, &by("b"));
        let steps = keys_moved(&routes, &[(8, 12, 0), (12, 6, 1)]);
        assert_eq!(steps[0].moved_fraction, 0.25);
        assert_eq!(steps[0].minimum_fraction, 4.0 / 12.0);
        assert_eq!(steps[1].moved_fraction, 0.25);
        assert_eq!(steps[1].minimum_fraction, 0.5);
        assert_eq!(steps[1].keys_compared, 4);
    }

    #[test]
    fn keys_returned_counts_the_failed_endpoints_keys_seen_again() {
        let mut routes = Routes::default();
        for _ in 0..MIN_REQUESTS_PER_KEY {
            routes.record(0, 1, &by("down"));
            routes.record(0, 2, &by("down"));
            routes.record(0, 3, &by("down"));
            routes.record(0, 4, &by("other"));
            routes.record(3, 1, &by("down"));
            routes.record(3, 2, &by("other"));
            routes.record(3, 4, &by("down"));
        }
        // Keys 1 and 2 were the failed endpoint's and are seen again; key 1 is back.
        assert_eq!(keys_returned(&routes, 0, 3, &by("down")), (Some(0.5), 2));
        assert_eq!(keys_returned(&routes, 0, 3, &by("nobody")), (None, 0));
    }
}
