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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::client::conn::http2;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::config::{PoolConfig, TargetConfig};
use crate::conn::{ConnId, Http1Conn, Http2Conn, Lifecycle, Protocol, TlsHandshake};
use crate::connect::StreamLimit;
use crate::control::{Http2Snapshot, TargetSnapshot};
use crate::error::Error;
use crate::events::{Calmed, CheckedIn, CloseReason, Closed, ConnectReason, PoolEvents, Refused};
use crate::sync::{self, MutexGuard};
use crate::target::Target;

mod checkin;
mod connections;
mod expiry;
#[cfg(test)]
mod model;

use expiry::start_rotation;

/// The first back-off from a target after its server sent
/// `ENHANCE_YOUR_CALM`; doubled each time it comes again soon after.
pub(crate) const CALM_BACKOFF: Duration = Duration::from_secs(1);

/// The longest back-off after `ENHANCE_YOUR_CALM`.
pub(crate) const CALM_BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// Starts connects. Implemented by the pool over its connector, so that a
/// target needs no connector type parameter.
pub(crate) trait Dial<B>: Send + Sync {
    /// Start a connect for `pool`. With `direct`, the connection goes to that
    /// one request and is never pooled (the kill switch).
    fn dial(&self, pool: Arc<TargetPool<B>>, reason: ConnectReason, direct: Option<Grant<B>>);
}

/// A sender that hands a connection (or an error) to one waiting request.
pub(crate) type Grant<B> = oneshot::Sender<Result<Granted<B>, Error>>;

/// A connection (HTTP/1) or a stream slot on one (HTTP/2), handed to a request.
#[derive(Debug)]
pub(crate) enum Lease<B> {
    Http1(Http1Conn<B>),
    Http2 {
        tx: http2::SendRequest<B>,
        id: ConnId,
    },
    /// An HTTP/2 connection dedicated to one request (the kill switch).
    Dedicated2 {
        tx: http2::SendRequest<B>,
        life: Lifecycle,
    },
}

impl<B> Lease<B> {
    pub(crate) fn id(&self) -> ConnId {
        match self {
            Lease::Http1(conn) => conn.life.id,
            Lease::Http2 { id, .. } => *id,
            Lease::Dedicated2 { life, .. } => life.id,
        }
    }
}

/// A lease and what the request should know about it.
#[derive(Debug)]
pub(crate) struct Granted<B> {
    pub(crate) lease: Lease<B>,
    pub(crate) protocol: Protocol,
    pub(crate) tls: Option<TlsHandshake>,
    pub(crate) reused: bool,
    pub(crate) idle_for: Option<Duration>,
    pub(crate) revalidate: bool,
    /// An HTTP/2 connection whose server SETTINGS are not yet known.
    pub(crate) settling: bool,
    pub(crate) dedicated: bool,
    /// What the target's configuration says for the request, read under
    /// the checkout's lock rather than once more per request.
    pub(crate) policy: RequestPolicy,
}

/// The per-request knobs of the configuration in force at checkout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestPolicy {
    pub(crate) retry: bool,
    pub(crate) response_timeout: Option<Duration>,
}

impl RequestPolicy {
    fn of(config: &PoolConfig) -> Self {
        RequestPolicy {
            retry: config.retry,
            response_timeout: config.response_timeout,
        }
    }
}

impl<B> Granted<B> {
    /// A brand-new connection's first lease.
    pub(crate) fn fresh(
        lease: Lease<B>,
        protocol: Protocol,
        tls: Option<TlsHandshake>,
        config: &PoolConfig,
    ) -> Self {
        Granted {
            lease,
            protocol,
            tls,
            reused: false,
            idle_for: None,
            revalidate: false,
            settling: false,
            dedicated: false,
            policy: RequestPolicy::of(config),
        }
    }
}

