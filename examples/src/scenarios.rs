//! The scenario suite of issue 3: what the server does, what load the
//! clients get, and which stacks a scenario is meaningful for.

use std::time::Duration;

use crate::driver::Load;
use crate::server::{Chaos, ServerConfig};
use crate::stacks::{Protocol, StackKind};

mod adaptive;
mod affinity;
mod stacks;
mod tenants;

pub use adaptive::SHIFT_LOW_WORKERS;
pub use affinity::{ServicePlan, Step};
pub use tenants::{NoisyPlan, TenantsPlan, TiersPlan};

/// The default suite, in order.
pub const ALL: [&str; 17] = [
    "steady-h1",
    "steady-h1-tls",
    "steady-h2",
    "h2-stream-limit",
    "h2-refuse",
    "bursty",
    "keepalive-race",
    "tls-churn",
    "cyclic",
    "shift",
    "zipf-endpoints",
    "scale-targets",
    "affinity-cache",
    "affinity-scale",
    "endpoint-failure",
    "noisy-neighbour",
    "tiers",
];

/// Scenarios of the default suite left out of `--quick` (unless named with
/// `--scenario`): `tiers` needs seconds of load and a tail to mean
/// anything, and the smoke suite must stay under a minute.
pub const NOT_QUICK: [&str; 1] = ["tiers"];

/// Scenarios run only when named with `--scenario`: the fault-injection
/// runs, which check correctness rather than measure speed, and
/// `tls-churn` under a paced load (its latency where queueing does not set
/// it), which would take the default suite past 6 minutes.
pub const OPT_IN: [&str; 3] = ["chaos", "chaos-h2", "tls-churn-paced"];

/// Size overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct Sizes {
    /// The smoke-test suite (under a minute in all).
    pub quick: bool,
    /// Stop each run after this many requests.
    pub requests: Option<u64>,
    /// Workers (closed loop), burst size, or in-flight bound (open loop).
    pub concurrency: Option<usize>,
    /// How long each run sends.
    pub duration: Option<Duration>,
}

impl Sizes {
    fn duration(&self, full: Duration, quick: Duration) -> Duration {
        self.duration
            .unwrap_or(if self.quick { quick } else { full })
    }

    fn concurrency(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default).max(1)
    }
}

/// One scenario, fully sized.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name (`--scenario`).
    pub name: &'static str,
    /// One line for the table and the report.
    pub description: String,
    /// HTTP version.
    pub protocol: Protocol,
    /// Whether it runs over TLS.
    pub tls: bool,
    /// The embedded server's knobs (the lab adds the TLS identity).
    pub server: ServerConfig,
    /// Loopback addresses the server listens on (= targets).
    pub addresses: usize,
    /// The load on the targets.
    pub load: Load,
    /// Targets (after the first) that get one request each before the load,
    /// leaving an idle connection in a pooling client (`scale-targets`).
    pub idle_targets: usize,
    /// How long open connections are still watched after the load ends.
    pub tail: Option<Duration>,
    /// Run every stack at once (each with its own server): only for
    /// scenarios whose load is too light to interfere.
    pub parallel_stacks: bool,
    /// Take turns: the load is cut into slices of [`TURN`], and in each
    /// round every stack runs one slice, on its own server and client
    /// kept between rounds. A stack's figures then do not depend on which
    /// seconds of a noisy machine it drew, and no stack sits idle long
    /// between its slices (at most [`TURN`] per other stack). Closed loops
    /// without a tail, on the embedded server, only; see
    /// [`Scenario::rounds`].
    pub take_turns: bool,
    /// A relay between client and server adding this delay each way
    /// ([`crate::relay`]): the round trip of a network, not loopback's.
    pub relay: Option<Duration>,
    /// Each closed-loop worker builds a client of its own, as separate
    /// processes would ([`crate::stacks::Stack::build_per_worker`]).
    pub client_per_worker: bool,
    /// Stacks this scenario means nothing for, with the reason.
    pub skip: Vec<(StackKind, &'static str)>,
    /// Stacks left out of a run that names none (`--stack`), with the
    /// reason: they add nothing there, and the suite must stay short.
    /// Named, they run. [`Scenario::by_default`] moves them to `skip`.
    pub default_skip: Vec<(StackKind, &'static str)>,
    /// One logical service over several endpoints (the affinity
    /// scenarios): the load goes to `http://svc.lab:<port>/` and the
    /// stack picks the endpoint.
    pub service: Option<ServicePlan>,
    /// Several services through one client, each on addresses of its own
    /// (`noisy-neighbour`, `tiers`): what each gets.
    pub tenants: Option<TenantsPlan>,
}

impl Scenario {
    /// How many rounds the stacks take turns in: the load's duration in
    /// [`TURN`]s when it takes turns (the last round's slice no shorter
    /// than the others), else 1.
    pub fn rounds(&self) -> u32 {
        match &self.load {
            Load::Closed { duration, .. }
                if self.take_turns && self.tail.is_none() && !self.parallel_stacks =>
            {
                let turns = duration.as_secs_f64() / TURN.as_secs_f64();
                (turns.ceil() as u32).max(1)
            }
            _ => 1,
        }
    }

    /// When the `i`-th of `n` stacks running at once starts its load: for
    /// a periodic load, an equal share of the period each, so that no two
    /// stacks' bursts meet on the machine's cores; otherwise at once.
    pub fn start_offset(&self, i: usize, n: usize) -> Duration {
        match &self.load {
            Load::Periodic { period, .. } if self.parallel_stacks && n > 1 => {
                period.mul_f64(i as f64 / n as f64)
            }
            _ => Duration::ZERO,
        }
    }

    /// The scenario as the default suite runs it, with no stack named:
    /// its [`default_skip`](Scenario::default_skip) stacks skipped.
    pub fn by_default(mut self) -> Self {
        self.skip.append(&mut self.default_skip);
        self
    }

    /// The reason `stack` is skipped here, if it is.
    pub fn skip_reason(&self, stack: StackKind) -> Option<&'static str> {
        self.skip
            .iter()
            .find(|(kind, _)| *kind == stack)
            .map(|(_, why)| *why)
    }
}

