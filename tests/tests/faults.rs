//! The fault matrix of issue 6, as far as the pool's present features go:
//! one test per case, named after it, each against a server that
//! misbehaves in that one way (`raw_http1`, `h2server`, the TLS server) or
//! on paused time over in-memory connectors where timing decides.
//!
//! Cases already covered exactly elsewhere are pointed to, not repeated.
//! Every wait on real time is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use h2::Reason;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::events::{CheckedIn, CloseReason, PoolEvents};
use tower_reuse_pool::tls::{TlsErrorKind, TlsLayer};
use tower_reuse_pool::{ConnId, ErrorKind, Phase, Pool, PoolConfig, PoolLayer, Protocol};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::h2server::{H2Options, H2Server, Reply};
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
use tower_reuse_tests::server::{ServerOptions, ServerStats, TestServer};
use tower_reuse_tests::tls_server::{Alpn, MemoryConnector, TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{
    advance_within_connect_bound, bounded, client, concurrently, echoed_id, get, info, only, pool,
    send, server_conn, settle, tls_error, until,
};

/// The target of the in-memory tests.
const URL: &str = "http://pool.test/";

/// An h2c pool over TCP.
fn h2_pool() -> Pool<HttpConnector> {
    pool(PoolConfig::default().http2_prior_knowledge(true))
}

/// Case 1: the server closes connections idle for 100 ms; the next request
/// comes once the pool has evicted the connection, which it does when the
/// server closes it, before any request comes for it.
#[tokio::test]
async fn server_closing_an_idle_connection_evicts_it_and_the_next_request_dials() {
    let server = TestServer::start(ServerOptions {
        idle_close: Some(Duration::from_millis(100)),
        ..ServerOptions::default()
    })
    .await;
    let mut client = pool(PoolConfig::default());
    let url = server.url("/");
    let (first, _) = send(&mut client, get(&url, 1)).await.unwrap();
    until("the server has closed the idle connection", || {
        server.stats.open() == 0
    })
    .await;
    until("the pool has evicted it", || {
        only(&client).closed_total() == 1
    })
    .await;
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 0, "{snapshot:?}");
    assert_eq!(
        snapshot.closed(CloseReason::ServerClosed),
        1,
        "{snapshot:?}"
    );

    let (second, _) = send(&mut client, get(&url, 2))
        .await
        .expect("no error after the server's idle close");
    assert_eq!(echoed_id(&second), Some(2));
    assert!(!info(&second).reused());
    assert_ne!(info(&second).id(), info(&first).id());
    assert_eq!(info(&second).retried(), None);
    assert_eq!(server.stats.accepted(), 2);
    let snapshot = only(&client);
    assert_eq!(snapshot.retries(), 0);
    assert_eq!(
        snapshot.checkouts(),
        2,
        "the dead connection was checked out"
    );
    assert_eq!(snapshot.closed(CloseReason::Error), 0, "{snapshot:?}");
}

// Case 2 (server closes exactly as a request is written): pool_rules.rs,
// a_get_on_a_reused_connection_closed_under_it_is_retried_once and
// a_post_with_a_body_is_never_replayed.
// Case 3 (a middlebox resets idle connections) needs a pool that learns
// the limit; one told by the server is pool_timing.rs,
// honours_the_servers_keep_alive_timeout.

