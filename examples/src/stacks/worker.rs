//! [`WorkerClient`]: one uniform way to send a request on any stack and read
//! the whole response.

use std::error::Error as _;
use std::fmt;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry_sdk::trace::SdkTracer;
use serde::Serialize;
use tower_reuse_affinity::Affinity;
use tower_reuse_otel::Otel;
use tower_reuse_pool::Pool;
use tower_service::Service;

use super::{Instruments, TracedClient};

use super::{AdaptivePool, BareSpan, BoxError, LabConnector, P2cClient, Protocol, ReuseConnector};
use crate::server::{X_REQUEST_ID, X_SERVED_BY};
use crate::target::Target;

/// A client a load worker sends through; see [`super::Stack::worker`].
// Built once per worker or task and never copied around: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WorkerClient {
    /// Opens a connection for every request.
    Fresh {
        /// The connector.
        connector: LabConnector,
        /// HTTP/1.1 or HTTP/2 on each new connection.
        protocol: Protocol,
    },
    /// hyper-util's legacy client.
    Legacy(Client<LabConnector, Full<Bytes>>),
    /// One pre-established HTTP/1 connection, owned by this worker.
    RawHttp1(http1::SendRequest<Full<Bytes>>),
    /// A handle on the shared pre-established HTTP/2 connection.
    RawHttp2(http2::SendRequest<Full<Bytes>>),
    /// A clone of this workspace's stack: the adaptive layer over the pool.
    Reuse(AdaptivePool),
    /// A clone of the pool alone (`reuse-shared`).
    Pool(Pool<ReuseConnector, Full<Bytes>>),
    /// A clone of the pool under `OtelLayer`.
    ReuseOtel(Otel<Pool<ReuseConnector, Full<Bytes>>, SdkTracer>),
    /// A clone of the pool, and a bare span per request.
    ReuseSpan(Pool<ReuseConnector, Full<Bytes>>, BareSpan),
    /// A handle on the p2c balancer's buffer.
    P2c(P2cClient),
    /// A clone of the affinity layer over the pool.
    ReuseAffinity(Affinity<Pool<ReuseConnector, Full<Bytes>>>),
    /// hyper-util's client under `TraceLayer`, with what its requests
    /// report to.
    Traced(TracedClient, Instruments),
}

/// A response read to the end.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The response status.
    pub status: StatusCode,
    /// The `x-request-id` the response carried.
    pub request_id: Option<HeaderValue>,
    /// Body bytes read.
    pub body_bytes: usize,
    /// The address that served it, from the embedded server's
    /// `x-served-by` (when it sends one).
    pub served_by: Option<HeaderValue>,
}

/// What kind of failure a request met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestErrorKind {
    /// The connection could not be established.
    Connect,
    /// The connection closed before the response was complete (the stale
    /// pooled connection case) or the request was cancelled.
    Closed,
    /// The peer reset the connection (a TCP RST) before the response was
    /// complete.
    Reset,
    /// The server refused the stream (HTTP/2 `REFUSED_STREAM`): more streams
    /// were opened than it allows.
    Refused,
    /// The server's HTTP/2 GOAWAY ended the stream unprocessed (its id was
    /// above the last one the server took).
    GoAway,
    /// The stack gave up waiting (its connect, checkout or response
    /// timeout). A request the stack never answers is lost, not an error.
    Timeout,
    /// The response status was not a success.
    Status,
    /// Reading the response body failed.
    Body,
    /// The open-loop driver had too many requests in flight and dropped one.
    Overload,
    /// Anything else.
    Other,
}

impl RequestErrorKind {
    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            RequestErrorKind::Connect => "connect",
            RequestErrorKind::Closed => "closed",
            RequestErrorKind::Reset => "reset",
            RequestErrorKind::Refused => "refused-stream",
            RequestErrorKind::GoAway => "goaway",
            RequestErrorKind::Timeout => "timeout",
            RequestErrorKind::Status => "status",
            RequestErrorKind::Body => "body",
            RequestErrorKind::Overload => "overload",
            RequestErrorKind::Other => "other",
        }
    }
}

/// A failed request.
#[derive(Debug)]
pub struct RequestError {
    /// The kind of failure.
    pub kind: RequestErrorKind,
    /// What happened.
    pub message: String,
}

