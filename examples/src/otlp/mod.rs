//! OTLP over HTTP (protobuf): exporters that send through a tower-reuse
//! pool, and a loopback receiver that decodes what arrives.
//!
//! - [`ExportClient`] is the exporters' HTTP client: an
//!   [`opentelemetry_http::HttpClient`] over a tower-reuse [`Pool`](tower_reuse_pool::Pool)
//!   driven by a runtime of its own, so it works under the SDK's default
//!   thread-based batch span processor and periodic reader (which call the
//!   exporter from their own threads, outside any tokio runtime) and never
//!   waits on the application's runtime.
//! - [`span_exporter`] and [`metric_exporter`] build `opentelemetry-otlp`'s
//!   exporters for an [`Endpoint`] over that client.
//! - [`Receiver`] is a small OTLP/HTTP collector on `127.0.0.1`: it accepts
//!   `POST /v1/traces` and `POST /v1/metrics`, decodes the payloads with
//!   `opentelemetry-proto` and keeps them for inspection.
//!
//! ```
//! use opentelemetry::trace::{Tracer as _, TracerProvider as _};
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tower_reuse_examples::otlp::{self, ExportClient, Receiver};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let receiver = Receiver::start()?;
//! let client = ExportClient::new(otlp::EXPORT_TIMEOUT)?;
//! let provider = SdkTracerProvider::builder()
//!     .with_batch_exporter(otlp::span_exporter(&receiver.endpoint(), &client)?)
//!     .build();
//! provider.tracer("demo").in_span("hello", |_| {});
//! provider.shutdown()?; // exports what is left, then stops
//! assert_eq!(receiver.spans()[0].name, "hello");
//! # Ok(()) }
//! ```

mod client;
mod receiver;

use std::fmt;
use std::time::Duration;

use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
};

pub use client::ExportClient;
pub use receiver::{Receiver, attribute};

/// How long one export may take: the OTLP exporters' default.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// An OTLP/HTTP collector's base URL, e.g. `http://127.0.0.1:4318`. The
/// signal paths (`/v1/traces`, `/v1/metrics`) are appended, as for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`. Plain `http` only: [`ExportClient`]
/// speaks no TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Without a trailing `/`.
    base: String,
}

impl Endpoint {
    /// Parses an absolute `http` URL with a host; a path, if any, is kept
    /// in front of the signal paths.
    pub fn parse(url: &str) -> Result<Self, OtlpError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| OtlpError(format!("invalid OTLP endpoint {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(OtlpError(format!(
                "unsupported OTLP endpoint {url:?}: expected an http:// URL (OTLP/HTTP without TLS)"
            )));
        }
        if uri.authority().is_none() {
            return Err(OtlpError(format!("OTLP endpoint {url:?} has no host")));
        }
        if uri.query().is_some() {
            return Err(OtlpError(format!(
                "OTLP endpoint {url:?} has a query string"
            )));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
        })
    }

    /// Where spans go: the base URL and `/v1/traces`.
    pub fn traces(&self) -> String {
        format!("{}/v1/traces", self.base)
    }

    /// Where metrics go: the base URL and `/v1/metrics`.
    pub fn metrics(&self) -> String {
        format!("{}/v1/metrics", self.base)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl std::str::FromStr for Endpoint {
    type Err = OtlpError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::parse(url)
    }
}

/// An endpoint, an exporter or the client's runtime could not be set up.
#[derive(Debug)]
pub struct OtlpError(String);

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OtlpError {}

/// An OTLP/HTTP protobuf span exporter sending to `endpoint` through `client`.
/// Hand it to `SdkTracerProvider::builder().with_batch_exporter(..)`.
pub fn span_exporter(
    endpoint: &Endpoint,
    client: &ExportClient,
) -> Result<SpanExporter, OtlpError> {
    http_export(
        SpanExporter::builder().with_http(),
        endpoint.traces(),
        client,
    )
    .build()
    .map_err(|e| OtlpError(format!("OTLP span exporter for {endpoint}: {e}")))
}

/// An OTLP/HTTP protobuf metric exporter (cumulative temporality) sending to
/// `endpoint` through `client`. Hand it to `PeriodicReader::builder(..)`.
pub fn metric_exporter(
    endpoint: &Endpoint,
    client: &ExportClient,
) -> Result<MetricExporter, OtlpError> {
    http_export(
        MetricExporter::builder().with_http(),
        endpoint.metrics(),
        client,
    )
    .build()
    .map_err(|e| OtlpError(format!("OTLP metric exporter for {endpoint}: {e}")))
}

/// The settings both exporters share: protobuf to `url` through `client`,
/// with the client's timeout.
fn http_export<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    url: String,
    client: &ExportClient,
) -> B {
    builder
        .with_http_client(client.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(client.timeout())
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn endpoint_appends_signal_paths_to_the_base_url() {
        let endpoint = Endpoint::parse("http://127.0.0.1:4318/").unwrap();
        assert_eq!(endpoint.traces(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(endpoint.metrics(), "http://127.0.0.1:4318/v1/metrics");
        let prefixed = Endpoint::parse("http://collector:4318/otlp").unwrap();
        assert_eq!(prefixed.traces(), "http://collector:4318/otlp/v1/traces");
    }

    #[test]
    fn endpoint_rejects_what_the_client_cannot_reach() {
        for url in [
            "https://collector:4318",
            "collector:4318",
            "/v1/traces",
            "http://h/?a=b",
            "not a url",
        ] {
            assert!(Endpoint::parse(url).is_err(), "{url} accepted");
        }
    }
}
