//! The pool's warm path against a real hyper server on loopback.
//!
//! One request-response (a GET with a pre-parsed `Uri` and one fixed header,
//! the whole body read) through:
//!
//! - `pool_h1`, `pool_h2c`: [`Pool`] over HTTP/1.1 and over h2c (prior
//!   knowledge);
//! - `raw_h1`, `raw_h2c`: hyper's `client::conn` `SendRequest` on
//!   pre-established connections, the limit any pool can reach;
//! - `legacy_h1`, `legacy_h2c`: hyper-util's legacy `Client` (defaults, a
//!   `TokioTimer` pool timer, `HttpConnector` with `TCP_NODELAY`;
//!   `http2_only` for h2c).
//!
//! Group `sequential` keeps one request in flight; group `concurrent_32`
//! runs 32 requests at once per iteration (one task each, joined with a
//! `JoinSet`; `raw_h1` gets 32 connections) and reports time per request
//! through its throughput. Every stack is driven the same way, so the
//! differences are the stacks' own per-request costs.
//!
//! The server (hyper-util's auto server, HTTP/1.1 and h2c, a 2-byte body)
//! runs on its own single-threaded tokio runtime and thread; the clients
//! share another single-threaded runtime on the bench thread: two threads
//! for a two-core machine.
//!
//! Run with `cargo bench -p tower-reuse-pool --bench checkout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::header::{ACCEPT, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};

/// Requests in flight per iteration in the `concurrent_32` group.
const CONCURRENCY: usize = 32;
/// Requests sent through every stack before criterion's own warm-up.
const WARM_UP_REQUESTS: usize = 200;

type ReqBody = Full<Bytes>;

/// The pre-parsed parts every stack builds its requests from.
#[derive(Clone)]
struct Template {
    /// Absolute form, for the pool and the legacy client.
    absolute: Uri,
    /// Origin form and a `Host` header, for raw HTTP/1.1 connections (what
    /// the pool and the legacy client do to an absolute URI themselves).
    origin: Uri,
    host: HeaderValue,
    accept: HeaderValue,
}

impl Template {
    fn new(addr: SocketAddr) -> Self {
        Template {
            absolute: format!("http://{addr}/").parse().expect("valid uri"),
            origin: Uri::from_static("/"),
            host: HeaderValue::from_str(&addr.to_string()).expect("valid host"),
            accept: HeaderValue::from_static("text/plain"),
        }
    }

    fn absolute(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::default());
        *req.uri_mut() = self.absolute.clone();
        req.headers_mut().insert(ACCEPT, self.accept.clone());
        req
    }

    fn origin(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::default());
        *req.uri_mut() = self.origin.clone();
        req.headers_mut().insert(HOST, self.host.clone());
        req.headers_mut().insert(ACCEPT, self.accept.clone());
        req
    }
}

/// Check the status and read the whole body.
async fn drain<B>(response: Response<B>)
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    assert!(response.status().is_success(), "{}", response.status());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body.len(), 2);
}

/// One exchange through a stack; each handle is used by one task at a time.
trait Stack: Send + 'static {
    fn exchange(&mut self, template: &Template) -> impl Future<Output = ()> + Send;
}

type PoolClient = Pool<HttpConnector, ReqBody>;

impl Stack for PoolClient {
    async fn exchange(&mut self, template: &Template) {
        let req = template.absolute();
        let response = self
            .ready()
            .await
            .expect("pool ready")
            .call(req)
            .await
            .expect("pool response");
        drain(response).await;
    }
}

impl Stack for http1::SendRequest<ReqBody> {
    async fn exchange(&mut self, template: &Template) {
        let req = template.origin();
        self.ready().await.expect("raw h1 ready");
        let response = self.send_request(req).await.expect("raw h1 response");
        drain(response).await;
    }
}

impl Stack for http2::SendRequest<ReqBody> {
    async fn exchange(&mut self, template: &Template) {
        let req = template.absolute();
        self.ready().await.expect("raw h2 ready");
        let response = self.send_request(req).await.expect("raw h2 response");
        drain(response).await;
    }
}

type LegacyClient = Client<HttpConnector, ReqBody>;

impl Stack for LegacyClient {
    async fn exchange(&mut self, template: &Template) {
        let req = template.absolute();
        let response = self.request(req).await.expect("legacy response");
        drain(response).await;
    }
}

/// Start the server on its own thread and runtime; returns its address.
fn start_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("local addr"))
                    .expect("report address");
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                loop {
                    let (stream, _) = listener.accept().await.expect("accept");
                    stream.set_nodelay(true).expect("nodelay");
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        });
                        // Connections end when the bench process exits.
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .expect("spawn server thread");
    rx.recv().expect("server address")
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

fn pool(http2: bool) -> PoolClient {
    let config = PoolConfig::default().http2_prior_knowledge(http2);
    PoolLayer::new(config)
        .expect("valid config")
        .layer(connector())
}

fn legacy(http2: bool) -> LegacyClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .http2_only(http2)
        .build(connector())
}

async fn raw_h1(addr: SocketAddr) -> http1::SendRequest<ReqBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    tx
}

