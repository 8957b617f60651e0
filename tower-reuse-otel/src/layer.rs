//! `OtelLayer`: wraps an HTTP client service with spans and metrics.

use std::fmt;
use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::trace::Tracer;
use tower_layer::Layer;

use http::HeaderName;

use crate::options::{Options, header_key};
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
    options: Arc<Options>,
}

impl<T: Tracer> OtelLayer<T> {
    /// A layer recording spans with `tracer` and metrics with `meter`.
    pub fn new(tracer: T, meter: &Meter) -> Self {
        OtelLayer {
            tracer: Arc::new(tracer),
            instruments: Arc::new(Instruments::new(meter)),
            options: Arc::default(),
        }
    }
}

impl<T> OtelLayer<T> {
    fn options(&mut self) -> &mut Options {
        Arc::make_mut(&mut self.options)
    }

    /// Opt-in: `url.full` on request spans, the whole URL with its query
    /// string (user info never). Query strings often carry tokens and
    /// personal data: off by default.
    pub fn record_url_full(mut self) -> Self {
        self.options().url_full = true;
        self
    }

    /// Opt-in: the request header `name` on request spans, as
    /// `http.request.header.<name>` (a string array, one per value).
    pub fn record_request_header(mut self, name: HeaderName) -> Self {
        let key = header_key("request", &name);
        self.options().request_headers.push((name, key));
        self
    }

    /// Opt-in: the response header `name` on request spans, as
    /// `http.response.header.<name>` (a string array, one per value).
    pub fn record_response_header(mut self, name: HeaderName) -> Self {
        let key = header_key("response", &name);
        self.options().response_headers.push((name, key));
        self
    }

    /// Opt-in: the request's [`Partition`](tower_reuse_pool::Partition)
    /// extension on request spans, as `tower_reuse.partition`. A partition
    /// often names a tenant: off by default. The same setter as
    /// [`OtelPoolEvents::record_partition`](crate::OtelPoolEvents::record_partition)
    /// on the hook.
    #[cfg(feature = "pool")]
    pub fn record_partition(mut self, on: bool) -> Self {
        self.options().partition = on;
        self
    }

    /// Opt-in: each request span links to the span of the connection it
    /// was sent on; `spans` must also be given to the pool's
    /// [`OtelPoolEvents`](crate::OtelPoolEvents), which records them.
    #[cfg(feature = "pool")]
    pub fn link_connection_spans(mut self, spans: crate::ConnectionSpans) -> Self {
        self.options().connection_spans = Some(spans);
        self
    }
}

impl<T> Clone for OtelLayer<T> {
    fn clone(&self) -> Self {
        OtelLayer {
            tracer: self.tracer.clone(),
            instruments: self.instruments.clone(),
            options: self.options.clone(),
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
        Otel::new(
            inner,
            self.tracer.clone(),
            self.instruments.clone(),
            self.options.clone(),
        )
    }
}

#[cfg(all(test, feature = "pool"))]
mod tests {
    use opentelemetry::global;

    use super::*;

    #[test]
    fn record_partition_takes_the_setting_as_the_hook_does() {
        let layer = OtelLayer::new(global::tracer("t"), &global::meter("t"));
        assert!(!layer.options.partition);
        let on = layer.record_partition(true);
        assert!(on.options.partition);
        assert!(!on.record_partition(false).options.partition);
    }
}
