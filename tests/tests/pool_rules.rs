//! The pool's checkout, limit, retry, error, event and timing rules, one
//! test per rule: loopback servers for behaviour, paused time over the
//! in-memory connector for anything timed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::events::{
    CheckedIn, CheckedOut, CloseReason, Closed, ConnectFailed, ConnectReason, ConnectStarted,
    Connected as ConnectedEvent, PoolEvents, RetryReason,
};
use tower_reuse_pool::{
    ConnectionInfo, ErrorKind, Phase, Pool, PoolBody, PoolConfig, PoolLayer, Protocol, Target,
};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{
    advance_within_connect_bound, client, concurrently, get, info, only, pool, send, server_conn,
    settle, until,
};

/// The target of the in-memory tests.
const URL: &str = "http://pool.test/";

fn info_of(response: &http::Response<PoolBody>) -> ConnectionInfo {
    ConnectionInfo::of(response)
        .expect("every response carries ConnectionInfo")
        .clone()
}

fn header(parts: &http::response::Parts, name: &str) -> u64 {
    parts.headers[name]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn idle_connections_are_reused_most_recent_first() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default());
    let url = server.url("/");
    // Two requests at once open two connections; their bodies hold them.
    let responses = concurrently(2, |i| client.clone().oneshot(get(&url, i))).await;
    let mut held: Vec<_> = responses.into_iter().map(Result::unwrap).collect();
    let b = held.pop().unwrap();
    let a = held.pop().unwrap();
    let (a_id, b_id) = (info_of(&a).id(), info_of(&b).id());
    assert_ne!(a_id, b_id);
    // A goes back first, then B.
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    assert_eq!(only(&client).idle(), 2);
    let (parts, _) = send(&mut client.clone(), get(&url, 2)).await.unwrap();
    assert_eq!(info(&parts).id(), b_id, "not the most recently returned");
    assert!(info(&parts).reused());
    assert_eq!(server.stats.accepted(), 2);
}

/// The only connection comes back while a request waits for it and a new
/// request arrives, before the waiter's task has run: the waiter gets it.
#[tokio::test]
async fn a_new_arrival_never_takes_a_connection_from_a_parked_waiter() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default().max_connections_per_target(Some(1)));
    let url = server.url("/");
    let target = Target::from_uri(&url.parse().unwrap(), None).unwrap();

    for arrives_before_check_in in [true, false] {
        let held = client.checkout(&target).await.unwrap();
        let spawn_get = |id| {
            let mut client = client.clone();
            let req = get(&url, id);
            tokio::spawn(async move { send(&mut client, req).await })
        };
        let waiter = spawn_get(1);
        until("the first request waits", || only(&client).waiting() == 1).await;
        let newcomer = spawn_get(2);
        if arrives_before_check_in {
            tokio::task::yield_now().await;
            assert_eq!(only(&client).waiting(), 2);
        }
        // Back unused, at once: the waiter's task has not run since, and
        // the newcomer's has not run at all or has only just queued.
        drop(held);
        let (waiter, _) = waiter.await.unwrap().unwrap();
        let (newcomer, _) = newcomer.await.unwrap().unwrap();
        let case = if arrives_before_check_in {
            "arriving just before the check-in"
        } else {
            "arriving with the check-in"
        };
        assert_eq!(server_conn(&waiter), server_conn(&newcomer));
        assert!(
            header(&waiter, "x-served") < header(&newcomer, "x-served"),
            "a newcomer {case} was served before the parked waiter"
        );
    }
    assert_eq!(server.stats.accepted(), 1);
}

#[tokio::test(start_paused = true)]
async fn connects_in_flight_stay_within_max_connecting_and_serve_every_waiter() {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(100));
    let client = client(
        connector.clone(),
        PoolConfig::default().max_connecting_per_target(Some(2)),
    );
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { send(&mut client, get(URL, i)).await })
        })
        .collect();
    settle().await;
    let snapshot = only(&client);
    assert_eq!(snapshot.connecting(), 2, "{snapshot:?}");
    assert_eq!(snapshot.waiting(), 20);
    advance_within_connect_bound(&client, &requests, 2).await;
    for request in requests {
        let (parts, _) = request.await.unwrap().expect("every waiter is served");
        assert_eq!(info(&parts).protocol(), Protocol::Http1);
    }
    assert_eq!(only(&client).waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_leaves_at_most_max_idle_connections_idle() {
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    });
    let client = client(
        connector.clone(),
        PoolConfig::default().max_idle_per_target(Some(1)),
    );
    concurrently(4, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, i)).await.unwrap() }
    })
    .await;
    settle().await;
    assert_eq!(
        connector.stats.accepted(),
        4,
        "the burst used 4 connections"
    );
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 1, "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::OverLimit), 3, "{snapshot:?}");
    assert_eq!(
        connector.stats.open(),
        1,
        "over-limit sockets were left open"
    );
}

