//! `TargetConfig`: one target's own settings over the pool-wide ones.

use std::time::Duration;

use super::{ConfigError, PoolConfig};

/// One target's own settings, given with
/// [`PoolControl::set_target_config`](crate::PoolControl::set_target_config).
///
/// Each knob set here overrides the pool-wide [`PoolConfig`] for that target
/// alone; every knob left unset follows the pool-wide value, including later
/// changes made with [`PoolControl::update`](crate::PoolControl::update).
/// The precedence, first match wins:
///
/// 1. the pool-wide kill switch: with [`PoolConfig::reuse`] off, no target
///    reuses connections, whatever its own settings (a target's own
///    `reuse(false)` switches reuse off for that target alone; its
///    `reuse(true)` cannot switch it back on against the pool);
/// 2. the knobs set here;
/// 3. the pool-wide configuration.
///
/// `max_requests_in_flight` is pool-wide only. The resulting configuration
/// is validated as a whole: a target's knob that conflicts with a pool-wide
/// one (its `max_idle_per_target` above the pool's
/// `max_connections_per_target`, say) is rejected when it is set, and so is
/// a pool-wide update that would make a target's configuration invalid.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_pool::{PoolConfig, TargetConfig};
///
/// let own = TargetConfig::default()
///     .min_idle_per_target(4)
///     .idle_timeout(Some(Duration::from_secs(5)));
/// let pool = PoolConfig::default().max_lifetime(Some(Duration::from_secs(600)));
/// let resolved = own.resolve(&pool).unwrap();
/// assert_eq!(resolved.get_min_idle_per_target(), 4);
/// assert_eq!(resolved.get_idle_timeout(), Some(Duration::from_secs(5)));
/// // Unset here: the pool's.
/// assert_eq!(resolved.get_max_lifetime(), Some(Duration::from_secs(600)));
/// ```
///
/// With the `serde` feature it deserializes from a policy file as
/// [`PoolConfig`] does, every knob optional (`"off"` switches a duration
/// off for the target):
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use tower_reuse_pool::TargetConfig;
///
/// let own: TargetConfig = toml::from_str("min_idle_per_target = 4\nmax_lifetime = \"off\"").unwrap();
/// assert_eq!(own, TargetConfig::default().min_idle_per_target(4).max_lifetime(None));
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TargetConfig {
    max_connections_per_target: Option<Option<usize>>,
    max_idle_per_target: Option<Option<usize>>,
    max_connecting_per_target: Option<Option<usize>>,
    max_waiters_per_target: Option<Option<usize>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    checkout_timeout: Option<Option<Duration>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    connect_timeout: Option<Option<Duration>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    response_timeout: Option<Option<Duration>>,
    max_response_header_bytes: Option<Option<usize>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    http2_ping_interval: Option<Option<Duration>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    idle_timeout: Option<Option<Duration>>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    max_lifetime: Option<Option<Duration>>,
    lifetime_jitter: Option<f64>,
    max_requests_per_connection: Option<Option<u64>>,
    min_idle_per_target: Option<usize>,
    min_connections_per_target: Option<usize>,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "super::duration::duration_override")
    )]
    revalidate_after_idle: Option<Option<Duration>>,
    http2_prior_knowledge: Option<bool>,
    http2_scale_out: Option<bool>,
    retry: Option<bool>,
    reuse: Option<bool>,
    reserved_connections: Option<usize>,
}

/// The target's knobs, each with a setter named as in [`PoolConfig`] and a
/// getter that says whether the target sets it.
macro_rules! overrides {
    ($($name:ident, $get:ident: $ty:ty;)*) => {
        impl TargetConfig {
            $(
                #[doc = concat!(
                    "Override [`PoolConfig::", stringify!($name), "`] for this target."
                )]
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = Some(value);
                    self
                }

                #[doc = concat!(
                    "This target's own `", stringify!($name),
                    "`, or `None` if it follows the pool-wide one."
                )]
                pub fn $get(&self) -> Option<$ty> {
                    self.$name
                }
            )*

            /// These settings over `base`: each knob set here wins, each
            /// knob left unset takes `base`'s. The reservation is not
            /// inherited: it belongs to the level that sets it.
            pub(crate) fn over(&self, base: &TargetConfig) -> TargetConfig {
                TargetConfig {
                    $($name: self.$name.or(base.$name),)*
                    reserved_connections: self.reserved_connections,
                }
            }

            /// The configuration in force for the target: `pool` with this
            /// target's knobs over it, validated as a whole.
            pub fn resolve(&self, pool: &PoolConfig) -> Result<PoolConfig, ConfigError> {
                if let Some(reserved) = self.reserved_connections {
                    if reserved == 0 {
                        return Err(ConfigError::new(
                            "reserved_connections",
                            "must be at least 1 (use None for no reservation)",
                        ));
                    }
                    if pool.max_connections.is_none_or(|max| reserved > max) {
                        return Err(ConfigError::new(
                            "reserved_connections",
                            "must be within the pool's max_connections (set one first)",
                        ));
                    }
                }
                let mut config = pool.clone();
                $(
                    if let Some(value) = self.$name {
                        config.$name = value;
                    }
                )*
                // The kill switch governs every target.
                config.reuse = pool.reuse && self.reuse.unwrap_or(true);
                config.validate()
            }
        }
    };
}

