//! Dedicated pools: what the layer does with the tier controller's
//! decisions. A key is a service (scheme, authority and partition), whose
//! connections are its own already, never shared with another service's.
//! A dedicated key's targets get the pool's settings for a hot service
//! (`PoolControl::set_service_config`: a longer idle timeout, warm
//! connections for its recent peak concurrency, a reservation out of the
//! budget); the connections it has stay and live by them, so a promotion
//! costs no connect. A key going back returns to the shared settings (the
//! cold tier's short idle timeout): its idle connections close as they
//! expire, busy ones serve their requests first, and its reservation goes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use http::Request;
use tokio::time::Instant;
use tower_reuse_pool::{Partition, PoolConfig, PoolControl, Target, TargetConfig};

use super::change::{ChangeKind, DemoteReason, Tier, TierChange};
use super::config::TierConfig;
use super::controller::Tiers;
use crate::events::{Demoted, Promoted};
use crate::services::Events;

/// The layer's tiers: the controller, and the keys' services.
pub(crate) struct TierPools {
    config: TierConfig,
    tiers: Tiers,
    hasher: std::collections::hash_map::RandomState,
    control: OnceLock<PoolControl>,
    events: Arc<Events>,
    keys: Mutex<HashMap<u64, Key>>,
    sweeping: AtomicBool,
}

/// A key the controller tracks: its service, and its pool's settings
/// while it is dedicated.
struct Key {
    /// The key's targets, without an endpoint.
    service: Target,
    dedicated: Option<Dedicated>,
}

/// One dedicated key's pool.
#[derive(Clone)]
struct Dedicated {
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
    /// Connections it keeps open, busy or idle (`min_connections_per_target`).
    pub warm: usize,
    /// Its connections open now (idle, busy or connecting).
    pub open: usize,
}

/// One tracked key, in a snapshot.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyTierSnapshot {
    /// `scheme://authority` of the key's requests.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Requests per second over the promote window.
    pub rate: f64,
    /// Slots of the pool's budget reserved for it (dedicated keys only).
    pub reserved: Option<usize>,
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
    /// Every tracked key whose service is known, cold or dedicated, in no
    /// particular order.
    pub keys: Vec<KeyTierSnapshot>,
}

