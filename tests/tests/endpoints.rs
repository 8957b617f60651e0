//! Endpoint addresses distinct from the logical authority: the pool connects
//! to the endpoint while `Host`, the TLS server name and certificate
//! verification stay the logical name; endpoints of one service never share
//! connections. Real servers on 127.0.0.x, real TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Layer;
use tower_reuse_pool::tls::TlsLayer;
use tower_reuse_pool::{Endpoint, PoolConfig, PoolLayer, Target};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::tls_server::{TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{get, pool, send};

/// A request for `url` routed to `endpoint`.
fn to(url: &str, endpoint: SocketAddr, id: u64) -> http::Request<Full<Bytes>> {
    let mut req = get(url, id);
    req.extensions_mut().insert(Endpoint::new(endpoint));
    req
}

fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector
}

#[tokio::test]
async fn tls_to_an_endpoint_verifies_and_names_the_logical_host() {
    let ca = TestCa::new("endpoints");
    let options = |name: &str| TlsServerOptions {
        names: vec![name.to_owned()],
        ..TlsServerOptions::default()
    };
    // The certificate names only the logical host, not 127.0.0.2.
    let right = TlsServer::start_on("127.0.0.2:0", &ca, options("inventory.internal")).await;
    let wrong = TlsServer::start_on("127.0.0.3:0", &ca, options("other.internal")).await;
    let layer = TlsLayer::new(Arc::new(ca.client_config(None)));
    let mut client = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
        .unwrap()
        .layer(layer.layer(tcp()));

    let port = right.addr().unwrap().port();
    let url = format!("https://inventory.internal:{port}/items");
    let (parts, _) = send(&mut client, to(&url, right.addr().unwrap(), 1))
        .await
        .expect("the logical name verifies at the endpoint");
    assert_eq!(parts.status, 200);
    let handshake = &right.stats.handshakes()[0];
    assert_eq!(handshake.server_name.as_deref(), Some("inventory.internal"));
    let seen = right.stats.seen();
    let expected = format!("inventory.internal:{port}");
    assert_eq!(seen[0].host.as_deref(), Some(expected.as_str()));

    // An endpoint whose certificate is for another name fails verification:
    // the address is never what the certificate is checked against.
    let error = send(&mut client, to(&url, wrong.addr().unwrap(), 2))
        .await
        .expect_err("a certificate for another name");
    assert!(error.is_connect(), "{error:?}");
    let message = format!("{error:#}");
    assert!(message.contains("certificate"), "{message}");
    assert!(
        message.contains("127.0.0.3"),
        "the endpoint is named: {message}"
    );
    assert_eq!(wrong.stats.requests(), 0);
}

#[tokio::test]
async fn endpoints_of_one_service_never_share_connections() {
    let a = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let b = TestServer::start_on("127.0.0.3:0", ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default());
    let url = "http://svc.internal:8080/x";
    for id in 0..6 {
        let endpoint = if id % 2 == 0 { a.addr } else { b.addr };
        let (parts, _) = send(&mut client, to(url, endpoint, id)).await.unwrap();
        assert_eq!(parts.status, 200);
    }
    for server in [&a, &b] {
        assert_eq!(server.stats.accepted(), 1, "one connection each, reused");
        assert_eq!(server.stats.requests(), 3);
        assert!(
            server
                .stats
                .seen()
                .iter()
                .all(|seen| seen.host.as_deref() == Some("svc.internal:8080"))
        );
    }
    let snapshot = client.control().snapshot();
    let service = Target::from_uri(&url.parse().unwrap(), None).unwrap();
    for server in [&a, &b] {
        let target = service
            .clone()
            .with_endpoint(Some(Endpoint::new(server.addr)));
        let counts = snapshot.target(&target).expect("a target per endpoint");
        assert_eq!((counts.opened(), counts.reused()), (1, 2));
        // One target's snapshot alone says the same.
        let alone = client.control().target_snapshot(&target).unwrap();
        assert_eq!((alone.opened(), alone.reused()), (1, 2));
    }
    assert!(snapshot.target(&service).is_none());
    assert!(client.control().target_snapshot(&service).is_none());

    // Warm means this endpoint has a free connection, not the service.
    let control = client.control();
    assert!(control.is_warm(&to(url, a.addr, 9)));
    let c: SocketAddr = "127.0.0.4:9".parse().unwrap();
    assert!(!control.is_warm(&to(url, c, 9)));
    assert!(!control.is_warm(&get(url, 9)));
}