overrides! {
    max_connections_per_target, get_max_connections_per_target: Option<usize>;
    max_idle_per_target, get_max_idle_per_target: Option<usize>;
    max_connecting_per_target, get_max_connecting_per_target: Option<usize>;
    max_waiters_per_target, get_max_waiters_per_target: Option<usize>;
    checkout_timeout, get_checkout_timeout: Option<Duration>;
    connect_timeout, get_connect_timeout: Option<Duration>;
    response_timeout, get_response_timeout: Option<Duration>;
    max_response_header_bytes, get_max_response_header_bytes: Option<usize>;
    http2_ping_interval, get_http2_ping_interval: Option<Duration>;
    idle_timeout, get_idle_timeout: Option<Duration>;
    max_lifetime, get_max_lifetime: Option<Duration>;
    lifetime_jitter, get_lifetime_jitter: f64;
    max_requests_per_connection, get_max_requests_per_connection: Option<u64>;
    min_idle_per_target, get_min_idle_per_target: usize;
    min_connections_per_target, get_min_connections_per_target: usize;
    revalidate_after_idle, get_revalidate_after_idle: Option<Duration>;
    http2_prior_knowledge, get_http2_prior_knowledge: bool;
    http2_scale_out, get_http2_scale_out: bool;
    retry, get_retry: bool;
    reuse, get_reuse: bool;
}

impl TargetConfig {
    /// Set aside this many slots of the pool-wide budget
    /// ([`PoolConfig::max_connections`]): connections no other target may
    /// take, so that this target (or, given to a partition with
    /// [`PoolControl::set_partition_config`](crate::PoolControl::set_partition_config),
    /// every target of the partition together) is served while others
    /// saturate the budget. Beyond its reservation it competes for the
    /// shared slots like any target, and a connection within it is never
    /// evicted for another target. Every reservation together must fit in
    /// `max_connections`: a reservation that does not is rejected when it is
    /// set. `None` (the default) reserves nothing.
    #[must_use]
    pub fn reserved_connections(mut self, value: Option<usize>) -> Self {
        self.reserved_connections = value;
        self
    }

    /// The reservation set here, if any.
    pub fn get_reserved_connections(&self) -> Option<usize> {
        self.reserved_connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_knobs_follow_the_pool_and_set_ones_override_it() {
        let own = TargetConfig::default().max_idle_per_target(Some(2));
        let pool = PoolConfig::default().idle_timeout(Some(Duration::from_secs(7)));
        let resolved = own.resolve(&pool).unwrap();
        assert_eq!(resolved.get_max_idle_per_target(), Some(2));
        assert_eq!(resolved.get_idle_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(own.get_idle_timeout(), None);
        assert_eq!(own.get_max_idle_per_target(), Some(Some(2)));
    }

    #[test]
    fn the_pool_wide_kill_switch_wins() {
        let pool_off = PoolConfig::default().reuse(false);
        let own_on = TargetConfig::default().reuse(true);
        assert!(!own_on.resolve(&pool_off).unwrap().get_reuse());
        assert!(
            !TargetConfig::default()
                .resolve(&pool_off)
                .unwrap()
                .get_reuse()
        );
        let own_off = TargetConfig::default().reuse(false);
        assert!(!own_off.resolve(&PoolConfig::default()).unwrap().get_reuse());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn reads_a_targets_own_settings_from_a_policy_file() {
        let own: TargetConfig =
            toml::from_str("idle_timeout = \"5s\"\nreuse = false\nmax_idle_per_target = 3")
                .unwrap();
        assert_eq!(
            own,
            TargetConfig::default()
                .idle_timeout(Some(Duration::from_secs(5)))
                .reuse(false)
                .max_idle_per_target(Some(3))
        );
        assert_eq!(
            toml::from_str::<TargetConfig>("").unwrap(),
            TargetConfig::default()
        );
        assert!(toml::from_str::<TargetConfig>("idle_timeout = \"5 parsecs\"").is_err());
        let reserved: TargetConfig = toml::from_str("reserved_connections = 4").unwrap();
        assert_eq!(reserved.get_reserved_connections(), Some(4));
        let pool: PoolConfig = toml::from_str("max_connections = 64").unwrap();
        assert_eq!(pool.get_max_connections(), Some(64));
        assert!(reserved.resolve(&pool).is_ok());
        assert_eq!(
            reserved
                .resolve(&PoolConfig::default())
                .unwrap_err()
                .field(),
            "reserved_connections"
        );
        assert!(toml::from_str::<TargetConfig>("max_requests_in_flight = 4").is_err());
    }

    #[test]
    fn a_conflict_with_the_pool_names_the_field() {
        let pool = PoolConfig::default().max_connections_per_target(Some(4));
        let err = TargetConfig::default()
            .max_idle_per_target(Some(8))
            .resolve(&pool)
            .unwrap_err();
        assert_eq!(err.field(), "max_idle_per_target");
        let err = TargetConfig::default()
            .idle_timeout(Some(Duration::MAX))
            .resolve(&pool)
            .unwrap_err();
        assert_eq!(err.field(), "idle_timeout");
    }
}
