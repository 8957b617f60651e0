//! Dedicated pools: what the layer does with the tier controller's
//! decisions. A dedicated key gets a partition of the pool of its own (its
//! requests carry that `Partition`), with settings for a hot service (a
//! longer idle timeout, warm connections for its recent peak concurrency)
//! and a reservation out of the pool's connection budget; a key going back
//! retires its partition's targets (idle connections close now, busy ones
//! when their requests end) and drops the reservation.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower_reuse_pool::{Partition, PoolConfig, PoolControl, TargetConfig};

use super::change::{ChangeKind, DemoteReason, Tier, TierChange};
use super::config::TierConfig;
use super::controller::Tiers;
use crate::events::{Demoted, Promoted};
use crate::services::Events;

/// The layer's tiers: the controller, and the dedicated pools it made.
pub(crate) struct TierPools {
    config: TierConfig,
    tiers: Tiers,
    hasher: std::collections::hash_map::RandomState,
    control: OnceLock<PoolControl>,
    events: Arc<Events>,
    dedicated: Mutex<HashMap<u64, Dedicated>>,
    sweeping: AtomicBool,
}

/// One dedicated key's pool.
#[derive(Clone)]
struct Dedicated {
    /// `scheme://authority` of the key's requests.
    name: Arc<str>,
    partition: Partition,
    reserved: Option<usize>,
    warm: usize,
}

/// A request's key, from [`TierPools::route`]: its requests in flight are
/// followed until this is dropped.
pub(crate) struct InFlight {
    pools: Arc<TierPools>,
    key: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pools.tiers.exit(self.key, Instant::now());
    }
}

/// One dedicated pool, in a snapshot.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DedicatedSnapshot {
    /// `scheme://authority` of the key's requests.
    pub name: String,
    /// Requests per second over the promote window.
    pub rate: f64,
    /// The most requests in flight at once over the promote window.
    pub peak_concurrency: u32,
    /// Slots of the pool's budget reserved for it.
    pub reserved: Option<usize>,
    /// Warm connections it keeps (`min_idle_per_target`).
    pub warm: usize,
    /// Its connections open now (idle, busy or connecting).
    pub open: usize,
}

/// The tiers in a snapshot.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TiersSnapshot {
    /// Keys tracked (cold and dedicated).
    pub keys_tracked: usize,
    /// Cold keys among them.
    pub cold: usize,
    /// Each dedicated pool, in no particular order.
    pub dedicated: Vec<DedicatedSnapshot>,
}

