//! Warmth: whether a request would find a connection free, and opening one
//! ahead for the requests that could not wait (the affinity layer's warm
//! detours).

use std::sync::Arc;

use tokio::time::Instant;

use super::{Effects, TargetPool};
use crate::events::ConnectReason;

/// What [`PoolControl::warm_up`](crate::PoolControl::warm_up) found, or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarmUp {
    /// A connection is free already.
    Warm,
    /// A connection is being opened (already, or now).
    Connecting,
    /// The target's last connect ahead failed; none is tried before
    /// `retry_at` (a back-off that doubles with each failure, up to 30 s).
    /// Each failure has its own `retry_at`.
    Failing {
        /// When the next connect ahead may start.
        retry_at: Instant,
    },
    /// Nothing may be opened now: reuse is off, the target is at its
    /// connection limit, or the server asked for calm.
    Refused,
}

impl<B> TargetPool<B> {
    /// Whether a request would find a connection free now: an idle
    /// HTTP/1.1 one, or an HTTP/2 one with a stream to spare.
    pub(crate) fn is_warm(&self) -> bool {
        let state = self.lock();
        let learned = state.h2_learned;
        !state.idle.is_empty() || state.h2.iter().any(|c| c.has_room(learned, Instant::now()))
    }

    /// Open one connection ahead, for a request that could not wait for
    /// it: only if nothing is free or connecting, within the target's
    /// limits, with reuse on, and not while the server asks for calm or a
    /// failed connect ahead backs off. The connection lands idle.
    pub(crate) fn warm_one(self: &Arc<Self>) -> WarmUp {
        if self.is_warm() {
            return WarmUp::Warm;
        }
        let now = Instant::now();
        let mut fx = Effects::new();
        let verdict = {
            let mut state = self.lock();
            let config = self.config_of(&state);
            let failing = state.prewarm_backoff.filter(|&(until, _)| until > now);
            if state.connecting > 0 {
                WarmUp::Connecting
            } else if let Some((retry_at, _)) = failing {
                WarmUp::Failing { retry_at }
            } else if !config.reuse
                || state.shut
                || state.open + state.dedicated_open >= config.per_target_limit()
                || state.calming(now, &mut fx)
                || !state
                    .slots
                    .take_free(&self.common.budget, config.max_connections)
            {
                WarmUp::Refused
            } else {
                state.connecting += 1;
                state.prewarming += 1;
                fx.connects.push(ConnectReason::Prewarm);
                WarmUp::Connecting
            }
        };
        self.finish(fx);
        verdict
    }
}