/// Connects started for a burst land after one connection has served it:
/// they arrive with nobody waiting and must respect the idle cap too.
#[tokio::test(start_paused = true)]
async fn connections_landing_after_the_burst_respect_max_idle() {
    let fast = Duration::from_millis(10);
    let slow = Duration::from_millis(50);
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delays([fast, slow, slow, slow]);
    let client = client(
        connector.clone(),
        PoolConfig::default().max_idle_per_target(Some(1)),
    );
    concurrently(4, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, i)).await.unwrap() }
    })
    .await;
    assert_eq!(
        connector.stats.accepted(),
        1,
        "one connection served the burst"
    );
    advance(slow).await;
    settle().await;
    assert_eq!(connector.attempts.load(Ordering::SeqCst), 4);
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 1, "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::OverLimit), 3, "{snapshot:?}");
}

/// Reports `negotiated_h2()` on every new connection while `h2` is set, as
/// ALPN would (the server behind it speaks both).
#[derive(Clone, Debug)]
struct AlpnH2Connector(HttpConnector, Arc<AtomicBool>);

impl AlpnH2Connector {
    fn new() -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        AlpnH2Connector(tcp, Arc::new(AtomicBool::new(true)))
    }
}

#[derive(Debug)]
struct AlpnH2Io(TokioIo<TcpStream>, bool);

impl Connection for AlpnH2Io {
    fn connected(&self) -> Connected {
        let connected = self.0.connected();
        if self.1 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for AlpnH2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AlpnH2Io {
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

impl Service<Uri> for AlpnH2Connector {
    type Response = AlpnH2Io;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<AlpnH2Io, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        let h2 = self.1.load(Ordering::SeqCst);
        Box::pin(async move { connecting.await.map(|io| AlpnH2Io(io, h2)) })
    }
}

#[tokio::test]
async fn alpn_through_a_tower_connector_speaks_http2_on_one_connection() {
    let server = TestServer::start(ServerOptions::default()).await;
    // No prior knowledge: HTTP/2 only because the connector says ALPN chose it.
    let client = client(AlpnH2Connector::new(), PoolConfig::default());
    let url = format!("https://{}/", server.addr);
    let infos = concurrently(16, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move { info(&send(&mut client, get(&url, i)).await.unwrap().0) }
    })
    .await;
    for info in &infos {
        assert_eq!(info.protocol(), Protocol::Http2);
    }
    assert_eq!(
        server.stats.accepted(),
        1,
        "a cold burst opened one connection"
    );
    assert_eq!(only(&client).protocol(), Some(Protocol::Http2));
}

#[tokio::test]
async fn a_target_whose_alpn_changes_to_http1_gets_connections_for_every_waiter() {
    // Every connection serves one request, so each request dials; the
    // server answers after 50 ms, so a burst overlaps.
    let server = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    })
    .await;
    let connector = AlpnH2Connector::new();
    let client = client(
        connector.clone(),
        PoolConfig::default().max_requests_per_connection(Some(1)),
    );
    let url = format!("https://{}/", server.addr);
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    assert_eq!(only(&client).protocol(), Some(Protocol::Http2));
    // The backend now negotiates HTTP/1.1: one connect no longer covers
    // many waiters.
    connector.1.store(false, Ordering::SeqCst);
    send(&mut client.clone(), get(&url, 1)).await.unwrap();
    assert_eq!(only(&client).protocol(), Some(Protocol::Http1));
    let infos = concurrently(8, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move { info(&send(&mut client, get(&url, 10 + i)).await.unwrap().0) }
    })
    .await;
    assert!(infos.iter().all(|i| i.protocol() == Protocol::Http1));
    assert!(
        server.stats.peak_in_flight() >= 4,
        "the burst's connects ran side by side (peak {})",
        server.stats.peak_in_flight()
    );
}

