//! OpenTelemetry traces and metrics for the tower-reuse layers.
//!
//! Two pieces, each built from the caller's tracer or meter (this crate
//! depends on the `opentelemetry` API only and never sets a global
//! provider):
//!
//! - [`OtelLayer`] wraps any HTTP client service (`Service<http::Request<B>,
//!   Response = http::Response<ResB>>`): a client span per request and the
//!   request metrics. Over a tower-reuse [`Pool`](tower_reuse_pool::Pool) it
//!   adds the connection facts the pool puts in each response
//!   ([`ConnectionInfo`](tower_reuse_pool::ConnectionInfo), read with
//!   `ConnectionInfo::of`: from the pool's body, or from the response's
//!   extensions when a layer in between replaced the body and the pool
//!   puts them there, `PoolConfig::connection_info_extension`).
//! - [`OtelPoolEvents`] (feature `pool`, on by default) is the pool's
//!   [`PoolEvents`](tower_reuse_pool::events::PoolEvents) hook: what
//!   connections exist, why they opened and closed, how long requests
//!   waited for one.
//! - `OtelAffinityEvents` (feature `affinity`) is the affinity layer's
//!   hook (`tower_reuse_affinity::events::AffinityEvents`): a service's
//!   endpoints coming and going, the keys each change moved, ejections and
//!   returns, warm detours and retries, by service and endpoint.
//! - `OtelAdaptiveEvents` (feature `adaptive`) is the adaptive controller's
//!   hook (`tower_reuse_adaptive::events::AdaptiveEvents`): each decision
//!   by target, setting, reason and whether the pool took it, the settings
//!   it gave, and the server idle timeout it learned.
//!
//! ```
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use opentelemetry::global;
//! use tower::ServiceBuilder;
//! use tower_reuse_otel::{Otel, OtelLayer, OtelPoolEvents};
//! use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // The application's own providers; the globals here for brevity.
//! let meter = global::meter("my-client");
//! let client: Otel<Pool<HttpConnector>, _> = ServiceBuilder::new()
//!     .layer(OtelLayer::new(global::tracer("my-client"), &meter))
//!     .layer(
//!         PoolLayer::new(PoolConfig::default())
//!             .unwrap()
//!             .events(OtelPoolEvents::new(&meter)),
//!     )
//!     .service(HttpConnector::new());
//! # let _ = client;
//! # }
//! ```
//!
//! # Instruments
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! and carry a `tower_reuse.` prefix otherwise. Durations are in seconds
//! with explicit bucket boundaries (the conventions' advice for the
//! `http.client.*` histograms).
//!
//! | Instrument | Kind | Unit | Attributes | Recorded by |
//! |---|---|---|---|---|
//! | `http.client.request.duration` | Histogram | `s` | `http.request.method`, `server.address`, `server.port`, `url.scheme`, `http.response.status_code` (with a response), `network.protocol.version` (with a response), `error.type` (on failure or a status of 400 and above) | [`OtelLayer`], at the response head |
//! | `http.client.active_requests` | ObservableUpDownCounter | `{request}` | `http.request.method`, `server.address`, `server.port`, `url.scheme` | [`OtelLayer`], counted in an atomic per attribute set and read at collection |
//! | `http.client.open_connections` | ObservableUpDownCounter | `{connection}` | `http.connection.state`, `server.address`, `server.port`, `url.scheme`, `network.protocol.version` | [`OtelPoolEvents`], counted in an atomic per attribute set and read at collection: +1 idle at connect, idle to active at a connection's first request in flight and back at its last, -1 at close |
//! | `http.client.connection.duration` | Histogram | `s` | `server.address`, `server.port`, `url.scheme`, `network.protocol.version`, `tower_reuse.close.reason` | [`OtelPoolEvents`], at close |
//! | `tower_reuse.checkout.wait` | Histogram | `s` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.connection.reused` | [`OtelPoolEvents`], at checkout |
//! | `tower_reuse.connection.opened` | Counter | `{connection}` | `server.address`, `server.port`, `url.scheme`, `network.protocol.version`, `tower_reuse.connect.reason` | [`OtelPoolEvents`] |
//! | `tower_reuse.connection.closed` | Counter | `{connection}` | `server.address`, `server.port`, `url.scheme`, `network.protocol.version`, `tower_reuse.close.reason` | [`OtelPoolEvents`] |
//! | `tower_reuse.connect.errors` | Counter | `{connect}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.connect.reason`, `error.type` | [`OtelPoolEvents`] |
//! | `tower_reuse.tls.handshakes` | Counter | `{handshake}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.tls.handshake` | [`OtelPoolEvents`], per new TLS connection |
//! | `tower_reuse.tls.handshake.duration` | Histogram | `s` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.tls.handshake` | [`OtelPoolEvents`], per new connection the pool's TLS connector encrypted (buckets 100 us to 10 s) |
//! | `tower_reuse.retries` | Counter | `{retry}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.retry.reason` | [`OtelPoolEvents`] |
//! | `tower_reuse.prewarm.connects` | Counter | `{connect}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.prewarm.outcome`, `error.type` (when failed) | [`OtelPoolEvents`], per pre-warming connect |
//! | `tower_reuse.prewarm.connections` | Counter | `{connection}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.prewarm.served` | [`OtelPoolEvents`], per pre-warmed connection at its close: whether it served a request before it closed |
//! | `tower_reuse.connection.reuse_ratio` | ObservableGauge | `1` | `server.address`, `server.port`, `url.scheme` | [`OtelPoolEvents`]: of the checkouts since the previous collection, the share that reused a connection (no point when there were none) |
//! | `tower_reuse.handshake.time_avoided` | ObservableCounter | `s` | `server.address`, `server.port`, `url.scheme` | [`OtelPoolEvents`]: per reused checkout, the target's mean measured connect time (TCP, TLS and HTTP handshakes), taken back when the checkout failed and its request was retried |
//! | `tower_reuse.tls.resumption_ratio` | ObservableGauge | `1` | `server.address`, `server.port`, `url.scheme` | [`OtelPoolEvents`]: of the new TLS connections since the previous collection, the share that resumed a session (no point when there were none) |
//! | `tower_reuse.tls.session_cache.lookups` | ObservableCounter | `{lookup}` | `tower_reuse.tls.session_cache.result` | `OtelSessionCache` (feature `tls`): a new TLS connection's look for a session, `hit` or `miss` |
//! | `tower_reuse.tls.session_cache.tickets` | ObservableUpDownCounter | `{ticket}` | none | `OtelSessionCache`: TLS 1.3 tickets held |
//! | `tower_reuse.tls.session_cache.evictions` | ObservableCounter | `{eviction}` | `tower_reuse.tls.session_cache.eviction` | `OtelSessionCache`: entries dropped, `server_lru`, `ticket_lru` or `ticket_expired` |
//! | `tower_reuse.affinity.endpoints` | UpDownCounter | `{endpoint}` | `server.address`, `server.port`, `url.scheme` | `OtelAffinityEvents` (feature `affinity`): a routed service's endpoints, +1 as one is added, -1 as one is removed |
//! | `tower_reuse.affinity.endpoints.ejected` | UpDownCounter | `{endpoint}` | `server.address`, `server.port`, `url.scheme` | `OtelAffinityEvents`: a service's endpoints out of service now, +1 at an endpoint's ejection (once, whatever failed probes follow), -1 at its return or its removal |
//! | `tower_reuse.affinity.endpoint.changes` | Counter | `{endpoint}` | `server.address`, `server.port`, `url.scheme`, `network.peer.address`, `network.peer.port`, `tower_reuse.affinity.change` | `OtelAffinityEvents`: endpoints added to or removed from a service |
//! | `tower_reuse.affinity.rebalance.moved` | Histogram | `1` | `server.address`, `server.port`, `url.scheme` | `OtelAffinityEvents`, per change of a service's endpoints: the share of its recently seen keys (a bounded sample) whose endpoint changed; no point when no key was seen. Adding one endpoint to `n` moves at least `1/(n+1)` |
//! | `tower_reuse.affinity.ejections` | Counter | `{ejection}` | `server.address`, `server.port`, `url.scheme`, `network.peer.address`, `network.peer.port` | `OtelAffinityEvents`: an endpoint ejected after consecutive failures (or after its probe failed) |
//! | `tower_reuse.affinity.returns` | Counter | `{return}` | `server.address`, `server.port`, `url.scheme`, `network.peer.address`, `network.peer.port` | `OtelAffinityEvents`: an ejected endpoint whose probe succeeded, back in service |
//! | `tower_reuse.affinity.warm_detours` | Counter | `{request}` | `server.address`, `server.port`, `url.scheme`, `network.peer.address`, `network.peer.port` | `OtelAffinityEvents`: a request sent one step down its key's order to a warm endpoint; the peer is the key's first choice, which had no free connection (an endpoint detoured from all the time may be down while its neighbours are warm) |
//! | `tower_reuse.affinity.retries` | Counter | `{retry}` | `server.address`, `server.port`, `url.scheme`, `network.peer.address`, `network.peer.port`, `error.type` | `OtelAffinityEvents`: a request sent again to another endpoint because its own was down; the peer is the endpoint that failed |
//! | `tower_reuse.affinity.tier.dedicated` | UpDownCounter | `{pool}` | none | `OtelAffinityEvents`: keys with a dedicated pool now (tiers on), +1 at a promotion, -1 at a demotion |
//! | `tower_reuse.affinity.tier.promotions` | Counter | `{promotion}` | `server.address`, `server.port`, `url.scheme` | `OtelAffinityEvents`: a key given a dedicated pool (its rate held above `promote_rps` over the promote window) |
//! | `tower_reuse.affinity.tier.demotions` | Counter | `{demotion}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.affinity.tier.reason` | `OtelAffinityEvents`: a key sent back to the shared pool |
//! | `tower_reuse.adaptive.decisions` | Counter | `{decision}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.adaptive.knob`, `tower_reuse.adaptive.reason`, `tower_reuse.adaptive.applied` | `OtelAdaptiveEvents` (feature `adaptive`): each decision of the controller, applied or not (observing only, or refused by the pool) |
//! | `tower_reuse.adaptive.idle_timeout` | Gauge | `s` | `server.address`, `server.port`, `url.scheme` | `OtelAdaptiveEvents`, at each applied decision on `idle_timeout`: the timeout the controller gave the target; a decision to no timeout at all records no point (the last value stays) |
//! | `tower_reuse.adaptive.min_idle` | Gauge | `{connection}` | `server.address`, `server.port`, `url.scheme` | `OtelAdaptiveEvents`, at each applied decision on `min_idle_per_target`: the idle connections the controller keeps open for the target |
//! | `tower_reuse.adaptive.server_idle_limit` | Gauge | `s` | `server.address`, `server.port`, `url.scheme` | `OtelAdaptiveEvents`, at each decision whose inputs carry one: the server's idle timeout, as learned from the idle ages at which it closed connections |
//!
//! The observable instruments cost the request path an atomic add: the
//! SDK reads the counts when it collects. Exported, the up-down counters
//! are the same non-monotonic sums a synchronous `UpDownCounter` gives.
//! Each [`OtelLayer`] (with its clones) and each [`OtelPoolEvents`] (with
//! the hooks made by [`OtelPoolEvents::for_another_pool`]) observes its own
//! counts: two built apart from one meter should not count the same
//! attribute set (the same target), as the SDK keeps one observation per
//! attribute set, not their sum. Clone the layer, and make the hook of a
//! second pool with `for_another_pool`. The SDK keeps an observable
//! instrument's callback for as long as its meter provider; the callbacks
//! here hold their counts weakly, so a dropped layer or hook (or
//! `OtelSessionCache`) is no longer observed, nor kept alive.
//!
//! Per-target state has a bound of 1 024 targets (a client whose targets
//! come and go, such as pod addresses, would otherwise grow it forever).
//! Past it, the targets out of use are dropped, and their points of the
//! observable instruments are no longer observed: for the layer the
//! targets with no request in flight (its services' last targets stay);
//! for a hook, and the hooks made with `for_another_pool` that share its
//! counts, those with no open connection. Targets in use are never dropped:
//! a hook keeps as many as have open connections, and while every cached
//! target is in use the layer resolves new ones per request (with a scan
//! of its cache). A target that comes back starts its counts again. The
//! SDK bounds the attribute sets of each instrument on its own (2 000
//! by default, the rest folded into one `otel.metric.overflow` point).
//!
//! With the feature `bound-instruments` the histograms are recorded
//! through OpenTelemetry's bound instruments (an experimental API of
//! `opentelemetry` 0.33): each attribute set is resolved once instead of
//! hashed per measurement: about 4 000 instructions per request less for
//! the two points a request records (callgrind over the examples crate's
//! `warm_path`).
//!
//! Attribute values:
//!
//! - `http.request.method`: the method, or `_OTHER` for one outside the
//!   standard nine.
//! - `http.connection.state`: `idle` or `active` (at least one request in
//!   flight on it).
//! - `error.type`: the status code for a status of 400 and above; for a
//!   failed request the pool error's kind in snake case (`connect`,
//!   `connect_timeout`, `checkout_timeout`, `send` ...; also inside a
//!   `BoxError`), else `_OTHER`.
//! - `tower_reuse.connect.reason`: `demand`, `prewarm`, `rotation`,
//!   `dedicated`, `replacement`.
//! - `tower_reuse.close.reason`: [`CloseReason::as_str`](tower_reuse_pool::events::CloseReason::as_str)
//!   (`idle_timeout`, `max_lifetime`, `server_closed`, `goaway` ...).
//! - `tower_reuse.retry.reason`: [`RetryReason::as_str`](tower_reuse_pool::events::RetryReason::as_str).
//! - `tower_reuse.tls.handshake`: `full`, `full_with_retry`, `resumed`.
//! - `tower_reuse.prewarm.outcome`: `connected` or `failed`.
//! - `tower_reuse.prewarm.served`: `true` or `false`.
//! - `tower_reuse.tls.session_cache.result`: `hit` or `miss`.
//! - `tower_reuse.affinity.change`: `added` or `removed`.
//! - `tower_reuse.affinity.tier.reason`: why a key left its dedicated pool,
//!   `cold` (its rate fell below `demote_rps`), `idle` or `displaced` (a
//!   hotter key took its place).
//! - `tower_reuse.adaptive.knob`: the setting, as `PoolConfig` names it:
//!   `idle_timeout`, `min_idle_per_target`, `max_requests_per_connection`.
//! - `tower_reuse.adaptive.reason`: `Reason::as_str` of the adaptive crate
//!   (`server_idle_limit`, `idle_gaps`, `request_limit`, `periodic_burst`,
//!   `released`, `restored`).
//! - `tower_reuse.adaptive.applied`: `true` or `false`.
//! - `server.address`, `server.port`, `url.scheme` on the affinity
//!   instruments: the logical service (`http://inventory.internal:8080`);
//!   `network.peer.address`, `network.peer.port`: one of its endpoints
//!   (`10.1.2.3`, `8080`).
//! - `tower_reuse.partition` (opt-in, see below): the partition's name.
//!
//! # Spans
//!
//! One client span per request, named after the method (`HTTP` for
//! `_OTHER`), current while the inner service runs, ended at the response
//! head. Attributes: `http.request.method`, `server.address`,
//! `server.port`, `url.scheme`, and with a response
//! `http.response.status_code` and `network.protocol.version`; `error.type`
//! as above, with the span status set to error. From the pool's
//! `ConnectionInfo`: `tower_reuse.connection.id`,
//! `tower_reuse.connection.reused`, `tower_reuse.checkout.wait` (seconds),
//! `tower_reuse.connection.idle_for` (seconds, reused HTTP/1.1
//! connections), `tls.resumed` (encrypted connections) and
//! `tower_reuse.retry.reason` (retried requests).
//!
//! Opt-in, with [`ConnectionSpans`] given to both the hook and the layer: a
//! span per connection (`HTTP connection`, from the start of its connect
//! to its close, with its target, protocol, id, connect reason, TLS
//! handshake, close reason and requests served), and on each request span
//! a link to the span of the connection it was sent on.
//!
//! # What is recorded only when asked
//!
//! By default no URL path or query string, no header value, no pool
//! partition, no error message: only the scheme, host and port of a
//! request, and low-cardinality values. `OtelAffinityEvents` never records
//! an affinity key (nor the header it comes from) or a partition, nor does
//! `OtelAdaptiveEvents` record a target's partition. Each of
//! these is opted into:
//!
//! - [`OtelLayer::record_url_full`]: `url.full` on request spans, query
//!   string included (user info never);
//! - [`OtelLayer::record_request_header`] and
//!   [`OtelLayer::record_response_header`]: `http.request.header.<name>`
//!   and `http.response.header.<name>` on request spans;
//! - [`OtelLayer::record_partition`] and
//!   [`OtelPoolEvents::record_partition`]: `tower_reuse.partition` on
//!   request spans, and on every connection metric.
//!
//! # Features
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `pool` | on | [`OtelPoolEvents`], [`ConnectionSpans`], and the pool's connection facts on request spans (depends on `tower-reuse-pool`). |
//! | `tls` | off | `OtelSessionCache`: the pool's TLS session cache as metrics (implies `pool`, and the pool's `tls`). |
//! | `affinity` | off | `OtelAffinityEvents`: the affinity layer's events as metrics (implies `pool`; depends on `tower-reuse-affinity`). |
//! | `adaptive` | off | `OtelAdaptiveEvents`: the adaptive controller's decisions as metrics (implies `pool`; depends on `tower-reuse-adaptive`). |
//! | `bound-instruments` | off | Histograms recorded through OpenTelemetry's bound instruments (see above); switches on `opentelemetry_sdk`'s feature of the same name, which implements them. |

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The bound on the targets the layer, and each hook, keep resolved
/// (see the crate docs).
pub(crate) const MAX_TARGETS: usize = 1024;

#[cfg(feature = "adaptive")]
mod adaptive;
#[cfg(feature = "affinity")]
mod affinity;
mod attributes;
mod bound;
#[cfg(feature = "pool")]
mod connection_spans;
#[cfg(feature = "pool")]
mod derived;
#[cfg(feature = "pool")]
mod events;
pub mod future;
mod gauges;
mod layer;
mod options;
mod service;
#[cfg(feature = "tls")]
mod session_cache;

#[cfg(feature = "adaptive")]
pub use adaptive::OtelAdaptiveEvents;
#[cfg(feature = "affinity")]
pub use affinity::OtelAffinityEvents;
#[cfg(feature = "pool")]
pub use connection_spans::ConnectionSpans;
#[cfg(feature = "pool")]
pub use events::OtelPoolEvents;
pub use layer::OtelLayer;
pub use service::Otel;
#[cfg(feature = "tls")]
pub use session_cache::OtelSessionCache;
