//! The client stacks under comparison, all driven through one interface:
//! [`Stack::worker`] / [`Stack::shared`] hand out a [`WorkerClient`] whose
//! [`send`](WorkerClient::send) takes the same `Request<Full<Bytes>>` for
//! every stack and reads the whole response.

mod connector;
mod kind;
mod otel;
mod p2c;
mod reuse;
mod service;
mod tenants;
mod traced;
mod worker;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_sdk::trace::SdkTracer;
use rustls::client::Resumption;
use tower_layer::Layer;
use tower_reuse_affinity::Affinity;
use tower_reuse_otel::{Otel, OtelLayer, OtelPoolEvents};
use tower_reuse_pool::tls::SessionCache;
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolSnapshot};
use tower_service::Service;

pub use connector::{
    BoxError, ClientSnapshot, ClientStats, ConnectFuture, Counted, LabConnector, LabStream,
    ReuseConnector, TcpConnector,
};
pub use kind::{Protocol, StackKind};
pub use otel::{BareSpan, DiscardMetrics, DiscardSpans};
pub use p2c::{ChannelDiscover, EndpointClient, P2c, P2cClient};
pub use reuse::{
    AdaptivePool, Controller, DecisionLog, DecisionRecord, PrewarmCounts, PrewarmSnapshot,
};
pub use tenants::LOOSE_BUDGET;
pub use traced::{Instruments, TracedClient};
pub use worker::{
    Completed, RequestError, RequestErrorKind, WorkerClient, classify_boxed, classify_hyper,
    complete,
};

use reuse::{layer_of, pool_layer, pool_layer_config, reuse_connector, reuse_pool, reuse_stack};

use crate::otlp::Endpoint;
use crate::target::Target;

/// Why a stack could not be built.
#[derive(Debug)]
pub struct StackError(String);

impl StackError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StackError {}

/// What [`Stack::build`] builds for, besides the stack's kind.
#[derive(Clone, Copy)]
struct Spec<'a> {
    protocol: Protocol,
    workers: usize,
    target: &'a Target,
    policy: Option<&'a PoolConfig>,
    otlp: Option<&'a Endpoint>,
}

/// A built client stack.
#[derive(Debug)]
pub struct Stack {
    kind: StackKind,
    protocol: Protocol,
    connector_stats: ClientStats,
    inner: Inner,
    /// The `reuse` stacks' count of pre-warmed connections.
    prewarm: Option<PrewarmCounts>,
    /// The `reuse` stacks' count of replacements opened ahead of a
    /// connection's last request.
    replacements: Option<PrewarmCounts>,
    /// The `reuse` stacks' controller decisions.
    decisions: Option<DecisionLog>,
    /// With a client per worker ([`Stack::build_per_worker`]): the
    /// workers' own stacks, worker `i` on `per_worker[i % len]`.
    per_worker: Vec<Stack>,
}

