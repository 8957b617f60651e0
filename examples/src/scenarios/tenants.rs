//! The scenarios of issue 16: several services sharing one client, each
//! on loopback addresses of its own. `noisy-neighbour`: a service that
//! wants far more connections than a total budget beside a light one;
//! `tiers`: a few hot services in bursts among many cold targets.

use std::time::Duration;

use super::{Scenario, Sizes};
use crate::driver::Load;
use crate::server::ServerConfig;
use crate::stacks::{Protocol, StackKind};

/// What a scenario with several services sends, and to which addresses
/// of the embedded server.
#[derive(Clone, Debug)]
pub enum TenantsPlan {
    /// `noisy-neighbour`.
    NoisyNeighbour(NoisyPlan),
    /// `tiers`.
    Tiers(TiersPlan),
}

/// `noisy-neighbour`: service A (the server's first address, every answer
/// delayed) under a closed loop, service B (the second address) under
/// Poisson arrivals, both through one client.
#[derive(Clone, Debug)]
pub struct NoisyPlan {
    /// Service A's closed-loop workers.
    pub noisy_workers: usize,
    /// Added to every answer of service A.
    pub noisy_latency: Duration,
    /// Service B's Poisson arrivals per second.
    pub quiet_rate: f64,
    /// Service B's bound on requests in flight.
    pub quiet_in_flight: usize,
    /// Both loads before the measured phase, not counted.
    pub warm_up: Duration,
    /// The measured phase.
    pub measured: Duration,
    /// Service B alone through a client of the same stack (its own server
    /// and client): a warm-up of this long ...
    pub solo_warm_up: Duration,
    /// ... then this long measured.
    pub solo: Duration,
    /// The budget of the stacks that have one.
    pub budget: usize,
}

/// `tiers`: `hot` services (the server's first addresses) each get a burst
/// of `burst` concurrent requests every `period`, their phases spread over
/// the period; `cold` targets (the addresses after them) share Poisson
/// arrivals by Zipf popularity. Then `tail` watched with no load.
#[derive(Clone, Debug)]
pub struct TiersPlan {
    /// Hot services.
    pub hot: usize,
    /// Requests per burst.
    pub burst: usize,
    /// Time between a hot service's bursts.
    pub period: Duration,
    /// Cold targets.
    pub cold: usize,
    /// Zipf exponent of the cold targets' popularity.
    pub cold_zipf: f64,
    /// Poisson arrivals per second over the cold targets.
    pub cold_rate: f64,
    /// How long the load runs.
    pub load: Duration,
    /// Open connections and dedicated pools watched this long after it.
    pub tail: Duration,
}

impl TiersPlan {
    /// Bursts hot service `i` gets: one at each `offset + k * period`
    /// before the load ends, where `offset` spreads the services' phases
    /// over one period.
    pub fn bursts(&self, i: usize) -> (Duration, usize) {
        let offset = self.period.mul_f64(i as f64 / self.hot.max(1) as f64);
        let left = self.load.saturating_sub(offset).as_secs_f64();
        let bursts = (left / self.period.as_secs_f64().max(1e-3)).ceil() as usize;
        (offset, bursts)
    }
}

/// The answers' fixed cost: every service's server.
fn server() -> ServerConfig {
    ServerConfig::default()
        .response_size(100)
        .idle_timeout(Some(Duration::from_secs(120)))
}

/// Everything but `keep`, skipped with `why`.
fn only(keep: &[StackKind], why: &'static str) -> Vec<(StackKind, &'static str)> {
    StackKind::ALL
        .into_iter()
        .filter(|k| !keep.contains(k))
        .map(|k| (k, why))
        .collect()
}