#[tokio::test]
async fn a_uri_connector_is_never_handed_the_address_of_an_https_endpoint() {
    let server = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let mut client = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
        .unwrap()
        .layer(tcp());
    let error = send(
        &mut client,
        to("https://inventory.internal:443/", server.addr, 1),
    )
    .await
    .expect_err("no connector here verifies the logical name");
    assert!(error.is_connect(), "{error:?}");
    assert!(format!("{error:#}").contains("TlsConnector"), "{error:#}");
    assert_eq!(server.stats.accepted(), 0);
}

#[tokio::test]
async fn warm_up_opens_one_connection_ahead_and_only_when_none_is_free() {
    let server = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default());
    let control = client.control();
    let url = "http://svc.internal:8080/";
    let target = Target::from_uri(&url.parse().unwrap(), None)
        .unwrap()
        .with_endpoint(Some(Endpoint::new(server.addr)));
    // Twice at once: one connect covers both.
    control.warm_up(&target);
    control.warm_up(&target);
    tower_reuse_tests::until("warmed", || control.is_warm(&to(url, server.addr, 0))).await;
    assert_eq!(server.stats.accepted(), 1);
    // Warm already: nothing more.
    control.warm_up(&target);
    let (parts, _) = send(&mut client, to(url, server.addr, 1)).await.unwrap();
    let info = tower_reuse_tests::info(&parts);
    assert!(
        info.wait().is_zero(),
        "the request found it ready: {info:?}"
    );
    assert_eq!(server.stats.accepted(), 1);
    // With reuse off for the target, never.
    let other = TestServer::start_on("127.0.0.3:0", ServerOptions::default()).await;
    let cold = target
        .clone()
        .with_endpoint(Some(Endpoint::new(other.addr)));
    control
        .set_target_config(
            &cold,
            Some(tower_reuse_pool::TargetConfig::default().reuse(false)),
        )
        .unwrap();
    control.warm_up(&cold);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(other.stats.accepted(), 0);
}

#[tokio::test]
async fn each_endpoint_of_a_name_resumes_only_its_own_tls_sessions() {
    use tower_reuse_pool::TlsHandshake;
    use tower_reuse_pool::tls::{SessionCache, SessionCacheConfig};
    let ca = TestCa::new("endpoints");
    // Two servers behind one name, each with its own session keys, one
    // ticket per handshake: a ticket offered to the wrong one is lost.
    let options = || TlsServerOptions {
        names: vec!["inventory.internal".to_owned()],
        tickets_per_handshake: Some(1),
        ..TlsServerOptions::default()
    };
    let a = TlsServer::start_on("127.0.0.2:0", &ca, options()).await;
    let b = TlsServer::start_on("127.0.0.3:0", &ca, options()).await;
    let cache = SessionCache::new(SessionCacheConfig::default()).unwrap();
    let layer = TlsLayer::new(Arc::new(ca.client_config(None))).session_cache(Some(cache));
    // One request per connection (the kill switch: no connection opened
    // ahead of the next request): every request a new handshake.
    let config = PoolConfig::default().reuse(false);
    let mut client = PoolLayer::<Full<Bytes>>::new(config)
        .unwrap()
        .layer(layer.layer(tcp()));
    let url = "https://inventory.internal:8443/";
    let mut kinds = Vec::new();
    for (id, server) in [(1, &a), (2, &b), (3, &a), (4, &b)] {
        let (parts, _) = send(&mut client, to(url, server.addr().unwrap(), id))
            .await
            .unwrap();
        kinds.push(tower_reuse_tests::info(&parts).tls_handshake());
    }
    let full = Some(TlsHandshake::Full);
    let resumed = Some(TlsHandshake::Resumed);
    assert_eq!(kinds, [full, full, resumed, resumed]);
    assert_eq!(
        a.stats.handshakes()[1].resumed_from,
        Some(0),
        "a's own ticket"
    );
    assert_eq!(
        b.stats.handshakes()[1].resumed_from,
        Some(0),
        "b's own ticket"
    );
}
