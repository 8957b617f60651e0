//! The pool over real HTTP/1.1 servers on loopback.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{ConnectionInfo, ErrorKind, Partition, PoolConfig, PoolLayer, Target};
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{concurrently, echoed_id, get, only, pool, send, server_conn, until};

#[tokio::test]
async fn reuses_one_connection_for_sequential_requests() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default());
    for i in 0..10 {
        let (parts, body) = send(&mut client, get(&server.url("/"), i)).await.unwrap();
        assert_eq!(body.len(), 16);
        let info = parts.extensions.get::<ConnectionInfo>().unwrap();
        assert_eq!(info.reused(), i > 0, "request {i}");
    }
    assert_eq!(server.stats.accepted(), 1);
    let snapshot = client.control().snapshot();
    let target = &snapshot.targets[0];
    assert_eq!((target.opened(), target.reused(), target.idle()), (1, 9, 1));
}

/// The connection's facts ride in the pool's body, and in the response's
/// extensions only when asked for: a layer that replaces the body then
/// still finds them.
#[tokio::test]
async fn connection_info_rides_in_the_body_and_in_extensions_when_asked() {
    let server = TestServer::start(ServerOptions::default()).await;
    for extension in [false, true] {
        let mut client = pool(PoolConfig::default().connection_info_extension(extension));
        for i in 0..2 {
            let response = client
                .ready()
                .await
                .unwrap()
                .call(get(&server.url("/"), i))
                .await
                .unwrap();
            let info = ConnectionInfo::of(&response).unwrap().clone();
            assert_eq!(info.reused(), i > 0);
            assert_eq!(response.body().connection_info().id(), info.id());
            let in_extensions = response.extensions().get::<ConnectionInfo>();
            assert_eq!(
                in_extensions.map(ConnectionInfo::id),
                extension.then_some(info.id())
            );
            // With another body, only the extension is left to read.
            let mapped = response.map(BodyExt::boxed);
            assert_eq!(
                ConnectionInfo::of(&mapped).map(ConnectionInfo::id),
                extension.then_some(info.id())
            );
            mapped.into_body().collect().await.unwrap();
        }
    }
}

#[tokio::test]
async fn partitions_never_share_connections() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default());
    let mut seen = std::collections::HashMap::new();
    for i in 0..12u64 {
        let tenant = ["a", "b", "c"][(i % 3) as usize];
        let mut req = get(&server.url("/"), i);
        req.extensions_mut().insert(Partition::new(tenant));
        let (parts, _) = send(&mut client, req).await.unwrap();
        let conn = server_conn(&parts);
        let owner = seen.entry(conn).or_insert(tenant);
        assert_eq!(*owner, tenant, "connection {conn} crossed partitions");
    }
    assert_eq!(server.stats.accepted(), 3);
    assert_eq!(client.control().snapshot().targets.len(), 3);
}

#[tokio::test]
async fn steady_load_opens_at_most_one_connection_per_worker() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default());
    let workers = 16;
    concurrently(workers, |w| {
        let mut client = client.clone();
        let url = server.url("/");
        async move {
            for i in 0..50 {
                let id = w * 1000 + i;
                let (parts, _) = send(&mut client, get(&url, id)).await.unwrap();
                assert_eq!(echoed_id(&parts), Some(id));
            }
        }
    })
    .await;
    assert!(
        server.stats.accepted() <= workers,
        "opened {} connections for {workers} workers",
        server.stats.accepted()
    );
    assert_eq!(server.stats.requests(), workers * 50);
}

