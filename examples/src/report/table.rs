//! The comparison table printed on stdout: stacks side by side per scenario,
//! with requests/s ratios against `hyper-util` and `raw` (and `reuse+otel`
//! and `reuse+span` against `reuse`, each on a line of its own).

use std::fmt::Write as _;

use crate::results::{RunResult, Skipped};
use crate::scenarios::Scenario;

/// Renders one scenario's rows.
pub fn scenario_table(scenario: &Scenario, runs: &[RunResult], skipped: &[Skipped]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {}: {}", scenario.name, scenario.description);
    out.push_str(&rows(runs));
    let rounds = runs.iter().map(|r| r.rounds).max().unwrap_or(1);
    if rounds > 1 && scenario.idle_targets > 0 {
        let _ = writeln!(
            out,
            "   each stack took turns with its twin with no idle targets: {rounds} rounds, one slice of the load each"
        );
    } else if rounds > 1 {
        let _ = writeln!(
            out,
            "   the stacks took turns: {rounds} rounds, each stack one slice of the load per round"
        );
    }
    if scenario.server.injects_faults() {
        out.push_str(&accounting(runs));
    }
    // Stacks skipped for one reason share a line.
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for s in skipped {
        match reasons.iter_mut().find(|(reason, _)| *reason == s.reason) {
            Some((_, stacks)) => stacks.push(&s.stack),
            None => reasons.push((&s.reason, vec![&s.stack])),
        }
    }
    for (reason, stacks) in reasons {
        let _ = writeln!(out, "   skipped {}: {reason}", stacks.join(", "));
    }
    out
}

/// Renders rows of one scenario (all stacks), header first.
pub fn rows(runs: &[RunResult]) -> String {
    let rps_of = |stack: &str| {
        runs.iter()
            .find(|r| r.stack == stack && r.rps > 0.0)
            .map(|r| r.rps)
    };
    let hyper_util = rps_of("hyper-util");
    let raw = rps_of("raw");
    let reuse = rps_of("reuse");
    let ratio = |base: Option<f64>, rps: f64| match base {
        Some(base) => format!("{:.2}x", rps / base),
        None => "-".to_owned(),
    };
    // An external server may not echo `x-request-id`: how many responses
    // could not be checked for misdelivery is then a column of its own.
    let external = runs.iter().any(|r| r.counted_by == "client");
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<17}{:>9}{:>8}{:>8}{:>9}{:>9}{:>10}{:>7}{:>8}{:>7}{:>8}{:>6}{:>9}{:>11}{:>7}",
        "stack",
        "req/s",
        "/h-u",
        "/raw",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "errors",
        "retries",
        "conns",
        "c/1k",
        "peak",
        "idle s",
        "tls f/r",
        "misdel"
    );
    let _ = writeln!(out, "{}", if external { "  unechoed" } else { "" });
    for r in runs {
        let _ = write!(
            out,
            "{:<17}{:>9.0}{:>8}{:>8}{:>9.0}{:>9.0}{:>10.0}{:>7}{:>8}{:>7}{:>8.1}{:>6}{:>9.1}{:>11}{:>7}",
            r.stack,
            r.rps,
            ratio(hyper_util, r.rps),
            ratio(raw, r.rps),
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.errors,
            r.retries_text(),
            r.connections_opened,
            r.connections_per_1000_requests,
            r.peak_open_connections,
            r.idle_socket_seconds,
            format!("{}/{}", r.tls_full, r.tls_resumed),
            r.misdelivered
        );
        if external {
            let _ = write!(out, "{:>10}", r.unechoed);
        }
        out.push('\n');
        let cost = match r.stack.as_str() {
            "reuse+otel" => Some("the cost of OpenTelemetry"),
            "reuse+span" => Some("the cost of one bare SDK span per request"),
            _ => None,
        };
        if let (Some(cost), Some(reuse)) = (cost, reuse) {
            let _ = writeln!(
                out,
                "{:<17}{:.2}x reuse's req/s ({cost})",
                "",
                r.rps / reuse
            );
        }
        if r.errors > 0 {
            let kinds: Vec<String> = r
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<17}errors: {} (first: {})",
                "",
                kinds.join(", "),
                r.first_error.as_deref().unwrap_or("-")
            );
        }
        if r.lost > 0 {
            let _ = writeln!(
                out,
                "{:<17}lost: {} requests got neither a response nor an error",
                "", r.lost
            );
        }
        if let Some(tail) = r.tail_idle_socket_seconds {
            let _ = writeln!(
                out,
                "{:<17}idle socket-seconds {:.1}, {:.1} of them after the load; the server counted {:.1} over the same window",
                "", r.idle_socket_seconds, tail, r.server_idle_socket_seconds
            );
        }
        out.push_str(&super::adaptive::line(r));
        if let Some(baseline) = r.baseline_rps.filter(|b| *b > 0.0) {
            let _ = writeln!(
                out,
                "{:<17}{:.2}x the requests/s of the same stack with no idle targets ({:.0}), in turns",
                "",
                r.rps / baseline,
                baseline
            );
        }
        if let (Some(hits), Some(misses)) = (r.cache_hits, r.cache_misses) {
            let lookups = (hits + misses).max(1) as f64;
            let figure = |f: Option<f64>| f.map_or_else(|| "-".to_owned(), |f| format!("{f:.2}"));
            let (ratio, over_bound) = (figure(r.max_load_ratio), figure(r.max_load_over_bound));
            let count = |n: Option<u64>| n.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
            let (ejections, detours) = (count(r.ejections), count(r.warm_detours));
            let _ = writeln!(
                out,
                "{:<17}cache hits {hits}, misses {misses} ({:.1} % missed); p50/p90/p99 {:.0}/{:.0}/{:.0} us; in flight max/mean {ratio}, max/cap {over_bound}; ejections {ejections}; warm detours {detours}",
                "",
                misses as f64 * 100.0 / lookups,
                r.p50_us,
                r.p90_us,
                r.p99_us,
            );
        }
        for step in r.keys_moved.iter().flatten() {
            let _ = writeln!(
                out,
                "{:<17}{} -> {} endpoints: {:.3} of {} keys moved (minimum {:.3}, {:.2}x)",
                "",
                step.from,
                step.to,
                step.moved_fraction,
                step.keys_compared,
                step.minimum_fraction,
                step.moved_fraction / step.minimum_fraction
            );
        }
        if let Some(compared) = r.keys_returned_compared {
            let back = r
                .keys_returned_fraction
                .map_or_else(|| "-".to_owned(), |f| format!("{f:.3}"));
            let _ = writeln!(
                out,
                "{:<17}{back} of the failed endpoint's {compared} keys back on it after its return",
                ""
            );
        }
        out.push_str(&tenants(r));
        if let Some(bytes) = r.rss_per_idle_target_bytes {
            let _ = writeln!(
                out,
                "{:<17}{} idle targets: {:.1} KiB resident per target (client only, measured in a process of its own; the idle servers run in another)",
                "",
                r.idle_targets,
                bytes / 1024.0
            );
        }
    }
    out
}

