//! `results.json`: one row per (scenario, stack), with exactly the fields of
//! issue 3 first, then extras.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::server::{FaultCounts, OpenSample};
use crate::stacks::DecisionRecord;

/// The quantiles stored for the latency charts.
pub const CHART_QUANTILES: [f64; 13] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// The whole file.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// Always 1.
    pub version: u32,
    /// One row per stack per scenario.
    pub runs: Vec<RunResult>,
    /// Stacks not run on a scenario, and why.
    pub skipped: Vec<Skipped>,
    /// How the run was made.
    pub environment: Environment,
}

/// Where and how the results were produced.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// The command line.
    pub command: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Client runtime worker threads.
    pub client_threads: usize,
    /// Embedded server runtime worker threads.
    pub server_threads: usize,
    /// `--quick`.
    pub quick: bool,
    /// `--target`, when the server was external.
    pub target: Option<String>,
    /// The seed of the stacks' order in each round of a run taking turns
    /// (`--seed` repeats it).
    pub turn_seed: u64,
}

/// A stack that did not run on a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The scenario.
    pub scenario: String,
    /// The stack.
    pub stack: String,
    /// Why.
    pub reason: String,
}

/// One stack on one scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// Stack name.
    pub stack: String,
    /// Requests attempted: successes + errors + lost.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Retries the stack reported; 0 for stacks that never retry, `null`
    /// for stacks that retry where the lab cannot count it (`hyper-util`'s
    /// client retries internally).
    pub retries: Option<u64>,
    /// Connections opened (server's count when embedded), from before the
    /// stack was built (`raw`'s pre-established connections count); for
    /// `scale-targets`, from after the idle targets were set up.
    pub connections_opened: u64,
    /// Most connections open at once.
    pub peak_open_connections: u64,
    /// Time integral of idle sockets: open connections (server's count when
    /// embedded) minus the lab's requests in flight, at least 0, sampled
    /// every 25 ms over the load (every slice of it, when the stacks took
    /// turns) and the scenario's tail: the same window as
    /// `server_idle_socket_seconds`.
    pub idle_socket_seconds: f64,
    /// The part of `idle_socket_seconds` in the scenario's tail alone (the
    /// open connections watched after the load ends); `null` for a
    /// scenario without a tail.
    pub tail_idle_socket_seconds: Option<f64>,
    /// Full TLS handshakes.
    pub tls_full: u64,
    /// Resumed TLS handshakes.
    pub tls_resumed: u64,
    /// Load duration: first request sent to last response read.
    pub duration_s: f64,
    /// Successful requests per second.
    pub rps: f64,
    /// Median latency of successful requests.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Responses carrying another request's `x-request-id`, or, from the
    /// embedded server (which always echoes it), none.
    pub misdelivered: u64,

    /// Requests sent that got neither a response nor an error from the
    /// stack within the lab's 10 s limit, or left no record (issue 6: must
    /// be 0).
    pub lost: u64,
    /// Faults the embedded server injected during the load (`chaos`
    /// scenarios): `closed`, `reset`, `stalled`, `goaway`.
    pub faults_injected: Option<FaultCounts>,
    /// HTTP/2 streams the embedded server refused (`REFUSED_STREAM`)
    /// during the load, by its own count (`h2-refuse`).
    pub refused: u64,
    /// `"server"` (embedded) or `"client"` (`--target`): who counted
    /// connections, TLS handshakes and idle sockets.
    pub counted_by: String,
    /// The most requests the load can have in flight.
    pub peak_concurrency: usize,
    /// Connections opened per 1000 requests.
    pub connections_per_1000_requests: f64,
    /// The ideal: peak concurrency per 1000 requests (at least one connection).
    pub connections_per_1000_lower_bound: f64,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first error's message.
    pub first_error: Option<String>,
    /// Responses without `x-request-id`: with `--target`, whose server
    /// may not echo it, shown in the table (such responses cannot be
    /// checked for misdelivery); on the embedded server they count as
    /// misdelivered too.
    pub unechoed: u64,
    /// The server's own, exact view of idle sockets: time integral of
    /// connections with no request being processed by the server (the
    /// client's round trip counts as idle here), over the same window as
    /// `idle_socket_seconds`. Embedded server only.
    pub server_idle_socket_seconds: f64,
    /// Most requests one connection has served, open connections included
    /// (embedded server only).
    pub max_requests_on_connection: u64,
    /// Latency (us) at [`CHART_QUANTILES`].
    pub latency_quantiles_us: Vec<(f64, f64)>,
    /// Open connections over time, seconds from the run's start.
    pub open_connections: Vec<OpenSample>,
    /// When the load ended, seconds from the run's start.
    pub load_end_s: f64,
    /// `scale-targets`: targets holding an idle connection during the load.
    pub idle_targets: usize,
    /// `scale-targets`: the client's resident memory added while opening
    /// the idle targets' connections, per target, measured in a child
    /// process of its own per stack, so no other stack's allocations are
    /// in it (the idle targets are served by another child process, so
    /// the server's side is not counted; neither are the sockets' kernel
    /// buffers).
    pub rss_per_idle_target_bytes: Option<f64>,
    /// How many slices the load ran in: more than one when the stacks took
    /// turns (see the scenario's `take_turns`); the figures cover them all.
    pub rounds: u32,
    /// With idle targets (`scale-targets`): the same stack's requests/s on
    /// the same load with no idle targets, run in turns with this one.
    pub baseline_rps: Option<f64>,
    /// Requests whose affinity key the serving endpoint had cached, by the
    /// server's count, over the measured load (warm-up excluded); `null`
    /// where the scenario has no cache.
    pub cache_hits: Option<u64>,
    /// Requests whose key it had not (each waited the miss latency).
    pub cache_misses: Option<u64>,
    /// The highest in-flight load of one endpoint over the mean across the
    /// endpoints up, sampled by the server through the measured load
    /// whenever a request was in flight; `null` outside the affinity
    /// scenarios (`affinity-cache`, `affinity-scale`, `endpoint-failure`).
    pub max_load_ratio: Option<f64>,
    /// As `max_load_ratio`, over the bounded-load cap `ceil(1.25 * mean)`, at least 2
    /// instead of the mean (1.25: the affinity layer's default epsilon
    /// 0.25): at most 1 when no endpoint ever held more than the cap. With
    /// few requests in flight `max_load_ratio` is high for any balancer
    /// (one request on one of 8 endpoints is 8x the mean, and within the cap).
    pub max_load_over_bound: Option<f64>,
    /// Endpoints ejected by the stack during the run (the affinity layer's
    /// own count); `null` for a stack that has no ejection
    /// (`hyper-util+p2c`) or a scenario without endpoints.
    pub ejections: Option<u64>,
    /// Requests the affinity layer sent to the next endpoint of their
    /// key's order because it held a free connection and the first choice
    /// did not (its own count); `null` for other stacks.
    pub warm_detours: Option<u64>,
    /// `affinity-scale`: per step of the endpoint set, the share of keys
    /// whose endpoint changed.
    pub keys_moved: Option<Vec<KeysMoved>>,
    /// `endpoint-failure`: of the keys the failed endpoint served before
    /// it went down (and seen again after its return), the share it serves
    /// again after its return.
    pub keys_returned_fraction: Option<f64>,
    /// `endpoint-failure`: how many keys `keys_returned_fraction` covers
    /// (a key counts when served at least 3 times in each phase compared).
    pub keys_returned_compared: Option<usize>,
    /// `noisy-neighbour` (services `A` and `B`) and `tiers` (`hot` and
    /// `cold`): each service's figures over the measured load.
    pub services: Option<BTreeMap<String, ServiceFigures>>,
    /// `noisy-neighbour`: service B's p99 when it runs alone, through a
    /// client of the same stack on a server of its own (a short run
    /// beside the row's).
    pub solo_p99_us: Option<f64>,
    /// `noisy-neighbour`: the most connections open at once by the
    /// client's count (sockets from connected to dropped), beside the
    /// server's `peak_open_connections`: the server sees a connection the
    /// client closed until it has read the close, so under churn its
    /// count runs ahead of the client's.
    pub client_peak_open_connections: Option<u64>,
    /// `tiers`: the p99 of the hot services' requests only.
    pub hot_p99_us: Option<f64>,
    /// `tiers`: connections opened to the hot services' addresses and to
    /// the cold targets' (the server's count per address), load and tail.
    pub connections_by_tier: Option<TierCounts>,
    /// `tiers`: the most dedicated pools the stack held at once (sampled
    /// with `tier_samples`); `null` for a stack without tiers.
    pub dedicated_pools_peak: Option<u64>,
    /// Connections the pool skipped at checkout because they had closed
    /// or were closing, summed over targets (and over the workers' own
    /// clients in `keepalive-race`); `null` for stacks without the pool
    /// in reach.
    pub stale_skips: Option<u64>,
    /// `reuse`, `reuse-static`: connections the pool opened to pre-warm
    /// itself (its events, `ConnectReason::Prewarm`); `null` for other
    /// stacks.
    pub prewarmed_opened: Option<u64>,
    /// Of `prewarmed_opened`, the connections that served at least one
    /// request (closed ones by their `Closed` event, open ones by their
    /// first checkout).
    pub prewarmed_served: Option<u64>,
    /// `reuse`, `reuse-static`: replacements the pool opened ahead of a
    /// connection's last request (`ConnectReason::Replacement`); `null`
    /// for other stacks.
    pub replacements_opened: Option<u64>,
    /// Of `replacements_opened`, the connections that served a request.
    pub replacements_served: Option<u64>,
    /// `shift`: when each step of the load started, seconds from the
    /// load's start (the nominal boundaries: a step ends at its
    /// duration, plus the last responses); empty for other scenarios.
    pub steps_s: Vec<f64>,
    /// `shift`: open connections (the server's count) 5 s after the step
    /// down to 4 workers; `null` when the last step is shorter (`--quick`).
    pub connections_5s_after_step_down: Option<u64>,
    /// `shift`: how long after the step down the open connections fell to
    /// at most 8 (twice what 4 workers need) and stayed there to the end;
    /// `null` when they never did (or outside `shift`).
    pub step_down_settle_s: Option<f64>,
    /// `tiers`: open connections per tier (the server's count) and the
    /// stack's dedicated pools over the load and the tail, seconds from
    /// the load's start.
    pub tier_samples: Vec<TierSample>,
    /// `reuse`, `reuse-static`: the adaptive controller's decisions in
    /// this run (every worker's own in `keepalive-race`), in time order;
    /// `reuse-static`'s controller is off and decides nothing.
    pub decisions: Vec<DecisionRecord>,
    /// `reuse`, `reuse-static`: the most decisions for one target within
    /// any 10 s of the run (warm-up and load changes included, so at least
    /// what any 10 s of steady load saw); `null` for other stacks.
    pub max_decisions_per_10s: Option<u64>,
}