/// Case 4: a `408` (as servers send before closing an idle connection, left
/// open here), then a stale copy of the last response: either way the
/// connection goes, and the next request gets its own response.
#[tokio::test]
async fn unsolicited_bytes_on_an_idle_connection_discard_it_and_never_reach_a_later_request() {
    const REQUEST_TIMEOUT: &[u8] =
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const STALE_RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-conn-id: 0\r\nx-request-id: 1\r\n\r\nok";
    for unsolicited in [REQUEST_TIMEOUT, STALE_RESPONSE] {
        let server = RawHttp1Server::start(move |conn, _| match conn {
            0 => Answer::RespondThenSend(Duration::from_millis(20), unsolicited),
            _ => Answer::Respond,
        })
        .await;
        let mut client = pool(PoolConfig::default());
        let url = server.url("/");
        let (first, _) = send(&mut client, get(&url, 1)).await.unwrap();
        assert_eq!(echoed_id(&first), Some(1));
        until("the connection is discarded", || only(&client).idle() == 0).await;
        let snapshot = only(&client);
        assert_eq!(
            snapshot.closed(CloseReason::ServerClosed),
            1,
            "{snapshot:?}"
        );

        let (second, body) = send(&mut client, get(&url, 2)).await.unwrap();
        assert_eq!(
            echoed_id(&second),
            Some(2),
            "the unsolicited bytes reached it"
        );
        assert_eq!(second.status, http::StatusCode::OK);
        assert_eq!(&body[..], b"ok");
        assert_eq!(server_conn(&second), 1);
        assert!(!info(&second).reused());
        assert_eq!(server.accepted(), 2);
        let ids: Vec<_> = server.requests().iter().map(|r| (r.conn, r.id)).collect();
        assert_eq!(ids, [(0, Some(1)), (1, Some(2))]);
        assert_eq!(only(&client).retries(), 0);
    }
}

// Case 5, `Connection: close` and HTTP/1.0: pool_http1.rs,
// connection_close_and_http10_are_not_pooled.

/// Records the check-ins the pool reports: the connection, and whether it
/// stays in the pool.
#[derive(Debug, Default)]
struct CheckIns(std::sync::Mutex<Vec<(ConnId, bool)>>);

impl CheckIns {
    fn seen(&self) -> Vec<(ConnId, bool)> {
        self.0.lock().unwrap().clone()
    }
}

impl PoolEvents for CheckIns {
    fn on_checkin(&self, event: &CheckedIn<'_>) {
        self.0.lock().unwrap().push((event.id(), event.reusable()));
    }
}

/// Case 5, unknown body length: a body that ends when the server closes.
/// Its connection is checked in as not reusable, so the next request, sent
/// at once, dials without ever being offered it (a pool that pooled it and
/// evicted it on the close could offer it in between).
#[tokio::test]
async fn a_close_delimited_response_is_not_pooled() {
    let server = RawHttp1Server::start(|conn, _| match conn {
        0 => Answer::CloseDelimited,
        _ => Answer::Respond,
    })
    .await;
    let checkins = Arc::new(CheckIns::default());
    let mut client = PoolLayer::new(PoolConfig::default())
        .expect("valid config")
        .shared_events(checkins.clone())
        .layer(HttpConnector::new());
    let url = server.url("/");
    let (first, body) = send(&mut client, get(&url, 1)).await.unwrap();
    assert_eq!(echoed_id(&first), Some(1));
    assert_eq!(&body[..], b"ok");
    assert_eq!(checkins.seen(), [(info(&first).id(), false)]);

    let (second, _) = send(&mut client, get(&url, 2)).await.unwrap();
    assert_eq!(echoed_id(&second), Some(2));
    assert_eq!(server_conn(&second), 1);
    assert!(!info(&second).reused());
    assert_ne!(info(&second).id(), info(&first).id());
    assert_eq!(server.accepted(), 2);
    let snapshot = only(&client);
    assert_eq!(
        (
            snapshot.checkouts(),
            snapshot.stale_skips(),
            snapshot.retries()
        ),
        (2, 0, 0),
        "the closed connection was offered: {snapshot:?}"
    );
    assert_eq!(
        snapshot.closed(CloseReason::ServerClosed),
        1,
        "{snapshot:?}"
    );
}

// Case 6 over HTTP/1: pool_rules.rs,
// a_new_connection_failing_its_first_request_is_not_retried.

