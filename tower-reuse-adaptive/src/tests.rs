//! The controller on paused time: signals fed as the pool's hook feeds
//! them, ticks at explicit instants, and the settings read back from a real
//! pool's control handle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::{Instant, advance};
use tower_layer::Layer;
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer, Target, TargetConfig};

use crate::config::{AdaptiveConfig, Mode};
use crate::controller::Controller;
use crate::events::{AdaptiveEvents, Change, Decision, Reason};

/// Notes every decision.
#[derive(Clone, Debug, Default)]
struct Noted(Arc<Mutex<Vec<Decision>>>);

impl AdaptiveEvents for Noted {
    fn on_decision(&self, decision: &Decision) {
        self.0.lock().unwrap().push(decision.clone());
    }
}

impl Noted {
    fn take(&self) -> Vec<Decision> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

struct Rig {
    controller: Arc<Controller>,
    control: PoolControl,
    noted: Noted,
    target: Target,
    _pool: Pool<HttpConnector>,
}

const TICK: Duration = Duration::from_secs(1);

fn rig(config: AdaptiveConfig) -> Rig {
    rig_with(config, PoolConfig::default())
}

fn rig_with(config: AdaptiveConfig, pool: PoolConfig) -> Rig {
    let pool: Pool<HttpConnector> = PoolLayer::new(pool).unwrap().layer(HttpConnector::new());
    let control = pool.control();
    let noted = Noted::default();
    let controller = Arc::new(Controller::new(
        config.validate().unwrap(),
        Arc::new(noted.clone()),
    ));
    controller.control.set(control.clone()).unwrap();
    let target = Target::from_uri(&"http://127.0.0.1:9".parse().unwrap(), None).unwrap();
    Rig {
        controller,
        control,
        noted,
        target,
        _pool: pool,
    }
}

impl Rig {
    /// One tick's worth of closed-loop load: `workers` requests in flight
    /// at once, `rounds` times, each reusing a connection idle `gap`.
    fn load(&self, workers: usize, rounds: usize, gap: Duration) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..rounds {
                for _ in 0..workers {
                    live.out(true, Duration::ZERO, Some(gap));
                }
                for _ in 0..workers {
                    live.back();
                }
            }
        });
    }

    /// A burst of `size` requests that end at once.
    fn burst(&self, size: usize) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..size {
                live.out(false, Duration::ZERO, None);
            }
            for _ in 0..size {
                live.back();
            }
        });
    }

    fn server_closed_idle(&self, idle: Duration) {
        self.controller.with_live(&self.target, |live| {
            live.closed(CloseReason::ServerClosed, Some(idle), 1)
        });
    }

    /// `n` connections expire idle `idle`; `ticks` ticks later, `n` demand
    /// connects would have reused them (missed reuses).
    async fn missed_reuses(&self, n: usize, idle: Option<Duration>, ticks: usize) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.closed(CloseReason::IdleTimeout, idle, 1);
            }
        });
        for _ in 0..ticks {
            self.tick().await;
        }
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.connect_started(true);
            }
        });
    }

    async fn tick(&self) {
        advance(TICK).await;
        self.controller.tick(Instant::now());
    }

    /// `seconds` of steady load, a tick each second.
    async fn steady(&self, seconds: usize, workers: usize) {
        for _ in 0..seconds {
            self.load(workers, 50, Duration::from_millis(1));
            self.tick().await;
        }
    }

    fn own(&self) -> TargetConfig {
        self.control.target_config(&self.target).unwrap_or_default()
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.own()
            .get_idle_timeout()
            .unwrap_or(self.control.config().get_idle_timeout())
    }

    fn max_idle(&self) -> Option<usize> {
        self.own().get_max_idle_per_target().flatten()
    }

    /// `n` connections open.
    fn connected(&self, n: usize) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.connected(true, Duration::from_millis(1), None);
            }
        });
    }

    /// What the pool does with a lowered cap: the idle connections above
    /// it close.
    fn close_above_cap(&self) {
        let open = self.controller.live_of(&self.target).unwrap().open();
        let cap = self.max_idle().unwrap_or(usize::MAX);
        self.controller.with_live(&self.target, |live| {
            for _ in cap..open {
                live.closed(CloseReason::OverLimit, Some(Duration::from_secs(1)), 1);
            }
        });
    }

    fn min_idle(&self) -> usize {
        self.own().get_min_idle_per_target().unwrap_or(0)
    }
}

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

/// Bursts of `size` every `period`, ticking each second, for `bursts`.
async fn bursts(rig: &Rig, size: usize, period: Duration, count: usize) {
    let ticks = (period.as_secs_f64() / TICK.as_secs_f64()).round() as usize;
    for _ in 0..count {
        rig.burst(size);
        for _ in 0..ticks {
            rig.tick().await;
        }
    }
}

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
    for _ in 0..25 {
        rig.tick().await;
    }
    assert_eq!(rig.control.target_config(&rig.target), None);
    assert_eq!(rig.controller.snapshot().tracked, 0);
}

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
async fn a_bursts_peak_counts_the_requests_waiting_for_a_connection() {
    let rig = rig(AdaptiveConfig::default());
    rig.server_closed_idle(Duration::from_secs(2));
    // Bursts of 16 through the layer, of which the pool serves 4 at once.
    for _ in 0..5 {
        rig.controller.with_live(&rig.target, |live| {
            for _ in 0..16 {
                live.started(Instant::now());
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
