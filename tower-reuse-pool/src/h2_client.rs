//! The pool's HTTP/2 client: the `h2` crate driven directly.
//!
//! hyper's HTTP/2 client hands each request to a dispatch task, which holds
//! a new stream until h2 opens it and drops it when a graceful GOAWAY comes
//! first: the caller is told "dispatch task is gone", while h2 still sends
//! the stream's HEADERS (then a reset), so nobody can tell whether the
//! server saw the request. Here the request's own future holds its stream
//! from `send_request` to the response: a stream at or below the GOAWAY's
//! last stream id is answered, one above it fails as never processed (RFC
//! 9113, 6.8) and the pool queues the request again.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::BoxError;
use crate::config::PoolConfig;
use crate::connect::StreamLimit;

/// The streams a connection may carry before the server's SETTINGS say
/// (RFC 9113's recommended minimum for servers to advertise).
pub(crate) const ASSUMED_MAX_STREAMS: usize = 100;

// Larger than the protocol's 64 KiB defaults: a body moves without waiting
// for a window update every few frames.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// The response head limit when the configuration sets none.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Sends requests on one HTTP/2 connection; cheap to clone. The connection
/// closes once every sender is gone and its streams have ended.
#[derive(Clone)]
pub(crate) struct H2Sender(Arc<Shared>);

struct Shared {
    send: SendRequest<Bytes>,
    /// Set by the connection's task once it takes no new stream (GOAWAY,
    /// an error, or its end).
    closed: AtomicBool,
    /// Requests between `send` and their response head.
    sending: Arc<AtomicUsize>,
    /// Set when the connection was closed for an unanswered PING.
    ping_timed_out: AtomicBool,
    /// Dropped with the last sender: tells the connection's task to let
    /// the connection close.
    _senders_gone: oneshot::Sender<()>,
}