/// One turn of a scenario that takes turns: short enough that a stack's
/// connections are never idle for longer than the shortest idle timeout
/// in play (`hyper-util-tuned`'s 2 s) while the five others take theirs.
pub const TURN: Duration = Duration::from_millis(250);

/// The one-way delay of `keepalive-race`'s relay: a close takes this long
/// to reach the client, a request this long to reach the server.
pub const RELAY_DELAY: Duration = Duration::from_millis(5);

const RAW_NEEDS_STEADY: &str = "raw keeps one connection per worker: meaningless here";

const RAW_CANNOT_RECONNECT: &str =
    "raw cannot reconnect: the first connection the server closes ends its worker";

const FRESH_UNDER_CHAOS: &str = "fresh opens a connection per request: nothing pooled for the \
     faults to catch (each fails exactly its own request); skipped to keep the run short";

/// The faults of the `chaos` scenarios, with the seed fixed: each accepted
/// connection draws the same sequence in every run. Runs and stacks still
/// meet different faults (each opens its own connections and spreads its
/// requests its own way): compare the faults injected, counted per row.
fn chaos_faults(protocol: Protocol) -> Chaos {
    let stall = (Duration::from_millis(50), Duration::from_millis(200));
    let chaos = Chaos::default()
        .stall(0.005, stall.0, stall.1)
        .goaway(0.005);
    match protocol {
        Protocol::Http1 => chaos.close(0.005).reset(0.005),
        // One connection carries every stream: a close or a reset fails
        // all 32 requests in flight, so they are rarer.
        Protocol::Http2 => chaos.close(0.0005).reset(0.0005),
    }
}

