//! What an error says at the top: the immediate cause, in words a user can
//! act on, with the kind and the source chain kept underneath.

use std::error::Error as _;
use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;
use tower::Layer;
use tower_reuse_pool::tls::{SessionCache, SessionCacheConfig, TlsLayer};
use tower_reuse_pool::{ErrorKind, Phase, PoolConfig};
use tower_reuse_tests::tls_server::{TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{client, get, pool, send};

/// A loopback address nothing listens on: bound, then closed.
async fn refusing_addr() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Every error in `error`'s source chain, outermost first.
fn chain(error: &tower_reuse_pool::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause);
        source = cause.source();
    }
    chain
}

#[tokio::test]
async fn a_refused_connect_says_refused_at_the_top() {
    let addr = refusing_addr().await;
    let mut client = pool(PoolConfig::default());
    let error = send(&mut client, get(&format!("http://{addr}/"), 1))
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Connect, Phase::Connect)
    );
    let shown = error.to_string();
    assert!(shown.contains("refused"), "{shown}");
    assert!(shown.contains(&format!("http://{addr}")), "{shown}");
    assert!(!shown.contains("os error"), "{shown}");
    // The source chain is kept: the operating system's error is in it.
    assert!(
        chain(&error).iter().any(|e| e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_https_target_through_a_pool_without_tls_names_the_missing_tls_connector() {
    let addr = refusing_addr().await;
    // `HttpConnector` refuses anything but `http` by default.
    let mut client = pool(PoolConfig::default());
    let error = send(&mut client, get(&format!("https://{addr}/"), 1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("TLS connector"), "{shown}");
    assert!(shown.contains("tls::TlsConnector"), "{shown}");
    assert!(
        !chain(&error).is_empty(),
        "the connector's own error is kept"
    );
}

#[tokio::test]
async fn a_rejected_certificate_says_so_at_the_top() {
    let ca = TestCa::new("trusted-ca");
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let stranger = TestCa::new("stranger-ca");
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    let layer = TlsLayer::new(Arc::new(stranger.client_config(None)));
    let mut client = client(layer.layer(tcp), PoolConfig::default());
    let error = send(&mut client, get(&server.url("/"), 1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Handshake, "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("certificate"), "{shown}");
}

#[test]
fn a_session_cache_setting_is_not_called_a_pool_setting() {
    let error = SessionCacheConfig::default()
        .tickets_per_server(0)
        .validate()
        .unwrap_err();
    assert_eq!(error.field(), "tickets_per_server");
    let shown = error.to_string();
    assert!(shown.contains("TLS session cache"), "{shown}");
    assert!(!shown.contains("pool"), "{shown}");

    let cache = SessionCache::new(SessionCacheConfig::default()).unwrap();
    let shown = cache.set_max_servers(0).unwrap_err().to_string();
    assert!(shown.contains("TLS session cache"), "{shown}");
    assert!(!shown.contains("pool"), "{shown}");

    // A pool setting still says pool.
    let shown = PoolConfig::default()
        .max_idle_per_target(Some(0))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(shown.contains("invalid pool configuration"), "{shown}");
}
