//! An HTTP/2 server on loopback, built on the `h2` crate's server API, that
//! misbehaves on cue: it refuses streams, resets them mid-body, sends GOAWAY
//! at a chosen moment or below a stream the client has already sent, sends
//! heads larger than asked for, and lowers its stream limit in the middle of
//! a connection. It counts what it sees from its own side of the wire.
//!
//! Each accepted socket runs through a frame relay in front of the `h2`
//! server. The relay counts the client's streams as they arrive, chooses
//! each stream's [`Reply`], and writes the two frames the `h2` server API
//! cannot send: a second SETTINGS (a lower `SETTINGS_MAX_CONCURRENT_STREAMS`)
//! and a GOAWAY whose last stream id is below a stream already on the wire.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::Reason;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::h2frame::{Frame, HEADERS, PING, PREFACE_LEN, SETTINGS};

/// What the server does with one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer 200 at once.
    Respond,
    /// Reset the stream with `REFUSED_STREAM`: not processed, safe to retry.
    Refuse,
    /// Reset the stream with this reason (`INTERNAL_ERROR`, say): the
    /// server took it and may have processed it.
    Reset(Reason),
    /// Close the connection, with no GOAWAY and no answer: the client reads
    /// the end of the stream.
    Close,
    /// Answer 200 once [`H2Server::release`] has been called.
    Hold,
    /// Answer 200, then shut the connection down gracefully (GOAWAY).
    RespondThenGoAway,
    /// Answer 200 with the first bytes of a body; once
    /// [`H2Server::release`] has been called, reset the stream with
    /// `INTERNAL_ERROR`. The connection carries on.
    ResetMidBody,
    /// Answer 200 with a header whose value is this many bytes long.
    HugeHead(usize),
    /// Keep the stream from the server and send the client a graceful GOAWAY
    /// (`NO_ERROR`) whose last stream id is the stream before it: the request
    /// was never processed.
    GoAwayBelow,
}

/// The stream a [`Reply`] is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAt {
    /// The connection, numbered from 0 in accept order.
    pub conn: usize,
    /// The stream's place on its connection, from 0.
    pub index: u64,
}

/// How the server behaves.
#[derive(Clone)]
pub struct H2Options {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` in every connection's first
    /// SETTINGS. Defaults to 200, as hyper's server.
    pub max_concurrent_streams: Option<u32>,
    /// Chooses each stream's reply. Defaults to [`Reply::Respond`].
    pub reply: Arc<dyn Fn(StreamAt) -> Reply + Send + Sync>,
}

impl H2Options {
    /// Default options, answering each stream with `reply(stream)`.
    pub fn replying(reply: impl Fn(StreamAt) -> Reply + Send + Sync + 'static) -> Self {
        H2Options {
            reply: Arc::new(reply),
            ..H2Options::default()
        }
    }
}

impl Default for H2Options {
    fn default() -> Self {
        H2Options {
            max_concurrent_streams: Some(200),
            reply: Arc::new(|_| Reply::Respond),
        }
    }
}

impl fmt::Debug for H2Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Options")
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .finish_non_exhaustive()
    }
}

/// What the server saw on one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSeen {
    /// Streams the client opened on it, whatever their reply.
    pub streams: u64,
    /// PING acknowledgements the client sent.
    pub ping_acks: u64,
    /// The client's side of the connection has closed.
    pub closed: bool,
}

/// What the server saw, per connection in accept order.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// One entry per accepted connection.
    pub conns: Vec<ConnSeen>,
}

impl Seen {
    /// Connections accepted.
    pub fn accepted(&self) -> usize {
        self.conns.len()
    }

    /// Connections whose client side is still open.
    pub fn open(&self) -> usize {
        self.conns.iter().filter(|c| !c.closed).count()
    }

    /// Streams the client opened on connection `conn` (0 if not accepted).
    pub fn streams_on(&self, conn: usize) -> u64 {
        self.conns.get(conn).map_or(0, |c| c.streams)
    }

    /// Streams the client opened on every connection.
    pub fn streams(&self) -> u64 {
        self.conns.iter().map(|c| c.streams).sum()
    }
}

/// A running server; stops accepting when dropped.
pub struct H2Server {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: watch::Sender<()>,
}

impl fmt::Debug for H2Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Server")
            .field("addr", &self.addr)
            .field("seen", &*self.shared.seen.borrow())
            .finish_non_exhaustive()
    }
}

impl H2Server {
    /// Start a server on 127.0.0.1 with `options`.
    pub async fn start(options: H2Options) -> H2Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            options,
            seen: watch::Sender::new(Seen::default()),
            released: watch::Sender::new(false),
            replies: Mutex::default(),
            conns: Mutex::default(),
        });
        let (stop, mut stopped) = watch::channel(());
        let accepting = shared.clone();
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
                accepting.open(socket);
            }
        });
        H2Server {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// `http://addr` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What the server has seen so far.
    pub fn seen(&self) -> Seen {
        self.shared.seen.borrow().clone()
    }

