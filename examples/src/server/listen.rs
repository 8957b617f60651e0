//! Binding an address and accepting on it: at start, for an address added
//! later, and again for an address brought back after being taken down.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::address::Address;
use super::chaos::ServerStream;
use super::{ServerStats, conn, late};

/// A TLS handshake that has not finished after this long is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an accept loop needs, shared by all addresses.
pub(crate) struct Listening {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) stats: ServerStats,
    pub(crate) settings: Arc<conn::Settings>,
    pub(crate) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) backlog: u32,
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("tls", &self.tls.is_some())
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

impl Listening {
    /// Binds `addr` (port 0: an ephemeral one) with `SO_REUSEADDR`, so an
    /// address taken down binds again at once.
    pub(crate) fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let _enter = self.runtime.enter();
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        socket.listen(self.backlog)
    }

    /// Accepts on `listener` for `address` until the server shuts down or
    /// the address is taken down (then the listener closes).
    pub(crate) fn spawn(&self, listener: TcpListener, address: Arc<Address>) -> JoinHandle<()> {
        self.runtime.spawn(accept_loop(
            listener,
            address,
            self.tls.clone(),
            self.stats.clone(),
            self.settings.clone(),
            self.builder.clone(),
            self.shutdown.clone(),
        ))
    }
}

async fn accept_loop(
    listener: TcpListener,
    address: Arc<Address>,
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
            _ = address.went_down() => return,
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
        let (stats, settings, builder, shutdown, address) = (
            stats.clone(),
            settings.clone(),
            builder.clone(),
            shutdown.clone(),
            address.clone(),
        );
        let conn = conn::Accepted {
            index,
            reset_on_drop,
            stats,
            settings,
            builder,
            shutdown,
            address,
        };
        match &tls {
            None if conn.settings.late_release.is_some() => {
                tokio::spawn(late::serve(
                    stream,
                    conn.stats,
                    conn.settings,
                    conn.shutdown,
                ));
            }
            None => {
                tokio::spawn(conn::serve(stream, conn));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            conn.stats
                                .tls_handshake(stream.get_ref().1.handshake_kind());
                            conn::serve(stream, conn).await;
                        }
                        _ => conn.stats.tls_handshake(None),
                    }
                });
            }
        }
    }
}
