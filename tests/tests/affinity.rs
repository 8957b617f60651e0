//! The affinity layer over the pool against real servers on 127.0.0.x:
//! keys stick to endpoints, an endpoint that goes down is ejected with no
//! idempotent request failed, a discovery feed adds and removes endpoints
//! under load with nothing lost, warm detours, and typed errors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_affinity::events::{AffinityEvents, Ejected, Rebalanced, Retried, WarmDetour};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityKey, AffinityLayer};
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::server::{ServerOptions, TestServer};

const SERVICE: &str = "http://svc.test:8080";

#[derive(Default)]
struct Events {
    removed: Mutex<Vec<(SocketAddr, usize)>>,
    ejected: Mutex<Vec<SocketAddr>>,
    retried: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    detours: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    rebalances: Mutex<Vec<(usize, usize, usize)>>,
}

impl AffinityEvents for Events {
    fn on_endpoint_removed(&self, e: &tower_reuse_affinity::events::EndpointChanged<'_>) {
        self.removed.lock().unwrap().push((e.endpoint, e.endpoints));
    }
    fn on_ejected(&self, e: &Ejected<'_>) {
        self.ejected.lock().unwrap().push(e.endpoint);
    }
    fn on_retry(&self, e: &Retried<'_>) {
        self.retried.lock().unwrap().push((e.from, e.to));
    }
    fn on_warm_detour(&self, e: &WarmDetour<'_>) {
        self.detours.lock().unwrap().push((e.from, e.to));
    }
    fn on_rebalance(&self, e: &Rebalanced<'_>) {
        self.rebalances
            .lock()
            .unwrap()
            .push((e.from, e.to, e.keys_moved));
    }
}

type Client = Affinity<Pool<HttpConnector>>;

fn client(config: AffinityConfig, events: Arc<Events>) -> Client {
    let layer = AffinityLayer::new(config).unwrap().events(events);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool = PoolLayer::new(PoolConfig::default().connect_timeout(Some(Duration::from_secs(2))))
        .unwrap()
        .layer(connector);
    layer.layer(pool)
}

fn keyed() -> AffinityConfig {
    AffinityConfig::default().key(AffinityKey::header("x-user-id"))
}

async fn servers(n: u8) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(
            TestServer::start_on(&format!("127.0.0.{}:0", 2 + i), ServerOptions::default()).await,
        );
    }
    servers
}

/// GET with key `key`, id `id`; the body read to its end.
async fn get(client: &mut Client, key: u64, id: u64) -> Result<(), tower_reuse_affinity::Error> {
    let req = http::Request::get(format!("{SERVICE}/k"))
        .header("x-user-id", key)
        .header("x-request-id", id)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.ready().await?.call(req).await?;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("a whole body");
    Ok(())
}

/// Which server saw each request id.
fn served_by(servers: &[TestServer]) -> HashMap<u64, usize> {
    let mut by = HashMap::new();
    for (i, server) in servers.iter().enumerate() {
        for seen in server.stats.seen() {
            if let Some(id) = seen.request_id.and_then(|id| id.parse().ok()) {
                by.insert(id, i);
            }
        }
    }
    by
}

#[tokio::test]
async fn a_key_sticks_to_one_endpoint_and_keys_spread() {
    let servers = servers(3).await;
    let events = Arc::new(Events::default());
    let mut client = client(keyed().warm_aware(false), events);
    client
        .endpoints()
        .set(SERVICE, servers.iter().map(|s| s.addr))
        .unwrap();
    for round in 0..3 {
        for key in 0..30 {
            get(&mut client, key, round * 100 + key).await.unwrap();
        }
    }
    let by = served_by(&servers);
    let mut used = HashSet::new();
    for key in 0..30 {
        let homes: HashSet<usize> = (0..3).map(|round| by[&(round * 100 + key)]).collect();
        assert_eq!(homes.len(), 1, "key {key} moved: {homes:?}");
        used.extend(homes);
    }
    assert_eq!(used.len(), 3, "30 keys spread over the 3 endpoints");
    for server in &servers {
        assert!(
            server
                .stats
                .seen()
                .iter()
                .all(|s| s.host.as_deref() == Some("svc.test:8080"))
        );
    }
}

