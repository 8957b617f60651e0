//! [`MemoryH2`]: an HTTP/2 server over in-memory pipes, written frame by
//! frame, for tests on paused time. With no socket it stays deterministic,
//! and it sends what the `h2` server API cannot: a second SETTINGS, a
//! GOAWAY with a chosen last stream id and error code, and refusals that
//! follow a stream limit of its own, counted busy for a while after each
//! stream has ended (as grpc-core counts them).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use h2::Reason;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tower_reuse_pool::{Connect, ConnectError, Established, Pool, PoolConfig, Target};

use crate::client;
use crate::h2frame::{ACK, END_HEADERS, END_STREAM, Frame, HEADERS, PING, PREFACE_LEN, SETTINGS};

/// The target of the tests on paused time.
pub const URL: &str = "http://h2.test/";

/// Every connection's first `SETTINGS_MAX_CONCURRENT_STREAMS`, unless set
/// with [`MemoryH2::max_streams`].
pub const FIRST_MAX_STREAMS: u32 = 10;

/// What [`MemoryH2`] does on every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer every stream.
    Respond,
    /// Answer the first stream, send GOAWAY with its id as the last stream
    /// id and close: a stream sent after it was never processed.
    GoAwayAfterFirstStream,
    /// Send GOAWAY with last stream id 0 right after SETTINGS and answer
    /// nothing; close once the client does.
    GoAwayAtOnce,
    /// Answer the first `n` streams; reset every later one with
    /// `ENHANCE_YOUR_CALM`.
    CalmAfter(u64),
    /// Answer the first `n` streams; at the next one send GOAWAY with
    /// `ENHANCE_YOUR_CALM` and the last answered stream's id, and close.
    CalmGoAwayAfter(u64),
}

/// What [`MemoryH2`] saw on one connection, and a test's handle on it.
#[derive(Debug)]
pub struct MemoryConn {
    /// Streams the client opened on it.
    pub streams: u64,
    /// Streams the server answered on it.
    pub answered: u64,
    /// Streams the server refused (`REFUSED_STREAM`) on it.
    pub refused: u64,
    /// The most stream slots the server counted busy at once.
    pub peak_busy: usize,
    /// The server's end has closed.
    pub closed: bool,
    /// What a test asks the server to send.
    commands: mpsc::UnboundedSender<Command>,
}

/// An HTTP/2 server over in-memory pipes (see the module's docs). It
/// answers `:status 200` with no body, and counts per connection the
/// streams it was sent, answered and refused.
#[derive(Clone, Debug)]
pub struct MemoryH2 {
    behaviour: Behaviour,
    max_streams: u32,
    respond_after: Option<Duration>,
    release_after: Option<Duration>,
    conns: Arc<Mutex<Vec<MemoryConn>>>,
}

/// What a test asks a connection's server to send.
enum Command {
    /// SETTINGS lowering or raising `SETTINGS_MAX_CONCURRENT_STREAMS`; the
    /// sender fires on the client's ACK.
    MaxStreams(u32, oneshot::Sender<()>),
    /// A graceful GOAWAY; the sender fires just before it is written.
    Drain(oneshot::Sender<()>),
}

/// What the timers of one connection tell its loop.
enum Timer {
    /// Answer this stream now.
    Answer(u32),
    /// A stream's slot is free again.
    Release,
}

impl MemoryH2 {
    /// A server behaving as `behaviour`, advertising [`FIRST_MAX_STREAMS`].
    pub fn new(behaviour: Behaviour) -> Self {
        MemoryH2 {
            behaviour,
            max_streams: FIRST_MAX_STREAMS,
            respond_after: None,
            release_after: None,
            conns: Arc::default(),
        }
    }

    /// Advertise `max` streams in every connection's first SETTINGS.
    pub fn max_streams(mut self, max: u32) -> Self {
        self.max_streams = max;
        self
    }

    /// Answer each stream `after` it opened.
    pub fn respond_after(mut self, after: Duration) -> Self {
        self.respond_after = Some(after);
        self
    }

    /// Enforce the advertised limit, counting a stream's slot busy until
    /// `after` its answer went out: a stream that arrives while every slot
    /// is busy is refused (`REFUSED_STREAM`), though the client, which
    /// counts the slot free at the answer, was within the limit.
    pub fn late_release(mut self, after: Duration) -> Self {
        self.release_after = Some(after);
        self
    }