impl RequestError {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: RequestErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for RequestError {}

/// Classifies a `hyper::Error`.
pub fn classify_hyper(e: &hyper::Error) -> RequestErrorKind {
    let cause = transport_cause(e);
    if let Some(kind) = cause.and_then(classify_cause) {
        kind
    } else if e.is_timeout() {
        RequestErrorKind::Timeout
    } else if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        RequestErrorKind::Closed
    } else if let Some(Cause::Io(io)) = cause {
        classify_io(io)
    } else {
        RequestErrorKind::Other
    }
}

/// Classifies any boxed error by looking for a `hyper::Error`, an HTTP/2
/// error or an I/O error in its chain.
pub fn classify_boxed(e: &(dyn std::error::Error + 'static)) -> RequestErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return classify_hyper(h);
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return classify_cause(Cause::H2(h2)).unwrap_or(RequestErrorKind::Other);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        cur = err.source();
    }
    RequestErrorKind::Other
}

/// The transport error under a hyper error.
#[derive(Clone, Copy)]
enum Cause<'a> {
    H2(&'a h2::Error),
    Io(&'a std::io::Error),
}

/// The first HTTP/2 or I/O error in `e`'s sources.
fn transport_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<Cause<'a>> {
    let mut cur = e.source();
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(Cause::H2(h2));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(Cause::Io(io));
        }
        cur = err.source();
    }
    None
}

/// The kinds a transport error decides on its own: a refused stream, the
/// server's GOAWAY, a reset connection.
fn classify_cause(cause: Cause<'_>) -> Option<RequestErrorKind> {
    match cause {
        Cause::H2(h2) if h2.reason() == Some(h2::Reason::REFUSED_STREAM) => {
            Some(RequestErrorKind::Refused)
        }
        Cause::H2(h2) if h2.is_go_away() && h2.is_remote() => Some(RequestErrorKind::GoAway),
        Cause::H2(h2) => h2.get_io().map(classify_io),
        Cause::Io(io) => {
            (classify_io(io) == RequestErrorKind::Reset).then_some(RequestErrorKind::Reset)
        }
    }
}

fn classify_io(io: &std::io::Error) -> RequestErrorKind {
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => RequestErrorKind::Connect,
        std::io::ErrorKind::TimedOut => RequestErrorKind::Timeout,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            RequestErrorKind::Reset
        }
        _ => RequestErrorKind::Closed,
    }
}

fn hyper_error(e: hyper::Error) -> RequestError {
    RequestError::new(classify_hyper(&e), chain(&e))
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cur = err.source();
    }
    text
}

/// `request` through the pool (or a layer over it with the pool's errors).
async fn send_pooled<S>(
    client: &mut S,
    request: Request<Full<Bytes>>,
) -> Result<Completed, RequestError>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_reuse_pool::PoolBody>,
            Error = tower_reuse_pool::Error,
        >,
{
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .map_err(pool_error)?;
    let response = client.call(request).await.map_err(pool_error)?;
    complete(response).await
}

fn pool_error(e: tower_reuse_pool::Error) -> RequestError {
    let kind = if e.is_connect() {
        RequestErrorKind::Connect
    } else if e.is_timeout() {
        RequestErrorKind::Timeout
    } else {
        match classify_boxed(&e) {
            RequestErrorKind::Other if e.kind() == tower_reuse_pool::ErrorKind::Closed => {
                RequestErrorKind::Closed
            }
            kind => kind,
        }
    };
    RequestError::new(kind, chain(&e))
}

fn affinity_error(e: tower_reuse_affinity::Error) -> RequestError {
    match e.pool_error() {
        Some(pool) => pool_error(pool.clone()),
        None => RequestError::new(RequestErrorKind::Other, chain(&e)),
    }
}

fn boxed_error(e: BoxError) -> RequestError {
    RequestError::new(classify_boxed(e.as_ref()), chain(e.as_ref()))
}

/// hyper-util's client's error, classified.
fn legacy_error(e: hyper_util::client::legacy::Error) -> RequestError {
    let kind = if e.is_connect() {
        RequestErrorKind::Connect
    } else {
        e.source().map_or(RequestErrorKind::Other, classify_boxed)
    };
    RequestError::new(kind, chain(&e))
}