/// Case 6 over h2c: the first stream of a brand-new connection is reset
/// with `INTERNAL_ERROR`, or the connection closes under it.
#[tokio::test]
async fn a_new_h2c_connection_failing_its_first_stream_is_not_retried() {
    for reply in [Reply::Reset(Reason::INTERNAL_ERROR), Reply::Close] {
        let server = H2Server::start(H2Options::replying(move |_| reply)).await;
        let client = h2_pool();
        let url = server.url("/");
        let error = bounded(send(&mut client.clone(), get(&url, 1)))
            .await
            .expect_err("the stream failed");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::Send, Phase::Send),
            "{reply:?}: {error:?}"
        );
        assert!(error.may_have_been_processed(), "{reply:?}: {error}");
        // No dial loop: nothing more happens afterwards.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = server.seen();
        assert_eq!(seen.accepted(), 1, "{reply:?}: {seen:?}");
        assert_eq!(seen.streams(), 1, "{reply:?}: {seen:?}");
        let snapshot = only(&client);
        assert_eq!(snapshot.retries(), 0, "{reply:?}");
        assert_eq!(snapshot.connecting(), 0, "{reply:?}: {snapshot:?}");
        assert_eq!(snapshot.opened(), 1, "{reply:?}: {snapshot:?}");
    }
}

// Case 7 (server resets mid-body): pool_rules.rs,
// a_body_cut_short_is_a_body_error_and_its_connection_is_dropped.

/// Case 8: the request is on the wire, the response future is dropped; the
/// server answers it late, on a connection the pool has let go. (hyper
/// itself would hold a second request back until the first response had
/// been read and thrown away, then close: the close reason and the free
/// slot are what show the pool let go at once.)
#[tokio::test]
async fn a_request_cancelled_mid_exchange_discards_its_connection() {
    let late = Duration::from_millis(150);
    let server = RawHttp1Server::start(move |conn, _| match conn {
        0 => Answer::RespondAfter(late),
        _ => Answer::Respond,
    })
    .await;
    // One connection at most: the next request needs the slot back.
    let mut client = pool(PoolConfig::default().max_connections_per_target(Some(1)));
    let url = server.url("/");
    let mut cancelled = Box::pin(client.clone().oneshot(get(&url, 1)));
    tokio::select! {
        _ = &mut cancelled => panic!("answered before it was cancelled"),
        () = until("the server has read the request", || server.requests().len() == 1) => {}
    }
    drop(cancelled);
    let snapshot = only(&client);
    assert_eq!(snapshot.closed(CloseReason::Abandoned), 1, "{snapshot:?}");
    assert_eq!((snapshot.idle(), snapshot.active()), (0, 0), "{snapshot:?}");

    let (second, _) = send(&mut client, get(&url, 2)).await.unwrap();
    assert_eq!(
        echoed_id(&second),
        Some(2),
        "the earlier response reached it"
    );
    assert_eq!(server_conn(&second), 1);
    // Once the late answer has been written, still nobody gets it.
    tokio::time::sleep(late).await;
    let (third, _) = send(&mut client, get(&url, 3)).await.unwrap();
    assert_eq!(
        echoed_id(&third),
        Some(3),
        "the earlier response reached it"
    );
    assert_eq!(server_conn(&third), 1);
    assert_eq!(server.accepted(), 2);
    assert_eq!(only(&client).retries(), 0);
}

/// Case 9: the pool never drains a dropped body, however little is left:
/// even a body whose every byte has arrived closes its connection.
/// (pool_http1.rs, body_dropped_early_closes_its_connection, drops one of
/// 1 MB after its first frame.)
#[tokio::test]
async fn a_dropped_body_is_never_reused_even_with_nothing_left_to_read() {
    let server = TestServer::start(ServerOptions {
        body_size: Some(2),
        ..ServerOptions::default()
    })
    .await;
    let mut client = pool(PoolConfig::default());
    let url = server.url("/");
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(&url, 1))
        .await
        .unwrap();
    // The 2 bytes arrive with the head; give them time to be read anyway.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(response);
    let snapshot = only(&client);
    assert_eq!(snapshot.closed(CloseReason::Abandoned), 1, "{snapshot:?}");
    assert_eq!(snapshot.idle(), 0, "{snapshot:?}");

    let (second, _) = send(&mut client, get(&url, 2)).await.unwrap();
    assert_eq!(echoed_id(&second), Some(2));
    assert!(!info(&second).reused());
    assert_eq!(server_conn(&second), 1);
    assert_eq!(server.stats.accepted(), 2);
}