    /// The connections, in accept order.
    pub fn conns(&self) -> MutexGuard<'_, Vec<MemoryConn>> {
        self.conns.lock().expect("not poisoned")
    }

    /// Connections accepted.
    pub fn accepted(&self) -> usize {
        self.conns().len()
    }

    /// Connections whose server end is still open.
    pub fn open(&self) -> usize {
        self.conns().iter().filter(|c| !c.closed).count()
    }

    /// Streams opened by the client, and streams answered, on every
    /// connection.
    pub fn streams(&self) -> (u64, u64) {
        let conns = self.conns();
        (
            conns.iter().map(|c| c.streams).sum(),
            conns.iter().map(|c| c.answered).sum(),
        )
    }

    /// Streams refused on every connection.
    pub fn refused(&self) -> u64 {
        self.conns().iter().map(|c| c.refused).sum()
    }

    /// Send connection `conn` SETTINGS with `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// at `max`; returns once the client has acknowledged them.
    pub async fn set_max_streams(&self, conn: usize, max: u32) {
        let (acked, on_ack) = oneshot::channel();
        let sent = self.conns()[conn]
            .commands
            .send(Command::MaxStreams(max, acked));
        sent.expect("the connection is open");
        on_ack.await.expect("the client acknowledged the SETTINGS");
    }

    /// Have connection `conn` start a graceful drain, as grpc-core and
    /// hyper's servers do: a GOAWAY with `NO_ERROR` and the largest stream
    /// id (2^31 - 1), after which it still answers every stream. Returns
    /// as the GOAWAY is written, with the caller's task woken before the
    /// client's connection task: on a current-thread runtime a request the
    /// caller sends at once is queued on the connection before the client
    /// reads the GOAWAY, deterministically.
    pub async fn drain_racing(&self, conn: usize) {
        let (started, on_start) = oneshot::channel();
        let sent = self.conns()[conn].commands.send(Command::Drain(started));
        sent.expect("the connection is open");
        on_start.await.expect("the server drains");
    }

    /// Serve connection `conn` until either end closes it.
    async fn serve(
        self,
        mut io: DuplexStream,
        conn: usize,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let _ = self.converse(&mut io, conn, &mut commands).await;
        drop(io);
        self.conns()[conn].closed = true;
    }

    async fn converse(
        &self,
        io: &mut DuplexStream,
        conn: usize,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> std::io::Result<()> {
        // One entry per SETTINGS sent and not acknowledged yet, in order:
        // `Some` for those a test is waiting on.
        let mut unacked: VecDeque<Option<oneshot::Sender<()>>> = VecDeque::from([None]);
        io.write_all(Frame::settings_max_streams(self.max_streams).as_bytes())
            .await?;
        if self.behaviour == Behaviour::GoAwayAtOnce {
            io.write_all(Frame::goaway(0).as_bytes()).await?;
        }
        let (timers, mut fired) = mpsc::unbounded_channel();
        // Stream slots the server counts busy (with `late_release`).
        let mut busy = 0;
        let mut last_answered = 0;
        let mut buf = BytesMut::new();
        let mut preface_left = PREFACE_LEN;
        loop {
            let skip = preface_left.min(buf.len());
            buf.advance(skip);
            preface_left -= skip;
            while preface_left == 0
                && let Some(frame) = Frame::take(&mut buf)
            {
                match frame.kind() {
                    SETTINGS if frame.is_ack() => {
                        if let Some(Some(acked)) = unacked.pop_front() {
                            let _ = acked.send(());
                        }
                    }
                    SETTINGS => {
                        io.write_all(Frame::new(SETTINGS, ACK, 0, &[]).as_bytes())
                            .await?
                    }
                    PING if !frame.is_ack() => {
                        let pong = Frame::new(PING, ACK, 0, frame.payload());
                        io.write_all(pong.as_bytes()).await?
                    }
                    HEADERS => {
                        let stream = frame.stream();
                        let index = {
                            let mut conns = self.conns();
                            conns[conn].streams += 1;
                            conns[conn].streams - 1
                        };
                        match self.behaviour {
                            Behaviour::GoAwayAtOnce => continue,
                            Behaviour::CalmAfter(n) if index >= n => {
                                let reset = Frame::rst_stream(stream, Reason::ENHANCE_YOUR_CALM);
                                io.write_all(reset.as_bytes()).await?;
                                continue;
                            }
                            Behaviour::CalmGoAwayAfter(n) if index >= n => {
                                let goaway =
                                    Frame::goaway_with(last_answered, Reason::ENHANCE_YOUR_CALM);
                                return io.write_all(goaway.as_bytes()).await;
                            }
                            _ => {}
                        }
                        if self.release_after.is_some() {
                            if busy >= self.max_streams as usize {
                                self.conns()[conn].refused += 1;
                                let reset = Frame::rst_stream(stream, Reason::REFUSED_STREAM);
                                io.write_all(reset.as_bytes()).await?;
                                continue;
                            }
                            busy += 1;
                            let mut conns = self.conns();
                            conns[conn].peak_busy = conns[conn].peak_busy.max(busy);
                        }
                        match self.respond_after {
                            Some(after) => {
                                let timers = timers.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(after).await;
                                    let _ = timers.send(Timer::Answer(stream));
                                });
                            }
                            None => {
                                self.answer(io, conn, stream, &timers).await?;
                                last_answered = stream;
                                if self.behaviour == Behaviour::GoAwayAfterFirstStream {
                                    return io.write_all(Frame::goaway(stream).as_bytes()).await;
                                }
                            }
                        }
                    }
                    // WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY: nothing
                    // to do; the client closes when it is done.
                    _ => {}
                }
            }
            tokio::select! {
                read = io.read_buf(&mut buf) => if read? == 0 {
                    return Ok(());
                },
                Some(command) = commands.recv() => match command {
                    Command::MaxStreams(max, acked) => {
                        unacked.push_back(Some(acked));
                        io.write_all(Frame::settings_max_streams(max).as_bytes()).await?;
                    }
                    Command::Drain(started) => {
                        // Wakes the test's task before the write wakes the
                        // client's connection task.
                        let _ = started.send(());
                        let goaway = Frame::goaway_with(u32::MAX >> 1, Reason::NO_ERROR);
                        io.write_all(goaway.as_bytes()).await?;
                    }
                },
                Some(timer) = fired.recv() => match timer {
                    Timer::Answer(stream) => {
                        self.answer(io, conn, stream, &timers).await?;
                        last_answered = last_answered.max(stream);
                    }
                    Timer::Release => busy -= 1,
                },
            }
        }
    }

    /// Answer `stream` (`:status 200`, end of stream); with `late_release`,
    /// free its slot later.
    async fn answer(
        &self,
        io: &mut DuplexStream,
        conn: usize,
        stream: u32,
        timers: &mpsc::UnboundedSender<Timer>,
    ) -> std::io::Result<()> {
        self.conns()[conn].answered += 1;
        // HPACK `0x88`: the static table's `:status: 200`.
        let head = Frame::new(HEADERS, END_STREAM | END_HEADERS, stream, &[0x88]);
        io.write_all(head.as_bytes()).await?;
        if let Some(after) = self.release_after {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(Timer::Release);
            });
        }
        Ok(())
    }
}

impl Connect for MemoryH2 {
    type Io = TokioIo<DuplexStream>;
    type Future = Pin<Box<dyn Future<Output = Result<Established<Self::Io>, ConnectError>> + Send>>;

    fn connect(&self, _target: &Target) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let (client, server_end) = tokio::io::duplex(64 * 1024);
            let (commands, on_command) = mpsc::unbounded_channel();
            let conn = {
                let mut conns = server.conns();
                conns.push(MemoryConn {
                    streams: 0,
                    answered: 0,
                    refused: 0,
                    peak_busy: 0,
                    closed: false,
                    commands,
                });
                conns.len() - 1
            };
            tokio::spawn(server.serve(server_end, conn, on_command));
            Ok(Established::new(TokioIo::new(client)))
        })
    }
}

/// An h2c pool over `server` with `config`.
pub fn memory_pool(server: &MemoryH2, config: PoolConfig) -> Pool<MemoryH2> {
    client(server.clone(), config.http2_prior_knowledge(true))
}