impl TierPools {
    pub(crate) fn new(config: TierConfig, events: Arc<Events>) -> Self {
        TierPools {
            tiers: Tiers::new(&config, Instant::now()),
            config,
            hasher: Default::default(),
            control: OnceLock::new(),
            events,
            dedicated: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Dedicated>> {
        self.dedicated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool under the layer: its idle timeout becomes the cold tier's
    /// (unless `cold_idle_timeout` is off), and a task starts that demotes
    /// keys as their rates fall (while a runtime runs and the layer lives).
    pub(crate) fn stacked(self: &Arc<Self>, control: &PoolControl) {
        if self.control.set(control.clone()).is_err() {
            return;
        }
        if let Some(cold) = self.config.cold_idle_timeout {
            // A pool-wide setting the user chose keeps its own validation:
            // if it rejects this one, the pool's stays.
            let _ = control.update(|c| c.idle_timeout(Some(cold)));
        }
        if tokio::runtime::Handle::try_current().is_ok()
            && !self.sweeping.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(sweep(Arc::downgrade(self), self.config.promote_window / 10));
        }
    }

    /// Count `req` for its key and, if the key is dedicated, mark it with
    /// the key's partition.
    pub(crate) fn route<B>(self: &Arc<Self>, req: &mut Request<B>) -> Option<InFlight> {
        let uri = req.uri();
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        let user = req.extensions().get::<Partition>();
        let key = {
            let mut hasher = self.hasher.build_hasher();
            scheme.as_str().hash(&mut hasher);
            authority.as_str().to_ascii_lowercase().hash(&mut hasher);
            user.map(Partition::as_str).hash(&mut hasher);
            hasher.finish()
        };
        let now = Instant::now();
        let recorded = self.tiers.record(key, now);
        let tier = recorded.tier;
        for change in recorded.changes() {
            let name = || format!("{}://{}", scheme, authority.as_str().to_ascii_lowercase());
            self.apply(&change, Some((name(), user)));
        }
        if tier == Tier::Dedicated {
            let partition = self.lock().get(&key).map(|d| d.partition.clone());
            if let Some(partition) = partition {
                req.extensions_mut().insert(partition);
            }
        }
        self.tiers.enter(key, now).then(|| InFlight {
            pools: self.clone(),
            key,
        })
    }

    /// Act on one change: a promotion makes the key's pool (named by the
    /// request that promoted it), a demotion retires it.
    fn apply(&self, change: &TierChange, request: Option<(String, Option<&Partition>)>) {
        match change.kind {
            ChangeKind::Promoted => {
                if let Some((name, user)) = request {
                    self.promote(change, name, user);
                }
            }
            ChangeKind::Demoted { reason } => self.demote(change, reason),
        }
    }

    fn promote(&self, change: &TierChange, name: String, user: Option<&Partition>) {
        let Some(control) = self.control.get() else {
            return;
        };
        let partition = match user {
            Some(user) => Partition::new(format!("{}/tier:{name}", user.as_str())),
            None => Partition::new(format!("tier:{name}")),
        };
        let peak = usize::try_from(change.peak_concurrency.max(1)).unwrap_or(usize::MAX);
        let warm = peak.min(PoolConfig::MAX_MIN_IDLE);
        let mut reserved = self.reservation(&control.config(), peak);
        let settings = |reserved: Option<usize>| {
            TargetConfig::default()
                .idle_timeout(Some(self.config.hot_idle_timeout))
                .min_idle_per_target(warm)
                .reserved_connections(reserved)
        };
        if control
            .set_partition_config(&partition, Some(settings(reserved)))
            .is_err()
        {
            // The budget changed under it (other reservations): a
            // dedicated pool all the same, without one.
            reserved = None;
            let _ = control.set_partition_config(&partition, Some(settings(None)));
        }
        let name: Arc<str> = name.into();
        self.events.load().on_promoted(&Promoted {
            service: &name,
            rate: change.rate,
            window: change.rate_window,
            peak_concurrency: change.peak_concurrency,
            reserved,
        });
        self.lock().insert(
            change.key,
            Dedicated {
                name,
                partition,
                reserved,
                warm,
            },
        );
    }

    /// Slots to reserve for a new dedicated pool whose peak concurrency is
    /// `peak`: within `max_reserved_per_pool`, and all dedicated pools
    /// together within `reserved_share` of the budget (none without one).
    fn reservation(&self, pool: &PoolConfig, peak: usize) -> Option<usize> {
        let budget = pool.get_max_connections()?;
        let share = (budget as f64 * self.config.reserved_share).floor() as usize;
        let taken: usize = self.lock().values().filter_map(|d| d.reserved).sum();
        let reserved = peak
            .min(self.config.max_reserved_per_pool)
            .min(share.saturating_sub(taken));
        (reserved > 0).then_some(reserved)
    }

    fn demote(&self, change: &TierChange, reason: DemoteReason) {
        let Some(dedicated) = self.lock().remove(&change.key) else {
            return;
        };
        if let Some(control) = self.control.get() {
            for target in control.snapshot().targets {
                if target.target().partition() == Some(&dedicated.partition) {
                    control.retire(target.target());
                }
            }
            let _ = control.set_partition_config(&dedicated.partition, None);
        }
        self.events.load().on_demoted(&Demoted {
            service: &dedicated.name,
            reason: match reason {
                DemoteReason::Cold => crate::events::DemoteReason::Cold,
                DemoteReason::Idle => crate::events::DemoteReason::Idle,
                DemoteReason::Displaced { .. } => crate::events::DemoteReason::Displaced,
            },
            rate: change.rate,
            window: change.rate_window,
            dedicated_for: change.dedicated_for,
        });
    }

    /// Demote the keys whose rates fell, retire idle ones.
    fn sweep(&self, now: Instant) {
        for change in self.tiers.sweep(now) {
            self.apply(&change, None);
        }
    }

    pub(crate) fn snapshot(&self) -> TiersSnapshot {
        let keys = self.tiers.snapshot(Instant::now());
        let pools = self.control.get().map(PoolControl::snapshot);
        let dedicated = self.lock().clone();
        let open = |partition: &Partition| {
            pools.as_ref().map_or(0, |pools| {
                pools
                    .targets
                    .iter()
                    .filter(|t| t.target().partition() == Some(partition))
                    .map(|t| t.idle() + t.active() + t.connecting())
                    .sum()
            })
        };
        TiersSnapshot {
            keys_tracked: keys.len(),
            cold: keys.iter().filter(|k| k.tier == Tier::Cold).count(),
            dedicated: keys
                .iter()
                .filter_map(|k| {
                    let d = dedicated.get(&k.key)?;
                    Some(DedicatedSnapshot {
                        name: d.name.to_string(),
                        rate: k.rate,
                        peak_concurrency: k.peak_concurrency,
                        reserved: d.reserved,
                        warm: d.warm,
                        open: open(&d.partition),
                    })
                })
                .collect(),
        }
    }
}

/// Sweeps the tiers every `every` while the layer lives.
async fn sweep(pools: Weak<TierPools>, every: Duration) {
    let every = every.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        pools.sweep(Instant::now());
    }
}
