//! The pool-wide connection budget (`PoolConfig::max_connections`) against
//! real servers on loopback: the total holds across many targets, counted
//! from the servers' side; a connect takes the slot of another target's
//! least recently used idle connection; reservations keep a quiet target
//! served while a noisy one spends the rest; no slot leaks when requests
//! give up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tower::Layer;
use tower_reuse_pool::events::{CloseReason, Closed, PoolEvents};
use tower_reuse_pool::{ErrorKind, Partition, Pool, PoolConfig, PoolLayer, Target, TargetConfig};
use tower_reuse_tests::server::{ServerOptions, ServerStats, TestServer};
use tower_reuse_tests::{concurrently, get, pool, send, until};

/// Servers on 127.0.0.2 .. 127.0.0.(n + 1), counting as one.
async fn servers(n: u8, options: ServerOptions) -> (Vec<TestServer>, Arc<ServerStats>) {
    let stats = ServerStats::kernel_counted();
    let mut servers = Vec::new();
    for i in 0..n {
        let addr = format!("127.0.0.{}:0", i + 2);
        servers.push(TestServer::start_counting(&addr, options.clone(), stats.clone()).await);
    }
    (servers, stats)
}

/// `work`, or a panic if it takes 10 s: these loads take well under 2 s.
async fn bounded<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("hung: not done within 10 s")
}

/// The connections the pool counts, checked against its targets' counts.
fn counted<C: tower_reuse_pool::Connect>(client: &tower_reuse_pool::Pool<C>) -> usize {
    let snapshot = client.control().snapshot();
    let open: u64 = snapshot
        .total(|t| (t.idle() + t.active() + t.connecting() + t.dedicated() + t.closing()) as u64);
    assert_eq!(snapshot.budget.connections as u64, open, "{snapshot:?}");
    snapshot.budget.connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_across_64_concurrent_targets() {
    let options = ServerOptions {
        delay: Some(Duration::from_millis(5)),
        ..Default::default()
    };
    let (servers, stats) = servers(64, options).await;
    let client = pool(PoolConfig::default().max_connections(Some(16)));
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url("/")).collect());
    let results = bounded(concurrently(256, |i| {
        let mut client = client.clone();
        let urls = urls.clone();
        async move {
            let mut failed = 0;
            for round in 0..4 {
                let url = &urls[((i + round) % 64) as usize];
                failed += u32::from(send(&mut client, get(url, i)).await.is_err());
            }
            failed
        }
    }))
    .await;
    assert_eq!(results.iter().sum::<u32>(), 0, "no request failed");
    assert_eq!(stats.requests(), 1024);
    assert!(
        stats.peak_established() <= 16,
        "the servers had {} connections open at once",
        stats.peak_established()
    );
    assert!(stats.peak_established() >= 8, "the count works");
    assert!(stats.accepted() >= 64, "every target was served");
    assert!(counted(&client) <= 16);
}

/// Records every close, with its target.
#[derive(Clone, Default)]
struct Closes(Arc<Mutex<Vec<(Target, CloseReason)>>>);

impl PoolEvents for Closes {
    fn on_close(&self, closed: &Closed<'_>) {
        let mut closes = self.0.lock().unwrap();
        closes.push((closed.target().clone(), closed.reason()));
    }
}

impl Closes {
    fn evicted(&self) -> Vec<Target> {
        let closes = self.0.lock().unwrap();
        closes
            .iter()
            .filter(|(_, reason)| *reason == CloseReason::Evicted)
            .map(|(target, _)| target.clone())
            .collect()
    }
}

fn target(server: &TestServer) -> Target {
    Target::from_uri(&server.url("/").parse().unwrap(), None).unwrap()
}

