//! The request path: check out, send, retry once when safe, hand back the
//! response with a body that returns the connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HOST};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

mod checkout;
mod failure;

use crate::body::{BodyGuard, PoolBody, Wire};
use crate::conn::{ConnId, Protocol, TlsHandshake};
use crate::error::{BoxError, Error, chain, find};
use crate::events::{CheckedOut, Retried, RetryReason, Stale};
use crate::h2_client::{H2Body, Unsent, is_calm, is_graceful};
use crate::hints::{self, ServerHints};
use crate::info::ConnectionInfo;
use crate::replay::SentHead;
use crate::target::Target;
use crate::target_pool::{Granted, Lease, Outcome, RequestPolicy, TargetPool};
pub(crate) use checkout::Checkout;
use failure::{Failed, classify, is_too_large, send, sent_http1, sent_http2};

/// The response future of [`Pool`](crate::Pool) and [`Pooled`](crate::Pooled).
///
/// Boxed once per request: hyper's send futures cannot be named.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<PoolBody>, Error>> + Send>>,
}

impl ResponseFuture {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<PoolBody>, Error>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<PoolBody>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// What one exchange on one connection came to.
// The response is the common case, moved once: boxed, it would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Exchange {
    Response(Response<PoolBody>),
    Failed {
        error: Error,
        /// Safe to send again elsewhere, and why: the request to send is
        /// back in the slot.
        retry: Option<RetryReason>,
    },
}

/// How many times a server may leave a request unprocessed (a refused
/// stream, or one above a graceful GOAWAY's last stream id): the request
/// is queued again after each but the last, which fails it.
pub(crate) const MAX_REFUSALS: u32 = 10;

/// Send the request in `slot` on `checkout`'s connection and wrap the
/// response. The in-flight `permit` goes with the response's body; after a
/// failure it stays for the retry. `refusals`: how many times the server
/// has refused the request so far.
///
/// The request is taken from its slot only into hyper's send, and a
/// function returning an `async move` block stands in for an `async fn`
/// (which keeps its arguments twice, as given and as locals): the request
/// is stored once in a future allocated for every request, which keeps
/// that allocation in the allocator's fast per-thread cache.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn exchange<'a, B>(
    mut checkout: Box<Checkout<B>>,
    slot: &'a mut Option<Request<B>>,
    may_retry: bool,
    retried: Option<RetryReason>,
    refusals: u32,
    permit: &'a mut Option<OwnedSemaphorePermit>,
) -> impl Future<Output = Exchange> + Send + 'a
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async move {
        // The caller's say (a `Pooled` handle never retries), then the target's.
        let may_retry = may_retry && checkout.policy.retry;
        let response_timeout = checkout.policy.response_timeout;
        let revalidate = checkout.revalidate;
        if let Lease::Http1(conn) = checkout.lease() {
            if revalidate {
                // Let the connection task see a close that already arrived.
                tokio::task::yield_now().await;
            }
            if conn.tx.ready().await.is_err() {
                // Closed while idle: nothing was sent, another connection may take it.
                let error = Error::unsent(&checkout.pool.target);
                let retry = (checkout.reused && may_retry).then_some(RetryReason::Unwritten);
                if retry.is_none() {
                    *slot = None;
                }
                checkout.finish(Outcome::Failed);
                return Exchange::Failed { error, retry };
            }
        }
        let req = slot.as_mut().expect("a request to send");
        let client_close = prepare(
            req,
            checkout.protocol,
            &checkout.pool.host,
            &checkout.pool.target,
        );
        // Over HTTP/2 a refused stream is queued again, whether or not the
        // one retry is spent; over HTTP/1.1 only the retry replays.
        let replayable = may_retry
            && match checkout.protocol {
                Protocol::Http2 => true,
                Protocol::Http1 => {
                    retried.is_none() && checkout.reused && is_idempotent(req.method())
                }
            };
        let copy = if replayable { SentHead::of(req) } else { None };
        let sent = match response_timeout {
            // The send inline (not through `send`): one copy of the request
            // fewer in a future allocated for every request.
            None => match checkout.lease() {
                Lease::Http1(conn) => sent_http1(conn.tx.try_send_request(take(slot)).await),
                Lease::Http2 { tx, .. } | Lease::Dedicated2 { tx, .. } => {
                    sent_http2(tx.send(take(slot)).await)
                }
            },
            // Boxed: the timer stays out of every request's future unless used.
            Some(limit) => {
                let send = send(checkout.lease(), take(slot));
                match Box::pin(tokio::time::timeout(limit, send)).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        // Dropping the send cancels it: an HTTP/1.1 connection is
                        // closed, an HTTP/2 stream reset.
                        let error = Error::response_timeout(&checkout.pool.target, limit);
                        checkout.finish(Outcome::Abandoned);
                        return Exchange::Failed { error, retry: None };
                    }
                }
            }
        };
        match sent {
            Ok(response) => Exchange::Response(respond(
                checkout,
                response,
                client_close,
                retried,
                refusals,
                permit.take(),
            )),
            Err(failed) => {
                let Failed {
                    error,
                    unwritten,
                    written,
                } = *failed;
                let (outcome, reason) = classify(&*error, checkout.protocol, !written, refusals);
                let again = match (reason, unwritten) {
                    (Some(RetryReason::Unwritten), Some(req)) => Some(req),
                    (Some(_), _) => copy.and_then(SentHead::into_request),
                    (None, _) => None,
                };
                // The server did not process a refused stream, nor one above the
                // last stream id of its GOAWAY (RFC 9113, 8.7): it goes back
                // to the queue, short of `MAX_REFUSALS`, retry or not.
                // Above a GOAWAY, not the first stream of a brand-new
                // connection: a server that takes none would make each a
                // connect. A refused stream's connection stays, with a
                // learned limit that holds connects back.
                let unprocessed = matches!(
                    reason,
                    Some(RetryReason::RefusedStream | RetryReason::GoAway)
                );
                let too_often = unprocessed && refusals + 1 >= MAX_REFUSALS;
                let retry = reason.filter(|reason| {
                    again.is_some()
                        && may_retry
                        && (checkout.reused || *reason == RetryReason::RefusedStream)
                        && if unprocessed {
                            !too_often
                        } else {
                            retried.is_none()
                        }
                });
                *slot = retry.and(again);
                let processed = written && !unprocessed;
                let error = if is_too_large(&*error) {
                    Error::response_too_large(&checkout.pool.target, error)
                } else if outcome == Outcome::Calm {
                    Error::calm(&checkout.pool.target, error, processed)
                } else if too_often {
                    Error::refused(&checkout.pool.target, error, refusals + 1)
                } else {
                    Error::send(&checkout.pool.target, error, processed)
                };
                checkout.finish(outcome);
                Exchange::Failed { error, retry }
            }
        }
    }
}

