//! Faults around bodies: a request body replayed through `ReplayBody` when
//! its reused connection closes under it.
//!
//! Every server is on loopback; every wait on real time is bounded, and no
//! assertion is about how long anything took.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_reuse_pool::events::RetryReason;
use tower_reuse_pool::{ErrorKind, Phase, Pool, PoolConfig, ReplayBody};
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server, RawRequest};
use tower_reuse_tests::{bounded, get, info, only, pool, send};

/// A PUT of 1 KiB to `url`, replayable when `replay` says so.
fn put(url: &str, replay: bool) -> (http::Request<Full<Bytes>>, Bytes) {
    let payload = Bytes::from(
        (0..1024)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut request = http::Request::put(url);
    if replay {
        let again = payload.clone();
        request = request.extension(ReplayBody::new(move || Full::new(again.clone())));
    }
    let request = request
        .body(Full::new(payload.clone()))
        .expect("valid request");
    (request, payload)
}

/// The keep-alive race, ready to happen: a server whose connection 0
/// closes as its second request is written (once it has read it all), and
/// a pool whose connection to it has served one GET (its response head is
/// returned).
async fn keep_alive_race() -> (RawHttp1Server, Pool<HttpConnector>, http::response::Parts) {
    let server = RawHttp1Server::start(|conn, index| match (conn, index) {
        (0, 1) => Answer::Close,
        _ => Answer::Respond,
    })
    .await;
    let mut client = pool(PoolConfig::default());
    let (first, _) = bounded(send(&mut client, get(&server.url("/"), 1)))
        .await
        .unwrap();
    (server, client, first)
}

/// The requests the server read with `method`, in the order read.
fn requests_with(server: &RawHttp1Server, method: &str) -> Vec<RawRequest> {
    let mut requests = server.requests();
    requests.retain(|r| r.method == method);
    requests
}

#[tokio::test]
async fn a_put_with_a_replay_body_is_sent_again_whole_when_its_connection_closes_under_it() {
    let (server, mut client, first) = keep_alive_race().await;
    let (put, payload) = put(&server.url("/"), true);
    let (parts, body) = bounded(send(&mut client, put))
        .await
        .expect("replayed on a new connection");
    assert_eq!(&body[..], b"ok");
    let retried = info(&parts);
    assert_eq!(retried.retried(), Some(RetryReason::ClosedIdempotent));
    assert_ne!(retried.id(), info(&first).id());
    assert!(!retried.reused());
    let puts = requests_with(&server, "PUT");
    let seen: Vec<_> = puts.iter().map(|r| (r.conn, r.index)).collect();
    assert_eq!(seen, [(0, 1), (1, 0)]);
    for put in &puts {
        assert_eq!(put.body, payload, "a whole body on connection {}", put.conn);
    }
    assert_eq!(only(&client).retries(), 1);
}

#[tokio::test]
async fn a_put_with_a_body_and_no_replay_body_may_have_been_processed() {
    let (server, mut client, _) = keep_alive_race().await;
    let (put, payload) = put(&server.url("/"), false);
    let err = bounded(send(&mut client, put)).await.unwrap_err();
    assert_eq!((err.kind(), err.phase()), (ErrorKind::Send, Phase::Send));
    assert!(err.may_have_been_processed(), "{err}");
    assert!(err.to_string().contains("may have been processed"), "{err}");
    let puts = requests_with(&server, "PUT");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].body, payload);
    assert_eq!(server.accepted(), 1);
    assert_eq!(only(&client).retries(), 0);
}

#[tokio::test]
async fn a_post_with_a_replay_body_is_still_never_replayed() {
    let (server, mut client, _) = keep_alive_race().await;
    let post = http::Request::post(server.url("/"))
        .extension(ReplayBody::new(|| {
            Full::new(Bytes::from_static(b"pay once"))
        }))
        .body(Full::new(Bytes::from_static(b"pay once")))
        .unwrap();
    let err = bounded(send(&mut client, post)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Send, "{err:?}");
    assert!(err.may_have_been_processed());
    assert_eq!(requests_with(&server, "POST").len(), 1);
    assert_eq!(server.accepted(), 1);
    assert_eq!(only(&client).retries(), 0);
}
