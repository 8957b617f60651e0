//! The pool's shared state: its targets, the settings given to targets
//! and partitions, and the budget's eviction of idle connections.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use http_body::Body;

use crate::config::{ConfigError, PoolConfig, TargetConfig};
use crate::connect::{Connect, Dialer};
use crate::control::{BudgetSnapshot, Controlled, PoolSnapshot};
use crate::error::BoxError;
use crate::events::PoolEvents;
use crate::target::{Keyed, Partition, Target, TargetKey};
use crate::target_pool::{Common, Dial, Evictor, Follow, Group, TargetPool};

/// What every handle of one pool shares.
pub(crate) struct Shared<C, B> {
    pub(crate) common: Arc<Common>,
    pub(crate) dialer: Arc<Dialer<C>>,
    targets: RwLock<HashMap<Target, Arc<TargetPool<B>>>>,
    /// Settings given to every target of a partition.
    partitions: RwLock<HashMap<Partition, TargetConfig>>,
}

impl<C, B> Drop for Shared<C, B> {
    fn drop(&mut self) {
        // Connections close (and say so in events) rather than vanish.
        let targets = self.targets.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, pool) in targets.drain() {
            pool.shut_down();
        }
        // Let the reaper see that the pool is gone.
        self.common.reaper_wake.notify_one();
    }
}

