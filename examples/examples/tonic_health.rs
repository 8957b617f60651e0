//! A gRPC client over the tower-reuse stack: tonic-health's `HealthClient`
//! whose transport is a tower-reuse `Pool` speaking HTTP/2 by prior
//! knowledge (h2c), against tonic's own health service on `127.0.0.1`.
//! The checks share one pooled connection; the pool's `ConnectionInfo`
//! rides along in each tonic response's extensions (tonic decodes the
//! body away, so the pool puts it there too:
//! `PoolConfig::connection_info_extension`), and `OtelLayer`
//! (tower-reuse-otel) on top of the pool records a client span per call
//! with the connection's facts.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example tonic_health
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as CheckedStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_layer::Layer;
use tower_reuse_otel::{Otel, OtelLayer, OtelPoolEvents};
use tower_reuse_pool::{ConnectionInfo, Pool, PoolConfig, PoolControl, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service whose status the example toggles (the empty name is the
/// whole server).
const SERVICE: &str = "tower_reuse.Demo";

/// The pool under tonic: hyper-util's TCP connector, tonic's request body
/// as it is. The pool is the whole transport.
type GrpcPool = Pool<HttpConnector, tonic::body::Body>;

/// tonic's transport: the pool with a client span per call on top.
type Transport = Otel<GrpcPool, SdkTracer>;

/// The pool speaking h2c (gRPC needs HTTP/2; over plain TCP there is no
/// ALPN, so prior knowledge) over a TCP connector, with the pool's
/// OpenTelemetry hook.
fn pool(hook: OtelPoolEvents) -> Result<GrpcPool, BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // tonic keeps the response's extensions, not its body.
    let config = PoolConfig::default()
        .http2_prior_knowledge(true)
        .connection_info_extension(true);
    Ok(PoolLayer::new(config)?.events(hook).layer(connector))
}

/// Keeps each finished span's name and attributes (an application would
/// export them; see the `otlp_export` example).
#[derive(Clone, Debug, Default)]
struct KeepSpans(Arc<Mutex<Vec<Span>>>);

/// A finished span, as kept.
#[derive(Debug)]
struct Span {
    name: String,
    attributes: Vec<KeyValue>,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }
}

impl SpanExporter for KeepSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend(batch.into_iter().map(|span| Span {
            name: span.name.into_owned(),
            attributes: span.attributes,
        }));
        Ok(())
    }
}

/// One `Check` call: the status the server gave and the pooled connection
/// that carried it.
#[derive(Debug)]
struct Checked {
    service: &'static str,
    status: CheckedStatus,
    connection: u64,
    reused: bool,
}

/// What a run saw.
#[derive(Debug)]
struct Outcome {
    checks: Vec<Checked>,
    /// The gRPC code for a service the server does not know.
    unknown: tonic::Code,
    /// Connections the pool opened for all of it.
    opened: u64,
    /// The client spans `OtelLayer` recorded, in order.
    spans: Vec<Span>,
}

/// Starts tonic's health service on `127.0.0.1`, checks the server and
/// [`SERVICE`], marks [`SERVICE`] not serving and checks it again, then
/// asks about a service the server does not know.
async fn run() -> Result<Outcome, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin: Uri = format!("http://{}", listener.local_addr()?).parse()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let server = tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let spans = KeepSpans::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let meter = SdkMeterProvider::builder().build().meter("tonic_health");
    let pool = pool(OtelPoolEvents::new(&meter))?;
    let control: PoolControl = pool.control();
    let transport = OtelLayer::new(tracer_provider.tracer("tonic_health"), &meter).layer(pool);
    // tonic sends origin-form URIs: the origin says where the pool connects.
    let mut client = HealthClient::with_origin(transport, origin);
    let mut checks = Vec::new();
    for service in ["", SERVICE] {
        checks.push(check(&mut client, service).await?);
    }
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    checks.push(check(&mut client, SERVICE).await?);
    let unknown = match client.check(request("tower_reuse.Unknown")).await {
        Ok(response) => return Err(format!("an unknown service checked: {response:?}").into()),
        Err(status) => status.code(),
    };
    server.abort();
    let spans = std::mem::take(&mut *spans.0.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Outcome {
        checks,
        unknown,
        opened: control.snapshot().total(|target| target.opened()),
        spans,
    })
}

