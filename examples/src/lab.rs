//! The lab runner: for each scenario, each stack gets its own embedded
//! server (or the `--target`), its own client, the same load; the rows go
//! into [`Results`]. Stacks run one after another, all at once
//! (`parallel_stacks`), or taking turns in short slices (`take_turns`,
//! [`Scenario::rounds`]) in an order drawn afresh each round from a seed.

use std::path::PathBuf;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rustls::RootCertStore;
use tokio::task::JoinSet;
use tokio::time::sleep;

use crate::otlp::Endpoint;
use crate::results::{Environment, Results, RunResult, Skipped};
use crate::scenarios::Scenario;
use crate::stacks::StackKind;
use crate::target::Target;
use crate::tls::TlsIdentity;

mod adaptive;
mod affinity;
mod idle_memory;
mod idle_servers;
mod prepared;
mod row;
mod sampler;
mod tenants;
mod ticker;
mod tiers;

pub use idle_memory::{MEASURE_IDLE_MEMORY_FLAG, measure as measure_idle_memory};
pub use idle_servers::{SERVE_IDLE_FLAG, serve as serve_idle};
use prepared::{Baseline, Prepared};
use row::row;
use ticker::Ticker;

/// Any error that stops the lab.
pub type LabError = Box<dyn std::error::Error + Send + Sync>;

/// What to run.
#[derive(Debug)]
pub struct LabConfig {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Stacks, in table order.
    pub stacks: Vec<StackKind>,
    /// An external server instead of the embedded one.
    pub target: Option<Target>,
    /// Roots for an external TLS server (`--ca`).
    pub roots: Option<RootCertStore>,
    /// Where `cert.pem` goes (next to the results).
    pub out_dir: PathBuf,
    /// Embedded server runtime threads.
    pub server_threads: usize,
    /// The `reuse` stack's pool configuration (`--policy FILE`); `None`
    /// for the defaults.
    pub policy: Option<tower_reuse_pool::PoolConfig>,
    /// Where the `reuse+otel` stack exports its spans and metrics, and
    /// `reuse+span` its spans (`--otlp URL`); `None` to export nowhere.
    pub otlp: Option<Endpoint>,
    /// Facts about the run, copied into the results; its `turn_seed`
    /// draws the stacks' order in each round of a run taking turns.
    pub environment: Environment,
    /// Called with each scenario's rows when it finishes (prints the table).
    pub on_scenario: fn(&Scenario, &[RunResult], &[Skipped]) -> String,
}

impl LabConfig {
    /// `scenarios` on `stacks` against the embedded server, results in
    /// `out_dir`, with the pools' defaults, exporting nowhere, on a
    /// one-thread server; the environment says `command` and the seed is
    /// 0. The tests' set-up: change a field where a test needs to.
    pub fn embedded(
        scenarios: Vec<Scenario>,
        stacks: Vec<StackKind>,
        out_dir: PathBuf,
        command: &str,
    ) -> Self {
        Self {
            scenarios,
            stacks,
            target: None,
            roots: None,
            out_dir,
            server_threads: 1,
            policy: None,
            otlp: None,
            environment: Environment {
                command: command.to_owned(),
                cpus: 1,
                client_threads: 2,
                server_threads: 1,
                quick: false,
                target: None,
                turn_seed: 0,
            },
            on_scenario: crate::report::table::scenario_table,
        }
    }
}

/// Shared, read-only state of a lab run.
#[derive(Debug)]
struct Env {
    identity: TlsIdentity,
    roots: Option<RootCertStore>,
    target: Option<Target>,
    server_threads: usize,
    policy: Option<tower_reuse_pool::PoolConfig>,
    otlp: Option<Endpoint>,
    turn_seed: u64,
}

enum Row {
    Done(Box<RunResult>),
    Pending(tokio::task::JoinHandle<RunResult>),
    Skipped(String),
}

