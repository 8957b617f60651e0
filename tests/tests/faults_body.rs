//! Faults around bodies and heads: a request body replayed through
//! `ReplayBody` when its reused connection closes under it, a response body
//! reset midway (HTTP/1.1 and HTTP/2), a response head dribbled past
//! `response_timeout`, and heads over `max_response_header_bytes`.
//!
//! Every server is on loopback; every wait on real time is bounded, and no
//! assertion is about how long anything took.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Service, ServiceExt};
use tower_reuse_pool::events::{CloseReason, RetryReason};
use tower_reuse_pool::{ConnId, ConnectionInfo, ErrorKind, Phase, Pool, PoolConfig, ReplayBody};
use tower_reuse_tests::h2server::{H2Options, H2Server, Reply};
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server, RawRequest};
use tower_reuse_tests::{bounded, echoed_id, get, info, only, pool, send, server_conn};

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

/// The kind of the I/O error in `error`'s source chain, if any.
fn io_error_kind(error: &tower_reuse_pool::Error) -> Option<io::ErrorKind> {
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

/// GET 1, then GET 2 on the same connection, whose body the server resets
/// midway once `release` is called (after the first body bytes are read).
/// Returns the connection's id and the body's error, a body error.
async fn reset_midway(
    client: &mut Pool<HttpConnector>,
    url: &str,
    release: impl FnOnce(),
) -> (ConnId, tower_reuse_pool::Error) {
    let (first, _) = bounded(send(client, get(url, 1))).await.unwrap();
    let response = bounded(async { client.ready().await?.call(get(url, 2)).await })
        .await
        .expect("a response head");
    let second = ConnectionInfo::of(&response).expect("every response carries ConnectionInfo");
    assert!(second.reused());
    assert_eq!(second.id(), info(&first).id());
    let mut body = response.into_body();
    let frame = bounded(body.frame())
        .await
        .expect("a first frame")
        .expect("body bytes before the reset");
    assert!(frame.data_ref().is_some_and(|data| !data.is_empty()));
    release();
    let err = bounded(body.collect())
        .await
        .expect_err("the body was reset");
    assert_eq!((err.kind(), err.phase()), (ErrorKind::Body, Phase::Body));
    assert!(err.may_have_been_processed());
    (info(&first).id(), err)
}

#[tokio::test]
async fn an_http1_body_reset_midway_on_a_reused_connection_is_a_body_error_never_retried() {
    let server = RawHttp1Server::start(|conn, index| match (conn, index) {
        (0, 1) => Answer::ResetMidBody,
        _ => Answer::Respond,
    })
    .await;
    let url = server.url("/");
    let mut client = pool(PoolConfig::default());
    let (reset, err) = reset_midway(&mut client, &url, || server.release()).await;
    assert_eq!(io_error_kind(&err), Some(io::ErrorKind::ConnectionReset));
    let snapshot = only(&client);
    assert_eq!(snapshot.retries(), 0, "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::Error), 1, "{snapshot:?}");
    assert_eq!((snapshot.active(), snapshot.idle()), (0, 0), "{snapshot:?}");

    let (third, _) = bounded(send(&mut client, get(&url, 3))).await.unwrap();
    assert!(!info(&third).reused());
    assert_ne!(info(&third).id(), reset);
    assert_eq!(server_conn(&third), 1);
    let ids: Vec<_> = server.requests().iter().map(|r| r.id).collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3)], "request 2 was sent again");
}

#[tokio::test]
async fn an_http2_stream_reset_midway_is_a_body_error_and_its_connection_serves_on() {
    let server = H2Server::start(H2Options::replying(|at| match at.index {
        1 => Reply::ResetMidBody,
        _ => Reply::Respond,
    }))
    .await;
    let url = server.url("/");
    let mut client = pool(PoolConfig::default().http2_prior_knowledge(true));
    let (reset, _) = reset_midway(&mut client, &url, || server.release()).await;
    let snapshot = only(&client);
    assert_eq!(snapshot.retries(), 0, "{snapshot:?}");
    assert_eq!(snapshot.closed_total(), 0, "{snapshot:?}");

    // A stream reset is not a connection error: the next stream goes on
    // the same connection.
    let (third, body) = bounded(send(&mut client, get(&url, 3))).await.unwrap();
    assert_eq!(&body[..], b"ok");
    assert!(info(&third).reused());
    assert_eq!(info(&third).id(), reset);
    let seen = server.seen();
    assert_eq!((seen.accepted(), seen.streams_on(0)), (1, 3), "{seen:?}");
    assert_eq!(only(&client).opened(), 1);
}

