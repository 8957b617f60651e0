//! The kill switch and per-target settings: with reuse off no connection
//! opens but for a request, whatever pre-warming or a target's own
//! settings say; a target's own settings override only what they set.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::advance;
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{Pool, PoolConfig, Target, TargetConfig};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{
    REAL_TIME_BOUND, client, get, on_paused_time_within, only, pool, send, settle,
};

const URL: &str = "http://pool.test/";

fn target(url: &str) -> Target {
    Target::from_uri(&url.parse().unwrap(), None).unwrap()
}

/// Light load: a request every 50 ms for one second (20 requests),
/// returning how many were sent.
async fn light_load<C: tower_reuse_pool::Connect>(client: &mut Pool<C>, url: &str) -> u64 {
    let mut sent = 0;
    for i in 0..20 {
        send(client, get(url, 100 + i)).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent
}

#[test]
fn the_kill_switch_opens_one_connection_per_request_with_min_idle_set() {
    // A pool that keeps reconnecting spins: bounded in real time.
    on_paused_time_within(REAL_TIME_BOUND, kill_switch_with_min_idle);
}

async fn kill_switch_with_min_idle() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(
        connector.clone(),
        PoolConfig::default().min_idle_per_target(2),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    settle().await;
    assert!(only(&client).idle() >= 2, "pre-warmed to min idle");
    client.control().set_reuse(false).unwrap();
    settle().await;
    assert_eq!(
        only(&client).idle(),
        0,
        "the kill switch closes idle connections"
    );
    let before = connector.attempts.load(Ordering::SeqCst);
    let sent = light_load(&mut client, URL).await;
    settle().await;
    let opened = connector.attempts.load(Ordering::SeqCst) - before;
    assert_eq!(opened, sent, "connections opened while reuse was off");
    let snapshot = only(&client);
    assert_eq!(snapshot.idle(), 0, "{snapshot:?}");
    assert_eq!(snapshot.connecting(), 0, "{snapshot:?}");
    // Back on: pre-warming resumes.
    client.control().set_reuse(true).unwrap();
    advance(Duration::from_millis(1)).await;
    settle().await;
    assert!(only(&client).idle() >= 2, "{:?}", only(&client));
}

#[tokio::test]
async fn the_kill_switch_on_loopback_opens_what_requests_need_and_no_more() {
    let server = TestServer::start(ServerOptions::default()).await;
    let url = server.url("/");
    // Switched on at run time, after pre-warming.
    let mut client = pool(PoolConfig::default().min_idle_per_target(2));
    send(&mut client, get(&url, 1)).await.unwrap();
    tower_reuse_tests::until("pre-warmed", || only(&client).idle() >= 2).await;
    client.control().set_reuse(false).unwrap();
    let before = server.stats.accepted();
    let sent = light_load(&mut client, &url).await;
    assert_eq!(server.stats.accepted() - before, sent);
    // Off from the start, with min idle set: valid, and nothing pre-warms.
    let server = TestServer::start(ServerOptions::default()).await;
    let url = server.url("/");
    let mut client = pool(PoolConfig::default().reuse(false).min_idle_per_target(4));
    let sent = light_load(&mut client, &url).await;
    assert_eq!(server.stats.accepted(), sent);
    assert_eq!(only(&client).closed(CloseReason::KillSwitch), sent);
}

#[test]
fn the_kill_switch_governs_a_target_with_its_own_settings() {
    on_paused_time_within(REAL_TIME_BOUND, kill_switch_over_own_settings);
}

async fn kill_switch_over_own_settings() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(connector.clone(), PoolConfig::default());
    let own = "http://own.test/";
    client
        .control()
        .set_target_config(
            &target(own),
            Some(TargetConfig::default().min_idle_per_target(1).reuse(true)),
        )
        .unwrap();
    send(&mut client, get(own, 1)).await.unwrap();
    settle().await;
    client.control().set_reuse(false).unwrap();
    settle().await;
    let snapshot = client.control().snapshot();
    let mine = snapshot.target(&target(own)).unwrap();
    assert_eq!(mine.idle(), 0, "{mine:?}");
    let before = connector.attempts.load(Ordering::SeqCst);
    let sent = light_load(&mut client, own).await;
    settle().await;
    assert_eq!(connector.attempts.load(Ordering::SeqCst) - before, sent);
}

