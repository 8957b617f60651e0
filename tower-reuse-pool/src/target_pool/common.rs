//! What every target of one pool shares: the configuration, the events
//! hook, connection ids and the reaper's schedule.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::conn::ConnId;
use crate::events::PoolEvents;

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
        }
    }

    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Tell the reaper about a deadline, waking it only if it would sleep past it.
    pub(crate) fn schedule(&self, deadline: Instant) {
        if self.since_epoch(deadline) < self.reaper_next.load(Ordering::Acquire) {
            self.reaper_wake.notify_one();
        }
    }
}
