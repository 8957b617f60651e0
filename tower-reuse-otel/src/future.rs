//! The response future: ends the span and records the metrics.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{KeyValue, Value};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::attributes::{self, ERROR_TYPE, HTTP_RESPONSE_STATUS_CODE, NETWORK_PROTOCOL_VERSION};
use crate::service::Instruments;

pin_project! {
    /// The future [`Otel`](crate::Otel) returns: the inner response future,
    /// recorded when it completes. Dropped before that, it still takes the
    /// request out of `http.client.active_requests`.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        recording: Option<Recording>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, recording: Recording) -> Self {
        ResponseFuture {
            inner,
            recording: Some(recording),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: 'static,
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

/// One request's span and metric attributes, until its response head.
/// Dropping it (done or cancelled) takes the request out of
/// `http.client.active_requests`: exactly once.
pub(crate) struct Recording {
    otel_cx: opentelemetry::Context,
    request_attributes: Vec<KeyValue>,
    start: Instant,
    instruments: Arc<Instruments>,
}

impl Recording {
    pub(crate) fn new(
        otel_cx: opentelemetry::Context,
        request_attributes: Vec<KeyValue>,
        start: Instant,
        instruments: Arc<Instruments>,
    ) -> Self {
        Recording {
            otel_cx,
            request_attributes,
            start,
            instruments,
        }
    }

    fn response<B>(self, response: &Response<B>) {
        let span = self.otel_cx.span();
        let status = response.status().as_u16();
        let mut metric = self.request_attributes.clone();
        metric.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
        span.set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
        #[cfg(feature = "pool")]
        let info = response
            .extensions()
            .get::<tower_reuse_pool::ConnectionInfo>();
        #[cfg(feature = "pool")]
        let version = match info {
            Some(info) => Some(info.protocol().as_str()),
            None => attributes::version(response.version()),
        };
        #[cfg(not(feature = "pool"))]
        let version = attributes::version(response.version());
        if let Some(version) = version {
            metric.push(KeyValue::new(NETWORK_PROTOCOL_VERSION, version));
            span.set_attribute(KeyValue::new(NETWORK_PROTOCOL_VERSION, version));
        }
        if status >= 400 {
            let error = Value::from(status.to_string());
            metric.push(KeyValue::new(ERROR_TYPE, error.clone()));
            span.set_attribute(KeyValue::new(ERROR_TYPE, error));
            span.set_status(Status::error(""));
        }
        #[cfg(feature = "pool")]
        if let Some(info) = info {
            connection_facts(&span, info);
        }
        self.instruments
            .duration
            .record(attributes::seconds(self.start.elapsed()), &metric);
        span.end();
    }

    fn error(self, error_type: &'static str) {
        let span = self.otel_cx.span();
        let mut metric = self.request_attributes.clone();
        metric.push(KeyValue::new(ERROR_TYPE, error_type));
        span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
        span.set_status(Status::error(error_type));
        self.instruments
            .duration
            .record(attributes::seconds(self.start.elapsed()), &metric);
        span.end();
    }
}

/// The pool's facts about the connection a response came on.
#[cfg(feature = "pool")]
fn connection_facts(
    span: &opentelemetry::trace::SpanRef<'_>,
    info: &tower_reuse_pool::ConnectionInfo,
) {
    use crate::attributes::{
        CHECKOUT_WAIT, CONNECTION_ID, CONNECTION_IDLE_FOR, CONNECTION_REUSED, RETRY_REASON,
        TLS_RESUMED,
    };
    use tower_reuse_pool::TlsHandshake;

    let id = i64::try_from(info.id().get()).unwrap_or(i64::MAX);
    span.set_attribute(KeyValue::new(CONNECTION_ID, id));
    span.set_attribute(KeyValue::new(CONNECTION_REUSED, info.reused()));
    span.set_attribute(KeyValue::new(
        CHECKOUT_WAIT,
        attributes::seconds(info.wait()),
    ));
    if let Some(idle_for) = info.idle_for() {
        span.set_attribute(KeyValue::new(
            CONNECTION_IDLE_FOR,
            attributes::seconds(idle_for),
        ));
    }
    if let Some(handshake) = info.tls_handshake() {
        span.set_attribute(KeyValue::new(
            TLS_RESUMED,
            handshake == TlsHandshake::Resumed,
        ));
    }
    if let Some(reason) = info.retried() {
        span.set_attribute(KeyValue::new(RETRY_REASON, reason.as_str()));
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.instruments.active.add(-1, &self.request_attributes);
    }
}
