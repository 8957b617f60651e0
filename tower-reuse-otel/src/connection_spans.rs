//! Opt-in: a span per pooled connection, linked from the request spans it
//! served.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span, SpanContext, SpanKind, Tracer};
use tower_reuse_pool::ConnId;

/// A span per connection of one pool, from the start of its connect to its
/// close; give the same `ConnectionSpans` to the pool's
/// [`OtelPoolEvents`](crate::OtelPoolEvents) (which starts and ends the
/// spans) and to the [`OtelLayer`](crate::OtelLayer) over it (whose
/// request spans then link to the span of the connection they were sent
/// on).
///
/// The span is named `HTTP connection`, of kind internal, with the server
/// attributes, `network.protocol.version`, `tower_reuse.connection.id`,
/// `tower_reuse.connect.reason`, `tower_reuse.tls.handshake` (encrypted
/// connections), and at its end `tower_reuse.close.reason` and
/// `tower_reuse.connection.requests` (requests served).
///
/// Connection ids are unique within one pool: one `ConnectionSpans` per
/// pool.
///
/// ```
/// use opentelemetry::global;
/// use tower_reuse_otel::{ConnectionSpans, OtelLayer, OtelPoolEvents};
///
/// let meter = global::meter("my-client");
/// let spans = ConnectionSpans::new(global::tracer("my-client"));
/// let events = OtelPoolEvents::new(&meter).connection_spans(spans.clone());
/// let layer = OtelLayer::new(global::tracer("my-client"), &meter).link_connection_spans(spans);
/// # let _ = (events, layer);
/// ```
#[derive(Clone)]
pub struct ConnectionSpans {
    inner: Arc<Inner>,
}

struct Inner {
    tracer: BoxedTracer,
    /// The span context of every open connection's span, by id.
    open: Mutex<HashMap<ConnId, SpanContext>>,
}

impl ConnectionSpans {
    /// Connection spans recorded with `tracer`.
    pub fn new<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        ConnectionSpans {
            inner: Arc::new(Inner {
                tracer: BoxedTracer::new(Box::new(tracer)),
                open: Mutex::default(),
            }),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, SpanContext>> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts connection `id`'s span at `start`, a root span: a connection
    /// outlives the request that caused it.
    pub(crate) fn start(
        &self,
        id: ConnId,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> BoxedSpan {
        let tracer = &self.inner.tracer;
        let span = tracer
            .span_builder("HTTP connection")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(tracer, &opentelemetry::Context::new());
        self.open().insert(id, span.span_context().clone());
        span
    }

    /// The span context of open connection `id`.
    pub(crate) fn context(&self, id: ConnId) -> Option<SpanContext> {
        self.open().get(&id).cloned()
    }

    /// Ends connection `id`'s span with `attributes`.
    pub(crate) fn end(&self, id: ConnId, mut span: BoxedSpan, attributes: Vec<KeyValue>) {
        self.open().remove(&id);
        span.set_attributes(attributes);
        span.end();
    }
}

impl fmt::Debug for ConnectionSpans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSpans")
            .field("open", &self.open().len())
            .finish_non_exhaustive()
    }
}
