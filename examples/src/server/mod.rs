//! The embedded test server: hyper on its own multi-thread runtime, serving
//! HTTP/1.1 and h2c (prior knowledge) on the same port, or TLS with ALPN
//! (`h2`, `http/1.1`), on one or many loopback addresses.
//!
//! Every response echoes the request's `x-request-id` header, so a client can
//! detect a response delivered to the wrong request. The server keeps its own
//! counters ([`ServerStats`]) and shuts down when its [`Server`] handle is
//! dropped. With [`ServerConfig::chaos`] it injects faults: connections
//! closed or reset instead of answered, stalled answers, GOAWAY.
//!
//! ```no_run
//! use tower_reuse_examples::server::{Server, ServerConfig};
//! # fn main() -> std::io::Result<()> {
//! let server = Server::start(ServerConfig::default().addresses(4))?;
//! println!("listening on {:?}", server.addrs());
//! println!("{} connections accepted", server.stats().accepted());
//! # Ok(()) }
//! ```

mod chaos;
mod conn;
mod late;
mod stats;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use chaos::Chaos;
pub use conn::X_REQUEST_ID;
pub use stats::{
    FaultCounts, OpenSample, REQUESTS_PER_CONNECTION_BUCKETS, ServerSnapshot, ServerStats,
};

use crate::tls::TlsIdentity;
use chaos::ServerStream;

/// A TLS handshake that has not finished after this long is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `i`-th loopback address the server listens on: `127.0.0.1` for 0, up
/// to `127.0.0.254`, then `127.0.1.1` and so on.
pub fn loopback_addr(i: usize) -> IpAddr {
    let high = u8::try_from(i / 254).unwrap_or(u8::MAX);
    let low = u8::try_from(i % 254 + 1).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, high, low))
}

/// The embedded server's knobs. Build with [`ServerConfig::default`] and the
/// by-value setters.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    addresses: usize,
    first_address: usize,
    port: u16,
    tls: Option<TlsIdentity>,
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<u64>,
    h2_max_concurrent_streams: Option<u32>,
    h2_late_release: Option<Duration>,
    response_size: usize,
    latency: Option<Duration>,
    keep_alive_hint: Option<Duration>,
    worker_threads: usize,
    sample_interval: Duration,
    backlog: u32,
    chaos: Option<Chaos>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addresses: 1,
            first_address: 0,
            port: 0,
            tls: None,
            idle_timeout: None,
            max_requests_per_connection: None,
            h2_max_concurrent_streams: None,
            h2_late_release: None,
            response_size: 100,
            latency: None,
            keep_alive_hint: None,
            worker_threads: 1,
            sample_interval: Duration::from_millis(25),
            backlog: 1024,
            chaos: None,
        }
    }
}

impl ServerConfig {
    /// Listen on `n` loopback addresses (see [`loopback_addr`]). Defaults to 1.
    pub fn addresses(mut self, n: usize) -> Self {
        self.addresses = n.max(1);
        self
    }

    /// Start at the `i`-th loopback address instead of `127.0.0.1`, so that
    /// two servers never share an address. Defaults to 0.
    pub fn first_address(mut self, i: usize) -> Self {
        self.first_address = i;
        self
    }

    /// The port on every address; 0 picks an ephemeral port per address.
    /// Defaults to 0.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Serve TLS with this identity (ALPN `h2` and `http/1.1`) instead of
    /// plain HTTP/1.1 + h2c. Defaults to plain.
    pub fn tls(mut self, identity: Option<TlsIdentity>) -> Self {
        self.tls = identity;
        self
    }

