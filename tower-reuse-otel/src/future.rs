//! The response future: ends the span and records the metrics.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, Status, TraceContextExt};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::attributes::{self, ERROR_TYPE};
use crate::gauges;
use crate::options::Options;
use crate::service::{Outcome, RequestTarget};

pin_project! {
    /// The future [`Otel`](crate::Otel) returns: the inner response future,
    /// recorded when it completes. Dropped before that, it still takes the
    /// request out of `http.client.active_requests`, and the span `S` ends
    /// as dropped.
    pub struct ResponseFuture<F, S> {
        #[pin]
        inner: F,
        recording: Option<Recording<S>>,
    }
}

impl<F, S> ResponseFuture<F, S> {
    pub(crate) fn new(inner: F, recording: Recording<S>) -> Self {
        ResponseFuture {
            inner,
            recording: Some(recording),
        }
    }
}

impl<F, S> fmt::Debug for ResponseFuture<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, S, B, E> Future for ResponseFuture<F, S>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: 'static,
    E: 'static,
    S: Span,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = match this.recording {
            Some(recording) => {
                let _current = recording.otel_cx.clone().attach();
                ready!(this.inner.poll(cx))
            }
            None => ready!(this.inner.poll(cx)),
        };
        if let Some(recording) = this.recording.take() {
            match &output {
                Ok(response) => recording.response(response),
                Err(error) => recording.error(attributes::error_type(error)),
            }
        }
        Poll::Ready(output)
    }
}

/// One request's span and target, until its response head. Counted in
/// `http.client.active_requests` from its creation to its drop.
pub(crate) struct Recording<S> {
    /// The request's span, owned here: recorded and ended without the
    /// lock and dynamic dispatch of a span shared through a `Context`.
    span: S,
    /// The caller's context with the span's context as the current span:
    /// what the inner service runs in, so its spans are the request's
    /// children and propagators send the request's trace.
    otel_cx: opentelemetry::Context,
    target: Arc<RequestTarget>,
    /// The layer's opt-ins, when any reads the response.
    options: Option<Arc<Options>>,
    start: Instant,
}

impl<S: Span> Recording<S> {
    pub(crate) fn new(
        span: S,
        target: Arc<RequestTarget>,
        options: Option<Arc<Options>>,
        start: Instant,
    ) -> Self {
        let otel_cx =
            opentelemetry::Context::current().with_remote_span_context(span.span_context().clone());
        gauges::add(&target.active, 1);
        Recording {
            span,
            otel_cx,
            target,
            options,
            start,
        }
    }

    /// The context the inner service runs in.
    pub(crate) fn context(&self) -> &opentelemetry::Context {
        &self.otel_cx
    }

    fn response<B: 'static>(mut self, response: &Response<B>) {
        let status = response.status().as_u16();
        #[cfg(feature = "pool")]
        let info = tower_reuse_pool::ConnectionInfo::of(response);
        #[cfg(feature = "pool")]
        let version = match info {
            Some(info) => Some(info.protocol().as_str()),
            None => attributes::version(response.version()),
        };
        #[cfg(not(feature = "pool"))]
        let version = attributes::version(response.version());
        let outcome = Outcome::Response { status, version };
        self.target
            .record_duration(outcome, attributes::seconds(self.start.elapsed()));

        // The span's attributes in one batch: the response's, then the
        // connection's.
        let span = &mut self.span;
        // A span the sampler dropped records nothing: build nothing for it.
        if span.is_recording() {
            if status >= 400 {
                span.set_status(Status::error(""));
            }
            #[cfg(feature = "pool")]
            match info {
                Some(info) => {
                    span.set_attributes(outcome.attributes().chain(connection_facts(info)))
                }
                None => span.set_attributes(outcome.attributes()),
            }
            #[cfg(not(feature = "pool"))]
            span.set_attributes(outcome.attributes());
            if let Some(options) = &self.options {
                span.set_attributes(options.response(response));
                #[cfg(feature = "pool")]
                if let (Some(spans), Some(info)) = (&options.connection_spans, info)
                    && let Some(connection) = spans.context(info.id())
                {
                    span.add_link(connection, Vec::new());
                }
            }
        }
        span.end();
    }

    fn error(mut self, error_type: &'static str) {
        self.target.record_duration(
            Outcome::Error(error_type),
            attributes::seconds(self.start.elapsed()),
        );
        let span = &mut self.span;
        span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
        span.set_status(Status::error(error_type));
        span.end();
    }
}

/// The pool's facts about the connection a response came on.
#[cfg(feature = "pool")]
fn connection_facts(info: &tower_reuse_pool::ConnectionInfo) -> impl Iterator<Item = KeyValue> {
    use crate::attributes::{
        CHECKOUT_WAIT, CONNECTION_ID, CONNECTION_IDLE_FOR, CONNECTION_REUSED, RETRY_REASON,
        TLS_RESUMED,
    };
    use tower_reuse_pool::TlsHandshake;

    [
        Some(KeyValue::new(CONNECTION_ID, attributes::conn_id(info.id()))),
        Some(KeyValue::new(CONNECTION_REUSED, info.reused())),
        Some(KeyValue::new(
            CHECKOUT_WAIT,
            attributes::seconds(info.wait()),
        )),
        info.idle_for()
            .map(|idle_for| KeyValue::new(CONNECTION_IDLE_FOR, attributes::seconds(idle_for))),
        info.tls_handshake()
            .map(|handshake| KeyValue::new(TLS_RESUMED, handshake == TlsHandshake::Resumed)),
        info.retried()
            .map(|reason| KeyValue::new(RETRY_REASON, reason.as_str())),
    ]
    .into_iter()
    .flatten()
}

impl<S> Drop for Recording<S> {
    fn drop(&mut self) {
        gauges::add(&self.target.active, -1);
    }
}
