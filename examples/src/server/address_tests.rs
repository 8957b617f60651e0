//! The per-address cache and load, and an address taken down and brought
//! back, seen from a bare client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::address::Lru;
use super::stats::load_sample;
use super::{KeyCache, Server, ServerConfig};

#[test]
fn lru_hits_held_keys_and_evicts_the_least_recently_used() {
    let mut lru = Lru::new(2);
    assert!(!lru.touch(b"a"), "first use misses");
    assert!(!lru.touch(b"b"));
    assert!(lru.touch(b"a"), "a is held");
    assert!(!lru.touch(b"c"), "c misses and evicts b, the least recent");
    assert_eq!(lru.len(), 2);
    assert!(lru.touch(b"a"), "a was used after b: kept");
    assert!(!lru.touch(b"b"), "b was evicted");
    assert!(!lru.touch(b"c"), "b's return evicted c");
}

#[test]
fn an_empty_cache_always_misses() {
    let mut lru = Lru::new(0);
    assert!(!lru.touch(b"a"));
    assert!(!lru.touch(b"a"));
    assert_eq!(lru.len(), 0);
}

#[test]
fn load_is_the_busiest_over_the_mean_and_over_the_bound() {
    assert_eq!(load_sample(&[0, 0, 0]), None);
    assert_eq!(load_sample(&[]), None);
    let figures = |in_flight: &[u64]| load_sample(in_flight).map(|s| (s.ratio, s.over_bound));
    // Mean 2, cap ceil(2.5) = 3.
    assert_eq!(figures(&[2, 2]), Some((1.0, 2.0 / 3.0)));
    // Mean 1, cap ceil(1.25) = 2: 3 is over it.
    assert_eq!(figures(&[3, 1, 0, 0]), Some((3.0, 1.5)));
    // One request on one of 8: mean 1/8, cap the floor, 2: far over the
    // mean, under the cap.
    assert_eq!(figures(&[1, 0, 0, 0, 0, 0, 0, 0]), Some((8.0, 0.5)));
    // Two: at the cap.
    assert_eq!(figures(&[2, 0, 0, 0, 0, 0, 0, 0]), Some((8.0, 1.0)));
}

/// Sends one keyed GET on a new connection and returns the raw answer.
async fn get(addr: std::net::SocketAddr, key: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET / HTTP/1.1\r\nhost: svc.lab\r\nx-affinity-key: {key}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).to_lowercase())
}

#[tokio::test]
async fn each_address_counts_its_own_cache_hits_and_misses() {
    let cache = KeyCache {
        capacity: 10,
        miss_latency: Duration::from_millis(1),
    };
    let server = Server::start(
        ServerConfig::default()
            .addresses(2)
            .first_address(40)
            .one_port(true)
            .served_by(true)
            .cache(Some(cache)),
    )
    .expect("server starts");
    let (a, b) = (server.addrs()[0], server.addrs()[1]);
    assert_eq!(a.port(), b.port(), "one port on every address");
    for (addr, key) in [(a, "k1"), (a, "k1"), (a, "k2"), (b, "k1")] {
        let answer = get(addr, key).await.expect("an answer");
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains(&format!("x-served-by: {addr}")), "{answer}");
    }
    let per_address = server.address_snapshots();
    assert_eq!(
        (per_address[0].cache_hits, per_address[0].cache_misses),
        (1, 2)
    );
    assert_eq!(
        (per_address[1].cache_hits, per_address[1].cache_misses),
        (0, 1),
        "b's cache is its own"
    );
    let total = server.stats().snapshot();
    assert_eq!((total.cache_hits, total.cache_misses), (1, 3));
}

#[tokio::test]
async fn an_address_taken_down_refuses_connects_then_comes_back() {
    let mut server = Server::start(ServerConfig::default().addresses(2).first_address(42))
        .expect("server starts");
    let (down, other) = (server.addrs()[0], server.addrs()[1]);
    // An idle keep-alive connection, open when the address goes down.
    let mut open = TcpStream::connect(down).await.expect("connects");
    open.write_all(b"GET / HTTP/1.1\r\nhost: lab\r\n\r\n")
        .await
        .expect("writes");
    let mut head = [0u8; 12];
    open.read_exact(&mut head).await.expect("an answer");

    server.take_down(0).await;
    let refused = TcpStream::connect(down).await.expect_err("refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the open connection is closed"
    );
    assert!(!server.address_snapshots()[0].up);
    assert!(get(other, "k").await.is_ok(), "the other address serves on");

    server.bring_up(0).expect("binds again");
    assert_eq!(server.addrs()[0], down, "the same socket address");
    let answer = get(down, "k").await.expect("connects again");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(server.address_snapshots()[0].up);
}

#[tokio::test]
async fn an_added_address_serves_on_the_shared_port() {
    let mut server = Server::start(ServerConfig::default().first_address(44).one_port(true))
        .expect("server starts");
    let added = server.add_address().expect("binds");
    assert_eq!(added.port(), server.addrs()[0].port());
    assert_eq!(server.addrs().len(), 2);
    let answer = get(added, "k").await.expect("an answer");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
}

#[tokio::test]
async fn load_is_sampled_across_the_addresses_up() {
    let server = Server::start(
        ServerConfig::default()
            .addresses(2)
            .first_address(46)
            .sample_interval(Duration::from_millis(1))
            .latency(Some(Duration::from_millis(50))),
    )
    .expect("server starts");
    assert_eq!(
        server.stats().max_load_ratio_since(0.0),
        None,
        "nothing in flight yet"
    );
    // One slow request on the first address, none on the second: max 1
    // over mean 0.5.
    get(server.addrs()[0], "k").await.expect("an answer");
    assert_eq!(server.stats().max_load_ratio_since(0.0), Some(2.0));
}

#[tokio::test]
async fn a_retired_address_leaves_the_load_samples() {
    let server = Server::start(
        ServerConfig::default()
            .addresses(3)
            .first_address(48)
            .sample_interval(Duration::from_millis(1))
            .latency(Some(Duration::from_millis(50))),
    )
    .expect("server starts");
    server.retire(2);
    // One slow request on the first of the two in service: max 1 over mean 0.5.
    get(server.addrs()[0], "k").await.expect("an answer");
    assert_eq!(server.stats().max_load_ratio_since(0.0), Some(2.0));
    let answer = get(server.addrs()[2], "k").await.expect("it still serves");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
}
