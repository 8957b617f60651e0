//! OTLP export: requests through `OtelLayer` over a pool with
//! `OtelPoolEvents`, on the real OpenTelemetry SDK, whose spans and metrics
//! go over OTLP/HTTP (protobuf, `opentelemetry-otlp`) to a collector. Here
//! the collector is a loopback receiver that decodes what arrives
//! (`tower_reuse_examples::otlp::Receiver`), the upstream the lab's
//! embedded server, both on `127.0.0.1`.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example otlp_export
//! ```
//!
//! The exporters send through `ExportClient`, a tower-reuse pool on a
//! runtime of its own, so they work with the SDK's default thread-based
//! batch span processor and periodic reader.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{ServiceBuilder, ServiceExt};
use tower_reuse_examples::otlp::{self, ExportClient, Receiver, attribute};
use tower_reuse_examples::server::{Server, ServerConfig};
use tower_reuse_otel::{OtelLayer, OtelPoolEvents};
use tower_reuse_pool::{PoolConfig, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service name and instrumentation scope the example reports.
const NAME: &str = "otlp-export-example";

/// Requests sent, one after another.
const REQUESTS: usize = 20;

/// What a run left behind: the receiver with everything it decoded, the
/// exporters' client, and the upstream's port (the spans' `server.port`).
#[derive(Debug)]
struct Outcome {
    receiver: Receiver,
    export: ExportClient,
    upstream_port: u16,
}

/// Sends [`REQUESTS`] GETs through the instrumented client, then shuts the
/// providers down, which exports what they hold; returns once the receiver
/// has answered every export.
async fn run() -> Result<Outcome, BoxError> {
    let receiver = Receiver::start()?;
    let upstream = Server::start(ServerConfig::default())?;

    // The application's telemetry set-up: OTLP/HTTP exporters, the SDK's
    // batch span processor and periodic reader.
    let endpoint = receiver.endpoint();
    let export = ExportClient::new(otlp::EXPORT_TIMEOUT)?;
    let resource = Resource::builder().with_service_name(NAME).build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(otlp::span_exporter(&endpoint, &export)?)
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PeriodicReader::builder(otlp::metric_exporter(&endpoint, &export)?).build())
        .build();

    // The instrumented client.
    let meter = meter_provider.meter(NAME);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = ServiceBuilder::new()
        .layer(OtelLayer::new(tracer_provider.tracer(NAME), &meter))
        .layer(PoolLayer::new(PoolConfig::default())?.events(OtelPoolEvents::new(&meter)))
        .service(connector);

    let url = format!("{}/", upstream.url(0));
    for _ in 0..REQUESTS {
        let request = Request::get(&url).body(Full::<Bytes>::default())?;
        let response = client.clone().oneshot(request).await?;
        response.into_body().collect().await?;
    }

    // Shutting a provider down exports what it holds and blocks until the
    // collector has answered: off the runtime's thread. The client lives
    // on, so its connection is still open (and idle) when the metrics are
    // collected.
    tokio::task::spawn_blocking(move || {
        tracer_provider.shutdown()?;
        meter_provider.shutdown()
    })
    .await??;
    drop(client);
    Ok(Outcome {
        receiver,
        export,
        upstream_port: upstream.addrs()[0].port(),
    })
}

fn reused(span: &Span) -> bool {
    matches!(
        attribute(&span.attributes, "tower_reuse.connection.reused"),
        Some(Value::BoolValue(true))
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let Outcome {
        receiver,
        export,
        upstream_port,
    } = run().await?;
    let spans = receiver.spans();
    let names: BTreeSet<_> = spans.iter().map(|s| s.name.as_str()).collect();
    println!(
        "received {} spans named {names:?} (requests to 127.0.0.1:{upstream_port}), {} on a reused connection",
        spans.len(),
        spans.iter().filter(|s| reused(s)).count()
    );
    println!("received metrics: {:?}", receiver.metric_names());
    println!(
        "http.client.request.duration counted {:?} requests; tower_reuse.connection.opened = {:?}",
        receiver.histogram_count("http.client.request.duration"),
        receiver.sum("tower_reuse.connection.opened", None)
    );
    println!(
        "{} trace and {} metric exports in {} requests ({} failed) over {} connection(s) to the receiver",
        receiver.trace_exports().len(),
        receiver.metric_exports().len(),
        export.sent(),
        export.failures().0,
        receiver.connections()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    #[tokio::test]
    async fn spans_and_metrics_arrive_at_the_otlp_receiver() {
        let Outcome {
            receiver,
            export,
            upstream_port,
        } = run().await.unwrap();
        assert_eq!(export.failures(), (0, None));
        assert_eq!(receiver.rejected(), 0);
        let service_name = receiver.service_name();
        assert_eq!(service_name.as_deref(), Some(NAME));

        // One client span per request, with the request's and the pooled
        // connection's facts.
        let spans = receiver.spans();
        assert_eq!(spans.len(), REQUESTS);
        for span in &spans {
            assert_eq!(span.name, "GET");
            assert_eq!(span.kind, SpanKind::Client as i32);
            let text = |key| match attribute(&span.attributes, key) {
                Some(Value::StringValue(v)) => Some(v.as_str()),
                _ => None,
            };
            let int = |key| match attribute(&span.attributes, key) {
                Some(Value::IntValue(n)) => Some(*n),
                _ => None,
            };
            assert_eq!(text("http.request.method"), Some("GET"));
            assert_eq!(text("server.address"), Some("127.0.0.1"));
            assert_eq!(int("server.port"), Some(i64::from(upstream_port)));
            assert_eq!(int("http.response.status_code"), Some(200));
            assert_eq!(int("tower_reuse.connection.id"), Some(1));
        }
        // The first request opened the connection; the others reused it.
        assert_eq!(spans.iter().filter(|s| reused(s)).count(), REQUESTS - 1);

        let names = receiver.metric_names();
        for name in [
            "http.client.request.duration",
            "http.client.active_requests",
            "http.client.open_connections",
            "tower_reuse.checkout.wait",
            "tower_reuse.connection.opened",
        ] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert_eq!(
            receiver.histogram_count("http.client.request.duration"),
            Some(REQUESTS as u64)
        );
        assert_eq!(
            receiver.sum("tower_reuse.connection.opened", None),
            Some(1.0)
        );
        // Collected at shutdown, with the client's one connection idle.
        let open = |state| {
            receiver.sum(
                "http.client.open_connections",
                Some(("http.connection.state", state)),
            )
        };
        assert_eq!((open("idle"), open("active")), (Some(1.0), Some(0.0)));
    }
}
