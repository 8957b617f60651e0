//! `PoolConfig`: every knob of the pool, with documented defaults.

use std::fmt;
use std::time::Duration;

/// The pool's policy. Build it from [`PoolConfig::default`] with the by-value
/// setters; [`PoolLayer::new`](crate::PoolLayer::new) validates it.
///
/// Limits are `Option`s: `None` disables a limit, and `Some(0)` is rejected
/// (zero is never a sentinel).
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_pool::PoolConfig;
///
/// let config = PoolConfig::default()
///     .max_connections_per_target(Some(64))
///     .idle_timeout(Some(Duration::from_secs(30)))
///     .min_idle_per_target(2);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PoolConfig {
    pub(crate) max_connections_per_target: Option<usize>,
    pub(crate) max_idle_per_target: Option<usize>,
    pub(crate) max_connecting_per_target: Option<usize>,
    pub(crate) max_waiters_per_target: Option<usize>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) checkout_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) connect_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) max_response_header_bytes: Option<usize>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) http2_ping_interval: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) idle_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: f64,
    pub(crate) max_requests_per_connection: Option<u64>,
    pub(crate) min_idle_per_target: usize,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) revalidate_after_idle: Option<Duration>,
    pub(crate) http2_prior_knowledge: bool,
    pub(crate) http2_scale_out: bool,
    pub(crate) retry: bool,
    pub(crate) reuse: bool,
    pub(crate) max_requests_in_flight: Option<usize>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_target: None,
            max_idle_per_target: None,
            max_connecting_per_target: Some(8),
            max_waiters_per_target: Some(4096),
            checkout_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Some(Duration::from_secs(10)),
            response_timeout: None,
            max_response_header_bytes: None,
            http2_ping_interval: None,
            idle_timeout: Some(Duration::from_secs(55)),
            max_lifetime: None,
            lifetime_jitter: 0.1,
            max_requests_per_connection: None,
            min_idle_per_target: 0,
            revalidate_after_idle: Some(Duration::from_secs(2)),
            http2_prior_knowledge: false,
            http2_scale_out: true,
            retry: true,
            reuse: true,
            max_requests_in_flight: None,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        }
    };
}

