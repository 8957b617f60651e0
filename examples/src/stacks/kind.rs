//! The stacks' names and the HTTP version a scenario speaks.

use std::fmt;

use serde::Serialize;

/// Which client stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StackKind {
    /// A new connection per request.
    Fresh,
    /// `hyper_util::client::legacy::Client`, defaults + nodelay + pool timer.
    HyperUtil,
    /// The same with `pool_max_idle_per_host(8)`, `pool_idle_timeout(2s)`.
    HyperUtilTuned,
    /// `hyper-util` with the workspace's TLS [`SessionCache`](tower_reuse_pool::tls::SessionCache) (64 tickets
    /// per server) as its rustls session store instead of rustls' default
    /// (8): what the cache gives on its own, apart from the pool. Run in
    /// `tls-churn` only.
    HyperUtilCache,
    /// This workspace's stack (`tower_reuse_pool`), with the adaptive
    /// controller once it lands.
    Reuse,
    /// `reuse` exactly, the controller off: the baseline the controller
    /// is measured against.
    ReuseStatic,
    /// `reuse` with OpenTelemetry on: `OtelLayer` on top and
    /// `OtelPoolEvents` as the pool's hook, over the real SDK exporting
    /// nowhere (batched spans dropped, metrics never collected mid-run), or
    /// over OTLP/HTTP to `--otlp URL`.
    ReuseOtel,
    /// `reuse` under one bare OpenTelemetry SDK span per request and
    /// nothing else: four attributes at the start, two at the response
    /// head, no metrics, no context, no hook. The least any layer that
    /// records a sampled span per request can cost, on the same SDK set-up
    /// as `reuse+otel` (exporting to `--otlp URL` too). Opt-in (`--stack`):
    /// not in the default suite.
    ReuseSpan,
    /// Pre-established connections: one per worker (HTTP/1) or one shared (h2).
    Raw,
    /// tower's p2c balancer over one hyper-util client per endpoint of a
    /// service with several: the peer of the affinity scenarios.
    HyperUtilP2c,
    /// `reuse` with the affinity layer on, over a service with one
    /// endpoint (`steady-h1`): what affinity costs where it has no choice.
    ReuseAffinity,
    /// The pool with a total budget across targets and no affinity layer:
    /// the `noisy-neighbour` scenario's shared pool.
    ReuseShared,
    /// `reuse` with a total budget across targets that does not bind
    /// ([`LOOSE_BUDGET`](super::LOOSE_BUDGET)): `scale-targets` only, against its twin.
    ReuseBudget,
    /// `hyper-util` under tower-http's `TraceLayer`, bridged to the same
    /// OpenTelemetry SDK set-up as `reuse+otel` by `tracing-opentelemetry`,
    /// with a hand-made request duration histogram: the instrumented client
    /// users build today (`steady-h1` only).
    HyperUtilTracing,
}

impl StackKind {
    /// Every stack, in table order.
    pub const ALL: [StackKind; 14] = [
        StackKind::Fresh,
        StackKind::HyperUtil,
        StackKind::HyperUtilTuned,
        StackKind::HyperUtilCache,
        StackKind::HyperUtilP2c,
        StackKind::Reuse,
        StackKind::ReuseStatic,
        StackKind::ReuseShared,
        StackKind::ReuseBudget,
        StackKind::ReuseAffinity,
        StackKind::HyperUtilTracing,
        StackKind::ReuseOtel,
        StackKind::ReuseSpan,
        StackKind::Raw,
    ];

    /// The stacks a run without `--stack` compares: all but the opt-in
    /// `reuse+span`.
    pub fn default_set() -> Vec<StackKind> {
        Self::ALL
            .into_iter()
            .filter(|&k| k != StackKind::ReuseSpan)
            .collect()
    }

    /// The name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Fresh => "fresh",
            StackKind::HyperUtil => "hyper-util",
            StackKind::HyperUtilTuned => "hyper-util-tuned",
            StackKind::HyperUtilCache => "hyper-util+cache",
            StackKind::Reuse => "reuse",
            StackKind::ReuseStatic => "reuse-static",
            StackKind::ReuseOtel => "reuse+otel",
            StackKind::ReuseSpan => "reuse+span",
            StackKind::Raw => "raw",
            StackKind::HyperUtilP2c => "hyper-util+p2c",
            StackKind::ReuseShared => "reuse-shared",
            StackKind::ReuseBudget => "reuse+budget",
            StackKind::ReuseAffinity => "reuse+affinity",
            StackKind::HyperUtilTracing => "hyper-util+tracing",
        }
    }

    /// Parses a name from [`StackKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for StackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The HTTP version a scenario speaks (h2 over plain TCP is prior knowledge,
/// over TLS it is negotiated with ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}
