//! Deadlines: idle expiry, rotation at max lifetime, pre-warm refills, and
//! forgetting quiet targets. Driven by the pool's reaper.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Budget;
use super::slots::Slots;
use super::{Effects, TargetPool};
use crate::config::PoolConfig;
use crate::conn::Lifecycle;
use crate::events::{CloseReason, ConnectReason};

impl<B> TargetPool<B> {
    /// Close what has expired, start rotations and pre-warm connects; return
    /// the next deadline.
    pub(crate) fn reap(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut fx = Effects::new();
        let mut next: Option<Instant> = None;
        let mut soonest = |d: Option<Instant>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            let keep = config.min_idle_per_target;
            let floor = config.min_connections_per_target;
            let state = &mut *state;
            // Oldest first; the last `keep` (most recently used) stay warm.
            let mut i = 0;
            while i < state.idle.len() {
                let above_min = state.idle.len() > keep && state.open > floor;
                let conn = &mut state.idle[i];
                let idle_deadline = conn.life.idle_deadline(&config).filter(|_| above_min);
                let reason = if conn.tx.is_closed() {
                    Some(CloseReason::ServerClosed)
                } else {
                    idle_close_reason(&config, idle_deadline, now)
                };
                if let Some(reason) = reason {
                    let mut conn = state.idle.remove(i);
                    state.closed(&mut conn.life, reason, now, &mut fx);
                    continue;
                }
                start_rotation(
                    (&mut state.connecting, &mut state.slots, &self.common.budget),
                    &config,
                    &mut conn.life,
                    now,
                    &mut fx,
                );
                soonest(idle_deadline);
                soonest(
                    conn.life
                        .lifetime_deadline()
                        .filter(|_| !conn.life.rotating),
                );
                i += 1;
            }
            // Check-ins and connects keep to `max_idle_per_target`; after
            // the limit was lowered the idle connections above it go now,
            // not when they expire.
            state.trim_idle(&config, now, &mut fx);
            // HTTP/2 connections with no stream count towards `min_idle` too.
            let mut idle_h2 = state.h2.iter().filter(|c| c.streams == 0).count();
            let mut i = 0;
            while i < state.h2.len() {
                let above_min = state.idle.len() + idle_h2 > keep && state.open > floor;
                let conn = &mut state.h2[i];
                let idle_deadline = conn
                    .life
                    .idle_deadline(&config)
                    .filter(|_| conn.streams == 0 && above_min);
                let reason =
                    idle_close_reason(&config, idle_deadline, now).filter(|_| conn.streams == 0);
                if let Some(reason) = reason {
                    let mut conn = state.h2.swap_remove(i);
                    state.closed(&mut conn.life, reason, now, &mut fx);
                    idle_h2 -= 1;
                    continue;
                }
                if !config.reuse {
                    // Its streams finish; it closes when the last one ends.
                    conn.life.drain();
                }
                soonest(idle_deadline);
                start_rotation(
                    (&mut state.connecting, &mut state.slots, &self.common.budget),
                    &config,
                    &mut conn.life,
                    now,
                    &mut fx,
                );
                soonest(
                    conn.life
                        .lifetime_deadline()
                        .filter(|_| !conn.life.rotating),
                );
                i += 1;
            }
            // Limits learned from refusals step back up: serve waiters.
            state.probe_learned_limits(now);
            for conn in &state.h2 {
                soonest(conn.learned.next_event(now));
            }
            self.dispatch(state, &config, now, &mut fx);
            self.plan(state, &config, now, &mut fx);
            if let Some((until, _)) = state.prewarm_backoff {
                soonest(Some(until));
            }
            if let Some(calm) = state.calm_backoff.filter(|calm| calm.until > now) {
                soonest(Some(calm.until));
            }
            // Connections checked out now come back with an idle deadline no
            // sooner than this: waking here keeps check-ins from waking the
            // reaper on every request.
            if state.open > 0 {
                soonest(config.idle_timeout.and_then(|idle| now.checked_add(idle)));
            } else if state.connecting == 0 && state.waiters.is_empty() {
                // Look again when the target may be forgotten (never a past
                // instant: a target a handle holds is not forgotten then).
                soonest(
                    state
                        .last_active
                        .checked_add(forget_after(&config))
                        .filter(|&at| at > now),
                );
            }
        }
        self.finish(fx);
        next
    }

    /// The pool was dropped: close what is free now (each reported as
    /// `PoolDropped`), drain the rest, fail the waiters; connections still
    /// in use close when they come back.
    pub(crate) fn shut_down(self: &Arc<Self>) {
        let now = Instant::now();
        let mut fx = Effects::new();
        let (waiters, dedicated) = {
            let mut state = self.lock();
            let state = &mut *state;
            state.shut = true;
            while let Some(mut conn) = state.idle.pop() {
                state.closed(&mut conn.life, CloseReason::PoolDropped, now, &mut fx);
            }
            let mut i = 0;
            while i < state.h2.len() {
                if state.h2[i].streams == 0 {
                    let mut conn = state.h2.swap_remove(i);
                    state.closed(&mut conn.life, CloseReason::PoolDropped, now, &mut fx);
                } else {
                    state.h2[i].life.drain();
                    i += 1;
                }
            }
            (
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.dedicated_waiters),
            )
        };
        let error = crate::error::Error::closed(&self.target, "the pool was dropped");
        for waiter in waiters {
            let _ = waiter.tx.send(Err(error.clone()));
        }
        for tx in dedicated {
            let _ = tx.send(Err(error.clone()));
        }
        self.finish(fx);
    }

    /// Whether nothing is open, connecting or waiting, nothing was used for
    /// [`forget_after`], no pool handle holds it as the target it served
    /// last, and it has no settings of its own (but a retirement's): the
    /// pool may forget this target.
    pub(crate) fn is_forgettable(self: &Arc<Self>, now: Instant) -> bool {
        if Arc::strong_count(self) > 1 {
            return false;
        }
        let state = self.lock();
        let config = self.config_of(&state);
        state.open == 0
            && state.connecting == 0
            && state.slots.ending.is_empty()
            && state.waiters.is_empty()
            && config.min_idle_per_target == 0
            && config.min_connections_per_target == 0
            && (!Self::has_own_config(&state) || state.retired)
            && now.saturating_duration_since(state.last_active) >= forget_after(&config)
    }
}