#[tokio::test]
async fn a_dribbled_head_fails_at_the_response_timeout_and_frees_the_slot() {
    // About 70 bytes of head, 10 ms apart: 0.7 s for the whole head, never
    // more than 10 ms without a byte.
    let server = RawHttp1Server::start(|conn, _| match conn {
        0 => Answer::DribbleHead(Duration::from_millis(10)),
        _ => Answer::Respond,
    })
    .await;
    let url = server.url("/");
    let mut client = pool(
        PoolConfig::default()
            .max_connections_per_target(Some(1))
            .response_timeout(Some(Duration::from_millis(200))),
    );
    let err = bounded(send(&mut client, get(&url, 1)))
        .await
        .expect_err("the head takes longer than the timeout");
    assert_eq!(
        (err.kind(), err.phase()),
        (ErrorKind::ResponseTimeout, Phase::Send),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.may_have_been_processed());
    let snapshot = only(&client);
    assert_eq!((snapshot.active(), snapshot.idle()), (0, 0), "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::Abandoned), 1, "{snapshot:?}");

    let (parts, _) = bounded(send(&mut client, get(&url, 2)))
        .await
        .expect("the slot was freed");
    assert_eq!(echoed_id(&parts), Some(2));
    assert_eq!(server_conn(&parts), 1);
    assert!(!info(&parts).reused());
    assert_eq!(only(&client).retries(), 0);
}

#[tokio::test]
async fn an_http1_head_over_max_response_header_bytes_is_response_too_large() {
    // 4 headers of 8 KiB: over a 16 KiB limit, far below hyper's own bound;
    // 4 of 2 KiB: within it.
    let server = RawHttp1Server::start(|conn, _| match conn {
        0 => Answer::HugeHead {
            headers: 4,
            size: 8 * 1024,
        },
        _ => Answer::HugeHead {
            headers: 4,
            size: 2 * 1024,
        },
    })
    .await;
    let url = server.url("/");
    let mut client = pool(
        PoolConfig::default()
            .max_connections_per_target(Some(1))
            .max_response_header_bytes(Some(16 * 1024)),
    );
    let err = bounded(send(&mut client, get(&url, 1)))
        .await
        .expect_err("the head is over the limit");
    assert_eq!(
        (err.kind(), err.phase()),
        (ErrorKind::ResponseTooLarge, Phase::Send),
        "{err:?}"
    );
    assert!(err.may_have_been_processed());
    let target = format!("http://{}", server.addr);
    assert_eq!(err.target(), Some(target.as_str()));
    assert_eq!(
        err.to_string(),
        format!(
            "response head too large; the request may have been processed for {target} (send phase)"
        )
    );
    let snapshot = only(&client);
    assert_eq!((snapshot.active(), snapshot.idle()), (0, 0), "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::Error), 1, "{snapshot:?}");

    let (parts, _) = bounded(send(&mut client, get(&url, 2)))
        .await
        .expect("a head within the limit, on a new connection");
    assert_eq!(echoed_id(&parts), Some(2));
    assert_eq!(server_conn(&parts), 1);
    assert_eq!(only(&client).retries(), 0);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_head_over_hyper_own_bound_is_response_too_large_unless_the_limit_is_higher() {
    // One header of 512 KiB: more than hyper's read buffer of about 400 KiB.
    let server = RawHttp1Server::start(|_, _| Answer::HugeHead {
        headers: 1,
        size: 512 * 1024,
    })
    .await;
    let url = server.url("/");
    let mut client = pool(PoolConfig::default());
    let err = bounded(send(&mut client, get(&url, 1))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResponseTooLarge, "{err:?}");
    assert_eq!(only(&client).active(), 0);

    let mut client = pool(PoolConfig::default().max_response_header_bytes(Some(1024 * 1024)));
    let (parts, _) = bounded(send(&mut client, get(&url, 2)))
        .await
        .expect("a head within a limit above hyper's own");
    assert_eq!(echoed_id(&parts), Some(2));
}

#[tokio::test]
async fn an_http2_head_over_max_response_header_bytes_resets_only_its_stream() {
    // One 6 KiB header against a 4 KiB limit (hyper's own is 16 KiB): h2
    // resets the stream; heads far over the limit end the connection.
    let server = H2Server::start(H2Options::replying(|at| match at.index {
        1 => Reply::HugeHead(6 * 1024),
        _ => Reply::Respond,
    }))
    .await;
    let url = server.url("/");
    let mut client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_response_header_bytes(Some(4 * 1024)),
    );
    let (first, _) = bounded(send(&mut client, get(&url, 1))).await.unwrap();
    let err = bounded(send(&mut client, get(&url, 2)))
        .await
        .expect_err("the head is over the limit");
    assert_eq!((err.kind(), err.phase()), (ErrorKind::Send, Phase::Send));
    let (third, _) = bounded(send(&mut client, get(&url, 3))).await.unwrap();
    assert_eq!(info(&third).id(), info(&first).id());
    let snapshot = only(&client);
    assert_eq!(
        (snapshot.opened(), snapshot.retries()),
        (1, 0),
        "{snapshot:?}"
    );
    assert_eq!(server.seen().streams_on(0), 3);
}
