//! A tower connection pool for hyper clients.
//!
//! [`PoolLayer`] over a connector (hyper-util's `HttpConnector`, or a TLS
//! connector over it) gives a [`Pool`]: a `tower::Service<http::Request<B>>`
//! that reuses persistent HTTP/1.1 and HTTP/2 connections per [`Target`]
//! (scheme, authority and an optional [`Partition`]), with:
//!
//! - limits: connections, idle connections, concurrent connects and waiters
//!   per target, a checkout timeout, requests in flight (real backpressure);
//! - a process-wide connection budget (`max_connections`) across targets:
//!   a connect takes the slot of another target's least recently used idle
//!   connection or waits its turn, a busy target yields a connection to a
//!   target waiting, and reservations (`TargetConfig::reserved_connections`,
//!   for one target or, through
//!   [`PoolControl::set_partition_config`], a partition's targets together)
//!   keep slots for quiet targets; a slot comes back when its socket is
//!   closed, so servers never see more connections than the budget;
//! - checkout rules: idle connections LIFO, waiters FIFO, a connect serves
//!   the queue so connections never exceed demand;
//! - expiry: idle timeout, max lifetime with jitter and make-before-break
//!   rotation, max requests, the server's `Connection: close`, HTTP/1.0 and
//!   `Keep-Alive: timeout`; one reaper task per pool;
//! - HTTP/2 by prior knowledge or ALPN, honouring the server's stream limit
//!   and opening more connections when all are full; GOAWAY drains; a
//!   stream the server never processed (refused, or above a graceful
//!   GOAWAY's last stream id) goes back to the queue, not counting as the
//!   retry, and its connection carries no more streams than the server had
//!   accepted, stepping back up later (servers such as grpc-core free a
//!   stream's slot after the client has seen it end); `ENHANCE_YOUR_CALM`
//!   backs off; [`BufferBodyLayer`] makes a gRPC unary call's body
//!   replayable for this;
//! - safe retry: at most once, only on a reused connection, only when the
//!   request was never written, the stream was refused or above a GOAWAY's
//!   last stream id, or an idempotent request met the connection closing
//!   under it and its body is empty or can be made again ([`ReplayBody`]);
//! - pre-warming (`min_idle_per_target`), a kill switch (`reuse(false)`);
//! - [`PoolEvents`](events::PoolEvents) hooks, a [`PoolControl`] handle with
//!   per-target snapshots and run-time knobs, and [`ConnectionInfo`] on every
//!   response (carried by its [`PoolBody`], in its extensions on request);
//! - with the `tls` feature, module `tls`: a rustls `TlsConnector` whose
//!   `SessionCache` is partitioned like the pool and sized for reconnect
//!   bursts, with handshake kinds reported to the pool.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_reuse_pool::{ConnectionInfo, PoolConfig, PoolLayer};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut client = ServiceBuilder::new()
//!     .layer(PoolLayer::new(PoolConfig::default())?)
//!     .service(HttpConnector::new());
//! let request = http::Request::get("http://127.0.0.1:8080/").body(Full::<Bytes>::default())?;
//! let response = client.ready().await?.call(request).await?;
//! let reused = ConnectionInfo::of(&response).unwrap().reused();
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{} bytes, reused connection: {reused}", body.len());
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! None is on by default.
//!
//! | Feature | What it adds |
//! |---|---|
//! | `tls` | Module `tls`: `TlsConnector` and `TlsLayer` (rustls, over any transport connector), the partitioned `SessionCache`, `TlsError`. Enables no crypto provider: the application's `rustls::ClientConfig` brings its own. |
//! | `serde` | `Deserialize` for [`PoolConfig`] (and, with `tls`, for `SessionCacheConfig`), so a policy file can carry them; durations are written `"250ms"`, `"55s"`, `"5m"`, `"1h"`, a number of seconds, or `"off"`. |
//! | `tracing` | `tracing` events at debug level when a connection opens, fails to open and closes (with the target, never its partition). |

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The README's examples, TLS included: compiled as doc tests whenever the
// `tls` feature is on (as in `cargo test --workspace`).
#[doc = include_str!("../../README.md")]
#[cfg(all(doctest, feature = "tls"))]
pub struct ReadmeDoctests;

mod body;
mod buffer;
mod config;
mod conn;
mod connect;
mod control;
mod endpoint;
mod error;
pub mod events;
mod future;
mod h2_client;
mod hints;
mod info;
mod layer;
mod learned;
#[cfg(test)]
mod parsers_fuzz;
#[cfg(all(test, feature = "serde"))]
mod policy_fuzz;
mod reaper;
mod replay;
mod service;
mod shared;
mod sync;
mod target;
mod target_pool;
#[cfg(feature = "tls")]
pub mod tls;

pub use body::PoolBody;
pub use buffer::{BufferBody, BufferBodyLayer, BufferedBody};
#[cfg(feature = "serde")]
pub use config::serde_duration;
pub use config::{ConfigError, PoolConfig, TargetConfig, parse_duration};
pub use conn::{ConnId, Protocol, State, TlsHandshake};
pub use connect::{Connect, ConnectError, Established};
pub use control::{
    BudgetSnapshot, Http2Snapshot, PoolControl, PoolSnapshot, ReservationSnapshot, TargetSnapshot,
};
pub use endpoint::Endpoint;
pub use error::{BoxError, Error, ErrorKind, Phase};
pub use future::ResponseFuture;
pub use hints::keep_alive_timeout;
pub use info::ConnectionInfo;
pub use layer::PoolLayer;
pub use replay::ReplayBody;
pub use service::{Connections, Pool, PoolHandle, Pooled};
pub use target::{Partition, Target};
pub use target_pool::WarmUp;
