//! The lab runner: for each scenario, each stack gets its own embedded
//! server (or the `--target`), its own client, the same load; the rows go
//! into [`Results`]. Stacks run one after another, all at once
//! (`parallel_stacks`), or taking turns in short slices (`take_turns`,
//! [`Scenario::rounds`]) in an order drawn afresh each round from a seed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rustls::RootCertStore;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::driver::{self, Load, LoadOutcome, Progress, Recorder};
use crate::otlp::Endpoint;
use crate::relay::Relay;
use crate::results::{CHART_QUANTILES, Environment, Results, RunResult, Skipped};
use crate::scenarios::Scenario;
use crate::server::{OpenSample, Server, ServerSnapshot};
use crate::stacks::{ClientSnapshot, Stack, StackKind};
use crate::target::Target;
use crate::tls::{self, TlsIdentity};

mod adaptive;
mod affinity;
mod idle_memory;
mod idle_servers;
mod sampler;
mod tenants;
mod tiers;

pub use idle_memory::{MEASURE_IDLE_MEMORY_FLAG, measure as measure_idle_memory};
use idle_servers::IdleServers;
pub use idle_servers::{SERVE_IDLE_FLAG, serve as serve_idle};
use sampler::{ClientSampler, OpenCount};

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

/// One stack set up on a scenario (its server, its client, the counters
/// before the load), and what its slices of the load have measured.
struct Prepared {
    scenario: Arc<Scenario>,
    kind: StackKind,
    turn_seed: u64,
    server: Option<Server>,
    /// The child process serving the idle targets, for as long as the
    /// run lasts.
    _idle_servers: Option<IdleServers>,
    /// The relays between client and server, for as long as the run lasts.
    _relays: Vec<Relay>,
    targets: Arc<[Target]>,
    stack: Stack,
    baseline: Baseline,
    warmup: Recorder,
    rss_per_target: Option<f64>,
    /// Every slice's requests.
    recorder: Recorder,
    /// The slices' time under load, added up.
    elapsed: Duration,
    idle_seconds: f64,
    samples: Vec<OpenSample>,
    /// The server's idle-socket integral during the slices (between
    /// slices of a run taking turns the stack is idle by design), the same
    /// window as `idle_seconds`.
    server_idle_seconds: f64,
    slices: u32,
}

