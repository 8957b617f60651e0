//! `TierConfig`: when a key is promoted to a dedicated pool and when it goes
//! back, how many keys are tracked, and the pools' lifetimes and shares.

use std::time::Duration;

use tower_reuse_pool::PoolConfig;

use crate::ConfigError;

/// The hot and cold tiers: a key (by default a request's logical authority
/// and partition) whose request rate holds at or above `promote_rps` over
/// `promote_window` gets a dedicated pool; one whose rate falls below
/// `demote_rps` over the longer `demote_window`, or that goes idle, goes back
/// to the shared pool. Set it with
/// [`AffinityConfig::tiers`](crate::AffinityConfig::tiers).
///
/// # Memory
///
/// At most [`max_tracked_keys`](Self::max_tracked_keys) keys are tracked,
/// each in 200 bytes of fixed size (its windows are rings of 10 buckets,
/// whatever the windows' lengths), plus at most 44 bytes of index (a hash
/// table entry at the table's lowest load, and a free-list entry): under
/// 1 MiB for the default 4096 keys. Keys not seen for
/// [`forget_after`](Self::forget_after) are forgotten; a new key beyond the
/// cap replaces the least recently seen cold key.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_affinity::TierConfig;
///
/// let tiers = TierConfig::default()
///     .promote_rps(20.0)
///     .demote_rps(5.0)
///     .max_dedicated(8);
/// assert!(tiers.clone().validate().is_ok());
/// assert_eq!(tiers.get_max_dedicated(), 8);
/// assert_eq!(
///     tiers.demote_rps(25.0).validate().unwrap_err().field(),
///     "demote_rps"
/// );
/// ```
///
/// With the `serde` feature it reads from a policy file; durations are a
/// number of seconds or text such as `"30s"`, `"250ms"`, `"5m"`, and
/// `cold_idle_timeout` may be `"off"`:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use tower_reuse_affinity::TierConfig;
///
/// let tiers: TierConfig = serde_json::from_str(
///     r#"{ "promote_rps": 10, "demote_window": "1m", "cold_idle_timeout": "off" }"#,
/// ).unwrap();
/// let tiers = tiers.validate().unwrap();
/// assert_eq!(tiers.get_demote_window(), Duration::from_secs(60));
/// assert_eq!(tiers.get_cold_idle_timeout(), None);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TierConfig {
    pub(crate) promote_rps: f64,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::deserialize")
    )]
    pub(crate) promote_window: Duration,
    pub(crate) demote_rps: f64,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::deserialize")
    )]
    pub(crate) demote_window: Duration,
    pub(crate) max_dedicated: usize,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::deserialize")
    )]
    pub(crate) idle_retire_after: Duration,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::deserialize")
    )]
    pub(crate) forget_after: Duration,
    pub(crate) max_tracked_keys: usize,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::deserialize")
    )]
    pub(crate) hot_idle_timeout: Duration,
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::config::secs::optional")
    )]
    pub(crate) cold_idle_timeout: Option<Duration>,
    pub(crate) max_reserved_per_pool: usize,
    pub(crate) reserved_share: f64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            promote_rps: 5.0,
            promote_window: Duration::from_secs(5),
            demote_rps: 1.0,
            demote_window: Duration::from_secs(30),
            max_dedicated: 32,
            idle_retire_after: Duration::from_secs(60),
            forget_after: Duration::from_secs(60),
            max_tracked_keys: 4096,
            hot_idle_timeout: Duration::from_secs(30),
            cold_idle_timeout: Some(Duration::from_millis(1500)),
            max_reserved_per_pool: 8,
            reserved_share: 0.5,
        }
    }
}

/// A knob: its by-value setter (documented) and its getter, `get_` and the
/// knob's name.
macro_rules! knob {
    ($(#[$doc:meta])* $name:ident, $get:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }

        #[doc = concat!(
            "The value of [`", stringify!($name), "`](Self::", stringify!($name),
            "), as set or its default."
        )]
        pub fn $get(&self) -> $ty {
            self.$name
        }
    };
}

impl TierConfig {
    /// The most keys [`max_tracked_keys`](Self::max_tracked_keys) accepts:
    /// 2^24 (about 3.5 GiB of state).
    pub const MAX_TRACKED_KEYS: usize = 1 << 24;

