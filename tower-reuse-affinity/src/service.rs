//! `AffinityLayer` and its service: each request to a routed service gets
//! an endpoint (sticky, load-bounded, warm-aware), its outcome feeds the
//! endpoint's health, and a request whose endpoint is down is sent once
//! more to the key's next endpoint when that is safe.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_reuse_pool::{ErrorKind, Partition, PoolControl, Target};
use tower_service::Service;

use crate::choice::{self, Candidate};
use crate::config::{AffinityConfig, ConfigError, Ejection};
use crate::error::Error;
use crate::events::{AffinityEvents, Ejected, Retried, Returned, WarmDetour};
use crate::health::Verdict;
use crate::key::AffinityKey;
use crate::registry::{EndpointState, Endpoints, Registry, ServiceSet};
use crate::snapshot::AffinitySnapshot;

/// A pool the affinity layer can stack over: it asks the pool which
/// endpoints hold a free connection, and drains removed endpoints' ones.
/// Implemented by `tower_reuse_pool::Pool`.
pub trait PoolHandle {
    /// The pool's control handle.
    fn pool_control(&self) -> PoolControl;
}

impl<C, B> PoolHandle for tower_reuse_pool::Pool<C, B>
where
    C: tower_reuse_pool::Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<tower_reuse_pool::BoxError>,
{
    fn pool_control(&self) -> PoolControl {
        self.control()
    }
}

/// Routes the requests of each registered service over its endpoints; a
/// tower `Layer` to stack right over `PoolLayer`.
///
/// A request to `http://inventory.internal:8080/...` (a service registered
/// through [`endpoints`](Self::endpoints)) gets an endpoint address as a
/// [`tower_reuse_pool::Endpoint`] extension: the pool connects there while
/// `Host`, SNI and certificate verification stay `inventory.internal`.
///
/// - **Sticky, bounded load.** A request's key ([`AffinityKey`]) picks the
///   first endpoint of its rendezvous order whose in-flight requests are
///   under `ceil((1 + epsilon) * mean)`; when endpoints come or go only the
///   keys that must move, move. A request without a key goes to the less
///   loaded of two endpoints drawn at random.
/// - **Warm-aware.** When the key's endpoint has no free connection and the
///   next one of its order, under the bound, has one, the request goes
///   there, one step at most, while the pool opens a connection to the
///   first choice: the key's next request finds it warm and stays home.
/// - **Ejection.** An endpoint whose connects fail `eject_after` times in a
///   row (or, opt-in, that answers 5xx) is out of service for a back-off
///   that grows with each ejection; its keys go to their next endpoints and
///   come back when a probe request succeeds.
/// - **Retry.** A request whose endpoint is down (its connect failed, or,
///   for an idempotent request, its connection closed under it) is sent
///   once more to the key's next endpoint, if its body is empty. A request
///   whose bytes may have reached a server is never sent again unless it is
///   idempotent.
///
/// ```
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::ServiceBuilder;
/// use tower_reuse_affinity::{AffinityConfig, AffinityKey, AffinityLayer};
/// use tower_reuse_pool::{PoolConfig, PoolLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let affinity = AffinityLayer::new(
///     AffinityConfig::default().key(AffinityKey::header("x-user-id")),
/// )
/// .unwrap();
/// affinity
///     .endpoints()
///     .set(
///         "http://inventory.internal:8080",
///         ["127.0.0.2:8080".parse().unwrap(), "127.0.0.3:8080".parse().unwrap()],
///     )
///     .unwrap();
/// let client = ServiceBuilder::new()
///     .layer(affinity)
///     .layer(PoolLayer::new(PoolConfig::default()).unwrap())
///     .service(HttpConnector::new());
/// # let _: tower_reuse_affinity::Affinity<tower_reuse_pool::Pool<HttpConnector>> = client;
/// # }
/// ```
///
/// # Backpressure
///
/// `poll_ready` reports the pool's capacity (its `max_requests_in_flight`),
/// which all endpoints share; the endpoint is chosen in `call`, and a retry
/// waits for the pool's readiness again inside the response future.
/// A request counts toward its endpoint's load from `call` until its
/// response head arrives (or it fails).
#[derive(Clone)]
pub struct AffinityLayer {
    routing: Arc<Routing>,
    registry: Arc<Registry>,
}

