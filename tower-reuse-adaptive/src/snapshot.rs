//! What the controller sees and has set, per target.

use std::time::Duration;

use tower_reuse_pool::Target;
use tower_reuse_pool::events::CloseReason;

use crate::config::{AdaptiveConfig, Mode};
use crate::decide::Knobs;
use crate::events::Inputs;
use crate::window::Bucket;

/// The controller's state: see
/// [`AdaptiveHandle::snapshot`](crate::AdaptiveHandle::snapshot).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AdaptiveSnapshot {
    /// On, observing only, or off.
    pub mode: Mode,
    /// Targets tracked now.
    pub tracked: usize,
    /// Events of targets beyond `max_targets`, not tracked.
    pub untracked: u64,
    /// Ticks so far.
    pub ticks: u64,
    /// Every target the pool has told of, by name.
    pub targets: Vec<TargetEstimates>,
}

impl AdaptiveSnapshot {
    /// One target's estimates.
    pub fn target(&self, target: &Target) -> Option<&TargetEstimates> {
        self.targets.iter().find(|t| t.target == *target)
    }
}

/// One target over the controller's window, what it learned of the
/// server, and the settings it gave the target.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TargetEstimates {
    /// The target.
    pub target: Target,
    /// Requests per second that got a connection (responses that came on
    /// one of the target's connections).
    pub rate: f64,
    /// Requests in flight now.
    pub in_flight: usize,
    /// The most requests in flight at once.
    pub peak: usize,
    /// The median and 99th percentile of the requests in flight as each
    /// request went out, over the window (exact to 8, within a fifth
    /// above).
    pub in_flight_p50: Option<usize>,
    /// See `in_flight_p50`.
    pub in_flight_p99: Option<usize>,
    /// Requests through the layer that got a response other than a server
    /// error (5xx), of all that ended (none through the layer: `None`).
    pub success_rate: Option<f64>,
    /// Median time to the response head, through the layer.
    pub latency_p50: Option<Duration>,
    /// 99th percentile of the same.
    pub latency_p99: Option<Duration>,
    /// 99th percentile of the checkout wait.
    pub checkout_wait_p99: Option<Duration>,
    /// Requests on a connection that had served before, of all.
    pub reuse_ratio: Option<f64>,
    /// 99th percentile of the idle gaps at which connections were reused
    /// (or would have been, had they not expired).
    pub gap_p99: Option<Duration>,
    /// Connections opened for waiting requests.
    pub demand_connects: u64,
    /// Connections opened ahead (pre-warm, rotation, replacement).
    pub other_connects: u64,
    /// Connects that failed.
    pub connect_errors: u64,
    /// Median connect time (TCP, TLS, HTTP handshake).
    pub connect_p50: Option<Duration>,
    /// Median TLS handshake time (within the connect time), for the
    /// connections the pool's TLS connector encrypted.
    pub tls_handshake_p50: Option<Duration>,
    /// TLS handshakes resumed, of all.
    pub tls_resumption: Option<f64>,
    /// Requests that found a reused connection closed by the server.
    pub stale: u64,
    /// Requests retried on another connection.
    pub retries: u64,
    /// Streams the server refused.
    pub refused: u64,
    /// Connections closed, by reason (those with none left out).
    pub closes: Vec<(CloseReason, u64)>,
    /// The server's idle timeout, as learned from its closes.
    pub server_idle_limit: Option<Duration>,
    /// How far below it the pool closes.
    pub margin: Option<Duration>,
    /// The server's request limit per connection, as learned.
    pub request_limit: Option<u64>,
    /// The period of the target's bursts, when steady.
    pub period: Option<Duration>,
    /// The most in flight in the recent bursts.
    pub burst_peak: Option<usize>,
    /// The idle timeout the controller set, if it set one (`Some(None)`:
    /// none).
    pub idle_timeout: Option<Option<Duration>>,
    /// The `min_idle_per_target` the controller set, if it set one.
    pub min_idle: Option<usize>,
    /// The `max_idle_per_target` the controller set, if it set one
    /// (`Some(None)`: no cap).
    pub max_idle: Option<Option<usize>>,
    /// The `max_requests_per_connection` the controller set, if it set one.
    pub max_requests: Option<Option<u64>>,
    /// Decisions made for this target so far.
    pub decisions: u64,
}

impl TargetEstimates {
    pub(crate) fn new(
        target: Target,
        window: &Bucket,
        inputs: &Inputs,
        knobs: Knobs,
        in_flight: usize,
        decisions: u64,
        config: &AdaptiveConfig,
    ) -> Self {
        let c = &window.counts;
        let share = |part: u64, all: u64| (all > 0).then(|| part as f64 / all as f64);
        TargetEstimates {
            target,
            rate: c.checkouts as f64 / config.window.as_secs_f64(),
            in_flight,
            peak: c.peak,
            in_flight_p50: window.in_flight.quantile_count(0.5),
            in_flight_p99: window.in_flight.quantile_count(0.99),
            success_rate: share(c.requests - c.errors.min(c.requests), c.requests),
            latency_p50: window.latency.quantile(0.5),
            latency_p99: window.latency.quantile(0.99),
            checkout_wait_p99: window.wait.quantile(0.99),
            reuse_ratio: share(c.reused, c.checkouts),
            gap_p99: window.gaps.quantile(0.99),
            demand_connects: c.demand_connects,
            other_connects: c.other_connects,
            connect_errors: c.connect_errors,
            connect_p50: window.connect.quantile(0.5),
            tls_handshake_p50: window.tls.quantile(0.5),
            tls_resumption: share(c.tls_resumed, c.tls_resumed + c.tls_full),
            stale: c.stale,
            retries: c.retries,
            refused: c.refused,
            closes: CloseReason::ALL
                .iter()
                .map(|&r| (r, c.closed(r)))
                .filter(|&(_, n)| n > 0)
                .collect(),
            server_idle_limit: inputs.server_idle_limit,
            margin: inputs.margin,
            request_limit: inputs.request_limit,
            period: inputs.period,
            burst_peak: inputs.burst_peak,
            idle_timeout: knobs.idle_timeout.ours,
            min_idle: knobs.min_idle.ours,
            max_idle: knobs.max_idle.ours,
            max_requests: knobs.max_requests.ours,
            decisions,
        }
    }
}