/// How a request ended with its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The response was read to its end.
    Done,
    /// Not used at all (a waiter went away after it was granted).
    Unused,
    /// Cancelled midway or the body dropped unread.
    Abandoned,
    /// The connection failed.
    Failed,
    /// The HTTP/2 server sent GOAWAY: drain.
    GoAway,
    /// The HTTP/2 server never processed the stream: it refused it
    /// (`REFUSED_STREAM`, when `refused_stream`), or sent a graceful
    /// GOAWAY below it. `refusals` counts the request's refusals so far.
    Refused { refused_stream: bool, refusals: u32 },
    /// The HTTP/2 server sent `ENHANCE_YOUR_CALM`: the connection takes
    /// no new stream, and the target's connects back off.
    Calm,
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
    h2: Vec<Http2Conn<B>>,
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
    /// The target's own settings, and the configuration they resolve to
    /// over the pool-wide one (kept current by `PoolControl::update`).
    own_config: Option<(TargetConfig, Arc<PoolConfig>)>,
    /// The pool was dropped: every connection closes as soon as it is free.
    shut: bool,
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
        fx.close(life, reason, now);
    }

    /// Step up the stream limits learned from refusals whose time has come.
    fn probe_learned_limits(&mut self, now: Instant) {
        let learned = self.h2_learned;
        for conn in &mut self.h2 {
            if conn.learned.probe_at().is_some_and(|at| at <= now) {
                let advertised = conn.advertised(learned);
                conn.learned.probe(advertised, now);
            }
        }
    }

    /// Whether limits learned from refusals keep a connect back: they may
    /// cost one connection more than the advertised limits call for (the
    /// streams in flight and waiting), not more. A server that refuses
    /// below its advertised limit frees its slots later, and the learned
    /// limits step back up.
    fn learned_limits_hold_back(&self) -> bool {
        let (mut live, mut in_flight, mut lowered) = (0, 0, false);
        for conn in self.h2.iter().filter(|c| !c.life.is_draining()) {
            live += 1;
            in_flight += conn.streams;
            lowered |= conn.learned.is_lowered();
        }
        let demand = in_flight + self.waiters.len();
        lowered && live + self.connecting > demand.div_ceil(self.h2_streams_hint.max(1))
    }

    /// The server sent `ENHANCE_YOUR_CALM`: no connect for a while, longer
    /// each time it comes again before the last back-off is twice over.
    fn calm_down(&mut self, id: ConnId, now: Instant, fx: &mut Effects<B>) {
        let backoff = match self.calm_backoff {
            // One connection's signal counts once (a reset stream, then
            // the GOAWAY that ends the connection).
            Some(last) if last.id == id => return,
            Some(last) if now < last.until + last.backoff => {
                (last.backoff * 2).min(CALM_BACKOFF_MAX)
            }
            _ => CALM_BACKOFF,
        };
        self.counters.calm += 1;
        self.calm_backoff = Some(CalmBackoff {
            until: now + backoff,
            backoff,
            id,
        });
        fx.wake_at(Some(now + backoff));
        fx.calmed = Some((id, backoff));
    }

    /// Whether connects wait for an `ENHANCE_YOUR_CALM` back-off; if so,
    /// the reaper is woken when it ends.
    fn calming(&self, now: Instant, fx: &mut Effects<B>) -> bool {
        match self.calm_backoff {
            Some(calm) if calm.until > now => {
                fx.wake_at(Some(calm.until));
                true
            }
            _ => false,
        }
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
}

/// A back-off after `ENHANCE_YOUR_CALM`.
#[derive(Clone, Copy)]
struct CalmBackoff {
    /// No connect before this.
    until: Instant,
    backoff: Duration,
    /// The connection whose server asked for calm.
    id: ConnId,
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
    prewarmed: bool,
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
            prewarmed: life.prewarmed,
        });
    }
}

impl<B> TargetPool<B> {
    pub(crate) fn new(target: Target, common: Arc<Common>, dial: Arc<dyn Dial<B>>) -> Self {
        let protocol = first_protocol(&common.config.load(), &target);
        let host = HeaderValue::from_str(target.authority().as_str())
            .expect("an authority is a valid header value");
        TargetPool {
            target,
            host,
            dial,
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
                own_config: None,
                shut: false,
            }),
            common,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // A panic while holding the lock leaves counts that are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration in force for this target.
    pub(crate) fn config(&self) -> Arc<PoolConfig> {
        let state = self.lock();
        match &state.own_config {
            Some((_, config)) => config.clone(),
            None => self.common.config.load_full(),
        }
    }

    /// Without a per-target override (the common case) this costs no
    /// reference-count traffic: a guard, not an `Arc` clone.
    fn config_of(&self, state: &State<B>) -> ConfigRef {
        match &state.own_config {
            Some((_, config)) => ConfigRef::Target(config.clone()),
            None => ConfigRef::Pool(self.common.config.load()),
        }
    }

