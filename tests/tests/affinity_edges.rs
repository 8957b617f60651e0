//! The affinity layer's edges, over an in-memory network whose connects
//! can be refused: one failed connect counts once (HTTP/1.1 and HTTP/2),
//! removing an endpoint from one service leaves another service's
//! connections to the same address alone, a removed endpoint's target is
//! forgotten, a scheme's default port names the same service, `http` and
//! `https` are two services, no credential in an error, and never the last
//! endpoint ejected even when all fail at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt};
use tower_reuse_affinity::events::{AffinityEvents, Ejected};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityKey, AffinityLayer};
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::concurrently;
use tower_reuse_tests::duplex::DuplexIo;

/// Connects by the URI's authority; counts attempts per authority; the
/// first `fail_first` attempts overall are refused (after 10 ms).
#[derive(Clone, Default)]
struct Net {
    attempts: Arc<Mutex<HashMap<String, u64>>>,
    total: Arc<AtomicU64>,
    fail_first: u64,
}

impl Service<Uri> for Net {
    type Response = DuplexIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<DuplexIo>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, uri: Uri) -> Self::Future {
        let authority = uri.authority().unwrap().to_string();
        *self.attempts.lock().unwrap().entry(authority).or_default() += 1;
        let n = self.total.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.fail_first;
        Box::pin(async move {
            if !fail {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if fail {
                return Err(io::ErrorKind::ConnectionRefused.into());
            }
            let (client, mut server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = server.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if server
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
            Ok(DuplexIo::new(client))
        })
    }
}

#[derive(Default)]
/// Ejections counted.
struct Events(AtomicU64);
impl AffinityEvents for Events {
    fn on_ejected(&self, _: &Ejected<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Client = Affinity<Pool<Net, Full<Bytes>>>;

fn client(config: AffinityConfig, net: Net, events: Arc<Events>) -> Client {
    let layer = AffinityLayer::new(config).unwrap().events(events);
    let pool = PoolLayer::new(PoolConfig::default()).unwrap().layer(net);
    layer.layer(pool)
}

/// `http://svc.test:8080` on 127.0.0.2 and 127.0.0.3.
fn two_endpoints(client: &Client) {
    let endpoints = [
        "127.0.0.2:80".parse().unwrap(),
        "127.0.0.3:80".parse().unwrap(),
    ];
    client
        .endpoints()
        .set("http://svc.test:8080", endpoints)
        .unwrap();
}

async fn get(client: &mut Client, url: &str, key: u64) -> Result<(), tower_reuse_affinity::Error> {
    let req = http::Request::get(url)
        .header("x-user-id", key)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.ready().await?.call(req).await?;
    response.into_body().collect().await.unwrap();
    Ok(())
}

/// One refused connect, with several requests waiting on it, must not
/// count as `eject_after` failed connects.
#[tokio::test(start_paused = true)]
async fn one_failed_connect_is_one_failure() {
    let net = Net {
        fail_first: 1,
        ..Net::default()
    };
    let events = Arc::new(Events::default());
    let config = AffinityConfig::default()
        .key(AffinityKey::header("x-user-id"))
        .epsilon(50.0)
        .warm_aware(false)
        .eject_after(3);
    let client = client(config, net.clone(), events.clone());
    two_endpoints(&client);
    let results = concurrently(8, |_| {
        let mut c = client.clone();
        async move { get(&mut c, "http://svc.test:8080/", 7).await }
    })
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let failed_connects = 1;
    assert_eq!(
        events.0.load(Ordering::SeqCst),
        0,
        "ejected after {failed_connects} failed connect (eject_after 3)"
    );
}

/// Removing an endpoint from one service must not turn off reuse for
/// another service that shares the address.
#[tokio::test(start_paused = true)]
async fn removing_an_endpoint_from_one_service_leaves_another_alone() {
    let net = Net::default();
    let client = client(
        AffinityConfig::default().key(AffinityKey::header("x-user-id")),
        net.clone(),
        Arc::default(),
    );
    let shared = "127.0.0.2:80".parse().unwrap();
    let other = "127.0.0.3:80".parse().unwrap();
    let e = client.endpoints();
    e.set("http://a.test:8080", [shared, other]).unwrap();
    e.set("http://b.test:8080", [shared]).unwrap();
    let mut c = client.clone();
    get(&mut c, "http://b.test:8080/", 1).await.unwrap();
    e.remove("http://a.test:8080", shared).unwrap();
    for i in 0..5 {
        get(&mut c, "http://b.test:8080/", i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let attempts = net.attempts.lock().unwrap()["127.0.0.2:80"];
    assert_eq!(
        attempts, 1,
        "b's connection to the shared address was reused"
    );
}

/// A service registered without a port is routed for requests that write
/// the default port, and the other way round.
#[tokio::test(start_paused = true)]
async fn default_port_is_the_same_service() {
    let net = Net::default();
    let client = client(AffinityConfig::default(), net.clone(), Arc::default());
    client
        .endpoints()
        .set("http://svc.test", ["127.0.0.2:80".parse().unwrap()])
        .unwrap();
    let mut c = client.clone();
    get(&mut c, "http://svc.test:80/", 1).await.unwrap();
    let attempts = net.attempts.lock().unwrap().clone();
    assert!(
        attempts.contains_key("127.0.0.2:80"),
        "unrouted: {attempts:?}"
    );
}

/// Drained endpoints' pool targets are forgotten once idle.
#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_target_is_forgotten() {
    let net = Net::default();
    let layer = AffinityLayer::new(AffinityConfig::default()).unwrap();
    let pool = PoolLayer::new(PoolConfig::default())
        .unwrap()
        .layer(net.clone());
    let control = pool.control();
    let mut c: Client = layer.layer(pool);
    let a = "127.0.0.2:80".parse().unwrap();
    let e = c.endpoints();
    e.set("http://svc.test:8080", [a]).unwrap();
    get(&mut c, "http://svc.test:8080/", 1).await.unwrap();
    e.set("http://svc.test:8080", ["127.0.0.3:80".parse().unwrap()])
        .unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        get(&mut c, "http://svc.test:8080/", 1).await.unwrap();
    }
    let targets: Vec<String> = control
        .snapshot()
        .targets
        .iter()
        .map(|t| t.target().to_string())
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
}

/// The scheme is part of a service's name.
#[test]
fn http_and_https_services_on_one_authority_stay_apart() {
    let layer = AffinityLayer::new(AffinityConfig::default()).unwrap();
    let e = layer.endpoints();
    let a = "127.0.0.2:80".parse().unwrap();
    let b = "127.0.0.3:443".parse().unwrap();
    e.set("http://svc.test:8080", [a]).unwrap();
    e.set("https://svc.test:8080", [b]).unwrap();
    assert_eq!(e.get("http://svc.test:8080").unwrap(), vec![a]);
}

/// No credential in an error.
#[test]
fn an_invalid_service_name_keeps_no_credential() {
    let layer = AffinityLayer::new(AffinityConfig::default()).unwrap();
    let error = layer
        .endpoints()
        .set("admin:s3cret@svc.test:8080", [])
        .unwrap_err();
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

/// Never the last endpoint ejected, even when all fail at once on
/// several threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_the_last_even_when_all_fail_at_once() {
    let mut worst = 0;
    for _ in 0..200 {
        let net = Net {
            fail_first: u64::MAX,
            ..Net::default()
        };
        let config = AffinityConfig::default()
            .key(AffinityKey::header("x-user-id"))
            .warm_aware(false)
            .retry(false)
            .eject_after(1)
            .max_ejected_share(1.0);
        let client = client(config, net, Arc::default());
        two_endpoints(&client);
        // Every request fails: only the ejections are looked at.
        concurrently(16, |key| {
            let mut c = client.clone();
            async move { get(&mut c, "http://svc.test:8080/", key).await }
        })
        .await;
        let out = client.snapshot().services[0]
            .endpoints
            .iter()
            .filter(|e| e.ejected_until.is_some())
            .count();
        worst = worst.max(out);
    }
    assert!(worst <= 1, "{worst} of 2 endpoints ejected at once");
}

/// An HTTP/2 connector: connect n (from 0) fails if `fails(n)`, else an
/// in-memory HTTP/2 server answers 200; `kill` ends every connection.
#[derive(Clone)]
struct H2Net {
    attempts: Arc<AtomicU64>,
    fail: Arc<dyn Fn(u64) -> bool + Send + Sync>,
    kill: Arc<tokio::sync::Notify>,
}

impl Service<Uri> for H2Net {
    type Response = DuplexIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<DuplexIo>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _uri: Uri) -> Self::Future {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = (self.fail)(n);
        let kill = self.kill.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if fail {
                return Err(io::ErrorKind::ConnectionRefused.into());
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(server), service);
                tokio::select! {
                    _ = conn => {}
                    _ = kill.notified() => {}
                }
            });
            Ok(DuplexIo::new(client))
        })
    }
}

