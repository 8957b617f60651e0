//! The pool's TLS connector against real rustls servers: the transport it
//! dials, session resumption and its partition scopes, the session cache's
//! bounds and ticket age, HelloRetryRequest reporting, per-partition client
//! identities, typed handshake failures and timeouts, ALPN, scheduled key
//! updates and a maximum age. Loopback servers for the handshakes, in-memory
//! ones on paused time for the schedules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{HandshakeKind, NamedGroup};
use tower::Layer;
use tower_reuse_pool::events::{CheckedOut, CloseReason, Connected, PoolEvents};
use tower_reuse_pool::tls::{
    SessionCache, SessionCacheConfig, SessionCacheStats, TlsConnector, TlsErrorKind, TlsLayer,
};
use tower_reuse_pool::{
    Connect, ErrorKind, Partition, Phase, Pool, PoolConfig, PoolLayer, Protocol, Target,
    TargetSnapshot, TlsHandshake,
};
use tower_reuse_tests::tls_server::{
    Alpn, ClientAuth, Handshake, MemoryConnector, TestCa, TlsServer, TlsServerOptions, TlsVersion,
};
use tower_reuse_tests::{concurrently, echoed_id, get, info, send, server_conn, settle, tls_error};

/// The TLS events the pool reported, in order.
#[derive(Debug, Default)]
struct TlsEvents {
    connected: Mutex<Vec<Option<TlsHandshake>>>,
    checked_out: Mutex<Vec<Option<TlsHandshake>>>,
}

impl PoolEvents for TlsEvents {
    fn on_connect(&self, event: &Connected<'_>) {
        self.connected.lock().unwrap().push(event.tls());
    }
    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.checked_out.lock().unwrap().push(event.tls());
    }
}

/// A pool over `layer` over `transport`, and the TLS connector (whose
/// clones share its stats).
fn tls_pool<C: Connect>(
    layer: &TlsLayer,
    transport: C,
    config: PoolConfig,
    events: Arc<dyn PoolEvents>,
) -> (TlsConnector<C>, Pool<TlsConnector<C>>) {
    let connector = layer.layer(transport);
    let pool = PoolLayer::<Full<Bytes>>::new(config)
        .unwrap()
        .shared_events(events)
        .layer(connector.clone());
    (connector, pool)
}

/// TCP to loopback servers: hyper-util's connector, letting `https` through.
fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector
}

fn https_pool(
    layer: &TlsLayer,
    config: PoolConfig,
) -> (
    TlsConnector<HttpConnector>,
    Pool<TlsConnector<HttpConnector>>,
) {
    tls_pool(layer, tcp(), config, Arc::new(()))
}

fn snapshot_of<C: Connect>(client: &Pool<TlsConnector<C>>, url: &str) -> TargetSnapshot {
    snapshot_in(client, url, None)
}

fn snapshot_in<C: Connect>(
    client: &Pool<TlsConnector<C>>,
    url: &str,
    partition: Option<Partition>,
) -> TargetSnapshot {
    let target = Target::from_uri(&url.parse().unwrap(), partition).unwrap();
    client
        .control()
        .snapshot()
        .target(&target)
        .cloned()
        .expect("the pool knows the target")
}

/// A GET for `url` in `partition`.
fn get_in(url: &str, id: u64, partition: &str) -> http::Request<Full<Bytes>> {
    let mut req = get(url, id);
    req.extensions_mut().insert(Partition::new(partition));
    req
}

/// HTTP/1.1 over TLS 1.3, one request per connection: every request
/// handshakes, so resumption shows on each.
fn one_request_per_connection() -> TlsServerOptions {
    TlsServerOptions {
        alpn: Alpn::Http1Only,
        close_after: Some(1),
        ..TlsServerOptions::default()
    }
}

