//! What a request holds of a target's pool: a lease on a connection (or a
//! stream slot on one), what comes with it, how it ended, and the place in
//! the queue of one still waiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::PoolConfig;
use crate::conn::{ConnId, Http1Conn, Lifecycle, Protocol, TlsHandshake};
use crate::connect::StreamLimit;
use crate::error::Error;
use crate::h2_client::H2Sender;

/// A sender that hands a connection (or an error) to one waiting request.
pub(crate) type Grant<B> = oneshot::Sender<Result<Granted<B>, Error>>;

/// A connection (HTTP/1) or a stream slot on one (HTTP/2), handed to a request.
#[derive(Debug)]
pub(crate) enum Lease<B> {
    Http1(Http1Conn<B>),
    Http2 {
        tx: H2Sender,
        id: ConnId,
    },
    /// An HTTP/2 connection dedicated to one request (the kill switch).
    Dedicated2 {
        tx: H2Sender,
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
    /// [`PoolConfig::connection_info_extension`].
    pub(crate) info_extension: bool,
}

impl RequestPolicy {
    pub(super) fn of(config: &PoolConfig) -> Self {
        RequestPolicy {
            retry: config.retry,
            response_timeout: config.response_timeout,
            info_extension: config.connection_info_extension,
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
