//! `PoolConfig`: every knob of the pool, with documented defaults.

use std::fmt;
use std::time::Duration;

mod duration;
mod target;

#[cfg(feature = "serde")]
pub(crate) use duration::duration_opt;
pub use duration::parse_duration;
#[cfg(feature = "serde")]
pub use duration::serde_duration;
pub use target::TargetConfig;

/// The pool's policy. Build it from [`PoolConfig::default`] with the by-value
/// setters; [`PoolLayer::new`](crate::PoolLayer::new) validates it.
///
/// Limits are `Option`s: `None` disables a limit, and `Some(0)` is rejected
/// (zero is never a sentinel). Durations are `Option`s too, and at most
/// [`PoolConfig::MAX_DURATION`] (a year): for longer, use `None`.
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
    pub(crate) min_connections_per_target: usize,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(crate) revalidate_after_idle: Option<Duration>,
    pub(crate) http2_prior_knowledge: bool,
    pub(crate) http2_scale_out: bool,
    pub(crate) retry: bool,
    pub(crate) reuse: bool,
    pub(crate) max_requests_in_flight: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) connection_info_extension: bool,
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
            min_connections_per_target: 0,
            revalidate_after_idle: Some(Duration::from_secs(2)),
            http2_prior_knowledge: false,
            http2_scale_out: true,
            retry: true,
            reuse: true,
            max_requests_in_flight: None,
            max_connections: None,
            connection_info_extension: false,
        }
    }
}

/// A knob: its by-value setter (documented) and its getter, `get_` and
/// the knob's name (the plain name is the setter's).
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