#[tokio::test(start_paused = true)]
async fn a_targets_own_settings_override_only_what_they_set() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let mut client = client(connector, PoolConfig::default());
    let own = "http://own.test/";
    let other = "http://other.test/";
    let control = client.control();
    control
        .set_target_config(
            &target(own),
            Some(TargetConfig::default().max_idle_per_target(Some(1))),
        )
        .unwrap();
    // A pool-wide change after the target got its own settings.
    control
        .update(|c| c.idle_timeout(Some(Duration::from_secs(3))))
        .unwrap();
    send(&mut client, get(own, 1)).await.unwrap();
    send(&mut client, get(other, 2)).await.unwrap();
    settle().await;
    advance(Duration::from_secs(3)).await;
    settle().await;
    let snapshot = control.snapshot();
    for url in [own, other] {
        let t = snapshot.target(&target(url)).unwrap();
        assert_eq!(t.closed(CloseReason::IdleTimeout), 1, "{url}: {t:?}");
    }
    assert_eq!(
        control.target_config(&target(own)),
        Some(TargetConfig::default().max_idle_per_target(Some(1)))
    );
    control.set_target_config(&target(own), None).unwrap();
    assert_eq!(control.target_config(&target(own)), None);
}

#[tokio::test(start_paused = true)]
async fn a_pool_wide_update_that_breaks_a_targets_settings_is_rejected() {
    let connector = DuplexConnector::new(ServerOptions::default());
    let client = client(connector, PoolConfig::default());
    let control = client.control();
    control
        .set_target_config(
            &target(URL),
            Some(TargetConfig::default().max_idle_per_target(Some(8))),
        )
        .unwrap();
    let err = control
        .update(|c| c.max_connections_per_target(Some(4)))
        .unwrap_err();
    assert_eq!(err.field(), "max_idle_per_target");
    assert_eq!(control.config().get_max_connections_per_target(), None);
}

#[tokio::test(start_paused = true)]
async fn requests_that_gave_up_on_the_kill_switch_no_longer_count_as_waiting() {
    // One connect slot, held by a connect that takes an hour.
    let connector = DuplexConnector::new(ServerOptions::default())
        .with_connect_delay(Duration::from_secs(3600));
    let client = client(
        connector,
        PoolConfig::default()
            .reuse(false)
            .max_connections_per_target(Some(1))
            .max_waiters_per_target(Some(2))
            .connect_timeout(None)
            .checkout_timeout(Some(Duration::from_secs(1))),
    );
    let mut holder = client.clone();
    let first = tokio::spawn(async move { send(&mut holder, get(URL, 0)).await });
    settle().await;
    for id in 1..=3 {
        // Never "too many waiters": those before it gave up.
        let error = send(&mut client.clone(), get(URL, id)).await.unwrap_err();
        assert_eq!(
            error.kind(),
            tower_reuse_pool::ErrorKind::CheckoutTimeout,
            "{error}"
        );
    }
    assert_eq!(only(&client).waiting(), 0, "{:?}", only(&client));
    first.abort();
}

#[test]
fn a_targets_own_prior_knowledge_holds_from_its_first_connect() {
    use tower_reuse_tests::memory_h2::{Behaviour, MemoryH2};
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::Respond).respond_after(Duration::from_millis(5));
        // HTTP/1.1 pool-wide; h2c by prior knowledge for this target alone.
        let client = client(server.clone(), PoolConfig::default());
        client
            .control()
            .set_target_config(
                &target(URL),
                Some(TargetConfig::default().http2_prior_knowledge(true)),
            )
            .unwrap();
        let burst = tower_reuse_tests::concurrently(8, |id| {
            let mut client = client.clone();
            async move { send(&mut client, get(URL, id)).await.map(|_| ()) }
        })
        .await;
        assert!(burst.iter().all(Result::is_ok), "{burst:?}");
        // Within one connection's streams (10): one connect, not one per request.
        assert_eq!(server.accepted(), 1, "{:?}", only(&client));
    });
}