    /// Close a connection that has had no request in flight this long.
    /// Defaults to `None` (never).
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// After this many requests on a connection, answer with
    /// `Connection: close` (HTTP/1) or send GOAWAY (HTTP/2). Defaults to `None`.
    pub fn max_requests_per_connection(mut self, max: Option<u64>) -> Self {
        self.max_requests_per_connection = max;
        self
    }

    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`. Defaults to hyper's (200).
    pub fn h2_max_concurrent_streams(mut self, max: Option<u32>) -> Self {
        self.h2_max_concurrent_streams = max;
        self
    }

    /// Count an HTTP/2 stream's slot busy for this long after the stream has
    /// ended, and refuse (`REFUSED_STREAM`) a stream that arrives while
    /// `h2_max_concurrent_streams` slots are busy, as grpc-core does: a
    /// client that opens a stream as soon as one ends, within the limit it
    /// was given, is refused. Refusals are counted
    /// ([`ServerSnapshot::refused`]). h2c only (no TLS, no HTTP/1.1 on the
    /// port, no faults, no idle timeout, no max requests). Defaults to `None`.
    pub fn h2_late_release(mut self, after: Option<Duration>) -> Self {
        self.h2_late_release = after;
        self
    }

    /// Response body size in bytes. Defaults to 100.
    pub fn response_size(mut self, bytes: usize) -> Self {
        self.response_size = bytes;
        self
    }

    /// Latency added to every response. Defaults to `None`.
    pub fn latency(mut self, latency: Option<Duration>) -> Self {
        self.latency = latency;
        self
    }

    /// Send `Keep-Alive: timeout=N` (whole seconds) on HTTP/1 responses.
    /// Defaults to `None`.
    pub fn keep_alive_hint(mut self, hint: Option<Duration>) -> Self {
        self.keep_alive_hint = hint;
        self
    }

    /// Worker threads of the server's own runtime. Defaults to 1.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads.max(1);
        self
    }

    /// How often the open-connection count is sampled. Defaults to 25 ms.
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Listen backlog per address. Defaults to 1024.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Inject faults: close, reset or stall connections, send GOAWAY (see
    /// [`Chaos`]); each is counted in [`ServerSnapshot::faults`]. Defaults
    /// to `None`.
    pub fn chaos(mut self, chaos: Option<Chaos>) -> Self {
        self.chaos = chaos;
        self
    }

    /// Whether the server injects faults.
    pub fn injects_faults(&self) -> bool {
        self.chaos.is_some()
    }
}

/// A running embedded server. Dropping it stops the server: listeners
/// close, open connections are dropped, its runtime's threads end.
#[derive(Debug)]
pub struct Server {
    addrs: Vec<SocketAddr>,
    tls: bool,
    stats: ServerStats,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Binds every address and starts serving on the server's own runtime.
    /// May be called from inside or outside another tokio runtime.
    pub fn start(config: ServerConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("reuse-lab-server")
            .enable_all()
            .build()?;
        let tls = match &config.tls {
            Some(identity) => Some(TlsAcceptor::from(
                identity.server_config().map_err(io::Error::other)?,
            )),
            None => None,
        };
        let settings = Arc::new(conn::Settings {
            body: Bytes::from(vec![b'x'; config.response_size]),
            latency: config.latency,
            max_requests: config.max_requests_per_connection,
            idle_timeout: config.idle_timeout,
            keep_alive_hint: config
                .keep_alive_hint
                .map(|d| HeaderValue::from_str(&format!("timeout={}", d.as_secs())))
                .transpose()
                .map_err(io::Error::other)?,
            chaos: config.chaos.clone(),
            late_release: config
                .h2_late_release
                .map(|after| (config.h2_max_concurrent_streams.unwrap_or(200), after)),
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams);
        let builder = Arc::new(builder);

        let stats = ServerStats::new();
        let (shutdown, _) = watch::channel(false);
        let mut listeners = Vec::with_capacity(config.addresses);
        {
            let _enter = runtime.enter();
            for i in 0..config.addresses {
                let addr = SocketAddr::new(loopback_addr(config.first_address + i), config.port);
                let socket = TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket
                    .bind(addr)
                    .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
                listeners.push(socket.listen(config.backlog)?);
            }
        }
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        for listener in listeners {
            runtime.spawn(accept_loop(
                listener,
                tls.clone(),
                stats.clone(),
                settings.clone(),
                builder.clone(),
                shutdown.subscribe(),
            ));
        }
        runtime.spawn(sampler(
            stats.clone(),
            config.sample_interval,
            shutdown.subscribe(),
        ));
        Ok(Self {
            addrs,
            tls: tls.is_some(),
            stats,
            shutdown,
            runtime: Some(runtime),
        })
    }

    /// The bound addresses, in order (the first address first).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The base URL of the `i`-th address, e.g. `http://127.0.0.1:40123`.
    ///
    /// # Panics
    ///
    /// If `i` is not below `addrs().len()`.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addrs[i])
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops accepting, asks every connection to close gracefully, and waits
    /// up to `grace` for them before dropping the rest.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stats: ServerStats,
    settings: Arc<conn::Settings>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a reset before accept: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let index = stats.accepted_connection();
        let _ = stream.set_nodelay(true);
        let stream = ServerStream::new(stream);
        let reset_on_drop = stream.reset_on_drop();
        let (stats, settings, builder, shutdown) = (
            stats.clone(),
            settings.clone(),
            builder.clone(),
            shutdown.clone(),
        );
        match &tls {
            None if settings.late_release.is_some() => {
                tokio::spawn(late::serve(stream, stats, settings, shutdown));
            }
            None => {
                tokio::spawn(conn::serve(
                    stream,
                    index,
                    reset_on_drop,
                    stats,
                    settings,
                    builder,
                    shutdown,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            stats.tls_handshake(stream.get_ref().1.handshake_kind());
                            conn::serve(
                                stream,
                                index,
                                reset_on_drop,
                                stats,
                                settings,
                                builder,
                                shutdown,
                            )
                            .await;
                        }
                        _ => stats.tls_handshake(None),
                    }
                });
            }
        }
    }
}

async fn sampler(stats: ServerStats, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => stats.sample(),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
