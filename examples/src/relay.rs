//! A TCP relay that adds a fixed one-way delay, as a network between two
//! hosts does: it listens on a loopback address, opens one upstream
//! connection per connection it accepts, and forwards every chunk read
//! from either side after `delay`, in order, the half-close (FIN) too.
//! A server's close therefore reaches the client `delay` later, and a
//! request sent on a connection the server is closing reaches the server
//! `delay` later: the race a keep-alive client meets on a real network
//! and never on bare loopback.
//!
//! The relay lives as long as its [`Relay`]: dropping it stops accepting
//! and closes every relayed connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

/// The loopback address relays listen on (an ephemeral port each): apart
/// from the embedded server's addresses.
pub const RELAY_IP: [u8; 4] = [127, 0, 0, 254];

/// Bytes read from one side at a time.
const CHUNK: usize = 16 * 1024;

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying connections accepted on [`RELAY_IP`] to
    /// `upstream`, each direction delayed by `delay`. Runs on the current
    /// tokio runtime.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((RELAY_IP, 0))).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept(listener, upstream, delay));
        Ok(Self { addr, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts until aborted; the connections' tasks end with it (the set is
/// dropped with the task).
async fn accept(listener: TcpListener, upstream: SocketAddr, delay: Duration) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    connections.spawn(relay(client, upstream, delay));
                }
            }
            // Reap finished connections so the set stays small.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One relayed connection: both directions until each has carried its
/// close (or failed).
async fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        // The client sees its connection closed, as if refused late.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed(client_read, server_write, delay),
        delayed(server_read, client_write, delay),
    );
}

/// What one direction carries: data, then the end of the stream.
#[derive(Debug)]
enum Segment {
    Data(Bytes),
    /// The reader saw the end (or an error): shut the writer down.
    End,
}

/// Copies `from` to `to`, each chunk and the end written `delay` after it
/// was read, in the order read. Reading goes on while earlier chunks wait,
/// as on a link with room in flight.
async fn delayed(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Segment)>();
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let segment = match from.read(&mut buf).await {
                Ok(0) | Err(_) => Segment::End,
                Ok(n) => Segment::Data(Bytes::copy_from_slice(&buf[..n])),
            };
            let end = matches!(segment, Segment::End);
            if tx.send((Instant::now() + delay, segment)).is_err() || end {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, segment)) = rx.recv().await {
            sleep_until(at).await;
            match segment {
                Segment::Data(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Segment::End => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    // A writer ended early (the peer gone) ends its reader at its next
    // chunk: the send fails.
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests;
