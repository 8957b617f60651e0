//! Requests giving their leases back: connections return to the pool, go
//! to the next waiter, or close.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Effects, Lease, Outcome, RefusedInfo, State, TargetPool, start_rotation};
use crate::config::PoolConfig;
use crate::conn::{ConnId, Http1Conn, TlsHandshake};
use crate::events::CloseReason;

impl<B> TargetPool<B> {
    /// A request gives its lease back.
    pub(crate) fn release(self: &Arc<Self>, lease: Lease<B>, outcome: Outcome) {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            state.last_active = now;
            match lease {
                Lease::Http1(conn) => {
                    self.release_h1(&mut state, &config, conn, outcome, now, &mut fx)
                }
                Lease::Http2 { id, .. } => {
                    self.release_h2(&mut state, &config, id, outcome, now, &mut fx)
                }
                Lease::Dedicated2 { .. } => {
                    unreachable!("dedicated leases go to release_dedicated")
                }
            }
            self.dispatch(&mut state, &config, now, &mut fx);
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }

    fn release_h1(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        mut conn: Http1Conn<B>,
        outcome: Outcome,
        now: Instant,
        fx: &mut Effects<B>,
    ) {
        if outcome == Outcome::Unused {
            conn.life.served -= 1;
        }
        // Checked in only once it stays: a connection closed here closes
        // with its request on it (`Closed::idle_for` is `None`).
        let reason = match outcome {
            _ if state.shut => Some(CloseReason::PoolDropped),
            Outcome::Abandoned => Some(CloseReason::Abandoned),
            Outcome::Failed => Some(CloseReason::Error),
            // HTTP/2 outcomes, never seen here.
            Outcome::GoAway | Outcome::Refused { .. } | Outcome::Calm => Some(CloseReason::GoAway),
            Outcome::Done | Outcome::Unused => conn
                .life
                .retire_reason(config)
                .or_else(|| conn.tx.is_closed().then_some(CloseReason::ServerClosed)),
        };
        let reason = reason.or_else(|| {
            if conn.life.rotating && state.retirements_due > 0 {
                state.retirements_due -= 1;
                Some(CloseReason::MaxLifetime)
            } else {
                None
            }
        });
        fx.checkin = Some((conn.life.id, reason.is_none()));
        if let Some(reason) = reason {
            state.closed(&mut conn.life, reason, now, fx);
            return;
        }
        if self.yields_slot(state) {
            state.closed(&mut conn.life, CloseReason::Evicted, now, fx);
            return;
        }
        start_rotation(
            (&mut state.connecting, &mut state.slots, &self.common.budget),
            config,
            &mut conn.life,
            now,
            fx,
        );
        // With waiters, `dispatch` hands it to the first one.
        let waited_for = !state.waiters.is_empty();
        if !waited_for
            && config
                .max_idle_per_target
                .is_some_and(|max| state.idle.len() >= max)
        {
            state.closed(&mut conn.life, CloseReason::OverLimit, now, fx);
            return;
        }
        conn.life.checkin(now);
        if !waited_for {
            fx.wake_reaper = conn.life.next_deadline(config, true);
        }
        state.idle.push(conn);
    }

