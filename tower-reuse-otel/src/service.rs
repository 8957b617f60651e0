//! `Otel`: the service that records a span and metrics per request.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::{SpanKind, Tracer};
use opentelemetry::{KeyValue, Value};
use tokio::time::Instant;
use tower_service::Service;

use crate::MAX_TARGETS;
use crate::attributes::{
    self, ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, NETWORK_PROTOCOL_VERSION,
};
use crate::bound::BoundF64;
use crate::future::{Recording, ResponseFuture};
use crate::gauges::Gauges;
use crate::options::Options;

/// Bucket boundaries for `http.client.request.duration`, in seconds: the
/// semantic conventions' advice.
pub(crate) const REQUEST_DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The request instruments, shared by every clone of a layer's services.
#[derive(Debug)]
pub(crate) struct Instruments {
    duration: Histogram<f64>,
    /// `http.client.active_requests`, one count per request attribute set.
    active: Gauges,
    /// The targets seen (up to `MAX_TARGETS`), resolved once: requests that
    /// alternate between targets find theirs here instead of resolving it
    /// again (its attributes, its count and, at its first response, its
    /// duration points: several thousand instructions).
    targets: RwLock<TargetCache>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        Instruments {
            duration: meter
                .f64_histogram("http.client.request.duration")
                .with_description("Duration of HTTP client requests, to the response head.")
                .with_unit("s")
                .with_boundaries(REQUEST_DURATION_BOUNDARIES.to_vec())
                .build(),
            active: Gauges::new(
                meter,
                "http.client.active_requests",
                "Number of outbound HTTP requests in flight.",
                "{request}",
            ),
            targets: RwLock::default(),
        }
    }

    /// The target of requests like `method uri`: from the cache, else
    /// resolved and cached while there is room.
    fn target(&self, method: &'static str, uri: &Uri) -> Arc<RequestTarget> {
        let hash = TargetCache::hash(method, uri);
        let cached = self
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash, method, uri);
        if let Some(target) = cached {
            return target;
        }
        let target = self.resolve(method, uri);
        let mut cache = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.get(hash, method, uri) {
            return cached; // Resolved meanwhile by another clone.
        }
        if cache.len() >= MAX_TARGETS {
            cache.prune();
            self.active.prune();
        }
        if cache.len() < MAX_TARGETS {
            cache.insert(hash, target.clone());
        }
        target
    }

    /// The attributes, in-flight count and duration points of requests
    /// like `method uri`.
    fn resolve(&self, method: &'static str, uri: &Uri) -> Arc<RequestTarget> {
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new(HTTP_REQUEST_METHOD, method));
        attributes.extend(attributes::server(
            uri.scheme_str(),
            uri.host(),
            uri.port_u16(),
        ));
        Arc::new(RequestTarget {
            method,
            scheme: uri.scheme_str().map(Box::from),
            authority: uri.authority().map(|a| Box::from(a.as_str())),
            active: self.active.count(attributes.clone()),
            attributes: attributes.into(),
            duration: self.duration.clone(),
            durations: RwLock::default(),
        })
    }

    /// How many targets are cached.
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Targets by a hash of their method, scheme and authority, looked up
/// without building a key. A target whose hash another holds (a 64-bit
/// collision) is not cached: it is resolved per request.
#[derive(Debug, Default)]
struct TargetCache(HashMap<u64, Arc<RequestTarget>>);

impl TargetCache {
    fn hash(method: &'static str, uri: &Uri) -> u64 {
        let mut hasher = DefaultHasher::new();
        method.hash(&mut hasher);
        uri.scheme_str().hash(&mut hasher);
        uri.authority().map(|a| a.as_str()).hash(&mut hasher);
        hasher.finish()
    }

