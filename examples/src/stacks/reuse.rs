//! The `reuse` stacks' pool: its layer (the pool's defaults or the
//! policy file), its connector, the lab's hooks on its events, and the one
//! place the adaptive controller is stacked over it ([`Controller`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_reuse_adaptive::events::{AdaptiveEvents, Change, Decision};
use tower_reuse_adaptive::{Adaptive, AdaptiveConfig, AdaptiveLayer, Mode};
use tower_reuse_pool::events::{CheckedOut, Closed, ConnectReason, Connected, PoolEvents};
use tower_reuse_pool::tls::TlsLayer;
use tower_reuse_pool::{ConnId, Pool, PoolConfig, PoolLayer};

use super::{ClientStats, Protocol, ReuseConnector, StackError, StackKind, TcpConnector};
use crate::target::Target;

/// Whether a `reuse` stack runs with the adaptive controller: `reuse`
/// does, `reuse-static` (its baseline) does not. Both are built by
/// `reuse_stack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// The controller tunes the pool.
    On,
    /// The pool as configured, nothing tuning it.
    Off,
}

impl Controller {
    /// The controller setting of `kind` (`Off` but for `reuse`).
    pub fn of(kind: StackKind) -> Self {
        if kind == StackKind::Reuse {
            Controller::On
        } else {
            Controller::Off
        }
    }
}

/// The `reuse` stacks' client: the adaptive layer over the pool.
pub type AdaptivePool = Adaptive<Pool<ReuseConnector, Full<Bytes>>>;

/// A `reuse` or `reuse-static` stack's client and what the lab reads of it.
pub(super) struct ReuseStack {
    pub(super) client: AdaptivePool,
    pub(super) prewarm: PrewarmCounts,
    pub(super) replacements: PrewarmCounts,
    pub(super) decisions: DecisionLog,
}

/// The `reuse` and `reuse-static` stacks: the adaptive layer with its
/// defaults (on for `reuse`; off, the pool exactly as configured, for
/// `reuse-static`) over `layer` with the lab's hooks (TLS handshakes
/// counted in `stats`, pre-warmed connections in [`PrewarmCounts`]) over
/// [`reuse_connector`]. Off, the layer's hook still counts what it sees: the
/// two stacks differ by the controller's decisions alone.
pub(super) fn reuse_stack(
    controller: Controller,
    layer: PoolLayer<Full<Bytes>>,
    protocol: Protocol,
    tls: rustls::ClientConfig,
    stats: &ClientStats,
) -> Result<ReuseStack, StackError> {
    let mode = match controller {
        Controller::On => Mode::On,
        Controller::Off => Mode::Off,
    };
    let decisions = DecisionLog::default();
    let adaptive =
        AdaptiveLayer::with_events(AdaptiveConfig::default().mode(mode), decisions.clone())
            .map_err(|e| StackError::new(format!("adaptive controller: {e}")))?;
    let prewarm = PrewarmCounts::default();
    let replacements = PrewarmCounts::of(ConnectReason::Replacement);
    let hooks = (stats.clone(), (prewarm.clone(), replacements.clone()));
    let pool = layer
        .events((hooks, adaptive.pool_events()))
        .layer(reuse_connector(protocol, tls, stats));
    Ok(ReuseStack {
        client: adaptive.layer(pool),
        prewarm,
        replacements,
        decisions,
    })
}

/// The controller's decisions, each with its time from the stack's start.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    start: Instant,
    decisions: Arc<Mutex<Vec<DecisionRecord>>>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog {
            start: Instant::now(),
            decisions: Arc::default(),
        }
    }
}

impl DecisionLog {
    /// Every decision so far.
    pub fn records(&self) -> Vec<DecisionRecord> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One decision of the controller, as results.json carries it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Seconds from the stack's start (just before its load).
    pub at_s: f64,
    /// The target (`scheme://authority`, with its endpoint's address).
    pub target: String,
    /// The setting: `idle_timeout`, `min_idle_per_target`,
    /// `max_requests_per_connection` or `tickets_per_server`.
    pub knob: &'static str,
    /// Its value before (seconds for a duration; `null`: none).
    pub from: Option<f64>,
    /// Its value after.
    pub to: Option<f64>,
    /// Why (`server_idle_limit`, `idle_gaps`, `request_limit`, ...).
    pub reason: &'static str,
    /// Whether the pool took it.
    pub applied: bool,
}