#[tokio::test]
async fn http2_scale_out_stops_at_max_connections() {
    let server = TestServer::start(ServerOptions {
        h2_max_streams: Some(4),
        delay: Some(Duration::from_millis(30)),
        ..ServerOptions::default()
    })
    .await;
    let client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_connections_per_target(Some(2)),
    );
    let url = server.url("/");
    let infos = concurrently(16, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move { info(&send(&mut client, get(&url, i)).await.unwrap().0) }
    })
    .await;
    assert!(infos.iter().all(|i| i.protocol() == Protocol::Http2));
    assert_eq!(server.stats.accepted(), 2);
    assert_eq!(server.stats.requests(), 16);
    assert!(
        server.stats.peak_in_flight() <= 8,
        "peak {} over 2 connections of 4 streams",
        server.stats.peak_in_flight()
    );
}

#[tokio::test]
async fn a_new_connection_failing_its_first_request_is_not_retried() {
    let server = RawHttp1Server::start(|_, _| Answer::Close).await;
    let mut client = pool(PoolConfig::default());
    let err = send(&mut client, get(&server.url("/"), 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Send, "{err:?}");
    assert_eq!(err.phase(), Phase::Send);
    assert!(err.may_have_been_processed());
    assert_eq!(
        err.target(),
        Some(format!("http://{}", server.addr).as_str())
    );
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(only(&client).retries(), 0);
}

#[tokio::test]
async fn a_get_on_a_reused_connection_closed_under_it_is_retried_once() {
    // Connection 0 answers its first request and, on its second, closes
    // (a FIN) or resets (an RST): the same race for the client.
    for fault in [Answer::Close, Answer::Reset] {
        let server = RawHttp1Server::start(move |conn, index| match (conn, index) {
            (0, 1) => fault,
            _ => Answer::Respond,
        })
        .await;
        let mut client = pool(PoolConfig::default());
        let (first, _) = send(&mut client, get(&server.url("/"), 1)).await.unwrap();
        let (parts, body) = send(&mut client, get(&server.url("/"), 2))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(&body[..], b"ok");
        let retried = info(&parts);
        assert_eq!(retried.retried(), Some(RetryReason::ClosedIdempotent));
        assert_ne!(retried.id(), info(&first).id());
        assert!(!retried.reused());
        let seen: Vec<_> = server
            .requests()
            .into_iter()
            .map(|r| (r.conn, r.index))
            .collect();
        assert_eq!(seen, [(0, 0), (0, 1), (1, 0)], "{fault:?}");
        assert_eq!(only(&client).retries(), 1);
    }
}

#[tokio::test]
async fn a_post_with_a_body_is_never_replayed() {
    let server = RawHttp1Server::start(|conn, index| match (conn, index) {
        (0, 1) => Answer::Close,
        _ => Answer::Respond,
    })
    .await;
    let mut client = pool(PoolConfig::default());
    send(&mut client, get(&server.url("/"), 1)).await.unwrap();
    let post = http::Request::post(server.url("/"))
        .body(Full::new(Bytes::from_static(b"pay once")))
        .unwrap();
    let err = send(&mut client, post).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Send, "{err:?}");
    assert!(err.may_have_been_processed());
    let posts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].body, b"pay once");
    assert_eq!(server.accepted(), 1);
    assert_eq!(only(&client).retries(), 0);
}