#[tokio::test]
async fn resumes_the_session_a_completed_request_left() {
    let ca = TestCa::new("resumption-ca");
    let server = TlsServer::start(&ca, one_request_per_connection()).await;
    let events = Arc::new(TlsEvents::default());
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (connector, mut client) = tls_pool(&layer, tcp(), PoolConfig::default(), events.clone());
    let url = server.url("/");
    let mut kinds = Vec::new();
    for i in 0..4 {
        let (parts, _) = send(&mut client, get(&url, i)).await.unwrap();
        let kind = info(&parts).tls_handshake();
        let seen = server.stats.handshake(server_conn(&parts)).unwrap();
        assert_eq!(
            seen.resumed,
            kind == Some(TlsHandshake::Resumed),
            "request {i}: the server saw {seen:?}, the pool reported {kind:?}"
        );
        kinds.push(kind);
    }
    use TlsHandshake::{Full, Resumed};
    assert_eq!(
        kinds,
        [Some(Full), Some(Resumed), Some(Resumed), Some(Resumed)]
    );
    assert_eq!((server.stats.full(), server.stats.resumed()), (1, 3));
    let snapshot = snapshot_of(&client, &url);
    assert_eq!((snapshot.tls_full(), snapshot.tls_resumed()), (1, 3));
    assert_eq!(snapshot.opened(), 4);
    let stats = connector.stats();
    assert_eq!((stats.full, stats.resumed, stats.failed), (1, 3, 0));
    assert_eq!(*events.connected.lock().unwrap(), kinds);
    assert_eq!(*events.checked_out.lock().unwrap(), kinds);
}

#[tokio::test]
async fn never_resumes_a_session_across_partitions() {
    let ca = TestCa::new("partition-ca");
    let server = TlsServer::start(&ca, one_request_per_connection()).await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (_, mut client) = https_pool(&layer, PoolConfig::default());
    let url = server.url("/");
    let mut seen = Vec::new();
    for (i, partition) in ["a", "b", "a", "b"].into_iter().enumerate() {
        let (parts, _) = send(&mut client, get_in(&url, i as u64, partition))
            .await
            .unwrap();
        let handshake = server.stats.handshake(server_conn(&parts)).unwrap();
        assert_eq!(
            info(&parts).tls_handshake() == Some(TlsHandshake::Resumed),
            handshake.resumed
        );
        seen.push((partition, handshake.resumed));
    }
    // B's first connect had A's fresh ticket at hand and did not use it;
    // each partition then resumes its own.
    assert_eq!(
        seen,
        [("a", false), ("b", false), ("a", true), ("b", true)],
        "(partition, resumed) as the server saw them"
    );
    for partition in ["a", "b"] {
        let snapshot = snapshot_in(&client, &url, Some(Partition::new(partition)));
        assert_eq!((snapshot.tls_full(), snapshot.tls_resumed()), (1, 1));
    }
}

#[tokio::test]
async fn each_partition_presents_its_own_client_certificate() {
    let ca = TestCa::new("mtls-ca");
    let server = TlsServer::start(
        &ca,
        TlsServerOptions {
            client_auth: ClientAuth::Optional,
            ..one_request_per_connection()
        },
    )
    .await;
    let a = ca.client_identity("tenant-a");
    let b = ca.client_identity("tenant-b");
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)))
        .partition_config(Partition::new("a"), Arc::new(ca.client_config(Some(&a))))
        .partition_config(Partition::new("b"), Arc::new(ca.client_config(Some(&b))));
    let (_, mut client) = https_pool(&layer, PoolConfig::default());
    let url = server.url("/");
    let mut resumed = 0;
    for round in 0..3u64 {
        for (partition, identity) in [("a", a.name()), ("b", b.name())] {
            let (parts, _) = send(&mut client, get_in(&url, round, partition))
                .await
                .unwrap();
            let handshake = server.stats.handshake(server_conn(&parts)).unwrap();
            assert_eq!(
                handshake.client.as_deref(),
                Some(identity),
                "partition {partition}, round {round}: {handshake:?}"
            );
            resumed += usize::from(handshake.resumed);
        }
        // Requests without a partition use the base configuration: no
        // certificate.
        let (parts, _) = send(&mut client, get(&url, round)).await.unwrap();
        let handshake = server.stats.handshake(server_conn(&parts)).unwrap();
        assert_eq!(handshake.client, None, "unpartitioned: {handshake:?}");
    }
    // Rounds 2 and 3 resumed, each with the identity of its partition.
    assert_eq!(resumed, 4, "{:?}", server.stats.handshakes());
    assert_eq!(server.stats.handshakes().len(), 9);
}

