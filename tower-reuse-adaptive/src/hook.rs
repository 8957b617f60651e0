//! `AdaptivePoolEvents`: the pool's hook that feeds the controller.

use std::sync::Arc;

use tower_reuse_pool::events::{
    Closed, ConnectFailed, ConnectReason, ConnectStarted, Connected, PoolEvents, Refused, Retried,
    Stale,
};
use tower_reuse_pool::{Protocol, TlsHandshake};

use crate::controller::Controller;

/// The pool's events hook of an [`AdaptiveLayer`](crate::AdaptiveLayer):
/// give it to the pool below the layer with `PoolLayer::events` (paired
/// with another hook as `(hook, adaptive.pool_events())`). Without it the
/// controller sees no connect or close: it learns no server limit, keeps
/// nothing warm and caps nothing, and tunes the idle timeout from the
/// requests' idle gaps alone.
///
/// It costs requests nothing: what each request says (its connection's
/// reuse, idle gap and wait) the layer's service reads from the
/// response's [`ConnectionInfo`](tower_reuse_pool::ConnectionInfo); the
/// hook takes the rare events (connects, closes, stale connections,
/// retries, refusals), a lookup in the target map each.
#[derive(Clone, Debug)]
pub struct AdaptivePoolEvents {
    pub(crate) controller: Arc<Controller>,
}

impl PoolEvents for AdaptivePoolEvents {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        let demand = event.reason() == ConnectReason::Demand;
        self.controller
            .with_live(event.target(), |live| live.connect_started(demand));
    }

    fn on_connect(&self, event: &Connected<'_>) {
        let demand = event.reason() == ConnectReason::Demand;
        let resumed = event.tls().map(|tls| tls == TlsHandshake::Resumed);
        let http2 = event.protocol() == Protocol::Http2;
        self.controller.with_live(event.target(), |live| {
            live.connected(demand, event.duration(), event.tls_time(), resumed, http2)
        });
    }

    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        self.controller
            .with_live(event.target(), |live| live.connect_failed());
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.controller.with_live(event.target(), |live| {
            live.closed(event.reason(), event.idle_for(), event.requests_served())
        });
    }

    fn on_retry(&self, event: &Retried<'_>) {
        self.controller
            .with_live(event.target(), |live| live.retried());
    }

    fn on_stale(&self, event: &Stale<'_>) {
        self.controller
            .with_live(event.target(), |live| live.stale(event.idle_for()));
    }

    fn on_refused(&self, event: &Refused<'_>) {
        self.controller
            .with_live(event.target(), |live| live.refused());
    }
}
