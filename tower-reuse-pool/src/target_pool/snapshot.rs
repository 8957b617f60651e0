//! A target's counts at one moment, for `PoolControl::snapshot`.

use tokio::time::Instant;

use super::TargetPool;
use crate::control::{Http2Snapshot, TargetSnapshot};

impl<B> TargetPool<B> {
    pub(crate) fn snapshot(&self) -> TargetSnapshot {
        let mut state = self.lock();
        // Learned limits as they stand now, not as the reaper last saw them.
        state.probe_learned_limits(Instant::now());
        let idle = state.idle.len()
            + state
                .h2
                .iter()
                .filter(|c| c.streams == 0 && !c.life.is_draining())
                .count();
        let learned = state.h2_learned;
        let http2 = state
            .h2
            .iter()
            .map(|c| Http2Snapshot {
                id: c.life.id,
                streams: c.streams,
                advertised_limit: c.advertised(learned),
                effective_limit: c.capacity(learned),
                refused: c.learned.refused,
                release_lag: c.learned.lag(),
                draining: c.life.is_draining(),
            })
            .collect();
        TargetSnapshot {
            target: self.target.clone(),
            protocol: state.protocol,
            idle,
            active: state.open - idle,
            connecting: state.connecting,
            dedicated: state.dedicated_open,
            closing: state.slots.ending.len(),
            waiting: state.waiters.len()
                + state
                    .dedicated_waiters
                    .iter()
                    .filter(|tx| !tx.is_closed())
                    .count(),
            opened: state.counters.opened,
            reused: state.counters.reused,
            checkouts: state.counters.checkouts,
            connect_errors: state.counters.connect_errors,
            retries: state.counters.retries,
            stale_skips: state.counters.stale_skips,
            refused: state.counters.refused,
            requeued: state.counters.requeued,
            calm: state.counters.calm,
            calm_backoff: state.calm_backoff.map(|calm| calm.until),
            http2,
            tls_full: state.counters.tls_full,
            tls_resumed: state.counters.tls_resumed,
            closed: state.counters.closed,
        }
    }
}