/// The validated configuration, as the request path reads it.
struct Routing {
    key: AffinityKey,
    epsilon: f64,
    warm_aware: bool,
    ejection: Ejection,
    retry: bool,
}

impl AffinityLayer {
    /// A layer routing by `config`, with no services yet.
    pub fn new(config: AffinityConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        Ok(AffinityLayer {
            routing: Arc::new(Routing {
                ejection: config.ejection(),
                key: config.key,
                epsilon: config.epsilon,
                warm_aware: config.warm_aware,
                retry: config.retry,
            }),
            registry: Arc::new(Registry::new()),
        })
    }

    /// Report events to `hook` (for every service and handle of this layer).
    pub fn events(self, hook: impl AffinityEvents) -> Self {
        self.registry.events.store(Arc::new(Box::new(hook)));
        self
    }

    /// The handle that sets each service's endpoints.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            registry: self.registry.clone(),
        }
    }

    /// Per service, per endpoint: load, health and counts now.
    pub fn snapshot(&self) -> AffinitySnapshot {
        self.endpoints().snapshot()
    }
}

impl fmt::Debug for AffinityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityLayer").finish_non_exhaustive()
    }
}

impl<S: PoolHandle> Layer<S> for AffinityLayer {
    type Service = Affinity<S>;

    fn layer(&self, inner: S) -> Affinity<S> {
        let control = inner.pool_control();
        let _ = self.registry.control.set(control.clone());
        Affinity {
            inner,
            control,
            routing: self.routing.clone(),
            registry: self.registry.clone(),
        }
    }
}

/// The service of [`AffinityLayer`].
#[derive(Clone)]
pub struct Affinity<S> {
    inner: S,
    control: PoolControl,
    routing: Arc<Routing>,
    registry: Arc<Registry>,
}

impl<S> Affinity<S> {
    /// The handle that sets each service's endpoints.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            registry: self.registry.clone(),
        }
    }

    /// Per service, per endpoint: load, health and counts now.
    pub fn snapshot(&self) -> AffinitySnapshot {
        self.endpoints().snapshot()
    }
}

impl<S> fmt::Debug for Affinity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

