//! The embedded server's fault injection, seen from a bare TCP client.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Chaos, Server, ServerConfig, X_REQUEST_ID};

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: lab\r\nx-request-id: 7\r\n\r\n";
const POST: &[u8] =
    b"POST / HTTP/1.1\r\nhost: lab\r\nx-request-id: 8\r\ncontent-length: 4\r\n\r\nbody";

fn server(chaos: Chaos) -> Server {
    Server::start(ServerConfig::default().chaos(Some(chaos))).expect("server starts")
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(server: &Server, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server.addrs()[0]).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn close_reads_the_request_then_closes_without_answering() {
    let server = server(Chaos::default().close(1.0));
    let answer = exchange(&server, POST).await.expect("a clean close");
    assert!(answer.is_empty(), "no answer: {answer:?}");
    let faults = server.stats().snapshot().faults;
    assert_eq!((faults.closed, faults.total()), (1, 1));
}

#[tokio::test]
async fn reset_reads_the_request_then_resets_the_connection() {
    let server = server(Chaos::default().reset(1.0));
    let error = exchange(&server, GET).await.expect_err("a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    let faults = server.stats().snapshot().faults;
    assert_eq!((faults.reset, faults.total()), (1, 1));
}

#[tokio::test]
async fn goaway_answers_then_closes_an_http1_connection() {
    let server = server(Chaos::default().goaway(1.0));
    let answer = exchange(&server, GET)
        .await
        .expect("an answer, then a close");
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.contains("x-request-id: 7"), "{text}");
    assert_eq!(server.stats().snapshot().faults.goaway, 1);
}

/// The stall's upper bound is the draws' (checked in `chaos`'s
/// `draws_each_fault_near_its_probability`, which every stall comes from);
/// here, that the server holds the answer for the stall drawn.
#[tokio::test]
async fn stall_holds_the_answer_at_least_its_minimum() {
    let (min, max) = (Duration::from_millis(50), Duration::from_millis(80));
    let server = server(Chaos::default().stall(1.0, min, max));
    let mut stream = TcpStream::connect(server.addrs()[0])
        .await
        .expect("connects");
    let started = Instant::now();
    stream.write_all(GET).await.expect("writes");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(started.elapsed() >= min, "{:?}", started.elapsed());
    assert_eq!(server.stats().snapshot().faults.stalled, 1);
}

#[tokio::test]
async fn goaway_answers_then_closes_an_http2_connection() {
    let server = server(Chaos::default().goaway(1.0));
    let io = TokioIo::new(
        TcpStream::connect(server.addrs()[0])
            .await
            .expect("connects"),
    );
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get(server.url(0))
        .header(X_REQUEST_ID, "9")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[X_REQUEST_ID], "9");
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
    assert_eq!(server.stats().snapshot().faults.goaway, 1);
}

#[tokio::test]
async fn close_drops_an_http2_connection_and_its_streams() {
    let server = server(Chaos::default().close(1.0));
    let io = TokioIo::new(
        TcpStream::connect(server.addrs()[0])
            .await
            .expect("connects"),
    );
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    let request = Request::get(server.url(0))
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    assert!(sender.send_request(request).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let snapshot = server.stats().snapshot();
    assert_eq!(
        (snapshot.open, snapshot.closed, snapshot.faults.closed),
        (0, 1, 1)
    );
    assert_eq!(snapshot.requests, 0, "nothing answered");
}

#[tokio::test]
async fn no_chaos_no_faults() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    let answer = exchange(
        &server,
        b"GET / HTTP/1.1\r\nhost: lab\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("an answer, then a close");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(server.stats().snapshot().faults.total(), 0);
}

/// The most requests one connection served counts a connection that is
/// still open (it was counted only when a connection closed).
#[tokio::test]
async fn max_requests_on_connection_counts_an_open_connection() {
    let server = Server::start(ServerConfig::default()).expect("server starts");
    let io = TokioIo::new(
        TcpStream::connect(server.addrs()[0])
            .await
            .expect("connects"),
    );
    let (mut sender, connection) = http1::handshake(io).await.expect("handshake");
    tokio::spawn(connection);
    for i in 0..3 {
        sender.ready().await.expect("ready");
        let request = Request::get(server.url(0))
            .header(X_REQUEST_ID, i.to_string())
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let response = sender.send_request(request).await.expect("an answer");
        assert_eq!(response.status(), 200);
    }
    let snapshot = server.stats().snapshot();
    assert_eq!((snapshot.open, snapshot.closed), (1, 0));
    assert_eq!(snapshot.max_requests_on_connection, 3);
}
