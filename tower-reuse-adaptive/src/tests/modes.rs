//! Observe and Off, the operator's bounds and own settings, and forgetting quiet targets.

use super::*;

#[tokio::test(start_paused = true)]
async fn observe_only_freezes_and_off_takes_every_setting_back() {
    let rig = rig(AdaptiveConfig::default());
    rig.steady(10, 4).await;
    let set = rig.own();
    assert!(set.get_idle_timeout().is_some());
    rig.noted.take();
    rig.controller.set_mode(Mode::Observe);
    rig.server_closed_idle(Duration::from_millis(500));
    rig.tick().await;
    let observed = rig.noted.take();
    assert!(!observed.is_empty());
    assert!(observed.iter().all(|d| !d.applied()));
    assert_eq!(rig.own(), set);
    rig.controller.set_mode(Mode::Off);
    rig.tick().await;
    assert_eq!(rig.control.target_config(&rig.target), None);
    let restored = rig.noted.take();
    assert!(restored.iter().all(|d| d.reason() == Reason::Restored));
    rig.steady(30, 4).await;
    assert!(rig.noted.take().is_empty());
    assert_eq!(rig.control.target_config(&rig.target), None);
}

#[tokio::test(start_paused = true)]
async fn back_on_after_observing_applies_what_was_decided() {
    let rig = rig(AdaptiveConfig::default().mode(Mode::Observe));
    rig.steady(10, 4).await;
    rig.server_closed_idle(Duration::from_millis(1000));
    rig.steady(2, 4).await;
    assert_eq!(rig.control.target_config(&rig.target), None);
    assert!(rig.noted.take().iter().all(|d| !d.applied()));
    rig.controller.set_mode(Mode::On);
    rig.steady(6, 4).await;
    let idle = rig.idle_timeout().unwrap();
    assert!(idle <= Duration::from_millis(900), "{idle:?}");
    let applied = rig.noted.take();
    assert!(applied.iter().any(|d| d.applied()), "{applied:?}");
}

#[tokio::test(start_paused = true)]
async fn operator_bounds_and_own_settings_are_never_crossed() {
    let config = AdaptiveConfig::default()
        .idle_timeout_bounds(Duration::from_millis(800), None)
        .max_prewarm(8);
    let rig = rig(config);
    rig.server_closed_idle(Duration::from_millis(300));
    bursts(&rig, 32, Duration::from_secs(3), 6).await;
    assert_eq!(rig.idle_timeout(), Some(Duration::from_millis(800)));
    assert_eq!(rig.min_idle(), 8);
    // A knob set on the target itself is the operator's.
    let other = Target::from_uri(&"http://127.0.0.2:9".parse().unwrap(), None).unwrap();
    rig.control
        .set_target_config(
            &other,
            Some(TargetConfig::default().idle_timeout(Some(Duration::from_secs(20)))),
        )
        .unwrap();
    rig.controller.with_live(&other, |live| {
        live.closed(CloseReason::ServerClosed, Some(Duration::from_secs(1)), 1);
        live.out(true, Duration::ZERO, Some(Duration::from_millis(1)));
        live.back();
    });
    rig.tick().await;
    assert_eq!(
        rig.control
            .target_config(&other)
            .unwrap()
            .get_idle_timeout(),
        Some(Some(Duration::from_secs(20)))
    );
}

/// Targets forgotten after 20 s of quiet.
fn forgetful() -> AdaptiveConfig {
    AdaptiveConfig::default()
        .window(Duration::from_secs(10))
        .forget_after(Duration::from_secs(20))
}

#[tokio::test(start_paused = true)]
async fn a_quiet_target_is_forgotten_with_its_settings() {
    let rig = rig(forgetful());
    rig.steady(10, 4).await;
    assert!(rig.control.target_config(&rig.target).is_some());
    rig.noted.take();
    for _ in 0..25 {
        rig.tick().await;
    }
    assert_eq!(rig.control.target_config(&rig.target), None);
    assert_eq!(rig.controller.snapshot().tracked, 0);
    // Taken back, and told.
    let told = rig.noted.take();
    assert!(!told.is_empty());
    assert!(
        told.iter()
            .all(|d| d.reason() == Reason::Restored && d.applied()),
        "{told:?}"
    );
}

/// The ticking task runs on the runtime of the first request; when that
/// runtime shuts down, the next request's runtime gets it back.
#[test]
fn the_tick_task_starts_again_on_a_new_runtime() {
    let controller = bare_controller();
    let ticks = |c: &Controller| c.snapshot().ticks;
    let first = paused_runtime();
    first.block_on(async {
        controller.start();
        tokio::time::sleep(TICK * 3).await;
    });
    let before = ticks(&controller);
    assert!(before >= 2, "{before} ticks");
    drop(first);
    let second = paused_runtime();
    second.block_on(async {
        controller.start();
        tokio::time::sleep(TICK * 3).await;
    });
    assert!(ticks(&controller) >= before + 2, "not restarted");
}

/// Nor is it lost when the first runtime shuts down before it ever ran.
#[test]
fn the_tick_task_starts_again_when_its_runtime_never_ran_it() {
    let controller = bare_controller();
    let first = paused_runtime();
    first.block_on(async { controller.start() });
    drop(first);
    let second = paused_runtime();
    second.block_on(async {
        controller.start();
        tokio::time::sleep(TICK * 3).await;
    });
    assert!(controller.snapshot().ticks >= 2, "not restarted");
    // And outside any runtime, a request starts nothing and panics not.
    controller.start();
}

#[tokio::test(start_paused = true)]
async fn a_target_a_service_handle_holds_is_not_forgotten() {
    let rig = rig(forgetful());
    rig.steady(10, 4).await;
    // A service handle keeps its last target's signals.
    let held = rig.controller.live_of(&rig.target).unwrap();
    for _ in 0..25 {
        rig.tick().await;
    }
    assert_eq!(rig.controller.snapshot().tracked, 1);
    drop(held);
    // A request longer than `forget_after` keeps it too.
    rig.controller
        .with_live(&rig.target, |live| live.out(true, Duration::ZERO, None));
    for _ in 0..25 {
        rig.tick().await;
    }
    assert_eq!(rig.controller.snapshot().tracked, 1);
    rig.controller.with_live(&rig.target, |live| live.back());
    for _ in 0..25 {
        rig.tick().await;
    }
    for _ in 0..10 {
        rig.tick().await;
    }
    assert_eq!(rig.controller.snapshot().tracked, 0);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A controller with no pool: it ticks, and decides nothing.
fn bare_controller() -> Arc<Controller> {
    Arc::new(Controller::new(
        AdaptiveConfig::default().validate().unwrap(),
        Arc::new(Noted::default()),
    ))
}
