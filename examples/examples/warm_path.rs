//! The warm path, for an instruction counter: `N` sequential GETs from one
//! stack to a hyper server on the same thread (`127.0.0.1`, and with `K`
//! servers 127.0.0.2 and on), nothing else.
//! Client and server both count, as they would in any loopback benchmark;
//! the difference between two stacks is the client's.
//!
//! ```sh
//! cargo build --release -p tower-reuse-examples --example warm_path
//! for n in 2000 4000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/warm_path pool $n 2>&1 | grep Collected
//! done
//! ```
//!
//! Instructions per request are the difference of the two totals divided
//! by 2000 (the set-up cancels out). A third argument `K` sends the
//! requests round-robin to `K` servers (on 127.0.0.1, 127.0.0.2, ...), the
//! cost of switching targets (every stack but `raw` and `span`).
//! `scripts/warm-path.sh` runs every stack this way and writes the figures
//! to `target/warm-path.json`.
//!
//! Stacks: `raw` (one hyper connection, the request already in origin
//! form), `hyper-util` (hyper-util's legacy `Client` as `reuse-lab`'s
//! `hyper-util` stack builds it: its defaults and a pool timer, over the
//! same connector as `pool`), `pool` (a `Pool` with its
//! defaults), `span` (the pool, each request in one bare SDK span as
//! `reuse-lab`'s `reuse+span` stack records it, and nothing else), `otel`
//! (`OtelLayer` over the pool with `OtelPoolEvents`, the SDK with its
//! default sampler and a batch span processor dropping every batch),
//! `otel-unsampled` (the same, every span sampled out), `affinity`
//! (`AffinityLayer` over the pool: the requests go to a logical service,
//! `http://svc.warm:8080`, whose endpoints are the servers; keyed by their
//! `accept` header, so that they are byte for byte the other stacks'
//! requests and one key: with one server, the cost of routing and of
//! carrying the endpoint), `adaptive` (`AdaptiveLayer` over the pool,
//! the pool's events going to its controller: what the controller's
//! signals cost the request path), and over h2c (prior knowledge)
//! `hyper-util-h2` (the legacy `Client`, `http2_only`) and `pool-h2`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_reuse_adaptive::{AdaptiveConfig, AdaptiveLayer};
use tower_reuse_affinity::{AffinityConfig, AffinityKey, AffinityLayer};
use tower_reuse_examples::stacks::{BareSpan, DiscardMetrics, DiscardSpans};
use tower_reuse_otel::{OtelLayer, OtelPoolEvents};
use tower_reuse_pool::{PoolConfig, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Answers every request with `ok`.
async fn serve(listener: TcpListener) {
    while let Ok((socket, _)) = listener.accept().await {
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), answer)
                .await;
        });
    }
}

/// `n` GETs through `client`, round-robin over `uris`, each body read to
/// its end; each in a bare span when `bare` is given.
async fn run<S, B>(
    client: &mut S,
    uris: &[Uri],
    n: u64,
    bare: Option<&BareSpan>,
) -> Result<(), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    for uri in uris.iter().cycle().take(usize::try_from(n)?) {
        let request = Request::get(uri.clone())
            .header("accept", "*/*")
            .body(Full::default())?;
        let client = client.ready().await.map_err(Into::into)?;
        let mut span = bare.map(BareSpan::start);
        let response = client.call(request).await.map_err(Into::into);
        if let Some(span) = &mut span {
            BareSpan::end(span, response.as_ref().ok());
        }
        response?.into_body().collect().await.map_err(Into::into)?;
    }
    Ok(())
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// The SDK's tracer provider with `sampler`, batching spans to nowhere.
fn tracer_provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(DiscardSpans)
        .build()
}