#[tokio::test]
async fn a_connect_takes_the_slot_of_the_least_recently_used_idle_connection() {
    let (servers, stats) = servers(3, ServerOptions::default()).await;
    let closes = Closes::default();
    let mut client: Pool<HttpConnector> =
        PoolLayer::new(PoolConfig::default().max_connections(Some(2)))
            .unwrap()
            .events(closes.clone())
            .layer(HttpConnector::new());
    send(&mut client, get(&servers[0].url("/"), 0))
        .await
        .unwrap();
    send(&mut client, get(&servers[1].url("/"), 1))
        .await
        .unwrap();
    // The first target's connection is the least recently used.
    send(&mut client, get(&servers[0].url("/"), 2))
        .await
        .unwrap();
    send(&mut client, get(&servers[1].url("/"), 3))
        .await
        .unwrap();
    assert!(closes.evicted().is_empty());
    send(&mut client, get(&servers[2].url("/"), 4))
        .await
        .unwrap();
    assert_eq!(closes.evicted(), vec![target(&servers[0])]);
    until("the evicted connection closes at the server", || {
        stats.open() == 2
    })
    .await;
    let snapshot = client.control().snapshot();
    assert_eq!(
        snapshot
            .target(&target(&servers[0]))
            .unwrap()
            .closed(CloseReason::Evicted),
        1
    );
    assert_eq!(snapshot.target(&target(&servers[1])).unwrap().idle(), 1);
    assert_eq!(counted(&client), 2);
    assert_eq!(stats.peak_established(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_keeps_a_quiet_partition_served_while_a_noisy_one_saturates() {
    let slow = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(1000)),
        ..Default::default()
    })
    .await;
    let quick = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    // The quiet requests (five, 150 ms at most each) give up long before
    // a noisy request ends (1 s): each is served from a slot of its own or
    // fails.
    let quiet_settings = TargetConfig::default().checkout_timeout(Some(Duration::from_millis(150)));
    for reserved in [None, Some(1)] {
        let client = pool(PoolConfig::default().max_connections(Some(4)));
        let quiet = Partition::new("quiet");
        client
            .control()
            .set_partition_config(
                &quiet,
                Some(quiet_settings.clone().reserved_connections(reserved)),
            )
            .unwrap();
        let noisy = {
            let client = client.clone();
            let url = slow.url("/");
            tokio::spawn(concurrently(6, move |i| {
                let mut client = client.clone();
                let url = url.clone();
                async move {
                    send(&mut client, get(&url, i)).await.unwrap();
                }
            }))
        };
        until("the noisy partition holds the budget", || {
            counted(&client) == 4 - usize::from(reserved.is_some())
        })
        .await;
        let mut failed = 0;
        let mut client_quiet = client.clone();
        for i in 0..5 {
            let mut req = get(&quick.url("/"), i);
            req.extensions_mut().insert(quiet.clone());
            match send(&mut client_quiet, req).await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::CheckoutTimeout, "{e}");
                    failed += 1;
                }
            }
        }
        if reserved.is_some() {
            assert_eq!(failed, 0, "the reservation served every quiet request");
        } else {
            assert!(failed > 0, "without a reservation the quiet one waits");
        }
        bounded(noisy).await.unwrap();
        assert!(counted(&client) <= 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_waiting_for_the_budget_gets_a_slot_from_a_busy_one() {
    let busy = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .await;
    let other = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let client = pool(PoolConfig::default().max_connections(Some(4)));
    let load = {
        let client = client.clone();
        let url = busy.url("/");
        tokio::spawn(concurrently(32, move |i| {
            let mut client = client.clone();
            let url = url.clone();
            async move {
                for _ in 0..4 {
                    send(&mut client, get(&url, i)).await.unwrap();
                }
            }
        }))
    };
    until("the busy target holds the budget", || counted(&client) == 4).await;
    // The busy target's own requests never let a connection go idle: the
    // other target gets a slot when one of them is checked in.
    let mut client_other = client.clone();
    for i in 0..3 {
        send(&mut client_other, get(&other.url("/"), i))
            .await
            .unwrap();
    }
    bounded(load).await.unwrap();
    let busy_target = target(&busy);
    let snapshot = client.control().snapshot();
    assert!(
        snapshot
            .target(&busy_target)
            .unwrap()
            .closed(CloseReason::Evicted)
            >= 1
    );
    assert!(counted(&client) <= 4);
}

#[tokio::test]
async fn requests_that_give_up_waiting_leak_no_slot() {
    let slow = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(200)),
        ..Default::default()
    })
    .await;
    let other = TestServer::start_on("127.0.0.2:0", ServerOptions::default()).await;
    let config = PoolConfig::default()
        .max_connections(Some(1))
        .checkout_timeout(Some(Duration::from_millis(50)));
    let client = pool(config);
    let holder = {
        let mut client = client.clone();
        let url = slow.url("/");
        tokio::spawn(async move { send(&mut client, get(&url, 0)).await })
    };
    until("the slow request holds the one slot", || {
        counted(&client) == 1
    })
    .await;
    let mut waiting = client.clone();
    for i in 0..3 {
        let err = send(&mut waiting, get(&other.url("/"), i))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CheckoutTimeout);
    }
    // A waiter dropped mid-wait.
    let dropped = tokio::time::timeout(
        Duration::from_millis(10),
        send(&mut waiting, get(&other.url("/"), 9)),
    )
    .await;
    assert!(dropped.is_err());
    bounded(holder).await.unwrap().unwrap();
    let mut client_other = client.clone();
    let config = client.control().config();
    assert_eq!(config.get_max_connections(), Some(1));
    client
        .control()
        .update(|c| c.checkout_timeout(Some(Duration::from_secs(5))))
        .unwrap();
    send(&mut client_other, get(&other.url("/"), 10))
        .await
        .unwrap();
    send(&mut client_other, get(&slow.url("/"), 11))
        .await
        .unwrap();
    assert_eq!(counted(&client), 1);
    assert_eq!(client.control().snapshot().budget.waiting_targets, 0);
}

