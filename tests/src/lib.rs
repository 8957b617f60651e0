//! Support for the tower-reuse integration tests: real hyper servers on
//! loopback whose behaviour each test sets (plain, and TLS with an rcgen
//! CA), a misbehaving HTTP/2 server for the GOAWAY and refused-stream paths,
//! a hand-written HTTP/1.1 server for the failures hyper's server never
//! produces, and in-memory connectors and an HTTP/2 server for tests on
//! paused time.

pub mod budget;
pub mod duplex;
pub mod h2frame;
pub mod h2server;
pub mod memory_h2;
pub mod raw_http1;
pub mod server;
pub mod tls_server;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::tls::TlsError;
use tower_reuse_pool::{
    Connect, ConnectionInfo, Error, Pool, PoolBody, PoolConfig, PoolLayer, TargetSnapshot,
};

/// A pool over a plain `HttpConnector` with `config`.
pub fn pool(config: PoolConfig) -> Pool<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    PoolLayer::new(config)
        .expect("valid config")
        .layer(connector)
}

/// A pool over `connector` with `config`.
pub fn client<C: Connect>(connector: C, config: PoolConfig) -> Pool<C> {
    PoolLayer::<Full<Bytes>>::new(config)
        .expect("valid config")
        .layer(connector)
}

/// The snapshot of the pool's only target.
pub fn only<C: Connect>(client: &Pool<C>) -> TargetSnapshot {
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets.len(), 1, "{snapshot:?}");
    snapshot.targets[0].clone()
}

/// What the pool says about the connection a response came on.
pub fn info(parts: &http::response::Parts) -> ConnectionInfo {
    parts
        .extensions
        .get::<ConnectionInfo>()
        .expect("every response carries ConnectionInfo")
        .clone()
}

/// Let spawned tasks (connection tasks, the reaper) run at the current
/// instant: for tests on paused time.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// On paused time: advance 10 ms at a time (at most 50 times) until every
/// task has finished, checking after each step that the pool's only target
/// never has more than `max_connecting` connects in flight.
pub async fn advance_within_connect_bound<C: Connect, T>(
    client: &Pool<C>,
    tasks: &[tokio::task::JoinHandle<T>],
    max_connecting: usize,
) {
    for _ in 0..50 {
        if tasks.iter().all(|task| task.is_finished()) {
            return;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        settle().await;
        let snapshot = only(client);
        assert!(snapshot.connecting() <= max_connecting, "{snapshot:?}");
    }
}

/// Wait on real time until `done` holds, at most a second.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// How long, in real time, a test on paused time may take: a guard against
/// a spin, far above what it needs (well under a second).
pub const REAL_TIME_BOUND: Duration = Duration::from_secs(30);

/// Runs `test` on paused time, on a runtime and thread of its own, and
/// fails unless it ends within `limit` of real time. On paused time the
/// clock jumps only while every task is idle: a task that keeps waking
/// itself (a spin) stops a `sleep` from ever ending, and this bound turns
/// that into a failure instead of a hang.
pub fn on_paused_time_within<F: Future<Output = ()>>(
    limit: Duration,
    test: impl FnOnce() -> F + Send + 'static,
) {
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
            .block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => runner.join().expect("the test ended"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().expect_err("the test panicked"))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
            "not done within {limit:?} of real time: a task spins, so paused time cannot advance"
        ),
    }
}

/// Fails the test if `work` is not done within 2 s: a guard against hangs,
/// not a performance assertion.
pub async fn bounded<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .expect("hung: not done within 2 s")
}

/// The `TlsError` somewhere in `error`'s source chain.
pub fn tls_error(error: &Error) -> &TlsError {
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<TlsError>() {
            return tls;
        }
        source = err.source();
    }
    panic!("no TlsError in the source chain of {error:?}")
}

/// A GET for `uri` carrying `x-request-id: id`.
pub fn get(uri: &str, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::get(uri)
        .header("x-request-id", id)
        .body(Full::default())
        .expect("valid request")
}

/// Send `req`, read the whole body; returns the response head, with the
/// body's [`ConnectionInfo`] put in its extensions, and the body.
pub async fn send<S>(
    client: &mut S,
    req: http::Request<Full<Bytes>>,
) -> Result<(http::response::Parts, Bytes), Error>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<PoolBody>, Error = Error>,
{
    let response = client.ready().await?.call(req).await?;
    let (mut parts, body) = response.into_parts();
    // The body carries the connection's facts: kept with the head, for
    // `info` and the tests that read them from the parts.
    parts.extensions.insert(body.connection_info().clone());
    let body = body.collect().await?.to_bytes();
    Ok((parts, body))
}

/// Run `work(0)` .. `work(n - 1)` as concurrent tasks and collect their
/// outputs in order; a panic in any of them fails the caller.
pub async fn concurrently<F, Fut, T>(n: u64, work: F) -> Vec<T>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(work(i))).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.expect("a worker panicked"));
    }
    outputs
}

/// The `x-request-id` a response echoed.
pub fn echoed_id(parts: &http::response::Parts) -> Option<u64> {
    parts
        .headers
        .get("x-request-id")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The server-side connection id a response came on.
pub fn server_conn(parts: &http::response::Parts) -> u64 {
    parts.headers["x-conn-id"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}
