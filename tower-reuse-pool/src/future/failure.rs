//! One attempt's send, and what its failure means: for the connection,
//! and for whether the request may be sent again.

use super::*;

pub(super) async fn send<B>(
    lease: &mut Lease<B>,
    req: Request<B>,
) -> Result<Response<Wire>, Box<Failed<B>>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match lease {
        Lease::Http1(conn) => sent_http1(conn.tx.try_send_request(req).await),
        Lease::Http2 { tx, .. } | Lease::Dedicated2 { tx, .. } => sent_http2(tx.send(req).await),
    }
}

/// An attempt that got no response: its error, the request itself when
/// none of it was written, and whether any of it may have reached the
/// server.
pub(super) struct Failed<B> {
    pub(super) error: BoxError,
    pub(super) unwritten: Option<Request<B>>,
    pub(super) written: bool,
}

pub(super) fn sent_http1<B>(
    sent: Result<Response<Incoming>, TrySendError<Request<B>>>,
) -> Result<Response<Wire>, Box<Failed<B>>> {
    match sent {
        Ok(response) => Ok(response.map(Wire::Http1)),
        Err(mut failed) => {
            let unwritten = failed.take_message();
            Err(Box::new(Failed {
                written: unwritten.is_none(),
                unwritten,
                error: failed.into_error().into(),
            }))
        }
    }
}

pub(super) fn sent_http2<B>(
    sent: Result<Response<H2Body>, Unsent<B>>,
) -> Result<Response<Wire>, Box<Failed<B>>> {
    match sent {
        Ok(response) => Ok(response.map(|body| Wire::Http2(Box::new(body)))),
        Err(unsent) => Err(Box::new(Failed {
            error: unsent.error,
            unwritten: unsent.message,
            written: unsent.sent,
        })),
    }
}

/// What a failure means for the connection, and what would make a replay
/// safe. Whether to replay is the caller's decision: only on a reused
/// connection (a brand-new one failing is no stale-connection race, and
/// retrying it could dial in a loop).
///
/// Over HTTP/2, a stream the server never processed (refused, or above a
/// graceful GOAWAY's last stream id) is this request's refusal number
/// `refusals + 1`; `ENHANCE_YOUR_CALM` is never replayed.
pub(super) fn classify(
    error: &(dyn std::error::Error + 'static),
    protocol: Protocol,
    unwritten: bool,
    refusals: u32,
) -> (Outcome, Option<RetryReason>) {
    if unwritten {
        return (Outcome::Failed, Some(RetryReason::Unwritten));
    }
    if protocol == Protocol::Http2 {
        if let Some(h2) = find::<h2::Error>(error) {
            let refused = |refused_stream| Outcome::Refused {
                refused_stream,
                refusals: refusals + 1,
            };
            if is_calm(h2) {
                return (Outcome::Calm, None);
            }
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return (refused(true), Some(RetryReason::RefusedStream));
            }
            if h2.is_go_away() {
                return if is_graceful(h2) {
                    (refused(false), Some(RetryReason::GoAway))
                } else {
                    (Outcome::GoAway, None)
                };
            }
        }
        return (Outcome::Failed, None);
    }
    let closed = find::<hyper::Error>(error).is_some_and(|error| {
        error.is_incomplete_message() || error.is_canceled() || error.is_closed()
    }) || is_reset(error);
    (
        Outcome::Failed,
        closed.then_some(RetryReason::ClosedIdempotent),
    )
}

/// Whether the connection was reset or broken under the request: for a
/// reused connection the same race as a close.
pub(super) fn is_reset(error: &(dyn std::error::Error + 'static)) -> bool {
    find::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        )
    })
}

/// Whether the response head was over the connection's limit.
pub(super) fn is_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error)
        .filter_map(|error| error.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_parse_too_large)
}
