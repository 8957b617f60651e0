//! The `hyper-util+tracing` peer: the instrumented client users build
//! today. hyper-util's legacy `Client` under tower-http's `TraceLayer`
//! (its defaults: a `request` span per request, events at the response and
//! at the end of the body), bridged to the same OpenTelemetry SDK set-up as
//! `reuse+otel` by `tracing-opentelemetry`, and the request duration
//! histogram users add by hand around the call (`http.client.request.duration`
//! with the method, the server's address and port, and the status code).

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{Trace, TraceLayer};
use tower_layer::Layer;
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt as _;

use super::otel::Telemetry;
use super::{LabConnector, StackError};
use crate::otlp::Endpoint;

/// hyper-util's client under `TraceLayer`.
pub type TracedClient =
    Trace<Client<LabConnector, Full<Bytes>>, SharedClassifier<ServerErrorsAsFailures>>;

/// The stack: the traced client, the subscriber its requests run under,
/// the hand-made histogram, and the SDK providers they report to.
pub(crate) struct Traced {
    pub(crate) client: TracedClient,
    pub(crate) instruments: Instruments,
    // Dropped last: the providers outlive what reports to them.
    pub(crate) _telemetry: Telemetry,
}

/// What a `hyper-util+tracing` worker needs besides the client: the
/// `tracing` dispatch its requests run under and the hand-made histogram.
#[derive(Clone)]
pub struct Instruments {
    /// `tracing` to OpenTelemetry: the registry with the OpenTelemetry
    /// layer, set for each request (no process-wide default: the lab runs
    /// other stacks in the same process).
    pub(crate) dispatch: Dispatch,
    pub(crate) duration: Histogram<f64>,
    server_address: KeyValue,
    server_port: KeyValue,
}

impl Traced {
    pub(crate) fn new(
        client: Client<LabConnector, Full<Bytes>>,
        authority: &http::uri::Authority,
        otlp: Option<&Endpoint>,
    ) -> Result<Self, StackError> {
        let telemetry = Telemetry::new(otlp)?;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(telemetry.tracer()));
        let duration = telemetry
            .meter()
            .f64_histogram("http.client.request.duration")
            .with_unit("s")
            .build();
        Ok(Traced {
            client: TraceLayer::new_for_http().layer(client),
            instruments: Instruments {
                dispatch: Dispatch::new(subscriber),
                duration,
                server_address: KeyValue::new("server.address", authority.host().to_owned()),
                server_port: KeyValue::new(
                    "server.port",
                    i64::from(authority.port_u16().unwrap_or(80)),
                ),
            },
            _telemetry: telemetry,
        })
    }
}

impl Instruments {
    /// Records one request's duration, as a hand-written wrapper would.
    pub(crate) fn record(&self, method: &Method, started: Instant, status: Option<StatusCode>) {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            self.server_address.clone(),
            self.server_port.clone(),
        ];
        if let Some(status) = status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
        self.duration
            .record(started.elapsed().as_secs_f64(), &attributes);
    }
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instruments").finish_non_exhaustive()
    }
}
