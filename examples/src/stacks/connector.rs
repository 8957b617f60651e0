//! The stacks' connectors, all over hyper-util's `HttpConnector`
//! (`set_nodelay(true)`) and counting connections on the client's side
//! (used for `--target`, where the server's counters are out of reach):
//! hyper-rustls for the peers ([`LabConnector`]), this workspace's
//! `TlsConnector` for `reuse` ([`ReuseConnector`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio::net::TcpStream;
use tower_reuse_pool::TlsHandshake;
use tower_reuse_pool::events::{Connected as PoolConnected, PoolEvents};
use tower_reuse_pool::tls::TlsConnector;
use tower_service::Service;

use super::Protocol;

/// Boxed error, as connectors and services return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream a [`LabConnector`] yields.
pub type LabStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Client-side connection counters of one stack.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    inner: Arc<ClientCounters>,
}

#[derive(Debug, Default)]
struct ClientCounters {
    opened: AtomicU64,
    open: AtomicU64,
    peak_open: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
}

/// A copy of [`ClientStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClientSnapshot {
    /// Connections established (TCP, and TLS where used).
    pub opened: u64,
    /// Connections still open.
    pub open: u64,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Full TLS handshakes.
    pub tls_full: u64,
    /// Resumed TLS handshakes.
    pub tls_resumed: u64,
}

impl ClientStats {
    /// A copy of the counters.
    pub fn snapshot(&self) -> ClientSnapshot {
        let c = &self.inner;
        ClientSnapshot {
            opened: c.opened.load(Relaxed),
            open: c.open.load(Relaxed),
            peak_open: c.peak_open.load(Relaxed),
            tls_full: c.tls_full.load(Relaxed),
            tls_resumed: c.tls_resumed.load(Relaxed),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.inner.open.load(Relaxed)
    }

    fn opened(&self, stream: &LabStream) -> OpenGuard {
        if let MaybeHttpsStream::Https(tls) = stream {
            self.handshake(
                tls.inner().get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            );
        }
        self.opened_tcp()
    }

    fn opened_tcp(&self) -> OpenGuard {
        let c = &self.inner;
        c.opened.fetch_add(1, Relaxed);
        let open = c.open.fetch_add(1, Relaxed) + 1;
        c.peak_open.fetch_max(open, Relaxed);
        OpenGuard {
            stats: self.clone(),
        }
    }

    fn handshake(&self, resumed: bool) {
        let counter = if resumed {
            &self.inner.tls_resumed
        } else {
            &self.inner.tls_full
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// The `reuse` stack counts TLS handshakes from the pool's events.
impl PoolEvents for ClientStats {
    fn on_connect(&self, event: &PoolConnected<'_>) {
        if let Some(kind) = event.tls() {
            self.handshake(kind == TlsHandshake::Resumed);
        }
    }
}

#[derive(Debug)]
struct OpenGuard {
    stats: ClientStats,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.stats.inner.open.fetch_sub(1, Relaxed);
    }
}

/// `HttpConnector` (nodelay) under hyper-rustls, counting connections.
#[derive(Clone, Debug)]
pub struct LabConnector {
    inner: HttpsConnector<HttpConnector>,
    stats: ClientStats,
}

impl LabConnector {
    /// A connector for `protocol`; `tls` is the client configuration for
    /// `https` URIs (its ALPN is set here from `protocol`).
    pub fn new(protocol: Protocol, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let inner = match protocol {
            Protocol::Http1 => builder.enable_http1().wrap_connector(http),
            Protocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        Self {
            inner,
            stats: ClientStats::default(),
        }
    }

    /// The connector counting its connections in `stats` (shared with
    /// other connectors: a stack with a client per worker).
    pub fn counted_by(mut self, stats: ClientStats) -> Self {
        self.stats = stats;
        self
    }

    /// This connector's counters (shared by its clones).
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }
}

impl Service<Uri> for LabConnector {
    type Response = Counted<LabStream>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        ConnectFuture {
            inner: self.inner.call(uri),
            stats: self.stats.clone(),
        }
    }
}

type InnerConnect = <HttpsConnector<HttpConnector> as Service<Uri>>::Future;

pin_project! {
    /// The future of [`LabConnector::call`].
    pub struct ConnectFuture {
        #[pin]
        inner: InnerConnect,
        stats: ClientStats,
    }
}

impl std::fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

impl Future for ConnectFuture {
    type Output = Result<Counted<LabStream>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let stream = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.stats.opened(&stream);
        Poll::Ready(Ok(Counted {
            inner: stream,
            _guard: guard,
        }))
    }
}

pin_project! {
    /// A connection counted as open until dropped.
    #[derive(Debug)]
    pub struct Counted<T> {
        #[pin]
        inner: T,
        _guard: OpenGuard,
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
}

/// `HttpConnector` (nodelay), counting connections: the transport under the
/// `reuse` stack's [`TlsConnector`].
#[derive(Clone, Debug)]
pub struct TcpConnector {
    inner: HttpConnector,
    stats: ClientStats,
}

/// The `reuse` stack's connector: this workspace's TLS over [`TcpConnector`].
pub type ReuseConnector = TlsConnector<TcpConnector>;

impl TcpConnector {
    /// A counting TCP connector sharing `stats`.
    pub fn new(stats: ClientStats) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.enforce_http(false);
        Self { inner, stats }
    }
}

impl Service<Uri> for TcpConnector {
    type Response = Counted<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(Counted {
                inner: stream,
                _guard: stats.opened_tcp(),
            })
        })
    }
}
