//! `report.html`: one self-contained page (inline CSS and SVG, no scripts,
//! no network fetches).

use std::fmt::Write as _;

use super::svg::{Axis, Series, bar_chart, escape, line_chart};
use super::tenants;
use crate::results::{Results, RunResult};

/// The color of a stack in every chart.
pub fn stack_color(stack: &str) -> &'static str {
    match stack {
        "fresh" => "#d62728",
        "hyper-util" => "#1f77b4",
        "hyper-util-tuned" => "#17becf",
        "hyper-util+cache" => "#ff7f0e",
        "reuse" => "#2ca02c",
        "reuse-static" => "#006d2c",
        "reuse-shared" => "#8c564b",
        "reuse+budget" => "#e377c2",
        "reuse+otel" => "#98df8a",
        "reuse+span" => "#bcbd22",
        "raw" => "#7f7f7f",
        _ => "#9467bd",
    }
}

/// x position of quantile `q` on a "nines" axis: -log10(1 - q), capped.
fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-5).log10()).min(5.0)
}

/// Renders the page. `descriptions` maps scenario names to one line each.
pub fn render(results: &Results, descriptions: &[(String, String)]) -> String {
    let env = &results.environment;
    let mut page = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>reuse-lab report</title>\
         <style>body{font-family:sans-serif;margin:24px;max-width:1200px}\
         table{border-collapse:collapse;font-size:13px;margin:8px 0}\
         td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}\
         td:first-child,th:first-child{text-align:left}\
         .charts{display:flex;flex-wrap:wrap;gap:12px}.empty{color:#888}\
         .note{color:#555;font-size:13px}</style></head><body><h1>reuse-lab report</h1>",
    );
    let _ = write!(
        page,
        "<p class=\"note\">Command: <code>{}</code><br>{} CPUs, client runtime {} threads, \
         embedded server {} threads{}{}. Connections, TLS handshakes and idle sockets are \
         counted on the {} side.</p>",
        escape(&env.command),
        env.cpus,
        env.client_threads,
        env.server_threads,
        if env.quick { ", --quick" } else { "" },
        env.target
            .as_ref()
            .map(|t| format!(", target {}", escape(t)))
            .unwrap_or_default(),
        if env.target.is_some() {
            "client"
        } else {
            "server"
        },
    );
    let mut scenarios: Vec<&str> = Vec::new();
    for r in &results.runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for name in scenarios {
        let runs: Vec<&RunResult> = results.runs.iter().filter(|r| r.scenario == name).collect();
        let description = descriptions
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, d)| d.as_str());
        let _ = write!(
            page,
            "<h2>{}</h2><p class=\"note\">{}</p>",
            escape(name),
            escape(description)
        );
        let _ = write!(page, "<p><b>Verdict:</b> {}</p>", escape(&verdict(&runs)));
        page.push_str(&table(&runs));
        for r in &runs {
            let line = super::adaptive::line(r);
            if !line.trim().is_empty() {
                let _ = write!(
                    page,
                    "<p class=\"note\">{}: {}</p>",
                    escape(&r.stack),
                    escape(line.trim())
                );
            }
        }
        page.push_str(&tenants::services_table(&runs));
        page.push_str(&accounting(&runs));
        for s in results.skipped.iter().filter(|s| s.scenario == name) {
            let _ = write!(
                page,
                "<p class=\"note\">skipped {}: {}</p>",
                escape(&s.stack),
                escape(&s.reason)
            );
        }
        page.push_str("<div class=\"charts\">");
        page.push_str(&latency_chart(name, &runs));
        page.push_str(&bar_chart(
            &format!("{name}: connections opened"),
            "connections",
            &runs
                .iter()
                .map(|r| {
                    (
                        r.stack.clone(),
                        r.connections_opened as f64,
                        stack_color(&r.stack),
                    )
                })
                .collect::<Vec<_>>(),
        ));
        page.push_str(&open_chart(name, &runs));
        page.push_str(&super::adaptive::decision_charts(name, &runs));
        page.push_str(&tenants::tier_charts(name, &runs));
        page.push_str("</div>");
    }
    page.push_str("</body></html>\n");
    page
}

