//! The adaptive scenarios' figures under a row of the table:
//! `keepalive-race`'s retries and stale skips, `cyclic`'s pre-warmed
//! connections, `shift`'s step down.

use crate::results::RunResult;
use crate::scenarios::SHIFT_LOW_WORKERS;

/// One line of `r`'s adaptive figures, indented under its row; empty
/// outside the adaptive scenarios.
pub(crate) fn line(r: &RunResult) -> String {
    let count = |n: Option<u64>| n.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let text = match r.scenario.as_str() {
        "keepalive-race" => format!(
            "{} failed; retries {}, stale skips {} (all workers' clients)",
            r.errors,
            r.retries_text(),
            count(r.stale_skips)
        ),
        "cyclic" => format!(
            "p99 {:.0} us; pre-warmed connections opened {}, of them served a request {}",
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
                "{} connections opened; {} open 5 s after the step down; at most {} open {settled}",
                r.connections_opened,
                count(r.connections_5s_after_step_down),
                2 * SHIFT_LOW_WORKERS
            )
        }
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
