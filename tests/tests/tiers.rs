//! Hot and cold tiers over the pool, against real servers on loopback: a
//! service whose rate holds above the promote threshold gets a pool of its
//! own (a partition with a reservation out of the budget and warm
//! connections), goes back when idle, and no request is lost while
//! dedicated pools are displaced and retired under load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_affinity::events::{AffinityEvents, DemoteReason, Demoted, Promoted};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityLayer, Tier, TierConfig};
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer};
use tower_reuse_tests::budget::CountingConnector;
use tower_reuse_tests::concurrently;
use tower_reuse_tests::server::{ServerOptions, TestServer};

#[derive(Default)]
struct Events {
    promoted: Mutex<Vec<(String, Option<usize>)>>,
    demoted: Mutex<Vec<(String, DemoteReason)>>,
}

impl AffinityEvents for Events {
    fn on_promoted(&self, e: &Promoted<'_>) {
        self.promoted
            .lock()
            .unwrap()
            .push((e.service.to_owned(), e.reserved));
    }
    fn on_demoted(&self, e: &Demoted<'_>) {
        self.demoted
            .lock()
            .unwrap()
            .push((e.service.to_owned(), e.reason));
    }
}

type Client = Affinity<Pool<HttpConnector>>;

/// Tiers on short windows: promoted after 200 ms at 20 requests/s.
fn tiers() -> TierConfig {
    TierConfig::default()
        .promote_rps(20.0)
        .promote_window(Duration::from_millis(200))
        .demote_rps(5.0)
        .demote_window(Duration::from_millis(400))
        .idle_retire_after(Duration::from_millis(300))
        .cold_idle_timeout(Some(Duration::from_millis(200)))
}

fn client(
    tiers: TierConfig,
    pool: PoolConfig,
    events: Arc<Events>,
) -> (AffinityLayer, PoolControl, Client) {
    let layer = AffinityLayer::new(AffinityConfig::default().tiers(Some(tiers)))
        .unwrap()
        .events(events);
    let pool: Pool<HttpConnector> = PoolLayer::new(pool).unwrap().layer(HttpConnector::new());
    (layer.clone(), pool.control(), layer.layer(pool))
}

async fn get<C: tower_reuse_pool::Connect>(
    client: &mut Affinity<Pool<C>>,
    url: &str,
) -> Result<(), tower_reuse_affinity::Error> {
    let req = http::Request::get(url)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.ready().await?.call(req).await?;
    response.into_body().collect().await.unwrap();
    Ok(())
}

