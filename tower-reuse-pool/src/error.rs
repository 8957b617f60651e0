//! The pool's error type: opaque, with a kind, the phase and the target.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::target::Target;

/// A boxed error, as tower passes them around.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request cannot be sent anywhere: no authority, an unsupported scheme.
    InvalidRequest,
    /// The connector failed to open a connection.
    Connect,
    /// Opening a connection took longer than `connect_timeout`.
    ConnectTimeout,
    /// The TLS or HTTP handshake on a new connection failed.
    Handshake,
    /// No connection became available within `checkout_timeout`.
    CheckoutTimeout,
    /// The response head did not arrive within `response_timeout`.
    ResponseTimeout,
    /// The HTTP/1.1 response head was larger than `max_response_header_bytes`
    /// (or hyper's own bounds); its connection was closed.
    ResponseTooLarge,
    /// The target already has `max_waiters` requests waiting.
    TooManyWaiters,
    /// `call` was made without a successful `poll_ready`.
    NotReady,
    /// Sending the request or receiving the response head failed.
    Send,
    /// Reading the response body failed.
    Body,
    /// The pool was shut down.
    Closed,
}

/// The step a request had reached when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Before the pool looked for a connection.
    Request,
    /// Opening a connection.
    Connect,
    /// Waiting for a connection.
    Checkout,
    /// Writing the request and reading the response head.
    Send,
    /// Reading the response body.
    Body,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Request => "request",
            Phase::Connect => "connect",
            Phase::Checkout => "checkout",
            Phase::Send => "send",
            Phase::Body => "body",
        })
    }
}

/// An error from the pool.
///
/// Its `Display` says what failed, for which target, why (the immediate
/// cause, in words) and in which [`Phase`]:
/// `connect failed for http://127.0.0.1:1: tcp connect error: connection
/// refused (connect phase)`. [`kind()`](Error::kind) classifies it, and
/// `source()` keeps the underlying error.
///
/// Cheap to clone: one connect failure is handed to every waiter that was
/// counting on that connection.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    phase: Phase,
    message: String,
    target: Option<String>,
    /// The immediate cause, in words, shown after the target.
    cause: Option<String>,
    may_have_been_processed: bool,
    source: Option<BoxError>,
}

