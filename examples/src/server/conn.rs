//! One accepted connection: the request handler, the in-flight bookkeeping,
//! the keep-alive idle timer that hyper's HTTP/1 server lacks, and the
//! injected faults (a handler asks the connection's task to drop the
//! connection; HTTP/2 handlers, which run on their own, wait for the drop).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, sleep_until};

use super::ServerStats;
use super::address::{Address, X_AFFINITY_KEY, X_SERVED_BY};
use super::chaos::{Chaos, Fault, FaultGenerator};

/// The header the server echoes back, and the lab checks.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A connection still draining this long after its graceful shutdown began is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Handlers of an aborted HTTP/2 connection are waited for this long.
const ABORT_LIMIT: Duration = Duration::from_secs(1);

/// Per-server settings every connection reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) body: Bytes,
    pub(crate) latency: Option<Duration>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keep_alive_hint: Option<HeaderValue>,
    pub(crate) chaos: Option<Chaos>,
    /// HTTP/2 stream limit and how long a slot stays busy after its
    /// stream ends (`ServerConfig::h2_late_release`).
    pub(crate) late_release: Option<(u32, Duration)>,
    /// Name the serving address in every response ([`X_SERVED_BY`]).
    pub(crate) served_by: bool,
}

/// An accepted connection and what serving it needs.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// Its place in accept order (it seeds the fault draws).
    pub(crate) index: u64,
    /// Its [`ServerStream`](super::chaos::ServerStream)'s flag.
    pub(crate) reset_on_drop: Arc<AtomicBool>,
    pub(crate) stats: ServerStats,
    pub(crate) settings: Arc<Settings>,
    pub(crate) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The address it was accepted on: taking it down drops the connection.
    pub(crate) address: Arc<Address>,
}

/// Shared state of one connection.
#[derive(Debug)]
struct Conn {
    stats: ServerStats,
    settings: Arc<Settings>,
    address: Arc<Address>,
    epoch: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    last_activity_ns: AtomicU64,
    goaway: Notify,
    chaos: Option<ConnChaos>,
}

/// A connection's fault injection: its draws, and the abort handshake
/// between a handler and the connection's task.
#[derive(Debug)]
struct ConnChaos {
    faults: FaultGenerator,
    /// A handler asks the connection's task to drop the connection.
    abort: Notify,
    /// Set before the drop: the close is a reset.
    reset_on_drop: Arc<AtomicBool>,
    /// `true` once the connection is dropped.
    closed: watch::Sender<bool>,
}

impl Conn {
    fn touch(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity_ns.store(ns, Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.last_activity_ns.load(Relaxed))
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.touch();
        if self.in_flight.fetch_add(1, Relaxed) == 0 {
            self.stats.connection_busy();
        }
        InFlight { conn: self.clone() }
    }

    /// Asks the connection's task to drop the connection now, with a reset
    /// if `reset`.
    fn abort(&self, reset: bool) {
        if let Some(chaos) = &self.chaos {
            chaos.reset_on_drop.store(reset, Relaxed);
            chaos.abort.notify_one();
        }
    }