/// Over HTTP/2, one refused connect with eight requests waiting on it must
/// count once toward `eject_after`, not eight times.
#[tokio::test(start_paused = true)]
async fn one_failed_h2_connect_is_one_failure() {
    let net = H2Net {
        attempts: Arc::default(),
        fail: Arc::new(|n| n == 1),
        kill: Arc::default(),
    };
    let events = Arc::new(Events::default());
    let config = AffinityConfig::default()
        .key(AffinityKey::header("x-user-id"))
        .epsilon(50.0)
        .warm_aware(false)
        .eject_after(3);
    let layer = AffinityLayer::new(config).unwrap().events(events.clone());
    let pool = PoolLayer::new(PoolConfig::default().http2_prior_knowledge(true))
        .unwrap()
        .layer(net.clone());
    let client: Affinity<Pool<H2Net, Full<Bytes>>> = layer.layer(pool);
    let a = "127.0.0.2:80".parse().unwrap();
    client
        .endpoints()
        .set("http://svc.test:8080", [a, "127.0.0.3:80".parse().unwrap()])
        .unwrap();
    let send = |client: &Affinity<Pool<H2Net, Full<Bytes>>>| {
        let mut c = client.clone();
        tokio::spawn(async move {
            let req = http::Request::get("http://svc.test:8080/")
                .header("x-user-id", 7)
                .body(Full::<Bytes>::default())
                .unwrap();
            c.ready().await.unwrap().call(req).await.map(|_| ())
        })
    };
    send(&client).await.unwrap().unwrap();
    let home = client.snapshot().services[0]
        .endpoints
        .iter()
        .find(|e| e.requests == 1)
        .unwrap()
        .addr;
    // The server ends its connection; eight requests then wait on the one
    // connect that replaces it, which is refused.
    net.kill.notify_waiters();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tasks: Vec<_> = (0..8).map(|_| send(&client)).collect();
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let snap = client.snapshot();
    let ep = snap.services[0].endpoint(home).unwrap();
    println!("attempts {} {ep:?}", net.attempts.load(Ordering::SeqCst));
    assert_eq!(ep.ejections, 0, "ejected after one failed connect: {ep:?}");
}

