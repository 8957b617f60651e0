//! One target's connections, waiters and connects: the checkout rules.
//!
//! - idle HTTP/1 connections are reused LIFO, so warm ones stay warm;
//! - waiters are served FIFO, and a new arrival never takes a connection
//!   from a parked waiter (idle connections exist only when nobody waits);
//! - a connect serves the queue, not the caller that started it, and no
//!   more connects run than there are uncovered waiters;
//! - a connect error reaches every waiter no other connect covers.
//!
//! All of it happens under one short lock per target; events are emitted
//! and connects started after the lock is released.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::conn::{ConnId, Http1Conn, Http2Conn, Lifecycle, Protocol, TlsHandshake};
use crate::events::{Calmed, CheckedIn, CloseReason, Closed, ConnectReason, Refused};
use crate::sync::{self, MutexGuard};
use crate::target::Target;

mod budget;
mod checkin;
mod checkout;
mod common;
mod connections;
mod expiry;
mod h2;
mod lease;
#[cfg(test)]
mod model;
mod settings;
mod slots;
mod snapshot;
mod warm;
pub use warm::WarmUp;

use budget::Claimant;
pub(crate) use budget::{Evictor, Group};
pub(crate) use common::Common;
use h2::CalmBackoff;
pub(crate) use lease::{Grant, Granted, Http2Parts, Lease, Outcome, RequestPolicy, Waiting};
use settings::Settings;
pub(crate) use settings::{Inherited, layered};
pub(crate) use slots::Follow;
use slots::Slots;

use expiry::start_rotation;

/// Starts connects. Implemented by the pool over its connector, so that a
/// target needs no connector type parameter.
pub(crate) trait Dial<B>: Send + Sync {
    /// Start a connect for `pool`. With `direct`, the connection goes to that
    /// one request and is never pooled (the kill switch).
    fn dial(&self, pool: Arc<TargetPool<B>>, reason: ConnectReason, direct: Option<Grant<B>>);
}

struct Waiter<B> {
    key: u64,
    tx: Grant<B>,
    /// A connection this request should not go back to (it refused it).
    avoid: Option<ConnId>,
}

#[derive(Default)]
struct Counters {
    opened: u64,
    reused: u64,
    checkouts: u64,
    connect_errors: u64,
    retries: u64,
    stale_skips: u64,
    refused: u64,
    requeued: u64,
    calm: u64,
    tls_full: u64,
    tls_resumed: u64,
    closed: [u64; CloseReason::ALL.len()],
}

impl Counters {
    /// A connection opened, with the TLS handshake it made.
    fn opened(&mut self, tls: Option<TlsHandshake>) {
        self.opened += 1;
        match tls {
            Some(TlsHandshake::Resumed) => self.tls_resumed += 1,
            Some(_) => self.tls_full += 1,
            None => {}
        }
    }
}

struct State<B> {
    idle: Vec<Http1Conn<B>>,
    h2: Vec<Http2Conn>,
    waiters: VecDeque<Waiter<B>>,
    next_waiter: u64,
    /// Connects in flight, of which `prewarming` are pre-warm connects.
    connecting: usize,
    prewarming: usize,
    /// Open connections: idle, active or draining, HTTP/1 and HTTP/2.
    open: usize,
    /// Dedicated (kill switch) connections in use, and requests waiting for
    /// one: they count against the same limits as pooled connections.
    dedicated_open: usize,
    dedicated_waiters: VecDeque<Grant<B>>,
    protocol: Option<Protocol>,
    /// Last seen HTTP/2 stream limit, to judge how much a connect covers.
    h2_streams_hint: usize,
    /// The stream limit this target's servers advertised, once one has;
    /// new connections carry that many streams before their own SETTINGS.
    h2_learned: Option<usize>,
    /// Rotation replacements that arrived while the connection to retire was checked out.
    retirements_due: usize,
    prewarm_backoff: Option<(Instant, Duration)>,
    /// After `ENHANCE_YOUR_CALM`: no connect before this.
    calm_backoff: Option<CalmBackoff>,
    last_active: Instant,
    counters: Counters,
    /// The target's own settings and its partition's, and the
    /// configuration they resolve to over the pool-wide one (kept current
    /// by `PoolControl::update`); `None` while neither is set.
    settings: Option<Settings>,
    /// Its share of the pool-wide connection budget.
    slots: Slots,
    /// The pool was dropped: every connection closes as soon as it is free.
    shut: bool,
    /// Retired (`PoolControl::retire`): its own settings are the kill
    /// switch, and it is forgotten once empty all the same.
    retired: bool,
}

