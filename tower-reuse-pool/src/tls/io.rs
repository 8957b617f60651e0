//! The connection [`TlsConnector`](super::TlsConnector) hands the pool:
//! encrypted for `https` targets, the transport as is for `http` ones; and
//! the scheduled TLS 1.3 key update on encrypted connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

/// A connection opened by [`TlsConnector`](super::TlsConnector).
#[derive(Debug)]
pub struct TlsIo<Io> {
    inner: Inner<Io>,
}

#[derive(Debug)]
enum Inner<Io> {
    Plain(Io),
    /// Boxed: rustls' connection state is about a kilobyte.
    Tls(Box<TokioIo<Encrypted<Io>>>),
}

impl<Io> TlsIo<Io> {
    pub(crate) fn plain(io: Io) -> Self {
        TlsIo {
            inner: Inner::Plain(io),
        }
    }

    pub(crate) fn encrypted(stream: TlsStream<TokioIo<Io>>, key_update: Option<KeyUpdate>) -> Self {
        TlsIo {
            inner: Inner::Tls(Box::new(TokioIo::new(Encrypted { stream, key_update }))),
        }
    }

    /// The rustls connection, for an encrypted connection.
    pub fn tls(&self) -> Option<&rustls::ClientConnection> {
        match &self.inner {
            Inner::Plain(_) => None,
            Inner::Tls(io) => Some(io.inner().stream.get_ref().1),
        }
    }
}

/// Refreshes the traffic keys of one connection every `every`, if it has
/// sent data since the last refresh.
#[derive(Debug)]
pub(crate) struct KeyUpdate {
    every: Duration,
    sleep: Pin<Box<Sleep>>,
    done: Arc<AtomicU64>,
    /// Application data was written since the last key update.
    wrote: bool,
}

impl KeyUpdate {
    pub(crate) fn new(every: Duration, done: Arc<AtomicU64>) -> Self {
        // Longer than the pool's longest duration is never: bounded, so
        // that no deadline computed from it overflows an `Instant`.
        let every = every.min(crate::PoolConfig::MAX_DURATION);
        KeyUpdate {
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
            done,
            wrote: false,
        }
    }
}

/// An encrypted connection as a tokio IO, updating its keys on schedule.
#[derive(Debug)]
struct Encrypted<Io> {
    stream: TlsStream<TokioIo<Io>>,
    key_update: Option<KeyUpdate>,
}

impl<Io> Encrypted<Io>
where
    Io: Read + Write + Unpin,
{
    /// If the key update is due, ask rustls for one (TLS 1.3 only: on TLS
    /// 1.2 rustls refuses and nothing happens) and start sending it.
    /// Called from every read and write, so the connection task's waker
    /// is registered with the timer whether the connection is busy or idle
    /// (hyper keeps a read pending on idle connections).
    ///
    /// A connection that wrote nothing since its last update is skipped:
    /// its keys encrypted nothing new, and peers (rustls, BoringSSL) close
    /// a connection after 32 KeyUpdates with no application data between.
    fn update_keys_if_due(&mut self, cx: &mut Context<'_>) {
        let Some(schedule) = self.key_update.as_mut() else {
            return;
        };
        if schedule.sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        schedule
            .sleep
            .as_mut()
            .reset(Instant::now() + schedule.every);
        let _ = schedule.sleep.as_mut().poll(cx);
        if !schedule.wrote {
            return;
        }
        if self.stream.get_mut().1.refresh_traffic_keys().is_ok() {
            schedule.wrote = false;
            schedule.done.fetch_add(1, Ordering::Relaxed);
            // The KeyUpdate message waits in rustls' buffer: send it now,
            // not with the next request.
            let _ = Pin::new(&mut self.stream).poll_flush(cx);
        }
    }

    /// Remember that application data went out, for the next key update.
    fn note_written(&mut self, written: &Poll<io::Result<usize>>) {
        if let (Some(schedule), Poll::Ready(Ok(1..))) = (self.key_update.as_mut(), written) {
            schedule.wrote = true;
        }
    }
}

impl<Io> AsyncRead for Encrypted<Io>
where
    Io: Read + Write + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.update_keys_if_due(cx);
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<Io> AsyncWrite for Encrypted<Io>
where
    Io: Read + Write + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.update_keys_if_due(cx);
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_written(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.update_keys_if_due(cx);
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl<Io> Read for TlsIo<Io>
where
    Io: Read + Write + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Inner::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl<Io> Write for TlsIo<Io>
where
    Io: Read + Write + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Inner::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Inner::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(io) => io.is_write_vectored(),
            Inner::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(io) => Pin::new(io).poll_flush(cx),
            Inner::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Inner::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}
