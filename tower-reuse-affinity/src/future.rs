//! The response future: the request on its endpoint until its response
//! head, its outcome for the endpoint's health, and at most one retry on
//! the key's next endpoint. The pool's future is held inline; what a retry
//! needs is boxed apart, and kept only for a request that may be retried.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_reuse_pool::{ErrorKind, ReplayBody};

use crate::config::Ejection;
use crate::error::Error;
use crate::events::{Ejected, Retried, Returned};
use crate::health::Verdict;
use crate::registry::Registry;
use crate::service::{CallAt, Router, Routing};
use crate::services::{EndpointState, ServiceSet};
use crate::tiers::InFlight;

type PoolResult<T> = Result<T, tower_reuse_pool::Error>;

/// A retry in flight: boxed, as only a failed request pays for it.
type BoxedRetry<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`Affinity`](crate::Affinity).
    pub struct ResponseFuture<F, S, B>
    where
        F: Future,
    {
        #[pin]
        state: State<F>,
        routed: Option<Routed<S, B>>,
        // The request's tier key counts it in flight until this future
        // is dropped.
        in_flight: Option<InFlight>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F>
    where
        F: Future,
    {
        Sending { #[pin] future: F },
        Retrying { future: BoxedRetry<F::Output> },
        Failed { error: Option<Error> },
    }
}

/// What a routed request carries besides its pool future: nothing shared
/// to clone on the way that needs no retry.
pub(crate) struct Routed<S, B> {
    pub(crate) sent: Sent,
    pub(crate) rules: Ejection,
    /// Kept when the request may be sent again; boxed, so that the future
    /// stays small when it is not.
    pub(crate) retry: Option<Box<Retry<S, B>>>,
}

/// What sending a request again takes.
pub(crate) struct Retry<S, B> {
    pub(crate) routing: Arc<Routing>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) head: Head,
    pub(crate) inner: S,
    pub(crate) key: Option<u64>,
    /// The key was hot when the request was first routed.
    pub(crate) hot: bool,
    pub(crate) _body: PhantomData<fn() -> B>,
}

impl<F: Future, S, B> ResponseFuture<F, S, B> {
    pub(crate) fn routed(future: F, routed: Routed<S, B>) -> Self {
        ResponseFuture {
            state: State::Sending { future },
            routed: Some(routed),
            in_flight: None,
        }
    }

    /// A request to an authority the layer does not route.
    pub(crate) fn unrouted(future: F) -> Self {
        ResponseFuture {
            state: State::Sending { future },
            routed: None,
            in_flight: None,
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            routed: None,
            in_flight: None,
        }
    }

    /// Count the request in flight for its tier key until this future ends.
    pub(crate) fn in_flight(mut self, in_flight: Option<InFlight>) -> Self {
        self.in_flight = in_flight;
        self
    }
}

impl<F, S, B, R> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = PoolResult<Response<R>>>,
    S: CallAt<B, Response = Response<R>, Error = tower_reuse_pool::Error> + Send + 'static,
    S::Future: Send + 'static,
    B: Default + Send + 'static,
    R: Send + 'static,
{
    type Output = Result<Response<R>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Retrying { future } => {
                    return future.as_mut().poll(cx).map_err(Error::from);
                }
                StateProj::Sending { future } => ready!(future.poll(cx)),
            };
            let Some(routed) = this.routed.as_mut() else {
                return Poll::Ready(result.map_err(Error::from));
            };
            let rules = routed.rules;
            routed.sent.finish(outcome(&result, &rules), &rules);
            let error = match result {
                Ok(response) => return Poll::Ready(Ok(response)),
                Err(error) => error,
            };
            let Some(again) = this.routed.take().and_then(|r| r.retry_after(&error)) else {
                return Poll::Ready(Err(error.into()));
            };
            this.state.set(State::Retrying { future: again });
        }
    }
}

impl<S, B> Routed<S, B> {
    /// The request sent again to the key's next endpoint, if `error` allows
    /// it and there is one.
    fn retry_after<R>(
        self,
        error: &tower_reuse_pool::Error,
    ) -> Option<BoxedRetry<PoolResult<Response<R>>>>
    where
        S: CallAt<B, Response = Response<R>, Error = tower_reuse_pool::Error> + Send + 'static,
        S::Future: Send + 'static,
        B: Default + Send + 'static,
        R: Send + 'static,
    {
        let Routed { sent, retry, .. } = self;
        let retry = retry.filter(|retry| retryable(error, &retry.head))?;
        let Retry {
            routing,
            registry,
            head,
            inner,
            key,
            hot,
            ..
        } = *retry;
        let control = registry.control.get()?;
        let req = head.into_request();
        // The endpoints as they are now: one removed since is not retried on.
        let set = registry
            .current(&sent.set)
            .unwrap_or_else(|| sent.set.clone());
        let failed = set.endpoint(sent.endpoint().addr);
        let router = Router {
            routing: &routing,
            control,
        };
        let mut again = set.with_candidates(|candidates| {
            if let Some(i) = failed {
                candidates[i].eligible = false;
            }
            router.route(&set, key, hot, candidates, &req, false)
        })?;
        sent.endpoint().retries_from.fetch_add(1, Ordering::Relaxed);
        set.events.load().on_retry(&Retried {
            service: &set.name,
            from: sent.endpoint().addr,
            to: again.endpoint().addr,
            error,
        });
        let mut inner = inner;
        let at = again.endpoint().endpoint();
        Some(Box::pin(async move {
            let result = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => inner.call_at(req, at).await,
                Err(e) => Err(e),
            };
            let rules = routing.ejection;
            again.finish(outcome(&result, &rules), &rules);
            result
        }))
    }
}

