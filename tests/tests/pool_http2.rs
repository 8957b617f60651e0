//! The pool over real h2c servers on loopback, and over in-memory ones on
//! paused time where timing decides.

use std::time::Duration;

use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_reuse_pool::{ConnectionInfo, PoolConfig, Protocol, Target};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{client, concurrently, echoed_id, get, only, pool, send, until};

/// The target of the tests on paused time.
const URL: &str = "http://h2.test/";

#[tokio::test]
async fn multiplexes_requests_on_one_connection() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default().http2_prior_knowledge(true));
    concurrently(32u64, |i| {
        let mut client = client.clone();
        let url = server.url("/");
        async move {
            let (parts, _) = send(&mut client, get(&url, i)).await.unwrap();
            assert_eq!(echoed_id(&parts), Some(i));
            let info = parts.extensions.get::<ConnectionInfo>().unwrap().clone();
            assert_eq!(info.protocol(), Protocol::Http2);
        }
    })
    .await;
    assert_eq!(server.stats.accepted(), 1);
}

/// On paused time over in-memory connections: every stream is in flight
/// before the server's delay ends, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn opens_connections_up_to_the_servers_stream_limit() {
    let connector = DuplexConnector::new(ServerOptions {
        h2_max_streams: Some(4),
        delay: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    });
    let client = client(
        connector.clone(),
        PoolConfig::default().http2_prior_knowledge(true),
    );
    // Learn the limit first, as a warm client would have.
    send(&mut client.clone(), get(URL, 0)).await.unwrap();
    concurrently(16u64, |i| {
        let mut client = client.clone();
        async move {
            let (parts, _) = send(&mut client, get(URL, i)).await.unwrap();
            assert_eq!(echoed_id(&parts), Some(i));
        }
    })
    .await;
    // 16 concurrent streams at 4 per connection: 4 connections, all used
    // to their limit at once, none beyond.
    assert_eq!(connector.stats.accepted(), 4);
    assert_eq!(connector.stats.peak_in_flight(), 16);
}

#[tokio::test]
async fn scale_out_can_be_switched_off() {
    let server = TestServer::start(ServerOptions {
        h2_max_streams: Some(2),
        delay: Some(Duration::from_millis(20)),
        ..ServerOptions::default()
    })
    .await;
    let client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .http2_scale_out(false),
    );
    concurrently(8u64, |i| {
        let mut client = client.clone();
        let url = server.url("/");
        async move {
            send(&mut client, get(&url, i)).await.unwrap();
        }
    })
    .await;
    assert_eq!(server.stats.accepted(), 1);
    assert!(server.stats.peak_in_flight() <= 2);
}

#[tokio::test]
async fn max_requests_per_connection_holds_for_http2() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_requests_per_connection(Some(2)),
    );
    let url = server.url("/");
    for i in 0..6 {
        send(&mut client, get(&url, i)).await.unwrap();
    }
    // Two requests per connection; the replacement opened at the sixth
    // request's checkout waits for the next.
    until("the last replacement is up", || only(&client).idle() == 1).await;
    assert_eq!(server.stats.accepted(), 4, "two requests per connection");
    let target = client.control().snapshot().targets[0].clone();
    assert!(
        target.closed(tower_reuse_pool::events::CloseReason::MaxRequests) >= 2,
        "{target:?}"
    );
}

/// A connection-level checkout takes an origin-form request over HTTP/2
/// as it does over HTTP/1.1: the target gives the `:scheme` and
/// `:authority` the request's URI leaves out.
#[tokio::test]
async fn a_checkout_sends_an_origin_form_request_over_http2() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default().http2_prior_knowledge(true));
    let target = Target::from_uri(&server.url("/").parse().unwrap(), None).unwrap();
    let mut handle = client.checkout(&target).await.unwrap();
    let response = handle
        .ready()
        .await
        .unwrap()
        .call(get("/origin-form", 5))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, http::StatusCode::OK);
    assert_eq!(echoed_id(&parts), Some(5));
    body.collect().await.unwrap();
}
