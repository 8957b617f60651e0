//! `report.html`'s parts for the scenarios with several services: each
//! service's figures (`noisy-neighbour`, `tiers`), connections opened per
//! tier, and open connections per tier and dedicated pools over time
//! (`tiers`).

use std::fmt::Write as _;

use super::html::stack_color;
use super::svg::{Axis, Series, bar_chart, escape, line_chart};
use crate::results::RunResult;

/// A table of each stack's services, with B alone beside them; empty when
/// no row has services.
pub(super) fn services_table(runs: &[&RunResult]) -> String {
    if runs.iter().all(|r| r.services.is_none()) {
        return String::new();
    }
    let mut t = String::from(
        "<table><tr><th>stack</th><th>service</th><th>requests</th><th>req/s</th>\
         <th>p50 us</th><th>p99 us</th><th>errors</th><th>alone: p99 us</th></tr>",
    );
    for r in runs {
        for (name, f) in r.services.iter().flatten() {
            let solo = match (name.as_str(), r.solo_p99_us) {
                ("B", Some(solo)) => format!("{solo:.0}"),
                _ => String::new(),
            };
            let _ = write!(
                t,
                "<tr><td style=\"color:{}\">{}</td><td>{}</td><td>{}</td><td>{:.0}</td>\
                 <td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{solo}</td></tr>",
                stack_color(&r.stack),
                escape(&r.stack),
                escape(name),
                f.requests,
                f.rps,
                f.p50_us,
                f.p99_us,
                f.errors,
            );
        }
    }
    t.push_str("</table>");
    t
}

/// The tiers' charts: connections opened per tier, open connections per
/// tier over time, dedicated pools over time; empty for other scenarios.
pub(super) fn tier_charts(name: &str, runs: &[&RunResult]) -> String {
    let tiered: Vec<&RunResult> = runs
        .iter()
        .copied()
        .filter(|r| r.connections_by_tier.is_some())
        .collect();
    if tiered.is_empty() {
        return String::new();
    }
    let mut out = bar_chart(
        &format!("{name}: connections opened per tier"),
        "connections",
        &tiered
            .iter()
            .flat_map(|r| {
                let tiers = r.connections_by_tier.unwrap_or_default();
                [
                    (format!("{} hot", r.stack), tiers.hot as f64),
                    (format!("{} cold", r.stack), tiers.cold as f64),
                ]
                .map(|(label, n)| (label, n, stack_color(&r.stack)))
            })
            .collect::<Vec<_>>(),
    );
    let mut x = Axis::linear("seconds from load start");
    let load_end = tiered.iter().map(|r| r.load_end_s).fold(0.0, f64::max);
    x.marks.push((load_end, "load ends".to_owned()));
    let over_time = |what: &str, value: fn(&crate::results::TierSample) -> Option<f64>| {
        let series: Vec<Series> = tiered
            .iter()
            .map(|r| Series {
                name: r.stack.clone(),
                color: stack_color(&r.stack),
                points: r
                    .tier_samples
                    .iter()
                    .filter_map(|s| value(s).map(|v| (s.at_s, v)))
                    .collect(),
                step: true,
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        line_chart(
            &format!("{name}: {what} over time"),
            &x,
            &Axis::linear(what),
            &series,
        )
    };
    out.push_str(&over_time("connections open to hot services", |s| {
        Some(s.open_hot as f64)
    }));
    out.push_str(&over_time("connections open to cold targets", |s| {
        Some(s.open_cold as f64)
    }));
    if tiered.iter().any(|r| r.dedicated_pools_peak.is_some()) {
        out.push_str(&over_time("dedicated pools", |s| {
            s.dedicated_pools.map(|n| n as f64)
        }));
    } else {
        out.push_str("<p class=\"empty\">No stack with dedicated pools ran.</p>");
    }
    out
}
