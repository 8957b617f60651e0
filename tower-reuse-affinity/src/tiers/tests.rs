//! The tier controller's rules, on explicit instants (no clock is read but
//! the base).

use std::time::Duration;

use tokio::time::Instant;

use super::change::{ChangeKind, DemoteReason, KeySnapshot, TierChange};
use super::controller::{DISPLACE_MARGIN, Tiers};
use super::*;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const D: u64 = 4;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A controller and its clock: `at` is the time since the base.
struct Run {
    tiers: Tiers,
    base: Instant,
    at: Duration,
    /// Every change so far, with its time since the base.
    changes: Vec<(Duration, TierChange)>,
}

impl Run {
    fn new(config: TierConfig) -> Self {
        let base = Instant::now();
        Run {
            tiers: Tiers::new(&config.validate().unwrap(), base),
            base,
            at: Duration::ZERO,
            changes: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.at
    }

    fn record(&mut self, key: u64) -> Tier {
        let recorded = self.tiers.record(key, self.now());
        let tier = recorded.tier;
        let at = self.at;
        self.changes.extend(recorded.changes().map(|c| (at, c)));
        tier
    }

    fn sweep(&mut self) {
        let at = self.at;
        let swept = self.tiers.sweep(self.now());
        self.changes.extend(swept.into_iter().map(|c| (at, c)));
    }

    /// Runs `for_` of traffic: each key of `rates` (key, requests per
    /// second) at evenly spaced times, and a sweep every 500 ms (a bucket
    /// of the default promote window). Time moves in 10 ms steps.
    fn drive(&mut self, rates: &[(u64, f64)], for_: Duration) {
        let step = ms(10);
        let end = self.at + for_;
        while self.at < end {
            self.at += step;
            let t = self.at.as_secs_f64();
            let before = t - step.as_secs_f64();
            for &(key, rps) in rates {
                // Requests whose time (k / rps) falls in (before, t].
                let due = (t * rps + 1e-9).floor() - (before * rps + 1e-9).floor();
                for _ in 0..due as u64 {
                    self.record(key);
                }
            }
            if self.at.as_millis().is_multiple_of(500) {
                self.sweep();
            }
        }
    }

    fn tier(&self, key: u64) -> Option<Tier> {
        self.key(key).map(|k| k.tier)
    }

    fn key(&self, key: u64) -> Option<KeySnapshot> {
        self.tiers
            .snapshot(self.now())
            .into_iter()
            .find(|k| k.key == key)
    }

    fn dedicated(&self) -> usize {
        let snapshot = self.tiers.snapshot(self.now());
        snapshot
            .iter()
            .filter(|k| k.tier == Tier::Dedicated)
            .count()
    }
}

#[test]
fn promotes_only_once_the_rate_has_held_over_the_promote_window() {
    let mut run = Run::new(TierConfig::default());
    // A at twice the threshold from the start, B under it, C a burst.
    run.record(A);
    for _ in 0..100 {
        run.record(C);
    }
    run.drive(&[(A, 10.0), (B, 4.0)], ms(4_990));
    assert!(run.changes.is_empty(), "{:?}", run.changes);
    assert_eq!(run.tier(A), Some(Tier::Cold));
    run.drive(&[(A, 10.0), (B, 4.0)], ms(10));
    let [(at, change)] = &run.changes[..] else {
        panic!("{:?}", run.changes)
    };
    assert_eq!(*at, secs(5));
    assert_eq!(change.key, A);
    assert_eq!(change.kind, ChangeKind::Promoted);
    assert!((change.rate - 10.0).abs() < 0.5, "{change:?}");
    assert_eq!(change.rate_window, secs(5));
    assert_eq!(change.dedicated_for, Duration::ZERO);
    assert_eq!(run.tier(A), Some(Tier::Dedicated));
    // B stays under the threshold and C's burst has left the window.
    run.drive(&[(A, 10.0), (B, 4.0)], secs(60));
    run.record(C);
    assert_eq!(run.changes.len(), 1, "{:?}", run.changes);
    assert_eq!(run.tier(B), Some(Tier::Cold));
}

#[test]
fn a_burst_inside_the_first_window_does_not_promote_early() {
    let mut run = Run::new(TierConfig::default());
    for _ in 0..1_000 {
        assert_eq!(run.record(A), Tier::Cold);
    }
    run.at = ms(4_999);
    assert_eq!(
        run.record(A),
        Tier::Cold,
        "tracked for less than the window"
    );
    run.at = secs(5);
    // The burst at 0 s has left the window by now: 1 request in 4.5 s.
    assert_eq!(run.record(A), Tier::Cold);
    assert!(run.changes.is_empty());
}

#[test]
fn a_rate_between_the_thresholds_never_changes_a_tier() {
    let mut run = Run::new(TierConfig::default());
    run.drive(&[(A, 10.0)], secs(6));
    assert_eq!(run.changes.len(), 1);
    // A (dedicated) and B (cold) both at 3 rps, between 1 and 5, for ten
    // demote windows, then at the edges of the band.
    for rps in [3.0, 1.2, 4.5] {
        run.drive(&[(A, rps), (B, rps)], secs(100));
    }
    assert_eq!(run.changes.len(), 1, "{:?}", run.changes);
    assert_eq!(run.tier(A), Some(Tier::Dedicated));
    assert_eq!(run.tier(B), Some(Tier::Cold));
}

#[test]
fn demotes_after_the_demote_window_below_demote_rps() {
    let mut run = Run::new(TierConfig::default());
    run.drive(&[(A, 10.0)], secs(40));
    // From 40 s, 0.5 rps: the 30 s average falls under 1 rps after about
    // 28.4 s (10 * (30 - x) + 0.5 * x < 30); the window moves a bucket (3
    // s) at a time, and covers 27 to 30 s.
    run.drive(&[(A, 0.5)], secs(60));
    let [(promoted_at, _), (at, change)] = &run.changes[..] else {
        panic!("{:?}", run.changes)
    };
    assert_eq!(
        change.kind,
        ChangeKind::Demoted {
            reason: DemoteReason::Cold
        }
    );
    assert!(*at >= secs(40 + 25) && *at <= secs(40 + 31), "{at:?}");
    assert!(change.rate < 1.0 && change.rate > 0.5, "{change:?}");
    assert_eq!(change.rate_window, secs(30));
    assert_eq!(change.dedicated_for, *at - *promoted_at);
    assert_eq!(run.tier(A), Some(Tier::Cold));
}

#[test]
fn a_key_stays_dedicated_for_at_least_the_demote_window() {
    let mut run = Run::new(TierConfig::default());
    run.record(A);
    run.drive(&[(A, 10.0)], secs(5));
    assert_eq!(run.changes.len(), 1);
    // Quiet at once (one request every 2 s keeps it from idling): the
    // average falls under 1 rps before it has been dedicated for 30 s.
    run.drive(&[(A, 0.5)], secs(60));
    let (at, change) = &run.changes[1];
    assert_eq!(*at, secs(35), "30 s after the promotion at 5 s");
    assert_eq!(change.dedicated_for, secs(30));
    assert_eq!(run.changes.len(), 2);
}

#[test]
fn retires_an_idle_dedicated_key_before_the_demote_rule_fires() {
    let config = TierConfig::default().idle_retire_after(secs(10));
    let mut run = Run::new(config);
    run.record(A);
    run.record(B);
    run.drive(&[(A, 10.0), (B, 10.0)], secs(7));
    assert_eq!(run.dedicated(), 2);
    // B keeps a request in flight: not idle while it lasts.
    assert!(run.tiers.enter(B, run.now()));
    run.drive(&[], ms(9_990));
    assert_eq!(run.changes.len(), 2, "{:?}", run.changes);
    run.drive(&[], ms(10));
    let (at, change) = &run.changes[2];
    assert_eq!((*at, change.key), (secs(17), A));
    assert_eq!(
        change.kind,
        ChangeKind::Demoted {
            reason: DemoteReason::Idle
        }
    );
    assert_eq!(change.dedicated_for, secs(12));
    assert_eq!(run.changes.len(), 3);
    assert_eq!(run.tier(B), Some(Tier::Dedicated));
    assert!(run.tiers.exit(B, run.now()));
    // No request for 10 s and nothing in flight now; the demote rule (30 s
    // dedicated) would fire at 35 s.
    run.drive(&[], ms(500));
    let (at, change) = &run.changes[3];
    assert_eq!((*at, change.key), (ms(17_500), B));
    assert_eq!(
        change.kind,
        ChangeKind::Demoted {
            reason: DemoteReason::Idle
        }
    );
}

#[test]
fn a_hotter_key_displaces_the_coldest_when_the_bound_is_hit() {
    let mut run = Run::new(TierConfig::default().max_dedicated(2));
    run.drive(&[(A, 8.0), (B, 10.0)], secs(6));
    assert_eq!(run.dedicated(), 2);
    // C at 20 rps beats A (the coldest, 8) by more than a quarter.
    run.drive(&[(A, 8.0), (B, 10.0), (C, 20.0)], secs(6));
    let [_, _, (at, displaced), (at2, promoted)] = &run.changes[..] else {
        panic!("{:?}", run.changes)
    };
    assert_eq!(at, at2, "reported by the same request");
    assert_eq!(displaced.key, A);
    assert_eq!(
        displaced.kind,
        ChangeKind::Demoted {
            reason: DemoteReason::Displaced { by: C }
        }
    );
    assert!((displaced.rate - 8.0).abs() < 0.5, "{displaced:?}");
    assert_eq!((promoted.key, promoted.kind), (C, ChangeKind::Promoted));
    // A qualifies still, but cannot take its place back, now or later.
    run.drive(&[(A, 8.0), (B, 10.0), (C, 20.0)], secs(120));
    assert_eq!(run.changes.len(), 4, "{:?}", run.changes);
    assert_eq!(run.tier(A), Some(Tier::Cold));
    assert_eq!(run.dedicated(), 2);
}

#[test]
fn no_displacement_without_the_margin() {
    let mut run = Run::new(TierConfig::default().max_dedicated(2));
    run.drive(&[(A, 10.0), (B, 10.0)], secs(6));
    // D at 11 rps is hotter than both, but not by a quarter (estimates
    // are within 1 request of the window, 0.22 rps, of the true rates).
    const { assert!(11.0 + 0.23 < (10.0 - 0.23) * DISPLACE_MARGIN) };
    run.drive(&[(A, 10.0), (B, 10.0), (D, 11.0)], secs(120));
    assert_eq!(run.changes.len(), 2, "{:?}", run.changes);
    assert_eq!(run.tier(D), Some(Tier::Cold));
    // Once B cools (to 4 rps, still dedicated: hysteresis), D's 11 rps
    // beats it by the margin.
    run.drive(&[(A, 10.0), (B, 4.0), (D, 11.0)], secs(10));
    let (_, displaced) = &run.changes[2];
    assert_eq!(displaced.key, B);
    assert_eq!(run.tier(D), Some(Tier::Dedicated));
}

#[test]
fn forgets_cold_keys_not_seen_for_forget_after() {
    // A dedicated key is never demoted here: no idling, no demote rate.
    let config = TierConfig::default()
        .idle_retire_after(secs(600))
        .demote_rps(0.0);
    let mut run = Run::new(config);
    run.drive(&[(A, 10.0)], secs(6));
    run.record(B);
    run.record(C);
    assert!(run.tiers.enter(C, run.now()));
    run.drive(&[], ms(59_990));
    assert!(run.key(B).is_some());
    run.drive(&[], ms(10));
    assert_eq!(run.key(B), None, "cold, not seen for 60 s");
    assert_eq!(run.tier(C), Some(Tier::Cold), "a request still in flight");
    assert_eq!(run.tier(A), Some(Tier::Dedicated), "dedicated keys stay");
    run.tiers.exit(C, run.now());
    run.sweep();
    assert_eq!(run.key(C), None);
    // A forgotten key starts again: tracked for a whole window first.
    run.drive(&[(B, 10.0)], ms(4_900));
    assert_eq!(run.tier(B), Some(Tier::Cold));
}

#[test]
fn a_key_seen_again_is_forgotten_from_its_last_request() {
    let mut run = Run::new(TierConfig::default());
    run.record(A);
    run.at = secs(1);
    run.record(B);
    run.at = secs(50);
    run.record(A);
    run.at = secs(61);
    run.sweep();
    assert_eq!(run.key(B), None, "not seen since 1 s");
    assert!(run.key(A).is_some(), "seen at 50 s");
    run.at = secs(110);
    run.sweep();
    assert_eq!(run.key(A), None);
}

#[test]
fn the_tracked_key_cap_holds_under_100k_distinct_keys() {
    let config = TierConfig::default().max_dedicated(2);
    let mut run = Run::new(config);
    run.drive(&[(A, 10.0), (B, 10.0)], secs(6));
    run.record(C);
    assert!(run.tiers.enter(C, run.now()));
    for key in 0..100_000u64 {
        run.at += Duration::from_micros(100);
        run.record(1_000 + key);
        if key % 3_000 == 0 {
            // D, cold (3.3 rps), seen again every 3000 new keys.
            run.record(D);
        }
    }
    let snapshot = run.tiers.snapshot(run.now());
    assert_eq!(snapshot.len(), 4096);
    // The dedicated keys, the key with a request in flight and the key
    // seen again stay; the rest are the most recently seen.
    for key in [A, B, C, D] {
        assert!(snapshot.iter().any(|k| k.key == key), "{key}");
    }
    let oldest_kept = snapshot.iter().map(|k| k.key).filter(|&k| k >= 1_000).min();
    assert_eq!(oldest_kept, Some(1_000 + 100_000 - 4_092));
    assert_eq!(run.changes.len(), 2, "{:?}", run.changes);
}

#[test]
fn a_new_key_is_not_tracked_when_every_tracked_key_is_dedicated() {
    let config = TierConfig::default().max_tracked_keys(2).max_dedicated(2);
    let mut run = Run::new(config);
    run.drive(&[(A, 10.0), (B, 10.0)], secs(6));
    assert_eq!(run.dedicated(), 2);
    for _ in 0..100 {
        assert_eq!(run.record(C), Tier::Cold);
    }
    assert!(!run.tiers.enter(C, run.now()));
    assert_eq!(run.key(C), None);
    assert_eq!(run.tiers.snapshot(run.now()).len(), 2);
}

#[test]
fn peak_concurrency_covers_the_promote_window() {
    let mut run = Run::new(TierConfig::default());
    run.record(A);
    let now = run.now();
    for _ in 0..5 {
        run.tiers.enter(A, now);
    }
    for _ in 0..3 {
        run.tiers.exit(A, now);
    }
    let k = run.key(A).unwrap();
    assert_eq!((k.peak_concurrency, k.in_flight), (5, 2));
    run.at = ms(4_900);
    assert_eq!(run.key(A).unwrap().peak_concurrency, 5);
    run.at = secs(5);
    assert_eq!(
        run.key(A).unwrap().peak_concurrency,
        2,
        "the peak of 5 has left the window; 2 are still in flight"
    );
    run.tiers.exit(A, run.now());
    run.tiers.exit(A, run.now());
    run.tiers.exit(A, run.now());
    let k = run.key(A).unwrap();
    assert_eq!((k.peak_concurrency, k.in_flight), (2, 0), "never below 0");
    run.at = secs(11);
    assert_eq!(run.key(A).unwrap().peak_concurrency, 0);
    // A promotion carries the peak.
    for i in 0..60 {
        run.at = secs(11) + ms(100 * i);
        run.record(A);
        run.tiers.enter(A, run.now());
        if i % 3 == 2 {
            for _ in 0..3 {
                run.tiers.exit(A, run.now());
            }
        }
    }
    let (_, promoted) = run.changes.last().unwrap();
    assert_eq!(
        (promoted.kind, promoted.peak_concurrency),
        (ChangeKind::Promoted, 3)
    );
}

#[test]
fn the_per_key_state_is_small_and_fixed() {
    // TierConfig's docs state this figure.
    let size = std::mem::size_of::<super::table::Slot<super::controller::KeyState>>();
    assert!(size <= 200, "{size} bytes per tracked key");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Record(u64),
        Enter(u64),
        Exit(u64),
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..12u64).prop_map(Op::Record),
            1 => (0..12u64).prop_map(Op::Enter),
            1 => (0..12u64).prop_map(Op::Exit),
            1 => Just(Op::Sweep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_dedicated_bound_and_the_tracked_cap_always_hold(
            max_dedicated in 1..4usize,
            extra_tracked in 0..6usize,
            window_ms in 1..2_000u64,
            steps in prop::collection::vec((op(), 0..400u64), 1..600),
        ) {
            let max_tracked = max_dedicated + extra_tracked;
            let config = TierConfig::default()
                .promote_rps(3.0)
                .promote_window(ms(window_ms))
                .demote_window(ms(window_ms * 3))
                .idle_retire_after(ms(window_ms * 2))
                .forget_after(ms(window_ms * 2))
                .max_dedicated(max_dedicated)
                .max_tracked_keys(max_tracked);
            let mut run = Run::new(config);
            for (op, step) in steps {
                run.at += ms(step);
                let now = run.now();
                match op {
                    Op::Record(key) => { run.record(key); }
                    Op::Enter(key) => { run.tiers.enter(key, now); }
                    Op::Exit(key) => { run.tiers.exit(key, now); }
                    Op::Sweep => run.sweep(),
                }
                let snapshot = run.tiers.snapshot(now);
                let dedicated = snapshot.iter().filter(|k| k.tier == Tier::Dedicated).count();
                prop_assert!(dedicated <= max_dedicated);
                prop_assert!(snapshot.len() <= max_tracked);
                let promoted = run.changes.iter()
                    .filter(|(_, c)| c.kind == ChangeKind::Promoted).count();
                prop_assert_eq!(promoted - (run.changes.len() - promoted), dedicated);
            }
        }

        #[test]
        fn any_config_and_any_instants_never_panic(
            promote_rps in prop::num::f64::ANY,
            demote_rps in prop::num::f64::ANY,
            windows in prop::array::uniform4(0..u64::MAX),
            max_dedicated in 0..4usize,
            max_tracked in 0..4usize,
            steps in prop::collection::vec((0..6u64, 0..u64::MAX), 1..60),
        ) {
            let config = TierConfig::default()
                .promote_rps(promote_rps)
                .demote_rps(demote_rps)
                .promote_window(Duration::from_nanos(windows[0]))
                .demote_window(Duration::from_nanos(windows[1]))
                .idle_retire_after(Duration::from_nanos(windows[2]))
                .forget_after(Duration::from_nanos(windows[3]))
                .max_dedicated(max_dedicated)
                .max_tracked_keys(max_tracked);
            let base = Instant::now();
            let tiers = Tiers::new(&config, base + secs(1));
            for (key, nanos) in steps {
                // Any instant, before the base or far after it.
                let now = base + Duration::from_nanos(nanos / 4);
                tiers.record(key, now);
                tiers.enter(key, now);
                tiers.exit(key, now);
                let _ = tiers.sweep(now);
                for k in tiers.snapshot(now) {
                    prop_assert!(k.rate.is_finite() && k.rate >= 0.0);
                }
            }
        }
    }
}
