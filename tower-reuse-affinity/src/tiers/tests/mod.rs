//! The tier controller's rules, on explicit instants (no clock is read but
//! the base): promotion, hysteresis, demotion and displacement here, the
//! tracked keys in `keys`, the invariants in `properties`.

use std::time::Duration;

use tokio::time::Instant;

use super::change::{ChangeKind, DemoteReason, KeySnapshot, TierChange};
use super::controller::{DISPLACE_MARGIN, Tiers};
use super::*;

mod keys;
mod properties;

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
    // A at twice the threshold from the start, B under it, C a burst
    // under it too (20 requests in a 5 s window).
    run.record(A);
    for _ in 0..20 {
        run.record(C);
    }
    run.drive(&[(A, 10.0), (B, 4.0)], ms(4_490));
    assert!(run.changes.is_empty(), "{:?}", run.changes);
    assert_eq!(run.tier(A), Some(Tier::Cold));
    run.drive(&[(A, 10.0), (B, 4.0)], ms(10));
    let [(at, change)] = &run.changes[..] else {
        panic!("{:?}", run.changes)
    };
    // The window to its resolution (a tenth of it): the sweep in its last
    // bucket.
    assert_eq!(*at, ms(4_500));
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
fn a_sweep_promotes_a_bursty_key_between_its_bursts() {
    // 32 requests at once at 0 s, then nothing: in the 1 s window's last
    // bucket the burst is still in it (32 requests/s) and the key has
    // been tracked for the window, to its resolution; the sweep promotes
    // it before its next burst comes.
    let mut run = Run::new(TierConfig::default().promote_window(Duration::from_secs(1)));
    for _ in 0..32 {
        assert_eq!(run.record(A), Tier::Cold);
    }
    run.at = ms(850);
    run.sweep();
    assert!(run.changes.is_empty(), "tracked for less than the window");
    run.at = ms(900);
    run.sweep();
    assert_eq!(run.changes.len(), 1, "{:?}", run.changes);
    assert_eq!(run.tier(A), Some(Tier::Dedicated));
    assert_eq!(
        run.changes[0].1.peak_concurrency, 0,
        "nothing was in flight"
    );
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
    assert_eq!(*at, ms(34_500), "30 s after the promotion at 4.5 s");
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
    assert_eq!(change.dedicated_for, ms(12_500));
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