#[tokio::test]
async fn responses_match_requests_under_concurrent_cancellations() {
    let server = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(2)),
        ..ServerOptions::default()
    })
    .await;
    let client = pool(PoolConfig::default());
    let completed: u64 = concurrently(16u64, |w| {
        let mut client = client.clone();
        let url = server.url("/");
        async move {
            let mut completed = 0;
            for i in 0..40u64 {
                let id = w * 1000 + i;
                // Cancel most requests at varying points: while waiting,
                // mid-exchange, or mid-body. Every fourth gets time to
                // finish however loaded the machine, so completions on
                // connections cancelled under other requests are checked.
                let limit = if i % 4 == 0 {
                    Duration::from_secs(10)
                } else {
                    Duration::from_micros(fastrand_like(id) % 4000)
                };
                match tokio::time::timeout(limit, send(&mut client, get(&url, id))).await {
                    Ok(Ok((parts, _))) => {
                        assert_eq!(echoed_id(&parts), Some(id), "misdelivered response");
                        completed += 1;
                    }
                    Ok(Err(e)) => panic!("request {id} failed: {e}"),
                    Err(_) => {}
                }
            }
            completed
        }
    })
    .await
    .into_iter()
    .sum();
    assert!(completed >= 16 * 10, "{completed} completed");
    // Every connection is accounted for: nothing leaked as active.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets[0].active(), 0);
    assert_eq!(snapshot.targets[0].waiting(), 0);
}

fn fastrand_like(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33
}

#[tokio::test]
async fn body_dropped_early_closes_its_connection() {
    let server = TestServer::start(ServerOptions {
        body_size: Some(1 << 20),
        ..ServerOptions::default()
    })
    .await;
    let mut client = pool(PoolConfig::default());
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(&server.url("/"), 1))
        .await
        .unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await.unwrap().unwrap();
    drop(body);
    let (parts, body) = send(&mut client, get(&server.url("/"), 2)).await.unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert!(!parts.extensions.get::<ConnectionInfo>().unwrap().reused());
    assert_eq!(server.stats.accepted(), 2);
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets[0].closed(CloseReason::Abandoned), 1);
}

#[tokio::test]
async fn connection_close_and_http10_are_not_pooled() {
    for options in [
        ServerOptions {
            max_requests_per_conn: Some(1),
            ..ServerOptions::default()
        },
        ServerOptions {
            http10: true,
            ..ServerOptions::default()
        },
    ] {
        let server = TestServer::start(options).await;
        let mut client = pool(PoolConfig::default());
        for i in 0..3 {
            let (parts, _) = send(&mut client, get(&server.url("/"), i)).await.unwrap();
            assert!(!parts.extensions.get::<ConnectionInfo>().unwrap().reused());
        }
        assert_eq!(server.stats.accepted(), 3);
        let snapshot = client.control().snapshot();
        assert_eq!(snapshot.targets[0].closed(CloseReason::ServerHint), 3);
    }
}

/// A caller's own `Connection: close` retires the connection at its
/// response, as the server's does, even from a server that does not echo
/// it: the connection is never offered again, and closes as asked.
#[tokio::test]
async fn a_callers_connection_close_is_not_pooled() {
    let server = RawHttp1Server::start(|_, _| Answer::Respond).await;
    let mut client = pool(PoolConfig::default());
    for i in 0..3 {
        let mut req = get(&server.url("/"), i);
        req.headers_mut().insert(
            http::header::CONNECTION,
            "keep-alive, Close".parse().unwrap(),
        );
        let (parts, _) = send(&mut client, req).await.unwrap();
        assert!(!parts.extensions.get::<ConnectionInfo>().unwrap().reused());
    }
    assert_eq!(server.accepted(), 3);
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets[0].closed(CloseReason::ServerHint), 3);
}

#[tokio::test]
async fn max_requests_per_connection_rotates_connections() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default().max_requests_per_connection(Some(3)));
    for i in 0..9 {
        send(&mut client, get(&server.url("/"), i)).await.unwrap();
    }
    // Three connections served three requests each; the replacement
    // opened at the ninth request's checkout waits for the next.
    until("the last replacement is up", || only(&client).idle() == 1).await;
    assert_eq!(server.stats.accepted(), 4);
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets[0].closed(CloseReason::MaxRequests), 3);
}