fn table(runs: &[&RunResult]) -> String {
    let base = |stack: &str| {
        runs.iter()
            .find(|r| r.stack == stack && r.rps > 0.0)
            .map(|r| r.rps)
    };
    let (hu, raw) = (base("hyper-util"), base("raw"));
    let ratio = |b: Option<f64>, v: f64| b.map_or("-".to_owned(), |b| format!("{:.2}x", v / b));
    let mut t = String::from(
        "<table><tr><th>stack</th><th>req/s</th><th>vs hyper-util</th><th>vs raw</th>\
         <th>p50 us</th><th>p90 us</th><th>p99 us</th><th>p99.9 us</th><th>errors</th><th>connections</th>\
         <th>retries</th><th>per 1000 req</th><th>peak open</th><th>idle socket s</th>\
         <th>TLS full/resumed</th><th>misdelivered</th><th>lost</th></tr>",
    );
    for r in runs {
        let _ = write!(
            t,
            "<tr><td style=\"color:{}\">{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{:.0}</td>\
             <td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td>\
             <td>{:.1}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
            stack_color(&r.stack),
            escape(&r.stack),
            r.rps,
            ratio(hu, r.rps),
            ratio(raw, r.rps),
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            escape(r.first_error.as_deref().unwrap_or("")),
            r.errors,
            r.connections_opened,
            r.retries_text(),
            r.connections_per_1000_requests,
            r.peak_open_connections,
            r.idle_socket_seconds,
            r.tls_full,
            r.tls_resumed,
            r.misdelivered,
            r.lost
        );
    }
    t.push_str("</table>");
    t
}

/// For the fault-injection scenarios: each request's fate, the retries and
/// the server's faults, one line per stack.
fn accounting(runs: &[&RunResult]) -> String {
    let mut out = String::new();
    for r in runs {
        let Some(faults) = r.faults_injected else {
            continue;
        };
        let kinds: Vec<String> = r
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = write!(
            out,
            "<p class=\"note\">{}: {} requests = {} ok + {} errors ({}) + {} lost; {} retries; \
             {} misdelivered. The server closed {}, reset {}, stalled {} and sent GOAWAY on {}.</p>",
            escape(&r.stack),
            r.requests,
            r.requests - r.errors - r.lost,
            r.errors,
            escape(&kinds.join(", ")),
            r.lost,
            r.retries_text(),
            r.misdelivered,
            faults.closed,
            faults.reset,
            faults.stalled,
            faults.goaway
        );
    }
    out
}

/// One series per stack, in the stack's colour.
fn per_stack(
    runs: &[&RunResult],
    step: bool,
    points: impl Fn(&RunResult) -> Vec<(f64, f64)>,
) -> Vec<Series> {
    runs.iter()
        .map(|r| Series {
            name: r.stack.clone(),
            color: stack_color(&r.stack),
            points: points(r),
            step,
        })
        .collect()
}

fn latency_chart(name: &str, runs: &[&RunResult]) -> String {
    let series = per_stack(runs, false, |r| {
        r.latency_quantiles_us
            .iter()
            .filter(|(_, us)| *us > 0.0)
            .map(|&(q, us)| (nines(q), us))
            .collect()
    });
    let x = Axis {
        label: "percentile".into(),
        log: false,
        ticks: [
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p99.9"),
            (0.9999, "p99.99"),
            (1.0, "max"),
        ]
        .iter()
        .map(|(q, l)| (nines(*q), (*l).to_owned()))
        .collect(),
        marks: Vec::new(),
    };
    line_chart(
        &format!("{name}: latency distribution"),
        &x,
        &Axis::log("latency (us)"),
        &series,
    )
}