// One per stack: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Fresh(LabConnector),
    Legacy(Client<LabConnector, Full<Bytes>>),
    RawHttp1(Mutex<Vec<http1::SendRequest<Full<Bytes>>>>),
    RawHttp2(http2::SendRequest<Full<Bytes>>),
    /// `reuse` and `reuse-static`: the adaptive layer over the pool.
    Reuse(AdaptivePool),
    /// The pool alone (`reuse-shared`).
    Pool(Pool<ReuseConnector, Full<Bytes>>),
    ReuseOtel {
        // Held for the providers' lifetime; dropping it shuts them down.
        // Declared first, so dropped first: the last export happens while
        // the client and its hook still live, with their observable
        // instruments (a dropped hook is no longer observed).
        _telemetry: otel::Telemetry,
        client: Otel<Pool<ReuseConnector, Full<Bytes>>, SdkTracer>,
    },
    ReuseSpan {
        // Declared first, so dropped first, as for `ReuseOtel`.
        _telemetry: otel::Telemetry,
        pool: Pool<ReuseConnector, Full<Bytes>>,
        span: BareSpan,
    },
    P2c(P2c),
    /// The affinity layer over the pool, and the pool's control handle.
    ReuseAffinity(Affinity<Pool<ReuseConnector, Full<Bytes>>>, PoolControl),
    Traced(traced::Traced),
    /// A client per worker: see [`Stack::per_worker`].
    PerWorker,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Inner::Fresh(_) => "Fresh",
            Inner::Legacy(_) => "Legacy",
            Inner::RawHttp1(_) => "RawHttp1",
            Inner::RawHttp2(_) => "RawHttp2",
            Inner::Reuse(_) => "Reuse",
            Inner::Pool(_) => "Pool",
            Inner::ReuseOtel { .. } => "ReuseOtel",
            Inner::ReuseSpan { .. } => "ReuseSpan",
            Inner::P2c(_) => "P2c",
            Inner::ReuseAffinity(..) => "ReuseAffinity",
            Inner::Traced(_) => "Traced",
            Inner::PerWorker => "PerWorker",
        })
    }
}

impl Stack {
    /// Builds `kind` for `protocol`. `tls` is used for `https` targets (build
    /// a new one per stack so TLS sessions do not carry over). `raw`
    /// pre-establishes `workers` connections (HTTP/1) or one (h2) to `target`.
    ///
    /// `reuse` and `reuse+otel` run with `policy` (`--policy FILE`), else the
    /// pool's defaults. `reuse+otel` exports to `otlp` (`--otlp URL`) when
    /// given, else nowhere; it exports what is left when the stack is
    /// dropped.
    pub async fn build(
        kind: StackKind,
        protocol: Protocol,
        tls: rustls::ClientConfig,
        workers: usize,
        target: &Target,
        policy: Option<&PoolConfig>,
        otlp: Option<&Endpoint>,
    ) -> Result<Self, StackError> {
        let spec = Spec {
            protocol,
            workers,
            target,
            policy,
            otlp,
        };
        Self::build_counted(kind, &spec, tls, ClientStats::default()).await
    }

    /// `clients` instances of `kind`, as `clients` processes would each
    /// build their own: closed-loop worker `i` gets instance `i % clients`
    /// ([`Stack::worker`]), nothing is shared between them but the lab's
    /// client-side counters. Not for `raw` (one connection per worker
    /// already).
    pub async fn build_per_worker(
        kind: StackKind,
        protocol: Protocol,
        tls: rustls::ClientConfig,
        clients: usize,
        target: &Target,
        policy: Option<&PoolConfig>,
        otlp: Option<&Endpoint>,
    ) -> Result<Self, StackError> {
        if kind == StackKind::Raw {
            return Err(StackError::new("raw has a connection per worker already"));
        }
        let spec = Spec {
            protocol,
            workers: 1,
            target,
            policy,
            otlp,
        };
        let stats = ClientStats::default();
        let mut per_worker = Vec::with_capacity(clients);
        for _ in 0..clients.max(1) {
            per_worker.push(Self::build_counted(kind, &spec, tls.clone(), stats.clone()).await?);
        }
        Ok(Self {
            per_worker,
            ..Self::from_parts(kind, protocol, stats, Inner::PerWorker)
        })
    }