impl AdaptiveEvents for DecisionLog {
    fn on_decision(&self, decision: &Decision) {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let count = |n: Option<u64>| n.map(|n| n as f64);
        let (from, to) = match decision.change() {
            Change::IdleTimeout { from, to } => (secs(from), secs(to)),
            Change::MinIdle { from, to } => (Some(from as f64), Some(to as f64)),
            Change::MaxRequests { from, to } => (count(from), count(to)),
            Change::TlsTickets { from, to } => (Some(from as f64), Some(to as f64)),
            _ => (None, None),
        };
        let record = DecisionRecord {
            at_s: self.start.elapsed().as_secs_f64(),
            target: decision.target().to_string(),
            knob: decision.change().knob(),
            from,
            to,
            reason: decision.reason().as_str(),
            applied: decision.applied(),
        };
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

/// Connections a pool opened ahead of demand, for one reason (pre-warm by
/// default, or [`ConnectReason::Replacement`]), and how many of them served
/// a request, from its events: such a connection counts as served at its
/// first checkout, or, if it closes first, when its [`Closed`] event says
/// it served one. Connections still open at the end are counted by their
/// checkouts.
#[derive(Clone, Debug)]
pub struct PrewarmCounts {
    reason: ConnectReason,
    inner: Arc<PrewarmInner>,
}

impl Default for PrewarmCounts {
    fn default() -> Self {
        Self::of(ConnectReason::Prewarm)
    }
}

#[derive(Debug, Default)]
struct PrewarmInner {
    opened: AtomicU64,
    served: AtomicU64,
    /// Pre-warmed connections open and not served yet.
    waiting: Mutex<HashSet<ConnId>>,
}

/// A copy of [`PrewarmCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrewarmSnapshot {
    /// Connections opened to pre-warm the pool.
    pub opened: u64,
    /// Of those, the ones that served at least one request.
    pub served: u64,
}

impl PrewarmCounts {
    /// Counts of the connections opened for `reason`.
    pub fn of(reason: ConnectReason) -> Self {
        PrewarmCounts {
            reason,
            inner: Arc::default(),
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> PrewarmSnapshot {
        PrewarmSnapshot {
            opened: self.inner.opened.load(Relaxed),
            served: self.inner.served.load(Relaxed),
        }
    }

    /// Whether `id` was waiting for its first request (and is no more).
    fn take(&self, id: ConnId) -> bool {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }
}

impl PoolEvents for PrewarmCounts {
    fn on_connect(&self, event: &Connected<'_>) {
        if event.reason() == self.reason {
            self.inner.opened.fetch_add(1, Relaxed);
            self.inner
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(event.id());
        }
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        // A connection's first checkout only, and only once any connection
        // was pre-warmed: nothing on the hot path otherwise.
        if !event.reused() && self.inner.opened.load(Relaxed) > 0 && self.take(event.id()) {
            self.inner.served.fetch_add(1, Relaxed);
        }
    }

    fn on_close(&self, event: &Closed<'_>) {
        if event.opened_for() == self.reason && self.take(event.id()) && event.requests_served() > 0
        {
            self.inner.served.fetch_add(1, Relaxed);
        }
    }
}

/// The `reuse` stacks' pool layer: the pool's defaults (or the policy
/// file), no per-scenario tuning; h2c needs prior knowledge (over TLS, ALPN
/// decides).
pub(super) fn pool_layer(
    kind: StackKind,
    protocol: Protocol,
    target: &Target,
    policy: Option<&PoolConfig>,
) -> Result<PoolLayer<Full<Bytes>>, StackError> {
    layer_of(kind, pool_layer_config(protocol, target, policy))
}

/// The configuration of [`pool_layer`].
pub(super) fn pool_layer_config(
    protocol: Protocol,
    target: &Target,
    policy: Option<&PoolConfig>,
) -> PoolConfig {
    let h2c = protocol == Protocol::Http2 && !target.is_tls();
    policy
        .cloned()
        .unwrap_or_default()
        .http2_prior_knowledge(h2c)
}

/// A pool layer from `config`, or why not for `kind`.
pub(super) fn layer_of(
    kind: StackKind,
    config: PoolConfig,
) -> Result<PoolLayer<Full<Bytes>>, StackError> {
    PoolLayer::new(config).map_err(|e| StackError::new(format!("{kind}: invalid pool config: {e}")))
}

/// The pool of the stacks built over `reuse` (`reuse+span`,
/// `reuse+affinity`, `reuse+budget`): `layer` with the lab's hook (TLS
/// handshakes counted) over [`reuse_connector`].
pub(super) fn reuse_pool(
    layer: PoolLayer<Full<Bytes>>,
    protocol: Protocol,
    tls: rustls::ClientConfig,
    stats: &ClientStats,
) -> Pool<ReuseConnector, Full<Bytes>> {
    layer
        .events(stats.clone())
        .layer(reuse_connector(protocol, tls, stats))
}

/// The `reuse` stacks' connector: the lab's counting TCP connector under
/// the pool's TLS layer, offering the scenario's protocol over ALPN.
pub(super) fn reuse_connector(
    protocol: Protocol,
    mut tls: rustls::ClientConfig,
    stats: &ClientStats,
) -> ReuseConnector {
    tls.alpn_protocols = vec![match protocol {
        Protocol::Http1 => b"http/1.1".to_vec(),
        Protocol::Http2 => b"h2".to_vec(),
    }];
    TlsLayer::new(Arc::new(tls)).layer(TcpConnector::new(stats.clone()))
}