async fn raw_h2c(addr: SocketAddr) -> http2::SendRequest<ReqBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    tx
}

/// `iters` sequential exchanges through `stack`.
async fn sequential<S: Stack>(stack: &mut S, template: &Template, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        stack.exchange(template).await;
    }
    start.elapsed()
}

/// One round: every handle makes one exchange on its own task, all at once.
async fn round<S: Stack>(handles: &mut Vec<S>, set: &mut JoinSet<S>, template: &Template) {
    for mut handle in handles.drain(..) {
        let template = template.clone();
        set.spawn(async move {
            handle.exchange(&template).await;
            handle
        });
    }
    while let Some(handle) = set.join_next().await {
        handles.push(handle.expect("exchange task"));
    }
}

/// `iters` rounds of `handles.len()` concurrent exchanges.
async fn concurrent<S: Stack>(handles: &mut Vec<S>, template: &Template, iters: u64) -> Duration {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for _ in 0..iters {
        round(handles, &mut set, template).await;
    }
    start.elapsed()
}

fn bench_sequential(c: &mut Criterion, rt: &Runtime, template: &Template, addr: SocketAddr) {
    let mut group = c.benchmark_group("sequential");
    group.throughput(Throughput::Elements(1));

    let mut run = |name: &str, stack: &mut dyn FnMut(u64) -> Duration| {
        group.bench_function(name, |b| b.iter_custom(&mut *stack));
    };

    let mut pool_h1 = pool(false);
    rt.block_on(sequential(&mut pool_h1, template, WARM_UP_REQUESTS as u64));
    run("pool_h1", &mut |iters| {
        rt.block_on(sequential(&mut pool_h1, template, iters))
    });

    let mut pool_h2c = pool(true);
    rt.block_on(sequential(&mut pool_h2c, template, WARM_UP_REQUESTS as u64));
    run("pool_h2c", &mut |iters| {
        rt.block_on(sequential(&mut pool_h2c, template, iters))
    });

    let mut raw_h1 = rt.block_on(raw_h1(addr));
    rt.block_on(sequential(&mut raw_h1, template, WARM_UP_REQUESTS as u64));
    run("raw_h1", &mut |iters| {
        rt.block_on(sequential(&mut raw_h1, template, iters))
    });

    let mut raw_h2c = rt.block_on(raw_h2c(addr));
    rt.block_on(sequential(&mut raw_h2c, template, WARM_UP_REQUESTS as u64));
    run("raw_h2c", &mut |iters| {
        rt.block_on(sequential(&mut raw_h2c, template, iters))
    });

    let mut legacy_h1 = legacy(false);
    rt.block_on(sequential(
        &mut legacy_h1,
        template,
        WARM_UP_REQUESTS as u64,
    ));
    run("legacy_h1", &mut |iters| {
        rt.block_on(sequential(&mut legacy_h1, template, iters))
    });

    let mut legacy_h2c = legacy(true);
    rt.block_on(sequential(
        &mut legacy_h2c,
        template,
        WARM_UP_REQUESTS as u64,
    ));
    run("legacy_h2c", &mut |iters| {
        rt.block_on(sequential(&mut legacy_h2c, template, iters))
    });

    group.finish();
}

fn bench_concurrent(c: &mut Criterion, rt: &Runtime, template: &Template, addr: SocketAddr) {
    let mut group = c.benchmark_group(format!("concurrent_{CONCURRENCY}"));
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    let warm_rounds = (WARM_UP_REQUESTS / CONCURRENCY) as u64;

    let mut run = |name: &str, stack: &mut dyn FnMut(u64) -> Duration| {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(&mut *stack)
        });
    };

    // Clones share one pool; each task holds its own clone, as the raw
    // stack holds its own connection.
    let mut pools = vec![pool(false); CONCURRENCY];
    rt.block_on(concurrent(&mut pools, template, warm_rounds));
    run("pool_h1", &mut |iters| {
        rt.block_on(concurrent(&mut pools, template, iters))
    });

    let mut pools = vec![pool(true); CONCURRENCY];
    rt.block_on(concurrent(&mut pools, template, warm_rounds));
    run("pool_h2c", &mut |iters| {
        rt.block_on(concurrent(&mut pools, template, iters))
    });

    let mut raws = rt.block_on(async {
        let mut raws = Vec::with_capacity(CONCURRENCY);
        for _ in 0..CONCURRENCY {
            raws.push(raw_h1(addr).await);
        }
        raws
    });
    rt.block_on(concurrent(&mut raws, template, warm_rounds));
    run("raw_h1", &mut |iters| {
        rt.block_on(concurrent(&mut raws, template, iters))
    });

    let mut legacies = vec![legacy(false); CONCURRENCY];
    rt.block_on(concurrent(&mut legacies, template, warm_rounds));
    run("legacy_h1", &mut |iters| {
        rt.block_on(concurrent(&mut legacies, template, iters))
    });

    group.finish();
}

fn main() {
    let addr = start_server();
    let template = Template::new(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    bench_sequential(&mut c, &rt, &template, addr);
    bench_concurrent(&mut c, &rt, &template, addr);
    c.final_summary();
}
