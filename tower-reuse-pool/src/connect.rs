//! Opening connections: the [`Connect`] trait connectors implement, the HTTP
//! handshake, and the task that drives each connection and reports its end.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Uri;
use http_body::Body;
use hyper::client::conn::http1;
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::conn::{ConnId, Http1Conn, Lifecycle, Protocol, TlsHandshake};
use crate::error::{BoxError, Error};
use crate::events::{ConnectFailed, ConnectReason, ConnectStarted, Connected};
use crate::h2_client::{self, ASSUMED_MAX_STREAMS, H2Sender};
use crate::target::Target;
use crate::target_pool::{Dial, Grant, Granted, Http2Parts, Lease, TargetPool};

/// Opens transport connections (TCP, TLS) to a pool's targets.
///
/// Every `tower::Service<Uri>` whose response is a hyper IO that reports
/// [`Connection`] metadata (hyper-util's `HttpConnector`, hyper-rustls'
/// `HttpsConnector`, ...) is a `Connect`: it is called with
/// `scheme://authority/`. Implement the trait directly to see the whole
/// [`Target`] (its [`Partition`](crate::Partition) in particular) and to
/// report TLS facts, as `tls::TlsConnector` (feature `tls`) does.
pub trait Connect: Clone + Send + Sync + 'static {
    /// The connection's byte stream.
    type Io: Read + Write + Unpin + Send + 'static;
    /// A connect in progress.
    type Future: Future<Output = Result<Established<Self::Io>, ConnectError>> + Send + 'static;

    /// Open a connection to `target`.
    fn connect(&self, target: &Target) -> Self::Future;
}

impl<S> Connect for S
where
    S: Service<Uri> + Clone + Send + Sync + 'static,
    S::Response: Read + Write + Connection + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Io = S::Response;
    type Future =
        Pin<Box<dyn Future<Output = Result<Established<S::Response>, ConnectError>> + Send>>;

    fn connect(&self, target: &Target) -> Self::Future {
        let mut service = self.clone();
        let uri = target.connect_uri();
        let unverifiable = target.is_https() && target.endpoint().is_some();
        Box::pin(async move {
            if unverifiable {
                return Err(ConnectError::tls(
                    "an https target with an endpoint address needs a connector that \
                     verifies the certificate against the target's name (the pool's \
                     TlsConnector): a URI connector would be handed the address",
                ));
            }
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(ConnectError::transport)?;
            let io = service.call(uri).await.map_err(ConnectError::transport)?;
            let h2 = io.connected().is_negotiated_h2();
            Ok(Established::new(io).negotiated_h2(h2))
        })
    }
}

/// A transport connection a [`Connect`] opened, with what the pool should
/// know about it.
#[derive(Debug)]
pub struct Established<Io> {
    pub(crate) io: Io,
    negotiated_h2: bool,
    tls: Option<TlsHandshake>,
    tls_time: Option<Duration>,
    pub(crate) max_age: Option<Duration>,
}

impl<Io> Established<Io> {
    /// A connection with nothing negotiated (plain TCP, HTTP/1.1 unless the
    /// pool is told HTTP/2 by prior knowledge).
    pub fn new(io: Io) -> Self {
        Established {
            io,
            negotiated_h2: false,
            tls: None,
            tls_time: None,
            max_age: None,
        }
    }

    /// ALPN selected `h2`.
    #[must_use]
    pub fn negotiated_h2(mut self, yes: bool) -> Self {
        self.negotiated_h2 = yes;
        self
    }

    /// The TLS handshake this connection made.
    #[must_use]
    pub fn tls(mut self, handshake: TlsHandshake) -> Self {
        self.tls = Some(handshake);
        self
    }

    /// How long the TLS handshake took (the pool's TLS connector sets it).
    #[must_use]
    pub fn tls_time(mut self, took: Duration) -> Self {
        self.tls_time = Some(took);
        self
    }

    /// Retire the connection (make-before-break, as for `max_lifetime`) at
    /// this age at the latest.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The same facts about another byte stream.
    pub fn map_io<T>(self, f: impl FnOnce(Io) -> T) -> Established<T> {
        Established {
            io: f(self.io),
            negotiated_h2: self.negotiated_h2,
            tls: self.tls,
            tls_time: self.tls_time,
            max_age: self.max_age,
        }
    }

    /// The byte stream.
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The TLS handshake, if the connection is encrypted.
    pub fn tls_handshake(&self) -> Option<TlsHandshake> {
        self.tls
    }
}

/// Why a [`Connect`] failed: the transport (DNS, TCP) or the TLS handshake.
/// The pool reports the first as [`ErrorKind::Connect`](crate::ErrorKind)
/// and the second as [`ErrorKind::Handshake`](crate::ErrorKind), with this
/// error's source as the pool error's source.
pub struct ConnectError {
    tls: bool,
    source: BoxError,
}

