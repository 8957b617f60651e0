//! What the controller learns of a server (its idle timeout, its request limit) and of the workload's gaps.

use super::*;

#[tokio::test(start_paused = true)]
async fn learns_a_servers_idle_close_and_closes_first_at_once() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(3, 2).await;
    rig.noted.take();
    rig.server_closed_idle(Duration::from_millis(1003));
    rig.tick().await;
    let decisions = rig.noted.take();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0].reason(), Reason::ServerIdleLimit);
    assert_eq!(
        decisions[0].inputs().server_idle_limit,
        Some(Duration::from_millis(1003))
    );
    let idle = rig.idle_timeout().unwrap();
    assert!(idle <= Duration::from_millis(903), "{idle:?}");
    assert!(idle >= Duration::from_millis(500), "{idle:?}");
    let estimates = rig.controller.snapshot();
    let target = estimates.target(&rig.target).unwrap();
    assert_eq!(target.server_idle_limit, Some(Duration::from_millis(1003)));
    assert_eq!(target.idle_timeout, Some(Some(idle)));
}

#[tokio::test(start_paused = true)]
async fn learns_a_request_limit_from_closes_that_agree() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(2, 2).await;
    for _ in 0..3 {
        rig.controller.with_live(&rig.target, |live| {
            live.closed(CloseReason::ServerHint, None, 10)
        });
    }
    rig.tick().await;
    assert_eq!(rig.own().get_max_requests_per_connection(), Some(Some(10)));
    assert!(
        rig.noted
            .take()
            .iter()
            .any(|d| d.reason() == Reason::RequestLimit)
    );
}

#[tokio::test(start_paused = true)]
async fn sparse_requests_raise_a_short_idle_timeout_and_then_hold() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(30, 4).await;
    assert_eq!(rig.idle_timeout(), Some(Duration::from_secs(1)));
    rig.noted.take();
    // Now one request every 4 s: each finds its connection expired, and
    // its demand connect tells the gap it would have had.
    for _ in 0..30 {
        rig.missed_reuses(1, Some(Duration::from_secs(1)), 4).await;
        rig.controller.with_live(&rig.target, |live| {
            live.out(false, Duration::ZERO, None);
            live.back();
        });
    }
    let idle = rig.idle_timeout().unwrap();
    assert!(idle >= Duration::from_secs(4), "{idle:?}");
    let raised = rig.noted.take();
    assert!(raised.len() <= 3, "{raised:?}");
}

#[tokio::test(start_paused = true)]
async fn a_load_that_pauses_longer_than_the_timeout_keeps_its_connections() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(15, 8).await;
    assert_eq!(rig.idle_timeout(), Some(Duration::from_secs(1)));
    rig.noted.take();
    // Busy a second, quiet two: the eight connections expire in each quiet
    // spell and the next busy second opens them again, while thousands of
    // reuses a millisecond apart fill the gaps' percentiles.
    for _ in 0..20 {
        let expired = rig
            .idle_timeout()
            .is_some_and(|t| t < Duration::from_secs(2));
        let missed = if expired { 8 } else { 0 };
        rig.missed_reuses(missed, rig.idle_timeout(), 2).await;
        rig.load(8, 100, Duration::from_millis(1));
        rig.tick().await;
    }
    let idle = rig.idle_timeout().unwrap();
    assert!(idle >= Duration::from_secs(2), "{idle:?}");
    let changes = rig.noted.take();
    assert!(changes.len() <= 2, "{changes:?}");
}