impl Prepared {
    /// Starts the server and builds the client; `Ok(Err(why))` when the
    /// stack cannot run here.
    async fn new(
        scenario: Arc<Scenario>,
        kind: StackKind,
        env: &Env,
    ) -> Result<Result<Self, String>, LabError> {
        let server = match &env.target {
            Some(_) => None,
            None => Some(Server::start(
                scenario
                    .server
                    .clone()
                    .addresses(scenario.addresses)
                    .tls(scenario.tls.then(|| env.identity.clone()))
                    .worker_threads(env.server_threads),
            )?),
        };
        let idle_servers = match &server {
            Some(_) if scenario.idle_targets > 0 => {
                Some(IdleServers::spawn(scenario.idle_targets)?)
            }
            _ => None,
        };
        let relays = match (&server, scenario.relay) {
            (Some(server), Some(delay)) => adaptive::relays(server, delay).await?,
            _ => Vec::new(),
        };
        let targets: Arc<[Target]> = match (&server, &env.target) {
            (Some(server), _) if !relays.is_empty() => relays
                .iter()
                .map(|relay| adaptive::relayed_url(server, relay))
                .map(|url| Target::parse(&url))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            (Some(server), _) => (0..server.addrs().len())
                .map(|i| server.url(i))
                .chain(idle_servers.iter().flat_map(|s| s.urls().iter().cloned()))
                .map(|url| Target::parse(&url))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            (None, Some(target)) => vec![target.clone()].into(),
            (None, None) => unreachable!("either embedded or external"),
        };
        let roots = env
            .roots
            .clone()
            .unwrap_or_else(|| env.identity.root_store());
        let tls = tls::client_config(roots)?;
        let workers = scenario.load.peak_concurrency();
        // Counted from before the stack exists: `raw`'s pre-established
        // connections are part of its cost.
        let mut baseline = Baseline::take(server.as_ref(), None);
        let (protocol, policy, otlp) = (scenario.protocol, env.policy.as_ref(), env.otlp.as_ref());
        let built = if scenario.client_per_worker {
            Stack::build_per_worker(kind, protocol, tls, workers, &targets[0], policy, otlp).await
        } else {
            Stack::build(kind, protocol, tls, workers, &targets[0], policy, otlp).await
        };
        let stack = match built {
            Ok(stack) => stack,
            Err(e) => return Ok(Err(e.to_string())),
        };

        let mut warmup = Recorder::new();
        let mut rss_per_target = None;
        if scenario.idle_targets > 0 && targets.len() > 1 {
            let idle = &targets[1..targets.len().min(scenario.idle_targets + 1)];
            // In a process of its own: this one has run other stacks.
            rss_per_target = Some(idle_memory::in_child(kind, idle).await?);
            // One request per idle target, in order, so each gets exactly one.
            let one_request = Load::Bursts {
                bursts: 1,
                size: 1,
                gap: Duration::ZERO,
            };
            for target in idle {
                let one: Arc<[Target]> = vec![target.clone()].into();
                let outcome =
                    driver::run(&stack, &one, &one_request, &Progress::new(), false, 0).await?;
                warmup.merge(&outcome.recorder);
            }
            // The idle targets' connections are the setting, not the load.
            baseline = Baseline::take(server.as_ref(), Some(&stack));
        }
        Ok(Ok(Prepared {
            scenario,
            kind,
            turn_seed: env.turn_seed,
            server,
            _idle_servers: idle_servers,
            _relays: relays,
            targets,
            stack,
            baseline,
            warmup,
            rss_per_target,
            recorder: Recorder::new(),
            elapsed: Duration::ZERO,
            idle_seconds: 0.0,
            samples: Vec::new(),
            server_idle_seconds: 0.0,
            slices: 0,
        }))
    }

    /// Runs `load` (the scenario's, or one round's slice of it), moving the
    /// bar by `share`.
    async fn slice(
        &mut self,
        load: &Load,
        round: u32,
        bar: &ProgressBar,
        share: u64,
    ) -> Result<(), LabError> {
        let progress = Progress::new();
        let server_idle_before = self.server_idle_now();
        let sampler = ClientSampler::start(self.open_count(), progress.clone());
        let ticker = Ticker::start(bar, &progress, load, share);
        let outcome = driver::run(&self.stack, &self.targets, load, &progress, true, round).await;
        ticker.stop().await;
        let outcome = outcome?;
        let (idle_seconds, samples) = sampler.finish();
        // Samples on one time line: each slice's after the ones before.
        let offset = self.elapsed.as_secs_f64();
        self.samples.extend(samples.into_iter().map(|mut sample| {
            sample.at_s += offset;
            sample
        }));
        self.idle_seconds += idle_seconds;
        self.server_idle_seconds += self.server_idle_now() - server_idle_before;
        self.recorder.merge(&outcome.recorder);
        self.elapsed += outcome.elapsed;
        self.slices += 1;
        Ok(())
    }

