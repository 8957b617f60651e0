//! A controller that tunes a [`tower_reuse_pool`] pool from live signals,
//! learns each server's idle timeout and request limit from the closes it
//! sees, and never oscillates.
//!
//! No static setting suits every workload: a long idle timeout holds a
//! burst's connections long after it, a short one turns bursty requests
//! into new connections, and a server that closes idle connections before
//! the pool does fails the requests sent on them. [`AdaptiveLayer`] watches
//! each target through its requests (the pool's
//! [`ConnectionInfo`](tower_reuse_pool::ConnectionInfo) on each
//! response) and the pool's events (connects and closes) and, every tick,
//! sets four of its settings through the pool's control handle
//! (`PoolControl::set_target_config`):
//!
//! - **`idle_timeout`**: below the server's own, learned from the idle ages
//!   at which it closes connections (no `Keep-Alive` header needed), by a
//!   margin that covers the trip to the server; and no longer than the
//!   gaps between a connection's requests need (1.5 times their 99th
//!   percentile, at least a second), so that idle sockets go soon after
//!   the load does;
//! - **`max_requests_per_connection`**: the server's request limit per
//!   connection, learned from the requests its connections had served
//!   when it closed them, so that the pool opens the replacement before a
//!   connection's last request;
//! - **`min_idle_per_target`**: the recent bursts' peak (one connection
//!   for an HTTP/2 target), kept warm while bursts come at a steady period
//!   with gaps longer than connections live, and released at most half at
//!   a time when they stop;
//! - **`max_idle_per_target`**: once more connections are open than the
//!   window's peak in flight needs (with a quarter more; the connections
//!   the pool has serving requests count too), a cap that closes the idle
//!   ones beyond it, lowered by halves a cool-down apart:
//!   a spike's sockets go soon after it, not each at its idle timeout;
//!   raised at once when the load needs more, never under the
//!   connections kept warm or open (an affinity tier's);
//! - with the `tls` feature and `AdaptiveLayer::session_cache`, the
//!   session cache's **tickets per server**: enough for every connection
//!   of the largest recent connect burst to one server to resume.
//!
//! Against oscillation, each change needs the wanted value outside a dead
//! band of the current one, waits a cool-down after the knob's last change
//! and moves by a bounded step. Two lowerings of the idle timeout skip
//! those rules and happen at once: for a server seen closing connections
//! before the pool would, and when what the target inherits falls below
//! the controller's value (over an affinity layer's tiers, a demotion),
//! from the next tick. The controller only shortens the idle timeout the
//! target would have without it, never lengthens it, and leaves alone any
//! knob set on the target itself with `set_target_config`; over the
//! tiers it tunes within the tier's settings. Every decision goes to the
//! [`AdaptiveEvents`](events::AdaptiveEvents) hook with its inputs and
//! reason, and [`AdaptiveHandle::snapshot`] shows every target's
//! estimates. [`Mode::Observe`] freezes the settings; [`Mode::Off`] takes
//! them back, and the pool runs exactly as without the layer.
//!
//! Over a router (the affinity layer), each response's connection facts go
//! to the endpoint that served it, whose connections the controller tunes.
//!
//! ```
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use tower::ServiceBuilder;
//! use tower_reuse_adaptive::{AdaptiveConfig, AdaptiveLayer};
//! use tower_reuse_pool::{PoolConfig, PoolLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let adaptive = AdaptiveLayer::new(AdaptiveConfig::default()).unwrap();
//! let pool = PoolLayer::new(PoolConfig::default())
//!     .unwrap()
//!     .events(adaptive.pool_events());
//! let handle = adaptive.handle();
//! let client = ServiceBuilder::new()
//!     .layer(adaptive)
//!     .layer(pool)
//!     .service(HttpConnector::new());
//! // Send requests through `client`; `handle.snapshot()` shows what the
//! // controller learned and set.
//! # let _: tower_reuse_adaptive::Adaptive<tower_reuse_pool::Pool<HttpConnector>> = client;
//! # assert!(handle.snapshot().targets.is_empty());
//! # }
//! ```
//!
//! The controller's task starts on the first request, on its runtime, and
//! ends when the layer and its services are dropped.
//!
//! Features: `serde` deserializes [`AdaptiveConfig`] from policy files;
//! `tracing` logs each decision at debug level; `tls` tunes the pool's TLS
//! session cache.

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod controller;
mod decide;
pub mod events;
mod future;
mod handle;
mod histogram;
mod hook;
mod layer;
mod learn;
mod service;
mod signals;
mod snapshot;
#[cfg(feature = "tls")]
mod tickets;
mod window;

#[cfg(test)]
mod tests;

pub use config::{AdaptiveConfig, ConfigError, Mode};
pub use future::ResponseFuture;
pub use handle::AdaptiveHandle;
pub use hook::AdaptivePoolEvents;
pub use layer::AdaptiveLayer;
pub use service::Adaptive;
pub use snapshot::{AdaptiveSnapshot, TargetEstimates};