#[tokio::test]
async fn kill_switch_gives_every_request_a_new_connection() {
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = pool(PoolConfig::default());
    send(&mut client, get(&server.url("/"), 0)).await.unwrap();
    client.control().set_reuse(false).unwrap();
    for i in 1..5 {
        let (parts, _) = send(&mut client, get(&server.url("/"), i)).await.unwrap();
        assert!(!parts.extensions.get::<ConnectionInfo>().unwrap().reused());
    }
    assert_eq!(server.stats.accepted(), 5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let snapshot = client.control().snapshot();
    assert_eq!(snapshot.targets[0].closed(CloseReason::KillSwitch), 5);
    assert_eq!(snapshot.targets[0].idle(), 0);
    client.control().set_reuse(true).unwrap();
    send(&mut client, get(&server.url("/"), 9)).await.unwrap();
    let (parts, _) = send(&mut client, get(&server.url("/"), 10)).await.unwrap();
    assert!(parts.extensions.get::<ConnectionInfo>().unwrap().reused());
}

/// The keep-alive race: the server closes connections idle for 1 s while
/// requests arrive every 0.5 to 1.5 s. No GET may fail.
#[tokio::test]
async fn server_idle_close_race_fails_no_get() {
    let server = TestServer::start(ServerOptions {
        idle_close: Some(Duration::from_secs(1)),
        ..ServerOptions::default()
    })
    .await;
    // Independent clients, so that each one's gaps are its connection's gaps.
    concurrently(4u64, |w| {
        let mut client = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
            .unwrap()
            .layer(hyper_util::client::legacy::connect::HttpConnector::new());
        let url = server.url("/");
        async move {
            for i in 0..8u64 {
                let gap = 500 + fastrand_like(w * 100 + i) % 1000;
                tokio::time::sleep(Duration::from_millis(gap)).await;
                let (parts, _) = send(&mut client, get(&url, w * 100 + i))
                    .await
                    .unwrap_or_else(|e| panic!("GET failed in the keep-alive race: {e:?}"));
                assert_eq!(echoed_id(&parts), Some(w * 100 + i));
            }
        }
    })
    .await;
    assert!(
        server.stats.accepted() > 1,
        "the server did close idle connections"
    );
}

#[tokio::test]
async fn bad_input_gives_typed_errors() {
    let mut client = pool(PoolConfig::default());
    let no_authority = http::Request::get("/just/a/path")
        .body(Full::<Bytes>::default())
        .unwrap();
    let err = client
        .ready()
        .await
        .unwrap()
        .call(no_authority)
        .await
        .unwrap_err();
    assert!(err.is_invalid_request(), "{err}");
    let ftp = http::Request::get("ftp://127.0.0.1/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let err = client.ready().await.unwrap().call(ftp).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
    assert!(err.to_string().contains("unsupported scheme"), "{err}");

    // A port nobody listens on: a connect error naming the target.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = send(&mut client, get(&format!("http://{addr}/"), 1))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(err.target(), Some(format!("http://{addr}").as_str()));
    assert!(std::error::Error::source(&err).is_some());

    let err = PoolLayer::<Full<Bytes>>::new(PoolConfig::default().max_idle_per_target(Some(0)))
        .unwrap_err();
    assert_eq!(err.field(), "max_idle_per_target");
}

#[tokio::test]
async fn connection_level_checkout_serves_one_request() {
    let server = TestServer::start(ServerOptions::default()).await;
    let client = pool(PoolConfig::default());
    let target = Target::from_uri(&server.url("/").parse().unwrap(), None).unwrap();
    let mut handle = client.checkout(&target).await.unwrap();
    assert!(!handle.is_reused());
    let response = handle
        .ready()
        .await
        .unwrap()
        .call(get(&server.url("/"), 7))
        .await
        .unwrap();
    assert!(handle.ready().await.is_err(), "a handle serves one request");
    response.into_body().collect().await.unwrap();
    let handle = client.checkout(&target).await.unwrap();
    assert!(handle.is_reused());
    drop(handle); // unused: back to the pool
    assert_eq!(client.control().snapshot().targets[0].idle(), 1);
    // The same through the make-service face.
    let mut connections = client.connections();
    let mut handle = connections
        .ready()
        .await
        .unwrap()
        .call(target)
        .await
        .unwrap();
    assert!(handle.is_reused());
    let response = handle
        .ready()
        .await
        .unwrap()
        .call(get(&server.url("/"), 8))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(server.stats.accepted(), 1);
}
