//! The target map: each target's live signals, found by the pool's hook
//! and the layer's services, tracked up to the configured cap.

use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_reuse_pool::Target;

use super::Controller;
use crate::signals::Live;

impl Controller {
    /// Run `f` on `target`'s live signals, tracking it if it is new and
    /// the cap allows.
    pub(crate) fn with_live<R>(
        self: &Arc<Self>,
        target: &Target,
        f: impl FnOnce(&Live) -> R,
    ) -> Option<R> {
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if let Some(signals) = live.get(target) {
                return Some(f(signals));
            }
        }
        self.track(target).map(|signals| f(&signals))
    }

    /// `target`'s live signals, tracked from now if the cap allows.
    pub(crate) fn live_of(self: &Arc<Self>, target: &Target) -> Option<Arc<Live>> {
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if let Some(signals) = live.get(target) {
                return Some(signals.clone());
            }
        }
        self.track(target)
    }

    fn track(self: &Arc<Self>, target: &Target) -> Option<Arc<Live>> {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if let Some(signals) = live.get(target) {
            return Some(signals.clone());
        }
        if live.len() >= self.config.max_targets {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let signals = Arc::new(Live::tracked(target.clone(), Arc::downgrade(self)));
        live.insert(target.clone(), signals.clone());
        Some(signals)
    }
}

/// Whether `live`'s target is in use: a service handle of the layer holds
/// its signals (its last target's, besides the map's and the tick's), or a
/// request is on one of its connections (one longer than `forget_after`),
/// or it has connections open. Such a target is not forgotten, or its
/// signals would go where no one reads them (and its open connections'
/// closes would be lost to a new count).
pub(super) fn is_held(live: &Arc<Live>) -> bool {
    Arc::strong_count(live) > 2 || live.in_flight() > 0 || live.open() > 0
}

/// The target map's hasher, looked up at each of the pool's rare events
/// and when a service handle's target changes: a multiply and rotate per
/// word (as rustc's own maps hash) rather than SipHash, whose resistance
/// to chosen keys the map does not need (at most `max_targets` entries,
/// each one of the client's own targets).
#[derive(Default)]
pub(super) struct TargetHasher(u64);

impl Hasher for TargetHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.add(word);
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        if !rest.is_empty() {
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TargetHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
