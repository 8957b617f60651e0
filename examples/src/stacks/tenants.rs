//! The stacks of the scenarios with several services through one client
//! (`noisy-neighbour`, `tiers`): hyper-util's client as in the other
//! scenarios, the pool with a total budget across targets
//! (`reuse-shared`), and `reuse`: the pool under the affinity layer with
//! hot and cold tiers. Their `reuse` is built from a [`PoolConfig`] and an
//! affinity layer by the two functions below, one per scenario.

use tower_layer::Layer;
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityLayer, TierConfig};
use tower_reuse_pool::PoolConfig;

use super::{ClientStats, Inner, Protocol, Stack, StackError, StackKind, layer_of, reuse_pool};
use crate::scenarios::TenantsPlan;
use crate::target::Target;

/// `reuse+budget`'s total across targets: more than `scale-targets` ever
/// opens (its 1 000 idle targets' connections and its 32 workers'), so it
/// never binds there: what keeping the budget costs on its own.
pub const LOOSE_BUDGET: usize = 2_048;

/// `config` with a total of `budget` connections across targets.
pub(super) fn with_budget(config: PoolConfig, budget: usize) -> Result<PoolConfig, StackError> {
    config
        .max_connections(Some(budget))
        .validate()
        .map_err(|e| StackError::new(format!("a budget of {budget} connections: {e}")))
}

/// `reuse+budget`'s configuration: `config` with [`LOOSE_BUDGET`].
pub(super) fn loose_budget(config: PoolConfig) -> Result<PoolConfig, StackError> {
    with_budget(config, LOOSE_BUDGET)
}

/// `reuse` in `noisy-neighbour`: the pool with a total of `budget`
/// connections, under the affinity layer with tiers (the quiet service
/// promoted to a dedicated pool with a reservation out of the budget).
/// With no layer (`None`) the stack is skipped.
pub(crate) fn noisy_neighbour_reuse(
    budget: usize,
) -> Result<(PoolConfig, Option<AffinityLayer>), StackError> {
    let config = with_budget(PoolConfig::default(), budget)?;
    Ok((config, Some(tiered(lab_tiers())?)))
}

/// The tiers of the lab's `reuse` stacks: `TierConfig`'s defaults but a
/// 1 s promote window (5 s by default), for runs of a few seconds, and
/// promotion at 10 requests/s (5 by default; demotion under 2, 1 by
/// default): over a window that short, a cold target of `tiers` drawing
/// 3 requests/s on average reaches 5 in some second by chance alone; and
/// a dedicated pool idle for 5 s is retired (60 s by default): longer
/// than `tiers`' 3 s between bursts, shorter than its 10 s tail.
fn lab_tiers() -> TierConfig {
    TierConfig::default()
        .promote_window(std::time::Duration::from_secs(1))
        .promote_rps(10.0)
        .demote_rps(2.0)
        .idle_retire_after(std::time::Duration::from_secs(5))
}

/// `reuse` in `tiers`: the pool under the affinity layer with tiers (hot
/// keys in dedicated pools, cold ones in the shared pool with short-lived
/// connections). With no layer (`None`) the stack is skipped.
pub(crate) fn tiers_reuse() -> Result<(PoolConfig, Option<AffinityLayer>), StackError> {
    Ok((PoolConfig::default(), Some(tiered(lab_tiers())?)))
}

/// `reuse+budget`'s affinity layer in `scale-targets`: the lab's tiers,
/// over the pool with [`LOOSE_BUDGET`].
pub(super) fn budget_tiers() -> Result<AffinityLayer, StackError> {
    tiered(lab_tiers())
}

/// The affinity layer with `tiers` and otherwise its defaults (the key:
/// each request's logical authority).
fn tiered(tiers: TierConfig) -> Result<AffinityLayer, StackError> {
    AffinityLayer::new(AffinityConfig::default().tiers(Some(tiers)))
        .map_err(|e| StackError::new(format!("invalid affinity config: {e}")))
}

/// The affinity layer's dedicated pools now, for the `tiers` time series;
/// `None` for a layer without tiers.
fn dedicated_pools<S>(client: &Affinity<S>) -> Option<u64> {
    client.dedicated_pools().map(|n| n as u64)
}

impl Stack {
    /// Builds `kind` for a scenario with several services (`plan`), HTTP/1.1:
    /// `hyper-util` and `hyper-util-tuned` as everywhere, `reuse-shared`
    /// (the pool with the scenario's budget, no affinity) and `reuse`
    /// (from `noisy_neighbour_reuse` or `tiers_reuse`, in this module). `target` is
    /// any of the services' (only a pre-connecting stack would use it).
    pub async fn build_for_tenants(
        kind: StackKind,
        tls: rustls::ClientConfig,
        plan: &TenantsPlan,
        target: &Target,
    ) -> Result<Self, StackError> {
        let (config, affinity) = match (kind, plan) {
            (StackKind::HyperUtil | StackKind::HyperUtilTuned, _) => {
                return Stack::build(kind, Protocol::Http1, tls, 0, target, None, None).await;
            }
            (StackKind::ReuseShared, TenantsPlan::NoisyNeighbour(noisy)) => {
                (with_budget(PoolConfig::default(), noisy.budget)?, None)
            }
            (StackKind::Reuse, TenantsPlan::NoisyNeighbour(noisy)) => {
                let (config, affinity) = noisy_neighbour_reuse(noisy.budget)?;
                (config, Some(affinity.ok_or_else(no_tiers)?))
            }
            (StackKind::Reuse, TenantsPlan::Tiers(_)) => {
                let (config, affinity) = tiers_reuse()?;
                (config, Some(affinity.ok_or_else(no_tiers)?))
            }
            _ => {
                return Err(StackError::new(format!(
                    "{kind} is not one of this scenario's stacks"
                )));
            }
        };
        Self::with_pool(kind, tls, config, affinity)
    }

    /// A stack of the pool built from `config` over the lab's connector,
    /// under `affinity` when given; HTTP/1.1.
    pub fn with_pool(
        kind: StackKind,
        tls: rustls::ClientConfig,
        config: PoolConfig,
        affinity: Option<AffinityLayer>,
    ) -> Result<Self, StackError> {
        let protocol = Protocol::Http1;
        let connector_stats = ClientStats::default();
        let layer = layer_of(kind, config)?;
        let pool = reuse_pool(layer, protocol, tls, &connector_stats);
        let inner = match affinity {
            Some(affinity) => {
                let control = pool.control();
                Inner::ReuseAffinity(affinity.layer(pool), control)
            }
            None => Inner::Pool(pool),
        };
        Ok(Self::from_parts(kind, protocol, connector_stats, inner))
    }

    /// The affinity layer's dedicated pools now; `None` for a stack
    /// without tiers.
    pub fn dedicated_pools(&self) -> Option<u64> {
        match &self.inner {
            Inner::ReuseAffinity(client, _) => dedicated_pools(client),
            _ => None,
        }
    }
}

fn no_tiers() -> StackError {
    StackError::new("the affinity layer's tiers are not wired into this scenario yet")
}