    knob! {
        /// A key is promoted when its rate over `promote_window` is at least
        /// this many requests per second, once it has been tracked for that
        /// window. Above 0 and finite. Defaults to 5.0.
        promote_rps, get_promote_rps: f64
    }
    knob! {
        /// The window `promote_rps` is measured over. Also the window of a
        /// key's peak concurrency. Above zero, at most 365 days. Defaults to
        /// 5 seconds.
        promote_window, get_promote_window: Duration
    }
    knob! {
        /// A dedicated key is demoted when its rate over `demote_window` is
        /// below this many requests per second, once it has been dedicated
        /// for that window. At least 0 and below `promote_rps`, so that a
        /// rate between the two never changes a key's tier. Defaults to 1.0.
        demote_rps, get_demote_rps: f64
    }
    knob! {
        /// The window `demote_rps` is measured over. At least
        /// `promote_window`, at most 365 days. Defaults to 30 seconds.
        demote_window, get_demote_window: Duration
    }
    knob! {
        /// Most keys dedicated at once. When they are all taken, a key that
        /// qualifies takes the coldest one's place only if its rate beats
        /// that one's by a quarter. At least 1 and at most
        /// `max_tracked_keys`. Defaults to 32.
        max_dedicated, get_max_dedicated: usize
    }
    knob! {
        /// A dedicated key with no request for this long, and none in flight,
        /// goes back to the shared pool, whatever its rate was. Above zero,
        /// at most 365 days. Defaults to 60 seconds.
        idle_retire_after, get_idle_retire_after: Duration
    }
    knob! {
        /// A cold key not seen for this long is forgotten (a dedicated one
        /// never is). Above zero, at most 365 days. Defaults to 60 seconds.
        forget_after, get_forget_after: Duration
    }
    knob! {
        /// Most keys tracked at once. A new key beyond it replaces the least
        /// recently seen cold key with no request in flight, or is not
        /// tracked (and stays cold) if there is none. From 1 to
        /// [`MAX_TRACKED_KEYS`](Self::MAX_TRACKED_KEYS). Defaults to 4096.
        max_tracked_keys, get_max_tracked_keys: usize
    }
    knob! {
        /// The idle timeout of a dedicated pool's connections. Above zero,
        /// at most 365 days. Defaults to 30 seconds.
        hot_idle_timeout, get_hot_idle_timeout: Duration
    }
    knob! {
        /// The idle timeout of the shared (cold) pool's connections (the
        /// pool-wide `idle_timeout`, set when the layer is stacked); `None`
        /// leaves the pool's own. Above zero, at most 365 days. Defaults to
        /// 1.5 seconds: in reuse-lab's `tiers` (docs/benchmarks.md), 1 s
        /// opened more than half the connections of a client with a 2 s
        /// idle timeout, 2 s kept more than half the idle sockets of one
        /// with 90 s.
        cold_idle_timeout, get_cold_idle_timeout: Option<Duration>
    }
    knob! {
        /// Most connections one dedicated pool reserves out of the pool's
        /// `max_connections` budget (it reserves what its peak concurrency
        /// needs, up to this). Defaults to 8.
        max_reserved_per_pool, get_max_reserved_per_pool: usize
    }
    knob! {
        /// The largest share of the `max_connections` budget all dedicated
        /// pools together may reserve, so the shared pool always keeps the
        /// rest. From 0.0 to 1.0. Defaults to 0.5.
        reserved_share, get_reserved_share: f64
    }