    fn release_h2(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        id: ConnId,
        outcome: Outcome,
        now: Instant,
        fx: &mut Effects<B>,
    ) {
        let Some(pos) = state.h2.iter().position(|c| c.life.id == id) else {
            return;
        };
        match outcome {
            Outcome::Refused {
                refused_stream: true,
                ..
            } => state.counters.refused += 1,
            Outcome::Calm => state.calm_down(id, now, fx),
            _ => {}
        }
        let learned = state.h2_learned;
        let conn = &mut state.h2[pos];
        conn.streams -= 1;
        if !matches!(outcome, Outcome::Refused { .. }) {
            conn.learned.ended(now);
            // A slot freed under a learned release lag is free at its end.
            fx.wake_at(conn.learned.next_free(now));
        }
        if matches!(outcome, Outcome::Unused | Outcome::Refused { .. }) {
            conn.life.served -= 1;
        }
        match outcome {
            Outcome::Refused {
                refused_stream,
                refusals,
            } => {
                if refused_stream {
                    // The server had accepted the streams still in flight.
                    let advertised = conn.advertised(learned);
                    conn.learned.refused(conn.streams, advertised, now);
                    fx.wake_at(conn.learned.next_event(now));
                } else {
                    conn.life.drain();
                }
                fx.refused = Some(RefusedInfo {
                    id,
                    refused_stream,
                    refusals,
                    effective_limit: conn.capacity(learned),
                    advertised_limit: conn.advertised(learned),
                });
            }
            Outcome::Calm => conn.life.drain(),
            Outcome::GoAway => conn.life.drain(),
            Outcome::Failed if conn.tx.is_closed() => conn.life.drain(),
            // Served its share (`max_requests_per_connection`), or the
            // kill switch: closes when its last stream ends.
            _ if conn.life.retire_reason(config).is_some() => conn.life.drain(),
            _ => {}
        }
        // After the drain: a connection closed here closes with its last
        // stream on it (`Closed::idle_for` is `None`).
        conn.life.checkin(now);
        fx.checkin = Some((id, !conn.life.is_draining()));
        if conn.streams == 0 {
            if conn.life.is_draining() || conn.tx.is_closed() {
                let mut conn = state.h2.swap_remove(pos);
                let reason = if state.shut {
                    CloseReason::PoolDropped
                } else {
                    conn.life
                        .retire_reason(config)
                        .unwrap_or(CloseReason::ServerClosed)
                };
                state.closed(&mut conn.life, reason, now, fx);
            } else {
                fx.wake_at(conn.life.next_deadline(config, true));
            }
        } else {
            fx.wake_at(conn.life.next_deadline(config, false));
        }
        self.yield_idle(state, id, now, fx);
    }

    /// A dedicated (kill switch) connection opened.
    pub(crate) fn dedicated_opened(self: &Arc<Self>, tls: Option<TlsHandshake>) {
        self.dedicated_changed(|state, _| {
            state.connecting -= 1;
            state.dedicated_open += 1;
            state.counters.opened(tls);
            state.counters.checkouts += 1;
        });
    }

    /// A dedicated (kill switch) connect failed.
    pub(crate) fn dedicated_failed(self: &Arc<Self>) {
        self.dedicated_changed(|state, fx| {
            state.connecting -= 1;
            state.free_slot(fx);
            state.counters.connect_errors += 1;
        });
    }

    /// A dedicated (kill switch) connect that never landed (its task was
    /// dropped): its slot is given back and the reaper, not this call,
    /// starts what the freed room allows (the budget's slot goes to the
    /// next target waiting for one at once).
    pub(crate) fn dedicated_abandoned(&self) {
        let mut fx = Effects::new();
        let mut state = self.lock();
        state.connecting -= 1;
        state.free_slot(&mut fx);
        state.counters.connect_errors += 1;
        drop(state);
        self.common.follow(self.give_back(&fx));
        self.common.reaper_wake.notify_one();
    }

    /// Apply `change` to the dedicated counts, then start what the freed
    /// room allows.
    fn dedicated_changed(self: &Arc<Self>, change: impl FnOnce(&mut State<B>, &mut Effects<B>)) {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            change(&mut state, &mut fx);
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }

    /// A dedicated connection closes after its one request.
    pub(crate) fn release_dedicated(self: &Arc<Self>, lease: Lease<B>) {
        let mut life = match lease {
            Lease::Http1(conn) => conn.life,
            Lease::Dedicated2 { life, .. } => life,
            Lease::Http2 { .. } => unreachable!("pooled leases go to release"),
        };
        let now = Instant::now();
        let mut fx = Effects::new();
        // Its request gave it back (a hook counting requests in flight
        // sees the end of every checkout), and it closes.
        fx.checkin = Some((life.id, false));
        fx.close(&mut life, CloseReason::KillSwitch, now);
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            state.dedicated_open -= 1;
            state.slot_closing(life.id, &mut fx);
            state.counters.closed[CloseReason::KillSwitch.index()] += 1;
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }
}