/// Case 10, the GOAWAY storm, on loopback with the `h2` server's graceful
/// shutdown. (pool_goaway.rs has the storm on paused time, where it also
/// shows that no task spins, and GOAWAY with streams above the last id,
/// REFUSED_STREAM and stream limits lowered to 1 and 0.)
#[tokio::test]
async fn a_goaway_storm_costs_at_most_one_connection_per_request() {
    const REQUESTS: u64 = 200;
    // Every connection shuts down gracefully right after its first response.
    let server = H2Server::start(H2Options::replying(|s| {
        if s.index == 0 {
            Reply::RespondThenGoAway
        } else {
            Reply::Respond
        }
    }))
    .await;
    let client = h2_pool();
    let url = server.url("/");
    for i in 0..REQUESTS {
        let (parts, _) = bounded(send(&mut client.clone(), get(&url, i)))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(echoed_id(&parts), Some(i));
    }
    let seen = server.seen();
    assert!(
        seen.accepted() as u64 <= REQUESTS + 1,
        "{} connections for {REQUESTS} requests",
        seen.accepted()
    );
    let snapshot = only(&client);
    assert!(
        seen.streams() <= REQUESTS + snapshot.retries(),
        "{} streams for {REQUESTS} requests and {} retries",
        seen.streams(),
        snapshot.retries()
    );
    // Nothing dials once the requests are done.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.seen().accepted(), seen.accepted(), "still dialing");
    let snapshot = only(&client);
    assert_eq!(snapshot.connecting(), 0, "{snapshot:?}");
    assert_eq!(snapshot.opened(), seen.accepted() as u64);
    assert_eq!(snapshot.connect_errors(), 0);
}

// Case 11 (black-holed peer): pool_timing.rs,
// a_blackholed_http2_connection_is_evicted_by_ping. Case 12: below,
// a_moved_endpoint_is_reached_within_the_max_lifetime.

/// Case 13: 1 MB of response headers (1024 of 1 KB each: more headers
/// than hyper reads), and one 512 KB header (more than hyper's ~400 KB read
/// buffer). hyper reports both as a head too large: a typed
/// `ResponseTooLarge`.
#[tokio::test]
async fn huge_response_headers_are_a_typed_error_and_free_the_slot() {
    for (headers, size) in [(1024, 1024), (1, 512 * 1024)] {
        let server = RawHttp1Server::start(move |conn, _| match conn {
            0 => Answer::HugeHead { headers, size },
            _ => Answer::Respond,
        })
        .await;
        // One connection at most: the next request needs the slot back.
        let mut client = pool(PoolConfig::default().max_connections_per_target(Some(1)));
        let url = server.url("/");
        let error = bounded(send(&mut client, get(&url, 1)))
            .await
            .expect_err("the head is too large");
        let case = format!("{headers} headers of {size} bytes");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::ResponseTooLarge, Phase::Send),
            "{case}: {error:?}"
        );
        assert_eq!(
            error.target(),
            Some(format!("http://{}", server.addr).as_str())
        );
        let snapshot = only(&client);
        assert_eq!(snapshot.active(), 0, "{case}: {snapshot:?}");

        let (parts, _) = bounded(send(&mut client, get(&url, 2)))
            .await
            .expect("the slot was freed");
        assert_eq!(echoed_id(&parts), Some(2));
        assert_eq!(server_conn(&parts), 1);
        let snapshot = only(&client);
        assert_eq!(
            (snapshot.active(), snapshot.idle()),
            (0, 1),
            "{case}: {snapshot:?}"
        );
        assert_eq!(
            snapshot.closed(CloseReason::Error),
            1,
            "{case}: {snapshot:?}"
        );
        assert_eq!(snapshot.retries(), 0, "{case}");
        assert_eq!(server.requests().len(), 2, "{case}: retried");
    }
}