#[tokio::test]
async fn a_service_with_no_endpoints_is_a_typed_error() {
    let mut client = client(keyed(), Arc::default());
    client.endpoints().set(SERVICE, []).unwrap();
    let error = get(&mut client, 1, 1).await.unwrap_err();
    assert!(error.is_no_endpoints(), "{error}");
    assert!(error.to_string().contains("svc.test:8080"), "{error}");
}

#[tokio::test]
async fn forgetting_a_service_removes_each_endpoint_with_its_event() {
    let events = Arc::new(Events::default());
    let client = client(keyed(), events.clone());
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.2:80".parse().unwrap(),
        "127.0.0.3:80".parse().unwrap(),
    );
    client.endpoints().set(SERVICE, [a, b]).unwrap();
    client.endpoints().forget(SERVICE).unwrap();
    assert_eq!(*events.removed.lock().unwrap(), vec![(b, 1), (a, 0)]);
    assert!(client.endpoints().get(SERVICE).is_err());
    assert!(client.snapshot().services.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_goes_down_mid_load_is_ejected_and_no_idempotent_request_fails() {
    let mut servers = servers(4).await;
    let events = Arc::new(Events::default());
    // Without warm detours, which would steer keys off the cold, dead
    // endpoint before any of its connects failed.
    let client = client(keyed().eject_after(3).warm_aware(false), events.clone());
    client
        .endpoints()
        .set(SERVICE, servers.iter().map(|s| s.addr))
        .unwrap();
    let down = servers.pop().unwrap();
    let down_addr = down.addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tower_reuse_tests::concurrently(8, |worker| {
        let mut client = client.clone();
        async move {
            for i in 0..200u64 {
                get(&mut client, (worker * 13 + i) % 40, worker * 1_000 + i)
                    .await
                    .expect("retried on the key's next endpoint");
                tokio::task::yield_now().await;
            }
        }
    });
    // Its listener and its open connections close while the load runs;
    // the keys it served until then are noted.
    let failure = async move {
        tower_reuse_tests::until("load under way", || down.stats.requests() >= 50).await;
        let its_keys: HashSet<u64> = down
            .stats
            .seen()
            .iter()
            .filter_map(|seen| seen.request_id.as_ref()?.parse::<u64>().ok())
            .map(|id| ((id / 1_000) * 13 + id % 1_000) % 40)
            .collect();
        drop(down);
        let _ = stop.send(());
        its_keys
    };
    let (_, its_keys) = tokio::join!(load, failure);
    stopped.await.expect("the endpoint went down mid-load");
    assert_eq!(*events.ejected.lock().unwrap(), vec![down_addr]);
    let retried = events.retried.lock().unwrap().clone();
    assert!(
        !retried.is_empty()
            && retried
                .iter()
                .all(|(from, to)| *from == down_addr && *to != down_addr)
    );
    let snapshot = client.snapshot();
    let service = snapshot.service(SERVICE).unwrap();
    let endpoint = service.endpoint(down_addr).unwrap();
    assert!(endpoint.ejected_until.is_some());
    assert_eq!(endpoint.ejections, 1);
    // Its keys spread over the others by their own orders, not all onto
    // one endpoint.
    let mut client = client;
    for &key in &its_keys {
        get(&mut client, key, 90_000 + key).await.unwrap();
    }
    let by = served_by(&servers);
    let took_them: HashSet<usize> = its_keys.iter().map(|k| by[&(90_000 + k)]).collect();
    assert!(its_keys.len() >= 4, "{its_keys:?}");
    assert!(
        took_them.len() >= 2,
        "all of {its_keys:?} went to {took_them:?}"
    );
}

#[tokio::test]
async fn a_non_idempotent_request_is_retried_only_if_it_never_left() {
    let servers = servers(2).await;
    let events = Arc::new(Events::default());
    let mut client = client(keyed(), events.clone());
    // One endpoint has nothing listening: its connects are refused, so a
    // POST there never left and may go to the other one.
    let refused: SocketAddr = "127.0.0.9:9".parse().unwrap();
    client
        .endpoints()
        .set(SERVICE, [servers[0].addr, refused])
        .unwrap();
    for key in 0..20u64 {
        let req = http::Request::post(format!("{SERVICE}/k"))
            .header("x-user-id", key)
            .body(Full::<Bytes>::default())
            .unwrap();
        let response = client.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(!events.retried.lock().unwrap().is_empty());
}

#[tokio::test]
async fn discovery_adds_and_removes_endpoints_under_load_and_loses_nothing() {
    let servers = servers(4).await;
    let events = Arc::new(Events::default());
    let client = client(keyed(), events.clone());
    let endpoints = client.endpoints();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let feed = tokio::spawn(endpoints.discover(SERVICE, Feed(rx)).unwrap());
    use tower::discover::Change;
    for (i, server) in servers.iter().take(2).enumerate() {
        tx.send(Change::Insert(i, server.addr)).unwrap();
    }
    tower_reuse_tests::until("two endpoints", || {
        endpoints.get(SERVICE).unwrap().len() == 2
    })
    .await;
    let load = tower_reuse_tests::concurrently(8, |worker| {
        let mut client = client.clone();
        async move {
            for i in 0..150u64 {
                get(&mut client, (worker * 7 + i) % 50, worker * 1_000 + i)
                    .await
                    .unwrap();
            }
        }
    });
    let changes = async {
        for step in 0..4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            match step {
                0 => tx.send(Change::Insert(2, servers[2].addr)).unwrap(),
                1 => tx.send(Change::Insert(3, servers[3].addr)).unwrap(),
                2 => tx.send(Change::Remove(0)).unwrap(),
                _ => tx.send(Change::Remove(1)).unwrap(),
            }
        }
    };
    tokio::join!(load, changes);
    drop(tx);
    feed.await.unwrap().unwrap();
    let total: u64 = servers.iter().map(|s| s.stats.requests()).sum();
    assert_eq!(total, 8 * 150, "every request answered once");
    assert_eq!(
        endpoints.get(SERVICE).unwrap(),
        vec![servers[2].addr, servers[3].addr]
    );
    assert!(events.rebalances.lock().unwrap().len() >= 4);
    // After the feed removed them, the first two endpoints get no request
    // and their connections drain: none left open once they came free.
    let before: Vec<u64> = servers.iter().take(2).map(|s| s.stats.requests()).collect();
    for key in 0..20 {
        get(&mut client.clone(), key, 50_000 + key).await.unwrap();
    }
    let after: Vec<u64> = servers.iter().take(2).map(|s| s.stats.requests()).collect();
    assert_eq!(before, after);
    tower_reuse_tests::until("removed endpoints drained", || {
        servers.iter().take(2).all(|s| s.stats.open() == 0)
    })
    .await;
}

#[tokio::test]
async fn a_cold_first_choice_detours_one_step_to_a_warm_endpoint() {
    let servers = servers(2).await;
    let events = Arc::new(Events::default());
    let mut client = client(keyed(), events.clone());
    let (a, b) = (servers[0].addr, servers[1].addr);
    client.endpoints().set(SERVICE, [a, b]).unwrap();
    // Find a key living on each endpoint (without warm-awareness).
    let mut probe = self::client(keyed().warm_aware(false), Arc::default());
    probe.endpoints().set(SERVICE, [a, b]).unwrap();
    let mut home = HashMap::new();
    for key in 0..20u64 {
        get(&mut probe, key, 10_000 + key).await.unwrap();
        let by = served_by(&servers);
        home.entry(by[&(10_000 + key)]).or_insert(key);
    }
    let (key_a, key_b) = (home[&0], home[&1]);
    // Warm b only, then send a's key: a has no connection, b has an idle
    // one and is under the bound.
    let accepted = servers[0].stats.accepted();
    get(&mut client, key_b, 1).await.unwrap();
    get(&mut client, key_a, 2).await.unwrap();
    assert_eq!(served_by(&servers)[&2], 1, "detoured to b");
    assert_eq!(*events.detours.lock().unwrap(), vec![(a, b)]);
    // Meanwhile a opened a connection: the key's next request goes home.
    tower_reuse_tests::until("a warmed up", || {
        servers[0].stats.accepted() == accepted + 1
    })
    .await;
    get(&mut client, key_a, 3).await.unwrap();
    assert_eq!(served_by(&servers)[&3], 0, "back home on a");
    assert_eq!(events.detours.lock().unwrap().len(), 1);
}

/// A discovery feed over a channel.
struct Feed(tokio::sync::mpsc::UnboundedReceiver<tower::discover::Change<usize, SocketAddr>>);

impl futures_core::Stream for Feed {
    type Item = Result<tower::discover::Change<usize, SocketAddr>, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

#[tokio::test]
async fn opt_in_5xx_ejection_and_never_more_than_the_share_at_once() {
    let failing = ServerOptions {
        status: Some(503),
        ..ServerOptions::default()
    };
    let mut servers = Vec::new();
    for i in 0..4u8 {
        let options = if i < 3 {
            failing.clone()
        } else {
            ServerOptions::default()
        };
        servers.push(TestServer::start_on(&format!("127.0.0.{}:0", 2 + i), options).await);
    }
    let events = Arc::new(Events::default());
    // Off by default: 503s are answers, not failures.
    let mut client = client(keyed().eject_after(2).warm_aware(false), events.clone());
    client
        .endpoints()
        .set(SERVICE, servers.iter().map(|s| s.addr))
        .unwrap();
    for key in 0..40u64 {
        send(&mut client, key).await;
    }
    assert!(events.ejected.lock().unwrap().is_empty());

    // On: three endpoints answer 503, but at most half of four go out.
    let events = Arc::new(Events::default());
    let mut client = self::client(
        keyed().eject_after(2).eject_on_5xx(true).warm_aware(false),
        events.clone(),
    );
    client
        .endpoints()
        .set(SERVICE, servers.iter().map(|s| s.addr))
        .unwrap();
    for key in 0..200u64 {
        send(&mut client, key % 40).await;
    }
    let ejected = events.ejected.lock().unwrap().clone();
    assert_eq!(ejected.len(), 2, "{ejected:?}");
    assert!(ejected.iter().all(|addr| *addr != servers[3].addr));
    let snapshot = client.snapshot();
    let out = snapshot.services[0]
        .endpoints
        .iter()
        .filter(|e| e.ejected_until.is_some())
        .count();
    assert_eq!(out, 2);
}

/// GET with key `key`; the status, whatever it is.
async fn send(client: &mut Client, key: u64) -> http::StatusCode {
    let req = http::Request::get(format!("{SERVICE}/k"))
        .header("x-user-id", key)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.ready().await.unwrap().call(req).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_request_that_may_have_been_processed_is_retried_only_if_idempotent() {
    use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
    // One endpoint reads each request whole and closes without answering.
    let closing = RawHttp1Server::start(|_, _| Answer::Close).await;
    let good = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let events = Arc::new(Events::default());
    let mut client = client(keyed().warm_aware(false), events.clone());
    client
        .endpoints()
        .set(SERVICE, [closing.addr, good.addr])
        .unwrap();
    let mut failed_posts = 0;
    for key in 0..20u64 {
        let req = http::Request::post(format!("{SERVICE}/k"))
            .header("x-user-id", key)
            .body(Full::<Bytes>::default())
            .unwrap();
        match client.ready().await.unwrap().call(req).await {
            Ok(response) => assert_eq!(response.status(), 200),
            Err(error) => {
                let pool = error.pool_error().expect("the pool's error");
                assert!(pool.may_have_been_processed(), "{error}");
                failed_posts += 1;
            }
        }
    }
    let posts_seen = closing
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert!(failed_posts > 0, "some keys live on the closing endpoint");
    assert_eq!(
        posts_seen, failed_posts,
        "each POST reached it once: never sent again"
    );
    assert_eq!(good.stats.requests(), 20 - failed_posts as u64);
    // The same keys with GET: each one closed under it goes to the other.
    for key in 0..20u64 {
        assert_eq!(send(&mut client, key).await, 200);
    }
    assert!(!events.retried.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_request_with_a_body_is_retried_only_with_a_replay_body() {
    use tower_reuse_pool::ReplayBody;
    use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
    let closing = RawHttp1Server::start(|_, _| Answer::Close).await;
    let good = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let mut client = client(keyed().warm_aware(false), Arc::default());
    client
        .endpoints()
        .set(SERVICE, [closing.addr, good.addr])
        .unwrap();
    let put = |key: u64, replay: bool| {
        let payload = Bytes::from_static(b"state=on");
        let mut req = http::Request::put(format!("{SERVICE}/k"))
            .header("x-user-id", key)
            .body(Full::new(payload.clone()))
            .unwrap();
        if replay {
            req.extensions_mut()
                .insert(ReplayBody::new(move || Full::new(payload.clone())));
        }
        req
    };
    let (mut failed, mut served) = (0, 0);
    for key in 0..20u64 {
        match client.ready().await.unwrap().call(put(key, false)).await {
            Ok(_) => served += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(
        failed > 0,
        "without a replay body, a PUT closed under is not sent again"
    );
    for key in 0..20u64 {
        let response = client.ready().await.unwrap().call(put(key, true)).await;
        assert_eq!(response.expect("sent again with its body").status(), 200);
    }
    assert_eq!(good.stats.requests(), served + 20);
}

#[tokio::test]
async fn a_new_endpoint_takes_about_its_share_of_recent_keys_and_says_so() {
    let servers = servers(5).await;
    let events = Arc::new(Events::default());
    let mut client = client(keyed().warm_aware(false), events.clone());
    let endpoints = client.endpoints();
    endpoints
        .set(SERVICE, servers.iter().take(4).map(|s| s.addr))
        .unwrap();
    for key in 0..400u64 {
        get(&mut client, key, key).await.unwrap();
    }
    let seen: usize = client.snapshot().services[0]
        .endpoints
        .iter()
        .map(|e| e.keys_seen)
        .sum();
    assert!(seen > 300, "most of 400 keys kept in the sample: {seen}");
    endpoints.insert(SERVICE, servers[4].addr).unwrap();
    let rebalances = events.rebalances.lock().unwrap().clone();
    let (from, to, moved) = *rebalances.last().unwrap();
    assert_eq!((from, to), (4, 5));
    // A fifth of the keys, give or take, all onto the new endpoint.
    let share = moved as f64 / 256.0;
    assert!(
        (0.1..0.3).contains(&share),
        "{moved} of 256 sampled keys moved"
    );
    for key in 0..400u64 {
        get(&mut client, key, 1_000 + key).await.unwrap();
    }
    let by = served_by(&servers);
    let onto_new = (0..400u64).filter(|k| by[&(1_000 + k)] == 4).count();
    let changed = (0..400u64).filter(|k| by[k] != by[&(1_000 + k)]).count();
    assert_eq!(changed, onto_new, "no key moved between two old endpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_key_spread_by_two_random_choices() {
    let servers = servers(3).await;
    let client = client(keyed(), Arc::default());
    client
        .endpoints()
        .set(SERVICE, servers.iter().map(|s| s.addr))
        .unwrap();
    tower_reuse_tests::concurrently(6, |worker| {
        let mut client = client.clone();
        async move {
            for i in 0..50u64 {
                let req = http::Request::get(format!("{SERVICE}/k"))
                    .header("x-request-id", worker * 100 + i)
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let response = client.ready().await.unwrap().call(req).await.unwrap();
                response.into_body().collect().await.unwrap();
            }
        }
    })
    .await;
    for server in &servers {
        assert!(server.stats.requests() > 20, "{}", server.stats.requests());
    }
}