#[tokio::test]
async fn reservations_beyond_the_budget_are_refused_with_the_field_named() {
    let client = pool(PoolConfig::default().max_connections(Some(8)));
    let control = client.control();
    let target = Target::from_uri(&"http://127.0.0.1:9".parse().unwrap(), None).unwrap();
    control
        .set_target_config(
            &target,
            Some(TargetConfig::default().reserved_connections(Some(6))),
        )
        .unwrap();
    let err = control
        .set_partition_config(
            &Partition::new("p"),
            Some(TargetConfig::default().reserved_connections(Some(3))),
        )
        .unwrap_err();
    assert_eq!(err.field(), "reserved_connections");
    let err = control.update(|c| c.max_connections(Some(5))).unwrap_err();
    assert_eq!(err.field(), "max_connections");
    let err = control.update(|c| c.max_connections(None)).unwrap_err();
    assert_eq!(err.field(), "max_connections");
    let err = control
        .set_target_config(
            &target,
            Some(TargetConfig::default().reserved_connections(Some(0))),
        )
        .unwrap_err();
    assert_eq!(err.field(), "reserved_connections");
    // Lowering one's own reservation counts it once.
    control
        .set_target_config(
            &target,
            Some(TargetConfig::default().reserved_connections(Some(8))),
        )
        .unwrap();
    control.set_target_config(&target, None).unwrap();
    assert!(control.snapshot().budget.reservations.is_empty());
    control.update(|c| c.max_connections(None)).unwrap();
    let err = control
        .set_target_config(
            &target,
            Some(TargetConfig::default().reserved_connections(Some(1))),
        )
        .unwrap_err();
    assert_eq!(err.field(), "reserved_connections");
    assert_eq!(
        PoolConfig::default()
            .max_connections(Some(0))
            .validate()
            .unwrap_err()
            .field(),
        "max_connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_warming_stays_within_the_budget() {
    let (servers, stats) = servers(4, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .max_connections(Some(6))
            .min_idle_per_target(4),
    );
    let mut c = client.clone();
    for (i, server) in servers.iter().enumerate() {
        send(&mut c, get(&server.url("/"), i as u64)).await.unwrap();
    }
    until("pre-warming fills the budget", || counted(&client) == 6).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(counted(&client), 6);
    assert!(
        stats.peak_established() <= 6,
        "{}",
        stats.peak_established()
    );
}
