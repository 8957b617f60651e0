//! A hyper server on loopback (HTTP/1.1 and h2c on one port) whose
//! behaviour a test chooses, counting what it sees from its own side and
//! recording every request head as it arrives.
//!
//! A request may ask for more, by header:
//! - `x-delay-ms: N`: wait N more milliseconds before answering;
//! - `x-body-size: N`: answer with N bytes (instead of the configured size);
//! - `x-status: N`: answer with status N (instead of 200);
//! - `x-fault: drop`: the first time this `x-request-id` arrives, drop the
//!   connection without answering (HTTP/1.1; an HTTP/2 stream is reset), as
//!   a server dying mid-request would; it is answered when sent again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// How the server behaves.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Close connections idle this long (abruptly, as real servers do).
    pub idle_close: Option<Duration>,
    /// After this many requests on a connection, answer with `Connection: close`.
    pub max_requests_per_conn: Option<u64>,
    /// Send `Keep-Alive: timeout=N` with every HTTP/1.1 response.
    pub keep_alive_hint: Option<u64>,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub h2_max_streams: Option<u32>,
    /// Wait this long before every response.
    pub delay: Option<Duration>,
    /// Answer HTTP/1.0 responses.
    pub http10: bool,
    /// Response body size in bytes (default 16).
    pub body_size: Option<usize>,
    /// Answer with this status unless the request's `x-status` asks for
    /// another (default 200).
    pub status: Option<u16>,
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    /// With `kernel_counted`: a handle on each connection's socket, to ask
    /// the kernel at each accept whether its client closed it; and the most
    /// connections open at once by that count.
    sockets: Option<Mutex<Vec<Weak<std::net::TcpStream>>>>,
    peak_established: AtomicUsize,
    requests: AtomicU64,
    peak_in_flight: AtomicUsize,
    in_flight: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// One request as the server saw it, recorded when its head arrived
/// (before any delay, and whether or not it was answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The connection it came on (`x-conn-id` of its response).
    pub conn: u64,
    /// Its place on that connection, from 1 (`x-served` of its response).
    pub served: u64,
    /// Its method.
    pub method: Method,
    /// Its `x-request-id`.
    pub request_id: Option<String>,
    /// Its `x-partition`: the tenant the client says it sends for.
    pub partition: Option<String>,
    /// Its `Host` header, or HTTP/2's `:authority`.
    pub host: Option<String>,
}

impl ServerStats {
    /// Stats for TCP servers that also count, at every accept, the
    /// connections whose clients have not closed them, as the kernel says
    /// (a peek at each socket: end of stream once the client's FIN
    /// arrived). The servers' own count lags a client's close (a
    /// connection's task may see its end after the next accept); this one
    /// does not: a client that closed one socket before opening the next
    /// is never counted with both.
    pub fn kernel_counted() -> Arc<ServerStats> {
        Arc::new(ServerStats {
            sockets: Some(Mutex::new(Vec::new())),
            ..Default::default()
        })
    }
    /// Most connections open at once by the kernel's count at each accept
    /// (0 unless `kernel_counted`).
    pub fn peak_established(&self) -> usize {
        self.peak_established.load(Ordering::SeqCst)
    }
    /// Count the open connections, the one just accepted among them.
    fn count_established(&self, accepted: &Arc<std::net::TcpStream>) {
        let Some(sockets) = &self.sockets else {
            return;
        };
        let mut sockets = sockets.lock().expect("not poisoned");
        sockets.retain(|socket| {
            let Some(socket) = socket.upgrade() else {
                return false;
            };
            // Nothing to read, or data: open. End of stream or an error:
            // closed by its client.
            match socket.peek(&mut [0; 1]) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
        sockets.push(Arc::downgrade(accepted));
        self.peak_established
            .fetch_max(sockets.len(), Ordering::SeqCst);
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// Most connections open at once.
    pub fn peak_open(&self) -> usize {
        self.peak_open.load(Ordering::SeqCst)
    }
    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Most requests in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight.load(Ordering::SeqCst)
    }
    /// Every request head so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
    /// Whether a request with `x-request-id: id` has arrived.
    pub fn saw(&self, id: &str) -> bool {
        self.seen
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|seen| seen.request_id.as_deref() == Some(id))
    }
}

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<ServerStats>,
    _stop: watch::Sender<()>,
}

impl TestServer {
    /// Start a server on 127.0.0.1 with `options`.
    pub async fn start(options: ServerOptions) -> TestServer {
        Self::start_on("127.0.0.1:0", options).await
    }

    /// Start a server on `addr` with `options`.
    pub async fn start_on(addr: &str, options: ServerOptions) -> TestServer {
        Self::start_counting(addr, options, Arc::default()).await
    }

    /// Start a server on `addr` with `options` that counts into `stats`:
    /// servers sharing one count as one (connections open across all of
    /// them, say).
    pub async fn start_counting(
        addr: &str,
        options: ServerOptions,
        stats: Arc<ServerStats>,
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = watch::channel(());
        let options = Arc::new(options);
        let conn_ids = Arc::new(AtomicU64::new(0));
        let accept_stats = stats.clone();
        tokio::spawn(async move {
            let mut stopped = stopped;
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                // A second handle on the socket, for the kernel's count;
                // dropped with the connection's task.
                let (stream, socket) = match accept_stats.sockets {
                    Some(_) => {
                        let Ok((stream, socket)) = with_handle(stream) else {
                            continue;
                        };
                        accept_stats.count_established(&socket);
                        (stream, Some(socket))
                    }
                    None => (stream, None),
                };
                let conn_id = conn_ids.fetch_add(1, Ordering::SeqCst);
                let served = serve(
                    stream,
                    conn_id,
                    options.clone(),
                    accept_stats.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    served.await;
                    drop(socket);
                });
            }
        });
        TestServer {
            addr,
            stats,
            _stop: stop,
        }
    }

    /// `http://addr` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

