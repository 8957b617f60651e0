//! The adaptive scenarios' figures under a row of the table:
//! `keepalive-race`'s retries and stale skips, `cyclic`'s pre-warmed
//! connections, `shift`'s step down; and the controller's decisions over
//! time, as charts in the report.

use super::html::stack_color;
use super::svg::{Axis, Series, line_chart};
use crate::results::RunResult;
use crate::scenarios::SHIFT_LOW_WORKERS;

/// The controller's settings over time, a chart per setting it changed in
/// this scenario: each stack's value as a step line, from the value
/// before its first change (applied decisions only; with a client per
/// worker, every worker's in one line).
pub(crate) fn decision_charts(name: &str, runs: &[&RunResult]) -> String {
    let mut knobs: Vec<&str> = Vec::new();
    for d in runs.iter().flat_map(|r| &r.decisions) {
        if d.applied && !knobs.contains(&d.knob) {
            knobs.push(d.knob);
        }
    }
    let mut charts = String::new();
    for knob in knobs {
        let series: Vec<Series> = runs
            .iter()
            .filter_map(|r| {
                let mut changes = r.decisions.iter().filter(|d| d.applied && d.knob == knob);
                let first = changes.next()?;
                let mut points = vec![
                    (0.0, first.from.unwrap_or(0.0)),
                    (first.at_s, first.to.unwrap_or(0.0)),
                ];
                points.extend(changes.map(|d| (d.at_s, d.to.unwrap_or(0.0))));
                Some(Series {
                    name: format!("{}: {} changes", r.stack, points.len() - 1),
                    color: stack_color(&r.stack),
                    points,
                    step: true,
                })
            })
            .collect();
        let unit = if knob == "idle_timeout" {
            "seconds"
        } else {
            "count"
        };
        charts.push_str(&line_chart(
            &format!("{name}: the controller's {knob} over time"),
            &Axis::linear("seconds from the stack's start"),
            &Axis::linear(&format!("{knob} ({unit})")),
            &series,
        ));
    }
    charts
}

/// One line of `r`'s adaptive figures, indented under its row; empty
/// outside the adaptive scenarios.
pub(crate) fn line(r: &RunResult) -> String {
    let count = |n: Option<u64>| n.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let decisions = r.decisions.iter().filter(|d| d.applied).count();
    let text = match r.scenario.as_str() {
        "keepalive-race" => format!(
            "{} failed; retries {}, stale skips {} (all workers' clients); {decisions} decisions",
            r.errors,
            r.retries_text(),
            count(r.stale_skips)
        ),
        "cyclic" => format!(
            "p99 {:.0} us; pre-warmed connections opened {}, of them served a request {}; {decisions} decisions",
            r.p99_us,
            count(r.prewarmed_opened),
            count(r.prewarmed_served)
        ),
        "shift" => {
            let settled = r.step_down_settle_s.map_or_else(
                || "never within the last step".to_owned(),
                |s| format!("after {s:.1} s"),
            );
            format!(
                "{} connections opened; {} open 5 s after the step down; at most {} open {settled}; {decisions} decisions",
                r.connections_opened,
                count(r.connections_5s_after_step_down),
                2 * SHIFT_LOW_WORKERS
            )
        }
        "tls-churn" | "tls-churn-paced" if r.replacements_opened.is_some() => format!(
            "replacements opened ahead {}, of them served a request {}; {decisions} decisions",
            count(r.replacements_opened),
            count(r.replacements_served)
        ),
        _ if decisions > 0 => format!("{decisions} decisions of the controller"),
        _ => return String::new(),
    };
    format!("{:<17}{text}\n", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shift row that never settles says so; a pool-less stack's
    /// pre-warm counts are n/a; other scenarios get no line.
    #[test]
    fn adaptive_lines_name_their_figures() {
        let shift = RunResult {
            scenario: "shift".into(),
            connections_opened: 70,
            connections_5s_after_step_down: Some(64),
            ..RunResult::default()
        };
        assert!(line(&shift).contains("64 open 5 s after the step down"));
        assert!(line(&shift).contains("never"));
        let cyclic = RunResult {
            scenario: "cyclic".into(),
            ..RunResult::default()
        };
        assert!(line(&cyclic).contains("opened n/a"));
        let steady = RunResult {
            scenario: "steady-h1".into(),
            ..RunResult::default()
        };
        assert_eq!(line(&steady), "");
    }
}