    /// [`Stack::build`], counting its connections in `connector_stats`.
    async fn build_counted(
        kind: StackKind,
        spec: &Spec<'_>,
        tls: rustls::ClientConfig,
        connector_stats: ClientStats,
    ) -> Result<Self, StackError> {
        let Spec {
            protocol,
            workers,
            target,
            policy,
            otlp,
        } = *spec;
        let connector = if kind == StackKind::HyperUtilCache {
            let mut tls = tls.clone();
            tls.resumption = Resumption::store(Arc::new(SessionCache::default()));
            LabConnector::new(protocol, tls)
        } else {
            LabConnector::new(protocol, tls.clone())
        }
        .counted_by(connector_stats.clone());
        let mut prewarm = None;
        let mut replacements = None;
        let mut decisions = None;
        let inner = match kind {
            StackKind::Fresh => Inner::Fresh(connector),
            StackKind::HyperUtil
            | StackKind::HyperUtilTuned
            | StackKind::HyperUtilCache
            | StackKind::HyperUtilTracing => {
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_timer(TokioTimer::new());
                if protocol == Protocol::Http2 {
                    builder.http2_only(true);
                }
                if kind == StackKind::HyperUtilTuned {
                    builder
                        .pool_max_idle_per_host(8)
                        .pool_idle_timeout(Duration::from_secs(2));
                }
                let client = builder.build(connector);
                match (kind, target.uri.authority()) {
                    (StackKind::HyperUtilTracing, Some(authority)) => {
                        Inner::Traced(traced::Traced::new(client, authority, otlp)?)
                    }
                    _ => Inner::Legacy(client),
                }
            }
            StackKind::ReuseShared => {
                return Err(StackError::new(
                    "reuse-shared takes its budget from noisy-neighbour: run there only",
                ));
            }
            StackKind::Reuse | StackKind::ReuseStatic => {
                let layer = pool_layer(kind, protocol, target, policy)?;
                let stack =
                    reuse_stack(Controller::of(kind), layer, protocol, tls, &connector_stats)?;
                prewarm = Some(stack.prewarm);
                replacements = Some(stack.replacements);
                decisions = Some(stack.decisions);
                Inner::Reuse(stack.client)
            }
            StackKind::ReuseBudget => {
                // The budget set and the affinity layer's tiers on.
                let layer = tenants::loose_budget(pool_layer_config(protocol, target, policy))
                    .and_then(|config| layer_of(kind, config))?;
                let pool = reuse_pool(layer, protocol, tls, &connector_stats);
                let control = pool.control();
                Inner::ReuseAffinity(tenants::budget_tiers()?.layer(pool), control)
            }
            StackKind::ReuseOtel => {
                // Exactly `reuse`, plus both OpenTelemetry pieces; the lab
                // still counts TLS handshakes from the pool's events.
                let telemetry = otel::Telemetry::new(otlp)?;
                let meter = telemetry.meter();
                let events = (connector_stats.clone(), OtelPoolEvents::new(&meter));
                let layer = pool_layer(kind, protocol, target, policy)?.events(events);
                let connector = reuse_connector(protocol, tls, &connector_stats);
                let pool = layer.layer(connector);
                Inner::ReuseOtel {
                    client: OtelLayer::new(telemetry.tracer(), &meter).layer(pool),
                    _telemetry: telemetry,
                }
            }
            StackKind::ReuseSpan => {
                let telemetry = otel::Telemetry::new(otlp)?;
                let layer = pool_layer(kind, protocol, target, policy)?;
                let pool = reuse_pool(layer, protocol, tls, &connector_stats);
                Inner::ReuseSpan {
                    pool,
                    span: BareSpan::new(telemetry.tracer(), &target.uri),
                    _telemetry: telemetry,
                }
            }
            StackKind::HyperUtilP2c => Inner::P2c(P2c::new(connector)),
            StackKind::ReuseAffinity => {
                let layer = pool_layer(kind, protocol, target, policy)?;
                let pool = reuse_pool(layer, protocol, tls, &connector_stats);
                let control = pool.control();
                let client = service::affinity_layer()?.layer(pool);
                service::one_endpoint(&client, target)?;
                Inner::ReuseAffinity(client, control)
            }
            StackKind::Raw => match protocol {
                Protocol::Http1 => {
                    let mut senders = Vec::with_capacity(workers);
                    for _ in 0..workers {
                        senders.push(connect_http1(connector.clone(), target).await?);
                    }
                    Inner::RawHttp1(Mutex::new(senders))
                }
                Protocol::Http2 => Inner::RawHttp2(connect_http2(connector, target).await?),
            },
        };
        Ok(Self {
            prewarm,
            replacements,
            decisions,
            ..Self::from_parts(kind, protocol, connector_stats, inner)
        })
    }

