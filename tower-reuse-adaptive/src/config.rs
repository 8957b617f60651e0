//! `AdaptiveConfig`: the controller's tick, windows, anti-oscillation rules
//! and the operator's bounds.

use std::time::Duration;

/// What the controller does, switched at run time with
/// [`AdaptiveHandle::set_mode`](crate::AdaptiveHandle::set_mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Mode {
    /// Observe and tune the pool (the default).
    #[default]
    On,
    /// Observe only (the freeze switch): estimates and decisions go on,
    /// each decision reported with `applied == false`; the settings the
    /// controller gave stay as they are.
    Observe,
    /// Off: every setting the controller gave is taken back, and the pool
    /// runs on its own configuration exactly as without the layer.
    Off,
}

/// The adaptive controller's configuration.
///
/// Every tick the controller reads each target's signals over its sliding
/// `window` and may change four of the target's settings through
/// `PoolControl::set_target_config`: `idle_timeout`,
/// `max_requests_per_connection`, `min_idle_per_target` and
/// `max_idle_per_target`. A change
/// happens only when the wanted value is outside `dead_band` of the
/// current one, no sooner than `cool_down` after the knob's last change,
/// and by at most `max_step` connections or `max_factor` times a duration;
/// the exceptions lower the idle timeout at once: a server seen closing
/// connections earlier than the current one allows, and an idle timeout
/// the target inherits (its tier's, say) falling below the controller's.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_adaptive::AdaptiveConfig;
///
/// let config = AdaptiveConfig::default()
///     .tick(Duration::from_millis(500))
///     .idle_timeout_bounds(Duration::from_millis(200), Some(Duration::from_secs(30)));
/// assert!(config.clone().validate().is_ok());
/// assert_eq!(
///     config.window(Duration::from_millis(100)).validate().unwrap_err().field(),
///     "window"
/// );
/// ```
///
/// With the `serde` feature it reads from a policy file; durations are a
/// number of seconds or text such as `"30s"`, `"250ms"`, and the idle
/// timeout's upper bound may be `"off"` (none of the controller's own):
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use std::time::Duration;
/// use tower_reuse_adaptive::{AdaptiveConfig, Mode};
///
/// let config: AdaptiveConfig = serde_json::from_str(
///     r#"{ "tick": "500ms", "cool_down": 10, "mode": "observe" }"#,
/// ).unwrap();
/// let config = config.validate().unwrap();
/// assert_eq!(config.get_cool_down(), Duration::from_secs(10));
/// assert_eq!(config.get_mode(), Mode::Observe);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct AdaptiveConfig {
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::required"))]
    pub(crate) tick: Duration,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::required"))]
    pub(crate) window: Duration,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::required"))]
    pub(crate) cool_down: Duration,
    pub(crate) dead_band: f64,
    pub(crate) max_step: usize,
    pub(crate) max_factor: f64,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::required"))]
    pub(crate) idle_timeout_min: Duration,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::optional"))]
    pub(crate) idle_timeout_max: Option<Duration>,
    pub(crate) max_prewarm: usize,
    pub(crate) max_tickets_per_server: usize,
    pub(crate) learn_idle_timeout: bool,
    pub(crate) learn_request_limit: bool,
    pub(crate) prewarm: bool,
    pub(crate) mode: Mode,
    pub(crate) max_targets: usize,
    #[cfg_attr(feature = "serde", serde(deserialize_with = "secs::required"))]
    pub(crate) forget_after: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(5),
            dead_band: 0.25,
            max_step: 64,
            max_factor: 8.0,
            idle_timeout_min: Duration::from_millis(100),
            idle_timeout_max: None,
            max_prewarm: 256,
            max_tickets_per_server: 1024,
            learn_idle_timeout: true,
            learn_request_limit: true,
            prewarm: true,
            mode: Mode::On,
            max_targets: 1024,
            forget_after: Duration::from_secs(300),
        }
    }
}

macro_rules! knobs {
    ($($(#[$doc:meta])* $name:ident, $get:ident: $ty:ty;)*) => {
        impl AdaptiveConfig {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }

                #[doc = concat!("The configured `", stringify!($name), "`.")]
                pub fn $get(&self) -> $ty {
                    self.$name
                }
            )*
        }
    };
}

