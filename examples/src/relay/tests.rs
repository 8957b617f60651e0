//! The relay on loopback, on paused time: bytes and closes arrive whole,
//! in order, and no sooner than the delay.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::Relay;

const DELAY: Duration = Duration::from_millis(5);

/// A relay to a loopback listener, a client connected through it, and
/// the server's end of that connection.
async fn relayed() -> (Relay, TcpStream, TcpStream) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay::start(upstream.local_addr().unwrap(), DELAY)
        .await
        .unwrap();
    assert_ne!(relay.addr().ip(), upstream.local_addr().unwrap().ip());
    let client = TcpStream::connect(relay.addr()).await.unwrap();
    let (server, _) = upstream.accept().await.unwrap();
    (relay, client, server)
}

/// A client's two writes and its half-close reach the server in order and
/// at least `DELAY` after they were sent; the server's answer and close
/// reach the client the same way.
#[tokio::test(start_paused = true)]
async fn relays_bytes_and_closes_in_order_after_the_delay() {
    let (_relay, mut client, mut server) = relayed().await;

    let sent = Instant::now();
    client.write_all(b"first ").await.unwrap();
    client.write_all(b"second").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    // Ends at the client's close: the close came through, after the data.
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"first second");
    assert!(sent.elapsed() >= DELAY, "{:?}", sent.elapsed());

    let answered = Instant::now();
    server.write_all(b"answer").await.unwrap();
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"answer");
    assert!(answered.elapsed() >= DELAY, "{:?}", answered.elapsed());
}

/// A server closing an idle connection is seen by the client only after
/// the delay: until then the client's read is still pending.
#[tokio::test(start_paused = true)]
async fn a_server_close_reaches_the_client_after_the_delay() {
    let (_relay, mut client, server) = relayed().await;
    let closed = Instant::now();
    drop(server);
    let mut byte = [0u8; 1];
    assert_eq!(client.read(&mut byte).await.unwrap(), 0);
    assert!(closed.elapsed() >= DELAY, "{:?}", closed.elapsed());
}

/// Dropping the relay closes the connections it carries.
#[tokio::test]
async fn dropping_the_relay_closes_its_connections() {
    let (relay, mut client, _server) = relayed().await;
    drop(relay);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}
