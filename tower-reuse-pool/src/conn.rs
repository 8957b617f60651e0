//! The connection lifecycle: one state enum, one set of transitions.
//!
//! ```text
//! Connecting -> Idle <-> Active(n) -> Draining -> Closed
//!                 \-> Revalidating -/
//! ```
//! Every other module asks a [`Lifecycle`] about a connection; none keeps
//! shadow state.

use std::fmt;
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::events::{CloseReason, ConnectReason};
pub(crate) use crate::learned::LearnedLimit;

/// A connection's id, unique within its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1: one request at a time.
    Http1,
    /// HTTP/2: concurrent streams up to the server's limit.
    Http2,
}

impl Protocol {
    /// `"1.1"` or `"2"`, as `network.protocol.version` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "1.1",
            Protocol::Http2 => "2",
        }
    }
}

/// The TLS handshake a connection made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsHandshake {
    /// A full handshake.
    Full,
    /// A full handshake after the server asked for another key share
    /// (HelloRetryRequest): one more round trip.
    FullWithRetry,
    /// A resumed session: no certificate exchange.
    Resumed,
}

impl TlsHandshake {
    /// `"full"`, `"full_with_retry"` or `"resumed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsHandshake::Full => "full",
            TlsHandshake::FullWithRetry => "full_with_retry",
            TlsHandshake::Resumed => "resumed",
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// The connector and the HTTP handshake are running.
    Connecting,
    /// Open, in the pool, serving nothing.
    Idle,
    /// Idle too long: checked for a pending close before it is reused.
    Revalidating,
    /// Serving this many requests (always 1 for HTTP/1.1).
    Active(u32),
    /// Takes no new requests; closes when its last request ends.
    Draining,
    /// Gone.
    Closed,
}

/// A connection's state and metadata.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub(crate) id: ConnId,
    pub(crate) protocol: Protocol,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    pub(crate) served: u64,
    /// The TLS handshake, for encrypted connections.
    pub(crate) tls: Option<TlsHandshake>,
    state: State,
    /// The server's `Keep-Alive: timeout`, less a safety margin.
    server_idle_limit: Option<Duration>,
    /// When `max_lifetime` (with this connection's jitter) runs out.
    lifetime_deadline: Option<Instant>,
    /// A replacement is being connected (make-before-break).
    pub(crate) rotating: bool,
    /// Some response said the connection must not be reused.
    pub(crate) reusable: bool,
    /// Why it was opened.
    pub(crate) opened_for: ConnectReason,
    /// A request is on it (kept while it drains, so that a drained
    /// connection's close tells whether it still carried one).
    busy: bool,
    /// A replacement was started ahead of its last request
    /// (`max_requests_per_connection`).
    pub(crate) replaced: bool,
}

impl Lifecycle {
    /// A connection that has just connected: Connecting -> Idle.
    pub(crate) fn established(
        id: ConnId,
        protocol: Protocol,
        now: Instant,
        config: &PoolConfig,
        opened_for: ConnectReason,
    ) -> Self {
        // Deadlines past what an `Instant` holds never come: checked, never
        // a panic, whatever a connector or a configuration says.
        let lifetime_deadline = config.max_lifetime.and_then(|max| {
            let jitter = max.mul_f64(config.lifetime_jitter * fastrand::f64());
            now.checked_add(max.saturating_sub(jitter))
        });
        Lifecycle {
            id,
            protocol,
            created: now,
            last_used: now,
            served: 0,
            tls: None,
            state: State::Idle,
            server_idle_limit: None,
            lifetime_deadline,
            rotating: false,
            reusable: true,
            opened_for,
            busy: false,
            replaced: false,
        }
    }