#[inline(always)] // once per request: the checkout and response are not copied into a call
fn respond<B>(
    mut checkout: Box<Checkout<B>>,
    response: Response<Wire>,
    client_close: bool,
    retried: Option<RetryReason>,
    refusals: u32,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<PoolBody>
where
    B: Send + 'static,
{
    if let Lease::Http1(conn) = checkout.lease() {
        let hints = ServerHints::of(&response);
        if hints.close || client_close {
            conn.life.reusable = false;
        }
        if let Some(limit) = hints.idle_limit {
            conn.life.set_server_idle_limit(limit);
        }
    }
    if checkout.settling {
        // The server's SETTINGS precede any response: the limit is known now.
        checkout.settling = false;
        checkout.pool.h2_settled(checkout.id());
    }
    let (mut parts, body) = response.into_parts();
    let info = ConnectionInfo {
        id: checkout.id(),
        protocol: checkout.protocol,
        tls: checkout.tls,
        reused: checkout.reused,
        wait: checkout.wait,
        idle_for: checkout.idle_for,
        retried,
        refusals,
        endpoint: checkout.pool.target.endpoint(),
    };
    if checkout.policy.info_extension {
        parts.extensions.insert(info.clone());
    }
    let guard: Option<Box<dyn BodyGuard>> = if body.is_end_stream() {
        checkout.finish(Outcome::Done);
        None
    } else {
        Some(checkout)
    };
    Response::from_parts(parts, PoolBody::new(body, guard, permit, info))
}

/// Origin-form URI and `Host` for HTTP/1.1; the absolute URI for HTTP/2 (an
/// origin-form one completed with the target's scheme and authority, a
/// caller's `Host` as its authority), without user info (its authority is
/// `:authority`). Returns whether the
/// caller asked for `Connection: close`.
fn prepare<B>(
    req: &mut Request<B>,
    protocol: Protocol,
    host: &http::HeaderValue,
    target: &Target,
) -> bool {
    match protocol {
        Protocol::Http1 => {
            if req.uri().scheme().is_some() {
                let origin = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(origin);
            }
            // One pass over the caller's few headers, not a lookup per name.
            let mut has_host = false;
            let mut tokens = hints::ConnectionTokens::default();
            for (name, value) in req.headers() {
                if *name == HOST {
                    has_host = true;
                } else if *name == CONNECTION {
                    tokens.add(value);
                }
            }
            if !has_host {
                req.headers_mut().insert(HOST, host.clone());
            }
            *req.version_mut() = Version::HTTP_11;
            tokens.close
        }
        Protocol::Http2 => {
            // A caller's `Host` is the request's authority: over HTTP/2 it
            // is `:authority`, never a second, differing field (RFC 9113,
            // 8.3.1); one with user info is dropped.
            let host = req
                .headers_mut()
                .remove(HOST)
                .and_then(|host| http::uri::Authority::try_from(host.as_bytes()).ok())
                .filter(|host| !host.as_str().contains('@'));
            // An origin-form URI (a connection-level checkout) takes the
            // target's scheme and authority, as HTTP/1.1 takes its `Host`.
            if host.is_some()
                || req.uri().scheme().is_none()
                || req
                    .uri()
                    .authority()
                    .is_none_or(|a| a.as_str().contains('@'))
            {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = parts.scheme.or_else(|| Some(target.scheme().clone()));
                parts.authority = host.or_else(|| {
                    parts
                        .authority
                        .take()
                        .filter(|a| !a.as_str().contains('@'))
                        .or_else(|| Some(target.authority().clone()))
                });
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            *req.version_mut() = Version::HTTP_2;
            false
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request taken from its slot to be sent.
fn take<B>(slot: &mut Option<Request<B>>) -> Request<B> {
    slot.take().expect("a request to send")
}

/// The whole request-level path, with at most one retry, and a request
/// the server never processed queued again, short of [`MAX_REFUSALS`]
/// refusals and within its checkout timeout.
///
/// A plain function returning an `async move` block, for the reason given
/// at [`exchange`].
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn request<B>(
    pool: Arc<TargetPool<B>>,
    req: Request<B>,
    mut permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = Result<Response<PoolBody>, Error>> + Send
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(req);
    async move {
        let mut retried = None;
        // Connections found closed before anything was written may be skipped
        // freely, but never endlessly.
        let mut stale = 0;
        let mut avoid = None;
        let mut refusals = 0;
        let mut since = None;
        // An attempt that failed after its bytes were written, then
        // replayed: the request's error says so, whatever ends it.
        let mut written = false;
        let fail = |error: Error, written: bool| {
            if written {
                error.after_written_attempt()
            } else {
                error
            }
        };
        loop {
            let checkout = match Checkout::acquire_since(&pool, avoid, &mut since).await {
                Ok(checkout) => checkout,
                Err(error) => return Err(fail(error, written)),
            };
            let failed_on = checkout.id();
            let idle_for = checkout.idle_for;
            match exchange(checkout, &mut slot, true, retried, refusals, &mut permit).await {
                Exchange::Response(response) => return Ok(response),
                Exchange::Failed {
                    retry: Some(RetryReason::RefusedStream | RetryReason::GoAway),
                    ..
                } => {
                    // Back to the queue: the connection that refused it
                    // now carries fewer streams (or drains), so the request
                    // waits for one of its streams to end or another connection.
                    refusals += 1;
                    pool.count_requeue();
                    avoid = None;
                }
                Exchange::Failed {
                    error,
                    retry: Some(reason),
                } => {
                    let sent = reason == RetryReason::ClosedIdempotent;
                    if sent || reason == RetryReason::Unwritten {
                        pool.common.events.on_stale(&Stale {
                            target: &pool.target,
                            id: failed_on,
                            idle_for,
                            written: sent,
                        });
                    }
                    if reason == RetryReason::Unwritten && stale < 8 {
                        stale += 1;
                        pool.count_stale_skip();
                    } else if retried.is_none() {
                        retried = Some(reason);
                        written |= sent;
                        pool.count_retry();
                        pool.common.events.on_retry(&Retried {
                            target: &pool.target,
                            reason,
                            failed_on,
                        });
                    } else {
                        return Err(fail(error, written));
                    }
                    avoid = Some(failed_on);
                }
                Exchange::Failed { error, retry: None } => return Err(fail(error, written)),
            }
        }
    }
}
