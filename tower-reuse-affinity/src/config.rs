//! `AffinityConfig`: the key, the load bound, warm-awareness, ejection and
//! retry, validated with errors naming the field.

use std::fmt;
use std::time::Duration;

use crate::key::AffinityKey;
use crate::tiers::TierConfig;

/// How the affinity layer routes. Validated by
/// [`AffinityLayer::new`](crate::AffinityLayer::new).
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_affinity::{AffinityConfig, AffinityKey};
///
/// let config = AffinityConfig::default()
///     .key(AffinityKey::header("x-user-id"))
///     .epsilon(0.25)
///     .eject_after(5)
///     .ejection_time(Duration::from_secs(30), Duration::from_secs(300));
/// assert!(config.validate().is_ok());
/// assert_eq!(
///     AffinityConfig::default().epsilon(0.0).validate().unwrap_err().field(),
///     "epsilon"
/// );
/// ```
///
/// With the `serde` feature it reads from a policy file; durations are a
/// number of seconds or text such as `"30s"`, `"250ms"`, `"5m"`:
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use tower_reuse_affinity::AffinityConfig;
///
/// let config: AffinityConfig = serde_json::from_str(
///     r#"{ "key": { "header": "x-user-id" }, "epsilon": 0.5, "ejection_base": "10s" }"#,
/// ).unwrap();
/// assert!(config.validate().is_ok());
/// # }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AffinityConfig {
    pub(crate) key: AffinityKey,
    pub(crate) epsilon: f64,
    pub(crate) load_floor: usize,
    pub(crate) warm_aware: bool,
    pub(crate) eject_after: u32,
    pub(crate) eject_on_5xx: bool,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::deserialize"))]
    pub(crate) ejection_base: Duration,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::deserialize"))]
    pub(crate) ejection_max: Duration,
    pub(crate) max_ejected_share: f64,
    pub(crate) retry: bool,
    pub(crate) tiers: Option<TierConfig>,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            key: AffinityKey::None,
            epsilon: 0.25,
            load_floor: 2,
            warm_aware: true,
            eject_after: 5,
            eject_on_5xx: false,
            ejection_base: Duration::from_secs(30),
            ejection_max: Duration::from_secs(300),
            max_ejected_share: 0.5,
            retry: true,
            tiers: None,
        }
    }
}

/// The ejection rules, as the state machine reads them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ejection {
    pub(crate) after: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) max_share: f64,
    pub(crate) on_5xx: bool,
}

impl AffinityConfig {
    /// What a request's affinity key is (default: none, every request
    /// goes to the least loaded of two endpoints drawn at random).
    pub fn key(mut self, key: AffinityKey) -> Self {
        self.key = key;
        self
    }

    /// The load bound's headroom: an endpoint takes a key's request only
    /// while its in-flight requests are under `ceil((1 + epsilon) * mean)`
    /// (default 0.25, HAProxy's `hash-balance-factor 125`). Must be above 0
    /// and at most 100; smaller is more even, larger is stickier.
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// The load bound is never below this many in-flight requests
    /// (default 2; at least 1, which is the paper's bound exactly). Under
    /// light load `ceil((1 + epsilon) * mean)` is 1: a key would leave its
    /// endpoint whenever that endpoint is busy with a single request, and
    /// lose its cache there; with 2 it stays unless two are in flight.
    pub fn load_floor(mut self, requests: usize) -> Self {
        self.load_floor = requests;
        self
    }

    /// Prefer a warm endpoint one step down a key's order when its first
    /// choice has no free connection (default on).
    pub fn warm_aware(mut self, on: bool) -> Self {
        self.warm_aware = on;
        self
    }

    /// Eject an endpoint after this many consecutive failures (default 5;
    /// at least 1).
    pub fn eject_after(mut self, failures: u32) -> Self {
        self.eject_after = failures;
        self
    }

    /// Count 5xx responses as failures toward ejection (default off: only
    /// failed connects count).
    pub fn eject_on_5xx(mut self, on: bool) -> Self {
        self.eject_on_5xx = on;
        self
    }

    /// An ejection lasts `base` times the number of ejections in a row, at
    /// most `max` (default 30 s and 300 s), less up to a tenth of jitter.
    pub fn ejection_time(mut self, base: Duration, max: Duration) -> Self {
        self.ejection_base = base;
        self.ejection_max = max;
        self
    }

    /// The largest share of a service's endpoints ejected at once (default
    /// 0.5); the last endpoint is never ejected. In `[0, 1]`.
    pub fn max_ejected_share(mut self, share: f64) -> Self {
        self.max_ejected_share = share;
        self
    }

    /// Retry a request whose endpoint is down on the key's next endpoint,
    /// once (default on): a failed connect, or, for an idempotent request,
    /// a connection closed under it. Only requests with an empty body, or
    /// whose body a `tower_reuse_pool::ReplayBody` extension makes again
    /// (as `BufferBodyLayer` above this layer sets), are kept for it.
    pub fn retry(mut self, on: bool) -> Self {
        self.retry = on;
        self
    }

    /// Hot and cold tiers: keys with a high request rate get dedicated
    /// pools (default `None`: every request shares the pool). In a policy
    /// file, a `[tiers]` table.
    ///
    /// ```
    /// use tower_reuse_affinity::{AffinityConfig, TierConfig};
    ///
    /// let config = AffinityConfig::default().tiers(Some(TierConfig::default().max_dedicated(8)));
    /// assert_eq!(config.get_tiers().map(|t| t.get_max_dedicated()), Some(8));
    /// ```
    pub fn tiers(mut self, tiers: Option<TierConfig>) -> Self {
        self.tiers = tiers;
        self
    }