#[tokio::test]
async fn rejects_a_certificate_from_an_untrusted_ca() {
    let ca = TestCa::new("server-ca");
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let other = TestCa::new("other-ca");
    let layer = TlsLayer::new(Arc::new(other.client_config(None)));
    let (connector, mut client) = https_pool(&layer, PoolConfig::default());
    let url = server.url("/");
    let error = send(&mut client, get(&url, 1)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Handshake, "{error:?}");
    assert_eq!(error.phase(), Phase::Connect);
    let target = url.trim_end_matches('/');
    assert_eq!(error.target(), Some(target));
    assert!(error.to_string().contains(target), "{error}");
    let tls = tls_error(&error);
    assert_eq!(tls.kind(), TlsErrorKind::Certificate, "{tls:?}");
    assert_eq!(tls.server_name(), "127.0.0.1");
    let snapshot = snapshot_of(&client, &url);
    assert_eq!(
        (snapshot.idle(), snapshot.active(), snapshot.connecting()),
        (0, 0, 0),
        "{snapshot:?}"
    );
    assert_eq!((snapshot.opened(), snapshot.connect_errors()), (0, 1));
    assert_eq!(connector.stats().failed, 1);
    assert!(server.stats.handshakes().is_empty());
}

#[tokio::test]
async fn rejects_a_host_that_is_not_a_server_name() {
    let ca = TestCa::new("name-ca");
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (connector, mut client) = https_pool(&layer, PoolConfig::default());
    // `http::Uri` takes the host; no TLS server name can be made of it.
    let error = send(&mut client, get("https://a..b:443/", 1))
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Handshake, Phase::Connect),
        "{error:?}"
    );
    assert_eq!(error.target(), Some("https://a..b:443"));
    let tls = tls_error(&error);
    assert_eq!(tls.kind(), TlsErrorKind::InvalidServerName, "{tls:?}");
    assert_eq!(tls.server_name(), "a..b");
    assert_eq!(connector.stats().failed, 0, "no handshake was attempted");
}

#[tokio::test]
async fn gives_up_on_a_stalled_handshake_at_handshake_timeout() {
    let ca = TestCa::new("stall-ca");
    let server = TlsServer::start(
        &ca,
        TlsServerOptions {
            stall: true,
            ..TlsServerOptions::default()
        },
    )
    .await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)))
        .handshake_timeout(Some(Duration::from_millis(200)));
    // The pool's own connect timeout is the backstop, of another kind.
    let (connector, mut client) = https_pool(
        &layer,
        PoolConfig::default().connect_timeout(Some(Duration::from_secs(2))),
    );
    let error = send(&mut client, get(&server.url("/"), 1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Handshake, "{error:?}");
    assert_eq!(tls_error(&error).kind(), TlsErrorKind::Timeout);
    assert_eq!(connector.stats().failed, 1);
    assert_eq!(server.stats.accepted(), 1, "TCP got through");
    assert!(server.stats.handshakes().is_empty());
}

