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
//! The server is hyper-util's auto server (HTTP/1.1 and h2c, a 2-byte
//! body). The clients share a single-threaded tokio runtime on the bench
//! thread. Both groups run twice:
//!
//! - as named: the server on its own single-threaded runtime and thread, two
//!   threads for a two-core machine. A sequential request then pays two
//!   cross-thread wake-ups, which on a VM with idle vCPUs can cost far more
//!   than the stacks themselves (and vary with the machine's other load);
//! - `*_one_thread`: the server as a task on the clients' runtime. Nothing
//!   sleeps during a request, so the figure is the CPU cost of client plus
//!   server, and differences between stacks are their own per-request cost.
//!
//! Run with `cargo bench -p tower-reuse-pool --bench checkout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
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
const WARM_UP_REQUESTS: u64 = 256;

type ReqBody = Full<Bytes>;

/// The pre-parsed parts every stack builds its requests from.
#[derive(Clone)]
struct Template {
    addr: SocketAddr,
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
            addr,
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

/// Accept connections on `listener` and serve each with hyper-util's auto
/// server (HTTP/1.1 and h2c), answering every request with `ok`.
async fn serve(listener: TcpListener) {
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
                serve(listener).await;
            });
        })
        .expect("spawn server thread");
    rx.recv().expect("server address")
}

/// Start the server as a task on the calling runtime; returns its address.
async fn local_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(serve(listener));
    addr
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

type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Warm `stack` up, then measure one request at a time through it.
fn measure_sequential<S: Stack>(
    group: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    stack: &mut S,
    template: &Template,
) {
    rt.block_on(sequential(stack, template, WARM_UP_REQUESTS));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(sequential(stack, template, iters)))
    });
}

/// Warm `handles` up, then measure rounds of one request per handle.
fn measure_concurrent<S: Stack>(
    group: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    handles: &mut Vec<S>,
    template: &Template,
) {
    let rounds = WARM_UP_REQUESTS / handles.len() as u64;
    rt.block_on(concurrent(handles, template, rounds));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| rt.block_on(concurrent(handles, template, iters)))
    });
}

fn bench_sequential(c: &mut Criterion, rt: &Runtime, template: &Template, topology: &str) {
    let addr = template.addr;
    let mut group = c.benchmark_group(format!("sequential{topology}"));
    group.throughput(Throughput::Elements(1));
    let t = template;
    measure_sequential(&mut group, rt, "pool_h1", &mut pool(false), t);
    measure_sequential(&mut group, rt, "pool_h2c", &mut pool(true), t);
    let mut raw = rt.block_on(raw_h1(addr));
    measure_sequential(&mut group, rt, "raw_h1", &mut raw, t);
    let mut raw = rt.block_on(raw_h2c(addr));
    measure_sequential(&mut group, rt, "raw_h2c", &mut raw, t);
    measure_sequential(&mut group, rt, "legacy_h1", &mut legacy(false), t);
    measure_sequential(&mut group, rt, "legacy_h2c", &mut legacy(true), t);
    group.finish();
}

fn bench_concurrent(c: &mut Criterion, rt: &Runtime, template: &Template, topology: &str) {
    let addr = template.addr;
    let mut group = c.benchmark_group(format!("concurrent_{CONCURRENCY}{topology}"));
    group.throughput(Throughput::Elements(CONCURRENCY as u64));
    let t = template;
    // Clones share one pool (or one legacy client); each task holds its own
    // handle, as each raw task holds its own connection.
    let mut pools = vec![pool(false); CONCURRENCY];
    measure_concurrent(&mut group, rt, "pool_h1", &mut pools, t);
    let mut pools = vec![pool(true); CONCURRENCY];
    measure_concurrent(&mut group, rt, "pool_h2c", &mut pools, t);
    let mut raws = rt.block_on(async {
        let mut raws = Vec::with_capacity(CONCURRENCY);
        for _ in 0..CONCURRENCY {
            raws.push(raw_h1(addr).await);
        }
        raws
    });
    measure_concurrent(&mut group, rt, "raw_h1", &mut raws, t);
    let mut legacies = vec![legacy(false); CONCURRENCY];
    measure_concurrent(&mut group, rt, "legacy_h1", &mut legacies, t);
    group.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    // Server on its own thread: every sequential request pays two
    // cross-thread wake-ups.
    let template = Template::new(start_server());
    bench_sequential(&mut c, &rt, &template, "");
    bench_concurrent(&mut c, &rt, &template, "");
    // Server on the client's runtime: nothing sleeps during a request, so
    // the figures are CPU cost (client plus server), free of wake-up latency.
    let template = Template::new(rt.block_on(local_server()));
    bench_sequential(&mut c, &rt, &template, "_one_thread");
    bench_concurrent(&mut c, &rt, &template, "_one_thread");
    c.final_summary();
}
