//! The `reuse+otel` stack's telemetry: the real OpenTelemetry SDK, set up as
//! an application would, exporting nowhere.
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

use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tower_reuse_pool::events::{
    CheckedIn, CheckedOut, Closed, ConnectFailed, ConnectStarted, Connected, PoolEvents, Retried,
};

/// The instrumentation scope the lab's tracer and meter report.
const SCOPE: &str = "reuse-lab";

/// Longer than any run: the periodic reader never collects during one.
const METRICS_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// A tracer provider and a meter provider, kept alive for as long as the
/// stack (dropping a provider shuts it down).
#[derive(Debug)]
pub(crate) struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Telemetry {
    /// Both providers: the SDK's default sampler, batched spans, metrics
    /// for a reader that does not collect during the run.
    pub(crate) fn new() -> Self {
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(DiscardSpans)
            .build();
        let reader = PeriodicReader::builder(DiscardMetrics)
            .with_interval(METRICS_INTERVAL)
            .build();
        let meter_provider = SdkMeterProvider::builder().with_reader(reader).build();
        Telemetry {
            tracer_provider,
            meter_provider,
        }
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

/// A span exporter that drops every batch (a collector that is never there).
#[derive(Debug)]
struct DiscardSpans;

impl SpanExporter for DiscardSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// A metric exporter that drops what it is given (called only at shutdown).
#[derive(Debug)]
struct DiscardMetrics;

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

/// Sends every pool event to two hooks, `first` then `second`: the lab's
/// own counters and `OtelPoolEvents`.
#[derive(Debug)]
pub(crate) struct BothEvents<A, B> {
    first: A,
    second: B,
}

impl<A, B> BothEvents<A, B> {
    pub(crate) fn new(first: A, second: B) -> Self {
        BothEvents { first, second }
    }
}

impl<A: PoolEvents, B: PoolEvents> PoolEvents for BothEvents<A, B> {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.first.on_connect_start(event);
        self.second.on_connect_start(event);
    }

    fn on_connect(&self, event: &Connected<'_>) {
        self.first.on_connect(event);
        self.second.on_connect(event);
    }

    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        self.first.on_connect_error(event);
        self.second.on_connect_error(event);
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.first.on_checkout(event);
        self.second.on_checkout(event);
    }

    fn on_checkin(&self, event: &CheckedIn<'_>) {
        self.first.on_checkin(event);
        self.second.on_checkin(event);
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.first.on_close(event);
        self.second.on_close(event);
    }

    fn on_retry(&self, event: &Retried<'_>) {
        self.first.on_retry(event);
        self.second.on_retry(event);
    }
}