async fn otel(uris: &[Uri], n: u64, sampler: Sampler) -> Result<(), BoxError> {
    let tracer_provider = tracer_provider(sampler);
    let reader = PeriodicReader::builder(DiscardMetrics)
        .with_interval(Duration::from_secs(24 * 60 * 60))
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .build()
        .meter("warm_path");
    let pool = PoolLayer::new(PoolConfig::default())?
        .events(OtelPoolEvents::new(&meter))
        .layer(connector());
    let mut client = OtelLayer::new(tracer_provider.tracer("warm_path"), &meter).layer(pool);
    run(&mut client, uris, n, None).await
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "pool".to_owned());
    let n: u64 = args.next().map_or(Ok(2000), |n| n.parse())?;
    let targets: u8 = args.next().map_or(Ok(1), |k| k.parse())?;
    if targets == 0 || (targets > 1 && matches!(stack.as_str(), "raw" | "span")) {
        return Err(format!("{stack} runs against 1 to 255 servers (raw and span: 1)").into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut uris = Vec::new();
        for k in 1..=targets {
            let listener = TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, k), 0)).await?;
            uris.push(format!("http://{}/x", listener.local_addr()?).parse::<Uri>()?);
            tokio::spawn(serve(listener));
        }
        let uri = &uris[0];
        match stack.as_str() {
            "raw" => {
                let addr = uri.authority().map_or("", |a| a.as_str()).to_owned();
                let socket = TcpStream::connect(&addr).await?;
                socket.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
                tokio::spawn(connection);
                let origin: Uri = "/x".parse()?;
                let host = addr;
                let mut sender = sender;
                for _ in 0..n {
                    let request = Request::get(origin.clone())
                        .header("accept", "*/*")
                        .header("host", &host)
                        .body(Full::<Bytes>::default())?;
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    response.into_body().collect().await?;
                }
                Ok(())
            }
            "hyper-util" => {
                let mut client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .build::<_, Full<Bytes>>(connector());
                run(&mut client, &uris, n, None).await
            }
            "pool" => {
                let mut client = PoolLayer::new(PoolConfig::default())?.layer(connector());
                run(&mut client, &uris, n, None).await
            }
            "hyper-util-h2" => {
                let mut client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .http2_only(true)
                    .build::<_, Full<Bytes>>(connector());
                run(&mut client, &uris, n, None).await
            }
            "pool-h2" => {
                let config = PoolConfig::default().http2_prior_knowledge(true);
                let mut client = PoolLayer::new(config)?.layer(connector());
                run(&mut client, &uris, n, None).await
            }
            "span" => {
                let tracer_provider =
                    tracer_provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
                let bare = BareSpan::new(tracer_provider.tracer("warm_path"), uri);
                let mut client = PoolLayer::new(PoolConfig::default())?.layer(connector());
                run(&mut client, &uris, n, Some(&bare)).await
            }
            "affinity" => {
                let layer = AffinityLayer::new(
                    AffinityConfig::default().key(AffinityKey::header("accept")),
                )?;
                let endpoints = uris.iter().map(|uri| {
                    uri.authority()
                        .map_or("", |a| a.as_str())
                        .parse::<std::net::SocketAddr>()
                });
                layer.endpoints().set(
                    "http://svc.warm:8080",
                    endpoints.collect::<Result<Vec<_>, _>>()?,
                )?;
                let pool = PoolLayer::new(PoolConfig::default())?.layer(connector());
                let mut client = layer.layer(pool);
                let service = ["http://svc.warm:8080/x".parse::<Uri>()?];
                run(&mut client, &service, n, None).await
            }
            "adaptive" => {
                let adaptive = AdaptiveLayer::new(AdaptiveConfig::default())?;
                let pool = PoolLayer::new(PoolConfig::default())?
                    .events(adaptive.pool_events())
                    .layer(connector());
                let mut client = adaptive.layer(pool);
                run(&mut client, &uris, n, None).await
            }
            "otel" => otel(&uris, n, Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).await,
            "otel-unsampled" => otel(&uris, n, Sampler::AlwaysOff).await,
            other => Err(format!(
                "no stack {other:?}: raw, hyper-util, pool, span, otel, otel-unsampled, affinity, adaptive"
            )
            .into()),
        }
    })
}