    /// Requests/s answered over the slices so far.
    fn rps(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.recorder.ok() as f64 / seconds
        } else {
            0.0
        }
    }

    fn server_idle_now(&self) -> f64 {
        self.server
            .as_ref()
            .map_or(0.0, |server| server.stats().snapshot().idle_socket_seconds)
    }

    /// The row, once the scenario's tail (if any) has been sampled, with
    /// its twin's requests/s if it ran against one.
    fn finish(self, baseline_rps: Option<f64>) -> Row {
        match self.scenario.tail {
            Some(tail) => Row::Pending(tokio::spawn(async move {
                let tail = self.sample_tail(tail).await;
                self.row(baseline_rps, Some(tail))
            })),
            None => Row::Done(Box::new(self.row(baseline_rps, None))),
        }
    }

    /// Samples open connections for `tail` after the load, as during it.
    async fn sample_tail(&self, tail: Duration) -> Window {
        let server_idle_before = self.server_idle_now();
        let sampler = ClientSampler::start(self.open_count(), Progress::new());
        sleep(tail).await;
        let (idle_seconds, samples) = sampler.finish();
        Window {
            idle_seconds,
            samples,
            server_idle_seconds: self.server_idle_now() - server_idle_before,
        }
    }

    fn open_count(&self) -> OpenCount {
        match &self.server {
            Some(server) => OpenCount::Server(server.stats().clone()),
            None => OpenCount::Client(self.stack.client_stats().clone()),
        }
    }

    fn row(self, baseline_rps: Option<f64>, tail: Option<Window>) -> RunResult {
        let outcome = LoadOutcome {
            recorder: self.recorder,
            elapsed: self.elapsed,
        };
        let mut row = row(
            &self.scenario,
            self.kind,
            &outcome,
            self.server.as_ref(),
            &self.baseline,
            &self.stack,
        );
        let load_end_s = outcome.elapsed.as_secs_f64();
        let mut samples = self.samples;
        row.idle_socket_seconds = self.idle_seconds;
        row.server_idle_socket_seconds = self.server_idle_seconds;
        if let Some(tail) = tail {
            samples.extend(tail.samples.into_iter().map(|mut sample| {
                sample.at_s += load_end_s;
                sample
            }));
            row.idle_socket_seconds += tail.idle_seconds;
            row.server_idle_socket_seconds += tail.server_idle_seconds;
            row.tail_idle_socket_seconds = Some(tail.idle_seconds);
        }
        if self.server.is_none() {
            row.server_idle_socket_seconds = 0.0;
        }
        row.open_connections = samples;
        row.load_end_s = load_end_s;
        row.idle_targets = self.scenario.idle_targets;
        row.rss_per_idle_target_bytes = self.rss_per_target;
        row.rounds = self.slices;
        adaptive::figures(
            &mut row,
            &self.scenario.load,
            &self.stack,
            &self.baseline.stack,
        );
        row.baseline_rps = baseline_rps;
        if self.warmup.errors() > 0 {
            row.errors_by_kind
                .insert("warmup".into(), self.warmup.errors());
        }
        row
    }
}

/// What the sampler saw over a window of a run.
struct Window {
    idle_seconds: f64,
    samples: Vec<OpenSample>,
    server_idle_seconds: f64,
}

/// Counters before the measured part of a run.
struct Baseline {
    server: Option<ServerSnapshot>,
    client: ClientSnapshot,
    retries: Option<u64>,
    /// The pool's own counters.
    stack: adaptive::StackBaseline,
}

impl Baseline {
    fn take(server: Option<&Server>, stack: Option<&Stack>) -> Self {
        Self {
            server: server.map(|s| s.stats().snapshot()),
            client: stack
                .map(|s| s.client_stats().snapshot())
                .unwrap_or_default(),
            retries: stack.map_or(Some(0), Stack::retries),
            stack: adaptive::StackBaseline::take(stack),
        }
    }
}