#[tokio::test]
async fn a_body_cut_short_is_a_body_error_and_its_connection_is_dropped() {
    let server = RawHttp1Server::start(|conn, _| match conn {
        0 => Answer::TruncateBody,
        _ => Answer::Respond,
    })
    .await;
    let mut client = pool(PoolConfig::default());
    let err = send(&mut client, get(&server.url("/"), 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Body, "{err:?}");
    assert_eq!(err.phase(), Phase::Body);
    assert!(err.may_have_been_processed());
    let target = format!("http://{}", server.addr);
    assert_eq!(err.target(), Some(target.as_str()));
    assert!(err.to_string().contains(&target), "{err}");

    let (parts, _) = send(&mut client, get(&server.url("/"), 2)).await.unwrap();
    assert!(!info(&parts).reused());
    assert_eq!(info(&parts).retried(), None);
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.requests().len(), 2, "the first request was retried");
    let snapshot = only(&client);
    assert_eq!(snapshot.closed(CloseReason::Error), 1, "{snapshot:?}");
    assert_eq!(snapshot.retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn checkout_timeout_names_its_kind_phase_and_target() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector,
        PoolConfig::default()
            .max_connections_per_target(Some(1))
            .checkout_timeout(Some(Duration::from_secs(2))),
    );
    let held = client.clone().oneshot(get(URL, 1)).await.unwrap();
    let err = send(&mut client, get(URL, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CheckoutTimeout);
    assert_eq!(err.phase(), Phase::Checkout);
    assert_eq!(err.target(), Some("http://pool.test"));
    assert!(err.is_checkout() && err.is_timeout() && !err.is_connect());
    assert!(!err.may_have_been_processed());
    assert_eq!(
        err.to_string(),
        "checkout timed out after 2s waiting for http://pool.test (checkout phase)"
    );
    drop(held);
}

/// Every event the pool reported, with the instant it came.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(Instant, Event)>>);

#[derive(Clone, Debug, PartialEq)]
enum Event {
    ConnectStarted(ConnectReason),
    Connected {
        id: u64,
        reason: ConnectReason,
        duration: Duration,
    },
    ConnectFailed {
        reason: ConnectReason,
        duration: Duration,
        kind: ErrorKind,
    },
    CheckedOut {
        id: u64,
        reused: bool,
        wait: Duration,
    },
    CheckedIn {
        id: u64,
        reusable: bool,
    },
    Closed {
        id: u64,
        reason: CloseReason,
        lifetime: Duration,
        requests_served: u64,
    },
}

impl Recorder {
    fn push(&self, event: Event) {
        self.0.lock().unwrap().push((Instant::now(), event));
    }

    fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn starts(&self, reason: ConnectReason) -> Vec<Instant> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(_, e)| *e == Event::ConnectStarted(reason))
            .map(|(at, _)| *at)
            .collect()
    }
}

impl PoolEvents for Recorder {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.push(Event::ConnectStarted(event.reason()));
    }
    fn on_connect(&self, event: &ConnectedEvent<'_>) {
        self.push(Event::Connected {
            id: event.id().get(),
            reason: event.reason(),
            duration: event.duration(),
        });
    }
    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        self.push(Event::ConnectFailed {
            reason: event.reason(),
            duration: event.duration(),
            kind: event.error().kind(),
        });
    }
    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.push(Event::CheckedOut {
            id: event.id().get(),
            reused: event.reused(),
            wait: event.wait(),
        });
    }
    fn on_checkin(&self, event: &CheckedIn<'_>) {
        self.push(Event::CheckedIn {
            id: event.id().get(),
            reusable: event.reusable(),
        });
    }
    fn on_close(&self, event: &Closed<'_>) {
        self.push(Event::Closed {
            id: event.id().get(),
            reason: event.reason(),
            lifetime: event.lifetime(),
            requests_served: event.requests_served(),
        });
    }
}

fn recorded_client(
    connector: DuplexConnector,
    config: PoolConfig,
) -> (Pool<DuplexConnector>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = PoolLayer::<Full<Bytes>>::new(config)
        .unwrap()
        .shared_events(recorder.clone())
        .layer(connector);
    (client, recorder)
}