/// `n` requests to `url`, one every `every`.
async fn steady(client: &mut Client, url: &str, n: usize, every: Duration) {
    for _ in 0..n {
        get(client, url).await.unwrap();
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_service_gets_a_pool_of_its_own_and_gives_it_back_when_idle() {
    let hot = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let cold = TestServer::start_on("127.0.0.3:0", ServerOptions::default()).await;
    let events = Arc::new(Events::default());
    let pool = PoolConfig::default().max_connections(Some(16));
    let (layer, control, mut client) = client(tiers(), pool, events.clone());
    // The shared pool's connections live as the cold tier's.
    assert_eq!(
        control.config().get_idle_timeout(),
        Some(Duration::from_millis(200))
    );
    let hot_url = hot.url("/");
    // 100 requests/s for 400 ms: above 20/s for the whole window.
    steady(&mut client, &hot_url, 40, Duration::from_millis(10)).await;
    get(&mut client, &cold.url("/")).await.unwrap();
    let name = format!("http://{}", hot.addr);
    assert_eq!(
        events.promoted.lock().unwrap().clone(),
        vec![(name.clone(), Some(1))],
        "promoted once, with a reservation for its peak of one in flight"
    );
    let tiers = layer.tiers().unwrap();
    assert_eq!(tiers.dedicated.len(), 1);
    assert_eq!(layer.dedicated_pools(), Some(1));
    // Per key: the hot one dedicated with its reservation, the cold one
    // cold, each with its connection.
    let mut keys: Vec<_> = tiers
        .keys
        .iter()
        .map(|k| (k.name.clone(), k.tier, k.reserved, k.open))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        keys,
        vec![
            (name.clone(), Tier::Dedicated, Some(1), 1),
            (format!("http://{}", cold.addr), Tier::Cold, None, 1),
        ]
    );
    assert_eq!(tiers.dedicated[0].name, name);
    assert!(tiers.dedicated[0].open >= 1);
    // Its targets have a dedicated pool's settings, the cold one's not;
    // the connection it had before its promotion stayed (one opened).
    let hot_target = tower_reuse_pool::Target::from_uri(&hot_url.parse().unwrap(), None).unwrap();
    let cold_target =
        tower_reuse_pool::Target::from_uri(&cold.url("/").parse().unwrap(), None).unwrap();
    let settings = control.service_config(&hot_target).unwrap();
    assert_eq!(settings.get_reserved_connections(), Some(1));
    assert_eq!(
        settings.get_idle_timeout(),
        Some(Some(Duration::from_secs(30)))
    );
    assert!(control.service_config(&cold_target).is_none());
    assert_eq!(hot.stats.accepted(), 1, "promotion opened no connection");
    let snapshot = control.snapshot();
    assert_eq!(snapshot.budget.reservations.len(), 1);
    assert_eq!(snapshot.budget.reservations[0].reserved, 1);
    assert_eq!(
        snapshot.budget.reservations[0].service.as_ref(),
        Some(&hot_target)
    );
    // Idle: back to the shared settings, its reservation dropped, its
    // connection closed at the cold tier's idle timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        events.demoted.lock().unwrap().clone(),
        vec![(name, DemoteReason::Idle)]
    );
    assert!(layer.tiers().unwrap().dedicated.is_empty());
    let snapshot = control.snapshot();
    assert!(snapshot.budget.reservations.is_empty());
    assert!(control.service_config(&hot_target).is_none());
    assert_eq!(
        snapshot
            .target(&hot_target)
            .map_or(0, |t| t.idle() + t.active()),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_while_dedicated_pools_are_displaced_and_retired_under_load() {
    let mut servers = Vec::new();
    for i in 0..6u8 {
        let options = ServerOptions {
            delay: Some(Duration::from_millis(2)),
            ..Default::default()
        };
        servers.push(TestServer::start_on(&format!("127.0.0.{}:0", 2 + i), options).await);
    }
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url("/")).collect());
    let events = Arc::new(Events::default());
    // Room for two dedicated pools among six services.
    let tiers = tiers().max_dedicated(2);
    let pool = PoolConfig::default().max_connections(Some(24));
    let (_layer, _control, client) = client(tiers, pool, events.clone());
    // Four phases of 500 ms: in each, two services get the load and the
    // two of the phase before go quiet (retired as idle).
    let start = tokio::time::Instant::now();
    let failed = concurrently(24, |worker| {
        let mut client = client.clone();
        let urls = urls.clone();
        async move {
            let (mut sent, mut failed) = (0u64, 0u32);
            while start.elapsed() < Duration::from_secs(2) && sent < 5_000 {
                let phase = (start.elapsed().as_millis() / 500) as u64;
                let url = &urls[((phase * 2 + worker % 2) % 6) as usize];
                failed += u32::from(get(&mut client, url).await.is_err());
                sent += 1;
            }
            (sent, failed)
        }
    })
    .await;
    let sent: u64 = failed.iter().map(|(sent, _)| sent).sum();
    let failed: Vec<u32> = failed.iter().map(|(_, failed)| *failed).collect();
    assert_eq!(failed.iter().sum::<u32>(), 0, "no request failed");
    assert_eq!(
        servers.iter().map(|s| s.stats.requests()).sum::<u64>(),
        sent
    );
    let promoted = events.promoted.lock().unwrap().len();
    let demoted = events.demoted.lock().unwrap().len();
    assert!(
        promoted >= 4 && demoted >= 2,
        "{promoted} promoted, {demoted} demoted"
    );
    assert!(
        promoted - demoted <= 2,
        "never more than two dedicated pools"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_pools_stay_within_the_budget() {
    let noisy = TestServer::start_on(
        "127.0.0.2:0",
        ServerOptions {
            delay: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    )
    .await;
    let quiet = TestServer::start_on("127.0.0.3:0", ServerOptions::default()).await;
    let connector = CountingConnector::default();
    let sockets = connector.counts();
    let layer = AffinityLayer::new(AffinityConfig::default().tiers(Some(tiers())))
        .unwrap()
        .events(Arc::new(Events::default()));
    let pool: Pool<CountingConnector> =
        PoolLayer::new(PoolConfig::default().max_connections(Some(16)))
            .unwrap()
            .layer(connector);
    let client = layer.layer(pool);
    let start = tokio::time::Instant::now();
    let urls = Arc::new([noisy.url("/"), quiet.url("/")]);
    let failed = concurrently(48, |worker| {
        let mut client = client.clone();
        let urls = urls.clone();
        async move {
            let (mut sent, mut failed) = (0u32, 0u32);
            while start.elapsed() < Duration::from_millis(1500) && sent < 5_000 {
                // One worker in eight is the quiet service's.
                let url = &urls[usize::from(worker % 8 == 0)];
                failed += u32::from(get(&mut client, url).await.is_err());
                sent += 1;
                if worker % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            failed
        }
    })
    .await;
    assert_eq!(failed.iter().sum::<u32>(), 0);
    assert!(!layer.tiers().unwrap().dedicated.is_empty());
    assert!(
        sockets.peak() <= 16,
        "the client had {} sockets open",
        sockets.peak()
    );
}
