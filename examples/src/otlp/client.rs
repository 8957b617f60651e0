//! The exporters' HTTP client: a tower-reuse pool on a runtime of its own.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::{HttpClient, HttpError};
use tokio::runtime::Runtime;
use tower_layer::Layer;
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer};
use tower_service::Service;

/// The future `HttpClient::send_bytes` returns (the trait is declared with
/// `async_trait`).
type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'a>>;

/// An [`HttpClient`] for `opentelemetry-otlp`'s HTTP exporters that sends
/// each export through a tower-reuse [`Pool`], so exports to a collector
/// reuse one keep-alive connection.
///
/// The pool runs on the client's own one-thread tokio runtime: the SDK's
/// batch span processor and periodic reader call the exporter on their own
/// threads with a minimal executor, and a provider's `shutdown` or
/// `force_flush` blocks its caller until the export is done, which on the
/// application's runtime could wait on itself. Each request is spawned onto
/// the client's runtime and awaited from wherever the SDK polls it.
///
/// Clones share the pool and the runtime; the runtime stops when the last
/// clone is dropped. Responses are returned whatever their status (the
/// exporter judges them); an export that takes longer than the timeout
/// fails. The SDK does not tell its caller when an export fails, so the
/// client counts them ([`failures`](Self::failures)).
#[derive(Clone)]
pub struct ExportClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<HttpConnector>,
    timeout: Duration,
    runtime: Option<Runtime>,
    outcomes: Outcomes,
}

/// What became of the requests sent.
#[derive(Debug, Default)]
struct Outcomes {
    sent: AtomicU64,
    failed: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl Outcomes {
    fn record(&self, result: &Result<Response<Bytes>, HttpError>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let failure = match result {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => format!("the collector answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(failure);
    }
}

impl ExportClient {
    /// A client whose every export (connect, request, response body) must
    /// finish within `timeout`; starts the runtime's thread.
    pub fn new(timeout: Duration) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let config = PoolConfig::default()
            .connect_timeout(Some(timeout))
            .checkout_timeout(Some(timeout));
        let pool = PoolLayer::new(config)
            .map_err(io::Error::other)?
            .layer(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                timeout,
                runtime: Some(runtime),
                outcomes: Outcomes::default(),
            }),
        })
    }

    /// The per-export timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The pool's control handle: its snapshot shows how many connections
    /// the exports opened and how often they were reused.
    pub fn control(&self) -> PoolControl {
        self.inner.pool.control()
    }

    /// Requests sent so far (the exporters' retries included).
    pub fn sent(&self) -> u64 {
        self.inner.outcomes.sent.load(Ordering::Relaxed)
    }

    /// Requests that failed (no response, or a status other than 2xx), and
    /// why the last one did.
    pub fn failures(&self) -> (u64, Option<String>) {
        let outcomes = &self.inner.outcomes;
        let last = outcomes
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (outcomes.failed.load(Ordering::Relaxed), last)
    }
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Possibly inside another runtime: never block here.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'a, 'b>(&'a self, request: Request<Bytes>) -> SendFuture<'b>
    where
        'a: 'b,
        Self: 'b,
    {
        let mut pool = self.inner.pool.clone();
        let timeout = self.inner.timeout;
        let client = self.inner.clone();
        let exchange = async move {
            std::future::poll_fn(|cx| pool.poll_ready(cx)).await?;
            let response = pool.call(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = match &self.inner.runtime {
            // The timer is made on the client's runtime: the caller may have none.
            Some(runtime) => {
                runtime.spawn(async move { tokio::time::timeout(timeout, exchange).await })
            }
            None => return Box::pin(async { Err("the export client has stopped".into()) }),
        };
        Box::pin(async move {
            let result = match task.await {
                Ok(Ok(exchanged)) => exchanged,
                Ok(Err(_elapsed)) => Err(format!("export timed out after {timeout:?}").into()),
                Err(join) => Err(format!("export task failed: {join}").into()),
            };
            client.outcomes.record(&result);
            result
        })
    }
}