// Case 13, a head that stalls or dribbles: pool_timing.rs,
// a_stalled_response_times_out_and_frees_its_connection (`response_timeout`
// bounds the whole head, however slowly its bytes come).

// Case 14, connect refused under a burst: pool_timing.rs,
// connect_error_reaches_every_waiter_without_a_storm.

/// Case 14, connect timeout under a burst of 20.
#[tokio::test(start_paused = true)]
async fn a_connect_timeout_under_a_burst_reaches_every_waiter_without_a_storm() {
    let connector =
        DuplexConnector::new(ServerOptions::default()).with_connect_delay(Duration::from_secs(1));
    let client = client(
        connector.clone(),
        PoolConfig::default()
            .max_connecting_per_target(Some(2))
            .connect_timeout(Some(Duration::from_millis(100))),
    );
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { send(&mut client, get(URL, i)).await })
        })
        .collect();
    settle().await;
    let snapshot = only(&client);
    assert_eq!(
        (snapshot.connecting(), snapshot.waiting()),
        (2, 20),
        "{snapshot:?}"
    );
    advance_within_connect_bound(&client, &requests, 2).await;
    for request in requests {
        let error = request.await.unwrap().expect_err("every connect timed out");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::ConnectTimeout, Phase::Connect),
            "{error:?}"
        );
    }
    assert_eq!(connector.attempts.load(Ordering::SeqCst), 2);
    let snapshot = only(&client);
    assert_eq!((snapshot.waiting(), snapshot.connecting()), (0, 0));
    assert_eq!(snapshot.connect_errors(), 2);
}

/// Dials one in-memory TLS server until told to dial another, at the same
/// address: a transport for the pool's TLS connector.
#[derive(Clone, Debug)]
struct SwitchingConnector {
    first: MemoryConnector,
    then: MemoryConnector,
    switched: Arc<AtomicBool>,
}

impl Service<Uri> for SwitchingConnector {
    type Response = <MemoryConnector as Service<Uri>>::Response;
    type Error = <MemoryConnector as Service<Uri>>::Error;
    type Future = <MemoryConnector as Service<Uri>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if self.switched.load(Ordering::SeqCst) {
            self.then.call(uri)
        } else {
            self.first.call(uri)
        }
    }
}

/// Case 14, TLS handshake failure (a certificate from an unknown CA) under
/// a burst of 20, to a target whose protocol (HTTP/1.1) the pool knows: a
/// cold target gets a single probing connect, which tests no bound.
#[tokio::test(start_paused = true)]
async fn a_rejected_certificate_under_a_burst_reaches_every_waiter_without_a_storm() {
    let ca = TestCa::new("burst-ca");
    // One request per connection, so none stays open after the first.
    let trusted = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            close_after: Some(1),
            ..TlsServerOptions::default()
        },
    );
    let untrusted = TlsServer::in_memory(
        &TestCa::new("other-ca"),
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            handshake_delay: Some(Duration::from_millis(50)),
            ..TlsServerOptions::default()
        },
    );
    let transport = SwitchingConnector {
        first: trusted.connector(),
        then: untrusted.connector(),
        switched: Arc::default(),
    };
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let client = client(
        layer.layer(transport.clone()),
        PoolConfig::default().max_connecting_per_target(Some(2)),
    );
    let url = trusted.url("/");
    let (parts, _) = send(&mut client.clone(), get(&url, 0)).await.unwrap();
    assert_eq!(info(&parts).protocol(), Protocol::Http1);
    settle().await;
    let snapshot = only(&client);
    assert_eq!((snapshot.idle(), snapshot.active()), (0, 0), "{snapshot:?}");

    transport.switched.store(true, Ordering::SeqCst);
    let requests: Vec<_> = (1..=20)
        .map(|i| {
            let mut client = client.clone();
            let req = get(&url, i);
            tokio::spawn(async move { send(&mut client, req).await })
        })
        .collect();
    settle().await;
    let snapshot = only(&client);
    assert_eq!(
        (snapshot.connecting(), snapshot.waiting()),
        (2, 20),
        "{snapshot:?}"
    );
    advance_within_connect_bound(&client, &requests, 2).await;
    for request in requests {
        let error = request.await.unwrap().expect_err("every handshake failed");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::Handshake, Phase::Connect),
            "{error:?}"
        );
        assert_eq!(tls_error(&error).kind(), TlsErrorKind::Certificate);
    }
    assert_eq!(
        untrusted.stats.accepted(),
        2,
        "connects for one failing burst"
    );
    assert!(untrusted.stats.handshakes().is_empty());
    let snapshot = only(&client);
    assert_eq!((snapshot.waiting(), snapshot.connecting()), (0, 0));
    assert_eq!(snapshot.connect_errors(), 2);
}