impl Error {
    fn new(kind: ErrorKind, phase: Phase, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                phase,
                message: message.into(),
                target: None,
                cause: None,
                may_have_been_processed: false,
                source: None,
            }),
        }
    }

    fn with_target(mut self, target: &Target) -> Self {
        self.inner_mut().target = Some(target.to_string());
        self
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner_mut().source = Some(source.into());
        self
    }

    /// Names the source's cause in the message (see [`cause_of`]).
    fn with_cause(mut self) -> Self {
        let inner = self.inner_mut();
        inner.cause = inner.source.as_deref().map(cause_of);
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("errors are built before they are shared")
    }

    /// A request URI without an authority: nowhere to connect. Says how to
    /// give one, tonic's way included (its clients send origin-form URIs).
    /// The URI itself is not shown: its path or query may carry secrets.
    pub(crate) fn no_authority() -> Self {
        Error::new(
            ErrorKind::InvalidRequest,
            Phase::Request,
            "the request URI has no authority (host): send an absolute URI such as \
             http://host:port/path, or with tonic wrap the pool in \
             tonic::client::Grpc::with_origin (see the Pool docs)",
        )
    }

    /// A request URI with an authority but no scheme; the authority is
    /// shown without user info.
    pub(crate) fn no_scheme(authority: &str) -> Self {
        Error::new(
            ErrorKind::InvalidRequest,
            Phase::Request,
            format!(
                "the request URI has no scheme: write http://{authority} or https://{authority}"
            ),
        )
    }

    /// `authority` without user info.
    pub(crate) fn empty_host(authority: &str) -> Self {
        Error::new(
            ErrorKind::InvalidRequest,
            Phase::Request,
            format!("the authority {authority:?} has an empty host"),
        )
    }

    pub(crate) fn unsupported_scheme(scheme: &str) -> Self {
        Error::new(
            ErrorKind::InvalidRequest,
            Phase::Request,
            format!("unsupported scheme {scheme:?}: only http and https"),
        )
    }

    pub(crate) fn connect(target: &Target, source: impl Into<BoxError>) -> Self {
        let mut error = Error::new(ErrorKind::Connect, Phase::Connect, "connect failed")
            .with_target(target)
            .with_source(source)
            .with_cause();
        if target.is_https() && refused_https(error.inner.source.as_deref()) {
            error.inner_mut().cause = Some(NO_TLS.to_owned());
        }
        error
    }

    pub(crate) fn connect_timeout(target: &Target, after: Duration) -> Self {
        Error::new(
            ErrorKind::ConnectTimeout,
            Phase::Connect,
            format!("connect timed out after {after:?}"),
        )
        .with_target(target)
    }

    pub(crate) fn handshake(target: &Target, source: impl Into<BoxError>) -> Self {
        Error::new(
            ErrorKind::Handshake,
            Phase::Connect,
            "http handshake failed",
        )
        .with_target(target)
        .with_source(source)
        .with_cause()
    }

    pub(crate) fn tls_handshake(target: &Target, source: BoxError) -> Self {
        Error::new(ErrorKind::Handshake, Phase::Connect, "tls handshake failed")
            .with_target(target)
            .with_source(source)
            .with_cause()
    }

    pub(crate) fn response_timeout(target: &Target, after: Duration) -> Self {
        let mut error = Error::new(
            ErrorKind::ResponseTimeout,
            Phase::Send,
            format!("no response head within {after:?}; the request may have been processed"),
        )
        .with_target(target);
        error.inner_mut().may_have_been_processed = true;
        error
    }

    /// The server answered with a head over the limit: it took the request.
    pub(crate) fn response_too_large(target: &Target, source: BoxError) -> Self {
        let mut error = Error::new(
            ErrorKind::ResponseTooLarge,
            Phase::Send,
            "response head too large; the request may have been processed",
        )
        .with_target(target)
        .with_source(source);
        error.inner_mut().may_have_been_processed = true;
        error
    }

    pub(crate) fn checkout_timeout(target: &Target, after: Duration) -> Self {
        Error::new(
            ErrorKind::CheckoutTimeout,
            Phase::Checkout,
            format!("checkout timed out after {after:?} waiting"),
        )
        .with_target(target)
    }

    pub(crate) fn too_many_waiters(target: &Target, max: usize) -> Self {
        Error::new(
            ErrorKind::TooManyWaiters,
            Phase::Checkout,
            format!("{max} requests already waiting"),
        )
        .with_target(target)
    }

    pub(crate) fn not_ready() -> Self {
        Error::new(
            ErrorKind::NotReady,
            Phase::Request,
            "call without a successful poll_ready",
        )
    }

    pub(crate) fn closed(target: &Target, why: &str) -> Self {
        Error::new(ErrorKind::Closed, Phase::Checkout, why.to_owned()).with_target(target)
    }

    /// The connection closed before the request was written: not processed.
    pub(crate) fn unsent(target: &Target) -> Self {
        Error::new(
            ErrorKind::Send,
            Phase::Send,
            "the connection closed before the request was sent",
        )
        .with_target(target)
    }

    /// A send failure. `processed` says whether the request's bytes may have
    /// reached the server.
    pub(crate) fn send(target: &Target, source: BoxError, processed: bool) -> Self {
        let message = if processed {
            "request failed; it may have been processed by the server"
        } else {
            "request failed before it was written"
        };
        let mut err = Error::new(ErrorKind::Send, Phase::Send, message)
            .with_target(target)
            .with_source(source)
            .with_cause();
        err.inner_mut().may_have_been_processed = processed;
        err
    }

    /// This error ends a request whose bytes reached a server on an earlier
    /// attempt (then replayed): whatever it says of its last attempt, the
    /// request may have been processed. An error shared with other requests
    /// (a connect's failure) is kept as the source of this request's own.
    pub(crate) fn after_written_attempt(mut self) -> Self {
        const NOTE: &str = "; an earlier attempt was written and may have been processed";
        if self.inner.may_have_been_processed {
            return self;
        }
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.may_have_been_processed = true;
            inner.message.push_str(NOTE);
            return self;
        }
        let shared = &self.inner;
        Error {
            inner: Arc::new(Inner {
                kind: shared.kind,
                phase: shared.phase,
                message: format!("{}{NOTE}", shared.message),
                target: shared.target.clone(),
                cause: shared.cause.clone(),
                may_have_been_processed: true,
                source: Some(Box::new(self.clone())),
            }),
        }
    }

    /// A request the server refused (or left unprocessed in a GOAWAY) more
    /// often than a request may be queued again: never processed.
    pub(crate) fn refused(target: &Target, source: BoxError, refusals: u32) -> Self {
        Error::new(
            ErrorKind::Send,
            Phase::Send,
            format!("the server refused the request {refusals} times; it was never processed"),
        )
        .with_target(target)
        .with_source(source)
    }

    /// A stream the server reset, or a connection it closed, with
    /// `ENHANCE_YOUR_CALM`: the pool backs off from the target.
    pub(crate) fn calm(target: &Target, source: BoxError, processed: bool) -> Self {
        let message = if processed {
            "the server asked the client to calm down (ENHANCE_YOUR_CALM): backing off; \
             the request may have been processed"
        } else {
            "the server asked the client to calm down (ENHANCE_YOUR_CALM): backing off; \
             the request was not processed"
        };
        let mut err = Error::new(ErrorKind::Send, Phase::Send, message)
            .with_target(target)
            .with_source(source);
        err.inner_mut().may_have_been_processed = processed;
        err
    }

    pub(crate) fn body(target: Option<&Target>, source: BoxError) -> Self {
        let mut err = Error::new(ErrorKind::Body, Phase::Body, "response body failed")
            .with_source(source)
            .with_cause();
        if let Some(target) = target {
            err = err.with_target(target);
        }
        err.inner_mut().may_have_been_processed = true;
        err
    }

    pub(crate) fn spent() -> Self {
        Error::new(
            ErrorKind::NotReady,
            Phase::Request,
            "this connection handle has served its request; check out another",
        )
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The step the request had reached.
    pub fn phase(&self) -> Phase {
        self.inner.phase
    }

    /// `scheme://authority` of the target, when the error concerns one.
    pub fn target(&self) -> Option<&str> {
        self.inner.target.as_deref()
    }

    /// Whether the request's bytes may have reached the server, so that
    /// replaying it could apply it twice.
    pub fn may_have_been_processed(&self) -> bool {
        self.inner.may_have_been_processed
    }

    /// Whether `self` and `other` are one failure handed to several
    /// requests: a connect that fails fails every request that waited for
    /// it (over HTTP/2, many), with clones of one error. A balancer counting
    /// failed connects counts such a failure once.
    pub fn is_same_failure(&self, other: &Error) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The request was malformed (no authority, unsupported scheme).
    pub fn is_invalid_request(&self) -> bool {
        self.inner.kind == ErrorKind::InvalidRequest
    }

    /// Opening a connection failed or timed out, or its handshake failed.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connect | ErrorKind::ConnectTimeout | ErrorKind::Handshake
        )
    }

    /// A timeout: connect or checkout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::ConnectTimeout | ErrorKind::CheckoutTimeout | ErrorKind::ResponseTimeout
        )
    }

    /// The pool could not hand out a connection in time or had too many waiters.
    pub fn is_checkout(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::CheckoutTimeout | ErrorKind::TooManyWaiters
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("phase", &self.inner.phase)
            .field("message", &self.inner.message);
        if let Some(target) = &self.inner.target {
            d.field("target", target);
        }
        if let Some(cause) = &self.inner.cause {
            d.field("cause", cause);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(target) = &self.inner.target {
            write!(f, " for {target}")?;
        }
        if let Some(cause) = &self.inner.cause {
            write!(f, ": {cause}")?;
        }
        write!(f, " ({} phase)", self.inner.phase)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| &**s as &(dyn StdError + 'static))
    }
}

/// The cause of an `https` target's failed connect when the connector
/// speaks no TLS.
const NO_TLS: &str = "the connector does not speak TLS; an https target needs a TLS \
     connector (tls::TlsConnector, feature `tls`, or another TLS connector)";

/// Whether `source` is hyper-util's `HttpConnector` refusing a URI that is
/// not `http`: for an `https` target, a pool built without TLS.
fn refused_https(source: Option<&(dyn StdError + Send + Sync + 'static)>) -> bool {
    source.is_some_and(|source| {
        chain(source).any(|error| error.to_string() == "invalid URL, scheme is not http")
    })
}

/// `error`, then its sources, outermost first.
pub(crate) fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&error| error.source())
}