impl PoolConfig {
    setter! {
        /// Most connections (open or opening) to one target. Requests beyond
        /// it wait for a connection to come back. Defaults to `None` (no cap).
        max_connections_per_target: Option<usize>
    }
    setter! {
        /// Most idle connections kept per target; more are closed at check-in.
        /// Lowered at run time, the idle connections above it close at the
        /// reaper's next turn (oldest first, as
        /// [`CloseReason::OverLimit`](crate::events::CloseReason::OverLimit)).
        /// Defaults to `None` (bounded by `idle_timeout` alone).
        max_idle_per_target: Option<usize>
    }
    setter! {
        /// Most connects in flight per target, so a burst cannot start a
        /// connect storm. Defaults to 8.
        max_connecting_per_target: Option<usize>
    }
    setter! {
        /// Most requests waiting for a connection per target; more fail at
        /// once with [`ErrorKind::TooManyWaiters`](crate::ErrorKind::TooManyWaiters).
        /// Defaults to 4096.
        max_waiters_per_target: Option<usize>
    }
    setter! {
        /// Longest a request waits for a connection. Defaults to 30 seconds.
        checkout_timeout: Option<Duration>
    }
    setter! {
        /// Longest a connect (TCP and TLS, through the connector) may take.
        /// Defaults to 10 seconds.
        connect_timeout: Option<Duration>
    }
    setter! {
        /// Longest wait, once a request is on a connection, for its response
        /// head: a server that stalls or dribbles its headers fails the
        /// request with [`ErrorKind::ResponseTimeout`](crate::ErrorKind::ResponseTimeout)
        /// (which may have been processed) and frees the slot; an HTTP/1.1
        /// connection is closed. Defaults to `None` (long polls are legitimate).
        response_timeout: Option<Duration>
    }
    setter! {
        /// Largest response head accepted, in bytes: over HTTP/1.1 the status
        /// line and headers as sent, over HTTP/2 the header list as
        /// `SETTINGS_MAX_HEADER_LIST_SIZE` counts it (each field's name and
        /// value plus 32), which the server is told. An HTTP/1.1 head over it
        /// (or over hyper's 100 headers) fails the request with
        /// [`ErrorKind::ResponseTooLarge`](crate::ErrorKind::ResponseTooLarge)
        /// and closes the connection; over HTTP/2 the stream is reset
        /// ([`ErrorKind::Send`](crate::ErrorKind::Send)). Applies to
        /// connections opened after it is set. From 1 to 2^32 - 1. Defaults
        /// to `None`: hyper's own bounds (about 400 KiB over HTTP/1.1, 16 KiB
        /// over HTTP/2).
        max_response_header_bytes: Option<usize>
    }
    setter! {
        /// Send an HTTP/2 PING this often, idle or not, and close the
        /// connection if the answer takes longer than the interval: a
        /// black-holed peer is evicted within twice the interval. Defaults
        /// to `None`.
        http2_ping_interval: Option<Duration>
    }
    setter! {
        /// Idle connections are closed after this long unused. Defaults to 55
        /// seconds, below the common 60 s server keep-alive. A server's
        /// `Keep-Alive: timeout=N` shortens it for that connection.
        idle_timeout: Option<Duration>
    }
    setter! {
        /// Connections are replaced after this age (make-before-break: the
        /// replacement connects before the old one retires). Defaults to `None`.
        max_lifetime: Option<Duration>
    }
    setter! {
        /// Fraction of `max_lifetime` taken off at random per connection, so
        /// connections opened together do not retire together. From 0.0 to
        /// 0.5; defaults to 0.1.
        lifetime_jitter: f64
    }
    setter! {
        /// A connection is closed after serving this many requests. Defaults
        /// to `None`.
        max_requests_per_connection: Option<u64>
    }
    setter! {
        /// Warm idle connections kept ready for every target already seen,
        /// refilled in the background. Defaults to 0.
        min_idle_per_target: usize
    }
    setter! {
        /// A connection idle longer than this is revalidated before reuse: the
        /// pool lets its connection task observe a pending close first.
        /// Defaults to 2 seconds.
        revalidate_after_idle: Option<Duration>
    }
    setter! {
        /// Speak HTTP/2 without negotiation (h2c prior knowledge). Defaults to
        /// `false`: HTTP/1.1, or HTTP/2 when the connector negotiates it by ALPN.
        http2_prior_knowledge: bool
    }
    setter! {
        /// Open another HTTP/2 connection when every connection is at the
        /// server's stream limit. Defaults to `true`.
        http2_scale_out: bool
    }
    setter! {
        /// Retry a request once, on another connection, when it is safe and
        /// its connection was reused: it was never written, the server
        /// refused the stream or sent GOAWAY below it, or it is idempotent,
        /// its body is empty or a [`ReplayBody`](crate::ReplayBody) can make
        /// it again, and the connection closed under it. Defaults to `true`.
        retry: bool
    }
    setter! {
        /// The kill switch: `false` gives every request a new connection,
        /// closed after its response. Defaults to `true`.
        reuse: bool
    }
    setter! {
        /// Most requests in flight across the whole pool; `poll_ready` is
        /// pending while it is reached. Defaults to `None`.
        max_requests_in_flight: Option<usize>
    }

    /// Checks every field and every combination, naming the field at fault.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let positive = [
            (
                "max_connections_per_target",
                self.max_connections_per_target,
            ),
            ("max_idle_per_target", self.max_idle_per_target),
            ("max_connecting_per_target", self.max_connecting_per_target),
            ("max_waiters_per_target", self.max_waiters_per_target),
            ("max_requests_in_flight", self.max_requests_in_flight),
            ("max_response_header_bytes", self.max_response_header_bytes),
        ];
        for (field, value) in positive {
            if value == Some(0) {
                return Err(ConfigError::new(
                    field,
                    "must be at least 1 (use None to disable)",
                ));
            }
        }
        if self.max_requests_per_connection == Some(0) {
            return Err(ConfigError::new(
                "max_requests_per_connection",
                "must be at least 1 (use None to disable)",
            ));
        }
        if self
            .max_response_header_bytes
            .is_some_and(|max| u32::try_from(max).is_err())
        {
            return Err(ConfigError::new(
                "max_response_header_bytes",
                "must be below 4 GiB (HTTP/2 carries it in 32 bits)",
            ));
        }
        let durations = [
            ("checkout_timeout", self.checkout_timeout),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("http2_ping_interval", self.http2_ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("revalidate_after_idle", self.revalidate_after_idle),
        ];
        for (field, value) in durations {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    field,
                    "must be longer than zero (use None to disable)",
                ));
            }
        }
        if !(0.0..=0.5).contains(&self.lifetime_jitter) {
            return Err(ConfigError::new(
                "lifetime_jitter",
                "must be between 0.0 and 0.5",
            ));
        }
        if let (Some(idle), Some(max)) = (self.max_idle_per_target, self.max_connections_per_target)
            && idle > max
        {
            return Err(ConfigError::new(
                "max_idle_per_target",
                "must not exceed max_connections_per_target",
            ));
        }
        if let Some(max) = self.max_idle_per_target.or(self.max_connections_per_target)
            && self.min_idle_per_target > max
        {
            return Err(ConfigError::new(
                "min_idle_per_target",
                "must not exceed max_idle_per_target or max_connections_per_target",
            ));
        }
        Ok(self)
    }

    pub(crate) fn max_connecting(&self) -> usize {
        self.max_connecting_per_target.unwrap_or(usize::MAX)
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections_per_target.unwrap_or(usize::MAX)
    }
}