    /// The value of [`tiers`](Self::tiers), as set or its default.
    pub fn get_tiers(&self) -> Option<&TierConfig> {
        self.tiers.as_ref()
    }

    /// The configuration if every field is valid, or the first error.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if !(self.epsilon > 0.0 && self.epsilon <= 100.0) {
            return Err(ConfigError::new(
                "epsilon",
                "must be above 0 and at most 100",
            ));
        }
        if self.load_floor == 0 {
            return Err(ConfigError::new("load_floor", "must be at least 1"));
        }
        if self.eject_after == 0 {
            return Err(ConfigError::new("eject_after", "must be at least 1"));
        }
        if self.ejection_base.is_zero() {
            return Err(ConfigError::new("ejection_base", "must be above zero"));
        }
        if self.ejection_max < self.ejection_base {
            return Err(ConfigError::new(
                "ejection_max",
                "must be at least ejection_base",
            ));
        }
        if self.ejection_max > MAX_EJECTION {
            return Err(ConfigError::new("ejection_max", "must be at most a day"));
        }
        if !(0.0..=1.0).contains(&self.max_ejected_share) {
            return Err(ConfigError::new(
                "max_ejected_share",
                "must be between 0 and 1",
            ));
        }
        self.key.validate()?;
        self.tiers = self.tiers.map(TierConfig::validate).transpose()?;
        Ok(self)
    }

    pub(crate) fn ejection(&self) -> Ejection {
        Ejection {
            after: self.eject_after,
            base: self.ejection_base,
            max: self.ejection_max,
            max_share: self.max_ejected_share,
            on_5xx: self.eject_on_5xx,
        }
    }
}

/// The longest ejection a configuration may ask for.
const MAX_EJECTION: Duration = Duration::from_secs(24 * 3600);

/// A rejected configuration value, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        ConfigError { field, reason }
    }

    /// The field at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid affinity configuration: {} {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Durations in policy files: the pool's forms (`"250ms"`, `"30s"`, a
/// number of seconds; `"off"` only where the duration is optional).
#[cfg(feature = "serde")]
pub(crate) mod secs {
    pub(crate) use tower_reuse_pool::serde_duration::{optional, required as deserialize};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_named() {
        let d = AffinityConfig::default;
        let cases = [
            (d().epsilon(0.0), "epsilon"),
            (d().epsilon(f64::NAN), "epsilon"),
            (d().epsilon(f64::INFINITY), "epsilon"),
            (d().eject_after(0), "eject_after"),
            (d().load_floor(0), "load_floor"),
            (
                d().ejection_time(Duration::ZERO, Duration::from_secs(1)),
                "ejection_base",
            ),
            (
                d().ejection_time(Duration::from_secs(2), Duration::from_secs(1)),
                "ejection_max",
            ),
            (
                d().ejection_time(Duration::from_secs(2), Duration::MAX),
                "ejection_max",
            ),
            (d().max_ejected_share(1.5), "max_ejected_share"),
            (d().max_ejected_share(f64::NAN), "max_ejected_share"),
            (d().key(AffinityKey::header("bad header")), "key"),
            (
                d().tiers(Some(TierConfig::default().demote_rps(9.0))),
                "demote_rps",
            ),
        ];
        for (config, field) in cases {
            let error = config.validate().unwrap_err();
            assert_eq!(error.field(), field, "{error}");
            assert!(error.to_string().contains(field));
        }
        assert!(d().validate().is_ok());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn policy_files_read_and_unknown_fields_are_refused() {
        let config: AffinityConfig = serde_json::from_str(
            r#"{"key": {"header": "x-user-id"}, "ejection_max": 120, "ejection_base": "250ms"}"#,
        )
        .unwrap();
        let config = config.validate().unwrap();
        assert_eq!(config.ejection_max, Duration::from_secs(120));
        assert_eq!(config.ejection_base, Duration::from_millis(250));
        assert!(serde_json::from_str::<AffinityConfig>(r#"{"epsilon_typo": 1}"#).is_err());
        assert!(serde_json::from_str::<AffinityConfig>(r#"{"ejection_base": -1}"#).is_err());
        assert!(
            serde_json::from_str::<AffinityConfig>(r#"{"ejection_base": "3 parsecs"}"#).is_err()
        );
        let bad: AffinityConfig = serde_json::from_str(r#"{"epsilon": 0}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().field(), "epsilon");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_policy_file_carries_a_tiers_table() {
        let config: AffinityConfig = toml::from_str(
            r#"
            epsilon = 0.5

            [tiers]
            promote_rps = 20
            demote_window = "1m"
            cold_idle_timeout = "off"
            "#,
        )
        .unwrap();
        let config = config.validate().unwrap();
        let expected = TierConfig::default()
            .promote_rps(20.0)
            .demote_window(Duration::from_secs(60))
            .cold_idle_timeout(None);
        assert_eq!(config.get_tiers(), Some(&expected));
        let none: AffinityConfig = toml::from_str("epsilon = 0.5").unwrap();
        assert_eq!(none.get_tiers(), None);
        let bad: AffinityConfig = toml::from_str("[tiers]\ndemote_rps = 9").unwrap();
        assert_eq!(bad.validate().unwrap_err().field(), "demote_rps");
        assert!(toml::from_str::<AffinityConfig>("[tiers]\npromote_rsp = 9").is_err());
        assert!(toml::from_str::<AffinityConfig>("[tiers]\nforget_after = \"off\"").is_err());
    }
}