impl<C, B> Shared<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(connector: C, config: PoolConfig, events: Arc<dyn PoolEvents>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            common: Arc::new(Common::new(config, events)),
            dialer: Arc::new(Dialer { connector }),
            targets: RwLock::new(HashMap::new()),
            partitions: RwLock::new(HashMap::new()),
        });
        let evictor: Weak<dyn Evictor> = Arc::downgrade(&shared) as Weak<dyn Evictor>;
        let _ = shared.common.evictor.set(evictor);
        shared
    }

    /// Hand the slots a change freed (a raised budget, a smaller
    /// reservation) to the targets waiting for them.
    fn settle_budget(&self) {
        let grants = self
            .common
            .budget
            .settle(self.common.config.load().max_connections);
        self.common.follow(Follow {
            grants,
            evictions: 0,
        });
    }

    /// The settings given to `partition`'s targets, if any.
    fn partition_config(&self, partition: Option<&Partition>) -> Option<TargetConfig> {
        let partitions = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        partitions.get(partition?).cloned()
    }

    /// The pool of the target `key` names, if it has one.
    pub(crate) fn find(&self, key: TargetKey<'_>) -> Option<Arc<TargetPool<B>>> {
        self.read_targets().get(&key as &dyn Keyed).cloned()
    }

    /// The pool for `target`, created on first use.
    pub(crate) fn target_pool(self: &Arc<Self>, target: &Target) -> Arc<TargetPool<B>> {
        if let Some(pool) = self.find(target.key()) {
            return pool;
        }
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        let pool = targets
            .entry(target.clone())
            .or_insert_with(|| {
                let dial: Arc<dyn Dial<B>> = self.dialer.clone();
                let pool = TargetPool::new(target.clone(), self.common.clone(), dial);
                // A new target of a partition with settings gets them.
                if let Some(settings) = self.partition_config(target.partition())
                    && let Ok(resolved) = settings.resolve(&self.common.config.load())
                {
                    pool.set_settings(None, Some(settings), Some(resolved), false);
                }
                pool
            })
            .clone();
        drop(targets);
        if !self
            .common
            .reaper_started
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            crate::reaper::spawn(self);
        }
        pool
    }

    fn read_targets(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Target, Arc<TargetPool<B>>>> {
        self.targets.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn target_pools(&self) -> Vec<Arc<TargetPool<B>>> {
        self.read_targets().values().cloned().collect()
    }

    /// Forget targets with nothing open and no use for a while (see
    /// `forget_after`); their counts go with them.
    pub(crate) fn forget_idle_targets(&self, now: tokio::time::Instant) {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        targets.retain(|_, pool| !pool.is_forgettable(now));
    }
}

impl<C, B> Controlled for Shared<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn snapshot(&self) -> PoolSnapshot {
        let (connections, waiting_targets, reservations) = self.common.budget.snapshot();
        PoolSnapshot {
            targets: self.target_pools().iter().map(|p| p.snapshot()).collect(),
            budget: BudgetSnapshot {
                limit: self.common.config.load().max_connections,
                connections,
                waiting_targets,
                reservations,
            },
            reaper_wakeups: self.common.reaper_wakeups.load(Ordering::Relaxed),
        }
    }

    fn config(&self) -> Arc<PoolConfig> {
        self.common.config.load_full()
    }

    fn is_warm(&self, key: TargetKey<'_>) -> bool {
        self.find(key).is_some_and(|pool| pool.is_warm())
    }

    fn warm_up(self: Arc<Self>, target: &Target) -> crate::WarmUp {
        self.target_pool(target).warm_one()
    }

    fn update_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.common
            .updating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_config(&self, config: PoolConfig) -> Result<(), ConfigError> {
        self.common.budget.check_limit(config.max_connections)?;
        {
            let partitions = self.partitions.read().unwrap_or_else(|e| e.into_inner());
            for settings in partitions.values() {
                settings.resolve(&config)?;
            }
        }
        let mut resolved = Vec::new();
        for pool in self.target_pools() {
            if let Some(config) = pool.resolve(&config, None, None)? {
                resolved.push((pool, config));
            }
        }
        self.common.config.store(Arc::new(config));
        for (pool, config) in resolved {
            pool.set_resolved(config);
        }
        self.settle_budget();
        self.common.reaper_wake.notify_one();
        Ok(())
    }

    fn set_target_config(
        self: Arc<Self>,
        target: &Target,
        own: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let pool = self.target_pool(target);
        let config = self.common.config.load_full();
        let resolved = pool.resolve(&config, Some(own.as_ref()), None)?;
        let reserved = own
            .as_ref()
            .and_then(TargetConfig::get_reserved_connections);
        self.common.budget.reserve(
            config.max_connections,
            Group::Target(target.clone()),
            reserved,
        )?;
        let partition = self.partition_config(target.partition());
        pool.set_settings(own, partition, resolved, false);
        self.settle_budget();
        Ok(())
    }

    fn target_config(&self, target: &Target) -> Option<TargetConfig> {
        self.find(target.key())?.own_config()
    }

    fn set_partition_config(
        &self,
        partition: &Partition,
        settings: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let config = self.common.config.load_full();
        if let Some(settings) = &settings {
            settings.resolve(&config)?;
        }
        let mut resolved = Vec::new();
        for pool in self.target_pools() {
            if pool.target.partition() == Some(partition) {
                let config = pool.resolve(&config, None, Some(settings.as_ref()))?;
                resolved.push((pool, config));
            }
        }
        let reserved = settings
            .as_ref()
            .and_then(TargetConfig::get_reserved_connections);
        self.common.budget.reserve(
            config.max_connections,
            Group::Partition(partition.clone()),
            reserved,
        )?;
        {
            let mut partitions = self.partitions.write().unwrap_or_else(|e| e.into_inner());
            match &settings {
                Some(settings) => partitions.insert(partition.clone(), settings.clone()),
                None => partitions.remove(partition),
            };
        }
        for (pool, config) in resolved {
            pool.set_settings(
                pool.own_config(),
                settings.clone(),
                config,
                pool.is_retired(),
            );
        }
        self.settle_budget();
        Ok(())
    }

    fn partition_settings(&self, partition: &Partition) -> Option<TargetConfig> {
        self.partition_config(Some(partition))
    }

    fn retire(&self, target: &Target) {
        let Some(pool) = self.find(target.key()) else {
            return;
        };
        let own = TargetConfig::default().reuse(false);
        let config = self.common.config.load_full();
        let Ok(resolved) = pool.resolve(&config, Some(Some(&own)), None) else {
            return;
        };
        // Its reservation goes with its own settings.
        let _ =
            self.common
                .budget
                .reserve(config.max_connections, Group::Target(target.clone()), None);
        pool.set_settings(Some(own), pool.partition_config(), resolved, true);
        self.settle_budget();
    }
}

impl<C, B> Evictor for Shared<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn evict_idle(&self) -> Option<Follow> {
        let (_, oldest) = self
            .target_pools()
            .into_iter()
            .filter_map(|pool| Some((pool.oldest_idle()?, pool)))
            .min_by_key(|(last_used, _)| *last_used)?;
        oldest.evict_idle()
    }
}