/// A rejected configuration value, naming the configuration and the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    config: &'static str,
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    /// A `PoolConfig` field rejected.
    pub(crate) fn new(field: &'static str, reason: &'static str) -> Self {
        ConfigError::of("pool", field, reason)
    }

    /// A field of the configuration `config` (`"pool"`, `"TLS session
    /// cache"`) rejected.
    pub(crate) fn of(config: &'static str, field: &'static str, reason: &'static str) -> Self {
        ConfigError {
            config,
            field,
            reason,
        }
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
            "invalid {} configuration: {} {}",
            self.config, self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Durations in policy files: `"250ms"`, `"55s"`, `"5m"`, `"1h"`, a number of
/// seconds, or `"off"` for `None`.
#[cfg(feature = "serde")]
pub(crate) mod duration_opt {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"250ms\", \"55s\", \"5m\", or \"off\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| Some(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Duration::try_from_secs_f64(v)
                    .map(Some)
                    .map_err(|_| E::custom("not a valid number of seconds"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                super::parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"250ms"`, `"55s"`, `"5m"`, `"1h"` or `"off"`.
#[cfg_attr(not(any(feature = "serde", test)), allow(dead_code))]
pub(crate) fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"55s\""))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(number * scale)
        .map(Some)
        .map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_limits_naming_the_field() {
        let err = PoolConfig::default()
            .max_connections_per_target(Some(0))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "max_connections_per_target");
        assert!(err.to_string().contains("max_connections_per_target"));
    }

    #[test]
    fn rejects_zero_durations_and_bad_combinations() {
        let err = PoolConfig::default()
            .idle_timeout(Some(Duration::ZERO))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "idle_timeout");
        let err = PoolConfig::default()
            .max_connections_per_target(Some(4))
            .max_idle_per_target(Some(8))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "max_idle_per_target");
        let err = PoolConfig::default()
            .max_idle_per_target(Some(2))
            .min_idle_per_target(3)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "min_idle_per_target");
        let err = PoolConfig::default()
            .lifetime_jitter(f64::NAN)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "lifetime_jitter");
    }

    #[test]
    fn bounds_the_response_head_limit() {
        for (max, valid) in [(0, false), (1, true), (64 * 1024, true)] {
            let checked = PoolConfig::default()
                .max_response_header_bytes(Some(max))
                .validate();
            assert_eq!(checked.is_ok(), valid, "{max}");
            if let Err(err) = checked {
                assert_eq!(err.field(), "max_response_header_bytes");
            }
        }
        if let Ok(max) = usize::try_from(u64::from(u32::MAX) + 1) {
            let err = PoolConfig::default()
                .max_response_header_bytes(Some(max))
                .validate()
                .unwrap_err();
            assert_eq!(err.field(), "max_response_header_bytes");
            assert!(err.to_string().contains("4 GiB"), "{err}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn reads_the_response_head_limit_from_a_policy_file() {
        let config: PoolConfig = toml::from_str("max_response_header_bytes = 16384").unwrap();
        assert_eq!(
            config,
            PoolConfig::default().max_response_header_bytes(Some(16 * 1024))
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_duration("55s"), Ok(Some(Duration::from_secs(55))));
        assert_eq!(parse_duration("2m"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(parse_duration("off"), Ok(None));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400s").is_err());
    }
}