impl<B> State<B> {
    /// Account for a connection that left the pool, and report it.
    fn closed(
        &mut self,
        life: &mut Lifecycle,
        reason: CloseReason,
        now: Instant,
        fx: &mut Effects<B>,
    ) {
        self.open -= 1;
        self.counters.closed[reason.index()] += 1;
        self.slot_closing(life.id, fx);
        fx.close(life, reason, now);
    }

    /// Keep no more idle HTTP/1.1 connections than `max_idle_per_target`,
    /// the oldest going first, and none with reuse off (the kill switch).
    fn trim_idle(&mut self, config: &PoolConfig, now: Instant, fx: &mut Effects<B>) {
        if !config.reuse {
            while let Some(mut conn) = self.idle.pop() {
                self.closed(&mut conn.life, CloseReason::KillSwitch, now, fx);
            }
        } else if let Some(max) = config.max_idle_per_target {
            while self.idle.len() > max {
                let mut conn = self.idle.remove(0);
                self.closed(&mut conn.life, CloseReason::OverLimit, now, fx);
            }
        }
    }
}

/// One target's pool.
pub(crate) struct TargetPool<B> {
    pub(crate) target: Target,
    pub(crate) host: HeaderValue,
    pub(crate) common: Arc<Common>,
    dial: Arc<dyn Dial<B>>,
    state: sync::Mutex<State<B>>,
    /// Itself, for the budget's queue of waiting targets.
    me: Weak<dyn Claimant>,
}

/// Work gathered under the lock and done after it.
struct Effects<B> {
    closed: Vec<ClosedInfo>,
    connects: Vec<ConnectReason>,
    /// Dedicated (kill switch) connects, each for one waiting request.
    dedicated: Vec<Grant<B>>,
    checkin: Option<(ConnId, bool)>,
    wake_reaper: Option<Instant>,
    refused: Option<RefusedInfo>,
    calmed: Option<(ConnId, Duration)>,
    /// Budget slots given back, and the reservation they counted against.
    freed: usize,
    group: Option<Group>,
    /// The target waits for a slot: close another's idle connection.
    evict: bool,
}

/// A refusal, for its event.
struct RefusedInfo {
    id: ConnId,
    refused_stream: bool,
    refusals: u32,
    effective_limit: usize,
    advertised_limit: usize,
}

struct ClosedInfo {
    id: ConnId,
    reason: CloseReason,
    lifetime: Duration,
    served: u64,
    idle_for: Option<Duration>,
    opened_for: ConnectReason,
}

impl<B> Effects<B> {
    fn new() -> Self {
        Effects {
            closed: Vec::new(),
            connects: Vec::new(),
            dedicated: Vec::new(),
            checkin: None,
            wake_reaper: None,
            refused: None,
            calmed: None,
            freed: 0,
            group: None,
            evict: false,
        }
    }

    /// Wake the reaper at `at` too.
    fn wake_at(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.wake_reaper = Some(self.wake_reaper.map_or(at, |w| w.min(at)));
        }
    }

    fn close(&mut self, life: &mut Lifecycle, reason: CloseReason, now: Instant) {
        life.close();
        self.closed.push(ClosedInfo {
            id: life.id,
            reason,
            lifetime: now.saturating_duration_since(life.created),
            served: life.served,
            idle_for: life.idle_for(now),
            opened_for: life.opened_for,
        });
    }
}