knobs! {
    /// How often the controller looks at the signals and decides. Defaults
    /// to 1 second; at most a minute.
    tick, get_tick: Duration;
    /// The sliding window the signals are read over (rates, peaks, idle
    /// gaps), in 10 buckets. Defaults to 30 seconds; at least two ticks.
    window, get_window: Duration;
    /// No knob changes again sooner than this after its last change.
    /// Defaults to 5 seconds; at least one tick.
    cool_down, get_cool_down: Duration;
    /// A knob changes only when the wanted value differs from the current
    /// one by more than this share of it. Defaults to 0.25; from 0 to
    /// below 1.
    dead_band, get_dead_band: f64;
    /// The most connections one decision adds to or takes from
    /// `min_idle_per_target`. Defaults to 64; at least 1.
    max_step, get_max_step: usize;
    /// The most one decision multiplies or divides the idle timeout by
    /// (a lowering for a server's observed closes excepted). Defaults to 8;
    /// above 1, at most 1 000.
    max_factor, get_max_factor: f64;
    /// The most connections the controller keeps warm ahead of a periodic
    /// burst, per target. Defaults to 256.
    max_prewarm, get_max_prewarm: usize;
    /// The most tickets per server the controller gives the TLS session
    /// cache (feature `tls`); it never sets fewer than the cache had when
    /// it first saw it. Defaults to 1 024.
    max_tickets_per_server, get_max_tickets_per_server: usize;
    /// Learn each server's idle timeout from the idle ages at which it
    /// closes connections, and close before it. Defaults to on.
    learn_idle_timeout, get_learn_idle_timeout: bool;
    /// Learn each server's request limit per connection from the requests
    /// its connections had served when it closed them, and open the
    /// replacement before a connection's last request. Defaults to on.
    learn_request_limit, get_learn_request_limit: bool;
    /// Keep connections warm ahead of bursts that come at a steady period
    /// and would find none otherwise. Defaults to on.
    prewarm, get_prewarm: bool;
    /// On, observe only, or off. Defaults to on.
    mode, get_mode: Mode;
    /// The most targets tracked at once; a new target beyond it replaces
    /// the one quiet the longest. Defaults to 1 024.
    max_targets, get_max_targets: usize;
    /// A target with no event for this long is forgotten, with what was
    /// learned of it. Defaults to 5 minutes.
    forget_after, get_forget_after: Duration;
}

impl AdaptiveConfig {
    /// The idle timeouts the controller may set: never below `min`
    /// (defaults to 100 ms), never above `max` (defaults to none of the
    /// controller's own). Whatever the bounds, the controller never sets an
    /// idle timeout longer than the one the target has without it (its
    /// own, its service's or partition's, or the pool's): it shortens a
    /// timeout, it never lengthens one, and when that one falls below the
    /// controller's (a tier's demotion), the controller's follows at its
    /// next tick.
    #[must_use]
    pub fn idle_timeout_bounds(mut self, min: Duration, max: Option<Duration>) -> Self {
        self.idle_timeout_min = min;
        self.idle_timeout_max = max;
        self
    }

    /// The bounds set with [`idle_timeout_bounds`](Self::idle_timeout_bounds).
    pub fn get_idle_timeout_bounds(&self) -> (Duration, Option<Duration>) {
        (self.idle_timeout_min, self.idle_timeout_max)
    }

