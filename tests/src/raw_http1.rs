//! An HTTP/1.1 server on loopback written by hand over a `TcpListener`, for
//! the failures a well-behaved hyper server never produces: it reads a
//! request and closes without answering, announces a body longer than the
//! one it sends (and closes or resets), answers late, dribbles its head,
//! sends bytes nobody asked for on an idle connection, ends a body by
//! closing, or sends a head larger than any client reads. It records every
//! request it reads, and its answers echo the request's `x-request-id`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the server does with one request, once it has read all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `200 OK` with a 2-byte body; the connection stays open.
    Respond,
    /// Close the connection without answering.
    Close,
    /// Reset the connection (an RST, not a FIN) without answering.
    Reset,
    /// Announce a 100-byte body, send 10 bytes of it, close the connection.
    TruncateBody,
    /// Announce a 100-byte body, send 10 bytes of it, then, once
    /// [`RawHttp1Server::release`] has been called, reset the connection.
    ResetMidBody,
    /// Write the head of [`Answer::Respond`] one byte at a time, this long
    /// apart, then its body.
    DribbleHead(Duration),
    /// Wait this long, then answer as [`Answer::Respond`].
    RespondAfter(Duration),
    /// Answer as [`Answer::Respond`]; this long after, write these bytes,
    /// which no request asked for, and keep the connection open.
    RespondThenSend(Duration, &'static [u8]),
    /// `200 OK` with neither `content-length` nor chunking: the body ends
    /// when the server closes the connection, which it does.
    CloseDelimited,
    /// `200 OK` whose head carries `headers` more headers with values of
    /// `size` bytes each, then as [`Answer::Respond`].
    HugeHead {
        /// How many filler headers.
        headers: usize,
        /// The length of each filler header's value.
        size: usize,
    },
}

/// A request the server read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// The connection, numbered from 0 in accept order.
    pub conn: usize,
    /// The request's place on its connection, from 0.
    pub index: u64,
    /// The request method.
    pub method: String,
    /// The request's `x-request-id`, if it carried a number there.
    pub id: Option<u64>,
    /// The request body.
    pub body: Vec<u8>,
}

type Script = dyn Fn(usize, u64) -> Answer + Send + Sync;

/// A running server; stops accepting when dropped.
pub struct RawHttp1Server {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    released: watch::Sender<bool>,
    _stop: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct Seen {
    accepted: usize,
    requests: Vec<RawRequest>,
}

impl fmt::Debug for RawHttp1Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawHttp1Server")
            .field("addr", &self.addr)
            .field("seen", &*lock(&self.seen))
            .finish()
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

impl RawHttp1Server {
    /// Start a server on 127.0.0.1 answering request `index` on connection
    /// `conn` with `answer(conn, index)`.
    pub async fn start(answer: impl Fn(usize, u64) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answer: Arc<Script> = Arc::new(answer);
        let (stop, mut stopped) = watch::channel(());
        let released = watch::Sender::new(false);
        let releases = released.clone();
        let accepting = seen.clone();
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let _ = socket.set_nodelay(true);
                let conn = {
                    let mut seen = lock(&accepting);
                    seen.accepted += 1;
                    seen.accepted - 1
                };
                tokio::spawn(serve(
                    socket,
                    conn,
                    answer.clone(),
                    accepting.clone(),
                    releases.subscribe(),
                ));
            }
        });
        RawHttp1Server {
            addr,
            seen,
            released,
            _stop: stop,
        }
    }

    /// `http://addr` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        lock(&self.seen).accepted
    }

    /// Let every answer waiting for it go on, now and from now on.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Every request read so far, in the order read.
    pub fn requests(&self) -> Vec<RawRequest> {
        lock(&self.seen).requests.clone()
    }
}

async fn serve(
    socket: TcpStream,
    conn: usize,
    answer: Arc<Script>,
    seen: Arc<Mutex<Seen>>,
    mut released: watch::Receiver<bool>,
) {
    let mut socket = BufReader::new(socket);
    for index in 0.. {
        let Some(request) = read_request(&mut socket, conn, index).await else {
            return;
        };
        let id = request.id;
        lock(&seen).requests.push(request);
        // Echoed when the request carried one.
        let echo = id.map_or_else(String::new, |id| format!("x-request-id: {id}\r\n"));
        let ok =
            format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-conn-id: {conn}\r\n{echo}\r\nok");
        let written = match answer(conn, index) {
            Answer::Respond => write(&mut socket, ok.as_bytes()).await,
            Answer::Close => return,
            Answer::Reset => {
                let _ = socket.get_ref().set_zero_linger();
                return;
            }
            Answer::TruncateBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
                let _ = write(&mut socket, head.as_bytes()).await;
                return;
            }
            Answer::ResetMidBody => {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
                if write(&mut socket, head.as_bytes()).await.is_ok() {
                    let _ = released.wait_for(|released| *released).await;
                }
                let _ = socket.get_ref().set_zero_linger();
                return;
            }
            Answer::DribbleHead(interval) => {
                let (head, body) = ok.split_at(ok.len() - 2);
                for byte in head.as_bytes().chunks(1) {
                    if write(&mut socket, byte).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
                write(&mut socket, body.as_bytes()).await
            }
            Answer::RespondAfter(delay) => {
                tokio::time::sleep(delay).await;
                write(&mut socket, ok.as_bytes()).await
            }
            Answer::RespondThenSend(after, unsolicited) => {
                if write(&mut socket, ok.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(after).await;
                write(&mut socket, unsolicited).await
            }
            Answer::CloseDelimited => {
                let head = format!("HTTP/1.1 200 OK\r\nx-conn-id: {conn}\r\n{echo}\r\nok");
                let _ = write(&mut socket, head.as_bytes()).await;
                return;
            }
            Answer::HugeHead { headers, size } => {
                let filler = "a".repeat(size);
                let mut head = format!("HTTP/1.1 200 OK\r\nx-conn-id: {conn}\r\n{echo}");
                for n in 0..headers {
                    head.push_str(&format!("x-filler-{n}: {filler}\r\n"));
                }
                head.push_str("content-length: 2\r\n\r\nok");
                write(&mut socket, head.as_bytes()).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn write(socket: &mut BufReader<TcpStream>, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

/// Read request `index` of connection `conn`: its method, its
/// `x-request-id` and its `content-length` body. `None` at the end of the
/// stream or on anything malformed.
async fn read_request(
    socket: &mut BufReader<TcpStream>,
    conn: usize,
    index: u64,
) -> Option<RawRequest> {
    let mut line = String::new();
    if socket.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let method = line.split_whitespace().next()?.to_owned();
    let mut length = 0;
    let mut id = None;
    loop {
        line.clear();
        if socket.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        } else if name.trim().eq_ignore_ascii_case("x-request-id") {
            id = value.trim().parse().ok();
        }
    }
    let mut body = vec![0; length];
    socket.read_exact(&mut body).await.ok()?;
    Some(RawRequest {
        conn,
        index,
        method,
        id,
        body,
    })
}
