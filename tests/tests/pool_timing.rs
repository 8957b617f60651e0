//! Timing logic on paused tokio time, over the in-memory connector:
//! expiry, rotation, pre-warming, waiting, backpressure.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceExt};
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{ConnectionInfo, ErrorKind, Phase, Pool, PoolConfig, TargetConfig};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::ServerOptions;
use tower_reuse_tests::{client, concurrently, get, only, send, settle};

const URL: &str = "http://pool.test/";

#[tokio::test(start_paused = true)]
async fn evicts_idle_connection_exactly_at_idle_timeout() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default().idle_timeout(Some(Duration::from_secs(10))),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    settle().await;
    assert_eq!(only(&client).idle(), 1);
    advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(only(&client).idle(), 1, "expired early");
    advance(Duration::from_millis(1)).await;
    settle().await;
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 0, "not expired at the deadline");
    assert_eq!(snapshot.closed(CloseReason::IdleTimeout), 1);
    settle().await;
    assert_eq!(connector.stats.open(), 0, "the socket was closed");
}

#[tokio::test(start_paused = true)]
async fn honours_the_servers_keep_alive_timeout() {
    let connector = DuplexConnector::new(ServerOptions {
        keep_alive_hint: Some(2),
        ..ServerOptions::default()
    });
    let mut client = client(connector, PoolConfig::default());
    send(&mut client, get(URL, 1)).await.unwrap();
    // timeout=2 less a 400 ms margin: expire at 1.6 s, before the server.
    advance(Duration::from_millis(1599)).await;
    settle().await;
    assert_eq!(only(&client).idle(), 1);
    advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(only(&client).closed(CloseReason::IdleTimeout), 1);
}

/// Connections live 30 s exactly; connects take 50 ms.
fn rotating_client() -> (DuplexConnector, Pool<DuplexConnector>) {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(50));
    let config = PoolConfig::default()
        .max_lifetime(Some(Duration::from_secs(30)))
        .lifetime_jitter(0.0);
    (connector.clone(), client(connector, config))
}

#[tokio::test(start_paused = true)]
async fn rotates_at_max_lifetime_before_breaking() {
    let (connector, mut client) = rotating_client();
    let (parts, _) = send(&mut client, get(URL, 1)).await.unwrap();
    let first = parts.extensions.get::<ConnectionInfo>().unwrap().id();
    advance(Duration::from_secs(30)).await;
    settle().await;
    // The replacement connects while the old connection still serves.
    assert_eq!(only(&client).connecting(), 1, "{:?}", only(&client));
    assert_eq!(only(&client).idle(), 1);
    advance(Duration::from_millis(50)).await;
    settle().await;
    let snapshot = only(&client);
    assert_eq!(snapshot.closed(CloseReason::MaxLifetime), 1);
    assert_eq!(snapshot.idle(), 1);
    let start = Instant::now();
    let (parts, _) = send(&mut client, get(URL, 2)).await.unwrap();
    let info = parts.extensions.get::<ConnectionInfo>().unwrap();
    assert_ne!(info.id(), first);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the request paid for a handshake"
    );
    assert_eq!(connector.attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn prewarms_min_idle_and_backs_off_on_failure() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default().min_idle_per_target(3),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    settle().await;
    // Three pre-warmed while the first served its request, which came back.
    assert_eq!(only(&client).idle(), 4);
    // Idle expiry keeps the warm minimum.
    advance(Duration::from_secs(120)).await;
    settle().await;
    assert_eq!(only(&client).idle(), 3);
    assert_eq!(only(&client).closed(CloseReason::IdleTimeout), 1);
    assert_eq!(
        connector.attempts.load(Ordering::SeqCst),
        4,
        "{:?}",
        only(&client)
    );

    // Connects fail: refills back off instead of looping.
    connector.refuse.store(true, Ordering::SeqCst);
    let held = call_all(&client, 4).await;
    drop(held);
    let before = connector.attempts.load(Ordering::SeqCst);
    advance(Duration::from_secs(1)).await;
    settle().await;
    let after = connector.attempts.load(Ordering::SeqCst);
    assert!(
        after - before < 10,
        "{} connect attempts in 1 s",
        after - before
    );
}

/// Call the pool `n` times at once; the responses come back unread.
async fn call_all(
    client: &Pool<DuplexConnector>,
    n: u64,
) -> Vec<Result<http::Response<tower_reuse_pool::PoolBody>, tower_reuse_pool::Error>> {
    concurrently(n, |i| client.clone().oneshot(get(URL, i))).await
}

