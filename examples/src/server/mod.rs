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

mod address;
mod chaos;
mod conn;
mod late;
mod listen;
mod stats;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use address::{AddressSnapshot, KeyCache, X_AFFINITY_KEY, X_SERVED_BY};
pub use chaos::Chaos;
pub use conn::X_REQUEST_ID;
pub use stats::{
    FaultCounts, OpenSample, REQUESTS_PER_CONNECTION_BUCKETS, ServerSnapshot, ServerStats,
};

use crate::tls::TlsIdentity;
use address::Address;
use listen::Listening;

/// How long [`Server::take_down`] waits for an address's connections to close.
const TAKE_DOWN_LIMIT: Duration = Duration::from_secs(5);

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
    address_latency: Vec<(usize, Duration)>,
    keep_alive_hint: Option<Duration>,
    worker_threads: usize,
    sample_interval: Duration,
    backlog: u32,
    chaos: Option<Chaos>,
    cache: Option<KeyCache>,
    served_by: bool,
    one_port: bool,
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
            address_latency: Vec::new(),
            keep_alive_hint: None,
            worker_threads: 1,
            sample_interval: Duration::from_millis(25),
            backlog: 1024,
            chaos: None,
            cache: None,
            served_by: false,
            one_port: false,
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

    /// Latency added to every response on the `i`-th address (counted from
    /// the server's first), in place of [`latency`](Self::latency): one
    /// slow service beside fast ones on one server. Defaults to none.
    pub fn latency_on(mut self, i: usize, latency: Duration) -> Self {
        self.address_latency.retain(|(j, _)| *j != i);
        self.address_latency.push((i, latency));
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

    /// Give every address a cache of affinity keys (read from the
    /// request's [`X_AFFINITY_KEY`] header; a request without one skips
    /// the cache): a miss adds [`KeyCache::miss_latency`] to its answer.
    /// Hits and misses are counted per address
    /// ([`Server::address_snapshots`]) and in all
    /// ([`ServerSnapshot::cache_hits`]). Defaults to `None`.
    pub fn cache(mut self, cache: Option<KeyCache>) -> Self {
        self.cache = cache;
        self
    }

    /// Name the serving address in every response's [`X_SERVED_BY`]
    /// header. Defaults to `false`.
    pub fn served_by(mut self, on: bool) -> Self {
        self.served_by = on;
        self
    }

    /// Listen on the same port on every address (the port the first one
    /// gets, when [`port`](Self::port) is 0), as the endpoints of one
    /// logical service `name:port` do. Defaults to `false`.
    pub fn one_port(mut self, on: bool) -> Self {
        self.one_port = on;
        self
    }

    /// Whether the server sends a `Keep-Alive: timeout=N` hint.
    pub fn sends_keep_alive_hint(&self) -> bool {
        self.keep_alive_hint.is_some()
    }

    /// Whether the server injects faults.
    pub fn injects_faults(&self) -> bool {
        self.chaos.is_some()
    }
}

