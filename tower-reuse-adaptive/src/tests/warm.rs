//! Warm connections ahead of periodic bursts, and the cap that lets a
//! spike's idle connections go.

use super::*;

#[tokio::test(start_paused = true)]
async fn keeps_a_periodic_bursts_peak_warm_then_releases_it_gradually() {
    let rig = rig(AdaptiveConfig::default());
    // The server closes connections idle 2 s; bursts of 32 every 3 s.
    rig.server_closed_idle(Duration::from_secs(2));
    bursts(&rig, 32, Duration::from_secs(3), 5).await;
    // Found within a bounded number of ticks: the fourth burst's start
    // gives three equal intervals.
    assert_eq!(rig.min_idle(), 32);
    let warm: Vec<_> = rig
        .noted
        .take()
        .into_iter()
        .filter(|d| d.reason() == Reason::PeriodicBurst)
        .collect();
    assert_eq!(warm.len(), 1);
    assert_eq!(warm[0].inputs().period, Some(Duration::from_secs(3)));
    // The bursts stop: at most half released per decision, a cool-down
    // apart, down to none.
    let mut last = 32;
    let mut released_at: Vec<Instant> = Vec::new();
    for _ in 0..60 {
        rig.tick().await;
        let now = rig.min_idle();
        if now != last {
            assert!(now >= last / 2, "{last} -> {now}");
            released_at.push(Instant::now());
            last = now;
        }
    }
    assert_eq!(last, 0);
    assert!(released_at.len() >= 5);
    for pair in released_at.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(5));
    }
}

#[tokio::test(start_paused = true)]
async fn bursts_whose_connections_outlive_the_gap_get_none_kept_warm() {
    let rig = rig(AdaptiveConfig::default());
    bursts(&rig, 32, Duration::from_secs(3), 8).await;
    assert_eq!(rig.min_idle(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_bursts_peak_counts_the_requests_waiting_for_a_connection() {
    let rig = rig(AdaptiveConfig::default());
    rig.server_closed_idle(Duration::from_secs(2));
    // Bursts of 16 through the layer, of which the pool serves 4 at once.
    for _ in 0..5 {
        rig.controller.with_live(&rig.target, |live| {
            for _ in 0..16 {
                live.started(live.now());
            }
            for _ in 0..4 {
                for _ in 0..4 {
                    live.checkout(false, Duration::ZERO, None);
                }
                for _ in 0..4 {
                    live.back();
                }
            }
        });
        for _ in 0..3 {
            rig.tick().await;
        }
    }
    assert_eq!(rig.min_idle(), 16);
}

#[tokio::test(start_paused = true)]
async fn a_spikes_idle_connections_are_capped_then_released_by_halves() {
    let rig = rig(AdaptiveConfig::default());
    // A spike of 64 connections, then 4 workers.
    rig.connected(64);
    rig.load(64, 1, Duration::from_millis(1));
    let mut decided = Vec::new();
    for second in 0..80 {
        rig.load(4, 50, Duration::from_millis(1));
        rig.tick().await;
        rig.close_above_cap();
        for decision in rig.noted.take() {
            if let Change::MaxIdle { from, to } = decision.change() {
                decided.push((second, from, to));
            }
        }
    }
    // Nothing while the spike is in the window (30 s); then halves, a
    // cool-down apart, down to the peak and a quarter (5).
    let seconds: Vec<_> = decided.iter().map(|d| d.0).collect();
    let caps: Vec<_> = decided.iter().map(|d| d.2).collect();
    assert_eq!(caps, [Some(32), Some(16), Some(8), Some(5)], "{decided:?}");
    assert!(seconds[0] >= 29, "{decided:?}");
    assert!(seconds.windows(2).all(|w| w[1] - w[0] >= 5), "{decided:?}");
    // The load grows past the cap: raised at once.
    rig.load(16, 50, Duration::from_millis(1));
    rig.tick().await;
    assert_eq!(rig.max_idle(), Some(20));
    rig.noted.take();
    // A steady load inside the cap: no change.
    for _ in 0..60 {
        rig.load(16, 50, Duration::from_millis(1));
        rig.tick().await;
    }
    let changed: Vec<_> = rig
        .noted
        .take()
        .into_iter()
        .filter(|d| d.change().knob() == "max_idle_per_target")
        .collect();
    assert!(
        changed.is_empty(),
        "changed under a steady load: {changed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_idle_cap_keeps_a_tiers_connections() {
    let rig = rig(AdaptiveConfig::default());
    // The affinity tier keeps 8 connections open for a hot service.
    let hot = TargetConfig::default().min_connections_per_target(8);
    rig.control
        .set_service_config(&rig.target, Some(hot))
        .unwrap();
    rig.connected(64);
    rig.load(64, 1, Duration::from_millis(1));
    for _ in 0..80 {
        rig.load(2, 50, Duration::from_millis(1));
        rig.tick().await;
        rig.close_above_cap();
    }
    assert_eq!(rig.max_idle(), Some(8));
}

/// The pool refuses more warm connections than a target may keep idle:
/// the controller keeps as many as the operator's cap allows, and every
/// decision is applied.
#[tokio::test(start_paused = true)]
async fn warm_connections_stay_within_the_operators_idle_cap() {
    let pool = PoolConfig::default().max_idle_per_target(Some(4));
    let rig = rig_with(AdaptiveConfig::default(), pool);
    rig.server_closed_idle(Duration::from_secs(2));
    bursts(&rig, 32, Duration::from_secs(3), 5).await;
    assert_eq!(rig.min_idle(), 4);
    let refused: Vec<_> = rig
        .noted
        .take()
        .into_iter()
        .filter(|d| !d.applied())
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

/// One HTTP/2 connection carries a burst's streams: one is kept warm.
#[tokio::test(start_paused = true)]
async fn an_http2_target_keeps_one_connection_warm_for_its_bursts() {
    let rig = rig(AdaptiveConfig::default());
    rig.connected_as(1, true);
    rig.server_closed_idle(Duration::from_secs(2));
    bursts(&rig, 32, Duration::from_secs(3), 5).await;
    assert_eq!(rig.min_idle(), 1);
}
