//! Which keys are tracked: forgetting, the cap, in-flight peaks, size.

use super::*;

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
    let size = std::mem::size_of::<crate::tiers::table::Slot<crate::tiers::controller::KeyState>>();
    assert!(size <= 200, "{size} bytes per tracked key");
}
