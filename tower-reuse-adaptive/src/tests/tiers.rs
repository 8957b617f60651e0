//! Tuning within the affinity tiers' settings, and following a demotion.

use super::*;

#[tokio::test(start_paused = true)]
async fn tunes_within_a_tiers_settings_without_fighting_them() {
    // The affinity layer's tiers give a hot service its settings at the
    // service level (a 30 s idle timeout) and take them back at demotion;
    // the controller's own are the target's and stay under the tier's.
    let pool = PoolConfig::default().idle_timeout(Some(Duration::from_millis(1500)));
    let rig = rig_with(AdaptiveConfig::default(), pool);
    let hot = TargetConfig::default()
        .idle_timeout(Some(Duration::from_secs(30)))
        .min_connections_per_target(8);
    let mut changes = 0;
    for round in 0..6 {
        let promoted = round % 2 == 0;
        rig.control
            .set_service_config(&rig.target, promoted.then(|| hot.clone()))
            .unwrap();
        for _ in 0..20 {
            // Requests 2 s apart on each of 8 connections: the gaps want
            // 3 s or so.
            rig.load(8, 2, Duration::from_secs(2));
            rig.tick().await;
            let idle = rig.idle_timeout().unwrap();
            let tier = if promoted {
                Duration::from_secs(30)
            } else {
                Duration::from_millis(1500)
            };
            assert!(
                idle <= tier,
                "round {round}: {idle:?} over the tier's {tier:?}"
            );
        }
        changes += rig.noted.take().len();
        // The tier's own knob is never touched.
        assert_eq!(rig.own().get_min_connections_per_target(), None);
    }
    // One change per tier change at most, none in between.
    assert!(changes <= 6, "{changes} changes");
}

/// A pool with the cold tier's idle timeout, the target's service with the
/// hot tier's, and 20 s of requests 2 s apart on 8 connections: the
/// controller's own idle timeout is set (3.75 s, above the cold tier's).
async fn tuned_in_a_hot_tier() -> Rig {
    let pool = PoolConfig::default().idle_timeout(Some(Duration::from_millis(1500)));
    let rig = rig_with(AdaptiveConfig::default(), pool);
    let hot = TargetConfig::default().idle_timeout(Some(Duration::from_secs(30)));
    rig.control
        .set_service_config(&rig.target, Some(hot))
        .unwrap();
    for _ in 0..20 {
        rig.load(8, 2, Duration::from_secs(2));
        rig.tick().await;
    }
    let ours = rig.own().get_idle_timeout().flatten();
    assert!(ours > Some(Duration::from_millis(1500)), "{ours:?}");
    rig
}

#[tokio::test(start_paused = true)]
async fn a_quiet_target_is_taken_under_a_demoted_tier_at_the_next_tick() {
    // Quiet, then demoted: the next tick, not the tenth, gives the target
    // the cold tier's idle timeout back.
    let rig = tuned_in_a_hot_tier().await;
    rig.tick().await;
    rig.control.set_service_config(&rig.target, None).unwrap();
    rig.tick().await;
    assert_eq!(rig.own().get_idle_timeout(), None);
}

#[tokio::test(start_paused = true)]
async fn observing_over_a_demoted_tier_tells_the_lowering_once_per_cool_down() {
    // Frozen, the controller's idle timeout stays over the demoted tier's;
    // the lowering it would make at once is told once per cool-down, not
    // at every tick.
    let rig = tuned_in_a_hot_tier().await;
    let ours = rig.own();
    rig.controller.set_mode(Mode::Observe);
    rig.noted.take();
    rig.control.set_service_config(&rig.target, None).unwrap();
    for _ in 0..5 {
        rig.load(8, 2, Duration::from_secs(2));
        rig.tick().await;
    }
    let told = rig.noted.take();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(!told[0].applied());
    assert_eq!(rig.own(), ours);
}
