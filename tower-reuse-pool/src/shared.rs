//! The pool's shared state: its targets, the settings given to targets
//! and partitions, and the budget's eviction of idle connections.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use http_body::Body;

use crate::config::{ConfigError, PoolConfig, TargetConfig};
use crate::connect::{Connect, Dialer};
use crate::control::{BudgetSnapshot, Controlled, PoolSnapshot, TargetSnapshot};
use crate::error::BoxError;
use crate::events::PoolEvents;
use crate::target::{Keyed, Target, TargetKey};
use crate::target_pool::{Common, Dial, Evictor, Follow, Group, Inherited, TargetPool, layered};

/// What every handle of one pool shares.
pub(crate) struct Shared<C, B> {
    pub(crate) common: Arc<Common>,
    pub(crate) dialer: Arc<Dialer<C>>,
    targets: RwLock<HashMap<Target, Arc<TargetPool<B>>>>,
    /// Settings given to every target of a service or a partition.
    groups: RwLock<HashMap<Group, TargetConfig>>,
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
            groups: RwLock::new(HashMap::new()),
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

    /// After the budget was lowered: close idle connections (the least
    /// recently used first, as for a waiting target) until those open fit
    /// in it, not when they expire; those closing already count as gone.
    fn trim_to_budget(&self) {
        let Some(max) = self.common.config.load().max_connections else {
            return;
        };
        let closing: usize = self.target_pools().iter().map(|p| p.closing()).sum();
        let (used, _, _) = self.common.budget.snapshot();
        let over = used.saturating_sub(closing).saturating_sub(max);
        if over > 0 {
            self.common.follow(Follow {
                grants: Vec::new(),
                evictions: over,
            });
        }
    }

    /// The settings given to a group of targets (a service or a
    /// partition), if any.
    fn group_config(&self, group: &Group) -> Option<TargetConfig> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups.get(group).cloned()
    }

    /// What `target` inherits from its service and its partition, with
    /// `change` (one group's new settings) in place of what is stored.
    fn inherited(
        &self,
        target: &Target,
        change: Option<(&Group, Option<&TargetConfig>)>,
    ) -> Option<Inherited> {
        let get = |group: Group| {
            let settings = match change {
                Some((changed, settings)) if *changed == group => settings.cloned(),
                _ => self.group_config(&group),
            };
            settings.map(|settings| (group, settings))
        };
        let service = get(Group::Service(target.clone().with_endpoint(None)));
        let partition = target
            .partition()
            .and_then(|p| get(Group::Partition(p.clone())));
        let config = layered(
            service.as_ref().map(|(_, s)| s),
            partition.as_ref().map(|(_, s)| s),
        )?;
        let reserves = |(group, settings): (Group, TargetConfig)| {
            settings.get_reserved_connections().map(|_| group)
        };
        let reservation = service
            .and_then(reserves)
            .or_else(|| partition.and_then(reserves));
        Some(Inherited {
            config,
            reservation,
        })
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
                // A new target of a service or a partition with settings
                // gets them.
                if let Some(inherited) = self.inherited(target, None)
                    && let Ok(resolved) = inherited.config.resolve(&self.common.config.load())
                {
                    pool.set_settings(None, Some(inherited), Some(resolved), false);
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

    fn target_snapshot(&self, target: &Target) -> Option<TargetSnapshot> {
        self.find(target.key()).map(|pool| pool.snapshot())
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
            let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
            for settings in groups.values() {
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
        self.trim_to_budget();
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
        pool.set_settings(own, self.inherited(target, None), resolved, false);
        self.settle_budget();
        Ok(())
    }

    fn target_config(&self, target: &Target) -> Option<TargetConfig> {
        self.find(target.key())?.own_config()
    }

    fn set_group_config(
        &self,
        group: Group,
        settings: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let config = self.common.config.load_full();
        if let Some(settings) = &settings {
            settings.resolve(&config)?;
        }
        let mut resolved = Vec::new();
        for pool in self.target_pools() {
            let member = match &group {
                Group::Partition(p) => pool.target.partition() == Some(p),
                Group::Service(service) => pool.target.clone().with_endpoint(None) == *service,
                Group::Target(_) => false,
            };
            if member {
                let inherited = self.inherited(&pool.target, Some((&group, settings.as_ref())));
                let config = pool.resolve(&config, None, Some(inherited.as_ref()))?;
                resolved.push((pool, inherited, config));
            }
        }
        let reserved = settings
            .as_ref()
            .and_then(TargetConfig::get_reserved_connections);
        self.common
            .budget
            .reserve(config.max_connections, group.clone(), reserved)?;
        {
            let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
            match settings {
                Some(settings) => groups.insert(group, settings),
                None => groups.remove(&group),
            };
        }
        for (pool, inherited, config) in resolved {
            pool.set_settings(pool.own_config(), inherited, config, pool.is_retired());
        }
        self.settle_budget();
        Ok(())
    }

    fn group_settings(&self, group: &Group) -> Option<TargetConfig> {
        self.group_config(group)
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
        pool.set_settings(Some(own), self.inherited(target, None), resolved, true);
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
