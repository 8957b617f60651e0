//! Which stacks run in which scenario of the suite (the affinity and
//! tenants scenarios choose their own): stacks measured in one scenario
//! only, and stacks left out of a run that names none.

use super::{Scenario, affinity};
use crate::stacks::StackKind;

/// Adds the stacks `built` skips, and those it leaves out by default.
pub(super) fn choose(built: &mut Scenario) {
    if !built.name.starts_with("tls-churn") {
        built
            .skip
            .push((StackKind::HyperUtilCache, CACHE_IN_TLS_CHURN_ONLY));
    }
    built.default_skip = default_skip(built.name);
    if !matches!(built.name, "steady-h1" | "steady-h1-tls") {
        built.skip.push((StackKind::ReuseOtel, OTEL_IN_STEADY_ONLY));
        built.skip.push((StackKind::ReuseSpan, OTEL_IN_STEADY_ONLY));
    }
    if !matches!(
        built.name,
        "steady-h1" | "bursty" | "keepalive-race" | "tls-churn" | "tls-churn-paced"
    ) {
        built
            .skip
            .push((StackKind::ReuseStatic, STATIC_WHERE_COMPARED));
    }
    built
        .skip
        .push((StackKind::HyperUtilP2c, affinity::P2C_NEEDS_ENDPOINTS));
    built
        .skip
        .push((StackKind::ReuseShared, REUSE_SHARED_IN_NOISY_ONLY));
    if built.name != "scale-targets" {
        built
            .skip
            .push((StackKind::ReuseBudget, BUDGET_IN_SCALE_ONLY));
    }
    if built.name != "steady-h1" {
        built
            .skip
            .push((StackKind::ReuseAffinity, affinity::AFFINITY_IN_STEADY_ONLY));
        built
            .skip
            .push((StackKind::HyperUtilTracing, TRACING_IN_STEADY_ONLY));
    }
}

const STATIC_WHERE_COMPARED: &str = "reuse with the controller off: run where the controller's \
     effect is measured (steady-h1, bursty, keepalive-race, tls-churn, cyclic, shift)";

const CACHE_IN_TLS_CHURN_ONLY: &str = "measured in tls-churn only (what the TLS session cache gives hyper-util's client), to keep the suite short";

const REUSE_SHARED_IN_NOISY_ONLY: &str =
    "the pool's budget without affinity: run in noisy-neighbour only";

const BUDGET_IN_SCALE_ONLY: &str = "reuse with a budget that does not bind and the affinity layer's tiers: measured in scale-targets only (what the budget's and the tiers' bookkeeping cost), to keep the suite short";

const TRACING_IN_STEADY_ONLY: &str =
    "measured in steady-h1 only (the instrumented peer of reuse+otel), to keep the suite short";

const OTEL_IN_STEADY_ONLY: &str = "measured in steady-h1 and steady-h1-tls only (the OpenTelemetry overhead), to keep the suite short";

const FRESH_ADDS_NOTHING: &str = "fresh (a connection per request) adds nothing here beyond \
     steady-h1's figure; left out of the default suite to keep it short (--stack fresh runs it)";

const TUNED_ADDS_NOTHING: &str = "hyper-util-tuned (2 s idle, 8 idle per host) is one more \
     static setting; no figure of the suite comes from it here: left out of the default suite to \
     keep it short (--stack hyper-util-tuned runs it)";

/// The stacks a scenario leaves out when none is named (see
/// [`Scenario::default_skip`]).
fn default_skip(name: &str) -> Vec<(StackKind, &'static str)> {
    let (fresh, tuned) = match name {
        "steady-h1-tls" => (false, true),
        "steady-h2" | "h2-stream-limit" | "h2-refuse" | "tls-churn" | "tls-churn-paced"
        | "zipf-endpoints" | "bursty" => (true, true),
        "scale-targets" => (false, true),
        _ => (false, false),
    };
    let mut skip = Vec::new();
    if fresh {
        skip.push((StackKind::Fresh, FRESH_ADDS_NOTHING));
    }
    if tuned {
        skip.push((StackKind::HyperUtilTuned, TUNED_ADDS_NOTHING));
    }
    skip
}