/// A request whose endpoint is down is retried once, not more: with every
/// connect refused, two attempts (its endpoint, then the key's next).
#[tokio::test(start_paused = true)]
async fn a_request_is_retried_at_most_once() {
    let net = Net {
        fail_first: u64::MAX,
        ..Net::default()
    };
    let config = AffinityConfig::default()
        .key(AffinityKey::header("x-user-id"))
        .warm_aware(false)
        .eject_after(100);
    let mut client = client(config, net.clone(), Arc::default());
    let addrs = ["127.0.0.2:80", "127.0.0.3:80", "127.0.0.4:80"];
    client
        .endpoints()
        .set(
            "http://svc.test:8080",
            addrs.iter().map(|a| a.parse().unwrap()),
        )
        .unwrap();
    let error = get(&mut client, "http://svc.test:8080/", 1)
        .await
        .unwrap_err();
    assert!(
        error.pool_error().is_some_and(|e| e.is_connect()),
        "{error}"
    );
    assert_eq!(net.total.load(Ordering::SeqCst), 2);
    let retries: u64 = client.snapshot().services[0]
        .endpoints
        .iter()
        .map(|e| e.retries_from)
        .sum();
    assert_eq!(retries, 1);
}

/// A request dropped before its answer gives its endpoint's load back.
#[tokio::test(start_paused = true)]
async fn a_cancelled_request_gives_its_load_back() {
    let client = client(
        AffinityConfig::default().key(AffinityKey::header("x-user-id")),
        Net::default(),
        Arc::default(),
    );
    client
        .endpoints()
        .set("http://svc.test:8080", ["127.0.0.2:80".parse().unwrap()])
        .unwrap();
    let in_flight = |client: &Client| client.snapshot().services[0].endpoints[0].in_flight;
    let mut c = client.clone();
    // The connect takes 10 ms: the request is in flight, then dropped.
    let task = tokio::spawn(async move { get(&mut c, "http://svc.test:8080/", 1).await });
    tokio::task::yield_now().await;
    assert_eq!(in_flight(&client), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(in_flight(&client), 0);
}
