//! The pool-wide connection budget at its edges, against real servers on
//! loopback (and in memory on paused time): reservations set or a budget
//! lowered while it is spent never open a connection over it, a lowered
//! budget closes idle connections beyond it, a raised one serves the
//! targets waiting, connections going idle while targets wait give their
//! slots up, and no slot leaks however connections end (HTTP/2 GOAWAY and
//! resets, the kill switch, many at once, requests giving up, rotation).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_reuse_pool::{Pool, PoolConfig, TargetConfig};
use tower_reuse_tests::budget::{CountingConnector, counted, counts, servers, target};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::h2server::{H2Options, H2Server, Reply};
use tower_reuse_tests::server::{ServerOptions, ServerStats, TestServer};
use tower_reuse_tests::{bounded, client, get, pool, send, until};

/// A GET the server answers after `ms` milliseconds.
fn slow_get(url: &str, id: u64, ms: u64) -> http::Request<Full<Bytes>> {
    let mut req = get(url, id);
    req.headers_mut().insert("x-delay-ms", ms.into());
    req
}

/// Two connections to `url` left idle (two requests at once).
async fn two_idle(client: &Pool<HttpConnector>, url: &str) {
    let (mut a, mut b) = (client.clone(), client.clone());
    let (ra, rb) = tokio::join!(
        send(&mut a, slow_get(url, 0, 100)),
        send(&mut b, slow_get(url, 1, 100))
    );
    ra.unwrap();
    rb.unwrap();
}

/// A request to `url` is served, and neither the pool nor the servers
/// ever count more than 2 connections.
async fn served_within_two(client: &Pool<HttpConnector>, stats: &ServerStats, url: &str) {
    let mut c = client.clone();
    bounded(send(&mut c, get(url, 2))).await.unwrap();
    let open = counted(client);
    assert!(
        open <= 2,
        "the pool counts {open} connections, over a budget of 2"
    );
    assert!(
        stats.peak_established() <= 2,
        "the servers had {} connections open at once, over a budget of 2",
        stats.peak_established()
    );
}

/// One slot of the budget reserved for `server`'s target.
fn reserve_one(client: &Pool<HttpConnector>, server: &TestServer) {
    client
        .control()
        .set_target_config(
            &target(server),
            Some(TargetConfig::default().reserved_connections(Some(1))),
        )
        .unwrap();
}

#[tokio::test]
async fn a_reservation_set_while_the_budget_is_spent_opens_no_connection_over_it() {
    let (servers, stats) = servers(2, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .max_connections(Some(2))
            .checkout_timeout(Some(Duration::from_secs(5))),
    );
    two_idle(&client, &servers[0].url("/")).await;
    assert_eq!(counted(&client), 2, "the budget is spent");
    // A reservation for the other target, set now: its slot is not free
    // until one of the first target's connections goes.
    reserve_one(&client, &servers[1]);
    served_within_two(&client, &stats, &servers[1].url("/")).await;
}

#[tokio::test]
async fn a_budget_lowered_below_the_connections_open_lets_no_reservation_over_it() {
    let (servers, stats) = servers(2, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .max_connections(Some(3))
            .checkout_timeout(Some(Duration::from_secs(5))),
    );
    reserve_one(&client, &servers[1]);
    two_idle(&client, &servers[0].url("/")).await;
    assert_eq!(counted(&client), 2);
    client
        .control()
        .update(|c| c.max_connections(Some(2)))
        .unwrap();
    served_within_two(&client, &stats, &servers[1].url("/")).await;
}