impl<B: Send + 'static> TargetPool<B> {
    pub(crate) fn new(target: Target, common: Arc<Common>, dial: Arc<dyn Dial<B>>) -> Arc<Self> {
        let protocol = first_protocol(&common.config.load(), &target);
        let host = HeaderValue::from_str(target.authority().as_str())
            .expect("an authority is a valid header value");
        Arc::new_cyclic(|me: &Weak<Self>| TargetPool {
            target,
            host,
            dial,
            me: me.clone(),
            state: sync::Mutex::new(State {
                idle: Vec::new(),
                h2: Vec::new(),
                waiters: VecDeque::new(),
                next_waiter: 0,
                connecting: 0,
                prewarming: 0,
                open: 0,
                dedicated_open: 0,
                dedicated_waiters: VecDeque::new(),
                protocol,
                h2_streams_hint: 100,
                h2_learned: None,
                retirements_due: 0,
                prewarm_backoff: None,
                calm_backoff: None,
                last_active: Instant::now(),
                counters: Counters::default(),
                settings: None,
                slots: Slots::default(),
                retired: false,
                shut: false,
            }),
            common,
        })
    }
}

impl<B> TargetPool<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic while holding the lock leaves counts that are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start the connects the queue, pre-warming and limits call for.
    fn plan(&self, state: &mut State<B>, config: &PoolConfig, now: Instant, fx: &mut Effects<B>) {
        if state.shut {
            return;
        }
        let max_open = config.per_target_limit();
        let max_connecting = config.max_connecting();
        let room = |state: &State<B>| {
            state.connecting < max_connecting
                && state.open + state.dedicated_open + state.connecting < max_open
        };
        // Dedicated (kill switch) requests, FIFO, within the same limits.
        while room(state) {
            let Some(tx) = state.dedicated_waiters.pop_front() else {
                break;
            };
            if tx.is_closed() {
                continue;
            }
            if !self.take_slot(state, config, true, fx) {
                state.dedicated_waiters.push_front(tx);
                break;
            }
            state.connecting += 1;
            fx.dedicated.push(tx);
        }
        // Demand: waiters that no connect in flight (or settling HTTP/2
        // connection) will serve; none while the server asks for calm.
        let calming = state.calming(now, fx);
        while !calming && room(state) {
            let covered = match state.protocol {
                // Until the first connection tells HTTP/1 from HTTP/2, one
                // connect probes: a cold ALPN burst opens one socket, not N.
                None => {
                    if state.connecting > 0 {
                        usize::MAX
                    } else {
                        0
                    }
                }
                Some(Protocol::Http1) => state.connecting,
                Some(Protocol::Http2) => {
                    if !config.http2_scale_out && !state.h2.is_empty()
                        || state.learned_limits_hold_back()
                    {
                        usize::MAX
                    } else {
                        // Saturating: a server without a stream limit
                        // advertises `usize::MAX`.
                        let settling = state
                            .h2
                            .iter()
                            .filter(|c| !c.life.is_draining() && !c.is_settled())
                            .map(|c| state.h2_streams_hint.saturating_sub(c.streams))
                            .fold(0, usize::saturating_add);
                        state
                            .connecting
                            .saturating_mul(state.h2_streams_hint)
                            .saturating_add(settling)
                    }
                }
            };
            if state.waiters.len() <= covered || !self.take_slot(state, config, true, fx) {
                break;
            }
            state.connecting += 1;
            fx.connects.push(ConnectReason::Demand);
        }
        // Pre-warm: keep `min_idle_per_target` connections idle and
        // `min_connections_per_target` open; never with reuse off (the
        // kill switch), when they could serve nobody.
        if config.min_idle_per_target == 0 && config.min_connections_per_target == 0
            || !config.reuse
        {
            return;
        }
        let idle = state.idle.len() + state.h2.iter().filter(|c| c.streams == 0).count();
        let backoff = state.prewarm_backoff.is_some_and(|(until, _)| until > now);
        if let Some((until, _)) = state.prewarm_backoff.filter(|_| backoff) {
            fx.wake_reaper = Some(until);
        }
        while !backoff
            && !calming
            && (idle + state.prewarming < config.min_idle_per_target
                || state.open + state.connecting < config.min_connections_per_target)
            && room(state)
            && self.take_slot(state, config, false, fx)
        {
            state.connecting += 1;
            state.prewarming += 1;
            fx.connects.push(ConnectReason::Prewarm);
        }
    }

    /// Emit events and start connects, after the lock is released; then
    /// hand the slots given back to the targets waiting for them, and close
    /// idle connections for them, in a loop.
    fn finish(self: &Arc<Self>, fx: Effects<B>) {
        let follow = self.finish_local(fx);
        if follow.grants.is_empty() && follow.evictions == 0 {
            return;
        }
        self.common.follow(follow);
    }

    /// [`finish`](Self::finish) for this target alone: what follows for
    /// others is returned.
    fn finish_local(self: &Arc<Self>, fx: Effects<B>) -> Follow {
        let follow = self.give_back(&fx);
        let events = &self.common.events;
        for closed in &fx.closed {
            #[cfg(feature = "tracing")]
            tracing::debug!(target = %self.target, id = %closed.id, reason = %closed.reason, "connection closed");
            events.on_close(&Closed {
                target: &self.target,
                id: closed.id,
                reason: closed.reason,
                lifetime: closed.lifetime,
                requests_served: closed.served,
                idle_for: closed.idle_for,
                opened_for: closed.opened_for,
            });
        }
        if let Some(refused) = &fx.refused {
            events.on_refused(&Refused {
                target: &self.target,
                failed_on: refused.id,
                refused_stream: refused.refused_stream,
                refusals: refused.refusals,
                effective_limit: refused.effective_limit,
                advertised_limit: refused.advertised_limit,
            });
        }
        if let Some((id, backoff)) = fx.calmed {
            #[cfg(feature = "tracing")]
            tracing::debug!(target = %self.target, %id, ?backoff, "server asked for calm");
            events.on_calm(&Calmed {
                target: &self.target,
                id,
                backoff,
            });
        }
        if let Some((id, reusable)) = fx.checkin {
            events.on_checkin(&CheckedIn {
                target: &self.target,
                id,
                reusable,
            });
        }
        if let Some(deadline) = fx.wake_reaper {
            self.common.schedule(deadline);
        }
        for reason in fx.connects {
            self.dial.dial(self.clone(), reason, None);
        }
        for grant in fx.dedicated {
            self.dial
                .dial(self.clone(), ConnectReason::Dedicated, Some(grant));
        }
        follow
    }

    /// A waiter left before it was served.
    pub(crate) fn cancel_waiter(&self, key: u64) {
        let mut state = self.lock();
        if let Some(pos) = state.waiters.iter().position(|w| w.key == key) {
            state.waiters.remove(pos);
        }
    }

    pub(crate) fn count_retry(&self) {
        self.lock().counters.retries += 1;
    }

    /// A request the server never processed goes back to the queue.
    pub(crate) fn count_requeue(&self) {
        self.lock().counters.requeued += 1;
    }

    /// A request moved on from a pooled connection found closed before
    /// anything was written (not a retry: nothing reached a server).
    pub(crate) fn count_stale_skip(&self) {
        self.lock().counters.stale_skips += 1;
    }
}

/// What a target speaks before its first connection says: HTTP/2 by prior
/// knowledge, HTTP/1.1 over plain TCP, unknown until ALPN over TLS.
fn first_protocol(config: &PoolConfig, target: &Target) -> Option<Protocol> {
    if config.http2_prior_knowledge {
        Some(Protocol::Http2)
    } else if !target.is_https() {
        Some(Protocol::Http1)
    } else {
        None
    }
}