fn connect_error(e: BoxError) -> RequestError {
    RequestError::new(RequestErrorKind::Connect, e.to_string())
}

/// Reads a response to the end.
pub async fn complete<B>(response: Response<B>) -> Result<Completed, RequestError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    let mut body_bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            let kind = match classify_boxed(e.as_ref()) {
                RequestErrorKind::Other => RequestErrorKind::Body,
                kind => kind,
            };
            RequestError::new(kind, chain(e.as_ref()))
        })?;
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        }
    }
    Ok(Completed {
        status: parts.status,
        request_id: parts.headers.get(X_REQUEST_ID).cloned(),
        body_bytes,
        served_by: parts.headers.get(X_SERVED_BY).cloned(),
    })
}

impl WorkerClient {
    /// Sends `request` (its URI is `target.uri`) and reads the response.
    pub async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
        target: &Target,
    ) -> Result<Completed, RequestError> {
        match self {
            WorkerClient::Fresh {
                connector,
                protocol,
            } => {
                let io = connector
                    .call(target.uri.clone())
                    .await
                    .map_err(connect_error)?;
                match protocol {
                    Protocol::Http1 => {
                        let (mut sender, connection) =
                            http1::handshake(io).await.map_err(hyper_error)?;
                        tokio::spawn(connection);
                        to_origin_form(&mut request, target);
                        let response = sender.send_request(request).await.map_err(hyper_error)?;
                        complete(response).await
                    }
                    Protocol::Http2 => {
                        let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .handshake(io)
                            .await
                            .map_err(hyper_error)?;
                        tokio::spawn(connection);
                        let response = sender.send_request(request).await.map_err(hyper_error)?;
                        complete(response).await
                    }
                }
            }
            WorkerClient::Legacy(client) => {
                let response = client.request(request).await.map_err(legacy_error)?;
                complete(response).await
            }
            WorkerClient::RawHttp1(sender) => {
                sender.ready().await.map_err(hyper_error)?;
                to_origin_form(&mut request, target);
                let response = sender.send_request(request).await.map_err(hyper_error)?;
                complete(response).await
            }
            WorkerClient::RawHttp2(sender) => {
                sender.ready().await.map_err(hyper_error)?;
                let response = sender.send_request(request).await.map_err(hyper_error)?;
                complete(response).await
            }
            WorkerClient::Reuse(client) => send_pooled(client, request).await,
            WorkerClient::Pool(pool) => send_pooled(pool, request).await,
            WorkerClient::ReuseOtel(client) => {
                std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(pool_error)?;
                let response = client.call(request).await.map_err(pool_error)?;
                complete(response).await
            }
            WorkerClient::ReuseSpan(pool, bare) => {
                std::future::poll_fn(|cx| pool.poll_ready(cx))
                    .await
                    .map_err(pool_error)?;
                let mut span = bare.start();
                let response = pool.call(request).await.map_err(pool_error);
                BareSpan::end(&mut span, response.as_ref().ok());
                complete(response?).await
            }
            WorkerClient::ReuseAffinity(client) => {
                std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(affinity_error)?;
                let response = client.call(request).await.map_err(affinity_error)?;
                complete(response).await
            }
            WorkerClient::P2c(client) => {
                std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .map_err(boxed_error)?;
                let response = client.call(request).await.map_err(boxed_error)?;
                complete(response).await
            }
            WorkerClient::Traced(client, instruments) => {
                use tracing::instrument::WithSubscriber as _;
                let method = request.method().clone();
                let dispatch = instruments.dispatch.clone();
                async {
                    let started = tokio::time::Instant::now();
                    std::future::poll_fn(|cx| client.poll_ready(cx))
                        .await
                        .map_err(legacy_error)?;
                    let response = client.call(request).await;
                    let status = response.as_ref().ok().map(Response::status);
                    instruments.record(&method, started, status);
                    complete(response.map_err(legacy_error)?).await
                }
                .with_subscriber(dispatch)
                .await
            }
        }
    }
}

/// What hyper-util's client does before writing an HTTP/1 request: origin-form
/// URI and a `Host` header (both pre-built, so no formatting per request).
fn to_origin_form<B>(request: &mut Request<B>, target: &Target) {
    *request.uri_mut() = target.origin.clone();
    request.headers_mut().insert(HOST, target.host.clone());
}