    /// The configuration if every field is valid, or the first error,
    /// naming the field.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if !(self.promote_rps.is_finite() && self.promote_rps > 0.0) {
            return Err(ConfigError::new(
                "promote_rps",
                "must be a finite number above 0",
            ));
        }
        if !(self.demote_rps >= 0.0 && self.demote_rps < self.promote_rps) {
            return Err(ConfigError::new(
                "demote_rps",
                "must be at least 0 and below promote_rps",
            ));
        }
        let durations = [
            ("promote_window", Some(self.promote_window)),
            ("demote_window", Some(self.demote_window)),
            ("idle_retire_after", Some(self.idle_retire_after)),
            ("forget_after", Some(self.forget_after)),
            ("hot_idle_timeout", Some(self.hot_idle_timeout)),
            ("cold_idle_timeout", self.cold_idle_timeout),
        ];
        for (field, value) in durations {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(field, "must be longer than zero"));
            }
            if value.is_some_and(|value| value > PoolConfig::MAX_DURATION) {
                return Err(ConfigError::new(field, "must be at most 365 days"));
            }
        }
        if self.demote_window < self.promote_window {
            return Err(ConfigError::new(
                "demote_window",
                "must be at least promote_window",
            ));
        }
        if !(1..=Self::MAX_TRACKED_KEYS).contains(&self.max_tracked_keys) {
            return Err(ConfigError::new(
                "max_tracked_keys",
                "must be from 1 to TierConfig::MAX_TRACKED_KEYS (2^24)",
            ));
        }
        if !(1..=self.max_tracked_keys).contains(&self.max_dedicated) {
            return Err(ConfigError::new(
                "max_dedicated",
                "must be from 1 to max_tracked_keys",
            ));
        }
        if !(0.0..=1.0).contains(&self.reserved_share) {
            return Err(ConfigError::new(
                "reserved_share",
                "must be between 0 and 1",
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_named() {
        let d = TierConfig::default;
        let secs = Duration::from_secs;
        let cases = [
            (d().promote_rps(f64::NAN), "promote_rps"),
            (d().promote_rps(0.0), "promote_rps"),
            (d().promote_rps(-1.0), "promote_rps"),
            (d().promote_rps(f64::INFINITY), "promote_rps"),
            (d().demote_rps(f64::NAN), "demote_rps"),
            (d().demote_rps(-0.5), "demote_rps"),
            (d().demote_rps(5.0), "demote_rps"),
            (d().demote_rps(6.0), "demote_rps"),
            (d().promote_window(Duration::ZERO), "promote_window"),
            (d().promote_window(Duration::MAX), "promote_window"),
            (d().demote_window(Duration::ZERO), "demote_window"),
            (d().demote_window(secs(4)), "demote_window"),
            (d().idle_retire_after(Duration::ZERO), "idle_retire_after"),
            (d().forget_after(Duration::ZERO), "forget_after"),
            (d().forget_after(Duration::MAX), "forget_after"),
            (d().hot_idle_timeout(Duration::ZERO), "hot_idle_timeout"),
            (
                d().cold_idle_timeout(Some(Duration::ZERO)),
                "cold_idle_timeout",
            ),
            (
                d().cold_idle_timeout(Some(secs(400 * 86_400))),
                "cold_idle_timeout",
            ),
            (d().max_dedicated(0), "max_dedicated"),
            (d().max_tracked_keys(16).max_dedicated(17), "max_dedicated"),
            (d().max_tracked_keys(0), "max_tracked_keys"),
            (d().max_tracked_keys(usize::MAX), "max_tracked_keys"),
            (d().reserved_share(-0.1), "reserved_share"),
            (d().reserved_share(1.01), "reserved_share"),
            (d().reserved_share(f64::NAN), "reserved_share"),
        ];
        for (config, field) in cases {
            let error = config.validate().unwrap_err();
            assert_eq!(error.field(), field, "{error}");
            assert!(error.to_string().contains(field));
        }
        let edges = d()
            .demote_rps(0.0)
            .demote_window(secs(5))
            .max_dedicated(4096)
            .cold_idle_timeout(None)
            .max_reserved_per_pool(0)
            .reserved_share(1.0);
        assert!(edges.validate().is_ok());
        assert!(d().validate().is_ok());
    }

    #[test]
    fn defaults_are_documented_values() {
        let d = TierConfig::default();
        assert_eq!(d.get_promote_rps(), 5.0);
        assert_eq!(d.get_promote_window(), Duration::from_secs(5));
        assert_eq!(d.get_demote_rps(), 1.0);
        assert_eq!(d.get_demote_window(), Duration::from_secs(30));
        assert_eq!(d.get_max_dedicated(), 32);
        assert_eq!(d.get_idle_retire_after(), Duration::from_secs(60));
        assert_eq!(d.get_forget_after(), Duration::from_secs(60));
        assert_eq!(d.get_max_tracked_keys(), 4096);
        assert_eq!(d.get_hot_idle_timeout(), Duration::from_secs(30));
        assert_eq!(d.get_cold_idle_timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(d.get_max_reserved_per_pool(), 8);
        assert_eq!(d.get_reserved_share(), 0.5);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn policy_files_read_and_unknown_fields_are_refused() {
        let config: TierConfig = serde_json::from_str(
            r#"{"promote_rps": 10, "promote_window": "2s", "demote_window": 20.5,
                "cold_idle_timeout": "off", "hot_idle_timeout": "1m", "max_dedicated": 4}"#,
        )
        .unwrap();
        let config = config.validate().unwrap();
        assert_eq!(config.get_promote_rps(), 10.0);
        assert_eq!(config.get_promote_window(), Duration::from_secs(2));
        assert_eq!(config.get_demote_window(), Duration::from_millis(20_500));
        assert_eq!(config.get_cold_idle_timeout(), None);
        assert_eq!(config.get_hot_idle_timeout(), Duration::from_secs(60));
        assert_eq!(config.get_max_dedicated(), 4);
        assert_eq!(config.get_demote_rps(), 1.0, "unset fields keep defaults");
        let refused = [
            r#"{"promote_rsp": 1}"#,
            r#"{"promote_window": -1}"#,
            r#"{"promote_window": "off"}"#,
            r#"{"forget_after": "3 parsecs"}"#,
            r#"{"cold_idle_timeout": "1e400"}"#,
            r#"{"max_dedicated": -1}"#,
        ];
        for text in refused {
            assert!(serde_json::from_str::<TierConfig>(text).is_err(), "{text}");
        }
        let bad: TierConfig = serde_json::from_str(r#"{"demote_rps": 9}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().field(), "demote_rps");
    }
}