/// Builds scenario `name` at `sizes`, or `None` for an unknown name.
pub fn build(name: &str, sizes: &Sizes) -> Option<Scenario> {
    let closed = |workers: usize, seconds: u64| Load::Closed {
        workers: sizes.concurrency(workers),
        duration: sizes.duration(Duration::from_secs(seconds), Duration::from_millis(500)),
        max_requests: sizes.requests,
        think: None,
        post_every: None,
        keys: None,
    };
    let steady = |workers: usize| closed(workers, 3);
    // Figures that hold in 2 s (h2 and TLS throughput, in turns).
    let steady_short = |workers: usize| closed(workers, 2);
    let base = ServerConfig::default()
        .response_size(100)
        .idle_timeout(Some(Duration::from_secs(30)));
    let scenario = |name: &'static str, description: String, protocol, tls, load| Scenario {
        name,
        description,
        protocol,
        tls,
        server: base.clone(),
        addresses: 1,
        load,
        idle_targets: 0,
        tail: None,
        parallel_stacks: false,
        take_turns: false,
        relay: None,
        client_per_worker: false,
        skip: Vec::new(),
        default_skip: Vec::new(),
        service: None,
        tenants: None,
    };
    let workers = sizes.concurrency(32);
    let mut built = match name {
        "affinity-cache" | "affinity-scale" | "endpoint-failure" => {
            return affinity::build(name, sizes);
        }
        "noisy-neighbour" | "tiers" => return tenants::build(name, sizes),
        "cyclic" | "shift" => {
            let base = scenario("", String::new(), Protocol::Http1, false, steady(1));
            return adaptive::build(name, sizes, base);
        }
        "steady-h1" => scenario(
            "steady-h1",
            format!("{workers} workers, closed loop, HTTP/1.1, 100-byte responses"),
            Protocol::Http1,
            false,
            steady(32),
        ),
        "steady-h1-tls" => scenario(
            "steady-h1-tls",
            format!("{workers} workers, closed loop, HTTP/1.1 over TLS 1.3, 100-byte responses"),
            Protocol::Http1,
            true,
            steady_short(32),
        ),
        "steady-h2" => scenario(
            "steady-h2",
            format!("{workers} workers, closed loop, h2c, 100-byte responses"),
            Protocol::Http2,
            false,
            steady_short(32),
        ),
        "h2-stream-limit" => {
            let workers = sizes.concurrency(256);
            let mut s = scenario(
                "h2-stream-limit",
                format!(
                    "h2c, server allows 16 streams and adds 5 ms; {workers} concurrent requests"
                ),
                Protocol::Http2,
                false,
                // 2 s: each stack's rate is steady within a second.
                closed(256, 2),
            );
            s.server = s
                .server
                .h2_max_concurrent_streams(Some(16))
                .latency(Some(Duration::from_millis(5)));
            s
        }
        // `h2-stream-limit`'s server and load, but a stream's slot is freed
        // late: the two compare.
        "h2-refuse" => {
            let mut s = build("h2-stream-limit", sizes)?;
            s.name = "h2-refuse";
            s.description = format!(
                "h2c, server allows 16 streams, adds 5 ms and frees a stream's slot 2 ms \
                 after it ends, refusing streams meanwhile (as grpc-core does); {} \
                 concurrent requests",
                sizes.concurrency(256)
            );
            s.server = s.server.h2_late_release(Some(Duration::from_millis(2)));
            s
        }
        "bursty" => {
            let size = sizes.concurrency(64);
            let bursts = if sizes.quick { 5 } else { 50 };
            let mut s = scenario(
                "bursty",
                format!(
                    "{bursts} bursts of {size}, 200 ms gaps, server keep-alive 30 s, then open connections watched"
                ),
                Protocol::Http1,
                false,
                Load::Bursts {
                    bursts,
                    size,
                    gap: Duration::from_millis(200),
                },
            );
            s.tail = Some(if sizes.quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            });
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s
        }
        "keepalive-race" => {
            let workers = sizes.concurrency(16);
            // 14 s: about 15 requests per worker, each after a gap that
            // may outlast the server's idle timeout.
            let duration = sizes.duration(Duration::from_secs(14), Duration::from_secs(3));
            let mut s = scenario(
                "keepalive-race",
                format!(
                    "server closes connections idle 1 s (no hint), a relay adds {} ms each way; \
                     {workers} workers, each with a client of its own, gaps 0.5-1.5 s, {}s",
                    RELAY_DELAY.as_millis(),
                    duration.as_secs_f64()
                ),
                Protocol::Http1,
                false,
                Load::Closed {
                    workers,
                    duration,
                    max_requests: sizes.requests,
                    think: Some((Duration::from_millis(500), Duration::from_millis(1500))),
                    post_every: None,
                    keys: None,
                },
            );
            // No `Keep-Alive` hint (the server's default): the client
            // cannot know the limit.
            s.server = s.server.idle_timeout(Some(Duration::from_secs(1)));
            s.relay = Some(RELAY_DELAY);
            s.client_per_worker = true;
            s.parallel_stacks = true;
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s
        }
        "tls-churn" => {
            let mut s = scenario(
                "tls-churn",
                format!("TLS, server closes every connection after 10 requests, {workers} workers"),
                Protocol::Http1,
                true,
                steady(32),
            );
            s.server = s.server.max_requests_per_connection(Some(10));
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s
        }
        // `tls-churn`'s server, under Poisson arrivals at about a quarter of what
        // its closed loop sustains: the latency of a request, not of the
        // queue a closed loop forms behind the CPU.
        "tls-churn-paced" => {
            let rate = if sizes.quick { 2_000.0 } else { 5_000.0 };
            let mut s = scenario(
                "tls-churn-paced",
                format!(
                    "TLS, server closes every connection after 10 requests, Poisson arrivals at {rate}/s"
                ),
                Protocol::Http1,
                true,
                Load::Poisson {
                    rate,
                    duration: sizes.duration(Duration::from_secs(5), Duration::from_millis(500)),
                    max_in_flight: sizes.concurrency(256),
                    zipf_exponent: None,
                    max_requests: sizes.requests,
                    keys: None,
                },
            );
            s.server = s.server.max_requests_per_connection(Some(10));
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s
        }
        "zipf-endpoints" => {
            let in_flight = sizes.concurrency(256);
            let rate = if sizes.quick { 2_000.0 } else { 3_000.0 };
            let mut s = scenario(
                "zipf-endpoints",
                format!(
                    "64 endpoints on 64 loopback addresses, Zipf(1.1) targets, Poisson arrivals at {rate}/s"
                ),
                Protocol::Http1,
                false,
                Load::Poisson {
                    rate,
                    duration: sizes.duration(Duration::from_secs(3), Duration::from_millis(500)),
                    max_in_flight: in_flight,
                    zipf_exponent: Some(1.1),
                    max_requests: sizes.requests,
                    keys: None,
                },
            );
            s.addresses = 64;
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s
        }
        "scale-targets" => {
            let idle = if sizes.quick { 100 } else { 1_000 };
            let mut s = scenario(
                "scale-targets",
                format!(
                    "steady-h1 load on one target while {idle} other targets each hold one idle connection"
                ),
                Protocol::Http1,
                false,
                // 2 s, and as long again for the twin (see `take_turns`).
                closed(32, 2),
            );
            s.idle_targets = idle;
            s.skip.push((StackKind::Raw, RAW_NEEDS_STEADY));
            s.skip.push((
                StackKind::Fresh,
                "fresh holds no idle connection: nothing to scale",
            ));
            s
        }
        "chaos" | "chaos-h2" => {
            let (name, protocol, version) = if name == "chaos" {
                ("chaos", Protocol::Http1, "HTTP/1.1")
            } else {
                ("chaos-h2", Protocol::Http2, "h2c")
            };
            let requests = sizes
                .requests
                .unwrap_or(if sizes.quick { 5_000 } else { 200_000 });
            let faults = chaos_faults(protocol);
            let mut s = scenario(
                name,
                format!(
                    "{requests} requests, {workers} workers, closed loop, {version}, every 10th a \
                     POST with a 64-byte body; the server closes, resets, stalls (50-200 ms) and \
                     GOAWAYs connections at random: {faults}"
                ),
                protocol,
                false,
                Load::Closed {
                    workers,
                    duration: sizes.duration(Duration::from_secs(120), Duration::from_secs(30)),
                    max_requests: Some(requests),
                    think: None,
                    post_every: Some(10),
                    keys: None,
                },
            );
            s.server = s.server.chaos(Some(faults));
            s.skip.push((StackKind::Raw, RAW_CANNOT_RECONNECT));
            s.skip.push((StackKind::Fresh, FRESH_UNDER_CHAOS));
            s
        }
        _ => return None,
    };
    if matches!(
        built.name,
        "steady-h1" | "steady-h1-tls" | "steady-h2" | "scale-targets"
    ) {
        // The ratios between stacks (for scale-targets, between a stack
        // with idle targets and without) are these scenarios' point.
        built.take_turns = true;
    }
    stacks::choose(&mut built);
    Some(built)
}
