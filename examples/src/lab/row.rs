//! A run's row: the requests' figures and the connections counted by the
//! server (or, with `--target`, the client).

use super::prepared::Baseline;
use crate::driver::LoadOutcome;
use crate::results::{CHART_QUANTILES, RunResult};
use crate::scenarios::Scenario;
use crate::server::Server;
use crate::stacks::{Stack, StackKind};

pub(super) fn row(
    scenario: &Scenario,
    kind: StackKind,
    outcome: &LoadOutcome,
    server: Option<&Server>,
    baseline: &Baseline,
    stack: &Stack,
) -> RunResult {
    let mut r = RunResult {
        scenario: scenario.name.to_owned(),
        stack: kind.name().to_owned(),
        retries: stack
            .retries()
            .map(|now| now.saturating_sub(baseline.retries.unwrap_or(0))),
        peak_concurrency: scenario.load.peak_concurrency(),
        ..RunResult::default()
    };
    request_figures(&mut r, outcome, server.is_some());
    match (server, &baseline.server) {
        (Some(server), Some(base)) => {
            let now = server.stats().snapshot();
            r.counted_by = "server".into();
            r.connections_opened = now.accepted - base.accepted;
            r.peak_open_connections = now.peak_open;
            r.tls_full = now.tls_full - base.tls_full;
            r.tls_resumed = now.tls_resumed - base.tls_resumed;
            r.max_requests_on_connection = now.max_requests_on_connection;
            r.refused = now.refused - base.refused;
            if scenario.server.injects_faults() {
                r.faults_injected = Some(now.faults.since(&base.faults));
            }
        }
        _ => {
            let now = stack.client_stats().snapshot();
            r.counted_by = "client".into();
            r.connections_opened = now.opened - baseline.client.opened;
            r.peak_open_connections = now.peak_open;
            r.tls_full = now.tls_full - baseline.client.tls_full;
            r.tls_resumed = now.tls_resumed - baseline.client.tls_resumed;
        }
    }
    if r.requests > 0 {
        r.connections_per_1000_requests = r.connections_opened as f64 * 1000.0 / r.requests as f64;
        r.connections_per_1000_lower_bound =
            (r.peak_concurrency.max(1) as f64).min(r.requests as f64) * 1000.0 / r.requests as f64;
    }
    r
}

/// The row's figures from the requests' record: counts, rate, latency, and
/// misdelivered responses. The embedded server echoes every request's id,
/// so there a response without one counts as misdelivered too; an external
/// server may not echo it (the row's `unechoed` says how many could not be
/// checked).
pub(super) fn request_figures(r: &mut RunResult, outcome: &LoadOutcome, embedded: bool) {
    let rec = &outcome.recorder;
    r.requests = rec.requests();
    r.errors = rec.errors();
    r.duration_s = outcome.elapsed.as_secs_f64();
    r.rps = if r.duration_s > 0.0 {
        rec.ok() as f64 / r.duration_s
    } else {
        0.0
    };
    r.p50_us = rec.quantile_us(0.5);
    r.p90_us = rec.quantile_us(0.9);
    r.p99_us = rec.quantile_us(0.99);
    r.p999_us = rec.quantile_us(0.999);
    r.unechoed = rec.unechoed();
    r.misdelivered = rec.misdelivered() + if embedded { rec.unechoed() } else { 0 };
    r.lost = rec.lost();
    r.errors_by_kind = rec
        .errors_by_kind()
        .iter()
        .map(|(k, n)| (k.name().to_owned(), *n))
        .collect();
    r.first_error = rec.first_error().map(str::to_owned);
    r.latency_quantiles_us = rec.quantiles_us(&CHART_QUANTILES);
}
