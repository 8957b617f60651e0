//! A complete client: the middleware applications already stack, from
//! tower-http, over the pool with TLS and OpenTelemetry.
//!
//! ```text
//! TimeoutLayer          a deadline on the whole exchange, redirects included
//!  FollowRedirectLayer  follows 3xx answers
//!   DecompressionLayer  asks for gzip, hands back the plain body
//!    OtelLayer          a client span per request sent (one per hop)
//!     PoolLayer         connections kept and reused (OtelPoolEvents as hook)
//!      TlsLayer         rustls, with the pool's session cache
//!       HttpConnector   TCP
//! ```
//!
//! Against a TLS server on `127.0.0.1` it fetches `/old`, which redirects
//! to `/new`, whose 4 KiB text the server gzips: the redirect is followed
//! on the connection that carried the first hop, and the body comes back
//! decompressed. Then `/slow`, which answers after 10 s, runs into the
//! 300 ms deadline: the HTTP/1.1 connection it was on still has a response
//! coming, so the pool closes it rather than hand it to the next request
//! (`CloseReason::Abandoned`), and the next request opens a new one.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example full_stack
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::util::MapResponse;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::{Decompression, DecompressionLayer};
use tower_http::follow_redirect::{FollowRedirect, FollowRedirectLayer};
use tower_http::timeout::{Timeout, TimeoutLayer};
use tower_layer::Layer as _;
use tower_reuse_examples::tls::{self, TlsIdentity};
use tower_reuse_otel::{Otel, OtelLayer, OtelPoolEvents};
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::tls::{TlsConnector, TlsLayer};
use tower_reuse_pool::{ConnectionInfo, Pool, PoolConfig, PoolControl, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client below the deadline, outermost layer first.
type Inner = FollowRedirect<Decompression<Otel<Pool<TlsConnector<HttpConnector>>, SdkTracer>>>;

/// The whole client: its response body boxed, because `TimeoutLayer`
/// answers a request past its deadline with a body of its own
/// (`Default`), which the pool's body, tied to a connection, has not.
type Client = Timeout<MapResponse<Inner, fn(Response<Body>) -> Response<Boxed>>>;

/// The body under the deadline: the pool's, decompressed.
type Body = tower_http::decompression::DecompressionBody<tower_reuse_pool::PoolBody>;

/// The body the client hands back.
type Boxed = BoxBody<Bytes, BoxError>;

/// The deadline on each exchange, redirects and all.
const DEADLINE: Duration = Duration::from_millis(300);

/// How long `/slow` takes: far past the deadline.
const SLOW: Duration = Duration::from_secs(10);

/// The text `/new` answers with (gzipped on the wire).
fn text() -> String {
    "a line of text the server compresses well\n".repeat(100)
}

/// Builds the client. `tls` is yours (roots, crypto provider); the pool
/// sees HTTP/1.1 here (ALPN `http/1.1`), the case where a request cut off
/// by a deadline costs its connection.
fn client(
    mut tls: rustls::ClientConfig,
    tracer: SdkTracer,
    meter: &opentelemetry::metrics::Meter,
) -> Result<(Client, PoolControl), BoxError> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    // Decompression and the boxing below replace the pool's body: the
    // connection facts ride in the responses' extensions too.
    let pool = PoolLayer::new(PoolConfig::default().connection_info_extension(true))?
        .events(OtelPoolEvents::new(meter))
        .layer(TlsLayer::new(Arc::new(tls)).layer(tcp));
    let control = pool.control();
    let client = ServiceBuilder::new()
        // A 504 answer instead of an error when the deadline passes.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            DEADLINE,
        ))
        .map_response(box_body as fn(Response<Body>) -> Response<Boxed>)
        .layer(FollowRedirectLayer::new())
        .layer(DecompressionLayer::new())
        // `url.full` on each hop's span: the paths are not secret here.
        .layer(OtelLayer::new(tracer, meter).record_url_full())
        .service(pool);
    Ok((client, control))
}

fn box_body(response: Response<Body>) -> Response<Boxed> {
    response.map(|body| body.map_err(BoxError::from).boxed())
}

/// What one request got back.
#[derive(Debug)]
struct Fetched {
    status: StatusCode,
    body: String,
    /// The connection that carried the last hop, if the pool answered.
    connection: Option<ConnectionInfo>,
}

async fn fetch(client: &Client, url: &str) -> Result<Fetched, BoxError> {
    let request = Request::get(url).body(Full::<Bytes>::default())?;
    let response = client.clone().oneshot(request).await?;
    let status = response.status();
    let connection = ConnectionInfo::of(&response).cloned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Fetched {
        status,
        body: String::from_utf8(body.to_vec())?,
        connection,
    })
}

/// Keeps each finished span's path and connection facts.
#[derive(Clone, Debug, Default)]
struct KeepSpans(Arc<Mutex<Vec<Vec<KeyValue>>>>);

impl SpanExporter for KeepSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend(batch.into_iter().map(|span| span.attributes));
        Ok(())
    }
}