/// The first error of type `T` in `error` or its sources.
pub(crate) fn find<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    chain(error).find_map(|error| error.downcast_ref::<T>())
}

/// The immediate cause of an error, in words: the messages of `source`'s
/// chain, outermost first (`tcp connect error: connection refused`). An
/// operating-system error is named by its kind, without its code.
fn cause_of(source: &(dyn StdError + Send + Sync + 'static)) -> String {
    let mut words: Vec<String> = Vec::new();
    for error in chain(source) {
        // A chain is short; a few levels say what happened.
        if words.len() == 4 {
            break;
        }
        let said = match error.downcast_ref::<std::io::Error>() {
            Some(io) if io.raw_os_error().is_some() => {
                let kind = io.kind().to_string();
                match io.kind() {
                    std::io::ErrorKind::Other => io.to_string(),
                    _ if kind == "uncategorized error" => io.to_string(),
                    _ => kind,
                }
            }
            _ => error.to_string(),
        };
        if words.last() != Some(&said) && !said.is_empty() {
            words.push(said);
        }
    }
    words.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::from_uri(&"http://pool.test".parse().unwrap(), None).unwrap()
    }

    #[test]
    fn an_error_after_a_written_attempt_may_have_been_processed() {
        // This request's own error: marked in place.
        let own = Error::unsent(&target()).after_written_attempt();
        assert!(own.may_have_been_processed());
        assert!(own.to_string().contains("an earlier attempt was written"));
        // A connect's failure shared with other requests: they keep theirs,
        // this request gets its own, with the shared one as its source.
        let shared = Error::connect(&target(), "refused");
        let waiter = shared.clone();
        let mine = shared.after_written_attempt();
        assert!(mine.may_have_been_processed());
        assert!(!waiter.may_have_been_processed());
        assert_eq!(mine.kind(), waiter.kind());
        assert!(std::error::Error::source(&mine).is_some());
    }
}