impl TierPools {
    pub(crate) fn new(config: TierConfig, events: Arc<Events>) -> Self {
        TierPools {
            tiers: Tiers::new(&config, Instant::now()),
            config,
            hasher: Default::default(),
            control: OnceLock::new(),
            events,
            keys: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Key>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool under the layer: its idle timeout becomes the cold tier's
    /// (unless `cold_idle_timeout` is off).
    pub(crate) fn stacked(self: &Arc<Self>, control: &PoolControl) {
        if self.control.set(control.clone()).is_err() {
            return;
        }
        if let Some(cold) = self.config.cold_idle_timeout {
            // A pool-wide setting the user chose keeps its own validation:
            // if it rejects this one, the pool's stays.
            let _ = control.update(|c| c.idle_timeout(Some(cold)));
        }
    }

    /// Start the task that promotes and demotes keys between requests, on
    /// the runtime of the first request (it ends with the layer).
    fn start_sweeping(self: &Arc<Self>) {
        if !self.sweeping.load(Ordering::Relaxed)
            && tokio::runtime::Handle::try_current().is_ok()
            && !self.sweeping.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(sweep(Arc::downgrade(self), self.config.promote_window / 10));
        }
    }

    /// Count `req` for its key (its service: scheme, authority and
    /// partition).
    pub(crate) fn route<B>(self: &Arc<Self>, req: &Request<B>) -> Option<InFlight> {
        let uri = req.uri();
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        let user = req.extensions().get::<Partition>();
        let key = {
            let mut hasher = self.hasher.build_hasher();
            scheme.as_str().hash(&mut hasher);
            // Hosts are case-insensitive: hashed lowercase, without a copy.
            for byte in authority.as_str().bytes() {
                hasher.write_u8(byte.to_ascii_lowercase());
            }
            user.map(Partition::as_str).hash(&mut hasher);
            hasher.finish()
        };
        {
            let mut keys = self.lock();
            if !keys.contains_key(&key)
                && let Ok(service) = Target::from_uri(uri, user.cloned())
            {
                let dedicated = None;
                keys.insert(key, Key { service, dedicated });
            }
        }
        self.start_sweeping();
        let now = Instant::now();
        let (recorded, entered) = self.tiers.record_and_enter(key, now);
        for change in recorded.changes() {
            self.apply(&change);
        }
        entered.then(|| InFlight {
            pools: self.clone(),
            key,
        })
    }

    /// Act on one change: a promotion gives the key's service a dedicated
    /// pool's settings, a demotion takes them back.
    fn apply(&self, change: &TierChange) {
        match change.kind {
            ChangeKind::Promoted => self.promote(change),
            ChangeKind::Demoted { reason } => self.demote(change, reason),
        }
    }

    fn promote(&self, change: &TierChange) {
        let Some(control) = self.control.get() else {
            return;
        };
        let Some(service) = self.lock().get(&change.key).map(|k| k.service.clone()) else {
            return;
        };
        let peak = usize::try_from(change.peak_concurrency.max(1)).unwrap_or(usize::MAX);
        let warm = peak.min(PoolConfig::MAX_MIN_IDLE);
        let mut reserved = self.reservation(&control.config(), peak);
        let settings = |reserved: Option<usize>| {
            TargetConfig::default()
                .idle_timeout(Some(self.config.hot_idle_timeout))
                .min_connections_per_target(warm)
                .reserved_connections(reserved)
        };
        if control
            .set_service_config(&service, Some(settings(reserved)))
            .is_err()
        {
            // The budget changed under it (other reservations): a
            // dedicated pool all the same, without one.
            reserved = None;
            let _ = control.set_service_config(&service, Some(settings(None)));
        }
        self.events.load().on_promoted(&Promoted {
            service: &name(&service),
            rate: change.rate,
            window: change.rate_window,
            peak_concurrency: change.peak_concurrency,
            reserved,
        });
        if let Some(key) = self.lock().get_mut(&change.key) {
            key.dedicated = Some(Dedicated { reserved, warm });
        }
    }

    /// Slots to reserve for a new dedicated pool whose peak concurrency is
    /// `peak`: within `max_reserved_per_pool`, and all dedicated pools
    /// together within `reserved_share` of the budget (none without one).
    fn reservation(&self, pool: &PoolConfig, peak: usize) -> Option<usize> {
        let budget = pool.get_max_connections()?;
        let share = (budget as f64 * self.config.reserved_share).floor() as usize;
        let taken: usize = self
            .lock()
            .values()
            .filter_map(|k| k.dedicated.as_ref()?.reserved)
            .sum();
        let reserved = peak
            .min(self.config.max_reserved_per_pool)
            .min(share.saturating_sub(taken));
        (reserved > 0).then_some(reserved)
    }

    fn demote(&self, change: &TierChange, reason: DemoteReason) {
        let service = {
            let mut keys = self.lock();
            let Some(key) = keys.get_mut(&change.key) else {
                return;
            };
            key.dedicated = None;
            key.service.clone()
        };
        if let Some(control) = self.control.get() {
            let _ = control.set_service_config(&service, None);
        }
        self.events.load().on_demoted(&Demoted {
            service: &name(&service),
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

    /// Demote the keys whose rates fell, retire idle ones, promote those
    /// whose rule holds; with `prune`, forget the services of keys no
    /// longer tracked.
    fn sweep(&self, now: Instant, prune: bool) {
        for change in self.tiers.sweep(now) {
            self.apply(&change);
        }
        if prune {
            let tracked: HashSet<u64> = self.tiers.snapshot(now).iter().map(|k| k.key).collect();
            self.lock()
                .retain(|key, k| k.dedicated.is_some() || tracked.contains(key));
        }
    }

    /// Keys with a dedicated pool now: a count under one lock, where
    /// [`snapshot`](Self::snapshot) reads the pool's every target.
    pub(crate) fn dedicated(&self) -> usize {
        self.lock()
            .values()
            .filter(|k| k.dedicated.is_some())
            .count()
    }

    pub(crate) fn snapshot(&self) -> TiersSnapshot {
        let keys = self.tiers.snapshot(Instant::now());
        let pools = self.control.get().map(PoolControl::snapshot);
        let services: HashMap<u64, (Target, Option<Dedicated>)> = self
            .lock()
            .iter()
            .map(|(key, k)| (*key, (k.service.clone(), k.dedicated.clone())))
            .collect();
        // Open connections per service, in one pass over the pool.
        let mut by_service: HashMap<Target, usize> = HashMap::new();
        for t in pools.iter().flat_map(|pools| &pools.targets) {
            *by_service
                .entry(t.target().clone().with_endpoint(None))
                .or_default() += t.idle() + t.active() + t.connecting();
        }
        let open = |service: &Target| by_service.get(service).copied().unwrap_or(0);
        let mut snapshot = TiersSnapshot {
            keys_tracked: keys.len(),
            cold: keys.iter().filter(|k| k.tier == Tier::Cold).count(),
            ..TiersSnapshot::default()
        };
        for k in &keys {
            let Some((service, dedicated)) = services.get(&k.key) else {
                continue;
            };
            let open = open(service);
            if let Some(d) = dedicated {
                snapshot.dedicated.push(DedicatedSnapshot {
                    name: name(service),
                    rate: k.rate,
                    peak_concurrency: k.peak_concurrency,
                    reserved: d.reserved,
                    warm: d.warm,
                    open,
                });
            }
            snapshot.keys.push(KeyTierSnapshot {
                name: name(service),
                tier: k.tier,
                rate: k.rate,
                reserved: dedicated.as_ref().and_then(|d| d.reserved),
                open,
            });
        }
        snapshot
    }
}

/// `scheme://authority` of a service (never its partition).
fn name(service: &Target) -> String {
    format!("{}://{}", service.scheme(), service.authority())
}

/// Sweeps the tiers every `every` while the layer lives.
async fn sweep(pools: Weak<TierPools>, every: Duration) {
    let every = every.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The keys' services are pruned every tenth sweep: a full pass.
    for n in 0u64.. {
        ticks.tick().await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        pools.sweep(Instant::now(), n % 10 == 0);
    }
}
