//! The client stacks under comparison, all driven through one interface:
//! [`Stack::worker`] / [`Stack::shared`] hand out a [`WorkerClient`] whose
//! [`send`](WorkerClient::send) takes the same `Request<Full<Bytes>>` for
//! every stack and reads the whole response.

mod connector;
mod otel;
mod p2c;
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
use serde::Serialize;
use tower_layer::Layer;
use tower_reuse_affinity::Affinity;
use tower_reuse_otel::{Otel, OtelLayer, OtelPoolEvents};
use tower_reuse_pool::tls::{SessionCache, TlsLayer};
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer};
use tower_service::Service;

pub use connector::{
    BoxError, ClientSnapshot, ClientStats, ConnectFuture, Counted, LabConnector, LabStream,
    ReuseConnector, TcpConnector,
};
pub use otel::{BareSpan, DiscardMetrics, DiscardSpans};
pub use p2c::{ChannelDiscover, EndpointClient, P2c, P2cClient};
pub use tenants::LOOSE_BUDGET;
pub use traced::{Instruments, TracedClient};
pub use worker::{
    Completed, RequestError, RequestErrorKind, WorkerClient, classify_boxed, classify_hyper,
    complete,
};

use crate::otlp::Endpoint;
use crate::target::Target;

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
    /// `hyper-util` with the workspace's TLS [`SessionCache`] (64 tickets
    /// per server) as its rustls session store instead of rustls' default
    /// (8): what the cache gives on its own, apart from the pool. Run in
    /// `tls-churn` only.
    HyperUtilCache,
    /// This workspace's stack (`tower_reuse_pool`).
    Reuse,
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
    /// ([`LOOSE_BUDGET`]): `scale-targets` only, against its twin.
    ReuseBudget,
    /// `hyper-util` under tower-http's `TraceLayer`, bridged to the same
    /// OpenTelemetry SDK set-up as `reuse+otel` by `tracing-opentelemetry`,
    /// with a hand-made request duration histogram: the instrumented client
    /// users build today (`steady-h1` only).
    HyperUtilTracing,
}

impl StackKind {
    /// Every stack, in table order.
    pub const ALL: [StackKind; 13] = [
        StackKind::Fresh,
        StackKind::HyperUtil,
        StackKind::HyperUtilTuned,
        StackKind::HyperUtilCache,
        StackKind::HyperUtilP2c,
        StackKind::Reuse,
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

/// A built client stack.
#[derive(Debug)]
pub struct Stack {
    kind: StackKind,
    protocol: Protocol,
    connector_stats: ClientStats,
    inner: Inner,
}

// One per stack: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Fresh(LabConnector),
    Legacy(Client<LabConnector, Full<Bytes>>),
    RawHttp1(Mutex<Vec<http1::SendRequest<Full<Bytes>>>>),
    RawHttp2(http2::SendRequest<Full<Bytes>>),
    Reuse(Pool<ReuseConnector, Full<Bytes>>),
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
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Inner::Fresh(_) => "Fresh",
            Inner::Legacy(_) => "Legacy",
            Inner::RawHttp1(_) => "RawHttp1",
            Inner::RawHttp2(_) => "RawHttp2",
            Inner::Reuse(_) => "Reuse",
            Inner::ReuseOtel { .. } => "ReuseOtel",
            Inner::ReuseSpan { .. } => "ReuseSpan",
            Inner::P2c(_) => "P2c",
            Inner::ReuseAffinity(..) => "ReuseAffinity",
            Inner::Traced(_) => "Traced",
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
        let connector = if kind == StackKind::HyperUtilCache {
            let mut tls = tls.clone();
            tls.resumption = Resumption::store(Arc::new(SessionCache::default()));
            LabConnector::new(protocol, tls)
        } else {
            LabConnector::new(protocol, tls.clone())
        };
        let connector_stats = connector.stats().clone();
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
            StackKind::Reuse => Inner::Reuse(reuse_pool(
                pool_layer(kind, protocol, target, policy)?,
                protocol,
                tls,
                &connector_stats,
            )),
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
            kind,
            protocol,
            connector_stats,
            inner,
        })
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
        let pool = match &self.inner {
            Inner::Reuse(pool) | Inner::ReuseSpan { pool, .. } => pool,
            Inner::ReuseOtel { client, .. } => client.get_ref(),
            Inner::ReuseAffinity(client, control) => {
                return Some(service::retries(client, control));
            }
            Inner::Legacy(_) | Inner::P2c(_) | Inner::Traced(_) => return None,
            Inner::Fresh(_) | Inner::RawHttp1(_) | Inner::RawHttp2(_) => return Some(0),
        };
        Some(pool.control().snapshot().total(|t| t.retries()))
    }

    /// Whether one client can be shared by any number of concurrent tasks
    /// (everything but `raw` over HTTP/1).
    pub fn is_shareable(&self) -> bool {
        !matches!(self.inner, Inner::RawHttp1(_))
    }

    /// The client for closed-loop worker `i`: for `raw` HTTP/1, worker `i`'s
    /// own connection (each handed out once); otherwise a shared client.
    pub fn worker(&self, _i: usize) -> Option<WorkerClient> {
        match &self.inner {
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
            Inner::Reuse(pool) => WorkerClient::Reuse(pool.clone()),
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
        })
    }
}

/// The `reuse` stacks' pool layer: the pool's defaults (or the policy
/// file), no per-scenario tuning; h2c needs prior knowledge (over TLS, ALPN
/// decides).
fn pool_layer(
    kind: StackKind,
    protocol: Protocol,
    target: &Target,
    policy: Option<&PoolConfig>,
) -> Result<PoolLayer<Full<Bytes>>, StackError> {
    layer_of(kind, pool_layer_config(protocol, target, policy))
}

/// The configuration of [`pool_layer`].
fn pool_layer_config(
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
fn layer_of(kind: StackKind, config: PoolConfig) -> Result<PoolLayer<Full<Bytes>>, StackError> {
    PoolLayer::new(config).map_err(|e| StackError(format!("{kind}: invalid pool config: {e}")))
}

/// The `reuse` stack's pool (also under `reuse+span`): `layer` with the
/// lab's hook (TLS handshakes counted) over [`reuse_connector`].
fn reuse_pool(
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
fn reuse_connector(
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
