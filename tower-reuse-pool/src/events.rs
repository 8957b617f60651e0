//! The `PoolEvents` hook: what the pool did, as it happens.
//!
//! Every method has a no-op default and `()` implements the trait, so a hook
//! implements only what it needs. Methods are called outside the pool's
//! locks; they must not block.

use std::fmt;
use std::time::Duration;

use crate::conn::{ConnId, Protocol, TlsHandshake};
use crate::error::Error;
use crate::target::Target;

/// Receives the pool's events. See the [module docs](self).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_reuse_pool::events::{CheckedOut, PoolEvents};
///
/// #[derive(Debug, Default)]
/// struct CountReuse(AtomicU64);
///
/// impl PoolEvents for CountReuse {
///     fn on_checkout(&self, event: &CheckedOut<'_>) {
///         if event.reused() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait PoolEvents: Send + Sync + 'static {
    /// A connect started.
    fn on_connect_start(&self, _event: &ConnectStarted<'_>) {}
    /// A connect succeeded and the HTTP handshake is done.
    fn on_connect(&self, _event: &Connected<'_>) {}
    /// A connect failed.
    fn on_connect_error(&self, _event: &ConnectFailed<'_>) {}
    /// A request got a connection.
    fn on_checkout(&self, _event: &CheckedOut<'_>) {}
    /// A request gave its connection back.
    fn on_checkin(&self, _event: &CheckedIn<'_>) {}
    /// A connection closed.
    fn on_close(&self, _event: &Closed<'_>) {}
    /// A request was retried on another connection.
    fn on_retry(&self, _event: &Retried<'_>) {}
    /// A request found a reused connection the server had closed.
    fn on_stale(&self, _event: &Stale<'_>) {}
    /// An HTTP/2 server refused a stream (`REFUSED_STREAM`), or its GOAWAY
    /// left a stream unprocessed: the request goes back to the queue.
    fn on_refused(&self, _event: &Refused<'_>) {}
    /// An HTTP/2 server sent `ENHANCE_YOUR_CALM`: the pool backs off.
    fn on_calm(&self, _event: &Calmed<'_>) {}
}

impl PoolEvents for () {}

/// Two hooks, each told every event, the first first: the way to give a
/// pool several (nest pairs for more), such as one layer's metrics and
/// another's controller.
///
/// ```
/// use tower_reuse_pool::events::{CheckedOut, PoolEvents};
///
/// #[derive(Debug)]
/// struct Log;
///
/// impl PoolEvents for Log {
///     fn on_checkout(&self, event: &CheckedOut<'_>) {
///         println!("{} reused={}", event.target(), event.reused());
///     }
/// }
///
/// let both: &dyn PoolEvents = &(Log, ((), Log));
/// # let _ = both;
/// ```
impl<A: PoolEvents, B: PoolEvents> PoolEvents for (A, B) {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.0.on_connect_start(event);
        self.1.on_connect_start(event);
    }

    fn on_connect(&self, event: &Connected<'_>) {
        self.0.on_connect(event);
        self.1.on_connect(event);
    }

    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        self.0.on_connect_error(event);
        self.1.on_connect_error(event);
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.0.on_checkout(event);
        self.1.on_checkout(event);
    }

    fn on_checkin(&self, event: &CheckedIn<'_>) {
        self.0.on_checkin(event);
        self.1.on_checkin(event);
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.0.on_close(event);
        self.1.on_close(event);
    }

    fn on_retry(&self, event: &Retried<'_>) {
        self.0.on_retry(event);
        self.1.on_retry(event);
    }

    fn on_stale(&self, event: &Stale<'_>) {
        self.0.on_stale(event);
        self.1.on_stale(event);
    }

    fn on_refused(&self, event: &Refused<'_>) {
        self.0.on_refused(event);
        self.1.on_refused(event);
    }

    fn on_calm(&self, event: &Calmed<'_>) {
        self.0.on_calm(event);
        self.1.on_calm(event);
    }
}

/// Why a connect was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectReason {
    /// Requests were waiting and no connection was free.
    Demand,
    /// Keeping `min_idle_per_target` warm connections.
    Prewarm,
    /// Replacing a connection at its `max_lifetime` (make-before-break).
    Rotation,
    /// The kill switch is on: one connection for one request.
    Dedicated,
    /// A request took a connection for its last request under
    /// `max_requests_per_connection` while the target had no spare
    /// connection (fewer idle than busy, no HTTP/2 one with room):
    /// its replacement is opened at once (make-before-break), so the next
    /// request finds a connection ready instead of waiting for a handshake.
    Replacement,
}

/// Why a connection closed.
///
/// A change of configuration at run time closes connections under the
/// reason of the limit that changed: the kill switch turned on closes idle
/// connections as [`KillSwitch`](CloseReason::KillSwitch), a lowered
/// `max_idle_per_target` as [`OverLimit`](CloseReason::OverLimit), a lowered
/// `max_requests_per_connection` retires as [`MaxRequests`](CloseReason::MaxRequests).
/// A connection's lifetime is fixed when it opens: a changed `max_lifetime`
/// applies to the connections opened after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Idle longer than `idle_timeout` (or the server's `Keep-Alive: timeout`).
    IdleTimeout,
    /// Older than `max_lifetime` (as it was when the connection opened), or
    /// than the age its connector gave it (`Established::max_age`).
    MaxLifetime,
    /// Served `max_requests_per_connection` (also after the limit was
    /// lowered at run time).
    MaxRequests,
    /// The server closed it.
    ServerClosed,
    /// The server asked: `Connection: close`, or HTTP/1.0 without keep-alive.
    ServerHint,
    /// The server sent GOAWAY and the connection drained.
    GoAway,
    /// A request or response on it failed.
    Error,
    /// A response body was dropped unread or a request was cancelled midway.
    Abandoned,
    /// More idle connections than `max_idle_per_target` (also after the
    /// limit was lowered at run time).
    OverLimit,
    /// Reuse is switched off: one request per connection, and the idle
    /// connections close when the switch is turned on.
    KillSwitch,
    /// The pool was dropped.
    PoolDropped,
    /// Idle while the pool-wide budget (`PoolConfig::max_connections`) was
    /// spent and another target needed a connection: its slot went there.
    Evicted,
}

impl CloseReason {
    /// Every reason, in a fixed order.
    pub const ALL: [CloseReason; 12] = [
        CloseReason::IdleTimeout,
        CloseReason::MaxLifetime,
        CloseReason::MaxRequests,
        CloseReason::ServerClosed,
        CloseReason::ServerHint,
        CloseReason::GoAway,
        CloseReason::Error,
        CloseReason::Abandoned,
        CloseReason::OverLimit,
        CloseReason::KillSwitch,
        CloseReason::PoolDropped,
        CloseReason::Evicted,
    ];

    pub(crate) fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }

    /// A short snake_case name, for metrics attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::ServerClosed => "server_closed",
            CloseReason::ServerHint => "server_hint",
            CloseReason::GoAway => "goaway",
            CloseReason::Error => "error",
            CloseReason::Abandoned => "abandoned",
            CloseReason::OverLimit => "over_limit",
            CloseReason::KillSwitch => "kill_switch",
            CloseReason::PoolDropped => "pool_dropped",
            CloseReason::Evicted => "evicted",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryReason {
    /// The connection closed before the request was written.
    Unwritten,
    /// The HTTP/2 server refused the stream (`REFUSED_STREAM`).
    RefusedStream,
    /// The HTTP/2 server sent GOAWAY below this stream's id.
    GoAway,
    /// A reused connection closed after an idempotent, empty-bodied request
    /// was written and before any response.
    ClosedIdempotent,
}

impl RetryReason {
    /// A short snake_case name, for metrics attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Unwritten => "unwritten",
            RetryReason::RefusedStream => "refused_stream",
            RetryReason::GoAway => "goaway",
            RetryReason::ClosedIdempotent => "closed_idempotent",
        }
    }
}

macro_rules! event {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[non_exhaustive]
        pub struct $name<'a> {
            pub(crate) target: &'a Target,
            $(pub(crate) $field: $ty,)*
        }

        impl<'a> $name<'a> {
            /// The connection's target.
            pub fn target(&self) -> &'a Target {
                self.target
            }
            $($(#[$fdoc])* pub fn $field(&self) -> $ty { self.$field.clone() })*
        }
    };
}

event! {
    /// A connect started.
    ConnectStarted {
        /// Why it started.
        reason: ConnectReason,
    }
}

event! {
    /// A connection is open and ready for requests.
    Connected {
        /// Its id.
        id: ConnId,
        /// HTTP/1.1 or HTTP/2.
        protocol: Protocol,
        /// The TLS handshake, for an encrypted connection.
        tls: Option<TlsHandshake>,
        /// How long the TLS handshake took, for a connection the pool's
        /// TLS connector encrypted (part of `duration`).
        tls_time: Option<Duration>,
        /// Why it was opened.
        reason: ConnectReason,
        /// Connector (TCP, TLS) plus HTTP handshake time.
        duration: Duration,
    }
}

event! {
    /// A connect failed.
    ConnectFailed {
        /// Why it was started.
        reason: ConnectReason,
        /// How long it ran.
        duration: Duration,
        /// What failed.
        error: Error,
    }
}

event! {
    /// A request got a connection.
    CheckedOut {
        /// The connection.
        id: ConnId,
        /// Whether the connection had served requests before.
        reused: bool,
        /// How long the request waited for it.
        wait: Duration,
        /// How long the connection had been idle (reused HTTP/1 connections).
        idle_for: Option<Duration>,
        /// HTTP/1.1 or HTTP/2.
        protocol: Protocol,
        /// The connection's TLS handshake, if it is encrypted.
        tls: Option<TlsHandshake>,
    }
}

event! {
    /// A request gave its connection back.
    CheckedIn {
        /// The connection.
        id: ConnId,
        /// Whether it stays in the pool.
        reusable: bool,
    }
}

event! {
    /// A connection closed.
    Closed {
        /// The connection.
        id: ConnId,
        /// Why.
        reason: CloseReason,
        /// How long it was open.
        lifetime: Duration,
        /// How many requests it served.
        requests_served: u64,
        /// How long it had carried no request when it closed (since its
        /// last request ended, or since it opened if it served none);
        /// `None` if a request was on it, as when it closes at check-in.
        /// For a [`ServerClosed`](CloseReason::ServerClosed) connection,
        /// the idle age at which the server closed it (as the pool saw it).
        idle_for: Option<Duration>,
        /// Why it was opened.
        opened_for: ConnectReason,
    }
}

impl Closed<'_> {
    /// Whether it was opened to pre-warm the pool.
    pub fn prewarmed(&self) -> bool {
        self.opened_for == ConnectReason::Prewarm
    }
}

event! {
    /// A request was retried once, on another connection.
    Retried {
        /// Why.
        reason: RetryReason,
        /// The connection that failed it.
        failed_on: ConnId,
    }
}

event! {
    /// A request found a reused connection the server had closed: before
    /// its bytes were written (the request goes to another connection,
    /// nothing reached a server), or, for an idempotent empty-bodied
    /// request, after they were written and before any response (retried:
    /// [`RetryReason::ClosedIdempotent`], reported by [`Retried`] too).
    Stale {
        /// The connection.
        id: ConnId,
        /// How long the connection had been idle when the request took it
        /// (as [`CheckedOut::idle_for`] reports it).
        idle_for: Option<Duration>,
        /// Whether the request had been written.
        written: bool,
    }
}

event! {
    /// A stream the server guarantees it never processed: refused
    /// (`REFUSED_STREAM`), or above the last stream id of a graceful GOAWAY.
    /// The request is queued again (this is not its one retry), until its
    /// checkout timeout or its refusal bound.
    Refused {
        /// The connection that refused it.
        failed_on: ConnId,
        /// Whether the stream was refused (`REFUSED_STREAM`), rather than
        /// left unprocessed by a GOAWAY.
        refused_stream: bool,
        /// How many times this request has been refused so far, this one included.
        refusals: u32,
        /// The streams the connection carries from now on: the streams in
        /// flight when the server refused this one (which it had accepted),
        /// at most its advertised limit. Stepped back up later.
        effective_limit: usize,
        /// The connection's advertised `SETTINGS_MAX_CONCURRENT_STREAMS`.
        advertised_limit: usize,
    }
}

event! {
    /// An HTTP/2 server answered `ENHANCE_YOUR_CALM` (on a stream or in a
    /// GOAWAY): the connection takes no new stream, and no connect to the
    /// target starts before `backoff` has passed.
    Calmed {
        /// The connection.
        id: ConnId,
        /// How long connects to the target wait.
        backoff: Duration,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Notes the events it is told, by name.
    #[derive(Debug)]
    struct Note(&'static str, &'static Mutex<Vec<&'static str>>);

    impl PoolEvents for Note {
        fn on_checkin(&self, _event: &CheckedIn<'_>) {
            self.1.lock().unwrap().push(self.0);
        }

        fn on_close(&self, _event: &Closed<'_>) {
            self.1.lock().unwrap().push(self.0);
        }

        fn on_stale(&self, _event: &Stale<'_>) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[test]
    fn a_pair_of_hooks_tells_both_in_order() {
        static SEEN: Mutex<Vec<&str>> = Mutex::new(Vec::new());
        let target = Target::from_uri(&"http://127.0.0.1:1".parse().unwrap(), None).unwrap();
        let hooks = (Note("a", &SEEN), ((), Note("b", &SEEN)));
        hooks.on_checkin(&CheckedIn {
            target: &target,
            id: ConnId(1),
            reusable: true,
        });
        hooks.on_close(&Closed {
            target: &target,
            id: ConnId(1),
            reason: CloseReason::IdleTimeout,
            lifetime: Duration::from_secs(1),
            requests_served: 1,
            idle_for: None,
            opened_for: ConnectReason::Demand,
        });
        hooks.on_stale(&Stale {
            target: &target,
            id: ConnId(1),
            idle_for: None,
            written: false,
        });
        assert_eq!(*SEEN.lock().unwrap(), ["a", "b", "a", "b", "a", "b"]);
    }
}
