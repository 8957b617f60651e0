//! Warmth: whether a request would find a connection free, and opening one
//! ahead for the requests that could not wait (the affinity layer's warm
//! detours).

use std::sync::Arc;

use tokio::time::Instant;

use super::{Effects, TargetPool};
use crate::events::ConnectReason;

impl<B> TargetPool<B> {
    /// Whether a request would find a connection free now: an idle
    /// HTTP/1.1 one, or an HTTP/2 one with a stream to spare.
    pub(crate) fn is_warm(&self) -> bool {
        let state = self.lock();
        let learned = state.h2_learned;
        !state.idle.is_empty()
            || state
                .h2
                .iter()
                .any(|c| !c.life.is_draining() && c.streams < c.capacity(learned))
    }

    /// Open one connection ahead, for a request that could not wait for
    /// it: only if nothing is free or connecting, within the target's
    /// limits, with reuse on, and not while the server asks for calm or a
    /// failed pre-warm backs off. The connection lands idle.
    pub(crate) fn warm_one(self: &Arc<Self>) {
        if self.is_warm() {
            return;
        }
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            let backoff = state.prewarm_backoff.is_some_and(|(until, _)| until > now);
            let room = state.connecting == 0
                && state.open + state.dedicated_open < config.max_connections();
            if config.reuse && !state.shut && !backoff && room && !state.calming(now, &mut fx) {
                state.connecting += 1;
                state.prewarming += 1;
                fx.connects.push(ConnectReason::Prewarm);
            }
        }
        self.finish(fx);
    }
}
