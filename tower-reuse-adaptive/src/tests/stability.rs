//! Anti-oscillation: convergence, the dead band, the bounded step and the cool-down, the operator's longest idle timeout.

use super::*;

#[tokio::test(start_paused = true)]
async fn converges_on_steady_load_then_makes_no_change() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(30, 8).await;
    let warm_up = rig.noted.take();
    assert!(!warm_up.is_empty());
    assert!(warm_up.iter().all(|d| d.reason() == Reason::IdleGaps));
    // Tiny gaps: connections are kept a second, reached in bounded steps
    // (55 s divided by at most 8 per decision).
    assert_eq!(rig.idle_timeout(), Some(Duration::from_secs(1)));
    for pair in warm_up.windows(2) {
        let (Change::IdleTimeout { from: Some(a), .. }, Change::IdleTimeout { from: Some(b), .. }) =
            (pair[0].change(), pair[1].change())
        else {
            panic!("idle timeout changes: {warm_up:?}");
        };
        assert!(a > b);
    }
    rig.steady(60, 8).await;
    assert!(rig.noted.take().len() <= 3);
    // Eight in flight at the most, each request counted as it went out.
    let snapshot = rig.controller.snapshot();
    let estimates = snapshot.target(&rig.target).unwrap();
    assert_eq!(estimates.peak, 8);
    assert_eq!(estimates.in_flight_p99, Some(8));
    assert_eq!(estimates.in_flight_p50, Some(4));
}

#[tokio::test(start_paused = true)]
async fn a_load_inside_the_dead_band_changes_nothing() {
    // The pool keeps idle connections 1.2 s; the gaps want 1 s: within
    // the dead band (a quarter of 1.2 s).
    let pool = PoolConfig::default().idle_timeout(Some(Duration::from_millis(1200)));
    let rig = rig_with(AdaptiveConfig::default(), pool);
    rig.steady(90, 8).await;
    assert!(rig.noted.take().is_empty());
    assert_eq!(rig.control.target_config(&rig.target), None);
}

#[tokio::test(start_paused = true)]
async fn a_learned_limit_that_moves_a_few_milliseconds_changes_nothing() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(2, 2).await;
    rig.server_closed_idle(Duration::from_millis(2010));
    rig.tick().await;
    rig.noted.take();
    for ms in [2004, 2001, 1998, 2003, 1996] {
        rig.server_closed_idle(Duration::from_millis(ms));
        rig.load(2, 50, Duration::from_millis(1));
        rig.tick().await;
    }
    let changes: Vec<_> = rig
        .noted
        .take()
        .into_iter()
        .filter(|d| d.reason() == Reason::ServerIdleLimit)
        .collect();
    assert!(changes.is_empty(), "{changes:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_changes_are_bounded_in_step_and_a_cool_down_apart() {
    let rig = rig(AdaptiveConfig::default());
    let mut changed_at = Vec::new();
    for tick in 0..30 {
        rig.steady(1, 8).await;
        for decision in rig.noted.take() {
            let Change::IdleTimeout {
                from: Some(from),
                to: Some(to),
            } = decision.change()
            else {
                panic!("{decision:?}");
            };
            // At most 8 times shorter per decision (`max_factor`).
            assert!(to >= from / 8, "{from:?} -> {to:?}");
            changed_at.push(tick);
        }
    }
    assert_eq!(rig.idle_timeout(), Some(Duration::from_secs(1)));
    assert!(changed_at.len() >= 2, "{changed_at:?}");
    for pair in changed_at.windows(2) {
        assert!(pair[1] - pair[0] >= 5, "{changed_at:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn warm_connections_rise_by_max_step_and_not_within_the_dead_band() {
    let rig = rig(AdaptiveConfig::default().max_step(8));
    rig.server_closed_idle(Duration::from_secs(2));
    bursts(&rig, 32, Duration::from_secs(3), 5).await;
    let raised: Vec<_> = rig
        .noted
        .take()
        .into_iter()
        .filter_map(|d| match d.change() {
            Change::MinIdle { from, to } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(raised.first(), Some(&(0, 8)), "{raised:?}");
    for (from, to) in &raised {
        assert!(to - from <= 8, "{raised:?}");
    }
    // Up to the peak, a cool-down at a time.
    bursts(&rig, 32, Duration::from_secs(3), 10).await;
    assert_eq!(rig.min_idle(), 32);
    rig.noted.take();
    // Bursts a little larger (36 against 32: within the dead band).
    bursts(&rig, 36, Duration::from_secs(3), 8).await;
    assert_eq!(rig.min_idle(), 32);
}

#[tokio::test(start_paused = true)]
async fn the_operators_longest_idle_timeout_caps_the_controllers() {
    let config = AdaptiveConfig::default()
        .idle_timeout_bounds(Duration::from_millis(100), Some(Duration::from_secs(20)));
    let rig = rig(config);
    rig.steady(2, 2).await;
    // Missed reuses 30 s apart ask for 45 s; the bound says 20.
    for _ in 0..4 {
        rig.missed_reuses(3, Some(Duration::from_secs(20)), 10)
            .await;
    }
    for _ in 0..10 {
        rig.tick().await;
    }
    assert_eq!(rig.idle_timeout(), Some(Duration::from_secs(20)));
}
