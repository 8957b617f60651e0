//! `AffinityLayer` and its service: each request to a routed service gets
//! an endpoint (sticky, load-bounded, warm-aware), its outcome feeds the
//! endpoint's health, and a request whose endpoint is down is sent once
//! more to the key's next endpoint when that is safe.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
pub use tower_reuse_pool::PoolHandle;
use tower_reuse_pool::{Endpoint, Partition, PoolControl, Target, WarmUp};
use tower_service::Service;

use crate::choice::{self, Bound, Candidate};
use crate::config::{AffinityConfig, ConfigError, Ejection};
use crate::error::Error;
use crate::events::{AffinityEvents, WarmDetour};
use crate::future::{Head, Outcome, ResponseFuture, Retry, Routed, Sent, record};
use crate::key::AffinityKey;
use crate::registry::{Endpoints, Registry};
use crate::services::{ServiceSet, find};
use crate::snapshot::AffinitySnapshot;
use crate::tiers::{TierPools, TiersSnapshot};

/// Sends a request to one endpoint without an extension on the request
/// (which would cost it an allocation). Implemented by
/// `tower_reuse_pool::Pool` (`Pool::call_at`).
pub trait CallAt<B>: Service<Request<B>> {
    /// `call`, with the request's connection going to `endpoint`.
    fn call_at(&mut self, req: Request<B>, endpoint: Endpoint) -> Self::Future;
}

impl<C, B> CallAt<B> for tower_reuse_pool::Pool<C, B>
where
    C: tower_reuse_pool::Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<tower_reuse_pool::BoxError>,
{
    fn call_at(&mut self, req: Request<B>, endpoint: Endpoint) -> Self::Future {
        tower_reuse_pool::Pool::call_at(self, req, Some(endpoint))
    }
}

/// Routes the requests of each registered service over its endpoints; a
/// tower `Layer` to stack right over `PoolLayer` (nothing in between: it
/// sends each request to its endpoint through `Pool::call_at`). Layers
/// that change the body, such as `BufferBodyLayer`, go above it.
///
/// A request to `http://inventory.internal:8080/...` (a service registered
/// through [`endpoints`](Self::endpoints)) goes to one of its endpoints'
/// addresses: the pool connects there while `Host`, SNI and certificate
/// verification stay `inventory.internal`, and each endpoint has its own
/// connections (and, with a session cache, its own TLS sessions).
///
/// - **Sticky, bounded load.** A request's key ([`AffinityKey`]) picks the
///   first endpoint of its rendezvous order whose in-flight requests are
///   under `ceil((1 + epsilon) * mean)` (and never under `load_floor`); a
///   hot key (one with far more requests than the keys it shares a slot
///   of the layer's sketch with) yields its endpoint one request early,
///   leaving the last slot to the endpoint's other keys, which then rarely
///   leave it; when endpoints come or go only the
///   keys that must move, move. A request without a key goes to the less
///   loaded of two endpoints drawn at random.
/// - **Warm-aware.** When the key's endpoint has no free connection and the
///   next one of its order, under the bound, has one, the request goes
///   there, one step at most, while the pool opens a connection to the
///   first choice: the key's next request finds it warm and stays home.
/// - **Ejection.** An endpoint whose connects fail `eject_after` times in a
///   row (each failed connect counted once, however many requests waited
///   for it; a failed connect ahead for a warm detour too; opt-in, each 5xx
///   answer) is out of service for a back-off that grows with each
///   ejection, never more than `max_ejected_share` of the endpoints and
///   never the last; its keys go to their next endpoints and come back when
///   a probe request, the only one sent to it meanwhile, succeeds.
/// - **Tiers** (with [`AffinityConfig::tiers`]): every request, routed or
///   not, counts for its key (scheme, authority and partition); a key
///   promoted to a dedicated pool gets the pool's settings for its service
///   (`PoolControl::set_service_config`): connections kept open for its
///   peak concurrency, a longer idle timeout and a reservation out of the
///   budget (`PoolConfig::max_connections`); its connections stay. The
///   pool-wide idle timeout becomes the cold tier's. A demoted key's
///   service goes back to it: idle connections close as they expire, busy
///   ones finish their requests first.
/// - **Retry.** A request whose endpoint is down (its connect failed, or,
///   for an idempotent request, its connection closed under it) is sent
///   once more to the key's next endpoint, if its body is empty or a
///   `tower_reuse_pool::ReplayBody` makes it again (`BufferBodyLayer`
///   above this layer sets one). A request whose bytes may have reached a
///   server is never sent again unless it is idempotent.
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
/// response head arrives (or it fails). The bound is read, then the load
/// taken, without a reservation: requests choosing at the same instant may
/// take an endpoint a request or two past it.
///
/// One layer routes over one pool: apply it once (clones of the service
/// share everything), not to two pools.
#[derive(Clone)]
pub struct AffinityLayer {
    routing: Arc<Routing>,
    registry: Arc<Registry>,
}

