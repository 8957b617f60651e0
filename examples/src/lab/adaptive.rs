//! The lab's side of the adaptive controller's scenarios: the relay in
//! front of the server (`keepalive-race`), the pool's own counters in the
//! row (retries and stale skips, pre-warmed connections), and `shift`'s
//! step-down figures.

use std::io;
use std::time::Duration;

use crate::driver::Load;
use crate::relay::Relay;
use crate::results::RunResult;
use crate::scenarios::SHIFT_LOW_WORKERS;
use crate::server::{OpenSample, Server};
use crate::stacks::{DecisionRecord, Stack};

/// How long after `shift`'s step down its open connections are counted
/// (`connections_5s_after_step_down`).
const AFTER_STEP_DOWN: Duration = Duration::from_secs(5);

/// One relay per address of `server`, each adding `delay` each way.
pub(super) async fn relays(server: &Server, delay: Duration) -> io::Result<Vec<Relay>> {
    let mut relays = Vec::with_capacity(server.addrs().len());
    for &addr in server.addrs() {
        relays.push(Relay::start(addr, delay).await?);
    }
    Ok(relays)
}

/// The URL of `server` through `relay`.
pub(super) fn relayed_url(server: &Server, relay: &Relay) -> String {
    let scheme = if server.is_tls() { "https" } else { "http" };
    format!("{scheme}://{}", relay.addr())
}

/// The most decisions for one target within any 10 s.
fn most_in_10s(decisions: &[DecisionRecord]) -> u64 {
    let mut targets: Vec<&str> = decisions.iter().map(|d| d.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut most = 0;
    for target in targets {
        let times: Vec<f64> = decisions
            .iter()
            .filter(|d| d.target == target)
            .map(|d| d.at_s)
            .collect();
        for (i, start) in times.iter().enumerate() {
            let within = times[i..].iter().take_while(|&&t| t < start + 10.0).count();
            most = most.max(within as u64);
        }
    }
    most
}

/// The pool's counters before the measured load.
#[derive(Debug, Default)]
pub(super) struct StackBaseline {
    stale_skips: Option<u64>,
}

impl StackBaseline {
    pub(super) fn take(stack: Option<&Stack>) -> Self {
        Self {
            stale_skips: stack.and_then(Stack::stale_skips),
        }
    }
}

/// The row's figures from the pool's own counters and, for a load in
/// steps (`shift`), from its open connections over time.
pub(super) fn figures(row: &mut RunResult, load: &Load, stack: &Stack, before: &StackBaseline) {
    row.stale_skips = stack
        .stale_skips()
        .map(|now| now.saturating_sub(before.stale_skips.unwrap_or(0)));
    row.decisions = stack.decisions();
    if stack.prewarm().is_some() {
        row.max_decisions_per_10s = Some(most_in_10s(&row.decisions));
    }
    if let Some(ahead) = stack.replacements() {
        row.replacements_opened = Some(ahead.opened);
        row.replacements_served = Some(ahead.served);
    }
    if let Some(prewarm) = stack.prewarm() {
        row.prewarmed_opened = Some(prewarm.opened);
        row.prewarmed_served = Some(prewarm.served);
    }
    if let Load::Steps { steps } = load {
        let mut at = 0.0;
        row.steps_s = steps
            .iter()
            .map(|&(_, duration)| {
                let start = at;
                at += duration.as_secs_f64();
                start
            })
            .collect();
        if let Some(&step_down) = row.steps_s.get(2) {
            let goal = 2 * SHIFT_LOW_WORKERS as u64;
            let end = step_down + steps[2].1.as_secs_f64();
            let after = step_down + AFTER_STEP_DOWN.as_secs_f64();
            // Only when the last step lasts that long (not under `--quick`).
            row.connections_5s_after_step_down = (after <= end)
                .then(|| open_at(&row.open_connections, after))
                .flatten();
            row.step_down_settle_s = settled(&row.open_connections, step_down, end, goal);
        }
    }
}

/// The open connections of the last sample at or before `at_s`.
fn open_at(samples: &[OpenSample], at_s: f64) -> Option<u64> {
    samples
        .iter()
        .take_while(|s| s.at_s <= at_s)
        .last()
        .map(|s| s.open)
}

/// How long after `from` the open connections fell to at most `goal` and
/// stayed there until `to`; `None` if they never did (or no sample covers
/// `to`).
fn settled(samples: &[OpenSample], from: f64, to: f64, goal: u64) -> Option<f64> {
    let window: Vec<&OpenSample> = samples
        .iter()
        .filter(|s| s.at_s >= from && s.at_s <= to)
        .collect();
    // The last sample above the goal; settled at the sample after it.
    match window.iter().rposition(|s| s.open > goal) {
        None => window.first().map(|_| 0.0),
        Some(i) => window.get(i + 1).map(|s| s.at_s - from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(target: &str, at_s: f64) -> DecisionRecord {
        DecisionRecord {
            at_s,
            target: target.to_owned(),
            knob: "idle_timeout",
            from: None,
            to: None,
            reason: "idle_gaps",
            applied: true,
        }
    }

    /// Per target, within a sliding 10 s: three decisions of one target
    /// 9 s apart count together, two targets' never do.
    #[test]
    fn most_decisions_in_10s_is_per_target_and_sliding() {
        let decisions = [
            decision("a", 1.0),
            decision("b", 1.5),
            decision("a", 5.0),
            decision("a", 10.0),
            decision("a", 11.5),
            decision("b", 2.0),
        ];
        assert_eq!(most_in_10s(&decisions), 3);
        assert_eq!(most_in_10s(&[]), 0);
    }

    fn trace(points: &[(f64, u64)]) -> Vec<OpenSample> {
        points
            .iter()
            .map(|&(at_s, open)| OpenSample {
                at_s,
                open,
                idle: 0,
            })
            .collect()
    }

    /// Settled is the time after the step down from which every sample
    /// to the end is at most the goal; a dip that rises again does not
    /// count; still above at the end is never.
    #[test]
    fn step_down_settles_when_open_connections_stay_under_the_goal() {
        let falls = trace(&[
            (19.0, 64),
            (20.5, 64),
            (22.0, 30),
            (23.5, 8),
            (25.0, 6),
            (30.0, 6),
        ]);
        assert_eq!(settled(&falls, 20.0, 30.0, 8), Some(3.5));
        assert_eq!(open_at(&falls, 25.0), Some(6));
        assert_eq!(open_at(&falls, 24.9), Some(8));

        let dips = trace(&[(21.0, 5), (22.0, 12), (26.0, 7), (30.0, 7)]);
        assert_eq!(settled(&dips, 20.0, 30.0, 8), Some(6.0));

        let never = trace(&[(21.0, 64), (25.0, 64), (30.0, 60)]);
        assert_eq!(settled(&never, 20.0, 30.0, 8), None);

        let at_once = trace(&[(20.1, 4), (30.0, 4)]);
        assert_eq!(settled(&at_once, 20.0, 30.0, 8), Some(0.0));
    }
}