/// Case 12: the endpoint moves (its name now resolves elsewhere, as after a
/// restart behind DNS): the connection to the old address serves until its
/// max lifetime, its replacement goes to the new one, it retires, and no
/// request fails. Real sockets on Linux loopback (127.0.0.2 and .3), so on
/// real time: every wait polls, bounded, instead of sleeping a fixed time.
#[tokio::test]
async fn a_moved_endpoint_is_reached_within_the_max_lifetime() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Mutex;

    use hyper_util::client::legacy::connect::dns::Name;

    let old = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let port = old.addr.port();
    let new = TestServer::start_on(&format!("127.0.0.3:{port}"), ServerOptions::default()).await;
    let resolves_to = Arc::new(Mutex::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    let dns = {
        let resolves_to = resolves_to.clone();
        tower::service_fn(move |_: Name| {
            let ip = *resolves_to.lock().unwrap();
            async move { Ok::<_, std::io::Error>(std::iter::once(SocketAddr::new(ip, port))) }
        })
    };
    let lifetime = Duration::from_millis(200);
    let mut client = PoolLayer::new(
        PoolConfig::default()
            .max_lifetime(Some(lifetime))
            .lifetime_jitter(0.0),
    )
    .expect("valid config")
    .layer(HttpConnector::new_with_resolver(dns));
    let url = format!("http://svc.test:{port}/");
    let started = tokio::time::Instant::now();
    bounded(send(&mut client, get(&url, 0)))
        .await
        .expect("served");
    *resolves_to.lock().unwrap() = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    // A request every 10 ms until the old connection has retired; bounded.
    let mut id = 0;
    while only(&client).closed(CloseReason::MaxLifetime) == 0 {
        id += 1;
        assert!(id <= 300, "never retired: {:?}", only(&client));
        let sent_at = started.elapsed();
        let on_old = old.stats.requests();
        bounded(send(&mut client, get(&url, id)))
            .await
            .unwrap_or_else(|e| panic!("request {id} failed: {e}"));
        // The connection opened after `started`: its lifetime had not run out.
        if sent_at < lifetime {
            assert_eq!(old.stats.requests(), on_old + 1, "request {id} left early");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Make-before-break: the replacement was up before the old one retired,
    // so every request from now on goes to the new address.
    let on_old = old.stats.requests();
    let on_new = new.stats.requests();
    for id in id + 1..=id + 5 {
        bounded(send(&mut client, get(&url, id)))
            .await
            .unwrap_or_else(|e| panic!("request {id} failed: {e}"));
    }
    assert_eq!(old.stats.requests(), on_old, "still on the old address");
    assert_eq!(new.stats.requests(), on_new + 5);
    until("the old connection is closed", || old.stats.open() == 0).await;
    let snapshot = only(&client);
    assert_eq!(snapshot.opened(), 2, "{snapshot:?}");
    assert_eq!(snapshot.closed_total(), 1, "{snapshot:?}");
}

/// One instance of a [`RestartingServer`], as a test sees it.
#[derive(Debug)]
struct Instance {
    /// What this instance saw.
    stats: Arc<ServerStats>,
    /// While set, the instance is not listening yet: connects are refused.
    down: Arc<AtomicBool>,
}

impl Instance {
    /// Start listening.
    fn restart(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// An in-memory server that crashes and restarts behind one address: a dial
/// reaches whichever instance is up, as a port reaches whichever process
/// listens on it. A crash closes every connection of the instance at once,
/// unanswered; the next instance has counts of its own.
#[derive(Clone, Debug)]
struct RestartingServer {
    up: Arc<std::sync::Mutex<DuplexConnector>>,
}

impl RestartingServer {
    /// A server whose first instance is up, and that instance.
    fn start(options: ServerOptions) -> (Self, Instance) {
        let server = RestartingServer {
            up: Arc::new(std::sync::Mutex::new(DuplexConnector::new(options))),
        };
        let first = server.instance();
        (server, first)
    }

    fn instance(&self) -> Instance {
        let up = self.up.lock().unwrap();
        Instance {
            stats: up.stats.clone(),
            down: up.refuse.clone(),
        }
    }

    /// Crash the instance that is up: its connections close (the last
    /// handle on the instance goes, and with it the signal its connection
    /// tasks watch). Returns the next instance, not yet listening.
    fn crash(&self, options: ServerOptions) -> Instance {
        let next = DuplexConnector::new(options);
        next.refuse.store(true, Ordering::SeqCst);
        *self.up.lock().unwrap() = next;
        self.instance()
    }
}

impl Service<Uri> for RestartingServer {
    type Response = <DuplexConnector as Service<Uri>>::Response;
    type Error = <DuplexConnector as Service<Uri>>::Error;
    type Future = <DuplexConnector as Service<Uri>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut up = self.up.lock().unwrap().clone();
        up.call(uri)
    }
}

/// The server answers after 10 ms, so that requests sent together overlap.
fn overlapping() -> ServerOptions {
    ServerOptions {
        delay: Some(Duration::from_millis(10)),
        ..ServerOptions::default()
    }
}

/// Open `n` pooled connections to the server with `n` requests at once.
async fn warm_up(client: &Pool<RestartingServer>, n: u64) {
    let warm = concurrently(n, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, i)).await.map(|_| ()) }
    })
    .await;
    assert!(warm.iter().all(Result::is_ok), "{warm:?}");
    assert_eq!(only(client).idle(), n as usize);
}

