//! Invariants over any sequence of requests, and any configuration.

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
