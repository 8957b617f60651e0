//! An in-memory connector: every connect spawns the test server's
//! connection handler on the other end of a `tokio::io::duplex` pipe. With
//! no real sockets, tests on paused time stay deterministic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tower::Service;

use crate::server::{ServerOptions, ServerStats, serve};

/// Connects to an in-process server with the given options.
#[derive(Clone, Debug)]
pub struct DuplexConnector {
    options: Arc<ServerOptions>,
    /// What the server saw.
    pub stats: Arc<ServerStats>,
    /// Connect attempts so far (including refused ones).
    pub attempts: Arc<AtomicU64>,
    /// While set, connects fail with `ConnectionRefused`.
    pub refuse: Arc<AtomicBool>,
    /// Each connect takes this long.
    pub connect_delay: Option<Duration>,
    /// Connect `n` (from 0) takes `connect_delays[n]`, where given, instead.
    pub connect_delays: Arc<[Duration]>,
    /// Connections opened before this many connects are black-holed: what
    /// the client writes vanishes and nothing more arrives, as when a
    /// network path dies without a reset.
    pub blackholed: Arc<AtomicU64>,
    /// A middlebox between client and server resets connections idle
    /// longer than this: the client sees the reset when it next writes.
    pub reset_idle_after: Option<Duration>,
    /// Resets that middlebox sent.
    pub resets: Arc<AtomicU64>,
    conn_ids: Arc<AtomicU64>,
    stop: Arc<watch::Sender<()>>,
}

impl DuplexConnector {
    /// A connector to a server with `options`.
    pub fn new(options: ServerOptions) -> Self {
        DuplexConnector {
            options: Arc::new(options),
            stats: Arc::default(),
            attempts: Arc::default(),
            refuse: Arc::default(),
            connect_delay: None,
            connect_delays: Arc::new([]),
            blackholed: Arc::default(),
            reset_idle_after: None,
            resets: Arc::default(),
            conn_ids: Arc::default(),
            stop: Arc::new(watch::channel(()).0),
        }
    }

    /// Each connect takes `delay`.
    pub fn with_connect_delay(mut self, delay: Duration) -> Self {
        self.connect_delay = Some(delay);
        self
    }

    /// A middlebox resets connections idle longer than `after`.
    pub fn with_idle_reset(mut self, after: Duration) -> Self {
        self.reset_idle_after = Some(after);
        self
    }

    /// Black-hole every connection opened so far.
    pub fn blackhole_open_connections(&self) {
        self.blackholed
            .store(self.conn_ids.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Close every connection opened so far, as a server that goes down
    /// does; later ones are served.
    pub fn close_open_connections(&self) {
        let _ = self.stop.send(());
    }

    /// Connect `n` (from 0) takes `delays[n]`; later ones the connect delay.
    pub fn with_connect_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.connect_delays = delays.into_iter().collect();
        self
    }
}

/// The client end of a duplex pipe.
#[derive(Debug)]
pub struct DuplexIo {
    io: TokioIo<DuplexStream>,
    /// This connection's id and the connector's black-hole mark.
    blackhole: Option<(u64, Arc<AtomicU64>)>,
    /// The middlebox: its idle limit, the last time bytes moved, whether
    /// it has reset this connection, and its reset count.
    middlebox: Option<Middlebox>,
}

#[derive(Debug)]
struct Middlebox {
    reset_after: Duration,
    last_activity: tokio::time::Instant,
    reset: bool,
    resets: Arc<AtomicU64>,
}

impl Middlebox {
    /// Whether the connection is (now) reset; bytes moving keep it alive.
    fn check(&mut self) -> bool {
        if !self.reset && self.last_activity.elapsed() > self.reset_after {
            self.reset = true;
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
        self.reset
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "reset by the middlebox")
}

impl DuplexIo {
    /// The client end of a pipe whose other end a test server serves (or a
    /// test's own hand-written server).
    pub fn new(client: DuplexStream) -> Self {
        DuplexIo {
            io: TokioIo::new(client),
            blackhole: None,
            middlebox: None,
        }
    }

    fn is_blackholed(&self) -> bool {
        self.blackhole
            .as_ref()
            .is_some_and(|(id, mark)| *id < mark.load(Ordering::SeqCst))
    }
}

impl Connection for DuplexIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for DuplexIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_blackholed() {
            return Poll::Pending;
        }
        if self.middlebox.as_mut().is_some_and(Middlebox::check) {
            return Poll::Ready(Err(reset_error()));
        }
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(middlebox)) = (&read, self.middlebox.as_mut()) {
            middlebox.last_activity = tokio::time::Instant::now();
        }
        read
    }
}

impl hyper::rt::Write for DuplexIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_blackholed() {
            return Poll::Ready(Ok(buf.len()));
        }
        if self.middlebox.as_mut().is_some_and(Middlebox::check) {
            return Poll::Ready(Err(reset_error()));
        }
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let (Poll::Ready(Ok(_)), Some(middlebox)) = (&written, self.middlebox.as_mut()) {
            middlebox.last_activity = tokio::time::Instant::now();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Service<Uri> for DuplexConnector {
    type Response = DuplexIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<DuplexIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let attempt = this.attempts.fetch_add(1, Ordering::SeqCst);
            let delay = usize::try_from(attempt)
                .ok()
                .and_then(|n| this.connect_delays.get(n).copied())
                .or(this.connect_delay);
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if this.refuse.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "refused by test",
                ));
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            let conn_id = this.conn_ids.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(
                server,
                conn_id,
                this.options.clone(),
                this.stats.clone(),
                this.stop.subscribe(),
            ));
            let mut io = DuplexIo::new(client);
            io.blackhole = Some((conn_id, this.blackholed.clone()));
            io.middlebox = this.reset_idle_after.map(|reset_after| Middlebox {
                reset_after,
                last_activity: tokio::time::Instant::now(),
                reset: false,
                resets: this.resets.clone(),
            });
            Ok(io)
        })
    }
}