/// The ids of the requests `stats`' instance saw, in order.
fn ids_seen(stats: &ServerStats) -> Vec<u64> {
    let ids = stats.seen().into_iter().filter_map(|seen| seen.request_id);
    ids.map(|id| id.parse().expect("a number")).collect()
}

/// Case 12, the endpoint crashes and restarts at the same address at once
/// (the moved endpoint is above). GETs sent right after, before the pool has
/// run the tasks that see its connections close, meet the dead pooled
/// connections unwritten and go out on new ones (pool_rules.rs has the GET
/// already written when its connection dies, retried once): none fails, each
/// reaches the restarted server exactly once, and the old connections retire.
#[tokio::test(start_paused = true)]
async fn an_endpoint_restarted_at_the_same_address_serves_every_request_after_the_crash() {
    const POOLED: u64 = 3;
    let (server, first) = RestartingServer::start(overlapping());
    let client = client(server.clone(), PoolConfig::default());
    warm_up(&client, POOLED).await;

    let restarted = server.crash(overlapping());
    restarted.restart();
    // No settling: the pool has not run the tasks that see the close yet.
    let burst = concurrently(POOLED, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, 10 + i)).await }
    })
    .await;
    let mut client = client;
    let mut after: Vec<_> = burst.into_iter().collect();
    for i in 20..23 {
        after.push(send(&mut client, get(URL, i)).await);
    }
    for (result, id) in after.iter().zip([10, 11, 12, 20, 21, 22]) {
        let (parts, _) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("request {id} failed: {e:?}"));
        assert_eq!(echoed_id(parts), Some(id));
    }
    let mut served = ids_seen(&restarted.stats);
    served.sort_unstable();
    assert_eq!(
        served,
        [10, 11, 12, 20, 21, 22],
        "each once, all on the restarted server"
    );
    assert_eq!(ids_seen(&first.stats), [0, 1, 2]);
    let snapshot = only(&client);
    let retired = snapshot.closed(CloseReason::ServerClosed) + snapshot.closed(CloseReason::Error);
    assert_eq!(retired, POOLED, "the old connections retired: {snapshot:?}");
    assert!(snapshot.retries() <= POOLED, "{snapshot:?}");
    assert_eq!(snapshot.opened(), POOLED + restarted.stats.accepted());
}