impl fmt::Debug for H2Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Sender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl StreamLimit for H2Sender {
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`; 0 once closed.
    fn current(&self) -> usize {
        if self.is_closed() {
            0
        } else {
            self.0.send.current_max_send_streams()
        }
    }
}

/// A request that did not get a response: its error, the request itself
/// when h2 never took it, and whether any of it may have been sent.
pub(crate) struct Unsent<B> {
    pub(crate) error: BoxError,
    pub(crate) message: Option<Request<B>>,
    pub(crate) sent: bool,
}

impl H2Sender {
    /// Whether the connection takes no new stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// A stream's error, or the unanswered PING that closed its connection.
    fn explain(&self, error: h2::Error) -> BoxError {
        if self.0.ping_timed_out.load(Ordering::Acquire) {
            Box::new(PingTimedOut(error))
        } else {
            Box::new(error)
        }
    }

    /// Sends `req` and waits for the response head.
    ///
    /// A request body is sent by a task of its own, which stops when the
    /// response (or this future, before it) is dropped.
    pub(crate) async fn send<B>(&self, req: Request<B>) -> Result<Response<H2Body>, Unsent<B>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let _sending = Sending::new(&self.0.sending);
        let mut send = self.0.send.clone();
        if let Err(error) = poll_fn(|cx| send.poll_ready(cx)).await {
            // The connection takes no new stream (a GOAWAY, or its end):
            // no other request is handed it, even before its task, busy
            // reading what came with the GOAWAY, tells the pool.
            self.0.closed.store(true, Ordering::Release);
            return Err(Unsent {
                error: self.explain(error),
                message: Some(req),
                sent: false,
            });
        }
        let (mut parts, body) = req.into_parts();
        strip_connection_headers(&mut parts.headers);
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(&parts.method))
        {
            parts
                .headers
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
        let end_of_stream = body.is_end_stream();
        let (response, stream) = send
            .send_request(Request::from_parts(parts, ()), end_of_stream)
            .map_err(|error| Unsent {
                error: self.explain(error),
                message: None,
                sent: false,
            })?;
        let pipe = (!end_of_stream).then(|| {
            let (pipe, stopped) = oneshot::channel();
            tokio::spawn(pipe_body(body, stream, stopped));
            pipe
        });
        let response = response.await.map_err(|error| Unsent {
            error: self.explain(error),
            message: None,
            sent: true,
        })?;
        let (parts, recv) = response.into_parts();
        let remaining = content_length(&parts.headers);
        Ok(Response::from_parts(
            parts,
            H2Body {
                recv,
                data_done: false,
                remaining,
                conn: self.clone(),
                _pipe: pipe,
            },
        ))
    }
}

/// The HTTP/2 handshake over `io`, with the pool's settings.
pub(crate) async fn handshake<T>(
    io: T,
    config: &PoolConfig,
) -> Result<(H2Sender, Connection<T, Bytes>, oneshot::Receiver<()>), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(ASSUMED_MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        // `validate` keeps a configured limit within 32 bits.
        .max_header_list_size(
            config
                .max_response_header_bytes
                .map_or(MAX_HEADER_LIST, |max| {
                    u32::try_from(max).unwrap_or(u32::MAX)
                }),
        );
    let (send, conn) = builder.handshake(io).await?;
    let (senders_gone, gone) = oneshot::channel();
    let sender = H2Sender(Arc::new(Shared {
        send,
        closed: AtomicBool::new(false),
        ping_timed_out: AtomicBool::new(false),
        sending: Arc::default(),
        _senders_gone: senders_gone,
    }));
    Ok((sender, conn, gone))
}

/// How the connection's task reports to the pool.
pub(crate) trait ConnectionEvents: Send + 'static {
    /// The server's stream limit is now `limit`.
    fn limit_changed(&mut self, limit: usize);
    /// The connection takes no new stream: `graceful` after a GOAWAY with
    /// `NO_ERROR`, `calm` after `ENHANCE_YOUR_CALM`. Called once.
    fn closed(&mut self, graceful: bool, calm: bool);
}

/// Drives the connection until it ends: reads the server's stream limit
/// after each step, marks the sender closed (and tells `events`) once the
/// connection takes no new stream, and sends a PING every `ping_every`,
/// closing the connection when one is not answered within that time.
pub(crate) async fn drive<T, E>(
    mut conn: Connection<T, Bytes>,
    sender: H2Sender,
    mut senders_gone: oneshot::Receiver<()>,
    ping_every: Option<Duration>,
    mut events: E,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    E: ConnectionEvents,
{
    let mut keep_alive = ping_every.and_then(|every| {
        conn.ping_pong()
            .map(|ping_pong| KeepAlive::new(ping_pong, every))
    });
    let mut last_limit = conn.max_concurrent_send_streams();
    // A handle of the task's own, to see when the connection takes no new
    // stream; dropped once the pool's senders are all gone, so that the
    // connection can close.
    let shared = Arc::downgrade(&sender.0);
    let mut probe = Some(sender.0.send.clone());
    let sending = sender.0.sending.clone();
    drop(sender);
    let mut open = true;
    let mut step = |cx: &mut Context<'_>| {
        if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
            return Step::Ended(result.map_err(Some));
        }
        if let Some(keep_alive) = &mut keep_alive
            && keep_alive.poll_timed_out(cx)
        {
            // Dropping the connection fails its streams.
            if let Some(shared) = shared.upgrade() {
                shared.ping_timed_out.store(true, Ordering::Release);
            }
            return Step::Ended(Err(None));
        }
        let limit = conn.max_concurrent_send_streams();
        if limit != last_limit {
            last_limit = limit;
            events.limit_changed(limit);
        }
        if probe.is_some() && Pin::new(&mut senders_gone).poll(cx).is_ready() {
            probe = None;
        }
        if open
            && let Some(probe) = &mut probe
            && let Poll::Ready(Err(error)) =
                probe.poll_ready(&mut Context::from_waker(Waker::noop()))
        {
            open = false;
            if let Some(shared) = shared.upgrade() {
                shared.closed.store(true, Ordering::Release);
            }
            events.closed(is_graceful(&error), is_calm(&error));
        }
        // With other requests on their way, more are likely to come from
        // other tasks.
        Step::Pending {
            busy: sending.load(Ordering::Relaxed) > 1,
        }
    };
    let ended = loop {
        let busy = match poll_fn(|cx| Poll::Ready(step(cx))).await {
            Step::Ended(ended) => break ended,
            Step::Pending { busy } => busy,
        };
        woken().await;
        if busy {
            // Let the tasks already scheduled run before this one writes:
            // the requests they send go out together. Run at once (woken
            // by each request's stream, it runs next), the task would
            // write each request on its own.
            tokio::task::yield_now().await;
        }
    };
    // Dropped before the pool hears of it: the streams left fail now.
    drop(conn);
    if let Some(shared) = shared.upgrade() {
        shared.closed.store(true, Ordering::Release);
    }
    if open {
        let (graceful, calm) = match &ended {
            Ok(()) => (true, false),
            Err(Some(error)) => (is_graceful(error), is_calm(error)),
            // The keep-alive PING went unanswered.
            Err(None) => (false, false),
        };
        events.closed(graceful, calm);
    }
}

/// Counts a request from `send` to its response head.
struct Sending<'a>(&'a AtomicUsize);

impl<'a> Sending<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Sending(count)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One poll of a connection's task: its end (`Err(None)`: the keep-alive
/// PING went unanswered), or whether requests are being sent at once.
enum Step {
    Ended(Result<(), Option<h2::Error>>),
    Pending { busy: bool },
}

/// Pending once, then ready: completes when the task is next polled, i.e.
/// woken by whatever its last poll registered with.
fn woken() -> impl Future<Output = ()> {
    let mut first = true;
    poll_fn(move |_| {
        if std::mem::take(&mut first) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
}

fn is_graceful(error: &h2::Error) -> bool {
    error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR)
}

/// Whether an HTTP/2 error carries `ENHANCE_YOUR_CALM` (on a stream, or in
/// the GOAWAY that ended the connection).
fn is_calm(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
}

/// A PING every interval; the connection is over when one goes unanswered
/// for an interval.
struct KeepAlive {
    ping_pong: PingPong,
    every: Duration,
    /// The next PING when none is out; the deadline of its PONG when one is.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl KeepAlive {
    fn new(ping_pong: PingPong, every: Duration) -> KeepAlive {
        KeepAlive {
            ping_pong,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            waiting: false,
        }
    }

    /// Sends PINGs as due; true once one went unanswered too long.
    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + self.every);
                        continue;
                    }
                    // The connection failed: its own poll says how.
                    Poll::Ready(Err(_)) => return false,
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx).is_ready();
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.ping_pong.send_ping(Ping::opaque()).is_err() {
                return false;
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + self.every);
        }
    }
}

/// Sends a request body on its stream: a frame at a time, each once the
/// stream has room for it; stops when `stopped` fires (the response was
/// dropped) or the server resets the stream. A failed body resets the
/// stream.
async fn pipe_body<B>(body: B, mut stream: SendStream<Bytes>, mut stopped: oneshot::Receiver<()>)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    poll_fn(|cx| {
        if Pin::new(&mut stopped).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            stream.reserve_capacity(1);
            if stream.capacity() == 0 {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => continue,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            } else if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                None => {
                    let _ = stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Some(Err(_)) => {
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let end = body.is_end_stream();
                    let bytes = data.copy_to_bytes(data.remaining());
                    if stream.send_data(bytes, end).is_err() || end {
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            }
        }
    })
    .await
}

/// An HTTP/2 response body. Received bytes are given back to the flow
/// control window as they are read; the request body's task stops when this
/// is dropped.
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// Bytes still due by the response's `content-length`.
    remaining: Option<u64>,
    conn: H2Sender,
    _pipe: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for H2Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Body")
            .field("end_stream", &self.recv.is_end_stream())
            .finish()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(this.conn.explain(error)))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(this.conn.explain(error))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

/// A stream failed because its connection was closed: a keep-alive PING
/// went unanswered (`http2_ping_interval`).
#[derive(Debug)]
pub(crate) struct PingTimedOut(h2::Error);

impl fmt::Display for PingTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed: its keep-alive PING went unanswered")
    }
}

impl StdError for PingTimedOut {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Header fields that are about one HTTP/1.1 connection and have no place
/// in HTTP/2 (RFC 9113, 8.2.2); h2 refuses a request carrying them.
const CONNECTION_SPECIFIC: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Removes the connection-specific fields, those `Connection` names, and
/// a `TE` other than `trailers`.
fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in &CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
    if let Some(connection) = headers.remove(CONNECTION)
        && let Ok(names) = connection.to_str()
    {
        for name in names.split(',') {
            headers.remove(name.trim());
        }
    }
}

/// Methods whose requests are defined to carry content: an empty body is
/// said with `content-length: 0`.
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first error of type `T` in `error` or its sources.
pub(crate) fn find<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}