/// Why an idle connection closes now, if it does: the kill switch, or its
/// idle deadline passed.
fn idle_close_reason(
    config: &PoolConfig,
    idle_deadline: Option<Instant>,
    now: Instant,
) -> Option<CloseReason> {
    if !config.reuse {
        Some(CloseReason::KillSwitch)
    } else if idle_deadline.is_some_and(|d| d <= now) {
        Some(CloseReason::IdleTimeout)
    } else {
        None
    }
}

/// How long a target with nothing open stays known to the pool: its idle
/// timeout or a minute, whichever is longer (its counts go with it).
pub(crate) fn forget_after(config: &PoolConfig) -> Duration {
    let minute = Duration::from_secs(60);
    config.idle_timeout.map_or(minute, |idle| idle.max(minute))
}

/// Past its lifetime: start a replacement and keep serving until it is up
/// (make-before-break). A rotation may exceed `max_connections_per_target` by
/// the connects in flight, never `max_connecting_per_target` nor the
/// pool-wide budget; with no connect slot or budget slot free the
/// connection drains instead (break before make).
pub(super) fn start_rotation<B>(
    (connecting, slots, budget): (&mut usize, &mut Slots, &Budget),
    config: &PoolConfig,
    life: &mut Lifecycle,
    now: Instant,
    fx: &mut Effects<B>,
) {
    // With reuse off (the kill switch) connections close after their
    // requests: nothing to replace them for.
    if !config.reuse || life.rotating || life.lifetime_deadline().is_none_or(|d| d > now) {
        return;
    }
    life.rotating = true;
    if *connecting < config.max_connecting() && slots.take_free(budget, config.max_connections) {
        *connecting += 1;
        fx.connects.push(ConnectReason::Rotation);
    } else {
        life.drain();
    }
}
