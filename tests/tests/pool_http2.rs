//! The pool over real h2c servers on loopback, and over in-memory ones on
//! paused time where timing decides.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::{ConnectionInfo, PoolConfig, PoolLayer, Protocol, Target};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::h2server::{H2Options, H2Server};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{bounded, client, concurrently, echoed_id, get, only, pool, send, until};

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

/// A request body fed frame by frame from a channel; `Default` is empty.
#[derive(Default)]
struct ChannelBody(Option<tokio::sync::mpsc::Receiver<hyper::body::Frame<Bytes>>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        match &mut self.0 {
            Some(rx) => rx.poll_recv(cx).map(|frame| frame.map(Ok)),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// A real hyper h2c server on loopback, at most `max_streams` streams per
/// connection, answering with `handle`.
async fn h2c_server<F, Fut, B>(max_streams: u32, handle: F) -> std::net::SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let handle = handle.clone();
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    addr
}

/// A request body larger than the stream's flow-control window, sent a
/// frame at a time, reaches the server whole, with its trailers.
#[tokio::test]
async fn a_streamed_request_body_arrives_whole_with_its_trailers() {
    let addr = h2c_server(
        100,
        |req: http::Request<hyper::body::Incoming>| async move {
            let collected = req.into_body().collect().await.unwrap();
            let trailer = collected
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .cloned()
                .unwrap_or(http::HeaderValue::from_static("none"));
            let len = collected.to_bytes().len();
            http::Response::builder()
                .header("x-len", len)
                .header("x-trailer", trailer)
                .body(Full::<Bytes>::default())
                .unwrap()
        },
    )
    .await;
    let mut client =
        PoolLayer::<ChannelBody>::new(PoolConfig::default().http2_prior_knowledge(true))
            .unwrap()
            .layer(HttpConnector::new());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..48 {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            tx.send(hyper::body::Frame::data(chunk)).await.unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("done"));
        tx.send(hyper::body::Frame::trailers(trailers))
            .await
            .unwrap();
    });
    let req = http::Request::post(format!("http://{addr}/upload"))
        .body(ChannelBody(Some(rx)))
        .unwrap();
    let response = bounded(client.ready().await.unwrap().call(req))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-len"],
        (48 * 64 * 1024).to_string().as_str()
    );
    assert_eq!(response.headers()["x-trailer"], "done");
}

/// A response body that never ends.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// A request whose body never ends, its response dropped: the stream is
/// reset and its slot freed, so the next request on the connection (the
/// server allows one stream at a time) is answered.
#[tokio::test]
async fn a_dropped_response_ends_a_request_body_that_never_ends() {
    let addr = h2c_server(1, |_req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(Endless)
    })
    .await;
    let config = PoolConfig::default()
        .http2_prior_knowledge(true)
        .max_connections_per_target(Some(1));
    let mut client = PoolLayer::<ChannelBody>::new(config)
        .unwrap()
        .layer(HttpConnector::new());
    let url = format!("http://{addr}/");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hyper::body::Frame::data(Bytes::from_static(b"start")))
        .await
        .unwrap();
    for body in [ChannelBody(Some(rx)), ChannelBody::default()] {
        let req = http::Request::post(&url).body(body).unwrap();
        let response = bounded(client.ready().await.unwrap().call(req))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        drop(response);
    }
    drop(tx);
}

/// A dropped pool closes its idle HTTP/2 connections, with or without a
/// keep-alive PING: no connection task outlives it.
#[tokio::test]
async fn a_dropped_pool_closes_its_http2_connections() {
    for ping in [None, Some(Duration::from_secs(30))] {
        let server = H2Server::start(H2Options::default()).await;
        let mut client = pool(
            PoolConfig::default()
                .http2_prior_knowledge(true)
                .http2_ping_interval(ping),
        );
        send(&mut client, get(&server.url("/"), 1)).await.unwrap();
        assert!(!server.seen().conns[0].closed);
        drop(client);
        bounded(server.wait_until(|seen| seen.conns[0].closed)).await;
    }
}

/// A caller's `Host` names the request's authority over HTTP/2 as it does
/// over HTTP/1.1: it becomes `:authority`, not a second, differing field
/// (RFC 9113, 8.3.1).
#[tokio::test]
async fn a_host_header_becomes_the_authority_over_http2() {
    let addr = h2c_server(
        100,
        |req: http::Request<hyper::body::Incoming>| async move {
            let authority = req.uri().authority().map(|a| a.to_string());
            let hosts = req.headers().get_all(http::header::HOST).iter().count();
            http::Response::builder()
                .header("x-authority", authority.unwrap_or_default())
                .header("x-hosts", hosts)
                .body(Full::<Bytes>::default())
                .unwrap()
        },
    )
    .await;
    let mut client = pool(PoolConfig::default().http2_prior_knowledge(true));
    let mut req = get(&format!("http://{addr}/"), 1);
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_static("api.example.test"),
    );
    let (parts, _) = send(&mut client, req).await.unwrap();
    assert_eq!(parts.headers["x-authority"], "api.example.test");
    assert_eq!(parts.headers["x-hosts"], "0");
    // Without one, the URI's authority; one with user info is dropped.
    let (parts, _) = send(&mut client, get(&format!("http://{addr}/"), 2))
        .await
        .unwrap();
    assert_eq!(parts.headers["x-authority"], addr.to_string().as_str());
    let mut req = get(&format!("http://{addr}/"), 3);
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_static("user:secret@api.example.test"),
    );
    let (parts, _) = send(&mut client, req).await.unwrap();
    assert_eq!(parts.headers["x-authority"], addr.to_string().as_str());
    assert_eq!(parts.headers["x-hosts"], "0");
}