#[tokio::test]
async fn fails_when_the_server_selects_no_protocol_the_client_offered() {
    let ca = TestCa::new("alpn-ca");
    let server = TlsServer::start(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Off,
            ..TlsServerOptions::default()
        },
    )
    .await;
    let mut config = ca.client_config(None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let layer = TlsLayer::new(Arc::new(config));
    let (_, mut client) = https_pool(&layer, PoolConfig::default());
    let error = send(&mut client, get(&server.url("/"), 1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Handshake, "{error:?}");
    let tls = tls_error(&error);
    assert_eq!(tls.kind(), TlsErrorKind::AlpnMismatch, "{tls:?}");
    // TLS itself succeeded: the server completed its side, selecting nothing.
    let handshakes = server.stats.handshakes();
    assert!(
        handshakes.len() <= 1 && handshakes.iter().all(|h| h.alpn.is_none()),
        "{handshakes:?}"
    );
    assert_eq!(server.stats.requests(), 0);
}

#[tokio::test]
async fn alpn_chooses_between_http2_and_http1() {
    let ca = TestCa::new("alpn-choice-ca");
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    for (alpn, protocol, selected) in [
        (Alpn::H2AndHttp1, Protocol::Http2, Some(&b"h2"[..])),
        (Alpn::Http1Only, Protocol::Http1, Some(&b"http/1.1"[..])),
        (Alpn::Off, Protocol::Http1, None),
    ] {
        let server = TlsServer::start(
            &ca,
            TlsServerOptions {
                alpn,
                ..TlsServerOptions::default()
            },
        )
        .await;
        let (_, mut client) = https_pool(&layer, PoolConfig::default());
        let url = server.url("/");
        let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
        assert_eq!(info(&parts).protocol(), protocol, "server ALPN {alpn:?}");
        assert_eq!(snapshot_of(&client, &url).protocol(), Some(protocol));
        let handshake = server.stats.handshake(server_conn(&parts)).unwrap();
        assert_eq!(handshake.alpn.as_deref(), selected, "server ALPN {alpn:?}");
    }
}

#[tokio::test]
async fn a_cold_burst_to_an_h2_server_opens_one_connection() {
    let ca = TestCa::new("burst-h2-ca");
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (_, client) = https_pool(&layer, PoolConfig::default());
    let url = server.url("/");
    concurrently(32, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move {
            let (parts, _) = send(&mut client, get(&url, i)).await.unwrap();
            assert_eq!(echoed_id(&parts), Some(i));
            assert_eq!(info(&parts).protocol(), Protocol::Http2);
        }
    })
    .await;
    assert_eq!(
        server.stats.accepted(),
        1,
        "{:?}",
        snapshot_of(&client, &url)
    );
    assert_eq!(server.stats.requests(), 32);
}

#[tokio::test]
async fn a_cold_burst_to_an_http1_server_opens_at_most_one_connection_per_request() {
    let ca = TestCa::new("burst-h1-ca");
    let mut options = TlsServerOptions {
        alpn: Alpn::Http1Only,
        ..TlsServerOptions::default()
    };
    options.http.delay = Some(Duration::from_millis(20));
    let server = TlsServer::start(&ca, options).await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (_, client) = https_pool(&layer, PoolConfig::default());
    let url = server.url("/");
    concurrently(32, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move {
            let (parts, _) = send(&mut client, get(&url, i)).await.unwrap();
            assert_eq!(echoed_id(&parts), Some(i));
            assert_eq!(info(&parts).protocol(), Protocol::Http1);
        }
    })
    .await;
    let accepted = server.stats.accepted();
    assert!((1..=32).contains(&accepted), "{accepted} connections");
    assert_eq!(snapshot_of(&client, &url).opened(), accepted);
}

/// A pool over an in-memory TLS server, for paused time; idle connections
/// stay for 10 minutes.
fn memory_pool(
    layer: &TlsLayer,
    server: &TlsServer,
) -> (
    TlsConnector<MemoryConnector>,
    Pool<TlsConnector<MemoryConnector>>,
) {
    let config = PoolConfig::default().idle_timeout(Some(Duration::from_secs(600)));
    tls_pool(layer, server.connector(), config, Arc::new(()))
}