/// The lines of a scenario with several services (`noisy-neighbour`,
/// `tiers`): each service's figures, B alone, the tiers' connections and
/// dedicated pools. Empty for other rows.
fn tenants(r: &RunResult) -> String {
    let mut out = String::new();
    for (name, f) in r.services.iter().flatten() {
        let _ = writeln!(
            out,
            "{:<17}{name}: {} requests, {:.0} req/s, p50/p99 {:.0}/{:.0} us, {} errors",
            "", f.requests, f.rps, f.p50_us, f.p99_us, f.errors
        );
    }
    if let Some(solo) = r.solo_p99_us {
        let together = r
            .services
            .as_ref()
            .and_then(|s| s.get("B"))
            .map_or(0.0, |b| b.p99_us);
        let _ = writeln!(
            out,
            "{:<17}B alone: p99 {solo:.0} us (beside A: {:.2}x); most connections open at once: {} by the server's count, {} by the client's",
            "",
            together / solo.max(1.0),
            r.peak_open_connections,
            r.client_peak_open_connections
                .map_or_else(|| "-".to_owned(), |n| n.to_string())
        );
    }
    if let Some(tiers) = r.connections_by_tier {
        let pools = r
            .dedicated_pools_peak
            .map_or_else(|| "n/a".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:<17}hot p99 {:.0} us (all {:.0}); connections opened: {} to hot services, {} to cold targets; dedicated pools at most {pools}",
            "",
            r.hot_p99_us.unwrap_or_default(),
            r.p99_us,
            tiers.hot,
            tiers.cold
        );
    }
    out
}

/// Every request's fate and the server's faults, for the fault-injection
/// scenarios: requests = ok + errors + lost.
pub fn accounting(runs: &[RunResult]) -> String {
    let mut out = String::from(
        "-- requests = ok + errors + lost; faults injected, as counted by the server\n",
    );
    let _ = writeln!(
        out,
        "{:<17}{:>9}{:>9}{:>8}{:>8}{:>6}{:>7}{:>8}{:>7}{:>8}{:>7}",
        "stack",
        "requests",
        "ok",
        "errors",
        "retries",
        "lost",
        "misdel",
        "closed",
        "reset",
        "stalled",
        "goaway"
    );
    for r in runs {
        let ok = r.requests - r.errors - r.lost;
        let faults = r.faults_injected.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<17}{:>9}{:>9}{:>8}{:>8}{:>6}{:>7}{:>8}{:>7}{:>8}{:>7}",
            r.stack,
            r.requests,
            ok,
            r.errors,
            r.retries_text(),
            r.lost,
            r.misdelivered,
            faults.closed,
            faults.reset,
            faults.stalled,
            faults.goaway
        );
    }
    out
}
