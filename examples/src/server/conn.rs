//! One accepted connection: the request handler, the in-flight bookkeeping
//! and the keep-alive idle timer that hyper's HTTP/1 server lacks.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, sleep_until};

use super::ServerStats;

/// The header the server echoes back, and the lab checks.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A connection still draining this long after its graceful shutdown began is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Per-server settings every connection reads.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) body: Bytes,
    pub(crate) latency: Option<Duration>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keep_alive_hint: Option<HeaderValue>,
}

/// Shared state of one connection.
#[derive(Debug)]
struct Conn {
    stats: ServerStats,
    settings: Arc<Settings>,
    epoch: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    last_activity_ns: AtomicU64,
    goaway: Notify,
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
    let served = conn.requests.fetch_add(1, Relaxed) + 1;
    let settings = &conn.settings;
    if let Some(latency) = settings.latency {
        sleep(latency).await;
    }
    let mut response = Response::new(Full::new(settings.body.clone()));
    let headers = response.headers_mut();
    if let Some(id) = req.headers().get(X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, id.clone());
    }
    let h2 = req.version() == Version::HTTP_2;
    if let (Some(hint), false) = (&settings.keep_alive_hint, h2) {
        headers.insert(KEEP_ALIVE, hint.clone());
    }
    if settings.max_requests.is_some_and(|max| served >= max) {
        if h2 {
            conn.goaway.notify_one();
        } else {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    conn.stats.request_served();
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

/// Serves one connection (plain TCP or an accepted TLS stream) to the end.
pub(crate) async fn serve<IO>(
    io: IO,
    stats: ServerStats,
    settings: Arc<Settings>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        stats: stats.clone(),
        settings,
        epoch: Instant::now(),
        in_flight: AtomicU32::new(0),
        requests: AtomicU64::new(0),
        last_activity_ns: AtomicU64::new(0),
        goaway: Notify::new(),
    });
    stats.connection_opened();
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
    stats.connection_closed(
        conn.requests.load(Relaxed),
        conn.in_flight.load(Relaxed) == 0,
    );
}