fn attribute(span: &[KeyValue], key: &str) -> Option<String> {
    span.iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// What the server saw.
#[derive(Debug, Default)]
struct ServerCounts {
    accepted: AtomicU64,
    gzipped: AtomicU64,
}

/// The TLS server: `/old` redirects to `/new`, `/new` answers [`text`]
/// (gzipped by tower-http's `CompressionLayer` when asked), `/slow`
/// answers after [`SLOW`].
async fn serve(identity: &TlsIdentity) -> Result<(SocketAddr, Arc<ServerCounts>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let counts = Arc::new(ServerCounts::default());
    let app = ServiceBuilder::new()
        .layer(CompressionLayer::new())
        .service_fn(answer);
    let server_counts = counts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            server_counts.accepted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, app, counts) = (acceptor.clone(), app.clone(), server_counts.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (app, counts) = (app.clone(), counts.clone());
                    async move {
                        let response = app.oneshot(request).await?;
                        if response.headers().get(CONTENT_ENCODING)
                            == Some(&HeaderValue::from_static("gzip"))
                        {
                            counts.gzipped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((addr, counts))
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::default());
    match request.uri().path() {
        "/old" => {
            *response.status_mut() = StatusCode::FOUND;
            let headers = response.headers_mut();
            headers.insert(LOCATION, HeaderValue::from_static("/new"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
        }
        "/new" => {
            *response.body_mut() = Full::new(Bytes::from(text()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        "/slow" => tokio::time::sleep(SLOW).await,
        _ => *response.status_mut() = StatusCode::NOT_FOUND,
    }
    Ok(response)
}

/// What a run saw.
#[derive(Debug)]
struct Outcome {
    redirected: Fetched,
    timed_out: Fetched,
    after: Fetched,
    /// The client spans, one per hop: (path, connection id, reused).
    hops: Vec<(String, Option<String>, Option<String>)>,
    /// Connections the server accepted.
    accepted: u64,
    /// Responses the server sent gzipped.
    gzipped: u64,
    /// Connections the pool closed because a request gave up on them.
    abandoned: u64,
}

async fn run() -> Result<Outcome, BoxError> {
    let identity = TlsIdentity::generate()?;
    let (addr, counts) = serve(&identity).await?;
    let spans = KeepSpans::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let meter = SdkMeterProvider::builder().build().meter("full_stack");
    let tls = tls::client_config(identity.root_store())?;
    let (client, control) = client(tls, tracer_provider.tracer("full_stack"), &meter)?;

    let base = format!("https://localhost:{}", addr.port());
    let redirected = fetch(&client, &format!("{base}/old")).await?;
    let timed_out = fetch(&client, &format!("{base}/slow")).await?;
    // The cut-off request's connection goes as the deadline passes; give
    // its task a moment to report the close.
    for _ in 0..100 {
        if control
            .snapshot()
            .total(|t| t.closed(CloseReason::Abandoned))
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = fetch(&client, &format!("{base}/new")).await?;

    let hops = std::mem::take(&mut *spans.0.lock().unwrap_or_else(PoisonError::into_inner))
        .iter()
        .map(|span| {
            (
                attribute(span, "url.full")
                    .and_then(|url| url.parse::<http::Uri>().ok())
                    .map(|url| url.path().to_owned())
                    .unwrap_or_default(),
                attribute(span, "tower_reuse.connection.id"),
                attribute(span, "tower_reuse.connection.reused"),
            )
        })
        .collect();
    Ok(Outcome {
        redirected,
        timed_out,
        after,
        hops,
        accepted: counts.accepted.load(Ordering::Relaxed),
        gzipped: counts.gzipped.load(Ordering::Relaxed),
        abandoned: control
            .snapshot()
            .total(|t| t.closed(CloseReason::Abandoned)),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let outcome = run().await?;
    let connection = |f: &Fetched| f.connection.as_ref().map(|c| (c.id().get(), c.reused()));
    println!(
        "GET /old -> {} after the redirect, {} bytes decompressed ({} responses gzipped on the wire), last hop on connection {:?} (id, reused)",
        outcome.redirected.status,
        outcome.redirected.body.len(),
        outcome.gzipped,
        connection(&outcome.redirected)
    );
    for (path, id, reused) in &outcome.hops {
        println!("  span {path}: connection {id:?}, reused {reused:?}");
    }
    println!(
        "GET /slow -> {} at the {DEADLINE:?} deadline; connections the pool closed as abandoned: {}",
        outcome.timed_out.status, outcome.abandoned
    );
    println!(
        "GET /new -> {} on connection {:?}; the server accepted {} connections in all",
        outcome.after.status,
        connection(&outcome.after),
        outcome.accepted
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redirect_gzip_and_deadline_over_the_pool_with_tls() {
        let outcome = run().await.unwrap();

        // The redirect was followed on the first hop's connection, and the
        // gzipped body came back as the server's text.
        assert_eq!(outcome.redirected.status, StatusCode::OK);
        assert_eq!(outcome.redirected.body, text());
        assert!(outcome.gzipped >= 1, "the server never gzipped");
        let last_hop = outcome.redirected.connection.as_ref().expect("pool facts");
        assert!(last_hop.reused(), "{last_hop:?}");
        let first = outcome.hops.first().expect("a span per hop");
        assert_eq!(first.0, "/old");
        assert_eq!(first.2.as_deref(), Some("false"));
        assert_eq!(first.1, Some(last_hop.id().get().to_string()));
        assert_eq!(outcome.hops[1].0, "/new");
        assert_eq!(outcome.hops[1].2.as_deref(), Some("true"));

        // The deadline answered for the slow request; the pool closed the
        // connection it was on instead of reusing it with a response
        // still coming.
        assert_eq!(outcome.timed_out.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(outcome.abandoned, 1);
        let after = outcome.after.connection.as_ref().expect("pool facts");
        assert_eq!(outcome.after.status, StatusCode::OK);
        assert_eq!(outcome.after.body, text());
        assert!(!after.reused(), "{after:?}");
        assert_ne!(after.id(), last_hop.id());
        assert_eq!(outcome.accepted, 2);
    }
}