    /// A stack of one client, without the `reuse` stacks' pre-warm count.
    fn from_parts(
        kind: StackKind,
        protocol: Protocol,
        connector_stats: ClientStats,
        inner: Inner,
    ) -> Self {
        Self {
            kind,
            protocol,
            connector_stats,
            inner,
            prewarm: None,
            replacements: None,
            decisions: None,
            per_worker: Vec::new(),
        }
    }

    /// Which stack this is.
    pub fn kind(&self) -> StackKind {
        self.kind
    }

    /// Client-side connection counters.
    pub fn client_stats(&self) -> &ClientStats {
        &self.connector_stats
    }

    /// Requests the stack retried on its own and reported; 0 for stacks
    /// that never retry (`fresh`, `raw`), `None` for those that retry where
    /// the lab cannot count it (hyper-util's client retries a request
    /// whose pooled connection was closed under it, and says nothing).
    pub fn retries(&self) -> Option<u64> {
        match &self.inner {
            Inner::ReuseAffinity(client, control) => Some(service::retries(client, control)),
            Inner::Fresh(_) | Inner::RawHttp1(_) | Inner::RawHttp2(_) => Some(0),
            Inner::PerWorker => self.per_worker.iter().map(Stack::retries).sum(),
            _ => self.pool_total(|t| t.retries()),
        }
    }

    /// Connections the pool skipped at checkout because they had closed
    /// or were closing (stale), summed over targets (and over the
    /// workers' own stacks); `None` for stacks without the pool.
    pub fn stale_skips(&self) -> Option<u64> {
        match &self.inner {
            Inner::PerWorker => self.per_worker.iter().map(Stack::stale_skips).sum(),
            _ => self.pool_total(|t| t.stale_skips()),
        }
    }

    /// The controller's decisions (`reuse`, `reuse-static`; over the
    /// workers' own stacks, in time order); empty for other stacks.
    pub fn decisions(&self) -> Vec<DecisionRecord> {
        match &self.inner {
            Inner::PerWorker => {
                let mut all: Vec<DecisionRecord> =
                    self.per_worker.iter().flat_map(Stack::decisions).collect();
                all.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
                all
            }
            _ => self
                .decisions
                .as_ref()
                .map(DecisionLog::records)
                .unwrap_or_default(),
        }
    }

    /// Pre-warmed connections opened and served (`reuse`, `reuse-static`,
    /// summed over the workers' own stacks); `None` for other stacks.
    pub fn prewarm(&self) -> Option<PrewarmSnapshot> {
        self.opened_ahead(|s| s.prewarm.as_ref())
    }

    /// Replacements opened ahead of a connection's last request, and
    /// served (as [`prewarm`](Self::prewarm)).
    pub fn replacements(&self) -> Option<PrewarmSnapshot> {
        self.opened_ahead(|s| s.replacements.as_ref())
    }

    fn opened_ahead(&self, own: fn(&Stack) -> Option<&PrewarmCounts>) -> Option<PrewarmSnapshot> {
        match &self.inner {
            Inner::PerWorker => self
                .per_worker
                .iter()
                .map(|s| s.opened_ahead(own))
                .collect::<Option<Vec<_>>>()
                .map(|all| PrewarmSnapshot {
                    opened: all.iter().map(|p| p.opened).sum(),
                    served: all.iter().map(|p| p.served).sum(),
                }),
            _ => own(self).map(PrewarmCounts::snapshot),
        }
    }