impl ConnectError {
    /// Resolving or connecting failed.
    pub fn transport(source: impl Into<BoxError>) -> Self {
        ConnectError {
            tls: false,
            source: source.into(),
        }
    }

    /// The TLS handshake failed.
    pub fn tls(source: impl Into<BoxError>) -> Self {
        ConnectError {
            tls: true,
            source: source.into(),
        }
    }

    /// Whether the TLS handshake failed (rather than the transport).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn into_error(self, target: &Target) -> Error {
        if self.tls {
            Error::tls_handshake(target, self.source)
        } else {
            Error::connect(target, self.source)
        }
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("tls", &self.tls)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.tls { "tls handshake" } else { "connect" };
        write!(f, "{what} failed: {}", self.source)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Opens connections for a pool with a connector `C`.
#[derive(Debug)]
pub(crate) struct Dialer<C> {
    pub(crate) connector: C,
}

impl<C, B> Dial<B> for Dialer<C>
where
    C: Connect,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn dial(&self, pool: Arc<TargetPool<B>>, reason: ConnectReason, direct: Option<Grant<B>>) {
        pool.common.events.on_connect_start(&ConnectStarted {
            target: &pool.target,
            reason,
        });
        let landing = Landing {
            pool: pool.clone(),
            reason,
            direct,
            start: Instant::now(),
            landed: false,
        };
        let connecting = self.connector.connect(&pool.target);
        tokio::spawn(async move {
            let config = pool.config();
            let opened = match config.connect_timeout {
                Some(limit) => tokio::time::timeout(limit, open(connecting, &pool, &config))
                    .await
                    .unwrap_or_else(|_| Err(Error::connect_timeout(&pool.target, limit))),
                None => open(connecting, &pool, &config).await,
            };
            landing.land(&config, opened);
        });
    }
}

/// A connect's reservation in its target (a connect slot, and for a
/// dedicated connect its one request), landed exactly once: by `land`
/// when the connect ends, or by the drop of a connect that never got there
/// (its connector panicked, its task was cancelled) as a failed connect,
/// so that no slot leaks and no waiter is left counting on it.
struct Landing<B> {
    pool: Arc<TargetPool<B>>,
    reason: ConnectReason,
    direct: Option<Grant<B>>,
    start: Instant,
    landed: bool,
}

impl<B> Landing<B> {
    fn land(
        mut self,
        config: &PoolConfig,
        opened: Result<(ConnId, Opened<B>, TransportFacts), Error>,
    ) {
        self.landed = true;
        let direct = self.direct.take();
        let duration = self.start.elapsed();
        land(&self.pool, self.reason, direct, config, opened, duration);
    }
}

impl<B> Drop for Landing<B> {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let error = Error::connect(
            &self.pool.target,
            "the connect ended abnormally: its connector panicked or its task was cancelled",
        );
        let duration = self.start.elapsed();
        match self.direct.take() {
            // Not `land`, which starts the next dedicated connect at once:
            // on a runtime shutting down, that one's task would be dropped
            // inside `spawn`, landing here again, one call inside the other
            // for every request queued behind it.
            Some(grant) => {
                self.pool.common.events.on_connect_error(&ConnectFailed {
                    target: &self.pool.target,
                    reason: self.reason,
                    duration,
                    error: error.clone(),
                });
                self.pool.dedicated_abandoned();
                let _ = grant.send(Err(error));
            }
            None => {
                let config = self.pool.config();
                land(&self.pool, self.reason, None, &config, Err(error), duration);
            }
        }
    }
}

/// Hand a finished connect to whoever counted on it: a pooled connection to
/// the pool (which serves its queue), a dedicated one (the kill switch) to
/// its one request; an error to the waiters no other connect covers, or to
/// the one request. Needs no runtime, so the model check drives it too.
pub(crate) fn land<B>(
    pool: &Arc<TargetPool<B>>,
    reason: ConnectReason,
    direct: Option<Grant<B>>,
    config: &PoolConfig,
    opened: Result<(ConnId, Opened<B>, TransportFacts), Error>,
    duration: Duration,
) {
    match opened {
        Ok((id, opened, facts)) => {
            let protocol = opened.protocol();
            #[cfg(feature = "tracing")]
            tracing::debug!(target = %pool.target, %id, ?protocol, ?duration, "connected");
            pool.common.events.on_connect(&Connected {
                target: &pool.target,
                id,
                protocol,
                tls: facts.tls,
                tls_time: facts.tls_time,
                reason,
                duration,
            });
            let life = Lifecycle::established(id, protocol, Instant::now(), config, reason)
                .with_transport(facts.tls, facts.max_age);
            match direct {
                Some(grant) => {
                    pool.dedicated_opened(facts.tls);
                    let lease = match opened {
                        Opened::Http1(tx) => Lease::Http1(Http1Conn { tx, life }),
                        Opened::Http2(tx, _) => Lease::Dedicated2 { tx, life },
                    };
                    let mut granted = Granted::fresh(lease, protocol, facts.tls, config);
                    granted.dedicated = true;
                    if let Err(Ok(granted)) = grant.send(Ok(granted)) {
                        pool.release_dedicated(granted.lease);
                    }
                }
                None => pool.connected(opened, life, reason),
            }
        }
        Err(error) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(target = %pool.target, %error, "connect failed");
            pool.common.events.on_connect_error(&ConnectFailed {
                target: &pool.target,
                reason,
                duration,
                error: error.clone(),
            });
            match direct {
                Some(grant) => {
                    pool.dedicated_failed();
                    let _ = grant.send(Err(error));
                }
                None => pool.connect_failed(reason, &error),
            }
        }
    }
}

