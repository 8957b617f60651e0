//! Checkout: a request takes a free connection at once, or joins the
//! queue that check-ins and connects serve first come, first served.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::budget::Budget;
use super::slots::Slots;
use super::{Effects, Granted, Lease, RequestPolicy, State, TargetPool, Waiter, Waiting};
use crate::config::PoolConfig;
use crate::conn::{ConnId, Http2Conn, Lifecycle, Protocol};
use crate::error::Error;
use crate::events::{CloseReason, ConnectReason};
use crate::sync;

impl<B> TargetPool<B> {
    /// Check out at once if a connection is free; otherwise join the queue.
    /// A retry names the connection that failed it in `avoid`: it goes
    /// there again only if nothing else is open or coming.
    #[inline(always)] // once per request: the grant is written where the caller keeps it
    pub(crate) fn checkout(
        self: &Arc<Self>,
        now: Instant,
        avoid: Option<ConnId>,
    ) -> Result<Granted<B>, Result<Waiting<B>, Error>> {
        let mut fx = Effects::new();
        let result = {
            let mut state = self.lock();
            let config = self.config_of(&state);
            state.last_active = now;
            if !config.reuse {
                // Requests that gave up waiting leave their grant behind.
                state.dedicated_waiters.retain(|tx| !tx.is_closed());
                if config
                    .max_waiters_per_target
                    .is_some_and(|max| state.dedicated_waiters.len() >= max)
                {
                    return Err(Err(Error::too_many_waiters(
                        &self.target,
                        state.dedicated_waiters.len(),
                    )));
                }
                let (tx, rx) = oneshot::channel();
                state.dedicated_waiters.push_back(tx);
                self.plan(&mut state, &config, now, &mut fx);
                drop(state);
                self.finish(fx);
                return Err(Ok(Waiting {
                    key: None,
                    rx,
                    timeout: config.checkout_timeout,
                }));
            }
            if state.waiters.is_empty()
                && let Some(granted) = self.grant(&mut state, &config, now, &mut fx, avoid)
            {
                Ok(granted)
            } else if config
                .max_waiters_per_target
                .is_some_and(|max| state.waiters.len() >= max)
            {
                Err(Err(Error::too_many_waiters(
                    &self.target,
                    state.waiters.len(),
                )))
            } else {
                let (tx, rx) = oneshot::channel();
                let key = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push_back(Waiter { key, tx, avoid });
                self.plan(&mut state, &config, now, &mut fx);
                if avoid.is_some() {
                    // Nothing else may be coming: the fallback in `dispatch`.
                    self.dispatch(&mut state, &config, now, &mut fx);
                }
                Err(Ok(Waiting {
                    key: Some(key),
                    rx,
                    timeout: config.checkout_timeout,
                }))
            }
        };
        self.finish(fx);
        result
    }

    /// Take an open connection with room, if any (HTTP/2 first, then idle
    /// HTTP/1, most recently used first). Closes dead or expired ones on the way.
    pub(super) fn grant(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        now: Instant,
        fx: &mut Effects<B>,
        avoid: Option<ConnId>,
    ) -> Option<Granted<B>> {
        state.probe_learned_limits(now);
        let learned = state.h2_learned;
        let open_to = |c: &Http2Conn| {
            c.has_room(learned, now)
                && config
                    .max_requests_per_connection
                    .is_none_or(|max| c.life.served < max)
        };
        if let Some(pos) = state
            .h2
            .iter()
            .position(|c| Some(c.life.id) != avoid && open_to(c))
        {
            let others_free = !state.idle.is_empty()
                || (state.h2.iter().enumerate()).any(|(i, c)| i != pos && open_to(c));
            let conn = &mut state.h2[pos];
            conn.streams += 1;
            let idle_for = conn.life.checkout(now);
            start_replacement(
                (&mut state.connecting, &mut state.slots, &self.common.budget),
                config,
                &mut conn.life,
                others_free,
                fx,
            );
            let reused = conn.life.served > 1;
            state.counters.checkouts += 1;
            state.counters.reused += u64::from(reused);
            return Some(Granted {
                lease: Lease::Http2 {
                    tx: conn.tx.clone(),
                    id: conn.life.id,
                },
                protocol: Protocol::Http2,
                tls: conn.life.tls,
                reused,
                idle_for: idle_for.filter(|_| reused),
                revalidate: false,
                settling: !conn.is_settled(),
                dedicated: false,
                policy: RequestPolicy::of(config),
            });
        }
        while let Some(mut conn) = state.idle.pop() {
            let expired = conn.life.idle_deadline(config).is_some_and(|d| d <= now);
            if conn.tx.is_closed() || expired {
                let reason = if expired {
                    CloseReason::IdleTimeout
                } else {
                    CloseReason::ServerClosed
                };
                state.closed(&mut conn.life, reason, now, fx);
                continue;
            }
            let (idle_for, revalidate) = conn.life.checkout_idle(now, config);
            // Spare connections: at least as many idle as busy (this one
            // among the busy), or an HTTP/2 one with room. A closed loop's
            // connections are idle a moment between requests: a few idle
            // among many busy are not spare.
            let idle = state.idle.len();
            let busy = state.open.saturating_sub(idle);
            let others_free = (idle > 0 && idle >= busy) || state.h2.iter().any(open_to);
            start_replacement(
                (&mut state.connecting, &mut state.slots, &self.common.budget),
                config,
                &mut conn.life,
                others_free,
                fx,
            );
            let reused = conn.life.served > 1;
            state.counters.checkouts += 1;
            state.counters.reused += u64::from(reused);
            let tls = conn.life.tls;
            return Some(Granted {
                lease: Lease::Http1(conn),
                protocol: Protocol::Http1,
                tls,
                reused,
                idle_for: reused.then_some(idle_for),
                revalidate,
                settling: false,
                dedicated: false,
                policy: RequestPolicy::of(config),
            });
        }
        None
    }