#[tokio::test(start_paused = true)]
async fn updates_tls13_keys_on_schedule_on_the_same_connection() {
    let ca = TestCa::new("key-update-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            ..TlsServerOptions::default()
        },
    );
    let every = Duration::from_secs(60);
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).key_update_interval(Some(every));
    let (connector, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    let conn = server_conn(&parts);
    assert_eq!(
        server.stats.handshake(conn).unwrap().version,
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    for n in 1..=3u64 {
        tokio::time::advance(every - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            connector.stats().key_updates,
            n - 1,
            "early, before update {n}"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(connector.stats().key_updates, n, "update {n} is due");
        // The server reads the request under the new keys.
        let (parts, _) = send(&mut client, get(&url, n)).await.unwrap();
        assert_eq!(server_conn(&parts), conn, "after update {n}");
        assert_eq!(echoed_id(&parts), Some(n));
    }
    assert_eq!(server.stats.accepted(), 1);
    assert_eq!(server.stats.failed_handshakes(), 0);
}

#[tokio::test(start_paused = true)]
async fn key_updates_do_not_wear_out_an_idle_connection() {
    let ca = TestCa::new("idle-key-update-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            ..TlsServerOptions::default()
        },
    );
    let every = Duration::from_secs(10);
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).key_update_interval(Some(every));
    let (connector, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    let conn = server_conn(&parts);
    // rustls (like BoringSSL) closes a connection after 32 KeyUpdates with
    // no application data between them; 50 intervals idle is past that.
    for _ in 0..50 {
        tokio::time::advance(every).await;
        settle().await;
    }
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    assert_eq!(
        server_conn(&parts),
        conn,
        "the idle connection was lost; key updates: {}",
        connector.stats().key_updates
    );
    assert_eq!(server.stats.accepted(), 1);
    // One update after the request went out; none while nothing was sent.
    assert_eq!(connector.stats().key_updates, 1);
}

#[tokio::test(start_paused = true)]
async fn tls12_connections_get_no_key_updates_and_keep_working() {
    let ca = TestCa::new("tls12-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            version: TlsVersion::Tls12,
            ..TlsServerOptions::default()
        },
    );
    let every = Duration::from_secs(60);
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).key_update_interval(Some(every));
    let (connector, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    let conn = server_conn(&parts);
    assert_eq!(
        server.stats.handshake(conn).unwrap().version,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    for n in 1..=3u64 {
        tokio::time::advance(every).await;
        settle().await;
        let (parts, _) = send(&mut client, get(&url, n)).await.unwrap();
        assert_eq!(server_conn(&parts), conn, "interval {n}");
    }
    let stats = connector.stats();
    assert_eq!((stats.key_updates, stats.failed), (0, 0));
    assert_eq!(server.stats.accepted(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_age_retires_a_connection_without_failing_requests() {
    let ca = TestCa::new("max-age-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            ..TlsServerOptions::default()
        },
    );
    let max_age = Duration::from_secs(10);
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).max_age(Some(max_age));
    let (_, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    let first = server_conn(&parts);
    tokio::time::advance(max_age / 2).await;
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    assert_eq!(server_conn(&parts), first);
    tokio::time::advance(max_age / 2 - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(
        snapshot_of(&client, &url).closed_total(),
        0,
        "retired early"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    // The replacement connected (resuming the session), then the old one retired.
    let snapshot = snapshot_of(&client, &url);
    assert_eq!(snapshot.closed(CloseReason::MaxLifetime), 1, "{snapshot:?}");
    assert_eq!(snapshot.opened(), 2);
    assert_eq!(snapshot.idle(), 1);
    assert_eq!((snapshot.tls_full(), snapshot.tls_resumed()), (1, 1));
    let (parts, _) = send(&mut client, get(&url, 2)).await.unwrap();
    assert_ne!(server_conn(&parts), first);
    assert_eq!(server.stats.accepted(), 2);
}

/// Three generations of connections, each retired at `max_age`.
async fn retire_generations(alpn: Alpn) {
    let ca = TestCa::new("max-age-generations-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn,
            ..TlsServerOptions::default()
        },
    );
    let max_age = Duration::from_secs(10);
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).max_age(Some(max_age));
    let (_, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let mut conns = Vec::new();
    for generation in 0..3u64 {
        let (parts, _) = send(&mut client, get(&url, generation)).await.unwrap();
        conns.push(server_conn(&parts));
        tokio::time::advance(max_age).await;
        settle().await;
        let snapshot = snapshot_of(&client, &url);
        assert_eq!(
            snapshot.closed(CloseReason::MaxLifetime),
            generation + 1,
            "generation {generation}: {snapshot:?}"
        );
        assert_eq!(server.stats.open(), 1, "generation {generation}");
    }
    conns.dedup();
    assert_eq!(conns.len(), 3, "one connection per generation: {conns:?}");
}

#[tokio::test(start_paused = true)]
async fn max_age_retires_every_generation_of_http1_connections() {
    retire_generations(Alpn::Http1Only).await;
}

#[tokio::test(start_paused = true)]
async fn max_age_retires_every_generation_of_http2_connections() {
    retire_generations(Alpn::H2AndHttp1).await;
}

#[tokio::test]
async fn a_default_http_connector_carries_https_targets() {
    let ca = TestCa::new("transport-ca");
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    // `HttpConnector::new()` enforces `http`: it refuses `https` URIs, so
    // the TLS connector must dial it with the plain transport target.
    let (connector, mut client) = tls_pool(
        &layer,
        HttpConnector::new(),
        PoolConfig::default(),
        Arc::new(()),
    );
    let url = server.url("/");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    assert_eq!(echoed_id(&parts), Some(1));
    assert_eq!(info(&parts).tls_handshake(), Some(TlsHandshake::Full));
    assert_eq!(server.stats.handshakes().len(), 1);
    assert_eq!(connector.stats().full, 1);
}

#[test]
fn the_transport_of_an_https_target_is_http_with_the_port_written_out() {
    let tenant = Some(Partition::new("tenant"));
    let target = |uri: &str, partition: Option<Partition>| {
        Target::from_uri(&uri.parse().unwrap(), partition).unwrap()
    };
    for (https, transport) in [
        ("https://example.test/", "example.test:443"),
        ("https://example.test:8443/", "example.test:8443"),
        ("https://[::1]/", "[::1]:443"),
    ] {
        let tcp = target(https, tenant.clone()).transport();
        assert_eq!(tcp.scheme(), &http::uri::Scheme::HTTP, "{https}");
        assert_eq!(tcp.authority().as_str(), transport, "{https}");
        assert_eq!(tcp.partition(), tenant.as_ref(), "{https}");
        assert_eq!(tcp, target(&format!("http://{transport}/"), tenant.clone()));
    }
    // Plain targets are their own transport: no port is added.
    let plain = target("http://example.test/", None);
    assert_eq!(plain.transport(), plain);
    assert_eq!(plain.transport().authority().port(), None);
}

#[tokio::test]
async fn dials_a_port_less_https_target_on_port_443() {
    let ca = TestCa::new("port-less-ca");
    let server = TlsServer::in_memory(&ca, TlsServerOptions::default());
    let transport = server.connector();
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (_, mut client) = tls_pool(
        &layer,
        transport.clone(),
        PoolConfig::default(),
        Arc::new(()),
    );
    let url = server.url("/");
    assert_eq!(url, "https://localhost/");
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    assert_eq!(echoed_id(&parts), Some(1));
    let dialed: Vec<String> = transport.dialed().iter().map(|u| u.to_string()).collect();
    assert_eq!(dialed, ["http://localhost:443/"]);
}

#[tokio::test]
async fn a_hello_retry_request_is_reported_as_full_with_retry() {
    let ca = TestCa::new("hello-retry-ca");
    let config = ca.client_config(None);
    // The client sends a key share for its first group only.
    let first_group = config.crypto_provider().kx_groups[0].name();
    assert_eq!(first_group, NamedGroup::X25519);
    // No tickets: every connection is a full handshake, on which a retry
    // shows (rustls reports a resumed handshake as resumed, retry or not).
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            kx_groups: Some(vec![NamedGroup::secp256r1]),
            tickets_per_handshake: Some(0),
            ..one_request_per_connection()
        },
    );
    let events = Arc::new(TlsEvents::default());
    let layer = TlsLayer::new(Arc::new(config));
    let (connector, mut client) = tls_pool(
        &layer,
        server.connector(),
        PoolConfig::default(),
        events.clone(),
    );
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    let seen = server.stats.handshake(server_conn(&parts)).unwrap();
    assert_eq!(
        seen.kind,
        Some(HandshakeKind::FullWithHelloRetryRequest),
        "{seen:?}"
    );
    assert_eq!(
        info(&parts).tls_handshake(),
        Some(TlsHandshake::FullWithRetry)
    );
    assert_eq!(
        *events.connected.lock().unwrap(),
        [Some(TlsHandshake::FullWithRetry)]
    );
    assert_eq!(
        *events.checked_out.lock().unwrap(),
        [Some(TlsHandshake::FullWithRetry)]
    );
    let snapshot = snapshot_of(&client, &url);
    assert_eq!((snapshot.tls_full(), snapshot.tls_resumed()), (1, 0));
    assert_eq!((connector.stats().full, connector.stats().resumed), (1, 0));

    // The session cache kept the group the server chose as a hint: the next
    // connection sends a key share for it at once, with no retry.
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    let seen = server.stats.handshake(server_conn(&parts)).unwrap();
    assert_eq!(seen.kind, Some(HandshakeKind::Full), "{seen:?}");
    assert_eq!(info(&parts).tls_handshake(), Some(TlsHandshake::Full));
    use TlsHandshake::{Full, FullWithRetry};
    assert_eq!(
        *events.connected.lock().unwrap(),
        [Some(FullWithRetry), Some(Full)]
    );
    let snapshot = snapshot_of(&client, &url);
    assert_eq!((snapshot.tls_full(), snapshot.tls_resumed()), (2, 0));
    assert_eq!(server.stats.accepted(), 2);
}

/// Records the session cache's ticket count at every connect.
#[derive(Debug)]
struct TicketsAtConnect {
    cache: SessionCache,
    seen: Mutex<Vec<usize>>,
}

impl PoolEvents for TicketsAtConnect {
    fn on_connect(&self, _event: &Connected<'_>) {
        let tickets = self.cache.stats().tickets();
        self.seen.lock().unwrap().push(tickets);
    }
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_burst_resumes_no_more_connections_than_tickets_per_server() {
    const TICKETS_PER_SERVER: usize = 2;
    const BURST: u64 = 6;
    let ca = TestCa::new("ticket-bound-ca");
    // Four tickets per handshake; each handshake waits a second, so every
    // hello of the burst goes out (taking its ticket, if any) before the
    // first ticket of the burst comes back.
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            tickets_per_handshake: Some(4),
            handshake_delay: Some(Duration::from_secs(1)),
            ..TlsServerOptions::default()
        },
    );
    let cache =
        SessionCache::new(SessionCacheConfig::default().tickets_per_server(TICKETS_PER_SERVER))
            .unwrap();
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).session_cache(Some(cache.clone()));
    let events = Arc::new(TicketsAtConnect {
        cache: cache.clone(),
        seen: Mutex::default(),
    });
    // Every request on a new connection (the kill switch: no connection
    // opened ahead, as a replacement under `max_requests_per_connection`
    // would be); the burst within the default eight concurrent connects.
    let config = PoolConfig::default()
        .reuse(false)
        .idle_timeout(Some(Duration::from_secs(600)));
    let (connector, client) = tls_pool(&layer, server.connector(), config, events.clone());
    let url = server.url("/");

    let (parts, _) = send(&mut client.clone(), get(&url, 0)).await.unwrap();
    assert_eq!(info(&parts).tls_handshake(), Some(TlsHandshake::Full));
    let stats = cache.stats();
    assert_eq!(
        (stats.inserts(), stats.tickets(), stats.tickets_evicted()),
        (4, TICKETS_PER_SERVER, 2),
        "after the first handshake: {stats:?}"
    );

    let burst: Vec<_> = (1..=BURST)
        .map(|i| {
            let mut client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&mut client, get(&url, i)).await })
        })
        .collect();
    settle().await;
    assert_eq!(
        server.stats.accepted(),
        1 + BURST,
        "one connect per request"
    );
    assert_eq!(server.stats.handshakes().len(), 1, "the burst is held");
    let stats = cache.stats();
    assert_eq!(
        (stats.hits(), stats.misses(), stats.tickets()),
        (
            TICKETS_PER_SERVER as u64,
            1 + BURST - TICKETS_PER_SERVER as u64,
            0
        ),
        "every hello of the burst is out: {stats:?}"
    );

    let mut kinds = Vec::new();
    for request in burst {
        let (parts, _) = request.await.unwrap().unwrap();
        kinds.push(info(&parts).tls_handshake().unwrap());
    }
    let resumed = kinds
        .iter()
        .filter(|k| **k == TlsHandshake::Resumed)
        .count();
    assert_eq!(resumed, TICKETS_PER_SERVER, "pool: {kinds:?}");
    let burst_seen = &server.stats.handshakes()[1..];
    assert_eq!(burst_seen.len() as u64, BURST);
    assert_eq!(
        burst_seen.iter().filter(|h| h.resumed).count(),
        TICKETS_PER_SERVER,
        "server: {burst_seen:?}"
    );
    assert_eq!(connector.stats().resumed, TICKETS_PER_SERVER as u64);

    // Every handshake, resumed ones too, brought four tickets; the cache
    // kept two at a time.
    let stats = cache.stats();
    assert_eq!(stats.inserts(), 4 * (1 + BURST));
    assert_eq!(stats.tickets(), TICKETS_PER_SERVER, "{stats:?}");
    assert_eq!(
        stats.tickets_evicted(),
        stats.inserts() - stats.hits() - TICKETS_PER_SERVER as u64,
        "{stats:?}"
    );
    let seen = events.seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, 1 + BURST);
    assert!(
        seen.iter().all(|&tickets| tickets <= TICKETS_PER_SERVER),
        "tickets held at each connect: {seen:?}"
    );
}

