//! `Otel`: the service that records a span and metrics per request.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::sync::atomic::AtomicI64;

use http::{Request, Response, Uri};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use tokio::time::Instant;
use tower_service::Service;

use crate::attributes::{self, HTTP_REQUEST_METHOD};
use crate::future::{Recording, ResponseFuture};
use crate::gauges::Gauges;

/// Bucket boundaries for `http.client.request.duration`, in seconds: the
/// semantic conventions' advice.
pub(crate) const REQUEST_DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The request instruments, shared by every clone of a layer's services.
#[derive(Debug)]
pub(crate) struct Instruments {
    pub(crate) duration: Histogram<f64>,
    /// `http.client.active_requests`, one count per request attribute set.
    active: Gauges,
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
        }
    }

    /// The attributes and in-flight count of requests like `method uri`,
    /// built once per target.
    fn target(&self, method: &'static str, uri: &Uri) -> Arc<RequestTarget> {
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
            host: uri.host().map(Box::from),
            port: uri.port_u16(),
            active: self.active.count(attributes.clone()),
            attributes: attributes.into(),
        })
    }
}

/// What every request to one target (method, scheme, host, port) records
/// alike: its attributes, built once, and its `http.client.active_requests`
/// count.
#[derive(Debug)]
pub(crate) struct RequestTarget {
    method: &'static str,
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    port: Option<u16>,
    /// `http.request.method`, `server.address`, `server.port`, `url.scheme`.
    pub(crate) attributes: Arc<[KeyValue]>,
    pub(crate) active: Arc<AtomicI64>,
}

impl RequestTarget {
    fn is(&self, method: &'static str, uri: &Uri) -> bool {
        self.method == method
            && self.scheme.as_deref() == uri.scheme_str()
            && self.host.as_deref() == uri.host()
            && self.port == uri.port_u16()
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
    /// The last request's target, reused while requests go to it.
    last_target: Option<Arc<RequestTarget>>,
}

impl<S, T> Otel<S, T> {
    pub(crate) fn new(inner: S, tracer: Arc<T>, instruments: Arc<Instruments>) -> Self {
        Otel {
            inner,
            tracer,
            instruments,
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
    S::Error: 'static,
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

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
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(span_attributes(&target.attributes))
            .start(&*self.tracer);
        let otel_cx = opentelemetry::Context::current_with_span(span);
        let recording = Recording::new(
            otel_cx.clone(),
            target,
            Instant::now(),
            self.instruments.clone(),
        );
        let inner = {
            let _current = otel_cx.attach();
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
