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
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::BoxError;
use crate::config::PoolConfig;
use crate::connect::StreamLimit;

mod body;
mod drive;

pub(crate) use body::H2Body;
use body::pipe_body;
pub(crate) use drive::{ConnectionEvents, drive, is_calm, is_graceful};

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

pub(super) struct Shared {
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
