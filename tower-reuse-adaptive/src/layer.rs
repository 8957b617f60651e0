//! `AdaptiveLayer`: the controller, stacked over a pool.

use std::sync::Arc;

use tower_layer::Layer;
use tower_reuse_pool::PoolHandle;

use crate::config::{AdaptiveConfig, ConfigError};
use crate::controller::Controller;
use crate::events::AdaptiveEvents;
use crate::handle::AdaptiveHandle;
use crate::hook::AdaptivePoolEvents;
use crate::service::Adaptive;

/// Tunes the pool below it from live signals. See the [crate docs](crate).
///
/// One layer is one controller: stack it over one pool (directly, or over
/// an `AffinityLayer` over the pool), and give that pool its hook,
/// [`pool_events`](Self::pool_events).
#[derive(Clone, Debug)]
pub struct AdaptiveLayer {
    controller: Arc<Controller>,
}

impl AdaptiveLayer {
    /// A controller with `config`, told to no hook.
    pub fn new(config: AdaptiveConfig) -> Result<Self, ConfigError> {
        Self::with_events(config, ())
    }

    /// A controller with `config` whose decisions go to `events`.
    pub fn with_events(
        config: AdaptiveConfig,
        events: impl AdaptiveEvents,
    ) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        Ok(AdaptiveLayer {
            controller: Arc::new(Controller::new(config, Arc::new(events))),
        })
    }

    /// The hook to give the pool below (`PoolLayer::events`): the
    /// controller's view of its connections.
    pub fn pool_events(&self) -> AdaptivePoolEvents {
        AdaptivePoolEvents {
            controller: self.controller.clone(),
        }
    }

    /// Tune `cache`'s tickets per server too (the session cache of the
    /// pool's `TlsLayer`): never below what it has when the controller
    /// first sees it, nor above
    /// [`max_tickets_per_server`](AdaptiveConfig::max_tickets_per_server).
    /// A layer takes one cache; a second call is ignored.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn session_cache(self, cache: tower_reuse_pool::tls::SessionCache) -> Self {
        let _ = self.controller.session_cache.set(cache);
        self
    }

    /// A handle to read the controller's estimates and switch its mode.
    pub fn handle(&self) -> AdaptiveHandle {
        AdaptiveHandle {
            controller: self.controller.clone(),
        }
    }
}

impl<S: PoolHandle> Layer<S> for AdaptiveLayer {
    type Service = Adaptive<S>;

    fn layer(&self, inner: S) -> Adaptive<S> {
        let control = inner.pool_control();
        let _ = self.controller.control.set(control.clone());
        Adaptive::new(inner, self.controller.clone(), control)
    }
}
