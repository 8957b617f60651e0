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
//!   ([`ConnectionInfo`](tower_reuse_pool::ConnectionInfo)).
//! - [`OtelPoolEvents`] (feature `pool`, on by default) is the pool's
//!   [`PoolEvents`](tower_reuse_pool::events::PoolEvents) hook: what
//!   connections exist, why they opened and closed, how long requests
//!   waited for one.
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
//! | `tower_reuse.retries` | Counter | `{retry}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.retry.reason` | [`OtelPoolEvents`] |
//! | `tower_reuse.prewarm.connects` | Counter | `{connect}` | `server.address`, `server.port`, `url.scheme`, `tower_reuse.prewarm.outcome`, `error.type` (when failed) | [`OtelPoolEvents`], per pre-warming connect |
//!
//! The two up-down counters are observable: a request or checkout only
//! adds to an atomic count, and the SDK reads the counts when it collects.
//! Exported, they are the same non-monotonic sums a synchronous
//! `UpDownCounter` gives. Each [`OtelLayer`] (with its clones) and each
//! [`OtelPoolEvents`] observes its own counts: two of them built from one
//! meter should not count the same attribute set (the same target), as
//! the SDK keeps one observation per attribute set, not their sum.
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
//!   `dedicated`.
//! - `tower_reuse.close.reason`: [`CloseReason::as_str`](tower_reuse_pool::events::CloseReason::as_str)
//!   (`idle_timeout`, `max_lifetime`, `server_closed`, `goaway` ...).
//! - `tower_reuse.retry.reason`: [`RetryReason::as_str`](tower_reuse_pool::events::RetryReason::as_str).
//! - `tower_reuse.tls.handshake`: `full`, `full_with_retry`, `resumed`.
//! - `tower_reuse.prewarm.outcome`: `connected` or `failed`.
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
//! # What is never recorded
//!
//! No URL path or query string, no header value, no pool partition, no
//! error message: only the scheme, host and port of a request, and
//! low-cardinality values.
//!
//! # Features
//!
//! - `pool` (default): [`OtelPoolEvents`] and the connection facts on spans.

mod attributes;
mod bound;
#[cfg(feature = "pool")]
mod events;
pub mod future;
mod gauges;
mod layer;
mod service;

#[cfg(feature = "pool")]
pub use events::OtelPoolEvents;
pub use layer::OtelLayer;
pub use service::Otel;