/// The validated configuration, as the request path reads it.
pub(crate) struct Routing {
    key: AffinityKey,
    bound: Bound,
    warm_aware: bool,
    pub(crate) ejection: Ejection,
    retry: bool,
    /// Hot and cold tiers, when on.
    tiers: Option<Arc<TierPools>>,
}

impl AffinityLayer {
    /// A layer routing by `config`, with no services yet.
    pub fn new(config: AffinityConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        let registry = Arc::new(Registry::new());
        let tiers = config
            .tiers
            .clone()
            .map(|tiers| Arc::new(TierPools::new(tiers, registry.events.clone())));
        Ok(AffinityLayer {
            routing: Arc::new(Routing {
                tiers,
                ejection: config.ejection(),
                key: config.key,
                bound: Bound {
                    epsilon: config.epsilon,
                    floor: config.load_floor,
                },
                warm_aware: config.warm_aware,
                retry: config.retry,
            }),
            registry,
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

    /// The tiers now: keys tracked, and per dedicated pool its rate,
    /// reservation and connections (`None` with tiers off). It reads the
    /// pool's every target; [`dedicated_pools`](Self::dedicated_pools) is
    /// the cheap count.
    pub fn tiers(&self) -> Option<TiersSnapshot> {
        self.routing.tiers.as_ref().map(|t| t.snapshot())
    }

    /// How many keys have a dedicated pool now (`None` with tiers off).
    pub fn dedicated_pools(&self) -> Option<usize> {
        self.routing.tiers.as_ref().map(|t| t.dedicated())
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
        if let Some(tiers) = &self.routing.tiers {
            tiers.stacked(&control);
        }
        Affinity {
            inner,
            control,
            routing: self.routing.clone(),
            registry: self.registry.clone(),
            last: None,
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
    /// The service this handle routed last, and the registry's generation
    /// then: a handle sending to one service finds it without a lookup.
    last: Option<(u64, Arc<ServiceSet>)>,
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

    /// The tiers now (`None` with tiers off): see [`AffinityLayer::tiers`].
    pub fn tiers(&self) -> Option<TiersSnapshot> {
        self.routing.tiers.as_ref().map(|t| t.snapshot())
    }

    /// How many keys have a dedicated pool now (`None` with tiers off).
    pub fn dedicated_pools(&self) -> Option<usize> {
        self.routing.tiers.as_ref().map(|t| t.dedicated())
    }
}

impl<S> Affinity<S> {
    /// The service `req` goes to: the last one if the request is for it and
    /// nothing changed since, else looked up (and kept as the last).
    fn service_of<B>(&mut self, req: &Request<B>) -> Option<Arc<ServiceSet>> {
        let uri = req.uri();
        let (scheme, authority) = (uri.scheme()?, uri.authority()?.as_str());
        let generation = self.registry.generation.load(Ordering::Acquire);
        if let Some((seen, set)) = &self.last
            && *seen == generation
            && *set.key == *authority
            && set.scheme.as_str() == scheme.as_str()
        {
            return Some(set.clone());
        }
        let set = find(&self.registry.services.load(), scheme, authority)?.clone();
        self.last = Some((generation, set.clone()));
        Some(set)
    }
}

/// The pool below, for a layer stacked over the affinity layer (the
/// adaptive controller).
impl<S> PoolHandle for Affinity<S> {
    fn pool_control(&self) -> PoolControl {
        self.control.clone()
    }
}

impl<S> fmt::Debug for Affinity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

impl<S, B, R> Service<Request<B>> for Affinity<S>
where
    S: CallAt<B, Response = Response<R>, Error = tower_reuse_pool::Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(set) = self.service_of(&req) else {
            let in_flight = self.routing.tiers.as_ref().and_then(|t| t.route(&req));
            return ResponseFuture::unrouted(self.inner.call(req)).in_flight(in_flight);
        };
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
        // Counted for its service's tier.
        let in_flight = routing.tiers.as_ref().and_then(|t| t.route(&req));
        let hot = key.is_some_and(|key| set.recent.record(key));
        let router = Router {
            routing: &self.routing,
            control: &self.control,
        };
        let many = set.endpoints.len() > 1;
        let sent = if !many && set.endpoints.first().is_some_and(|only| !only.is_out()) {
            // One endpoint in service: nothing to choose.
            Sent::to(set, 0, None)
        } else {
            let routed = set
                .with_candidates(|candidates| router.route(&set, key, hot, candidates, &req, true));
            match routed {
                Some(sent) => sent,
                None => {
                    return ResponseFuture::failed(Error::no_endpoints(&set.name))
                        .in_flight(in_flight);
                }
            }
        };
        let retry = (routing.retry && many && Head::replayable(&req)).then(|| {
            Box::new(Retry {
                routing: self.routing.clone(),
                registry: self.registry.clone(),
                head: Head::of(&req),
                inner: self.inner.clone(),
                key,
                hot,
                _body: PhantomData,
            })
        });
        let future = self.inner.call_at(req, sent.endpoint().endpoint());
        ResponseFuture::routed(
            future,
            Routed {
                sent,
                rules: self.routing.ejection,
                retry,
            },
        )
        .in_flight(in_flight)
    }
}

/// What a choice reads.
pub(crate) struct Router<'a> {
    pub(crate) routing: &'a Routing,
    pub(crate) control: &'a PoolControl,
}

impl Router<'_> {
    /// Choose the request's endpoint among `candidates`, claim a probe if
    /// it is on probation, take a warm detour if one is due, and mark the
    /// request with it.
    pub(crate) fn route<B>(
        &self,
        set: &Arc<ServiceSet>,
        key: Option<u64>,
        hot: bool,
        candidates: &mut [Candidate],
        req: &Request<B>,
        detour: bool,
    ) -> Option<Sent> {
        let bound = self.routing.bound;
        // At most one pass per endpoint: each failed probe claim rules one out.
        for _ in 0..=candidates.len() {
            let first = match key {
                Some(key) => choice::choose(key, candidates, bound, hot),
                None => choice::least_loaded_of_two(candidates, bound, |n| fastrand::usize(..n)),
            }?;
            let endpoint = &set.endpoints[first];
            let mut probe = None;
            if endpoint.is_out() {
                probe = endpoint.health().claim_probe(Instant::now());
                if probe.is_none() {
                    candidates[first].eligible = false;
                    continue;
                }
            }
            let mut chosen = first;
            if let Some(key) = key.filter(|_| detour && self.routing.warm_aware && probe.is_none())
            {
                chosen = self.warm_detour(set, key, candidates, first, req);
            }
            return Some(Sent::to(set.clone(), chosen, probe));
        }
        None
    }

    /// The next endpoint of the key's order, when the first choice has no
    /// free connection and that one, in service and under the bound, has.
    /// Not for a retry: it has moved one step already.
    fn warm_detour<B>(
        &self,
        set: &ServiceSet,
        key: u64,
        candidates: &[Candidate],
        first: usize,
        req: &Request<B>,
    ) -> usize {
        let home = &set.endpoints[first];
        if candidates.len() < 2 || self.control.is_warm_at(req, Some(home.endpoint())) {
            return first;
        }
        // The very next endpoint of the key's order, if it is under the
        // bound and in service: never further from the first choice.
        let (total, n) = choice::totals(candidates);
        let bound = self.routing.bound.limit(total, n);
        let Some(next) = choice::first_under(key, candidates, usize::MAX, Some(first))
            .filter(|&next| candidates[next].load < bound && !set.endpoints[next].is_out())
        else {
            return first;
        };
        if self
            .control
            .is_warm_at(req, Some(set.endpoints[next].endpoint()))
        {
            // The first choice opens a connection meanwhile: the key's next
            // request finds it warm and stays home.
            // A connect ahead that fails counts as a failed connect of the
            // first choice: a dead endpoint that detours keep cold is
            // still ejected.
            if let Ok(target) = Target::from_request(req) {
                let warm_up = self
                    .control
                    .warm_up(&target.with_endpoint(Some(home.endpoint())));
                if let WarmUp::Failing { retry_at } = warm_up
                    && home.health().new_warm_failure(retry_at)
                {
                    let rules = &self.routing.ejection;
                    record(set, home, Outcome::Failure(None), None, rules);
                }
            }
            set.endpoints[next]
                .detours_to
                .fetch_add(1, Ordering::Relaxed);
            set.events.load().on_warm_detour(&WarmDetour {
                service: &set.name,
                from: set.endpoints[first].addr,
                to: set.endpoints[next].addr,
            });
            next
        } else {
            first
        }
    }
}