/// The response future of [`Affinity`].
pub struct ResponseFuture<R> {
    inner: Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>,
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for Affinity<S>
where
    S: Service<Request<B>, Response = Response<R>, Error = tower_reuse_pool::Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = Error;
    type Future = ResponseFuture<Response<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let services = self.registry.services.load();
        let set = match req.uri().authority().and_then(|a| services.get(a)) {
            Some(set) if req.uri().scheme() == Some(&set.scheme) => set.clone(),
            _ => {
                let sent = self.inner.call(req);
                return ResponseFuture {
                    inner: Box::pin(async move { sent.await.map_err(Error::from) }),
                };
            }
        };
        drop(services);
        let routing = &self.routing;
        let key = if routing.key.needs_parts() {
            let (parts, body) = req.into_parts();
            let key = routing.key.of(
                &parts.headers,
                Some(&parts),
                parts.extensions.get::<Partition>(),
            );
            req = Request::from_parts(parts, body);
            key
        } else {
            routing
                .key
                .of(req.headers(), None, req.extensions().get::<Partition>())
        };
        if let Some(key) = key {
            set.recent.record(key);
        }
        let mut candidates = Vec::with_capacity(set.endpoints.len());
        set.candidates(&mut candidates);
        let router = Router {
            routing: &self.routing,
            control: &self.control,
            registry: &self.registry,
        };
        let Some(mut sent) = router.route(&set, key, &mut candidates, &mut req) else {
            let error = Error::no_endpoints(&set.name);
            return ResponseFuture {
                inner: Box::pin(async move { Err(error) }),
            };
        };
        let copy = (routing.retry && set.endpoints.len() > 1 && req.body().is_end_stream())
            .then(|| (Head::of(&req), self.inner.clone()));
        let first = self.inner.call(req);
        let routing = self.routing.clone();
        let registry = self.registry.clone();
        let control = self.control.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let result = first.await;
                sent.finish(
                    outcome(&result, &routing.ejection),
                    &routing.ejection,
                    &registry,
                );
                let error = match result {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                };
                let Some((head, mut inner)) = copy.filter(|(head, _)| retryable(&error, head))
                else {
                    return Err(error.into());
                };
                let mut req = head.into_request();
                let mut candidates = Vec::with_capacity(set.endpoints.len());
                set.candidates(&mut candidates);
                let failed = set
                    .endpoints
                    .iter()
                    .position(|e| Arc::ptr_eq(e, &sent.endpoint));
                if let Some(i) = failed {
                    candidates[i].eligible = false;
                }
                let router = Router {
                    routing: &routing,
                    control: &control,
                    registry: &registry,
                };
                let Some(mut again) = router.route(&set, key, &mut candidates, &mut req) else {
                    return Err(error.into());
                };
                sent.endpoint.retries_from.fetch_add(1, Ordering::Relaxed);
                registry.events.load().on_retry(&Retried {
                    service: &set.name,
                    from: sent.endpoint.addr,
                    to: again.endpoint.addr,
                    error: &error,
                });
                let result = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                    Ok(()) => inner.call(req).await,
                    Err(e) => Err(e),
                };
                again.finish(
                    outcome(&result, &routing.ejection),
                    &routing.ejection,
                    &registry,
                );
                result.map_err(Error::from)
            }),
        }
    }
}

/// What a choice reads.
struct Router<'a> {
    routing: &'a Routing,
    control: &'a PoolControl,
    registry: &'a Registry,
}

impl Router<'_> {
    /// Choose the request's endpoint among `candidates`, claim a probe if
    /// it is on probation, take a warm detour if one is due, and mark the
    /// request with it.
    fn route<B>(
        &self,
        set: &Arc<ServiceSet>,
        key: Option<u64>,
        candidates: &mut [Candidate],
        req: &mut Request<B>,
    ) -> Option<Sent> {
        let epsilon = self.routing.epsilon;
        // At most one pass per endpoint: each failed probe claim rules one out.
        for _ in 0..=candidates.len() {
            let first = match key {
                Some(key) => choice::choose(key, candidates, epsilon),
                None => choice::least_loaded_of_two(candidates, |n| fastrand::usize(..n)),
            }?;
            let endpoint = &set.endpoints[first];
            let probe = endpoint.is_out();
            if probe {
                let mut health = endpoint.health();
                if !health.claim_probe(Instant::now()) {
                    drop(health);
                    candidates[first].eligible = false;
                    continue;
                }
            }
            req.extensions_mut().insert(endpoint.endpoint());
            let mut chosen = first;
            if let Some(key) = key.filter(|_| self.routing.warm_aware && !probe) {
                chosen = self.warm_detour(set, key, candidates, first, req);
            }
            let endpoint = set.endpoints[chosen].clone();
            endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
            endpoint.requests.fetch_add(1, Ordering::Relaxed);
            return Some(Sent {
                set: set.clone(),
                endpoint,
                probe,
                finished: false,
            });
        }
        None
    }

    /// The next endpoint of the key's order, when the first choice has no
    /// free connection and that one, in service and under the bound, has.
    fn warm_detour<B>(
        &self,
        set: &ServiceSet,
        key: u64,
        candidates: &[Candidate],
        first: usize,
        req: &mut Request<B>,
    ) -> usize {
        if candidates.len() < 2 || self.control.is_warm(req) {
            return first;
        }
        let (total, n) = choice::totals(candidates);
        let bound = choice::bound(self.routing.epsilon, total, n);
        let Some(next) = choice::first_under(key, candidates, bound, Some(first))
            .filter(|&next| !set.endpoints[next].is_out())
        else {
            return first;
        };
        req.extensions_mut().insert(set.endpoints[next].endpoint());
        if self.control.is_warm(req) {
            // The first choice opens a connection meanwhile: the key's next
            // request finds it warm and stays home.
            let home = set.endpoints[first].endpoint();
            if let Ok(target) = Target::from_request(req) {
                self.control.warm_up(&target.with_endpoint(Some(home)));
            }
            set.endpoints[next]
                .detours_to
                .fetch_add(1, Ordering::Relaxed);
            self.registry.events.load().on_warm_detour(&WarmDetour {
                service: &set.name,
                from: set.endpoints[first].addr,
                to: set.endpoints[next].addr,
            });
            next
        } else {
            req.extensions_mut().insert(set.endpoints[first].endpoint());
            first
        }
    }
}