impl<F: Future, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A request on its endpoint: its share of the load until it finishes.
pub(crate) struct Sent {
    pub(crate) set: Arc<ServiceSet>,
    /// Its endpoint, by its place in `set` (which holds it): no count of
    /// its own to take and give back.
    index: usize,
    /// The request is its endpoint's probe, of this generation.
    pub(crate) probe: Option<u64>,
    pub(crate) finished: bool,
}

/// What a request's result says of its endpoint's health.
#[derive(Clone, Copy)]
pub(crate) enum Outcome<'a> {
    Success,
    /// A failed connect (the pool's error: one failed connect reaches
    /// every request that waited for it, and counts once), a 5xx (opt-in)
    /// or a failed connect ahead (`None`: each counted once by the caller).
    Failure(Option<&'a tower_reuse_pool::Error>),
    /// Neither (a timeout waiting for the pool, a body error, ...).
    Unknown,
}

fn outcome<'a, R>(result: &'a PoolResult<Response<R>>, rules: &Ejection) -> Outcome<'a> {
    match result {
        Ok(response) if rules.on_5xx && response.status().is_server_error() => {
            Outcome::Failure(None)
        }
        Ok(_) => Outcome::Success,
        Err(e) if e.is_connect() => Outcome::Failure(Some(e)),
        Err(_) => Outcome::Unknown,
    }
}

impl Sent {
    /// A request sent to `endpoint` of `set` (as its probe, of that
    /// generation, if `probe`): its share of the load taken.
    pub(crate) fn to(set: Arc<ServiceSet>, index: usize, probe: Option<u64>) -> Sent {
        let endpoint = &set.endpoints[index];
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        Sent {
            set,
            index,
            probe,
            finished: false,
        }
    }

    pub(crate) fn endpoint(&self) -> &EndpointState {
        &self.set.endpoints[self.index]
    }

    pub(crate) fn finish(&mut self, outcome: Outcome<'_>, rules: &Ejection) {
        self.finished = true;
        let endpoint = self.endpoint();
        endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        record(&self.set, endpoint, outcome, self.probe, rules);
    }
}

/// What an outcome does to its endpoint's health, and the events it calls
/// for. `probe`: the request's probe generation, if it was its endpoint's
/// probe.
pub(crate) fn record(
    set: &ServiceSet,
    endpoint: &EndpointState,
    outcome: Outcome<'_>,
    probe: Option<u64>,
    rules: &Ejection,
) {
    let verdict = match outcome {
        // The common case touches no lock: a healthy endpoint with no
        // failure pending.
        Outcome::Success if !endpoint.is_out() && !endpoint.has_failures() => return,
        Outcome::Unknown => {
            if probe.is_some() {
                endpoint.health().release_probe(probe);
            }
            return;
        }
        Outcome::Success => {
            let mut health = endpoint.health();
            let verdict = health.on_success(Instant::now(), probe);
            if !health.is_out() {
                endpoint.clear_failures();
            }
            endpoint.sync_out(&health);
            verdict
        }
        Outcome::Failure(error) => {
            // The share of endpoints out is checked and changed by one
            // failure at a time per service: two endpoints failing at once
            // never both take the last room.
            let _one_at_a_time = set.ejecting();
            let room = set.room_to_eject(rules.max_share);
            let mut health = endpoint.health();
            if error.is_some_and(|e| !health.new_connect_failure(e)) {
                return;
            }
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
            endpoint.note_failure();
            let verdict = health.on_failure(Instant::now(), probe, rules, room, fastrand::f64());
            endpoint.sync_out(&health);
            verdict
        }
    };
    let events = set.events.load();
    match verdict {
        Verdict::Ejected {
            for_,
            times,
            failures,
        } => {
            endpoint.ejections.fetch_add(1, Ordering::Relaxed);
            events.on_ejected(&Ejected {
                service: &set.name,
                endpoint: endpoint.addr,
                failures,
                times,
                duration: for_,
            });
        }
        Verdict::Returned => events.on_returned(&Returned {
            service: &set.name,
            endpoint: endpoint.addr,
        }),
        Verdict::Unchanged | Verdict::Kept { .. } => {}
    }
}

impl Drop for Sent {
    /// A request dropped before its outcome (cancelled) gives back its
    /// load, and its probe to the next request.
    fn drop(&mut self) {
        if !self.finished {
            let endpoint = self.endpoint();
            endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
            if self.probe.is_some() {
                endpoint.health().release_probe(self.probe);
            }
        }
    }
}

/// A request's head, kept to send it again: only for a request with an
/// empty body or a [`ReplayBody`].
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    /// Whether a request can be made again: its body is empty, or a
    /// [`ReplayBody`] makes it anew.
    pub(crate) fn replayable<B: http_body::Body + 'static>(req: &Request<B>) -> bool {
        req.body().is_end_stream() || req.extensions().get::<ReplayBody<B>>().is_some()
    }

    fn into_request<B: Default + 'static>(self) -> Request<B> {
        let body = self
            .extensions
            .get::<ReplayBody<B>>()
            .map_or_else(B::default, ReplayBody::body);
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        req
    }
}

/// Whether a failure may be sent again to another endpoint: the request
/// never left (its connect failed), or its connection closed under it and
/// sending it twice is harmless (idempotent).
fn retryable(error: &tower_reuse_pool::Error, head: &Head) -> bool {
    if error.is_connect() {
        return true;
    }
    let closed = matches!(error.kind(), ErrorKind::Closed | ErrorKind::Send);
    closed && (!error.may_have_been_processed() || is_idempotent(&head.method))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
