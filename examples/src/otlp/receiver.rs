//! A loopback OTLP/HTTP receiver that decodes and keeps what it is sent.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{Metric, NumberDataPoint, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use super::Endpoint;

/// A small OTLP/HTTP collector on `127.0.0.1` (HTTP/1.1, protobuf): `POST
/// /v1/traces` and `POST /v1/metrics` are decoded with `opentelemetry-proto`
/// and kept, then answered `200` with an empty export response; a payload
/// that does not decode gets `400`, any other request `404`.
///
/// A payload is kept before it is answered, so once an exporter's export
/// (or a provider's `force_flush` or `shutdown`) has returned, what it sent
/// is here. The receiver runs on a one-thread runtime of its own (a
/// provider's blocking `shutdown` on the caller's runtime cannot stall it)
/// and stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Received>,
    runtime: Option<Runtime>,
}

#[derive(Debug, Default)]
struct Received {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    connections: AtomicU64,
    rejected: AtomicU64,
}

impl Receiver {
    /// Binds `127.0.0.1` on a free port and starts serving. May be called
    /// from inside or outside a tokio runtime.
    pub fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _enter = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let received = Arc::new(Received::default());
        runtime.spawn(accept_loop(listener, received.clone()));
        Ok(Self {
            addr,
            received,
            runtime: Some(runtime),
        })
    }

    /// The receiver's base URL, for the exporters.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            base: format!("http://{}", self.addr),
        }
    }

    /// Every trace export received, in arrival order.
    pub fn trace_exports(&self) -> Vec<ExportTraceServiceRequest> {
        lock(&self.received.traces).clone()
    }

    /// Every metric export received, in arrival order.
    pub fn metric_exports(&self) -> Vec<ExportMetricsServiceRequest> {
        lock(&self.received.metrics).clone()
    }

    /// Every span received, across exports, resources and scopes.
    pub fn spans(&self) -> Vec<Span> {
        lock(&self.received.traces)
            .iter()
            .flat_map(|export| &export.resource_spans)
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| scope.spans.iter().cloned())
            .collect()
    }

    /// The names of every metric received.
    pub fn metric_names(&self) -> BTreeSet<String> {
        lock(&self.received.metrics)
            .iter()
            .flat_map(metrics_of)
            .map(|metric| metric.name.clone())
            .collect()
    }

    /// Metric `name` as last exported (with cumulative temporality, the
    /// run's totals), if it arrived.
    pub fn latest_metric(&self, name: &str) -> Option<Metric> {
        lock(&self.received.metrics)
            .iter()
            .rev()
            .find_map(|export| metrics_of(export).find(|m| m.name == name).cloned())
    }

    /// How many measurements histogram `name` holds, as last exported.
    pub fn histogram_count(&self, name: &str) -> Option<u64> {
        match self.latest_metric(name)?.data? {
            Data::Histogram(histogram) => Some(histogram.data_points.iter().map(|p| p.count).sum()),
            _ => None,
        }
    }

    /// The total of counter or up-down counter `name`, as last exported,
    /// over its data points whose attribute `key` is the string `value`
    /// (over all of them for `None`).
    pub fn sum(&self, name: &str, with: Option<(&str, &str)>) -> Option<f64> {
        let Data::Sum(sum) = self.latest_metric(name)?.data? else {
            return None;
        };
        let matches = |point: &NumberDataPoint| {
            with.is_none_or(|(key, value)| {
                matches!(attribute(&point.attributes, key), Some(Value::StringValue(v)) if v == value)
            })
        };
        let total = sum
            .data_points
            .iter()
            .filter(|point| matches(point))
            .map(|point| match point.value {
                Some(number_data_point::Value::AsInt(n)) => n as f64,
                Some(number_data_point::Value::AsDouble(x)) => x,
                None => 0.0,
            })
            .sum();
        Some(total)
    }

    /// The value of the `service.name` resource attribute of the first
    /// trace export, if any.
    pub fn service_name(&self) -> Option<String> {
        let traces = lock(&self.received.traces);
        let resource = traces.first()?.resource_spans.first()?.resource.as_ref()?;
        match attribute(&resource.attributes, "service.name")? {
            Value::StringValue(name) => Some(name.clone()),
            _ => None,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.received.connections.load(Ordering::Relaxed)
    }

    /// Requests answered with an error status (not OTLP, or undecodable).
    pub fn rejected(&self) -> u64 {
        self.received.rejected.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The value of attribute `key` among `attributes` (a span's, a data
/// point's or a resource's), if set.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn metrics_of(export: &ExportMetricsServiceRequest) -> impl Iterator<Item = &Metric> {
    export
        .resource_metrics
        .iter()
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, received: Arc<Received>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or a reset before accept: back off briefly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        received.connections.fetch_add(1, Ordering::Relaxed);
        let received = received.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, received.clone()));
            // A connection error ends that connection only.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    received: Arc<Received>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_post = request.method() == Method::POST;
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(reject(&received, StatusCode::BAD_REQUEST)),
    };
    let answer = match (is_post, path.as_str()) {
        (true, "/v1/traces") => ExportTraceServiceRequest::decode(body).map(|export| {
            lock(&received.traces).push(export);
            ExportTraceServiceResponse::default().encode_to_vec()
        }),
        (true, "/v1/metrics") => ExportMetricsServiceRequest::decode(body).map(|export| {
            lock(&received.metrics).push(export);
            ExportMetricsServiceResponse::default().encode_to_vec()
        }),
        _ => return Ok(reject(&received, StatusCode::NOT_FOUND)),
    };
    Ok(match answer {
        Ok(encoded) => Response::builder()
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(encoded)))
            .unwrap_or_default(),
        Err(_) => reject(&received, StatusCode::BAD_REQUEST),
    })
}

fn reject(received: &Received, status: StatusCode) -> Response<Full<Bytes>> {
    received.rejected.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}