    fn get(&self, hash: u64, method: &'static str, uri: &Uri) -> Option<Arc<RequestTarget>> {
        self.0
            .get(&hash)
            .filter(|target| target.is(method, uri))
            .cloned()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn insert(&mut self, hash: u64, target: Arc<RequestTarget>) {
        self.0.entry(hash).or_insert(target);
    }

    /// Drops the targets only the cache holds: no service's last target,
    /// no request in flight.
    fn prune(&mut self) {
        self.0.retain(|_, target| Arc::strong_count(target) > 1);
    }
}

/// Most outcomes (status and protocol, or error) whose
/// `http.client.request.duration` point a target keeps resolved; rarer
/// ones are recorded with their attributes each time.
const MAX_OUTCOMES: usize = 32;

/// How a request ended, as far as its metric attributes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head with this status, on this protocol version.
    Response {
        status: u16,
        version: Option<&'static str>,
    },
    /// No response: `error.type`.
    Error(&'static str),
}

impl Outcome {
    /// `http.response.status_code`, `network.protocol.version` and
    /// `error.type`, as far as they apply.
    pub(crate) fn attributes(self) -> impl Iterator<Item = KeyValue> {
        let (status, version, error) = match self {
            Outcome::Response { status, version } => (
                Some(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status))),
                version.map(|v| KeyValue::new(NETWORK_PROTOCOL_VERSION, v)),
                (status >= 400).then(|| KeyValue::new(ERROR_TYPE, Value::from(status.to_string()))),
            ),
            Outcome::Error(error) => (None, None, Some(KeyValue::new(ERROR_TYPE, error))),
        };
        [status, version, error].into_iter().flatten()
    }
}

/// What every request to one target (method, scheme, authority) records
/// alike: its attributes, built once, its `http.client.active_requests`
/// count and its `http.client.request.duration` points.
#[derive(Debug)]
pub(crate) struct RequestTarget {
    method: &'static str,
    scheme: Option<Box<str>>,
    /// Compared, never recorded (it may hold user info).
    authority: Option<Box<str>>,
    /// `http.request.method`, `server.address`, `server.port`, `url.scheme`.
    pub(crate) attributes: Arc<[KeyValue]>,
    pub(crate) active: Arc<AtomicI64>,
    duration: Histogram<f64>,
    /// The duration point of each outcome seen, resolved once.
    durations: RwLock<Vec<(Outcome, BoundF64)>>,
}

impl RequestTarget {
    fn is(&self, method: &'static str, uri: &Uri) -> bool {
        self.method == method
            && self.scheme.as_deref() == uri.scheme_str()
            && self.authority.as_deref() == uri.authority().map(|a| a.as_str())
    }

    /// Records a request's `http.client.request.duration`.
    pub(crate) fn record_duration(&self, outcome: Outcome, seconds: f64) {
        let durations = self
            .durations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, point)) = durations.iter().find(|(o, _)| *o == outcome) {
            point.record(seconds);
            return;
        }
        drop(durations);
        let mut attributes = self.attributes.to_vec();
        attributes.extend(outcome.attributes());
        let point = BoundF64::new(&self.duration, &attributes);
        point.record(seconds);
        let mut durations = self
            .durations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if durations.len() < MAX_OUTCOMES && !durations.iter().any(|(o, _)| *o == outcome) {
            durations.push((outcome, point));
        }
    }
}

/// Records a client span and request metrics around an inner HTTP client
/// service. Built by [`OtelLayer`](crate::OtelLayer).
///
/// The span is current while the inner service's future is polled, so
/// spans it starts are children of the request span. The span and the
/// duration end at the response head: a body streamed afterwards is not
/// timed.
pub struct Otel<S, T> {
    inner: S,
    tracer: Arc<T>,
    instruments: Arc<Instruments>,
    options: Arc<Options>,
    /// The last request's target, reused while requests go to it.
    last_target: Option<Arc<RequestTarget>>,
}