impl PoolConfig {
    /// The longest duration any knob accepts: 365 days. A longer one is
    /// rejected by [`validate`](Self::validate), naming the field; `None`
    /// switches a duration off.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    knob! {
        /// Most connections (open or opening) to one target. Requests beyond
        /// it wait for a connection to come back. Defaults to `None` (no cap).
        max_connections_per_target, get_max_connections_per_target: Option<usize>
    }
    knob! {
        /// Most idle connections kept per target; more are closed at check-in.
        /// Lowered at run time, the idle connections above it close at the
        /// reaper's next turn (oldest first, as
        /// [`CloseReason::OverLimit`](crate::events::CloseReason::OverLimit)).
        /// Defaults to `None` (bounded by `idle_timeout` alone).
        max_idle_per_target, get_max_idle_per_target: Option<usize>
    }
    knob! {
        /// Most connects in flight per target, so a burst cannot start a
        /// connect storm. Defaults to 8.
        max_connecting_per_target, get_max_connecting_per_target: Option<usize>
    }
    knob! {
        /// Most requests waiting for a connection per target; more fail at
        /// once with [`ErrorKind::TooManyWaiters`](crate::ErrorKind::TooManyWaiters).
        /// Defaults to 4096.
        max_waiters_per_target, get_max_waiters_per_target: Option<usize>
    }
    knob! {
        /// Longest a request waits for a connection. Defaults to 30 seconds.
        checkout_timeout, get_checkout_timeout: Option<Duration>
    }
    knob! {
        /// Longest a connect (TCP and TLS, through the connector) may take.
        /// Defaults to 10 seconds.
        connect_timeout, get_connect_timeout: Option<Duration>
    }
    knob! {
        /// Longest wait, once a request is on a connection, for its response
        /// head: a server that stalls or dribbles its headers fails the
        /// request with [`ErrorKind::ResponseTimeout`](crate::ErrorKind::ResponseTimeout)
        /// (which may have been processed) and frees the slot; an HTTP/1.1
        /// connection is closed. Defaults to `None` (long polls are legitimate).
        response_timeout, get_response_timeout: Option<Duration>
    }
    knob! {
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
        max_response_header_bytes, get_max_response_header_bytes: Option<usize>
    }
    knob! {
        /// Send an HTTP/2 PING this often, idle or not, and close the
        /// connection if the answer takes longer than the interval: a
        /// black-holed peer is evicted within twice the interval. Defaults
        /// to `None`.
        http2_ping_interval, get_http2_ping_interval: Option<Duration>
    }
    knob! {
        /// Idle connections are closed after this long unused. Defaults to 55
        /// seconds, below the common 60 s server keep-alive. A server's
        /// `Keep-Alive: timeout=N` shortens it for that connection.
        idle_timeout, get_idle_timeout: Option<Duration>
    }
    knob! {
        /// Connections are replaced after this age (make-before-break: the
        /// replacement connects before the old one retires). Defaults to `None`.
        max_lifetime, get_max_lifetime: Option<Duration>
    }
    knob! {
        /// Fraction of `max_lifetime` taken off at random per connection, so
        /// connections opened together do not retire together. From 0.0 to
        /// 0.5; defaults to 0.1.
        lifetime_jitter, get_lifetime_jitter: f64
    }
    knob! {
        /// A connection is closed after serving this many requests. Defaults
        /// to `None`.
        ///
        /// When a request takes a connection for its last request and the
        /// target has no spare connection (fewer idle than busy, and no
        /// HTTP/2 one with room), the pool opens its
        /// replacement at once ([`ConnectReason::Replacement`](crate::events::ConnectReason::Replacement),
        /// make-before-break), so the next request finds a connection
        /// ready instead of waiting for a handshake. One replacement per
        /// connection, only with a connect slot (`max_connecting_per_target`)
        /// and a slot of the budget (`max_connections`) free; it may exceed
        /// `max_connections_per_target` by the connects in flight, as a
        /// rotation does. Without a free slot, or when its connect fails,
        /// the connection simply retires after its last request.
        max_requests_per_connection, get_max_requests_per_connection: Option<u64>
    }
    knob! {
        /// Warm idle connections kept ready for every target already seen,
        /// refilled in the background. Suspended while reuse is off (the
        /// kill switch): then no connection opens but for a request. At
        /// most [`MAX_MIN_IDLE`](Self::MAX_MIN_IDLE). Defaults to 0.
        min_idle_per_target, get_min_idle_per_target: usize
    }
    knob! {
        /// Connections, busy or idle, kept open for every target already
        /// seen, refilled in the background (pre-warming, suspended with
        /// the kill switch as `min_idle_per_target` is): a floor covering a
        /// known concurrency. Unlike `min_idle_per_target`, a burst that
        /// makes them all busy opens no more. Idle ones within it do not
        /// expire. At most [`MAX_MIN_IDLE`](Self::MAX_MIN_IDLE). Defaults
        /// to 0.
        min_connections_per_target, get_min_connections_per_target: usize
    }
    knob! {
        /// A connection idle longer than this is revalidated before reuse: the
        /// pool lets its connection task observe a pending close first.
        /// Defaults to 2 seconds.
        revalidate_after_idle, get_revalidate_after_idle: Option<Duration>
    }
    knob! {
        /// Speak HTTP/2 without negotiation (h2c prior knowledge). Defaults to
        /// `false`: HTTP/1.1, or HTTP/2 when the connector negotiates it by ALPN.
        http2_prior_knowledge, get_http2_prior_knowledge: bool
    }
    knob! {
        /// Open another HTTP/2 connection when every connection is at the
        /// server's stream limit. Defaults to `true`.
        http2_scale_out, get_http2_scale_out: bool
    }
    knob! {
        /// Retry a request once, on another connection, when it is safe and
        /// its connection was reused: it was never written, or it is
        /// idempotent, its body is empty or a [`ReplayBody`](crate::ReplayBody)
        /// can make it again, and the connection closed under it. Apart from
        /// that one retry, a stream an HTTP/2 server refused
        /// (`REFUSED_STREAM`, or above a GOAWAY's last stream id: never
        /// processed) waits for a free stream and is sent again, new
        /// connection or not, up to 10 times within `checkout_timeout`, if
        /// its body can be made again. `false` turns both off. Defaults to
        /// `true`.
        retry, get_retry: bool
    }
    knob! {
        /// The kill switch: `false` gives every request a new connection,
        /// closed after its response, closes idle connections, and opens
        /// none but for a request (no pre-warming, no rotation). It governs
        /// every target, whatever a target's own [`TargetConfig`]. Defaults
        /// to `true`.
        reuse, get_reuse: bool
    }
    knob! {
        /// Most requests in flight across the whole pool; `poll_ready` is
        /// pending while it is reached. At most
        /// [`MAX_REQUESTS_IN_FLIGHT`](Self::MAX_REQUESTS_IN_FLIGHT); fixed
        /// when the pool is built. Defaults to `None`.
        max_requests_in_flight, get_max_requests_in_flight: Option<usize>
    }

    knob! {
        /// Most connections (open or opening) across every target of the
        /// pool: the process-wide budget. When it is spent, a connect first
        /// takes the slot of the least recently used idle connection of
        /// another target (closed as
        /// [`CloseReason::Evicted`](crate::events::CloseReason::Evicted));
        /// otherwise the request waits in its target's queue, as under
        /// `max_connections_per_target` (`checkout_timeout` and
        /// `max_waiters_per_target` apply), and targets waiting for a slot
        /// get freed ones first come, first served. Slots reserved with
        /// [`TargetConfig::reserved_connections`](crate::TargetConfig::reserved_connections)
        /// are taken out of it. Pre-warming and rotation only use free
        /// slots. Lowered at run time, it closes idle connections beyond
        /// it at once (as `Evicted`); those in use count until they go.
        /// Defaults to `None` (no budget).
        max_connections, get_max_connections: Option<usize>
    }
    knob! {
        /// Put each response's [`ConnectionInfo`](crate::ConnectionInfo) in
        /// its `http::Extensions` too, for a caller that reads it after a
        /// layer replaced the [`PoolBody`](crate::PoolBody) (a decompression
        /// or body-mapping layer between the pool and the reader). Without
        /// it, [`ConnectionInfo::of`](crate::ConnectionInfo::of) and
        /// [`PoolBody::connection_info`](crate::PoolBody::connection_info)
        /// read it from the body, and a response costs no extensions map.
        /// Defaults to `false`.
        connection_info_extension, get_connection_info_extension: bool
    }

    /// The largest `min_idle_per_target`: 1 024 warm connections to one
    /// target, a bound on the sockets and memory pre-warming alone may hold.
    pub const MAX_MIN_IDLE: usize = 1024;

    /// The largest `max_requests_in_flight`: what a tokio semaphore can count.
    pub const MAX_REQUESTS_IN_FLIGHT: usize = tokio::sync::Semaphore::MAX_PERMITS;

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
            ("max_connections", self.max_connections),
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
            if value.is_some_and(|value| value > Self::MAX_DURATION) {
                return Err(ConfigError::new(
                    field,
                    "must be at most 365 days (use None to disable)",
                ));
            }
        }
        if self.min_connections_per_target > Self::MAX_MIN_IDLE {
            return Err(ConfigError::new(
                "min_connections_per_target",
                "must be at most PoolConfig::MAX_MIN_IDLE (1024)",
            ));
        }
        if self
            .max_connections_per_target
            .is_some_and(|max| self.min_connections_per_target > max)
        {
            return Err(ConfigError::new(
                "min_connections_per_target",
                "must not exceed max_connections_per_target",
            ));
        }
        if self.min_idle_per_target > Self::MAX_MIN_IDLE {
            return Err(ConfigError::new(
                "min_idle_per_target",
                "must be at most PoolConfig::MAX_MIN_IDLE (1024)",
            ));
        }
        if self
            .max_requests_in_flight
            .is_some_and(|max| max > Self::MAX_REQUESTS_IN_FLIGHT)
        {
            return Err(ConfigError::new(
                "max_requests_in_flight",
                "must be at most PoolConfig::MAX_REQUESTS_IN_FLIGHT (usize::MAX >> 3)",
            ));
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

    pub(crate) fn per_target_limit(&self) -> usize {
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
    /// cache"`, or a configuration of a layer over the pool) rejected.
    ///
    /// ```
    /// use tower_reuse_pool::ConfigError;
    ///
    /// let error = ConfigError::of("adaptive", "window", "must be at least two ticks");
    /// assert_eq!(error.field(), "window");
    /// assert_eq!(
    ///     error.to_string(),
    ///     "invalid adaptive configuration: window must be at least two ticks"
    /// );
    /// ```
    pub fn of(config: &'static str, field: &'static str, reason: &'static str) -> Self {
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
    fn bounds_every_duration_naming_the_field() {
        type Setter = fn(PoolConfig, Option<Duration>) -> PoolConfig;
        let fields: [(&str, Setter); 7] = [
            ("checkout_timeout", PoolConfig::checkout_timeout),
            ("connect_timeout", PoolConfig::connect_timeout),
            ("response_timeout", PoolConfig::response_timeout),
            ("http2_ping_interval", PoolConfig::http2_ping_interval),
            ("idle_timeout", PoolConfig::idle_timeout),
            ("max_lifetime", PoolConfig::max_lifetime),
            ("revalidate_after_idle", PoolConfig::revalidate_after_idle),
        ];
        for (field, set) in fields {
            let at_most = set(PoolConfig::default(), Some(PoolConfig::MAX_DURATION));
            assert!(at_most.validate().is_ok(), "{field}");
            for huge in [
                PoolConfig::MAX_DURATION + Duration::from_nanos(1),
                Duration::MAX,
            ] {
                let err = set(PoolConfig::default(), Some(huge))
                    .validate()
                    .unwrap_err();
                assert_eq!(err.field(), field);
                assert!(err.to_string().contains("365 days"), "{err}");
            }
        }
    }

    #[test]
    fn bounds_requests_in_flight_by_what_a_semaphore_counts() {
        let max = PoolConfig::MAX_REQUESTS_IN_FLIGHT;
        assert!(
            PoolConfig::default()
                .max_requests_in_flight(Some(max))
                .validate()
                .is_ok()
        );
        for over in [max + 1, usize::MAX] {
            let err = PoolConfig::default()
                .max_requests_in_flight(Some(over))
                .validate()
                .unwrap_err();
            assert_eq!(err.field(), "max_requests_in_flight");
        }
    }

    #[test]
    fn bounds_min_idle() {
        let at_most = PoolConfig::default().min_idle_per_target(PoolConfig::MAX_MIN_IDLE);
        assert!(at_most.validate().is_ok());
        let err = PoolConfig::default()
            .min_idle_per_target(PoolConfig::MAX_MIN_IDLE + 1)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "min_idle_per_target");
    }

    #[test]
    fn reads_back_every_knob() {
        let config = PoolConfig::default()
            .max_connections_per_target(Some(9))
            .idle_timeout(None)
            .lifetime_jitter(0.25)
            .min_idle_per_target(3)
            .reuse(false);
        assert_eq!(config.get_max_connections_per_target(), Some(9));
        assert_eq!(config.get_idle_timeout(), None);
        assert_eq!(config.get_lifetime_jitter(), 0.25);
        assert_eq!(config.get_min_idle_per_target(), 3);
        assert!(!config.get_reuse());
        assert_eq!(
            PoolConfig::default().get_checkout_timeout(),
            Some(Duration::from_secs(30))
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn rejects_a_policy_file_duration_past_the_bound() {
        let config: PoolConfig = toml::from_str("max_lifetime = 9223372036854775807").unwrap();
        assert_eq!(config.validate().unwrap_err().field(), "max_lifetime");
        let config: PoolConfig = toml::from_str("idle_timeout = \"9000h\"").unwrap();
        assert_eq!(config.validate().unwrap_err().field(), "idle_timeout");
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