    /// What the connector reported: the TLS handshake, and an age at which
    /// the connection retires even before `max_lifetime`.
    pub(crate) fn with_transport(
        mut self,
        tls: Option<TlsHandshake>,
        max_age: Option<Duration>,
    ) -> Self {
        self.tls = tls;
        if let Some(cap) = max_age.and_then(|age| self.created.checked_add(age)) {
            self.lifetime_deadline = Some(self.lifetime_deadline.map_or(cap, |d| d.min(cap)));
        }
        self
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    fn transition(&mut self, to: State) {
        use State::*;
        let allowed = matches!(
            (self.state, to),
            (Connecting, Idle)
                | (Idle | Revalidating, Active(1))
                | (Idle, Revalidating)
                | (Active(_), Active(_))
                | (Active(1), Idle)
                | (Idle | Revalidating | Active(_), Draining)
                | (_, Closed)
        );
        debug_assert!(allowed, "{}: {:?} -> {:?}", self.id, self.state, to);
        match to {
            Active(_) => self.busy = true,
            Idle | Revalidating => self.busy = false,
            Connecting | Draining | Closed => {}
        }
        self.state = to;
    }

    /// Idle (or Revalidating) or Active(n) -> Active(n + 1). Returns how long
    /// the connection had been idle.
    pub(crate) fn checkout(&mut self, now: Instant) -> Option<Duration> {
        self.served += 1;
        match self.state {
            State::Active(n) => {
                self.transition(State::Active(n + 1));
                None
            }
            _ => {
                self.transition(State::Active(1));
                Some(now.saturating_duration_since(self.last_used))
            }
        }
    }

    /// An idle HTTP/1.1 connection taken for a request: Idle -> Active(1),
    /// through Revalidating when it has been idle `revalidate_after_idle`
    /// or longer. Returns how long it had been idle, and whether to
    /// revalidate it: one reading of its idle time for both.
    pub(crate) fn checkout_idle(&mut self, now: Instant, config: &PoolConfig) -> (Duration, bool) {
        let idle = now.saturating_duration_since(self.last_used);
        let stale = config
            .revalidate_after_idle
            .is_some_and(|after| idle >= after);
        if stale && self.state == State::Idle {
            self.transition(State::Revalidating);
        }
        self.served += 1;
        self.transition(State::Active(1));
        (idle, stale)
    }

    /// Active(n) -> Active(n - 1) or Idle; Draining stays Draining.
    pub(crate) fn checkin(&mut self, now: Instant) {
        self.last_used = now;
        match self.state {
            State::Active(1) => self.transition(State::Idle),
            State::Active(n) => self.transition(State::Active(n - 1)),
            _ => {}
        }
    }

    /// Takes no new requests from now on.
    pub(crate) fn drain(&mut self) {
        if !matches!(self.state, State::Draining | State::Closed) {
            self.transition(State::Draining);
        }
    }

    pub(crate) fn close(&mut self) {
        self.transition(State::Closed);
    }

    /// How long it has carried no request (since its last request ended,
    /// or since it opened), or `None` while a request is on it.
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        (!self.busy).then(|| now.saturating_duration_since(self.last_used))
    }

    pub(crate) fn is_draining(&self) -> bool {
        matches!(self.state, State::Draining | State::Closed)
    }

    /// Record the server's `Keep-Alive: timeout`: expire before the server.
    pub(crate) fn set_server_idle_limit(&mut self, server: Duration) {
        let margin = (server / 5).clamp(Duration::from_millis(250), Duration::from_secs(2));
        self.server_idle_limit = Some(server.saturating_sub(margin));
    }

