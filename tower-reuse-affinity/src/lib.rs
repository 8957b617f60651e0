//! Sticky, load-bounded, warm-aware routing of a service's requests over its
//! endpoints, over [`tower_reuse_pool`].
//!
//! [`AffinityLayer`] stacks right over `PoolLayer` (no layer in between).
//! Each logical service
//! (`https://inventory.internal:8443`) has endpoints ([`Endpoints`]: a
//! static list, or a `tower::discover::Discover` stream); each request is
//! routed to one of them, and the pool connects to that endpoint's address
//! while `Host`, SNI and certificate verification stay the logical name.
//!
//! - requests with one [`AffinityKey`] (a header, or a function of the
//!   head; the request's `Partition` is part of it) go to one endpoint by
//!   rendezvous hashing, while its load stays under
//!   `ceil((1 + epsilon) * mean)` ("Consistent Hashing with Bounded
//!   Loads"; never under a floor of 2 in flight, for light load; a hot key
//!   yields its endpoint one request early, so that the endpoint's other
//!   keys stay); adding or removing an endpoint moves only the keys that must
//!   move;
//! - warm-aware: a key whose endpoint has no free connection takes the
//!   next endpoint of its order if that one has, one step at most, while
//!   its own endpoint opens one;
//! - endpoints that keep failing are ejected, with a back-off that grows,
//!   a cap on the share ejected at once, and probation on return; a
//!   request whose endpoint is down is retried once on another when that
//!   is safe;
//! - hot and cold tiers ([`TierConfig`], off by default): a service whose
//!   request rate holds above a threshold gets a dedicated pool (its
//!   targets get connections kept open for its peak concurrency, a longer
//!   idle timeout and a reservation out of the pool's connection budget,
//!   keeping the connections they have); the shared pool's connections
//!   live short; at most `max_dedicated` pools, the coldest giving way to
//!   a hotter key, and a pool going quiet or idle goes back without
//!   failing a request;
//! - [`AffinityEvents`](events::AffinityEvents) and
//!   [`snapshot`](AffinityLayer::snapshot) say what it does.
//!
//! ```
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use tower::ServiceBuilder;
//! use tower_reuse_affinity::{AffinityConfig, AffinityKey, AffinityLayer};
//! use tower_reuse_pool::{PoolConfig, PoolLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let affinity =
//!     AffinityLayer::new(AffinityConfig::default().key(AffinityKey::header("x-user-id")))
//!         .unwrap();
//! let endpoints = affinity.endpoints();
//! endpoints
//!     .set(
//!         "http://inventory.internal:8080",
//!         ["127.0.0.2:8080".parse().unwrap(), "127.0.0.3:8080".parse().unwrap()],
//!     )
//!     .unwrap();
//! let client = ServiceBuilder::new()
//!     .layer(affinity)
//!     .layer(PoolLayer::new(PoolConfig::default()).unwrap())
//!     .service(HttpConnector::new());
//! // Requests to http://inventory.internal:8080/... now go to 127.0.0.2 or
//! // 127.0.0.3 by their x-user-id; other authorities pass through.
//! # let _: tower_reuse_affinity::Affinity<tower_reuse_pool::Pool<HttpConnector>> = client;
//! # }
//! ```
//!
//! Features: `serde` deserializes [`AffinityConfig`] from policy files.

// On docs.rs: label each item with the features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod choice;
mod config;
mod discover;
mod error;
pub mod events;
mod future;
mod health;
mod key;
mod registry;
mod service;
mod services;
mod snapshot;
mod tiers;

pub use config::{AffinityConfig, ConfigError};
pub use error::Error;
pub use future::ResponseFuture;
pub use key::AffinityKey;
pub use registry::Endpoints;
pub use service::{Affinity, AffinityLayer, CallAt, PoolHandle};
pub use snapshot::{AffinitySnapshot, EndpointSnapshot, ServiceSnapshot};
pub use tiers::{DedicatedSnapshot, KeyTierSnapshot, Tier, TierConfig, TiersSnapshot};