/// Connect (a full handshake, two tickets), wait `wait`, reconnect (the
/// server closes each connection after its request), with tickets good for
/// 10 s: the second handshake as the server and the pool saw it, and the
/// cache's counts.
async fn reconnect_after(wait: Duration) -> (Handshake, TlsHandshake, SessionCacheStats) {
    let ca = TestCa::new("ticket-age-ca");
    let server = TlsServer::in_memory(&ca, one_request_per_connection());
    let cache = SessionCache::new(
        SessionCacheConfig::default().max_ticket_age(Some(Duration::from_secs(10))),
    )
    .unwrap();
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).session_cache(Some(cache.clone()));
    let (_, mut client) = memory_pool(&layer, &server);
    let url = server.url("/");
    let (parts, _) = send(&mut client, get(&url, 0)).await.unwrap();
    assert_eq!(info(&parts).tls_handshake(), Some(TlsHandshake::Full));
    assert_eq!(cache.stats().tickets(), 2);
    // No look at the cache while waiting: `stats()` drops expired tickets
    // itself, and the connect is to find them.
    tokio::time::advance(wait).await;
    let (parts, _) = send(&mut client, get(&url, 1)).await.unwrap();
    let seen = server.stats.handshake(server_conn(&parts)).unwrap();
    let kind = info(&parts).tls_handshake().unwrap();
    assert_eq!(server.stats.accepted(), 2);
    (seen, kind, cache.stats())
}