    /// When an idle connection expires (`idle_timeout` or the server's hint).
    pub(crate) fn idle_deadline(&self, config: &PoolConfig) -> Option<Instant> {
        let limit = match (config.idle_timeout, self.server_idle_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        limit.and_then(|limit| self.last_used.checked_add(limit))
    }

    pub(crate) fn lifetime_deadline(&self) -> Option<Instant> {
        self.lifetime_deadline
    }

    /// The next time the reaper must look at this connection: its idle
    /// expiry (when `idle`) or the start of its rotation, whichever is first.
    pub(crate) fn next_deadline(&self, config: &PoolConfig, idle: bool) -> Option<Instant> {
        let idle = self.idle_deadline(config).filter(|_| idle);
        let rotation = self.lifetime_deadline.filter(|_| !self.rotating);
        match (idle, rotation) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the connection may take another request, and if not, why.
    pub(crate) fn retire_reason(&self, config: &PoolConfig) -> Option<CloseReason> {
        if !config.reuse {
            Some(CloseReason::KillSwitch)
        } else if !self.reusable {
            Some(CloseReason::ServerHint)
        } else if config
            .max_requests_per_connection
            .is_some_and(|max| self.served >= max)
        {
            Some(CloseReason::MaxRequests)
        } else if self.is_draining() {
            Some(if self.rotating {
                CloseReason::MaxLifetime
            } else {
                CloseReason::GoAway
            })
        } else {
            None
        }
    }
}

/// An HTTP/1.1 connection while it is in the pool or checked out.
#[derive(Debug)]
pub(crate) struct Http1Conn<B> {
    pub(crate) tx: http1::SendRequest<B>,
    pub(crate) life: Lifecycle,
}

/// An HTTP/2 connection: shared by its streams, always in the pool.
#[derive(Debug)]
pub(crate) struct Http2Conn {
    pub(crate) tx: crate::h2_client::H2Sender,
    pub(crate) life: Lifecycle,
    /// Streams checked out now.
    pub(crate) streams: usize,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, read live.
    pub(crate) limit: std::sync::Arc<dyn crate::connect::StreamLimit>,
    /// Whether the server's SETTINGS have been seen; until then the
    /// connection carries one stream.
    pub(crate) settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// What the server's refusals taught about its real limit.
    pub(crate) learned: LearnedLimit,
}

impl Http2Conn {
    /// Streams this connection may carry: the server's limit once its
    /// SETTINGS have been seen (less what its refusals taught), until then
    /// the limit this target's servers advertised before (`learned`), or
    /// one stream.
    pub(crate) fn capacity(&self, learned: Option<usize>) -> usize {
        self.learned.cap(self.advertised(learned))
    }

    /// The server's advertised limit, as [`capacity`](Self::capacity) reads it.
    pub(crate) fn advertised(&self, learned: Option<usize>) -> usize {
        if self.is_settled() {
            self.limit.current()
        } else {
            learned.unwrap_or(1)
        }
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn has_room(&self, learned: Option<usize>, now: Instant) -> bool {
        !self.life.is_draining()
            && !self.tx.is_closed()
            && self.streams + self.learned.lingering(now) < self.capacity(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 connection opened on demand.
    fn opened(id: ConnId, now: Instant, config: &PoolConfig) -> Lifecycle {
        Lifecycle::established(id, Protocol::Http1, now, config, ConnectReason::Demand)
    }

    #[tokio::test(start_paused = true)]
    async fn walks_the_lifecycle() {
        let config = PoolConfig::default().revalidate_after_idle(Some(Duration::from_secs(2)));
        let now = Instant::now();
        let mut life = opened(ConnId(1), now, &config);
        assert_eq!(life.state(), State::Idle);
        assert_eq!(life.checkout(now), Some(Duration::ZERO));
        assert_eq!(life.state(), State::Active(1));
        assert_eq!(life.idle_for(now), None, "a request is on it");
        life.checkin(now);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(life.idle_for(Instant::now()), Some(Duration::from_secs(3)));
        assert_eq!(
            life.checkout_idle(Instant::now(), &config),
            (Duration::from_secs(3), true)
        );
        assert_eq!(life.state(), State::Active(1));
        life.drain();
        assert_eq!(life.state(), State::Draining);
        assert_eq!(life.retire_reason(&config), Some(CloseReason::GoAway));
        life.close();
        assert_eq!(life.state(), State::Closed);
        assert_eq!(life.idle_for(now), None, "closed with its request on it");
        assert_eq!(life.served, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn server_keep_alive_hint_expires_before_the_server() {
        let config = PoolConfig::default();
        let now = Instant::now();
        let mut life = opened(ConnId(1), now, &config);
        assert_eq!(
            life.idle_deadline(&config),
            Some(now + Duration::from_secs(55))
        );
        life.set_server_idle_limit(Duration::from_secs(5));
        assert_eq!(
            life.idle_deadline(&config),
            Some(now + Duration::from_secs(4))
        );
        life.set_server_idle_limit(Duration::from_secs(1));
        assert_eq!(
            life.idle_deadline(&config),
            Some(now + Duration::from_millis(750))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lifetime_jitter_stays_within_bounds() {
        let config = PoolConfig::default()
            .max_lifetime(Some(Duration::from_secs(100)))
            .lifetime_jitter(0.2);
        let now = Instant::now();
        for i in 0..100 {
            let life = opened(ConnId(i), now, &config);
            let deadline = life.lifetime_deadline().unwrap();
            assert!(deadline <= now + Duration::from_secs(100));
            assert!(deadline >= now + Duration::from_secs(80));
        }
    }
}