    /// A figure of the pool's snapshot summed over its targets, for the
    /// stacks whose pool the lab holds.
    fn pool_total(&self, figure: impl Fn(&tower_reuse_pool::TargetSnapshot) -> u64) -> Option<u64> {
        let snapshot: PoolSnapshot = match &self.inner {
            Inner::Reuse(client) => client.get_ref().control().snapshot(),
            Inner::ReuseSpan { pool, .. } | Inner::Pool(pool) => pool.control().snapshot(),
            Inner::ReuseOtel { client, .. } => client.get_ref().control().snapshot(),
            Inner::ReuseAffinity(_, control) => control.snapshot(),
            _ => return None,
        };
        Some(snapshot.total(figure))
    }

    /// Whether one client can be shared by any number of concurrent tasks
    /// (everything but `raw` over HTTP/1).
    pub fn is_shareable(&self) -> bool {
        !matches!(self.inner, Inner::RawHttp1(_))
    }

    /// The client for closed-loop worker `i`: for `raw` HTTP/1, worker `i`'s
    /// own connection (each handed out once); with a client per worker,
    /// its own stack's; otherwise a shared client.
    pub fn worker(&self, i: usize) -> Option<WorkerClient> {
        match &self.inner {
            Inner::PerWorker => self.per_worker[i % self.per_worker.len()].shared(),
            Inner::RawHttp1(senders) => senders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .map(WorkerClient::RawHttp1),
            _ => self.shared(),
        }
    }

    /// Takes back a client from [`Stack::worker`] when its worker is done,
    /// so that the next round's worker gets it: `raw`'s HTTP/1 connections
    /// are handed out one per worker. Other clients are clones: dropped.
    pub fn give_back(&self, client: WorkerClient) {
        if let (Inner::RawHttp1(senders), WorkerClient::RawHttp1(sender)) = (&self.inner, client) {
            senders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sender);
        }
    }

    /// A client any task may use, when the stack is shareable.
    pub fn shared(&self) -> Option<WorkerClient> {
        Some(match &self.inner {
            Inner::Fresh(connector) => WorkerClient::Fresh {
                connector: connector.clone(),
                protocol: self.protocol,
            },
            Inner::Legacy(client) => WorkerClient::Legacy(client.clone()),
            Inner::RawHttp2(sender) => WorkerClient::RawHttp2(sender.clone()),
            Inner::Reuse(client) => WorkerClient::Reuse(client.clone()),
            Inner::Pool(pool) => WorkerClient::Pool(pool.clone()),
            Inner::ReuseOtel { client, .. } => WorkerClient::ReuseOtel(client.clone()),
            Inner::ReuseSpan { pool, span, .. } => {
                WorkerClient::ReuseSpan(pool.clone(), span.clone())
            }
            Inner::P2c(p2c) => WorkerClient::P2c(p2c.client()),
            Inner::ReuseAffinity(client, _) => WorkerClient::ReuseAffinity(client.clone()),
            Inner::Traced(traced) => {
                WorkerClient::Traced(traced.client.clone(), traced.instruments.clone())
            }
            Inner::RawHttp1(_) => return None,
            // The first worker's: open loops have no workers.
            Inner::PerWorker => return self.per_worker.first()?.shared(),
        })
    }
}

pub(crate) async fn connect_http1(
    mut connector: LabConnector,
    target: &Target,
) -> Result<http1::SendRequest<Full<Bytes>>, StackError> {
    let io = connector
        .call(target.uri.clone())
        .await
        .map_err(|e| StackError(format!("connecting to {}: {e}", target.uri)))?;
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| StackError(format!("HTTP/1 handshake with {}: {e}", target.uri)))?;
    tokio::spawn(connection);
    Ok(sender)
}

pub(crate) async fn connect_http2(
    mut connector: LabConnector,
    target: &Target,
) -> Result<http2::SendRequest<Full<Bytes>>, StackError> {
    let io = connector
        .call(target.uri.clone())
        .await
        .map_err(|e| StackError(format!("connecting to {}: {e}", target.uri)))?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| StackError(format!("HTTP/2 handshake with {}: {e}", target.uri)))?;
    tokio::spawn(connection);
    Ok(sender)
}