/// One service's figures in a scenario with several.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceFigures {
    /// Requests attempted: successes, errors and lost.
    pub requests: u64,
    /// Successful requests per second over the measured phase.
    pub rps: f64,
    /// Median latency of its successful requests.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Its failed requests.
    pub errors: u64,
}

/// Connections opened per tier of addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    /// To the hot services' addresses.
    pub hot: u64,
    /// To the cold targets' addresses.
    pub cold: u64,
}

/// One sample of `tiers`' time series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TierSample {
    /// Seconds from the load's start.
    pub at_s: f64,
    /// Connections open to the hot services' addresses.
    pub open_hot: u64,
    /// Connections open to the cold targets' addresses.
    pub open_cold: u64,
    /// The stack's dedicated pools; `null` for a stack without tiers.
    pub dedicated_pools: Option<u64>,
}

/// One step of `affinity-scale`'s endpoint set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeysMoved {
    /// Endpoints before the step.
    pub from: usize,
    /// Endpoints after it.
    pub to: usize,
    /// Of the keys requested both before and after the step, the share
    /// served by another endpoint after it (each key's endpoint being the
    /// one that served it most in the phase).
    pub moved_fraction: f64,
    /// The least share that must move: `(to - from) / to` when endpoints
    /// are added, `(from - to) / from` when removed.
    pub minimum_fraction: f64,
    /// Keys requested both before and after the step.
    pub keys_compared: usize,
}

impl RunResult {
    /// `retries` as the table and the report show it: "n/a" where the lab
    /// cannot see them.
    pub fn retries_text(&self) -> String {
        self.retries
            .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
    }
}

impl Results {
    /// What fails the run: responses carrying another request's id (or,
    /// from the embedded server, none) and requests that got neither a
    /// response nor an error, per scenario and stack. A bug in a client
    /// stack, never noise. Empty when the run passes.
    pub fn failures(&self) -> Vec<String> {
        let failures = |what: &str, count: fn(&RunResult) -> u64| {
            let runs: Vec<String> = self
                .runs
                .iter()
                .filter(|r| count(r) > 0)
                .map(|r| format!("{}/{}: {}", r.scenario, r.stack, count(r)))
                .collect();
            (!runs.is_empty()).then(|| format!("{what}: {}", runs.join(", ")))
        };
        [
            failures("misdelivered responses", |r| r.misdelivered),
            failures("lost requests", |r| r.lost),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Writes the file, pretty-printed.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(path, json)
    }
}