/// Runs every scenario on every stack and returns the rows.
pub async fn run(config: LabConfig) -> Result<Results, LabError> {
    std::fs::create_dir_all(&config.out_dir)?;
    let identity = TlsIdentity::generate()?;
    identity.write_cert_pem(&config.out_dir.join("cert.pem"))?;
    let env = Arc::new(Env {
        identity,
        roots: config.roots,
        target: config.target,
        server_threads: config.server_threads,
        policy: config.policy,
        otlp: config.otlp,
        turn_seed: config.environment.turn_seed,
    });
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:32}] {percent:>3}% {msg}")?
        .progress_chars("=> ");
    if env.target.is_none() && config.scenarios.iter().any(|s| s.rounds() > 1) {
        multi.suspend(|| {
            println!(
                "stacks taking turns run in an order drawn each round from seed {} (--seed {} repeats it)",
                env.turn_seed, env.turn_seed
            );
        });
    }
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    for scenario in config.scenarios {
        let scenario = Arc::new(scenario);
        let mut stacks = Vec::new();
        let mut scenario_skipped = Vec::new();
        for &kind in &config.stacks {
            match scenario.skip_reason(kind) {
                Some(why) => scenario_skipped.push(skip(&scenario, kind, why)),
                None => stacks.push(kind),
            }
        }
        let bar = multi.add(ProgressBar::new(100 * stacks.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(scenario.name);
        let mut rows: Vec<(StackKind, Row)> = Vec::new();
        // An external server's keep-alive is not ours to know: back to
        // back there, so no stack's connections idle out between turns.
        let rounds = match env.target {
            Some(_) => 1,
            None => scenario.rounds(),
        };
        if scenario.parallel_stacks {
            let mut set = JoinSet::new();
            for (i, &kind) in stacks.iter().enumerate() {
                let (scenario, env, bar) = (scenario.clone(), env.clone(), bar.clone());
                let offset = scenario.start_offset(i, stacks.len());
                set.spawn(async move {
                    sleep(offset).await;
                    (i, kind, run_one(scenario, kind, env, bar).await)
                });
            }
            let mut done = Vec::new();
            while let Some(joined) = set.join_next().await {
                done.push(joined?);
            }
            done.sort_by_key(|(i, _, _)| *i);
            for (_, kind, row) in done {
                rows.push((kind, row?));
            }
        } else if rounds > 1 && scenario.idle_targets > 0 {
            for &kind in &stacks {
                rows.push((
                    kind,
                    against_twin(&scenario, kind, rounds, &env, &bar).await?,
                ));
            }
        } else if rounds > 1 {
            rows = take_turns(&scenario, &stacks, rounds, &env, &bar).await?;
        } else {
            for &kind in &stacks {
                bar.set_message(kind.name());
                rows.push((
                    kind,
                    run_one(scenario.clone(), kind, env.clone(), bar.clone()).await?,
                ));
            }
        }
        if let Some(tail) = scenario.tail {
            bar.set_message(format!(
                "sampling open connections for {tail:?} after the load"
            ));
        }
        let mut scenario_runs = Vec::new();
        for (kind, row) in rows {
            match row {
                Row::Done(r) => scenario_runs.push(*r),
                Row::Pending(handle) => scenario_runs.push(handle.await?),
                Row::Skipped(why) => scenario_skipped.push(skip(&scenario, kind, &why)),
            }
        }
        bar.finish_with_message("done");
        let table = (config.on_scenario)(&scenario, &scenario_runs, &scenario_skipped);
        multi.suspend(|| println!("{table}"));
        runs.extend(scenario_runs);
        skipped.extend(scenario_skipped);
    }
    Ok(Results {
        version: 1,
        runs,
        skipped,
        environment: config.environment,
    })
}

fn skip(scenario: &Scenario, kind: StackKind, why: &str) -> Skipped {
    Skipped {
        scenario: scenario.name.to_owned(),
        stack: kind.name().to_owned(),
        reason: why.to_owned(),
    }
}

/// Runs `kind` on `scenario` from start to end.
async fn run_one(
    scenario: Arc<Scenario>,
    kind: StackKind,
    env: Arc<Env>,
    bar: ProgressBar,
) -> Result<Row, LabError> {
    if scenario.service.is_some() {
        return affinity::run(scenario, kind, env, bar).await;
    }
    if scenario.tenants.is_some() {
        return tenants::run(scenario, kind, env, bar).await;
    }
    let mut run = match Prepared::new(scenario.clone(), kind, &env).await? {
        Ok(run) => run,
        Err(why) => {
            bar.inc(100);
            return Ok(Row::Skipped(why));
        }
    };
    run.slice(&scenario.load, 0, &bar, 100).await?;
    Ok(run.finish(None))
}

/// Runs every stack in `rounds` turns: each round, each stack in table
/// order runs one slice of the load on its own server and client, both
/// kept from round to round. Rows come back in `stacks` order.
async fn take_turns(
    scenario: &Arc<Scenario>,
    stacks: &[StackKind],
    rounds: u32,
    env: &Arc<Env>,
    bar: &ProgressBar,
) -> Result<Vec<(StackKind, Row)>, LabError> {
    let mut runs = Vec::new();
    let mut rows: Vec<Option<(StackKind, Row)>> = Vec::new();
    for &kind in stacks {
        match Prepared::new(scenario.clone(), kind, env).await? {
            Ok(run) => {
                runs.push((rows.len(), run));
                rows.push(None);
            }
            Err(why) => {
                bar.inc(100);
                rows.push(Some((kind, Row::Skipped(why))));
            }
        }
    }
    let (slots, mut prepared): (Vec<usize>, Vec<Prepared>) = runs.into_iter().unzip();
    turns(&mut prepared, scenario, rounds, bar, 100, "").await?;
    for (i, run) in slots.into_iter().zip(prepared) {
        rows[i] = Some((run.kind, run.finish(None)));
    }
    Ok(rows.into_iter().flatten().collect())
}

/// Runs `kind` on a scenario with idle targets in turns with its twin: the
/// same stack on the same load with no idle targets. The row's
/// `baseline_rps` is the twin's: what the idle targets cost the load,
/// measured side by side.
async fn against_twin(
    scenario: &Arc<Scenario>,
    kind: StackKind,
    rounds: u32,
    env: &Arc<Env>,
    bar: &ProgressBar,
) -> Result<Row, LabError> {
    let mut twin_scenario = Scenario::clone(scenario);
    twin_scenario.idle_targets = 0;
    let mut runs = Vec::new();
    for scenario in [scenario.clone(), Arc::new(twin_scenario)] {
        match Prepared::new(scenario, kind, env).await? {
            Ok(run) => runs.push(run),
            Err(why) => {
                bar.inc(100);
                return Ok(Row::Skipped(why));
            }
        }
    }
    turns(&mut runs, scenario, rounds, bar, 50, " and its twin").await?;
    let twin = runs.pop().expect("two runs");
    let run = runs.pop().expect("two runs");
    Ok(run.finish(Some(twin.rps())))
}

/// `rounds` rounds of one slice of the scenario's load on each run, moving
/// the bar by `units` per run over all the rounds; `what` follows the
/// stack's name in the bar. Each round takes the runs in its own order
/// ([`turn_order`]), so no stack always follows the same other.
async fn turns(
    runs: &mut [Prepared],
    scenario: &Scenario,
    rounds: u32,
    bar: &ProgressBar,
    units: u64,
    what: &str,
) -> Result<(), LabError> {
    for round in 0..rounds {
        let slice = &scenario.load.slice(rounds, round);
        let share = units * u64::from(round + 1) / u64::from(rounds)
            - units * u64::from(round) / u64::from(rounds);
        for i in turn_order(env_seed(runs), round, runs.len()) {
            let run = &mut runs[i];
            bar.set_message(format!(
                "{}{what} (round {} of {rounds})",
                run.kind,
                round + 1
            ));
            run.slice(slice, round, bar, share).await?;
        }
    }
    Ok(())
}

fn env_seed(runs: &[Prepared]) -> u64 {
    runs.first().map_or(0, |run| run.turn_seed)
}

/// The order of `n` runs in round `round`: a permutation drawn from
/// `seed` and the round, the same for the same seed.
fn turn_order(seed: u64, round: u32, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(seed ^ u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests;