#[tokio::test]
async fn an_http2_connection_going_idle_gives_its_slot_to_a_waiting_target() {
    let (servers, _stats) = servers(2, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_connections(Some(1))
            .idle_timeout(Some(Duration::from_secs(60)))
            .checkout_timeout(Some(Duration::from_secs(3))),
    );
    // The first target's one connection is busy when the second target
    // asks for a slot: nothing idle to evict then.
    let busy = {
        let mut c = client.clone();
        let url = servers[0].url("/");
        tokio::spawn(async move { send(&mut c, slow_get(&url, 0, 300)).await })
    };
    until("the first target holds the one slot", || {
        client
            .control()
            .snapshot()
            .target(&target(&servers[0]))
            .is_some_and(|t| t.active() == 1)
    })
    .await;
    let mut c = client.clone();
    let waiting = send(&mut c, get(&servers[1].url("/"), 1));
    let result = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the checkout timeout ends the wait");
    bounded(busy).await.unwrap().unwrap();
    // Its request ends at 300 ms and leaves the connection idle, while
    // the second target waits: the slot goes to it, not to an idle
    // connection kept for a minute.
    match result {
        Ok(_) => {}
        Err(e) => panic!(
            "the waiting target never got the idle connection's slot ({:?}): {e}",
            e.kind()
        ),
    }
    assert!(counted(&client) <= 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_landing_idle_gives_its_slot_to_a_waiting_target() {
    // The first connect takes 100 ms; the rest are quick.
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delays([Duration::from_millis(100)]);
    let client = client(
        connector.clone(),
        PoolConfig::default()
            .max_connections(Some(1))
            .idle_timeout(Some(Duration::from_secs(60)))
            .checkout_timeout(Some(Duration::from_secs(5))),
    );
    // A request to the first target gives up while its connect is under
    // way: the connection will land with nobody to serve.
    let mut c = client.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        send(&mut c, get("http://first.test/", 0)),
    )
    .await;
    assert!(gave_up.is_err());
    // The second target finds the budget spent by that connect and
    // nothing idle to evict: it waits.
    let started = tokio::time::Instant::now();
    let result = send(&mut c, get("http://second.test/", 1)).await;
    if let Err(e) = result {
        panic!(
            "the waiting target never got the slot of the connection that landed idle \
             ({:?} after {:?}): {e}",
            e.kind(),
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(counted(&client) <= 1);
}

#[tokio::test(start_paused = true)]
async fn connections_ending_while_lent_give_their_slots_back_however_many() {
    // More connections lent at once than the pool remembers ended ones
    // by number (1 024): their server goes down mid-request.
    const LENT: u64 = 1100;
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_secs(10)),
        ..ServerOptions::default()
    });
    let client = client(
        connector.clone(),
        PoolConfig::default()
            .max_connections(Some(2000))
            .retry(false),
    );
    let requests: Vec<_> = (0..LENT)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move { send(&mut c, get("http://lent.test/", i)).await })
        })
        .collect();
    for _ in 0..100 {
        if connector.stats.requests() == LENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        connector.stats.requests(),
        LENT,
        "every request is in flight"
    );
    assert_eq!(counted(&client), LENT as usize);
    connector.close_open_connections();
    for request in requests {
        assert!(request.await.unwrap().is_err());
    }
    tokio_settle().await;
    let snapshot = client.control().snapshot();
    assert_eq!(
        counted(&client),
        0,
        "slots still held after every connection closed: {:?}",
        snapshot.targets[0]
    );
}