async fn check(
    client: &mut HealthClient<Transport>,
    service: &'static str,
) -> Result<Checked, BoxError> {
    let response = client.check(request(service)).await?;
    let info = response
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .ok_or("no ConnectionInfo in the response")?;
    let answer: &HealthCheckResponse = response.get_ref();
    Ok(Checked {
        service,
        status: answer.status(),
        connection: info.id().get(),
        reused: info.reused(),
    })
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let outcome = run().await?;
    for checked in &outcome.checks {
        println!(
            "Check({:?}) = {} on connection {} (reused: {})",
            checked.service,
            checked.status.as_str_name(),
            checked.connection,
            checked.reused
        );
    }
    println!("Check(unknown service) = {:?}", outcome.unknown);
    println!("connections opened by the pool: {}", outcome.opened);
    for span in &outcome.spans {
        println!(
            "span {} on connection {:?} (reused: {:?})",
            span.name,
            span.attribute("tower_reuse.connection.id"),
            span.attribute("tower_reuse.connection.reused")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_origin_the_error_says_to_set_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let meter = SdkMeterProvider::builder().build().meter("tonic_health");
        let pool = pool(OtelPoolEvents::new(&meter)).unwrap();

        // tonic's calls are origin-form URIs: nowhere to connect.
        let mut client = HealthClient::new(pool.clone());
        let status = client.check(request("")).await.unwrap_err();
        let message = status.message();
        assert!(message.contains("no authority"), "{status:?}");
        assert!(message.contains("with_origin"), "{status:?}");
        assert!(pool.control().snapshot().targets.is_empty());

        // As the error says: the same pool, given the origin.
        let mut client = HealthClient::with_origin(pool.clone(), origin);
        let answer = client.check(request("")).await.unwrap();
        assert_eq!(answer.get_ref().status(), CheckedStatus::Serving);
        server.abort();
    }

    #[tokio::test]
    async fn health_checks_share_one_h2c_connection_through_the_pool() {
        let outcome = run().await.unwrap();
        let statuses: Vec<_> = outcome
            .checks
            .iter()
            .map(|c| (c.service, c.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("", CheckedStatus::Serving),
                (SERVICE, CheckedStatus::Serving),
                (SERVICE, CheckedStatus::NotServing),
            ]
        );
        assert_eq!(outcome.unknown, tonic::Code::NotFound);
        // One connection carried every call: the first opened it, the rest
        // reused it.
        assert_eq!(outcome.opened, 1);
        let first = outcome.checks[0].connection;
        assert!(outcome.checks.iter().all(|c| c.connection == first));
        let reused: Vec<_> = outcome.checks.iter().map(|c| c.reused).collect();
        assert_eq!(reused, [false, true, true]);
        // A client span per call, the unknown service's too (a gRPC error
        // is an HTTP 200), with the connection facts.
        assert_eq!(outcome.spans.len(), 4, "{:?}", outcome.spans);
        let reused: Vec<_> = outcome
            .spans
            .iter()
            .map(|span| span.attribute("tower_reuse.connection.reused"))
            .collect();
        assert_eq!(
            reused,
            ["false", "true", "true", "true"].map(|r| Some(r.to_owned()))
        );
        for span in &outcome.spans {
            assert_eq!(span.name, "POST");
            assert_eq!(
                span.attribute("network.protocol.version").as_deref(),
                Some("2")
            );
            assert_eq!(
                span.attribute("http.response.status_code").as_deref(),
                Some("200")
            );
            assert_eq!(
                span.attribute("tower_reuse.connection.id"),
                Some(first.to_string())
            );
        }
    }
}