impl<S, T> Otel<S, T> {
    pub(crate) fn new(
        inner: S,
        tracer: Arc<T>,
        instruments: Arc<Instruments>,
        options: Arc<Options>,
    ) -> Self {
        Otel {
            inner,
            tracer,
            instruments,
            options,
            last_target: None,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T> Clone for Otel<S, T> {
    fn clone(&self) -> Self {
        Otel {
            inner: self.inner.clone(),
            tracer: self.tracer.clone(),
            instruments: self.instruments.clone(),
            options: self.options.clone(),
            last_target: self.last_target.clone(),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for Otel<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otel")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, T, B, ResB> Service<Request<B>> for Otel<S, T>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: 'static,
    S::Error: 'static,
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, T::Span>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = attributes::method(req.method());
        let target = match &self.last_target {
            Some(target) if target.is(method, req.uri()) => target.clone(),
            _ => {
                let target = self.instruments.target(method, req.uri());
                self.last_target = Some(target.clone());
                target
            }
        };
        let name = if method == "_OTHER" { "HTTP" } else { method };
        let mut attributes = span_attributes(&target.attributes);
        if self.options.reads_request() {
            self.options.request(&req, &mut attributes);
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start(&*self.tracer);
        let options = self.options.reads_response().then(|| self.options.clone());
        let recording = Recording::new(span, target, options, Instant::now());
        let inner = {
            let _current = recording.context().clone().attach();
            self.inner.call(req)
        };
        ResponseFuture::new(inner, recording)
    }
}

/// Most attributes a request span gets: the target's four, then the
/// response's status code, protocol version and error type, and six
/// connection facts.
const SPAN_ATTRIBUTES: usize = 13;

/// The target's attributes in a `Vec` with room for the rest, which the
/// SDK keeps as the span's: setting them at the response head does not
/// reallocate.
fn span_attributes(target: &[KeyValue]) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(SPAN_ATTRIBUTES.max(target.len()));
    attributes.extend_from_slice(target);
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instruments() -> Instruments {
        // No provider is set: the API's no-op meter.
        Instruments::new(&opentelemetry::global::meter("service-test"))
    }

    fn uri(port: u16) -> Uri {
        format!("http://127.0.0.1:{port}/x").parse().unwrap()
    }

    #[test]
    fn alternating_targets_are_resolved_once() {
        let instruments = instruments();
        let a = instruments.target("GET", &uri(1));
        let b = instruments.target("GET", &uri(2));
        assert!(Arc::ptr_eq(&a, &instruments.target("GET", &uri(1))));
        assert!(Arc::ptr_eq(&b, &instruments.target("GET", &uri(2))));
        // Another method, scheme or authority is another target.
        let post = instruments.target("POST", &uri(1));
        let https = instruments.target("GET", &"https://127.0.0.1:1/x".parse().unwrap());
        assert!(!Arc::ptr_eq(&a, &post) && !Arc::ptr_eq(&a, &https));
        assert_eq!(instruments.cached(), 4);
        assert_eq!(instruments.active.len(), 4);
    }

    #[test]
    fn a_full_cache_drops_the_targets_out_of_use_and_keeps_the_rest() {
        let instruments = instruments();
        let held = instruments.target("GET", &uri(1));
        for port in 2..=u16::try_from(MAX_TARGETS).unwrap() {
            instruments.target("GET", &uri(port));
        }
        assert_eq!(instruments.cached(), MAX_TARGETS);
        assert_eq!(instruments.active.len(), MAX_TARGETS);

        // One more: everything but the held target (as a request in flight,
        // or a service's last target, holds it) goes; the new one stays.
        let new = instruments.target("GET", &uri(60_000));
        assert_eq!(instruments.cached(), 2);
        assert_eq!(instruments.active.len(), 2);
        assert!(Arc::ptr_eq(&held, &instruments.target("GET", &uri(1))));
        assert!(Arc::ptr_eq(&new, &instruments.target("GET", &uri(60_000))));
    }
}
