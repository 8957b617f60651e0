//! The `reuse+otel` stack's telemetry: the real OpenTelemetry SDK, set up as
//! an application would, exporting nowhere or, with `--otlp URL`, to a
//! collector over OTLP/HTTP.
//!
//! The SDK's defaults wherever an application would keep them, including
//! its reading of the `OTEL_*` environment variables: parent-based
//! always-on sampling unless `OTEL_TRACES_SAMPLER` says otherwise, the
//! batch span processor's queue and batch sizes unless `OTEL_BSP_*` do.
//! Spans go through that batch span processor (its own thread) to an
//! exporter that drops each batch: every span is sampled, built, ended and
//! queued as in production, only the network write is missing. Metrics are
//! aggregated by the SDK for a periodic reader whose interval is longer
//! than any run, so no collection happens while the load runs. No global
//! provider is set.
//!
//! With an OTLP endpoint the exporters are `opentelemetry-otlp`'s HTTP
//! protobuf exporters over [`ExportClient`](crate::otlp::ExportClient)
//! (its own thread and runtime, so exports never take the client
//! runtime's worker), the periodic reader keeps the SDK's interval
//! (`OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default), and what is left is
//! exported when the stack is dropped at the end of its run.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, Uri};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Tracer as _};
use opentelemetry::{KeyValue, StringValue, Value};

use super::StackError;
use crate::otlp::{self, Endpoint, ExportClient};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter};

/// The instrumentation scope the lab's tracer and meter report.
const SCOPE: &str = "reuse-lab";

/// Longer than any run: the periodic reader never collects during one.
const METRICS_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// A tracer provider and a meter provider, kept alive for as long as the
/// stack; dropping them shuts both down, which exports what they hold.
#[derive(Debug)]
pub(crate) struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    /// With `--otlp`: the exporters' client (it counts failed exports,
    /// which the SDK keeps to itself) and where it sends.
    otlp: Option<(ExportClient, Endpoint)>,
}

impl Telemetry {
    /// Both providers: the SDK's default sampler, batched spans, metrics
    /// for a reader that does not collect during the run; exporting
    /// nowhere, or to `otlp`.
    pub(crate) fn new(otlp: Option<&Endpoint>) -> Result<Self, StackError> {
        let resource = Resource::builder().with_service_name(SCOPE).build();
        let tracer_provider = SdkTracerProvider::builder().with_resource(resource.clone());
        let meter_provider = SdkMeterProvider::builder().with_resource(resource);
        let mut export = None;
        let (tracer_provider, meter_provider) = match otlp {
            None => (
                tracer_provider.with_batch_exporter(DiscardSpans),
                meter_provider.with_reader(
                    PeriodicReader::builder(DiscardMetrics)
                        .with_interval(METRICS_INTERVAL)
                        .build(),
                ),
            ),
            Some(endpoint) => {
                let otlp_error = |e: otlp::OtlpError| StackError::new(e.to_string());
                let client = ExportClient::new(otlp::EXPORT_TIMEOUT)
                    .map_err(|e| StackError::new(format!("OTLP export client: {e}")))?;
                let spans = otlp::span_exporter(endpoint, &client).map_err(otlp_error)?;
                let metrics = otlp::metric_exporter(endpoint, &client).map_err(otlp_error)?;
                export = Some((client, endpoint.clone()));
                (
                    tracer_provider.with_batch_exporter(spans),
                    meter_provider.with_reader(PeriodicReader::builder(metrics).build()),
                )
            }
        };
        Ok(Telemetry {
            tracer_provider: tracer_provider.build(),
            meter_provider: meter_provider.build(),
            otlp: export,
        })
    }

    /// The tracer for `OtelLayer`.
    pub(crate) fn tracer(&self) -> SdkTracer {
        self.tracer_provider.tracer(SCOPE)
    }

    /// The meter for `OtelLayer` and `OtelPoolEvents`.
    pub(crate) fn meter(&self) -> Meter {
        self.meter_provider.meter(SCOPE)
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Now rather than when the last tracer clone goes, so the last
        // exports are done (or failed) before the run's row is printed.
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
        if let Some((client, endpoint)) = &self.otlp {
            let (failed, last) = client.failures();
            if failed > 0 {
                eprintln!(
                    "reuse-lab: {failed} of {} OTLP requests to {endpoint} failed, the last: {}",
                    client.sent(),
                    last.unwrap_or_default()
                );
            }
        }
    }
}

/// A span exporter that drops every batch (a collector that is never there).
#[derive(Debug)]
pub struct DiscardSpans;

impl SpanExporter for DiscardSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// A metric exporter that drops what it is given (called only at shutdown).
#[derive(Debug)]
pub struct DiscardMetrics;

impl PushMetricExporter for DiscardMetrics {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// One bare SDK span per request, the `reuse+span` stack's only
/// instrumentation: started before the pool's call, ended at the response
/// head. The server attributes are built once; the span gets nothing the
/// SDK does not need to hold a request span with its core attributes.
#[derive(Clone, Debug)]
pub struct BareSpan {
    tracer: SdkTracer,
    /// `server.address`, `server.port`, `url.scheme`.
    server: Arc<[KeyValue]>,
}

impl BareSpan {
    /// Spans for requests to `uri`'s server, from `tracer`.
    pub fn new(tracer: SdkTracer, uri: &Uri) -> Self {
        let mut server = Vec::with_capacity(3);
        if let Some(host) = uri.host() {
            let host = StringValue::from(Arc::<str>::from(host));
            server.push(KeyValue::new("server.address", Value::String(host)));
        }
        if let Some(port) = uri.port_u16() {
            server.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(scheme) = uri.scheme_str() {
            server.push(KeyValue::new("url.scheme", scheme.to_owned()));
        }
        BareSpan {
            tracer,
            server: server.into(),
        }
    }

    /// A `GET` client span with the server attributes, room left for the
    /// response's two.
    pub fn start(&self) -> Span {
        let mut attributes = Vec::with_capacity(self.server.len() + 3);
        attributes.push(KeyValue::new("http.request.method", "GET"));
        attributes.extend_from_slice(&self.server);
        self.tracer.build(
            SpanBuilder::from_name("GET")
                .with_kind(SpanKind::Client)
                .with_attributes(attributes),
        )
    }

    /// Ends `span` with the response's status code and protocol version.
    pub fn end<B>(span: &mut Span, response: Option<&Response<B>>) {
        if let Some(response) = response {
            let version = match response.version() {
                http::Version::HTTP_2 => "2",
                _ => "1.1",
            };
            span.set_attributes([
                KeyValue::new(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                ),
                KeyValue::new("network.protocol.version", version),
            ]);
        }
        span.end();
    }
}