fn row(
    scenario: &Scenario,
    kind: StackKind,
    outcome: &LoadOutcome,
    server: Option<&Server>,
    baseline: &Baseline,
    stack: &Stack,
) -> RunResult {
    let mut r = RunResult {
        scenario: scenario.name.to_owned(),
        stack: kind.name().to_owned(),
        retries: stack
            .retries()
            .map(|now| now.saturating_sub(baseline.retries.unwrap_or(0))),
        peak_concurrency: scenario.load.peak_concurrency(),
        ..RunResult::default()
    };
    request_figures(&mut r, outcome, server.is_some());
    match (server, &baseline.server) {
        (Some(server), Some(base)) => {
            let now = server.stats().snapshot();
            r.counted_by = "server".into();
            r.connections_opened = now.accepted - base.accepted;
            r.peak_open_connections = now.peak_open;
            r.tls_full = now.tls_full - base.tls_full;
            r.tls_resumed = now.tls_resumed - base.tls_resumed;
            r.max_requests_on_connection = now.max_requests_on_connection;
            r.refused = now.refused - base.refused;
            if scenario.server.injects_faults() {
                r.faults_injected = Some(now.faults.since(&base.faults));
            }
        }
        _ => {
            let now = stack.client_stats().snapshot();
            r.counted_by = "client".into();
            r.connections_opened = now.opened - baseline.client.opened;
            r.peak_open_connections = now.peak_open;
            r.tls_full = now.tls_full - baseline.client.tls_full;
            r.tls_resumed = now.tls_resumed - baseline.client.tls_resumed;
        }
    }
    if r.requests > 0 {
        r.connections_per_1000_requests = r.connections_opened as f64 * 1000.0 / r.requests as f64;
        r.connections_per_1000_lower_bound =
            (r.peak_concurrency.max(1) as f64).min(r.requests as f64) * 1000.0 / r.requests as f64;
    }
    r
}

/// The row's figures from the requests' record: counts, rate, latency, and
/// misdelivered responses. The embedded server echoes every request's id,
/// so there a response without one counts as misdelivered too; an external
/// server may not echo it (the row's `unechoed` says how many could not be
/// checked).
fn request_figures(r: &mut RunResult, outcome: &LoadOutcome, embedded: bool) {
    let rec = &outcome.recorder;
    r.requests = rec.requests();
    r.errors = rec.errors();
    r.duration_s = outcome.elapsed.as_secs_f64();
    r.rps = if r.duration_s > 0.0 {
        rec.ok() as f64 / r.duration_s
    } else {
        0.0
    };
    r.p50_us = rec.quantile_us(0.5);
    r.p90_us = rec.quantile_us(0.9);
    r.p99_us = rec.quantile_us(0.99);
    r.p999_us = rec.quantile_us(0.999);
    r.unechoed = rec.unechoed();
    r.misdelivered = rec.misdelivered() + if embedded { rec.unechoed() } else { 0 };
    r.lost = rec.lost();
    r.errors_by_kind = rec
        .errors_by_kind()
        .iter()
        .map(|(k, n)| (k.name().to_owned(), *n))
        .collect();
    r.first_error = rec.first_error().map(str::to_owned);
    r.latency_quantiles_us = rec.quantiles_us(&CHART_QUANTILES);
}

/// The scenario's bar moving with a run ([`tick`]) until stopped.
struct Ticker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    /// Moves `bar` by up to `share` as `load` progresses.
    fn start(bar: &ProgressBar, progress: &Arc<Progress>, load: &Load, share: u64) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tick(
            bar.clone(),
            progress.clone(),
            load.clone(),
            share,
            stopped,
        ));
        Self { stop, task }
    }

    /// Moves the bar to the end of its share.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Moves the scenario's bar by up to `share` as the run progresses (by
/// time or by request count, whichever is further).
async fn tick(
    bar: ProgressBar,
    progress: Arc<Progress>,
    load: Load,
    share: u64,
    mut stop: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let nominal = load.nominal_duration().as_secs_f64().max(1e-3);
    let expected = match &load {
        Load::Closed { max_requests, .. } | Load::Poisson { max_requests, .. } => *max_requests,
        Load::Bursts { bursts, size, .. } | Load::Periodic { bursts, size, .. } => {
            Some((bursts * size) as u64)
        }
        Load::Steps { .. } => None,
    };
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = sleep(Duration::from_millis(100)) => {}
            _ = &mut stop => {
                bar.inc(share - shown);
                return;
            }
        }
        let by_time = started.elapsed().as_secs_f64() / nominal;
        let by_count = expected.map_or(0.0, |n| progress.done() as f64 / n.max(1) as f64);
        let percent = ((by_time.max(by_count) * share as f64) as u64).min(share.saturating_sub(1));
        if percent > shown {
            bar.inc(percent - shown);
            shown = percent;
        }
    }
}

#[cfg(test)]
mod tests;
