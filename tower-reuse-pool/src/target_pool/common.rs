//! What every target of one pool shares: the configuration, the events
//! hook, connection ids, the reaper's schedule and the connection budget.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::conn::ConnId;
use crate::events::PoolEvents;

use super::Follow;
use super::budget::{Budget, Evictor};

/// What every target of one pool shares.
pub(crate) struct Common {
    pub(crate) config: ArcSwap<PoolConfig>,
    pub(crate) events: Arc<dyn PoolEvents>,
    next_id: AtomicU64,
    /// Wakes the reaper when a deadline earlier than its sleep appears.
    pub(crate) reaper_wake: Notify,
    /// The reaper's next wake, in nanoseconds since `epoch` (`u64::MAX`: parked).
    pub(crate) reaper_next: AtomicU64,
    pub(crate) epoch: Instant,
    pub(crate) reaper_started: std::sync::atomic::AtomicBool,
    pub(crate) reaper_wakeups: AtomicU64,
    /// Serializes configuration updates (read, change, store).
    pub(crate) updating: Mutex<()>,
    /// The pool-wide connection budget.
    pub(crate) budget: Budget,
    /// Frees a slot from another target's idle connection (the pool's
    /// targets, set once the pool is built).
    pub(crate) evictor: OnceLock<Weak<dyn Evictor>>,
}

impl Common {
    pub(crate) fn new(config: PoolConfig, events: Arc<dyn PoolEvents>) -> Self {
        Common {
            config: ArcSwap::from_pointee(config),
            events,
            next_id: AtomicU64::new(1),
            reaper_wake: Notify::new(),
            reaper_next: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            reaper_started: std::sync::atomic::AtomicBool::new(false),
            reaper_wakeups: AtomicU64::new(0),
            updating: Mutex::new(()),
            budget: Budget::default(),
            evictor: OnceLock::new(),
        }
    }

    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Hand freed slots to the targets waiting for them and close idle
    /// connections for them, until nothing more follows.
    pub(crate) fn follow(&self, mut follow: Follow) {
        loop {
            if follow.evictions > 0 {
                follow.evictions -= 1;
                if let Some(evictor) = self.evictor.get().and_then(Weak::upgrade)
                    && let Some(more) = evictor.evict_idle()
                {
                    follow.merge(more);
                }
                continue;
            }
            let Some(next) = follow.grants.pop() else {
                return;
            };
            follow.merge(next.take_slot());
        }
    }

    /// Tell the reaper about a deadline, waking it only if it would sleep past it.
    pub(crate) fn schedule(&self, deadline: Instant) {
        if self.since_epoch(deadline) < self.reaper_next.load(Ordering::Acquire) {
            self.reaper_wake.notify_one();
        }
    }
}
