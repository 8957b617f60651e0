//! `OtelLayer`: wraps an HTTP client service with spans and metrics.

use std::fmt;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::trace::Tracer;
use tower_layer::Layer;

use crate::service::{Instruments, Otel};

/// Wraps an HTTP client service in [`Otel`]: a client span per request and
/// the `http.client.request.duration` and `http.client.active_requests`
/// metrics (see the [crate docs](crate) for every attribute).
///
/// Built from the caller's tracer and meter; the crate never touches the
/// global providers.
///
/// ```
/// use opentelemetry::global;
/// use tower::ServiceBuilder;
/// use tower_reuse_otel::OtelLayer;
///
/// // Whatever providers the application set up (here the globals, no-ops
/// // unless the application installed its own).
/// let layer = OtelLayer::new(global::tracer("my-client"), &global::meter("my-client"));
/// let client = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # let _ = client;
/// ```
pub struct OtelLayer<T> {
    tracer: Arc<T>,
    instruments: Arc<Instruments>,
}

impl<T: Tracer> OtelLayer<T> {
    /// A layer recording spans with `tracer` and metrics with `meter`.
    pub fn new(tracer: T, meter: &Meter) -> Self {
        OtelLayer {
            tracer: Arc::new(tracer),
            instruments: Arc::new(Instruments::new(meter)),
        }
    }
}

impl<T> Clone for OtelLayer<T> {
    fn clone(&self) -> Self {
        OtelLayer {
            tracer: self.tracer.clone(),
            instruments: self.instruments.clone(),
        }
    }
}

impl<T> fmt::Debug for OtelLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelLayer").finish_non_exhaustive()
    }
}

impl<S, T> Layer<S> for OtelLayer<T> {
    type Service = Otel<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Otel::new(inner, self.tracer.clone(), self.instruments.clone())
    }
}
