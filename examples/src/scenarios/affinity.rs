//! The affinity scenarios of issue 15: one logical service over several
//! endpoints (loopback addresses on one port), each endpoint caching the
//! affinity keys it serves.

use std::sync::Arc;
use std::time::Duration;

use super::{Scenario, Sizes};
use crate::driver::{Keys, Load};
use crate::server::{KeyCache, ServerConfig};
use crate::stacks::{Protocol, StackKind};

pub(super) const P2C_NEEDS_ENDPOINTS: &str =
    "a balancer over one service's endpoints: run in the affinity scenarios only";

pub(super) const AFFINITY_IN_STEADY_ONLY: &str =
    "affinity over one endpoint is measured in steady-h1 only (its cost where it has no choice)";

/// Endpoints the service starts with.
const ENDPOINTS: usize = 8;

/// The service's key space and popularity.
const KEYS: usize = 10_000;
const ZIPF: f64 = 1.0;

/// Keys each endpoint caches, and what a miss costs.
const CACHE: KeyCache = KeyCache {
    capacity: 1_500,
    miss_latency: Duration::from_millis(2),
};

/// The logical service's endpoints and what happens to them during the load.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    /// Endpoints at the start.
    pub endpoints: usize,
    /// The keys the requests carry (the load holds the same `Arc`).
    pub keys: Arc<Keys>,
    /// Requests sent before the load, the same keys in the same order for
    /// every stack, not measured: with `warm_every_key`, first one request
    /// per key (in a shuffled order), then `warm_up` drawn by popularity,
    /// so that caches hold what they would in steady state (every key seen
    /// before, the popular ones recently).
    pub warm_up: usize,
    /// Whether the warm-up starts with one request per key.
    pub warm_every_key: bool,
    /// Changes during the load, at offsets from its start; each starts a
    /// new phase of the keys' routes.
    pub steps: Vec<(Duration, Step)>,
    /// How long a removed endpoint keeps serving after the stack was told
    /// (its connections drain), before its address is taken down.
    pub drain: Duration,
}

/// A change to the service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The service now has this many endpoints (the first ones; more are
    /// added on new addresses).
    Endpoints(usize),
    /// Endpoint `i` goes down (listener and connections closed).
    Down(usize),
    /// Endpoint `i` comes back on the same address.
    Up(usize),
    /// Nothing changes: only a new phase starts (e.g. once a returned
    /// endpoint has settled).
    Mark,
}

pub(super) fn build(name: &str, sizes: &Sizes) -> Option<Scenario> {
    let keys = Arc::new(Keys::new(KEYS, ZIPF));
    let secs =
        |full: f64, quick: f64| Duration::from_secs_f64(if sizes.quick { quick } else { full });
    let poisson = |rate: f64, duration: Duration| Load::Poisson {
        rate,
        duration: sizes.duration.unwrap_or(duration),
        max_in_flight: sizes.concurrency(256),
        zipf_exponent: None,
        max_requests: sizes.requests,
        keys: Some(keys.clone()),
    };
    let mut plan = ServicePlan {
        endpoints: ENDPOINTS,
        keys: keys.clone(),
        warm_up: if sizes.quick { 2_000 } else { 20_000 },
        warm_every_key: false,
        steps: Vec::new(),
        drain: secs(1.0, 0.2),
    };
    let rate = if sizes.quick { 2_000.0 } else { 3_000.0 };
    let (description, load) = match name {
        "affinity-cache" => {
            plan.warm_every_key = true;
            (
                format!(
                    "one service on {ENDPOINTS} endpoints, {KEYS} keys with Zipf({ZIPF}) \
                     popularity, each endpoint caches {} keys, a miss adds {:?}; Poisson \
                     arrivals at {rate}/s after a warm-up of one request per key and {} more",
                    CACHE.capacity, CACHE.miss_latency, plan.warm_up
                ),
                poisson(rate, secs(3.0, 1.0)),
            )
        }
        "affinity-scale" => {
            let workers = sizes.concurrency(32);
            let phase = secs(2.0, 0.5);
            plan.warm_up /= 4;
            plan.steps = vec![
                (phase, Step::Endpoints(12)),
                (phase * 2, Step::Endpoints(6)),
            ];
            (
                format!(
                    "the service goes from {ENDPOINTS} to 12 to 6 endpoints every {:?} under \
                     {workers} closed-loop workers; keys moved per step against the minimum",
                    phase
                ),
                Load::Closed {
                    workers,
                    duration: sizes.duration.unwrap_or(phase * 3),
                    max_requests: sizes.requests,
                    think: None,
                    post_every: None,
                    keys: Some(keys.clone()),
                },
            )
        }
        "endpoint-failure" => {
            let (before, down, settle, after) = if sizes.quick {
                (0.5, 1.0, 0.5, 1.0)
            } else {
                (3.0, 10.0, 1.0, 3.0)
            };
            let rate = rate / 1.5;
            plan.warm_up /= 4;
            plan.steps = vec![
                (Duration::from_secs_f64(before), Step::Down(FAILING)),
                (Duration::from_secs_f64(before + down), Step::Up(FAILING)),
                (Duration::from_secs_f64(before + down + settle), Step::Mark),
            ];
            (
                format!(
                    "one of {ENDPOINTS} endpoints down for {down} s (listener and connections \
                     closed) after {before} s, then back; Poisson GETs at {rate:.0}/s; its keys \
                     after its return ({settle} s to settle)"
                ),
                poisson(
                    rate,
                    Duration::from_secs_f64(before + down + settle + after),
                ),
            )
        }
        _ => return None,
    };
    let server = ServerConfig::default()
        .response_size(100)
        .idle_timeout(Some(Duration::from_secs(30)))
        .cache(Some(CACHE))
        .served_by(true)
        .one_port(true)
        .sample_interval(Duration::from_millis(5));
    let only = "the affinity scenarios compare hyper-util+p2c and reuse (affinity over the pool)";
    let skip = StackKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, StackKind::HyperUtilP2c | StackKind::Reuse))
        .map(|k| (k, only))
        .collect();
    Some(Scenario {
        name: match name {
            "affinity-cache" => "affinity-cache",
            "affinity-scale" => "affinity-scale",
            _ => "endpoint-failure",
        },
        description,
        protocol: Protocol::Http1,
        tls: false,
        server,
        addresses: ENDPOINTS,
        load,
        idle_targets: 0,
        tail: None,
        // `endpoint-failure` counts failures and keys, not speed: its two
        // stacks (each on a server of its own) share its 17 s, to keep
        // the suite short.
        parallel_stacks: name == "endpoint-failure",
        take_turns: false,
        relay: None,
        client_per_worker: false,
        skip,
        default_skip: Vec::new(),
        service: Some(plan),
        tenants: None,
    })
}

/// The endpoint `endpoint-failure` takes down.
const FAILING: usize = 3;