pub(super) fn build(name: &str, sizes: &Sizes) -> Option<Scenario> {
    let secs = |full: f64, quick: f64| {
        sizes
            .duration
            .unwrap_or(Duration::from_secs_f64(if sizes.quick {
                quick
            } else {
                full
            }))
    };
    let (name, description, server, addresses, load, tail, plan, skip) = match name {
        "noisy-neighbour" => {
            let plan = NoisyPlan {
                noisy_workers: sizes.concurrency(256),
                noisy_latency: Duration::from_millis(5),
                quiet_rate: 200.0,
                quiet_in_flight: 256,
                warm_up: Duration::from_secs_f64(if sizes.quick { 0.3 } else { 1.5 }),
                measured: secs(4.0, 0.7),
                solo_warm_up: Duration::from_secs_f64(if sizes.quick { 0.1 } else { 0.5 }),
                solo: Duration::from_secs_f64(if sizes.quick { 0.4 } else { 2.0 }),
                budget: 64,
            };
            let description = format!(
                "one client, two services on their own addresses: A gets {} closed-loop \
                 workers and answers {:?} late, B {}/s Poisson arrivals; a budget of {} \
                 connections in all where a stack has one; {:?} warm-up, {:?} measured; B \
                 alone ({:?} warm-up, {:?} measured) beside it",
                plan.noisy_workers,
                plan.noisy_latency,
                plan.quiet_rate,
                plan.budget,
                plan.warm_up,
                plan.measured,
                plan.solo_warm_up,
                plan.solo,
            );
            let load = Load::Closed {
                workers: plan.noisy_workers,
                duration: plan.warm_up + plan.measured,
                max_requests: sizes.requests,
                think: None,
                post_every: None,
                keys: None,
            };
            let server = server().latency_on(0, plan.noisy_latency);
            let skip = only(
                &[
                    StackKind::HyperUtil,
                    StackKind::ReuseShared,
                    StackKind::Reuse,
                ],
                "noisy-neighbour compares a client with no budget (hyper-util), the pool's \
                 budget alone (reuse-shared) and with the affinity layer's tiers (reuse)",
            );
            (
                "noisy-neighbour",
                description,
                server,
                2,
                load,
                None,
                TenantsPlan::NoisyNeighbour(plan),
                skip,
            )
        }
        "tiers" => {
            let plan = TiersPlan {
                hot: 10,
                burst: sizes.concurrency(32),
                period: Duration::from_secs(3),
                cold: if sizes.quick { 40 } else { 990 },
                cold_zipf: 1.1,
                cold_rate: 200.0,
                load: secs(20.0, 1.5),
                tail: Duration::from_secs_f64(if sizes.quick { 0.5 } else { 10.0 }),
            };
            let description = format!(
                "{} hot services, each a burst of {} concurrent requests every {:?} (phases \
                 spread over the period), and {} cold targets with Zipf({}) popularity sharing \
                 {}/s Poisson arrivals, each on an address of its own; {:?} of load, then {:?} \
                 watched with no load",
                plan.hot,
                plan.burst,
                plan.period,
                plan.cold,
                plan.cold_zipf,
                plan.cold_rate,
                plan.load,
                plan.tail,
            );
            let load = Load::Poisson {
                rate: plan.cold_rate,
                duration: plan.load,
                max_in_flight: 256,
                zipf_exponent: Some(plan.cold_zipf),
                // Twice the expected arrivals at most.
                max_requests: Some(
                    sizes
                        .requests
                        .unwrap_or((plan.cold_rate * plan.load.as_secs_f64() * 2.0) as u64 + 100),
                ),
                keys: None,
            };
            let skip = only(
                &[
                    StackKind::HyperUtil,
                    StackKind::HyperUtilTuned,
                    StackKind::Reuse,
                ],
                "tiers compares hyper-util (90 s idle), hyper-util-tuned (2 s idle, 8 idle per \
                 host) and reuse (the affinity layer's tiers)",
            );
            (
                "tiers",
                description,
                server(),
                plan.hot + plan.cold,
                load,
                Some(plan.tail),
                TenantsPlan::Tiers(plan),
                skip,
            )
        }
        _ => return None,
    };
    Some(Scenario {
        name,
        description,
        protocol: Protocol::Http1,
        tls: false,
        server,
        addresses,
        load,
        idle_targets: 0,
        tail,
        parallel_stacks: false,
        take_turns: false,
        relay: None,
        client_per_worker: false,
        skip,
        default_skip: Vec::new(),
        service: None,
        tenants: Some(plan),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten hot services over 20 s, a burst every 3 s: phases 0.3 s apart,
    /// 7 bursts for the first (0 to 18 s), 6 for the last (2.7 to 17.7 s).
    #[test]
    fn hot_bursts_spread_their_phases_over_the_period() {
        let Some(Scenario {
            tenants: Some(TenantsPlan::Tiers(plan)),
            ..
        }) = build("tiers", &Sizes::default())
        else {
            panic!("tiers has a plan");
        };
        assert_eq!(plan.bursts(0), (Duration::ZERO, 7));
        assert_eq!(plan.bursts(1), (Duration::from_millis(300), 7));
        let (offset, bursts) = plan.bursts(9);
        assert_eq!((offset.as_millis(), bursts), (2_700, 6));
    }
}