#[tokio::test(start_paused = true)]
async fn checkout_times_out_exactly_and_frees_its_place() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector,
        PoolConfig::default()
            .max_connections_per_target(Some(1))
            .checkout_timeout(Some(Duration::from_secs(2))),
    );
    let held = client
        .ready()
        .await
        .unwrap()
        .call(get(URL, 1))
        .await
        .unwrap();
    let start = Instant::now();
    let err = send(&mut client, get(URL, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CheckoutTimeout);
    assert!(err.is_timeout());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(only(&client).waiting(), 0);
    held.into_body().collect().await.unwrap();
    send(&mut client, get(URL, 3)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_fifo_and_limited() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let client = client(
        connector,
        PoolConfig::default()
            .max_connections_per_target(Some(1))
            .max_waiters_per_target(Some(3)),
    );
    let held = client.clone().oneshot(get(URL, 0)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 1..=3u64 {
        let client = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let response = client.oneshot(get(URL, i)).await.unwrap();
            response.into_body().collect().await.unwrap();
            tx.send(i).unwrap();
        });
        settle().await;
    }
    assert_eq!(only(&client).waiting(), 3);
    let err = client.clone().oneshot(get(URL, 4)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooManyWaiters);
    held.into_body().collect().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_does_not_cancel_the_shared_connect() {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(100));
    let client = client(connector.clone(), PoolConfig::default());
    let first = tokio::spawn(client.clone().oneshot(get(URL, 1)));
    settle().await;
    assert_eq!(only(&client).connecting(), 1);
    advance(Duration::from_millis(60)).await;
    first.abort();
    let _ = first.await;
    settle().await;
    assert_eq!(only(&client).waiting(), 0);
    assert_eq!(only(&client).connecting(), 1, "the connect was cancelled");
    let start = Instant::now();
    let second = client.clone().oneshot(get(URL, 2)).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(40),
        "the second request did not get the first one's connect"
    );
    second.into_body().collect().await.unwrap();
    assert_eq!(connector.attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn connect_error_reaches_every_waiter_without_a_storm() {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(10));
    connector.refuse.store(true, Ordering::SeqCst);
    let client = client(
        connector.clone(),
        PoolConfig::default().max_connecting_per_target(Some(2)),
    );
    let results = call_all(&client, 20).await;
    assert_eq!(results.len(), 20);
    for result in results {
        let err = result.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
    let attempts = connector.attempts.load(Ordering::SeqCst);
    assert!(attempts <= 2, "{attempts} connects for one failing burst");
    assert_eq!(only(&client).waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_applies_backpressure_and_clones_do_not_inherit_it() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector,
        PoolConfig::default().max_requests_in_flight(Some(1)),
    );
    let held = client
        .ready()
        .await
        .unwrap()
        .call(get(URL, 1))
        .await
        .unwrap();

    let mut blocked = client.clone();
    let mut waiting = tokio::spawn(async move {
        blocked.ready().await.unwrap();
    });
    settle().await;
    assert!(
        !waiting.is_finished(),
        "poll_ready was ready past the limit"
    );
    held.into_body().collect().await.unwrap();
    settle().await;
    assert!(waiting.is_finished(), "poll_ready was not woken");
    (&mut waiting).await.unwrap();

    // A ready service's clone is not ready: the permit stays with the original.
    let mut ready = client.clone();
    std::future::poll_fn(|cx| ready.poll_ready(cx))
        .await
        .unwrap();
    let mut clone = ready.clone();
    let err = clone.call(get(URL, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotReady);
    let response = ready.call(get(URL, 3)).await.unwrap();
    response.into_body().collect().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_empty_pool_does_not_wake_the_reaper() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector,
        PoolConfig::default().idle_timeout(Some(Duration::from_secs(1))),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(only(&client).idle(), 0);
    let before = client.control().snapshot().reaper_wakeups();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    settle().await;
    // The target is forgotten after a quiet minute: one more wake-up at most.
    let woke = client.control().snapshot().reaper_wakeups() - before;
    assert!(woke <= 1, "the reaper woke {woke} times in an empty hour");
}

#[tokio::test(start_paused = true)]
async fn check_ins_do_not_wake_the_reaper_per_request() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(connector, PoolConfig::default());
    for i in 0..100 {
        send(&mut client, get(URL, i)).await.unwrap();
    }
    let woke = client.control().snapshot().reaper_wakeups();
    assert!(woke <= 3, "the reaper woke {woke} times for 100 requests");
}

#[tokio::test(start_paused = true)]
async fn a_target_configured_before_its_first_request_still_expires() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(connector, PoolConfig::default());
    let target = tower_reuse_pool::Target::from_uri(&URL.parse().unwrap(), None).unwrap();
    client
        .control()
        .set_target_config(
            &target,
            Some(TargetConfig::default().idle_timeout(Some(Duration::from_secs(5)))),
        )
        .unwrap();
    send(&mut client, get(URL, 1)).await.unwrap();
    settle().await;
    assert_eq!(only(&client).idle(), 1);
    advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(only(&client).closed(CloseReason::IdleTimeout), 1);
    assert_eq!(only(&client).idle(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_rotation_still_retires_a_busy_connection() {
    let (connector, mut client) = rotating_client();
    send(&mut client, get(URL, 1)).await.unwrap();
    connector.refuse.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(only(&client).connecting(), 1, "the rotation started");
    // The old connection is busy when the replacement fails.
    let held = client
        .ready()
        .await
        .unwrap()
        .call(get(URL, 2))
        .await
        .unwrap();
    advance(Duration::from_millis(50)).await;
    settle().await;
    assert_eq!(only(&client).connect_errors(), 1);
    held.into_body().collect().await.unwrap();
    settle().await;
    let snapshot = only(&client);
    assert_eq!(snapshot.closed(CloseReason::MaxLifetime), 1, "{snapshot:?}");
    assert_eq!(snapshot.idle(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_handle_keeps_the_target_it_served_last_from_being_forgotten() {
    // Each handle remembers the target it served last, to skip the lookup;
    // that target must stay the pool's one and only pool for it.
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut fresh = client(connector, PoolConfig::default());
    let mut remembers = fresh.clone();
    send(&mut remembers, get(URL, 1)).await.unwrap();
    // A quiet hour: the idle connection expires; the target would be
    // forgotten if no handle held it.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    settle().await;
    send(&mut remembers, get(URL, 2)).await.unwrap();
    send(&mut fresh, get(URL, 3)).await.unwrap();
    let target = only(&fresh);
    assert_eq!(
        (target.opened(), target.reused()),
        (2, 1),
        "both handles used one pool for the target: {target:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_target_no_handle_holds_is_forgotten() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(connector, PoolConfig::default());
    send(&mut client, get(URL, 1)).await.unwrap();
    send(&mut client, get("http://other.test/", 2))
        .await
        .unwrap();
    assert_eq!(client.control().snapshot().targets.len(), 2);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    settle().await;
    // The handle now holds the other target only: this one goes.
    let snapshot = client.control().snapshot();
    let left: Vec<_> = snapshot
        .targets
        .iter()
        .map(|t| t.target().to_string())
        .collect();
    assert_eq!(left, ["http://other.test"]);
}

#[tokio::test(start_paused = true)]
async fn a_prewarmed_http2_connection_is_not_closed_below_min_idle() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .min_idle_per_target(1)
            .idle_timeout(Some(Duration::from_secs(10))),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    settle().await;
    // The demand connection and the pre-warm one: one expires, one stays.
    advance(Duration::from_secs(15)).await;
    settle().await;
    let before = only(&client);
    for _ in 0..6 {
        advance(Duration::from_secs(5)).await;
        settle().await;
    }
    // Closing the last one at its idle timeout would only reopen it.
    let after = only(&client);
    assert_eq!(after.idle(), 1, "{after:?}");
    assert_eq!(
        (after.opened(), after.closed_total()),
        (before.opened(), before.closed_total()),
        "no close-and-reopen churn: {after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_keeps_to_the_connection_limits() {
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_secs(1)),
        ..ServerOptions::default()
    });
    let client = client(
        connector.clone(),
        PoolConfig::default()
            .reuse(false)
            .max_connections_per_target(Some(2)),
    );
    let tasks: Vec<_> = (0..10)
        .map(|i| tokio::spawn(client.clone().oneshot(get(URL, i))))
        .collect();
    settle().await;
    advance(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(
        connector.stats.open(),
        2,
        "no connect storm when reuse is off"
    );
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        response.into_body().collect().await.unwrap();
    }
    let target = only(&client);
    assert_eq!(
        (target.opened(), target.closed(CloseReason::KillSwitch)),
        (10, 10)
    );
}

#[tokio::test(start_paused = true)]
async fn connects_that_outlive_their_waiters_leave_no_more_than_max_idle() {
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_millis(100));
    let client = client(
        connector,
        PoolConfig::default()
            .max_idle_per_target(Some(2))
            .checkout_timeout(Some(Duration::from_millis(50))),
    );
    let tasks: Vec<_> = (0..8)
        .map(|i| tokio::spawn(client.clone().oneshot(get(URL, i))))
        .collect();
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::CheckoutTimeout);
    }
    advance(Duration::from_millis(100)).await;
    settle().await;
    let target = only(&client);
    assert_eq!(target.idle(), 2, "{target:?}");
    assert_eq!(target.closed(CloseReason::OverLimit), target.opened() - 2);
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_limit_is_fixed_when_the_pool_is_built() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let client = client(connector, PoolConfig::default());
    let error = client
        .control()
        .update(|c| c.max_requests_in_flight(Some(1)))
        .unwrap_err();
    assert_eq!(error.field(), "max_requests_in_flight");
    assert_eq!(*client.control().config(), PoolConfig::default());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_response_times_out_and_frees_its_connection() {
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_secs(60)),
        ..ServerOptions::default()
    });
    let mut client = client(
        connector.clone(),
        PoolConfig::default().response_timeout(Some(Duration::from_secs(2))),
    );
    let started = Instant::now();
    let error = send(&mut client, get(URL, 1)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::ResponseTimeout, Phase::Send)
    );
    assert!(error.may_have_been_processed());
    assert!(error.is_timeout());
    assert!(error.to_string().contains("pool.test"), "{error}");
    settle().await;
    // The HTTP/1.1 connection, whose response may still come, is closed.
    let target = only(&client);
    assert_eq!(
        (
            target.active(),
            target.idle(),
            target.closed(CloseReason::Abandoned)
        ),
        (0, 0, 1)
    );
    assert_eq!(connector.stats.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_blackholed_http2_connection_is_evicted_by_ping() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .http2_ping_interval(Some(Duration::from_secs(5))),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    connector.blackhole_open_connections();
    // A PING at most one interval later, unanswered for one more.
    for _ in 0..11 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let target = only(&client);
    assert_eq!((target.idle(), target.active()), (0, 0), "{target:?}");
    assert_eq!(target.closed_total(), 1);
    // The next request goes to a new, live connection.
    send(&mut client, get(URL, 2)).await.unwrap();
    assert_eq!(only(&client).opened(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_closes_every_connection_and_says_so() {
    use std::sync::Mutex;
    use tower::Layer;
    use tower_reuse_pool::events::{Closed, PoolEvents};

    #[derive(Default)]
    struct Closes(Mutex<Vec<CloseReason>>);
    impl PoolEvents for Closes {
        fn on_close(&self, event: &Closed<'_>) {
            self.0.lock().unwrap().push(event.reason());
        }
    }
    let closes = std::sync::Arc::new(Closes::default());
    let connector = DuplexConnector::new(ServerOptions::default());
    let pool: Pool<DuplexConnector> = tower_reuse_pool::PoolLayer::new(PoolConfig::default())
        .unwrap()
        .shared_events(closes.clone())
        .layer(connector.clone());
    // One idle connection, and one busy with an unread body.
    let mut a = pool.clone();
    let mut b = pool.clone();
    let (first, second) = tokio::join!(
        a.ready().await.unwrap().call(get(URL, 1)),
        b.ready().await.unwrap().call(get(URL, 2))
    );
    first.unwrap().into_body().collect().await.unwrap();
    let busy = second.unwrap();
    send(&mut a, get(URL, 3)).await.unwrap();
    assert_eq!(only(&pool).idle(), 1);
    drop((a, b, pool));
    settle().await;
    assert_eq!(*closes.0.lock().unwrap(), [CloseReason::PoolDropped]);
    // The busy one closes when its body is done, not back into a pool.
    busy.into_body().collect().await.unwrap();
    settle().await;
    assert_eq!(
        *closes.0.lock().unwrap(),
        [CloseReason::PoolDropped, CloseReason::PoolDropped]
    );
    assert_eq!(connector.stats.open(), 0);
}

#[tokio::test(start_paused = true)]
async fn lowering_max_idle_closes_the_idle_connections_above_it() {
    let connector = DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_millis(10)),
        ..ServerOptions::default()
    });
    let client = client(connector.clone(), PoolConfig::default());
    let tasks: Vec<_> = (0..4)
        .map(|i| tokio::spawn(client.clone().oneshot(get(URL, i))))
        .collect();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(only(&client).idle(), 4);

    client
        .control()
        .update(|c| c.max_idle_per_target(Some(1)))
        .unwrap();
    settle().await;
    let target = only(&client);
    assert_eq!(
        (target.idle(), target.closed(CloseReason::OverLimit)),
        (1, 3),
        "{target:?}"
    );
    assert_eq!(connector.stats.open(), 1);
}