/// Open connections over the load and the tail after it. Lines that run
/// on top of each other stay readable: the legend gives each stack's peak,
/// its count when the run ended, and its idle socket-seconds.
fn open_chart(name: &str, runs: &[&RunResult]) -> String {
    let mut series = per_stack(runs, true, |r| {
        r.open_connections
            .iter()
            .map(|s| (s.at_s.max(0.0), s.open as f64))
            .collect()
    });
    for (s, r) in series.iter_mut().zip(runs) {
        let end = r.open_connections.last().map_or(0, |s| s.open);
        // The counter's peak, as in the table: a 25 ms sample can miss it.
        let peak = r.peak_open_connections;
        s.name = format!(
            "{}: peak {peak}, end {end}, idle {:.0} s",
            r.stack, r.idle_socket_seconds
        );
    }
    let mut x = Axis::linear("seconds from load start");
    if runs.iter().any(|r| r.tail_idle_socket_seconds.is_some()) {
        let load_end = runs.iter().map(|r| r.load_end_s).fold(0.0, f64::max);
        x.marks.push((load_end, "load ends".to_owned()));
    }
    // `shift`: where the load steps up and back down.
    if let Some(steps) = runs.iter().map(|r| &r.steps_s).find(|s| s.len() == 3) {
        x.marks.push((steps[1], "step up".to_owned()));
        x.marks.push((steps[2], "step down".to_owned()));
    }
    line_chart(
        &format!("{name}: open connections over time"),
        &x,
        &Axis::linear("open connections"),
        &series,
    )
}

/// One line: which stack did best on what, among the stacks that compete
/// (`raw`, the physical limit, does not). Figures within 2 % of the
/// best tie with it; a figure on which every stack ties (a paced load's
/// requests/s, say) names no winner.
pub fn verdict(runs: &[&RunResult]) -> String {
    let contenders: Vec<&RunResult> = runs.iter().copied().filter(|r| r.stack != "raw").collect();
    let mut parts = Vec::new();
    let mut best =
        |what: &str, value: fn(&RunResult) -> f64, most: bool, show: fn(f64) -> String| {
            let values: Vec<f64> = contenders.iter().map(|r| value(r)).collect();
            let Some(top) = values
                .iter()
                .copied()
                .reduce(|a, b| if most { a.max(b) } else { a.min(b) })
            else {
                return;
            };
            let ties = |v: f64| (v - top).abs() <= TIE * top.abs();
            let winners: Vec<&str> = contenders
                .iter()
                .zip(&values)
                .filter(|(_, v)| ties(**v))
                .map(|(r, _)| r.stack.as_str())
                .collect();
            if winners.len() < contenders.len() {
                parts.push(format!("{what}: {} ({})", winners.join(", "), show(top)));
            }
        };
    best("most requests/s", |r| r.rps, true, |v| format!("{v:.0}"));
    best("lowest p99", |r| r.p99_us, false, |v| format!("{v:.0} us"));
    best(
        "fewest errors",
        |r| r.errors as f64,
        false,
        |v| format!("{v:.0}"),
    );
    best(
        "fewest connections opened",
        |r| r.connections_opened as f64,
        false,
        |v| format!("{v:.0}"),
    );
    best(
        "least idle socket-time",
        |r| r.idle_socket_seconds,
        false,
        |v| format!("{v:.1} s"),
    );
    if contenders.iter().any(|r| r.tls_full + r.tls_resumed > 0) {
        best("most TLS handshakes resumed", resumed_share, true, |v| {
            format!("{:.1} %", v * 100.0)
        });
    }
    if parts.is_empty() {
        "no stack stands out".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Figures this close to the best (relative) tie with it in the verdict.
const TIE: f64 = 0.02;

fn resumed_share(r: &RunResult) -> f64 {
    let all = r.tls_full + r.tls_resumed;
    if all == 0 {
        0.0
    } else {
        r.tls_resumed as f64 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stack: &str, rps: f64, opened: u64) -> RunResult {
        RunResult {
            stack: stack.to_owned(),
            rps,
            p99_us: 100.0,
            connections_opened: opened,
            ..RunResult::default()
        }
    }

    #[test]
    fn the_verdict_names_the_winner_of_each_figure_that_differs() {
        let runs = [
            run("hyper-util", 90.0, 34),
            run("reuse", 100.0, 32),
            run("raw", 120.0, 32),
        ];
        let refs: Vec<&RunResult> = runs.iter().collect();
        assert_eq!(
            verdict(&refs),
            "most requests/s: reuse (100); fewest connections opened: reuse (32)"
        );
        // Within 2 %: a tie, and a figure everyone ties on names nobody.
        let runs = [run("hyper-util", 99.0, 32), run("reuse", 100.0, 32)];
        let refs: Vec<&RunResult> = runs.iter().collect();
        assert_eq!(verdict(&refs), "no stack stands out");
    }
}