    /// The configuration if every field is valid, or the first error.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.tick.is_zero() || self.tick > Duration::from_secs(60) {
            return Err(invalid("tick", "must be above zero and at most a minute"));
        }
        if self.window < self.tick * 2 {
            return Err(invalid("window", "must be at least two ticks"));
        }
        if self.window > Duration::from_secs(3600) {
            return Err(invalid("window", "must be at most an hour"));
        }
        if self.cool_down < self.tick {
            return Err(invalid("cool_down", "must be at least one tick"));
        }
        if !(0.0..1.0).contains(&self.dead_band) {
            return Err(invalid("dead_band", "must be from 0 to below 1"));
        }
        if self.max_step == 0 {
            return Err(invalid("max_step", "must be at least 1"));
        }
        if !(self.max_factor > 1.0 && self.max_factor <= 1000.0) {
            return Err(invalid("max_factor", "must be above 1 and at most 1000"));
        }
        if self.idle_timeout_min.is_zero() {
            return Err(invalid("idle_timeout_min", "must be above zero"));
        }
        if self
            .idle_timeout_max
            .is_some_and(|max| max < self.idle_timeout_min)
        {
            return Err(invalid(
                "idle_timeout_max",
                "must be at least idle_timeout_min",
            ));
        }
        if self.max_prewarm > MAX_PREWARM {
            return Err(invalid("max_prewarm", "must be at most 1024"));
        }
        if self.max_tickets_per_server == 0 {
            return Err(invalid("max_tickets_per_server", "must be at least 1"));
        }
        if self.max_targets == 0 {
            return Err(invalid("max_targets", "must be at least 1"));
        }
        if self.forget_after < self.window {
            return Err(invalid("forget_after", "must be at least the window"));
        }
        Ok(self)
    }
}

/// The pool's own cap on `min_idle_per_target`.
const MAX_PREWARM: usize = 1024;

/// A rejected configuration value, naming the field: the pool's error type,
/// for the `adaptive` configuration.
pub use tower_reuse_pool::ConfigError;

/// `field` of the adaptive configuration rejected, for `reason`.
fn invalid(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::of("adaptive", field, reason)
}

/// Durations in policy files: the pool's forms (`"250ms"`, `"30s"`, a
/// number of seconds; `"off"` only where the duration is optional).
#[cfg(feature = "serde")]
use tower_reuse_pool::serde_duration as secs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_named() {
        let d = AdaptiveConfig::default;
        let s = Duration::from_secs;
        let cases = [
            (d().tick(Duration::ZERO), "tick"),
            (d().tick(s(61)), "tick"),
            (d().window(Duration::from_millis(1500)), "window"),
            (d().window(s(3601)).forget_after(s(4000)), "window"),
            (d().cool_down(Duration::from_millis(10)), "cool_down"),
            (d().dead_band(1.0), "dead_band"),
            (d().dead_band(-0.1), "dead_band"),
            (d().dead_band(f64::NAN), "dead_band"),
            (d().max_step(0), "max_step"),
            (d().max_factor(1.0), "max_factor"),
            (d().max_factor(f64::INFINITY), "max_factor"),
            (d().max_factor(f64::NAN), "max_factor"),
            (d().max_factor(1e20), "max_factor"),
            (
                d().idle_timeout_bounds(Duration::ZERO, None),
                "idle_timeout_min",
            ),
            (
                d().idle_timeout_bounds(s(2), Some(s(1))),
                "idle_timeout_max",
            ),
            (d().max_prewarm(5000), "max_prewarm"),
            (d().max_targets(0), "max_targets"),
            (d().max_tickets_per_server(0), "max_tickets_per_server"),
            (d().forget_after(s(1)), "forget_after"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            let message = err.to_string();
            assert!(message.starts_with("invalid adaptive configuration: "));
            assert!(message.contains(field));
        }
        assert!(d().validate().is_ok());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn reads_a_policy_file_and_rejects_unknown_or_bad_fields() {
        let config: AdaptiveConfig = toml::from_str(
            "tick = \"250ms\"\nwindow = 10\nidle_timeout_max = \"off\"\nmax_step = 8",
        )
        .unwrap();
        assert_eq!(config.get_tick(), Duration::from_millis(250));
        assert_eq!(config.get_window(), Duration::from_secs(10));
        assert_eq!(config.get_idle_timeout_bounds().1, None);
        assert_eq!(config.get_max_step(), 8);
        assert!(toml::from_str::<AdaptiveConfig>("tick = \"soon\"").is_err());
        assert!(toml::from_str::<AdaptiveConfig>("tick = \"off\"").is_err());
        assert!(toml::from_str::<AdaptiveConfig>("tick = -1").is_err());
        assert!(toml::from_str::<AdaptiveConfig>("ticks = 1").is_err());
        assert!(toml::from_str::<AdaptiveConfig>("mode = \"sideways\"").is_err());
        let zero: AdaptiveConfig = toml::from_str("max_step = 0").unwrap();
        assert_eq!(zero.validate().unwrap_err().field(), "max_step");
    }
}
