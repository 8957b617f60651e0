//! The runs of the scenarios with several services through one client
//! (`noisy-neighbour`, and `tiers` in its own module): one embedded server
//! whose addresses are the services, each service's load and figures
//! apart, connections counted by the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use super::{Baseline, Env, LabError, Row, Ticker, row};
use crate::driver::{self, Load, LoadOutcome, Progress, Recorder};
use crate::results::{RunResult, ServiceFigures};
use crate::scenarios::{NoisyPlan, Scenario, TenantsPlan};
use crate::server::Server;
use crate::stacks::{Stack, StackError, StackKind};
use crate::target::Target;
use crate::tls;

/// Runs `kind` on a scenario with several services.
pub(super) async fn run(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: Arc<Env>,
    bar: ProgressBar,
) -> Result<Row, LabError> {
    match scenario.tenants.clone() {
        Some(TenantsPlan::NoisyNeighbour(plan)) => noisy(scenario, kind, &env, &bar, &plan).await,
        Some(TenantsPlan::Tiers(plan)) => {
            super::tiers::run(scenario, kind, &env, &bar, &plan).await
        }
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
pub(super) async fn set_up_or_skip(
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
pub(super) fn figures(outcome: &LoadOutcome) -> ServiceFigures {
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
pub(super) fn merged(outcomes: &[&LoadOutcome]) -> LoadOutcome {
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
    // Bounded in count too: `--requests`, else a request per worker-
    // millisecond, which A's 5 ms answers never reach.
    let noisy_load = |duration: Duration| Load::Closed {
        workers: plan.noisy_workers,
        duration,
        max_requests: match scenario.load {
            Load::Closed {
                max_requests: Some(cap),
                ..
            } => Some(cap),
            _ => Some(plan.noisy_workers as u64 * duration.as_millis() as u64),
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
    let mut phases = Vec::with_capacity(2);
    for duration in [plan.solo_warm_up, plan.solo] {
        let load = quiet_load(plan, duration);
        phases.push(driver::run(&stack, &b, &load, &progress, false, 0).await?);
    }
    let solo = phases.pop().expect("two phases");
    warmup.merge(&phases.pop().expect("two phases").recorder);
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