    /// Serve parked waiters from whatever capacity there is, FIFO.
    pub(super) fn dispatch(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        now: Instant,
        fx: &mut Effects<B>,
    ) {
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            // A retry avoiding a connection takes it after all when no
            // other connection is coming.
            let granted = match self.grant(state, config, now, fx, waiter.avoid) {
                None if waiter.avoid.is_some() && state.connecting == 0 => {
                    self.grant(state, config, now, fx, None)
                }
                granted => granted,
            };
            let Some(granted) = granted else {
                state.waiters.push_front(waiter);
                return;
            };
            // The waiter may leave right here, after the check above.
            sync::preemption_point();
            if let Err(Ok(granted)) = waiter.tx.send(Ok(granted)) {
                // The waiter left between the check and the send.
                self.put_back(state, granted, now);
            }
        }
    }

    /// Undo a grant that nobody took.
    pub(super) fn put_back(&self, state: &mut State<B>, granted: Granted<B>, now: Instant) {
        state.counters.checkouts -= 1;
        state.counters.reused -= u64::from(granted.reused);
        match granted.lease {
            Lease::Http1(mut conn) => {
                conn.life.served -= 1;
                let last_used = now.checked_sub(granted.idle_for.unwrap_or_default());
                conn.life.checkin(last_used.unwrap_or(now));
                state.idle.push(conn);
            }
            Lease::Http2 { id, .. } => {
                if let Some(conn) = state.h2.iter_mut().find(|c| c.life.id == id) {
                    conn.streams -= 1;
                    conn.life.served -= 1;
                    conn.life.checkin(now);
                }
            }
            Lease::Dedicated2 { .. } => unreachable!("dedicated connections are never queued"),
        }
    }
}

/// A request took `life` for its last request under
/// `max_requests_per_connection` and no other connection is free
/// (`others_free`): start its replacement now (make-before-break), so the
/// next request finds a connection ready, unless the target has spare
/// connections (`others_free`). Admitted as a rotation is: reuse
/// on, a connect slot and a budget slot free; it may exceed
/// `max_connections_per_target` by the connects in flight. One per
/// connection; without a slot the connection simply retires after this
/// request, and a failed replacement changes nothing else.
fn start_replacement<B>(
    (connecting, slots, budget): (&mut usize, &mut Slots, &Budget),
    config: &PoolConfig,
    life: &mut Lifecycle,
    others_free: bool,
    fx: &mut Effects<B>,
) {
    let last = config
        .max_requests_per_connection
        .is_some_and(|max| life.served >= max);
    if !config.reuse || !last || life.replaced || others_free {
        return;
    }
    if *connecting < config.max_connecting() && slots.take_free(budget, config.max_connections) {
        life.replaced = true;
        *connecting += 1;
        fx.connects.push(ConnectReason::Replacement);
    }
}
