//! `PoolLayer`: builds a [`Pool`] over a connector.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;
use tower_layer::Layer;

use crate::config::{ConfigError, PoolConfig};
use crate::connect::Connect;
use crate::error::BoxError;
use crate::events::PoolEvents;
use crate::service::Pool;

/// Builds a [`Pool`] over a connector such as hyper-util's `HttpConnector`.
///
/// `B` is the request body type; it defaults to `Full<Bytes>`.
///
/// ```
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::{Layer, ServiceBuilder};
/// use tower_reuse_pool::{PoolConfig, PoolLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut connector = HttpConnector::new();
/// connector.set_nodelay(true);
/// let client = ServiceBuilder::new()
///     .layer(PoolLayer::new(PoolConfig::default()).unwrap())
///     .service(connector);
/// # let _: tower_reuse_pool::Pool<HttpConnector> = client;
/// # }
/// ```
pub struct PoolLayer<B = Full<Bytes>> {
    config: PoolConfig,
    events: Arc<dyn PoolEvents>,
    _body: PhantomData<fn(B)>,
}

impl<B> PoolLayer<B> {
    /// A layer with `config`, rejected if a value or combination is invalid.
    pub fn new(config: PoolConfig) -> Result<Self, ConfigError> {
        Ok(PoolLayer {
            config: config.validate()?,
            events: Arc::new(()),
            _body: PhantomData,
        })
    }

    /// Send the pool's events to `events`.
    #[must_use]
    pub fn events(mut self, events: impl PoolEvents) -> Self {
        self.events = Arc::new(events);
        self
    }

    /// Send the pool's events to a shared hook.
    #[must_use]
    pub fn shared_events(mut self, events: Arc<dyn PoolEvents>) -> Self {
        self.events = events;
        self
    }
}

impl<B> Clone for PoolLayer<B> {
    fn clone(&self) -> Self {
        PoolLayer {
            config: self.config.clone(),
            events: self.events.clone(),
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for PoolLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C, B> Layer<C> for PoolLayer<B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Service = Pool<C, B>;

    fn layer(&self, connector: C) -> Pool<C, B> {
        Pool::new(connector, self.config.clone(), self.events.clone())
    }
}
