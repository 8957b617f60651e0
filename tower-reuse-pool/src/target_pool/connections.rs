//! What connections report: connected, failed to connect, ended, learned
//! the server's HTTP/2 stream limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Effects, State, TargetPool};
use crate::conn::{ConnId, Http1Conn, Http2Conn, Lifecycle, Protocol};
use crate::connect::Opened;
use crate::error::Error;
use crate::events::{CloseReason, ConnectReason};

impl<B> TargetPool<B> {
    /// A new connection is ready.
    pub(crate) fn connected(
        self: &Arc<Self>,
        opened: Opened<B>,
        life: Lifecycle,
        reason: ConnectReason,
    ) {
        let now = Instant::now();
        let id = life.id;
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            state.connecting -= 1;
            state.open += 1;
            state.counters.opened(life.tls);
            if reason == ConnectReason::Prewarm {
                state.prewarming -= 1;
                state.prewarm_backoff = None;
            }
            // The newest connection says what the target speaks now: a
            // backend whose ALPN changed is planned for as it is.
            state.protocol = Some(life.protocol);
            if state.shut {
                // The pool went away while this was connecting.
                let mut life = life;
                state.closed(&mut life, CloseReason::PoolDropped, now, &mut fx);
                drop(opened);
                drop(state);
                self.finish(fx);
                return;
            }
            if reason == ConnectReason::Rotation {
                self.retire_one(&mut state, now, &mut fx);
            }
            match opened {
                Opened::Http1(tx) => state.idle.push(Http1Conn { tx, life }),
                Opened::Http2(tx, parts) => {
                    if parts.settled.load(Ordering::Acquire) {
                        let limit = parts.limit.current().max(1);
                        state.h2_streams_hint = limit;
                        state.h2_learned = Some(limit);
                    }
                    state.h2.push(Http2Conn {
                        tx,
                        life,
                        streams: 0,
                        limit: parts.limit,
                        settled: parts.settled,
                        learned: Default::default(),
                    });
                }
            }
            let deadline = match state.h2.last() {
                Some(conn) if conn.life.id == id => conn.life.next_deadline(&config, true),
                _ => state
                    .idle
                    .last()
                    .and_then(|c| c.life.next_deadline(&config, true)),
            };
            fx.wake_reaper = deadline;
            self.dispatch(&mut state, &config, now, &mut fx);
            // Connects outlived the demand that started them.
            state.trim_idle(&config, now, &mut fx);
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }

    /// A rotation replacement is up: retire the oldest rotating connection.
    fn retire_one(&self, state: &mut State<B>, now: Instant, fx: &mut Effects<B>) {
        if let Some(pos) = state.idle.iter().position(|c| c.life.rotating) {
            let mut conn = state.idle.remove(pos);
            state.closed(&mut conn.life, CloseReason::MaxLifetime, now, fx);
        } else if let Some(pos) = state
            .h2
            .iter()
            .position(|c| c.life.rotating && !c.life.is_draining())
        {
            if state.h2[pos].streams == 0 {
                let mut conn = state.h2.swap_remove(pos);
                state.closed(&mut conn.life, CloseReason::MaxLifetime, now, fx);
            } else {
                state.h2[pos].life.drain();
            }
        } else {
            state.retirements_due += 1;
        }
    }

    /// A connect failed: every waiter no other connect covers gets the error.
    pub(crate) fn connect_failed(self: &Arc<Self>, reason: ConnectReason, error: &Error) {
        let now = Instant::now();
        let mut fx = Effects::new();
        let mut failed = Vec::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            state.connecting -= 1;
            state.free_slot(&mut fx);
            state.counters.connect_errors += 1;
            match reason {
                ConnectReason::Prewarm => {
                    state.prewarming -= 1;
                    let backoff = state
                        .prewarm_backoff
                        .map_or(Duration::from_millis(100), |(_, b)| {
                            (b * 2).min(Duration::from_secs(30))
                        });
                    let jittered = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                    state.prewarm_backoff = Some((now + jittered, backoff));
                    fx.wake_reaper = Some(now + jittered);
                }
                // Break before make: the old connection retires anyway,
                // exactly as if its replacement had come up.
                ConnectReason::Rotation => self.retire_one(&mut state, now, &mut fx),
                _ => {}
            }
            // A retry waiting for this connect while the connection it
            // avoids sits idle takes that connection now that nothing else
            // is coming (the fallback in `dispatch`), instead of this error.
            self.dispatch(&mut state, &config, now, &mut fx);
            // The waiters no connect still in flight covers (as `plan`
            // counts them) get the error; the queue's front is served first,
            // so they are taken from its back.
            let covered = match state.protocol {
                None => 0,
                Some(Protocol::Http1) => state.connecting,
                Some(Protocol::Http2) => state.connecting.saturating_mul(state.h2_streams_hint),
            };
            while state.waiters.len() > covered {
                if let Some(waiter) = state.waiters.pop_back() {
                    failed.push(waiter.tx);
                }
            }
        }
        for tx in failed {
            let _ = tx.send(Err(error.clone()));
        }
        self.finish(fx);
    }

    /// A connection task ended: drop the connection if it sits idle; one
    /// checked out is closed when it comes back. `calm`: the server ended
    /// it with `ENHANCE_YOUR_CALM`, so the target's connects back off.
    pub(crate) fn connection_ended(self: &Arc<Self>, id: ConnId, graceful: bool, calm: bool) {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            if calm {
                state.calm_down(id, now, &mut fx);
            }
            if let Some(pos) = state.idle.iter().position(|c| c.life.id == id) {
                let mut conn = state.idle.remove(pos);
                state.closed(&mut conn.life, CloseReason::ServerClosed, now, &mut fx);
            } else if let Some(pos) = state.h2.iter().position(|c| c.life.id == id) {
                let conn = &mut state.h2[pos];
                conn.life.drain();
                if conn.streams == 0 {
                    let mut conn = state.h2.swap_remove(pos);
                    let reason = if graceful {
                        CloseReason::GoAway
                    } else {
                        CloseReason::ServerClosed
                    };
                    state.closed(&mut conn.life, reason, now, &mut fx);
                }
            }
            state.slot_ended(id, &mut fx);
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }

    /// The HTTP/2 connection `id` learned the server's settings or a new
    /// stream limit: serve waiters.
    pub(crate) fn h2_capacity_changed(self: &Arc<Self>, limit: usize) {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            let config = self.config_of(&state);
            // A limit of 0 (a server pausing a connection, or one read
            // after the connection ended) says nothing of what the next
            // connection will carry: planning as if one stream would open a
            // connection per waiter.
            if limit > 0 {
                state.h2_streams_hint = limit;
                state.h2_learned = Some(limit);
            }
            self.dispatch(&mut state, &config, now, &mut fx);
            self.plan(&mut state, &config, now, &mut fx);
        }
        self.finish(fx);
    }

    /// The first response on HTTP/2 connection `id` arrived, so its server's
    /// SETTINGS have been read: its real stream limit applies.
    pub(crate) fn h2_settled(self: &Arc<Self>, id: ConnId) {
        let limit = {
            let state = self.lock();
            let Some(conn) = state.h2.iter().find(|c| c.life.id == id) else {
                return;
            };
            conn.settled.store(true, Ordering::Release);
            conn.limit.current()
        };
        self.h2_capacity_changed(limit);
    }
}
