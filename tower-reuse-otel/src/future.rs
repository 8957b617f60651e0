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
use crate::gauges;
use crate::service::{Instruments, RequestTarget};

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
/// Counted in `http.client.active_requests` from its creation to its drop.
pub(crate) struct Recording {
    otel_cx: opentelemetry::Context,
    target: Arc<RequestTarget>,
    start: Instant,
    instruments: Arc<Instruments>,
}

impl Recording {
    pub(crate) fn new(
        otel_cx: opentelemetry::Context,
        target: Arc<RequestTarget>,
        start: Instant,
        instruments: Arc<Instruments>,
    ) -> Self {
        gauges::add(&target.active, 1);
        Recording {
            otel_cx,
            target,
            start,
            instruments,
        }
    }

    /// The target's attributes with room for `extra` more.
    fn metric_attributes(&self, extra: usize) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(self.target.attributes.len() + extra);
        attributes.extend_from_slice(&self.target.attributes);
        attributes
    }

    fn response<B>(self, response: &Response<B>) {
        let status = response.status().as_u16();
        let mut metric = self.metric_attributes(3);
        metric.push(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
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
        }
        if status >= 400 {
            metric.push(KeyValue::new(ERROR_TYPE, Value::from(status.to_string())));
        }
        self.instruments
            .duration
            .record(attributes::seconds(self.start.elapsed()), &metric);

        // The span's attributes in one batch: the response's (those after
        // the target's in `metric`), then the connection's.
        let span = self.otel_cx.span();
        if status >= 400 {
            span.set_status(Status::error(""));
        }
        let response_attributes = metric.drain(self.target.attributes.len()..);
        #[cfg(feature = "pool")]
        match info {
            Some(info) => span.set_attributes(response_attributes.chain(connection_facts(info))),
            None => span.set_attributes(response_attributes),
        }
        #[cfg(not(feature = "pool"))]
        span.set_attributes(response_attributes);
        span.end();
    }

    fn error(self, error_type: &'static str) {
        let mut metric = self.metric_attributes(1);
        metric.push(KeyValue::new(ERROR_TYPE, error_type));
        self.instruments
            .duration
            .record(attributes::seconds(self.start.elapsed()), &metric);
        let span = self.otel_cx.span();
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

    let id = i64::try_from(info.id().get()).unwrap_or(i64::MAX);
    [
        Some(KeyValue::new(CONNECTION_ID, id)),
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

impl Drop for Recording {
    fn drop(&mut self) {
        gauges::add(&self.target.active, -1);
    }
}
