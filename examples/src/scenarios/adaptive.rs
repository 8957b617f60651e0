//! The scenarios of the adaptive controller (issue 17): `cyclic`, bursts
//! at a fixed period against a server that closes idle connections
//! before the next burst, and `shift`, a closed loop that steps up and
//! back down. Both compare `reuse` (the controller on), `reuse-static`
//! (off) and `hyper-util`.

use std::time::Duration;

use super::{Scenario, Sizes};
use crate::driver::Load;
use crate::stacks::{Protocol, StackKind};

/// The stacks the adaptive scenarios compare.
const COMPARED: [StackKind; 3] = [
    StackKind::Reuse,
    StackKind::ReuseStatic,
    StackKind::HyperUtil,
];

const ADAPTIVE_ONLY: &str =
    "the adaptive scenarios compare reuse (the controller on), reuse-static (off) and hyper-util";

/// The workers of `shift`'s low steps: its step-down goal is at most
/// twice the connections they need.
pub const SHIFT_LOW_WORKERS: usize = 4;

/// Builds `cyclic` or `shift` at `sizes`; `base` is the suite's common
/// scenario (server, defaults) to start from.
pub(super) fn build(name: &str, sizes: &Sizes, mut base: Scenario) -> Option<Scenario> {
    match name {
        "cyclic" => {
            let size = sizes.concurrency(64);
            // Quick: one period, shorter, the server's idle limit still
            // below it.
            let (bursts, period, idle) = if sizes.quick {
                (2, Duration::from_millis(1500), Duration::from_secs(1))
            } else {
                (8, Duration::from_secs(3), Duration::from_secs(2))
            };
            base.name = "cyclic";
            base.description = format!(
                "TLS, {bursts} bursts of {size} concurrent requests every {}s; the server closes \
                 connections idle {}s (no Keep-Alive hint); stacks run at once, their bursts \
                 staggered",
                period.as_secs_f64(),
                idle.as_secs_f64()
            );
            base.protocol = Protocol::Http1;
            base.tls = true;
            base.load = Load::Periodic {
                bursts,
                size,
                period,
            };
            base.server = base.server.idle_timeout(Some(idle));
            // Light between bursts, and each stack bursts in its own
            // share of the period ([`Scenario::start_offset`]).
            base.parallel_stacks = true;
        }
        "shift" => {
            let high = sizes.concurrency(64);
            let step = sizes.duration(Duration::from_secs(10), Duration::from_secs(1));
            base.name = "shift";
            base.description = format!(
                "HTTP/1.1 closed loop, one client: {SHIFT_LOW_WORKERS} workers for {s}s, {high} \
                 for {s}s, {SHIFT_LOW_WORKERS} for {s}s; stacks run at once (connection counts, \
                 not speed, are its figures)",
                s = step.as_secs_f64()
            );
            base.protocol = Protocol::Http1;
            base.load = Load::Steps {
                steps: vec![
                    (SHIFT_LOW_WORKERS, step),
                    (high, step),
                    (SHIFT_LOW_WORKERS, step),
                ],
            };
            base.parallel_stacks = true;
        }
        _ => return None,
    }
    base.skip = StackKind::ALL
        .into_iter()
        .filter(|kind| !COMPARED.contains(kind))
        .map(|kind| (kind, ADAPTIVE_ONLY))
        .collect();
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::super::{ALL, build as build_scenario};
    use super::*;

    /// `reuse-static` runs in the scenarios that measure the controller
    /// against it, and nowhere else; `cyclic` and `shift` compare three
    /// stacks.
    #[test]
    fn reuse_static_runs_where_the_controller_is_measured() {
        let sizes = Sizes::default();
        let with_static: Vec<&str> = ALL
            .into_iter()
            .filter(|name| {
                let scenario = build_scenario(name, &sizes).unwrap().by_default();
                scenario.skip_reason(StackKind::ReuseStatic).is_none()
            })
            .collect();
        assert_eq!(
            with_static,
            [
                "steady-h1",
                "bursty",
                "keepalive-race",
                "tls-churn",
                "cyclic",
                "shift"
            ]
        );
        for name in ["cyclic", "shift"] {
            let scenario = build_scenario(name, &sizes).unwrap();
            let run: Vec<StackKind> = StackKind::ALL
                .into_iter()
                .filter(|k| scenario.skip_reason(*k).is_none())
                .collect();
            assert_eq!(
                run,
                [
                    StackKind::HyperUtil,
                    StackKind::Reuse,
                    StackKind::ReuseStatic
                ]
            );
        }
    }

    /// The idle closes the controller must learn come with no hint.
    #[test]
    fn idle_closing_servers_send_no_keep_alive_hint() {
        for name in ["keepalive-race", "cyclic"] {
            let scenario = build_scenario(name, &Sizes::default()).unwrap();
            assert!(!scenario.server.sends_keep_alive_hint(), "{name}");
        }
    }

    /// A stack left out of the default suite still runs when named.
    #[test]
    fn stacks_left_out_by_default_run_when_named() {
        let bursty = build_scenario("bursty", &Sizes::default()).unwrap();
        assert_eq!(bursty.skip_reason(StackKind::Fresh), None);
        assert!(bursty.by_default().skip_reason(StackKind::Fresh).is_some());
    }

    /// `cyclic`'s stacks run at once, each bursting in its own third of
    /// the period.
    #[test]
    fn cyclic_staggers_its_stacks_over_the_period() {
        let cyclic = build_scenario("cyclic", &Sizes::default()).unwrap();
        let offsets: Vec<Duration> = (0..3).map(|i| cyclic.start_offset(i, 3)).collect();
        assert_eq!(offsets, [0, 1000, 2000].map(Duration::from_millis));
        let shift = build_scenario("shift", &Sizes::default()).unwrap();
        assert_eq!(shift.start_offset(2, 3), Duration::ZERO);
        assert_eq!(shift.load.peak_concurrency(), 64);
    }
}