#[tokio::test(start_paused = true)]
async fn resumes_with_a_ticket_just_younger_than_max_ticket_age() {
    let (seen, kind, stats) = reconnect_after(Duration::from_millis(9_999)).await;
    assert_eq!(seen.kind, Some(HandshakeKind::Resumed), "{seen:?}");
    assert_eq!(kind, TlsHandshake::Resumed);
    assert_eq!((stats.hits(), stats.tickets_expired()), (1, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn does_not_resume_with_a_ticket_at_max_ticket_age() {
    let (seen, kind, stats) = reconnect_after(Duration::from_secs(10)).await;
    assert_eq!(seen.kind, Some(HandshakeKind::Full), "{seen:?}");
    assert_eq!(kind, TlsHandshake::Full);
    // Both tickets of the first handshake expired unused; the second
    // handshake's two are held.
    assert_eq!(
        (stats.hits(), stats.tickets_expired(), stats.tickets()),
        (0, 2, 2),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_default_settings_a_stalled_handshake_times_out_as_tls_at_5s() {
    let ca = TestCa::new("default-stall-ca");
    let server = TlsServer::in_memory(
        &ca,
        TlsServerOptions {
            stall: true,
            ..TlsServerOptions::default()
        },
    );
    // Every default: the handshake timeout (5 s) fires before the pool's
    // connect timeout (10 s), so the error says the TLS handshake stalled.
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let (connector, client) = tls_pool(
        &layer,
        server.connector(),
        PoolConfig::default(),
        Arc::new(()),
    );
    let url = server.url("/");
    let request = tokio::spawn({
        let mut client = client.clone();
        let url = url.clone();
        async move { send(&mut client, get(&url, 1)).await }
    });
    settle().await;
    assert_eq!(server.stats.accepted(), 1, "the transport is up");
    tokio::time::advance(Duration::from_millis(4_999)).await;
    settle().await;
    assert!(!request.is_finished(), "gave up before 5 s");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(request.is_finished(), "still waiting at 5 s");
    let error = request.await.unwrap().unwrap_err();
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Handshake, Phase::Connect),
        "{error:?}"
    );
    let tls = tls_error(&error);
    assert_eq!(tls.kind(), TlsErrorKind::Timeout, "{tls:?}");
    assert_eq!(connector.stats().failed, 1);
    assert_eq!(snapshot_of(&client, &url).connect_errors(), 1);
    assert!(server.stats.handshakes().is_empty());
}