/// Case 12 with downtime: while the endpoint is down, a request fails with a
/// typed connect error; once it is back at the same address, the next
/// request is served there, on a new connection.
#[tokio::test(start_paused = true)]
async fn while_a_crashed_endpoint_is_down_requests_fail_typed_and_then_reach_it_once_restarted() {
    let (server, first) = RestartingServer::start(overlapping());
    let mut client = client(server.clone(), PoolConfig::default());
    warm_up(&client, 2).await;

    let restarted = server.crash(overlapping());
    let error = send(&mut client, get(URL, 10))
        .await
        .expect_err("the endpoint is down");
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Connect, Phase::Connect),
        "{error:?}"
    );
    let snapshot = only(&client);
    assert_eq!((snapshot.idle(), snapshot.active()), (0, 0), "{snapshot:?}");

    restarted.restart();
    let (parts, _) = send(&mut client, get(URL, 11))
        .await
        .expect("served once restarted");
    assert_eq!(echoed_id(&parts), Some(11));
    assert!(!info(&parts).reused());
    assert_eq!(ids_seen(&restarted.stats), [11]);
    assert_eq!(ids_seen(&first.stats), [0, 1]);
    assert_eq!(restarted.stats.accepted(), 1);
}

/// Case 3: a middlebox resets connections idle longer than 2 s. Told the
/// limit (an idle timeout below it), the pool never offers the middlebox a
/// connection to reset; not told, it meets resets (and survives them: the
/// request had not been written, so it goes out on a new connection).
#[tokio::test(start_paused = true)]
async fn a_middlebox_resetting_idle_connections_resets_none_once_the_pool_is_told() {
    // Gaps between requests, in tenths of a second: some under the
    // middlebox's limit, some over.
    const GAPS: [u64; 16] = [1, 15, 30, 5, 25, 2, 40, 19, 21, 3, 35, 8, 22, 1, 50, 12];
    /// The middlebox's resets, and the pool's stale skips and retries.
    async fn run(config: PoolConfig) -> (u64, u64) {
        let connector =
            DuplexConnector::new(ServerOptions::default()).with_idle_reset(Duration::from_secs(2));
        let mut client = client(connector.clone(), config);
        for (id, gap) in (0..).zip(GAPS) {
            tokio::time::sleep(Duration::from_millis(gap * 100)).await;
            send(&mut client, get(URL, id))
                .await
                .unwrap_or_else(|e| panic!("request {id} failed: {e}"));
        }
        let target = only(&client);
        (
            connector.resets.load(Ordering::SeqCst),
            target.stale_skips() + target.retries(),
        )
    }
    let told = PoolConfig::default().idle_timeout(Some(Duration::from_millis(1500)));
    let (resets, _) = run(told).await;
    assert_eq!(
        resets, 0,
        "the pool retired idle connections before the middlebox"
    );
    let (resets, recovered) = run(PoolConfig::default()).await;
    assert!(
        resets > 0,
        "with a 55 s idle timeout the middlebox resets some"
    );
    // Each reset met a request that went out again on a new connection,
    // and the pool counted it.
    assert_eq!(
        recovered, resets,
        "every reset request was skipped or retried"
    );
}
