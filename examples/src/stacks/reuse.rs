//! The `reuse` stacks' pool: its layer (the pool's defaults or the
//! policy file), its connector, the lab's hooks on its events, and the one
//! place the adaptive controller is stacked over it ([`Controller`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use tower_layer::Layer;
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

/// The `reuse` and `reuse-static` stacks: `layer` with the lab's hooks
/// (TLS handshakes counted in `stats`, pre-warmed connections in the
/// returned [`PrewarmCounts`]) over [`reuse_connector`], under the
/// controller when `controller` is on.
pub(super) fn reuse_stack(
    controller: Controller,
    layer: PoolLayer<Full<Bytes>>,
    protocol: Protocol,
    tls: rustls::ClientConfig,
    stats: &ClientStats,
) -> (Pool<ReuseConnector, Full<Bytes>>, PrewarmCounts) {
    let prewarm = PrewarmCounts::default();
    let pool = layer
        .events((stats.clone(), prewarm.clone()))
        .layer(reuse_connector(protocol, tls, stats));
    let pool = match controller {
        // The adaptive controller (issue 17) is stacked over the pool
        // here, for `Controller::On` only.
        Controller::On | Controller::Off => pool,
    };
    (pool, prewarm)
}

/// Pre-warmed connections a pool opened and how many of them served a
/// request, from its events: a connection opened for
/// [`ConnectReason::Prewarm`] counts as served at its first checkout, or,
/// if it closes first, when its [`Closed`] event says it served one.
/// Connections still open at the end are counted by their checkouts.
#[derive(Clone, Debug, Default)]
pub struct PrewarmCounts {
    inner: Arc<PrewarmInner>,
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
        if event.reason() == ConnectReason::Prewarm {
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
        if event.prewarmed() && self.take(event.id()) && event.requests_served() > 0 {
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
