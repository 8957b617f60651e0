//! A target's settings: its own (`PoolControl::set_target_config`) over
//! those it inherits (its service's, `PoolControl::set_service_config`,
//! over its partition's, `PoolControl::set_partition_config`) over the
//! pool-wide configuration, and the budget reservation they name.

use std::sync::Arc;

use super::budget::Group;
use super::{State, TargetPool, first_protocol};
use crate::config::{ConfigError, PoolConfig, TargetConfig};

/// The settings a target has beyond the pool-wide configuration.
pub(crate) struct Settings {
    own: Option<TargetConfig>,
    inherited: Option<Inherited>,
    resolved: Arc<PoolConfig>,
}

/// What a target inherits from the groups it belongs to: their settings,
/// the narrower group's over the wider's, and the group whose reservation
/// its connections count against, if one reserves.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Inherited {
    pub(crate) config: TargetConfig,
    pub(crate) reservation: Option<Group>,
}

/// `upper`'s settings over `lower`'s, if either is set.
pub(crate) fn layered(
    upper: Option<&TargetConfig>,
    lower: Option<&TargetConfig>,
) -> Option<TargetConfig> {
    match (upper, lower) {
        (Some(upper), Some(lower)) => Some(upper.over(lower)),
        (Some(one), None) | (None, Some(one)) => Some(one.clone()),
        (None, None) => None,
    }
}

impl<B> TargetPool<B> {
    /// The configuration in force for this target.
    pub(crate) fn config(&self) -> Arc<PoolConfig> {
        let state = self.lock();
        match &state.settings {
            Some(settings) => settings.resolved.clone(),
            None => self.common.config.load_full(),
        }
    }

    /// Without settings of its own (the common case) this costs no
    /// reference-count traffic: a guard, not an `Arc` clone.
    pub(super) fn config_of(&self, state: &State<B>) -> ConfigRef {
        match &state.settings {
            Some(settings) => ConfigRef::Target(settings.resolved.clone()),
            None => ConfigRef::Pool(self.common.config.load()),
        }
    }

    /// What the target's settings resolve to over `pool`, with `own` or
    /// `inherited` in place of its current ones when given: `None` when it
    /// has neither.
    pub(crate) fn resolve(
        &self,
        pool: &PoolConfig,
        own: Option<Option<&TargetConfig>>,
        inherited: Option<Option<&Inherited>>,
    ) -> Result<Option<PoolConfig>, ConfigError> {
        let state = self.lock();
        let current = state.settings.as_ref();
        let own = own.unwrap_or_else(|| current.and_then(|s| s.own.as_ref()));
        let inherited = inherited.unwrap_or_else(|| current.and_then(|s| s.inherited.as_ref()));
        layered(own, inherited.map(|i| &i.config))
            .map(|config| config.resolve(pool))
            .transpose()
    }

    /// Give the target its settings (`resolved` from [`resolve`](Self::resolve)),
    /// moving the budget slots it holds to the reservation they now count
    /// against.
    pub(crate) fn set_settings(
        &self,
        own: Option<TargetConfig>,
        inherited: Option<Inherited>,
        resolved: Option<PoolConfig>,
        retired: bool,
    ) {
        let mut state = self.lock();
        let group = if own
            .as_ref()
            .is_some_and(|o| o.get_reserved_connections().is_some())
        {
            Some(Group::Target(self.target.clone()))
        } else {
            inherited.as_ref().and_then(|i| i.reservation.clone())
        };
        state.settings = resolved.map(|resolved| Settings {
            own,
            inherited,
            resolved: Arc::new(resolved),
        });
        state.retired = retired;
        if state.slots.group != group {
            self.common.budget.regroup(
                state.slots.group.as_ref(),
                group.as_ref(),
                state.slots.held,
                &self.me,
            );
            state.slots.group = group;
        }
        self.settle_protocol(&mut state);
        drop(state);
        self.common.reaper_wake.notify_one();
    }

    /// Its settings resolved again, over a new pool-wide configuration.
    pub(crate) fn set_resolved(&self, resolved: PoolConfig) {
        let mut state = self.lock();
        if let Some(settings) = &mut state.settings {
            settings.resolved = Arc::new(resolved);
        }
        self.settle_protocol(&mut state);
    }

    /// Whether it was retired (`PoolControl::retire`).
    pub(crate) fn is_retired(&self) -> bool {
        self.lock().retired
    }

    /// Before its first connection, what the target speaks follows its
    /// settings (`http2_prior_knowledge`); after, its connections say.
    pub(super) fn settle_protocol(&self, state: &mut State<B>) {
        if state.open == 0 && state.connecting == 0 {
            state.protocol = first_protocol(&self.config_of(state), &self.target);
        }
    }

    /// The target's own settings, if it has any.
    pub(crate) fn own_config(&self) -> Option<TargetConfig> {
        let state = self.lock();
        state.settings.as_ref().and_then(|s| s.own.clone())
    }

    /// Whether it has settings of its own (not only its partition's).
    pub(super) fn has_own_config(state: &State<B>) -> bool {
        state.settings.as_ref().is_some_and(|s| s.own.is_some())
    }
}

/// The configuration in force for a target.
pub(super) enum ConfigRef {
    Pool(arc_swap::Guard<Arc<PoolConfig>>),
    Target(Arc<PoolConfig>),
}

impl std::ops::Deref for ConfigRef {
    type Target = PoolConfig;

    fn deref(&self) -> &PoolConfig {
        match self {
            ConfigRef::Pool(guard) => guard,
            ConfigRef::Target(config) => config,
        }
    }
}