/// A running embedded server. Dropping it stops the server: listeners
/// close, open connections are dropped, its runtime's threads end.
///
/// Its set of addresses can change while it runs: [`Server::add_address`]
/// listens on one more, [`Server::take_down`] closes one (its listener and
/// its connections: connects are refused) and [`Server::bring_up`] opens it
/// again on the same socket address.
#[derive(Debug)]
pub struct Server {
    addrs: Vec<SocketAddr>,
    addresses: Arc<Mutex<Vec<Arc<Address>>>>,
    accepts: Vec<Option<tokio::task::JoinHandle<()>>>,
    listening: Listening,
    config: ServerConfig,
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
            served_by: config.served_by,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams);

        let stats = ServerStats::new();
        let (shutdown, _) = watch::channel(false);
        let listening = Listening {
            runtime: runtime.handle().clone(),
            tls,
            stats: stats.clone(),
            settings,
            builder: Arc::new(builder),
            shutdown: shutdown.subscribe(),
            backlog: config.backlog,
        };
        let addresses = Arc::new(Mutex::new(Vec::new()));
        runtime.spawn(sampler(
            stats.clone(),
            addresses.clone(),
            config.sample_interval,
            shutdown.subscribe(),
        ));
        let mut server = Self {
            addrs: Vec::with_capacity(config.addresses),
            addresses,
            accepts: Vec::with_capacity(config.addresses),
            listening,
            config,
            stats,
            shutdown,
            runtime: Some(runtime),
        };
        for _ in 0..server.config.addresses {
            server.add_address()?;
        }
        Ok(server)
    }

    /// Listens on one more loopback address (the next after the last, see
    /// [`loopback_addr`]) and returns it.
    pub fn add_address(&mut self) -> io::Result<SocketAddr> {
        let port = match (self.config.one_port, self.addrs.first()) {
            (true, Some(first)) => first.port(),
            _ => self.config.port,
        };
        let ip = loopback_addr(self.config.first_address + self.addrs.len());
        let listener = self.listening.bind(SocketAddr::new(ip, port))?;
        let addr = listener.local_addr()?;
        let latency = self
            .config
            .address_latency
            .iter()
            .find(|(i, _)| *i == self.addrs.len())
            .map(|(_, latency)| *latency);
        let address = Arc::new(Address::new(addr, self.config.cache, latency));
        self.lock_addresses().push(address.clone());
        self.accepts
            .push(Some(self.listening.spawn(listener, address)));
        self.addrs.push(addr);
        Ok(addr)
    }

    /// Takes the `i`-th address down: its listener closes (connects are
    /// refused) and its open connections are dropped, requests in flight
    /// on them unanswered. Returns once the listener is closed and the
    /// connections are gone (or after 5 s). Taking down an address that is
    /// down does nothing.
    ///
    /// # Panics
    ///
    /// If `i` is not below `addrs().len()`.
    pub async fn take_down(&mut self, i: usize) {
        let address = self.address(i);
        address.set_up(false);
        if let Some(accept) = self.accepts[i].take() {
            let _ = accept.await;
        }
        let deadline = tokio::time::Instant::now() + TAKE_DOWN_LIMIT;
        while address.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Brings the `i`-th address back up on the same socket address. An
    /// address that is up stays as it is.
    ///
    /// # Panics
    ///
    /// If `i` is not below `addrs().len()`.
    pub fn bring_up(&mut self, i: usize) -> io::Result<()> {
        let address = self.address(i);
        address.set_in_service(true);
        if self.accepts[i].is_some() {
            return Ok(());
        }
        let listener = self.listening.bind(address.addr)?;
        address.set_up(true);
        self.accepts[i] = Some(self.listening.spawn(listener, address));
        Ok(())
    }

    /// Retires the `i`-th address from the service: it still serves, but
    /// no longer counts in the load samples (its clients were told it is
    /// gone, its last requests drain). [`Server::bring_up`] counts it
    /// again.
    ///
    /// # Panics
    ///
    /// If `i` is not below `addrs().len()`.
    pub fn retire(&self, i: usize) {
        self.address(i).set_in_service(false);
    }

    /// Every address's counters, in address order.
    pub fn address_snapshots(&self) -> Vec<AddressSnapshot> {
        self.lock_addresses()
            .iter()
            .map(|address| address.snapshot())
            .collect()
    }

    fn address(&self, i: usize) -> Arc<Address> {
        self.lock_addresses()[i].clone()
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Address>>> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The bound addresses, in order (the first address first).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.listening.tls.is_some()
    }

    /// The base URL of the `i`-th address, e.g. `http://127.0.0.1:40123`.
    ///
    /// # Panics
    ///
    /// If `i` is not below `addrs().len()`.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
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

/// Samples the open connections and the load across the addresses in
/// service, up and not retired (see [`ServerStats::max_load_ratio_since`]).
async fn sampler(
    stats: ServerStats,
    addresses: Arc<Mutex<Vec<Arc<Address>>>>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        stats.sample();
        in_flight.clear();
        in_flight.extend(
            addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|address| address.in_service())
                .map(|address| address.in_flight()),
        );
        stats.sample_load(&in_flight);
    }
}

#[cfg(test)]
mod address_tests;
#[cfg(test)]
mod tests;