#[tokio::test(start_paused = true)]
async fn events_follow_a_connection_from_connect_to_idle_close() {
    let connect = Duration::from_millis(40);
    let serving = Duration::from_secs(1);
    let idle = Duration::from_secs(10);
    // The server takes a second over the response, so that the lifetime
    // (from connect to close) differs from the idle time.
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(serving),
        ..ServerOptions::default()
    })
    .with_connect_delay(connect);
    let (mut client, recorder) = recorded_client(
        connector.clone(),
        PoolConfig::default().idle_timeout(Some(idle)),
    );
    let (parts, _) = send(&mut client, get(URL, 1)).await.unwrap();
    let id = info(&parts).id().get();
    tokio::time::sleep(idle + Duration::from_secs(1)).await;
    connector.refuse.store(true, Ordering::SeqCst);
    let err = send(&mut client, get(URL, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert_eq!(
        recorder.events(),
        [
            Event::ConnectStarted(ConnectReason::Demand),
            Event::Connected {
                id,
                reason: ConnectReason::Demand,
                duration: connect,
            },
            Event::CheckedOut {
                id,
                reused: false,
                wait: connect,
            },
            Event::CheckedIn { id, reusable: true },
            Event::Closed {
                id,
                reason: CloseReason::IdleTimeout,
                lifetime: serving + idle,
                requests_served: 1,
            },
            Event::ConnectStarted(ConnectReason::Demand),
            Event::ConnectFailed {
                reason: ConnectReason::Demand,
                duration: connect,
                kind: ErrorKind::Connect,
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn connection_info_reports_exact_wait_and_idle_time() {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(40));
    let mut client = client(connector, PoolConfig::default());
    let (parts, _) = send(&mut client, get(URL, 1)).await.unwrap();
    let first = info(&parts);
    assert_eq!(first.wait(), Duration::from_millis(40));
    assert_eq!(first.idle_for(), None, "a new connection was never idle");
    assert!(!first.reused());

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (parts, _) = send(&mut client, get(URL, 2)).await.unwrap();
    let second = info(&parts);
    assert!(second.reused());
    assert_eq!(second.id(), first.id());
    assert_eq!(second.idle_for(), Some(Duration::from_secs(5)));
    assert_eq!(second.wait(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn prewarm_retries_back_off_exponentially_with_jitter() {
    let connector = DuplexConnector::new(ServerOptions::default());
    connector.refuse.store(true, Ordering::SeqCst);
    let (mut client, recorder) =
        recorded_client(connector, PoolConfig::default().min_idle_per_target(1));
    // The first request makes the target known; its connect is refused.
    assert!(
        send(&mut client, get(URL, 1))
            .await
            .unwrap_err()
            .is_connect()
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let starts = recorder.starts(ConnectReason::Prewarm);
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoffs of 0.1, 0.2, ... 12.8 s: 9 attempts take 12.75 s at half
    // backoff and 25.5 s at full; an 11th needs 15 s more than a 10th.
    let first: Vec<_> = gaps.iter().take(12).collect();
    assert!(
        (9..=10).contains(&starts.len()),
        "{} pre-warm connects in 30 s, first gaps {first:?}",
        starts.len()
    );
    let mut backoff = Duration::from_millis(100);
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= backoff / 2 && *gap <= backoff,
            "gap {i} of {gap:?} outside [{:?}, {backoff:?}]: {gaps:?}",
            backoff / 2
        );
        if i > 0 {
            assert!(*gap >= gaps[i - 1], "the backoff shrank: {gaps:?}");
        }
        if i > 1 {
            assert!(*gap >= gaps[i - 2] * 2, "no doubling: {gaps:?}");
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_changed_at_run_time_applies_to_an_idle_connection() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default().idle_timeout(Some(Duration::from_secs(60))),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    advance(Duration::from_secs(3)).await;
    settle().await;
    client
        .control()
        .update(|c| c.idle_timeout(Some(Duration::from_secs(5))))
        .unwrap();
    settle().await;
    assert_eq!(only(&client).idle(), 1, "closed before its new deadline");
    advance(Duration::from_secs(2) - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(only(&client).idle(), 1, "closed before its new deadline");
    advance(Duration::from_millis(1)).await;
    settle().await;
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 0, "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::IdleTimeout), 1);
    settle().await;
    assert_eq!(connector.stats.open(), 0, "the socket was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_connections_keeps_a_floor_open_and_a_burst_within_it_opens_none() {
    let server = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .await;
    let client = pool(PoolConfig::default().min_connections_per_target(4));
    let mut c = client.clone();
    send(&mut c, get(&server.url("/"), 0)).await.unwrap();
    until("the floor is open", || server.stats.accepted() == 4).await;
    // Four at once, all busy together: `min_idle_per_target` would open
    // four more to keep some idle; this floor opens none.
    let url = server.url("/");
    concurrently(4, |i| {
        let mut c = client.clone();
        let url = url.clone();
        async move { send(&mut c, get(&url, i)).await.unwrap() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.stats.accepted(), 4);
    assert_eq!(only(&client).idle(), 4);
}