/// A request on its endpoint: its share of the load until it finishes.
struct Sent {
    set: Arc<ServiceSet>,
    endpoint: Arc<EndpointState>,
    /// The request is its endpoint's probe.
    probe: bool,
    finished: bool,
}

/// What a request's result says of its endpoint's health.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    /// Neither (a timeout waiting for the pool, a body error, ...).
    Unknown,
}

fn outcome<R>(result: &Result<Response<R>, tower_reuse_pool::Error>, rules: &Ejection) -> Outcome {
    match result {
        Ok(response) if rules.on_5xx && response.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(e) if e.is_connect() => Outcome::Failure,
        Err(_) => Outcome::Unknown,
    }
}

impl Sent {
    fn finish(&mut self, outcome: Outcome, rules: &Ejection, registry: &Registry) {
        self.finished = true;
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        let endpoint = &self.endpoint;
        let verdict = match outcome {
            // The common case touches no lock: a healthy endpoint with no
            // failure pending.
            Outcome::Success if !endpoint.is_out() && !endpoint.has_failures() => return,
            Outcome::Unknown if !self.probe => return,
            Outcome::Unknown => {
                endpoint.health().release_probe();
                return;
            }
            Outcome::Success => {
                let mut health = endpoint.health();
                let verdict = health.on_success(Instant::now());
                endpoint.clear_failures();
                endpoint.sync_out(&health);
                verdict
            }
            Outcome::Failure => {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                endpoint.note_failure();
                let room = self.set.room_to_eject(rules.max_share);
                let mut health = endpoint.health();
                let verdict = health.on_failure(Instant::now(), rules, room, fastrand::f64());
                endpoint.sync_out(&health);
                verdict
            }
        };
        let events = registry.events.load();
        match verdict {
            Verdict::Ejected {
                for_,
                times,
                failures,
            } => {
                endpoint.ejections.fetch_add(1, Ordering::Relaxed);
                events.on_ejected(&Ejected {
                    service: &self.set.name,
                    endpoint: endpoint.addr,
                    failures,
                    times,
                    duration: for_,
                });
            }
            Verdict::Returned => events.on_returned(&Returned {
                service: &self.set.name,
                endpoint: endpoint.addr,
            }),
            Verdict::Unchanged | Verdict::Kept { .. } => {}
        }
    }
}

impl Drop for Sent {
    /// A request dropped before its outcome (cancelled) gives back its
    /// load, and its probe to the next request.
    fn drop(&mut self) {
        if !self.finished {
            self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
            if self.probe {
                self.endpoint.health().release_probe();
            }
        }
    }
}

/// A request's head, kept to send it again: only for a request with an
/// empty body.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    fn of<B>(req: &Request<B>) -> Self {
        Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    fn into_request<B: Default>(self) -> Request<B> {
        let mut req = Request::new(B::default());
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