    /// Wait until what the server has seen satisfies `done`.
    pub async fn wait_until(&self, done: impl FnMut(&Seen) -> bool) {
        let mut seen = self.shared.seen.subscribe();
        seen.wait_for(done)
            .await
            .expect("the server holds the sender");
    }

    /// Answer every held stream, and from now on hold none.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// Shut connection `conn` down gracefully: GOAWAY with the last stream id
    /// at 2^31-1 and a PING, then, once the PING is answered, GOAWAY with the
    /// last stream the server took. Returns once the client has answered the
    /// PING, so it has read the first GOAWAY.
    pub async fn goaway(&self, conn: usize) {
        let acks = self.seen().conns[conn].ping_acks;
        self.control(conn, |c| c.shutdown.send(Shutdown::Graceful).is_ok());
        self.wait_until(|seen| seen.conns[conn].ping_acks > acks)
            .await;
    }

    /// Shut connection `conn` down at once: GOAWAY with `reason` and the last
    /// stream the server took, then close, whatever streams are open.
    pub fn abrupt_goaway(&self, conn: usize, reason: Reason) {
        self.control(conn, |c| c.shutdown.send(Shutdown::Abrupt(reason)).is_ok());
    }

    /// Send connection `conn` a SETTINGS frame lowering
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` to `max`. Returns once the client
    /// has acknowledged it. The `h2` server behind the relay keeps its own
    /// limit: it accepts whatever the client sends.
    pub async fn lower_max_streams(&self, conn: usize, max: u32) {
        let (acked, on_ack) = oneshot::channel();
        self.control(conn, |c| {
            c.outgoing
                .send(Outgoing::Settings {
                    max_concurrent_streams: max,
                    acked,
                })
                .is_ok()
        });
        on_ack.await.expect("the client acknowledged the SETTINGS");
    }

    fn control(&self, conn: usize, send: impl FnOnce(&ConnControl) -> bool) {
        let conns = self.shared.conns.lock().expect("not poisoned");
        let sent = send(&conns[conn]);
        assert!(sent, "connection {conn} has ended");
    }
}

/// What the accept loop, the relays and the `h2` servers share.
struct Shared {
    options: H2Options,
    seen: watch::Sender<Seen>,
    released: watch::Sender<bool>,
    /// Replies the relay chose, by (connection, stream id), until the `h2`
    /// server accepts the stream.
    replies: Mutex<HashMap<(usize, u32), Reply>>,
    conns: Mutex<Vec<ConnControl>>,
}

/// A test's handles on one connection.
struct ConnControl {
    /// Asks the `h2` server to shut the connection down.
    shutdown: mpsc::UnboundedSender<Shutdown>,
    /// What the relay writes to the client.
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

/// How the `h2` server shuts a connection down.
enum Shutdown {
    Graceful,
    Abrupt(Reason),
}

/// What the relay writes to the client, in order.
enum Outgoing {
    /// A frame from the `h2` server.
    Frame(Frame),
    /// A SETTINGS frame of the relay's own; `acked` fires on the client's ACK.
    Settings {
        max_concurrent_streams: u32,
        acked: oneshot::Sender<()>,
    },
    /// A graceful GOAWAY of the relay's own.
    GoAway { last_stream_id: u32 },
    /// The `h2` server has closed its end.
    End,
}

impl Shared {
    /// Serve a new connection: the relay on the socket, the `h2` server
    /// behind it on an in-memory pipe.
    fn open(self: &Arc<Self>, socket: TcpStream) {
        let (relay_end, server_end) = tokio::io::duplex(64 * 1024);
        let (shutdown, on_shutdown) = mpsc::unbounded_channel();
        let (outgoing, to_client) = mpsc::unbounded_channel();
        let conn = {
            let mut conns = self.conns.lock().expect("not poisoned");
            conns.push(ConnControl {
                shutdown: shutdown.clone(),
                outgoing: outgoing.clone(),
            });
            conns.len() - 1
        };
        self.seen
            .send_modify(|seen| seen.conns.push(ConnSeen::default()));
        let relay = Relay {
            conn,
            shared: self.clone(),
            wire: Mutex::default(),
            outgoing,
        };
        tokio::spawn(relay.run(socket, relay_end, to_client));
        tokio::spawn(serve(server_end, conn, self.clone(), shutdown, on_shutdown));
    }
}

/// Serve HTTP/2 on `io` with the `h2` server API until the connection ends.
async fn serve(
    io: DuplexStream,
    conn: usize,
    shared: Arc<Shared>,
    shutdown: mpsc::UnboundedSender<Shutdown>,
    mut on_shutdown: mpsc::UnboundedReceiver<Shutdown>,
) {
    let mut builder = h2::server::Builder::new();
    if let Some(max) = shared.options.max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    loop {
        tokio::select! {
            accepted = connection.accept() => {
                let Some(Ok((request, respond))) = accepted else {
                    break;
                };
                let stream = u32::from(respond.stream_id());
                let reply = shared
                    .replies
                    .lock()
                    .expect("not poisoned")
                    .remove(&(conn, stream))
                    .unwrap_or(Reply::Respond);
                let shutdown = shutdown.clone();
                tokio::spawn(answer(request, respond, conn, reply, shared.clone(), shutdown));
            }
            Some(shutdown) = on_shutdown.recv() => match shutdown {
                Shutdown::Graceful => connection.graceful_shutdown(),
                Shutdown::Abrupt(reason) => connection.abrupt_shutdown(reason),
            },
        }
    }
}

/// Answer one stream as `reply` says.
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: usize,
    reply: Reply,
    shared: Arc<Shared>,
    shutdown: mpsc::UnboundedSender<Shutdown>,
) {
    match reply {
        Reply::Refuse => return respond.send_reset(Reason::REFUSED_STREAM),
        Reply::Reset(reason) => return respond.send_reset(reason),
        Reply::Close => {
            // The relay writes nothing after `End`: not even the reset that
            // dropping `respond` makes.
            let conns = shared.conns.lock().expect("not poisoned");
            let _ = conns[conn].outgoing.send(Outgoing::End);
            return;
        }
        _ => {}
    }
    if reply == Reply::Hold {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|released| *released).await;
    }
    let mut response = http::Response::builder().header("x-conn-id", conn);
    if let Some(id) = request.headers().get("x-request-id") {
        response = response.header("x-request-id", id);
    }
    if let Reply::HugeHead(size) = reply {
        response = response.header("x-filler", "a".repeat(size));
    }
    let response = response.body(()).expect("valid response");
    let sent = respond.send_response(response, false);
    if reply == Reply::ResetMidBody {
        let Ok(mut body) = sent else {
            return;
        };
        let _ = body.send_data(Bytes::from_static(b"0123456789"), false);
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|released| *released).await;
        return body.send_reset(Reason::INTERNAL_ERROR);
    }
    if let Ok(mut body) = sent {
        let _ = body.send_data(Bytes::from_static(b"ok"), true);
    }
    if reply == Reply::RespondThenGoAway {
        let _ = shutdown.send(Shutdown::Graceful);
    }
}

/// Carries one connection's frames between the client's socket and the
/// `h2` server, counting streams, choosing replies and adding frames.
struct Relay {
    conn: usize,
    shared: Arc<Shared>,
    wire: Mutex<Wire>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

/// What the two directions of a relay tell each other.
#[derive(Default)]
struct Wire {
    /// One entry per SETTINGS frame written to the client and not yet
    /// acknowledged, in order: `None` for the `h2` server's own (its ACK goes
    /// through), `Some` for the relay's (its ACK stops here).
    settings: VecDeque<Option<oneshot::Sender<()>>>,
    /// Set once the relay has sent GOAWAY: the client's frames on streams
    /// above it never reach the server.
    goaway_last: Option<u32>,
}

impl Relay {
    async fn run(
        self,
        socket: TcpStream,
        server: DuplexStream,
        to_client: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let (from_client, client) = socket.into_split();
        let (from_server, server) = tokio::io::split(server);
        tokio::join!(
            self.client_to_server(from_client, server),
            self.read_server(from_server),
            self.write_client(client, to_client),
        );
    }

    /// Forward the client's frames to the server, but for the relay's own
    /// SETTINGS acknowledgements and frames on streams above its GOAWAY.
    async fn client_to_server(
        &self,
        mut client: impl AsyncRead + Unpin,
        mut server: impl AsyncWrite + Unpin,
    ) {
        let mut preface = [0; PREFACE_LEN];
        if client.read_exact(&mut preface).await.is_ok() && server.write_all(&preface).await.is_ok()
        {
            let mut last_stream = 0;
            let mut index = 0;
            while let Some(frame) = Frame::read(&mut client).await {
                if frame.kind() == HEADERS && frame.stream() > last_stream {
                    self.new_stream(frame.stream(), last_stream, index);
                    last_stream = frame.stream();
                    index += 1;
                }
                if !self.passes(&frame) {
                    continue;
                }
                if server.write_all(frame.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        self.shared
            .seen
            .send_modify(|seen| seen.conns[self.conn].closed = true);
        let _ = server.shutdown().await;
    }

    /// The client opened `stream`: count it and choose its reply.
    fn new_stream(&self, stream: u32, previous: u32, index: u64) {
        let conn = self.conn;
        self.shared
            .seen
            .send_modify(|seen| seen.conns[conn].streams += 1);
        let reply = (self.shared.options.reply)(StreamAt { conn, index });
        if reply == Reply::GoAwayBelow {
            self.wire.lock().expect("not poisoned").goaway_last = Some(previous);
            let _ = self.outgoing.send(Outgoing::GoAway {
                last_stream_id: previous,
            });
        } else {
            let mut replies = self.shared.replies.lock().expect("not poisoned");
            replies.insert((conn, stream), reply);
        }
    }

    /// Whether a frame from the client goes on to the server.
    fn passes(&self, frame: &Frame) -> bool {
        let mut wire = self.wire.lock().expect("not poisoned");
        // SETTINGS are acknowledged in the order they were sent.
        if frame.kind() == SETTINGS
            && frame.is_ack()
            && let Some(Some(acked)) = wire.settings.pop_front()
        {
            let _ = acked.send(());
            return false;
        }
        if frame.kind() == PING && frame.is_ack() {
            let conn = self.conn;
            self.shared
                .seen
                .send_modify(|seen| seen.conns[conn].ping_acks += 1);
        }
        wire.goaway_last
            .is_none_or(|last| frame.stream() <= last || frame.stream() == 0)
    }

    async fn read_server(&self, mut server: impl AsyncRead + Unpin) {
        while let Some(frame) = Frame::read(&mut server).await {
            if self.outgoing.send(Outgoing::Frame(frame)).is_err() {
                return;
            }
        }
        let _ = self.outgoing.send(Outgoing::End);
    }

    /// Write the server's frames and the relay's own to the client, in order.
    async fn write_client(
        &self,
        mut client: impl AsyncWrite + Unpin,
        mut to_client: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        while let Some(outgoing) = to_client.recv().await {
            let frame = match outgoing {
                Outgoing::Frame(frame) => {
                    if frame.kind() == SETTINGS && !frame.is_ack() {
                        let mut wire = self.wire.lock().expect("not poisoned");
                        wire.settings.push_back(None);
                    }
                    frame
                }
                Outgoing::Settings {
                    max_concurrent_streams,
                    acked,
                } => {
                    let mut wire = self.wire.lock().expect("not poisoned");
                    wire.settings.push_back(Some(acked));
                    Frame::settings_max_streams(max_concurrent_streams)
                }
                Outgoing::GoAway { last_stream_id } => Frame::goaway(last_stream_id),
                Outgoing::End => break,
            };
            if client.write_all(frame.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = client.shutdown().await;
    }
}
