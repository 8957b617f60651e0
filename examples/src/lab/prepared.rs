//! One stack prepared on a scenario: its server (and relays, idle
//! targets), its client, the counters before the load; then the slices of
//! load it runs and the row they make.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::time::sleep;

use super::idle_servers::IdleServers;
use super::row::row;
use super::sampler::{ClientSampler, OpenCount};
use super::ticker::Ticker;
use super::{Env, LabError, Row, adaptive, idle_memory};
use crate::driver::{self, Load, LoadOutcome, Progress, Recorder};
use crate::relay::Relay;
use crate::results::RunResult;
use crate::scenarios::Scenario;
use crate::server::{OpenSample, Server, ServerSnapshot};
use crate::stacks::{ClientSnapshot, Stack, StackKind};
use crate::target::Target;
use crate::tls;

/// One stack set up on a scenario (its server, its client, the counters
/// before the load), and what its slices of the load have measured.
pub(super) struct Prepared {
    scenario: Arc<Scenario>,
    pub(super) kind: StackKind,
    pub(super) turn_seed: u64,
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
    pub(super) async fn new(
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
    pub(super) async fn slice(
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
    pub(super) fn rps(&self) -> f64 {
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
    pub(super) fn finish(self, baseline_rps: Option<f64>) -> Row {
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
pub(super) struct Baseline {
    pub(super) server: Option<ServerSnapshot>,
    pub(super) client: ClientSnapshot,
    pub(super) retries: Option<u64>,
    /// The pool's own counters.
    pub(super) stack: adaptive::StackBaseline,
}

impl Baseline {
    pub(super) fn take(server: Option<&Server>, stack: Option<&Stack>) -> Self {
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