    /// Resolves when a handler has asked for an abort.
    async fn abort_requested(&self) {
        match &self.chaos {
            Some(chaos) => chaos.abort.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Resolves once the connection was dropped after an abort.
    async fn closed(&self) {
        match &self.chaos {
            Some(chaos) => {
                let _ = chaos.closed.subscribe().wait_for(|closed| *closed).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Sleeps for `d`, or less if the connection is dropped meanwhile (an
    /// HTTP/2 handler would otherwise outlive its aborted connection).
    async fn pause(&self, d: Duration) {
        if self.chaos.is_none() {
            return sleep(d).await;
        }
        tokio::select! {
            _ = sleep(d) => {}
            _ = self.closed() => {}
        }
    }
}

/// A request in flight on a connection; dropping it ends the request.
struct InFlight {
    conn: Arc<Conn>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.touch();
        if self.conn.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.conn.stats.connection_idle();
        }
    }
}

async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _in_flight = conn.begin();
    let _address_load = conn.address.begin();
    let served = conn.requests.fetch_add(1, Relaxed) + 1;
    let (parts, body) = req.into_parts();
    if !body.is_end_stream() {
        // Read a request body (POST) to the end, as a real handler would.
        let _ = body.collect().await;
    }
    let settings = &conn.settings;
    let miss_latency = parts
        .headers
        .get(X_AFFINITY_KEY)
        .and_then(|key| conn.address.lookup(key.as_bytes()));
    if let Some(hit) = miss_latency.map(|latency| latency.is_zero()) {
        conn.stats.cache_lookup(hit);
    }
    let fault = conn.chaos.as_ref().and_then(|c| c.faults.draw());
    if let Some(fault) = fault {
        conn.stats.fault_injected(fault);
    }
    match fault {
        Some(Fault::Close | Fault::Reset) => {
            conn.abort(fault == Some(Fault::Reset));
            // HTTP/1.1: this handler is dropped with the connection. HTTP/2:
            // it runs on its own, so it waits for the drop: no answer goes out.
            conn.closed().await;
            return Ok(Response::new(Full::default()));
        }
        Some(Fault::Stall(stall)) => conn.pause(stall).await,
        _ => {}
    }
    let latency = conn
        .address
        .latency
        .or(settings.latency)
        .unwrap_or_default()
        + miss_latency.unwrap_or_default();
    if !latency.is_zero() {
        conn.pause(latency).await;
    }
    let mut response = Response::new(Full::new(settings.body.clone()));
    let headers = response.headers_mut();
    if let Some(id) = parts.headers.get(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    if settings.served_by {
        headers.insert(X_SERVED_BY, conn.address.served_by.clone());
    }
    let h2 = parts.version == Version::HTTP_2;
    if let (Some(hint), false) = (&settings.keep_alive_hint, h2) {
        headers.insert(KEEP_ALIVE, hint.clone());
    }
    let last = settings.max_requests.is_some_and(|max| served >= max);
    if last || fault == Some(Fault::GoAway) {
        if h2 {
            conn.goaway.notify_one();
        } else {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    conn.stats.request_served(served);
    Ok(response)
}

/// Resolves when the connection has had no request in flight for `idle`.
async fn idle_expired(conn: &Conn, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let last = conn.last_activity();
        sleep_until(last + idle).await;
        if conn.in_flight.load(Relaxed) > 0 {
            // A long request: look again one idle period later.
            sleep(idle).await;
            continue;
        }
        if conn.last_activity() == last {
            return;
        }
    }
}

/// Serves one connection (plain TCP or an accepted TLS stream) to the end,
/// or until its address is taken down (then it is dropped at once).
pub(crate) async fn serve<IO>(io: IO, accepted: Accepted)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        index,
        reset_on_drop,
        stats,
        settings,
        builder,
        mut shutdown,
        address,
    } = accepted;
    let chaos = settings.chaos.as_ref().map(|chaos| ConnChaos {
        faults: chaos.generator(index),
        abort: Notify::new(),
        reset_on_drop,
        closed: watch::channel(false).0,
    });
    let conn = Arc::new(Conn {
        stats: stats.clone(),
        settings,
        address: address.clone(),
        epoch: Instant::now(),
        in_flight: AtomicU32::new(0),
        requests: AtomicU64::new(0),
        last_activity_ns: AtomicU64::new(0),
        goaway: Notify::new(),
        chaos,
    });
    stats.connection_opened();
    address.connection_opened();
    {
        let service_conn = conn.clone();
        let service = service_fn(move |req| handle(service_conn.clone(), req));
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = idle_expired(&conn, conn.settings.idle_timeout);
        tokio::pin!(idle);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let closing = drain_deadline.is_some();
            tokio::select! {
                _ = connection.as_mut() => break,
                _ = conn.abort_requested() => break,
                _ = address.went_down() => break,
                _ = &mut idle, if !closing => {}
                _ = conn.goaway.notified(), if !closing => {}
                _ = shutdown.changed(), if !closing => {}
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if closing => break,
            }
            if drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    if let Some(chaos) = &conn.chaos {
        // Dropped (by an abort or not): HTTP/2 handlers still running end
        // now; wait for them so that the idle count stays exact.
        chaos.closed.send_replace(true);
        let give_up = Instant::now() + ABORT_LIMIT;
        while conn.in_flight.load(Relaxed) > 0 && Instant::now() < give_up {
            sleep(Duration::from_millis(1)).await;
        }
    }
    address.connection_closed();
    stats.connection_closed(
        conn.requests.load(Relaxed),
        conn.in_flight.load(Relaxed) == 0,
    );
}