/// hyper's default HTTP/1.1 read buffer limit, which also bounds a response
/// head.
const HTTP1_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// A connection just opened, before the pool gives it a lifecycle.
#[derive(Debug)]
pub(crate) enum Opened<B> {
    Http1(http1::SendRequest<B>),
    Http2(H2Sender, Http2Parts),
}

impl<B> Opened<B> {
    fn protocol(&self) -> Protocol {
        match self {
            Opened::Http1(_) => Protocol::Http1,
            Opened::Http2(..) => Protocol::Http2,
        }
    }
}

/// What the transport told the pool about a new connection.
pub(crate) struct TransportFacts {
    pub(crate) tls: Option<TlsHandshake>,
    pub(crate) tls_time: Option<Duration>,
    pub(crate) max_age: Option<Duration>,
}

/// Connector, then HTTP/1.1 or HTTP/2 handshake; spawns the connection task.
async fn open<F, Io, B>(
    connecting: F,
    pool: &Arc<TargetPool<B>>,
    config: &PoolConfig,
) -> Result<(ConnId, Opened<B>, TransportFacts), Error>
where
    F: Future<Output = Result<Established<Io>, ConnectError>>,
    Io: Read + Write + Unpin + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let target = &pool.target;
    let Established {
        io,
        negotiated_h2,
        tls,
        tls_time,
        max_age,
    } = connecting.await.map_err(|e| e.into_error(target))?;
    let facts = TransportFacts {
        tls,
        tls_time,
        max_age,
    };
    let h2 = config.http2_prior_knowledge || negotiated_h2;
    let id = pool.common.next_id();
    let weak = Arc::downgrade(pool);
    if h2 {
        let (tx, conn, senders_gone) = h2_client::handshake(TokioIo::new(io), config)
            .await
            .map_err(|e| Error::handshake(target, e))?;
        // The server's SETTINGS may already have been read.
        let now = conn.max_concurrent_send_streams();
        let parts = Http2Parts {
            limit: Arc::new(tx.clone()),
            settled: Arc::new(AtomicBool::new(now != ASSUMED_MAX_STREAMS)),
        };
        let events = H2Events {
            pool: weak,
            id,
            settled: parts.settled.clone(),
        };
        tokio::spawn(h2_client::drive(
            conn,
            tx.clone(),
            senders_gone,
            config.http2_ping_interval,
            events,
        ));
        Ok((id, Opened::Http2(tx, parts), facts))
    } else {
        let mut builder = http1::Builder::new();
        if let Some(max) = config.max_response_header_bytes {
            // hyper bounds a head by its read buffer too: let a limit above
            // the buffer's default be reached.
            builder.max_header_size(max);
            if max > HTTP1_DEFAULT_MAX_BUF {
                builder.max_buf_size(max);
            }
        }
        let (tx, conn) = builder
            .handshake(io)
            .await
            .map_err(|e| Error::handshake(target, e))?;
        tokio::spawn(async move {
            let result = conn.await;
            if let Some(pool) = weak.upgrade() {
                pool.connection_ended(id, result.is_ok(), false);
            }
        });
        Ok((id, Opened::Http1(tx), facts))
    }
}

/// The live `SETTINGS_MAX_CONCURRENT_STREAMS` of one HTTP/2 connection.
pub(crate) trait StreamLimit: fmt::Debug + Send + Sync {
    fn current(&self) -> usize;
}

/// An HTTP/2 connection's task reports to its pool, held weakly: a dropped
/// pool closes its connections.
struct H2Events<B> {
    pool: Weak<TargetPool<B>>,
    id: ConnId,
    settled: Arc<AtomicBool>,
}

impl<B: Send + 'static> h2_client::ConnectionEvents for H2Events<B> {
    fn limit_changed(&mut self, limit: usize) {
        self.settled.store(true, Ordering::Release);
        if let Some(pool) = self.pool.upgrade() {
            pool.h2_capacity_changed(limit);
        }
    }

    fn closed(&mut self, graceful: bool, calm: bool) {
        if let Some(pool) = self.pool.upgrade() {
            pool.connection_ended(self.id, graceful, calm);
        }
    }
}