    /// Check out at once if a connection is free; otherwise join the queue.
    /// A retry names the connection that failed it in `avoid`: it goes
    /// there again only if nothing else is open or coming.
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
    fn grant(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        now: Instant,
        fx: &mut Effects<B>,
        avoid: Option<ConnId>,
    ) -> Option<Granted<B>> {
        state.probe_learned_limits(now);
        let learned = state.h2_learned;
        if let Some(conn) = state.h2.iter_mut().find(|c| {
            Some(c.life.id) != avoid
                && c.has_room(learned)
                && config
                    .max_requests_per_connection
                    .is_none_or(|max| c.life.served < max)
        }) {
            conn.streams += 1;
            let idle_for = conn.life.checkout(now);
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
            let revalidate = conn.life.needs_revalidation(now, config);
            let idle_for = conn.life.checkout(now);
            let reused = conn.life.served > 1;
            state.counters.checkouts += 1;
            state.counters.reused += u64::from(reused);
            let tls = conn.life.tls;
            return Some(Granted {
                lease: Lease::Http1(conn),
                protocol: Protocol::Http1,
                tls,
                reused,
                idle_for: idle_for.filter(|_| reused),
                revalidate,
                settling: false,
                dedicated: false,
                policy: RequestPolicy::of(config),
            });
        }
        None
    }

    /// Serve parked waiters from whatever capacity there is, FIFO.
    fn dispatch(
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
    fn put_back(&self, state: &mut State<B>, granted: Granted<B>, now: Instant) {
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

    /// Start the connects the queue, pre-warming and limits call for.
    fn plan(&self, state: &mut State<B>, config: &PoolConfig, now: Instant, fx: &mut Effects<B>) {
        if state.shut {
            return;
        }
        let max_open = config.max_connections();
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
            if !tx.is_closed() {
                state.connecting += 1;
                fx.dedicated.push(tx);
            }
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
            if state.waiters.len() <= covered {
                break;
            }
            state.connecting += 1;
            fx.connects.push(ConnectReason::Demand);
        }
        // Pre-warm: keep `min_idle_per_target` connections idle; never
        // with reuse off (the kill switch), when they could serve nobody.
        if config.min_idle_per_target == 0 || !config.reuse {
            return;
        }
        let idle = state.idle.len() + state.h2.iter().filter(|c| c.streams == 0).count();
        let backoff = state.prewarm_backoff.is_some_and(|(until, _)| until > now);
        if let Some((until, _)) = state.prewarm_backoff.filter(|_| backoff) {
            fx.wake_reaper = Some(until);
        }
        while !backoff
            && !calming
            && idle + state.prewarming < config.min_idle_per_target
            && room(state)
        {
            state.connecting += 1;
            state.prewarming += 1;
            fx.connects.push(ConnectReason::Prewarm);
        }
    }

    /// Emit events and start connects, after the lock is released.
    fn finish(self: &Arc<Self>, fx: Effects<B>) {
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
                prewarmed: closed.prewarmed,
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

    /// Give the target its own settings (`None`: the pool-wide ones),
    /// with the configuration they resolve to.
    pub(crate) fn set_own_config(&self, own: Option<(TargetConfig, PoolConfig)>) {
        let mut state = self.lock();
        state.own_config = own.map(|(own, resolved)| (own, Arc::new(resolved)));
        // Before its first connection, what the target speaks follows its
        // own settings (`http2_prior_knowledge`); after, its connections say.
        if state.open == 0 && state.connecting == 0 {
            state.protocol = first_protocol(&self.config_of(&state), &self.target);
        }
        drop(state);
        self.common.reaper_wake.notify_one();
    }

    /// The target's own settings, if it has any.
    pub(crate) fn own_config(&self) -> Option<TargetConfig> {
        self.lock().own_config.as_ref().map(|(own, _)| own.clone())
    }

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
                draining: c.life.is_draining(),
            })
            .collect();
        TargetSnapshot {
            target: self.target.clone(),
            protocol: state.protocol,
            idle,
            active: state.open - idle,
            connecting: state.connecting,
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

/// The configuration in force for a target.
enum ConfigRef {
    Pool(arc_swap::Guard<Arc<PoolConfig>>),
    Target(Arc<PoolConfig>),
}

impl std::ops::Deref for ConfigRef {
    type Target = PoolConfig;

    fn deref(&self) -> &PoolConfig {
        match self {
            ConfigRef::Pool(guard) => guard,
            ConfigRef::Target(config) => config,
        }
    }
}

/// The shared cells an HTTP/2 connection task keeps current.
#[derive(Debug)]
pub(crate) struct Http2Parts {
    pub(crate) limit: Arc<dyn StreamLimit>,
    pub(crate) settled: Arc<std::sync::atomic::AtomicBool>,
}

/// A request parked in a target's queue.
#[derive(Debug)]
pub(crate) struct Waiting<B> {
    /// `None` for a dedicated (kill switch) connect, which is not queued.
    pub(crate) key: Option<u64>,
    pub(crate) rx: oneshot::Receiver<Result<Granted<B>, Error>>,
    /// The target's `checkout_timeout`, read with the rest of its policy.
    pub(crate) timeout: Option<Duration>,
}