struct ConnState {
    requests: AtomicU64,
    in_flight: AtomicUsize,
    last_activity: std::sync::Mutex<Instant>,
}

/// Serve one connection on any byte stream with `options`.
pub(crate) async fn serve<I>(
    stream: I,
    conn_id: u64,
    options: Arc<ServerOptions>,
    stats: Arc<ServerStats>,
    mut stopped: watch::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    stats.accepted.fetch_add(1, Ordering::SeqCst);
    let open = stats.open.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak_open.fetch_max(open, Ordering::SeqCst);
    let conn = Arc::new(ConnState {
        requests: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        last_activity: std::sync::Mutex::new(Instant::now()),
    });
    let svc_conn = conn.clone();
    let svc_options = options.clone();
    let svc_stats = stats.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = svc_conn.clone();
        let options = svc_options.clone();
        let stats = svc_stats.clone();
        async move { respond(req, conn_id, &conn, &options, &stats).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.h2_max_streams);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    loop {
        let idle_deadline = options.idle_close.map(|idle| {
            let last = *conn.last_activity.lock().expect("not poisoned");
            if conn.in_flight.load(Ordering::SeqCst) > 0 {
                // Busy past its deadline: look again later rather than spin
                // (a spin would also stop paused time from advancing).
                last.max(Instant::now()) + idle
            } else {
                last + idle
            }
        });
        tokio::select! {
            _ = &mut served => break,
            _ = stopped.changed() => break,
            _ = sleep_until(idle_deadline) => {
                let idle = options.idle_close.expect("deadline implies idle_close");
                let last = *conn.last_activity.lock().expect("not poisoned");
                if conn.in_flight.load(Ordering::SeqCst) == 0 && last.elapsed() >= idle {
                    break; // dropping the connection closes the socket
                }
            }
        }
    }
    stats.open.fetch_sub(1, Ordering::SeqCst);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A header's value as text.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    Some(headers.get(name)?.to_str().ok()?.to_owned())
}

/// A header's value as a number.
fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    header(headers, name)?.parse().ok()
}

/// Why a connection was dropped without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped without an answer, as asked by x-fault")
    }
}

impl std::error::Error for Dropped {}

async fn respond(
    req: Request<Incoming>,
    conn_id: u64,
    conn: &ConnState,
    options: &ServerOptions,
    stats: &ServerStats,
) -> Result<Response<Full<Bytes>>, Dropped> {
    conn.in_flight.fetch_add(1, Ordering::SeqCst);
    let total = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.peak_in_flight.fetch_max(total, Ordering::SeqCst);
    *conn.last_activity.lock().expect("not poisoned") = Instant::now();
    let served = conn.requests.fetch_add(1, Ordering::SeqCst) + 1;
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let headers = req.headers();
    let request_id = header(headers, "x-request-id");
    let first_sighting = request_id.as_deref().is_none_or(|id| !stats.saw(id));
    let drop_it = first_sighting && header(headers, "x-fault").as_deref() == Some("drop");
    let extra_delay = number(headers, "x-delay-ms").map(Duration::from_millis);
    let body_size = number(headers, "x-body-size").or(options.body_size);
    let status = number::<u16>(headers, "x-status")
        .or(options.status)
        .and_then(|status| http::StatusCode::from_u16(status).ok())
        .unwrap_or(http::StatusCode::OK);
    stats.seen.lock().expect("not poisoned").push(Seen {
        conn: conn_id,
        served,
        method: req.method().clone(),
        request_id: request_id.clone(),
        partition: header(headers, "x-partition"),
        host: header(headers, "host").or_else(|| {
            req.uri()
                .authority()
                .map(|authority| authority.as_str().to_owned())
        }),
    });
    let version = req.version();
    // Read the request body, as a real handler would; a client that gives
    // up halfway leaves nothing to answer, but the answer is still built.
    let _ = req.into_body().collect().await;
    if let Some(delay) = options.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(delay) = extra_delay {
        tokio::time::sleep(delay).await;
    }
    if drop_it {
        conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(Dropped);
    }
    let body = vec![b'x'; body_size.unwrap_or(16)];
    let mut response = Response::builder()
        .status(status)
        .header("x-conn-id", conn_id)
        .header("x-served", served);
    if let Some(id) = request_id {
        response = response.header("x-request-id", id);
    }
    if version != http::Version::HTTP_2 {
        if options
            .max_requests_per_conn
            .is_some_and(|max| served >= max)
        {
            response = response.header("connection", "close");
        }
        if let Some(secs) = options.keep_alive_hint {
            response = response.header("keep-alive", format!("timeout={secs}"));
        }
        if options.http10 {
            response = response.version(http::Version::HTTP_10);
        }
    }
    let response = response
        .body(Full::new(Bytes::from(body)))
        .expect("valid response");
    *conn.last_activity.lock().expect("not poisoned") = Instant::now();
    conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

/// `stream`, and a second handle on its socket.
fn with_handle(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, Arc<std::net::TcpStream>)> {
    let stream = stream.into_std()?;
    let handle = stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(stream)?, Arc::new(handle)))
}
