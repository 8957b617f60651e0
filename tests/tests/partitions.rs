//! Network partitions in turmoil's simulated network: a real hyper server on
//! one simulated host, the pool on another dialling it over turmoil's TCP,
//! and the link between them cut while a connection is pooled. A partition
//! drops every segment silently (no FIN, no RST): the peer is black-holed,
//! and only the pool's own timers can notice. Time is turmoil's simulated
//! time, so the bounds are checked exactly and every run is the same for
//! its seed.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, Uri};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, sleep, timeout};
use tower::Service;
use tower_reuse_pool::{ConnectionInfo, Error, ErrorKind, Pool, PoolConfig, Protocol};
use tower_reuse_tests::{client, get, info, only, send};

const PORT: u16 = 80;
const URL: &str = "http://server/";
/// Each scenario runs under these seeds (message latency is drawn from the
/// seeded generator).
const SEEDS: [u64; 2] = [1, 2];
/// How long a partitioned request may stay pending before the test calls it
/// hung: well past every bound checked here.
const HUNG: Duration = Duration::from_secs(30);

/// Dials turmoil's simulated TCP: `uri`'s host is a simulated host name.
#[derive(Clone, Debug)]
struct SimConnector;

impl Service<Uri> for SimConnector {
    type Response = TokioIo<SimStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .to_owned();
            let port = uri.port_u16().unwrap_or(PORT);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(TokioIo::new(SimStream(stream)))
        })
    }
}

/// A simulated TCP stream with the connection metadata the pool reads
/// (nothing negotiated: plain TCP).
#[derive(Debug)]
struct SimStream(turmoil::net::TcpStream);

impl Connection for SimStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A hyper server (HTTP/1.1 and h2c) answering every request with 200,
/// counting the connections it accepts.
async fn serve(accepted: Arc<AtomicU64>) -> turmoil::Result {
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let answer = service_fn(|_request| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            });
            // A connection cut by the partition ends here in an error, or
            // never: either way nothing to report.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

/// Runs `scenario` as host "client" against the server on host "server"
/// under `seed`; returns the connections the server accepted.
fn simulate<F, Fut>(seed: u64, scenario: F) -> u64
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = turmoil::Result> + 'static,
{
    let accepted = Arc::new(AtomicU64::new(0));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .build();
    let counter = accepted.clone();
    sim.host("server", move || serve(counter.clone()));
    sim.client("client", scenario());
    sim.run().expect("the simulation completes");
    accepted.load(Ordering::SeqCst)
}

/// Cuts the link and sends request 2 on the pooled connection: its error,
/// and how long after the cut it came.
async fn across_a_partition(pool: &mut Pool<SimConnector>, seed: u64) -> (Error, Duration) {
    turmoil::partition("client", "server");
    let cut = Instant::now();
    let error = timeout(HUNG, send(pool, get(URL, 2)))
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: still pending {HUNG:?} into the partition"))
        .expect_err("no answer crosses a partition");
    (error, cut.elapsed())
}

/// Repairs the link: request 3 goes on a new connection, the pool's second.
async fn after_the_repair(
    pool: &mut Pool<SimConnector>,
    first: &ConnectionInfo,
    seed: u64,
) -> turmoil::Result {
    turmoil::repair("client", "server");
    let (third, _) = send(pool, get(URL, 3)).await?;
    let third = info(&third);
    assert!(!third.reused(), "seed {seed}: {third:?}");
    assert_ne!(third.id(), first.id());
    assert_eq!(only(pool).opened(), 2);
    Ok(())
}

#[test]
fn a_partitioned_http2_connection_is_evicted_by_ping_within_twice_the_interval() {
    const PING: Duration = Duration::from_secs(5);
    for seed in SEEDS {
        let accepted = simulate(seed, move || async move {
            // No retry: the failure reported is the partitioned
            // connection's own, not a reconnect's.
            let mut pool = client(
                SimConnector,
                PoolConfig::default()
                    .http2_prior_knowledge(true)
                    .http2_ping_interval(Some(PING))
                    .retry(false),
            );
            let (first, _) = send(&mut pool, get(URL, 1)).await?;
            let first = info(&first);
            assert_eq!(first.protocol(), Protocol::Http2);

            let (error, took) = across_a_partition(&mut pool, seed).await;
            // The last frame came in before the cut: a PING is due at most
            // one interval after it, and its answer overdue one more later.
            assert!(
                took <= 2 * PING,
                "seed {seed}: failed {took:?} into the partition, over 2 x {PING:?}"
            );
            // The request is failed with the connection, by the PING
            // timeout, and says so.
            assert_eq!(error.kind(), ErrorKind::Send, "seed {seed}: {error:?}");
            assert!(error.may_have_been_processed());
            assert!(
                error
                    .to_string()
                    .contains("keep-alive PING went unanswered"),
                "seed {seed}: {error}"
            );
            let target = only(&pool);
            assert_eq!((target.idle(), target.active()), (0, 0), "{target:?}");
            assert_eq!(target.closed_total(), 1, "{target:?}");

            after_the_repair(&mut pool, &first, seed).await
        });
        assert_eq!(accepted, 2, "seed {seed}");
    }
}

#[test]
fn a_partitioned_http1_request_fails_at_the_response_timeout() {
    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
    for seed in SEEDS {
        let accepted = simulate(seed, move || async move {
            let mut pool = client(
                SimConnector,
                PoolConfig::default()
                    .response_timeout(Some(RESPONSE_TIMEOUT))
                    .retry(false),
            );
            let (first, _) = send(&mut pool, get(URL, 1)).await?;
            let first = info(&first);
            assert_eq!(first.protocol(), Protocol::Http1);

            let (error, took) = across_a_partition(&mut pool, seed).await;
            assert_eq!(
                error.kind(),
                ErrorKind::ResponseTimeout,
                "seed {seed}: {error:?}"
            );
            // The request was written at the cut: it fails exactly one
            // response timeout later.
            assert_eq!(took, RESPONSE_TIMEOUT, "seed {seed}");
            // The timed-out HTTP/1.1 connection is closed, not pooled.
            sleep(Duration::from_millis(1)).await;
            let target = only(&pool);
            assert_eq!((target.idle(), target.active()), (0, 0), "{target:?}");
            assert_eq!(target.closed_total(), 1, "{target:?}");

            after_the_repair(&mut pool, &first, seed).await
        });
        assert_eq!(accepted, 2, "seed {seed}");
    }
}