async fn tokio_settle() {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_lowered_budget_closes_the_idle_connections_beyond_it() {
    let (servers, stats) = servers(1, ServerOptions::default()).await;
    let client = pool(PoolConfig::default().max_connections(Some(4)));
    let url = servers[0].url("/");
    let requests: Vec<_> = (0..4)
        .map(|i| {
            let mut c = client.clone();
            let url = url.clone();
            tokio::spawn(async move { send(&mut c, slow_get(&url, i, 100)).await })
        })
        .collect();
    for request in requests {
        request.await.unwrap().unwrap();
    }
    assert_eq!(counted(&client), 4);
    client
        .control()
        .update(|c| c.max_connections(Some(2)))
        .unwrap();
    until(
        "the idle connections beyond the lowered budget close",
        || counted(&client) <= 2 && stats.open() <= 2,
    )
    .await;
    // What is left is still served.
    let mut c = client.clone();
    send(&mut c, get(&url, 9)).await.unwrap();
    assert!(counted(&client) <= 2);
}

/// A request to `url` answered after `ms` milliseconds, once it holds the
/// pool's one slot.
async fn hold_the_one_slot(
    client: &Pool<HttpConnector>,
    url: &str,
    ms: u64,
) -> tokio::task::JoinHandle<Result<(http::response::Parts, Bytes), tower_reuse_pool::Error>> {
    let holder = {
        let mut c = client.clone();
        let url = url.to_owned();
        tokio::spawn(async move { send(&mut c, slow_get(&url, 0, ms)).await })
    };
    until("the first target holds the one slot", || {
        counted(client) == 1
    })
    .await;
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_budget_serves_the_targets_waiting_at_once() {
    let (servers, stats) = servers(2, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .max_connections(Some(1))
            .checkout_timeout(Some(Duration::from_secs(3))),
    );
    let holder = hold_the_one_slot(&client, &servers[0].url("/"), 1500).await;
    let waiting = {
        let mut c = client.clone();
        let url = servers[1].url("/");
        tokio::spawn(async move { send(&mut c, get(&url, 1)).await })
    };
    until("the second target waits", || {
        client.control().snapshot().budget.waiting_targets == 1
    })
    .await;
    client
        .control()
        .update(|c| c.max_connections(Some(2)))
        .unwrap();
    waiting.await.unwrap().unwrap();
    assert!(
        !holder.is_finished(),
        "served only once the first target's request ended"
    );
    holder.await.unwrap().unwrap();
    assert!(stats.peak_established() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connections_of_the_kill_switch_stay_within_the_budget() {
    let (servers, stats) = servers(2, ServerOptions::default()).await;
    let client = pool(
        PoolConfig::default()
            .max_connections(Some(1))
            .reuse(false)
            .checkout_timeout(Some(Duration::from_secs(3))),
    );
    let holder = hold_the_one_slot(&client, &servers[0].url("/"), 200).await;
    let mut c = client.clone();
    send(&mut c, get(&servers[1].url("/"), 1)).await.unwrap();
    holder.await.unwrap().unwrap();
    for i in 0..10 {
        send(&mut c, get(&servers[(i % 2) as usize].url("/"), i))
            .await
            .unwrap();
    }
    until("every dedicated connection closes", || {
        counts(&client) == (0, 0)
    })
    .await;
    assert!(
        stats.peak_established() <= 1,
        "{}",
        stats.peak_established()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_ended_by_goaway_or_reset_give_their_slots_back() {
    let server = H2Server::start(H2Options::replying(|s| match s.index % 3 {
        0 => Reply::RespondThenGoAway,
        1 => Reply::Close,
        _ => Reply::Respond,
    }))
    .await;
    let client = pool(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_connections(Some(2))
            .retry(false)
            .checkout_timeout(Some(Duration::from_secs(2))),
    );
    let requests: Vec<_> = (0..30)
        .map(|i| {
            let mut c = client.clone();
            let url = server.url("/");
            tokio::spawn(async move { send(&mut c, get(&url, i)).await.is_ok() })
        })
        .collect();
    let mut served = 0;
    for request in requests {
        served += u32::from(request.await.unwrap());
    }
    // How many were served depends on how the streams interleave with
    // the closes; what is checked is that every ended connection's slot
    // came back.
    let _ = served;
    until("the pool counts what the server has open", || {
        counts(&client) == (server.seen().open(), server.seen().open())
    })
    .await;
    assert_eq!(client.control().snapshot().budget.waiting_targets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_giving_up_amid_rotation_and_pre_warming_leak_no_slot() {
    let (servers, stats) = servers(8, ServerOptions::default()).await;
    let connector = CountingConnector::default();
    let sockets = connector.counts();
    let client = client(
        connector,
        PoolConfig::default()
            .max_connections(Some(5))
            .min_idle_per_target(1)
            .max_lifetime(Some(Duration::from_millis(150)))
            .checkout_timeout(Some(Duration::from_millis(300))),
    );
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url("/")).collect());
    let workers: Vec<_> = (0..40u64)
        .map(|i| {
            let mut c = client.clone();
            let urls = urls.clone();
            tokio::spawn(async move {
                for round in 0..10u64 {
                    let url = &urls[((i * 7 + round) % 8) as usize];
                    let request = send(&mut c, slow_get(url, i, (i + round) % 30));
                    let patience = Duration::from_millis(5 + (i * 13 + round * 7) % 40);
                    let _ = tokio::time::timeout(patience, request).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    // Rotation never rests: stop it, and let the pool go quiet.
    client
        .control()
        .update(|c| c.max_lifetime(None).min_idle_per_target(0))
        .unwrap();
    until("the budget's count matches its targets'", || {
        let (budget, targets) = counts(&client);
        budget == targets
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(counted(&client) <= 5);
    assert!(
        sockets.peak() <= 5,
        "the client had {} sockets open",
        sockets.peak()
    );
    assert!(
        stats.peak_established() <= 5,
        "{}",
        stats.peak_established()
    );
    assert_eq!(client.control().snapshot().budget.waiting_targets, 0);
}
