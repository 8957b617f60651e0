//! `SessionCacheConfig`: the cache's bounds, with documented defaults.

use std::time::Duration;

use crate::config::ConfigError;

/// Bounds of a [`SessionCache`](super::SessionCache). Build it from [`SessionCacheConfig::default`]
/// with the by-value setters; [`SessionCache::new`](super::SessionCache::new) validates it.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_pool::tls::SessionCacheConfig;
///
/// let config = SessionCacheConfig::default()
///     .max_servers(1024)
///     .tickets_per_server(16)
///     .max_ticket_age(Some(Duration::from_secs(600)));
/// assert!(config.validate().is_ok());
/// assert!(SessionCacheConfig::default().max_servers(0).validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct SessionCacheConfig {
    pub(super) max_servers: usize,
    pub(super) tickets_per_server: usize,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration_opt"))]
    pub(super) max_ticket_age: Option<Duration>,
}

impl Default for SessionCacheConfig {
    fn default() -> Self {
        SessionCacheConfig {
            max_servers: 256,
            tickets_per_server: 64,
            max_ticket_age: Some(Duration::from_secs(60 * 60)),
        }
    }
}

impl SessionCacheConfig {
    /// Most servers remembered, counting a server once per partition that
    /// reached it. A new server beyond it evicts the least recently used one
    /// with all its tickets. Defaults to 256: the distinct TLS servers of a
    /// busy client (a service talking to its dependencies, per tenant),
    /// where rustls' own cache holds 32 (256 entries over 8 tickets).
    #[must_use]
    pub fn max_servers(mut self, max: usize) -> Self {
        self.max_servers = max;
        self
    }

    /// Most TLS 1.3 tickets kept per server; a ticket beyond it evicts the
    /// oldest. Defaults to 64.
    ///
    /// A ticket resumes one connection only, so a pool that reopens N
    /// connections to a server at once (after the server restarted, sent
    /// GOAWAY, or its connections reached `max_lifetime` together) resumes
    /// only as many as it holds tickets; the rest pay a full handshake.
    /// Servers send two tickets per handshake by default (rustls, OpenSSL),
    /// so a pool of 32 connections has received 64 tickets and keeps them
    /// all: the whole pool can reconnect by resumption. rustls' own cache
    /// keeps 8. Each ticket holds a copy of the server's certificate chain
    /// (a few kilobytes), so the cache is bounded by about `max_servers` x
    /// `tickets_per_server` x that; it reaches it only for servers that have
    /// each completed 32 handshakes or more.
    #[must_use]
    pub fn tickets_per_server(mut self, max: usize) -> Self {
        self.tickets_per_server = max;
        self
    }

    /// Tickets (and TLS 1.2 sessions) this old are dropped, never handed
    /// out. Defaults to 1 hour; `None` leaves only the server's limit.
    ///
    /// rustls itself refuses a ticket past the lifetime its server granted
    /// (up to 7 days). This is the client's tighter limit: servers rotate
    /// the keys their tickets are sealed with (rustls' ticketer every 6
    /// hours), and an offered ticket the server can no longer open is a
    /// full handshake anyway, after a larger hello. A pool reconnects within
    /// seconds to minutes of losing its connections (its idle timeout is
    /// 55 s), so an hour keeps every ticket a reconnect would use, while a
    /// resumption secret stays in memory no longer than that.
    #[must_use]
    pub fn max_ticket_age(mut self, age: Option<Duration>) -> Self {
        self.max_ticket_age = age;
        self
    }

    /// Checks every field, naming the field at fault: counts must be at
    /// least 1 and the age longer than zero (`None` disables it).
    pub fn validate(self) -> Result<Self, ConfigError> {
        check_max_servers(self.max_servers)?;
        check_tickets_per_server(self.tickets_per_server)?;
        check_max_ticket_age(self.max_ticket_age)?;
        Ok(self)
    }
}

/// How its errors name this configuration.
const SESSION_CACHE: &str = "TLS session cache";

pub(super) fn check_max_servers(max: usize) -> Result<(), ConfigError> {
    match max {
        0 => Err(ConfigError::of(
            SESSION_CACHE,
            "max_servers",
            "must be at least 1",
        )),
        _ => Ok(()),
    }
}

pub(super) fn check_tickets_per_server(max: usize) -> Result<(), ConfigError> {
    match max {
        0 => Err(ConfigError::of(
            SESSION_CACHE,
            "tickets_per_server",
            "must be at least 1",
        )),
        _ => Ok(()),
    }
}

pub(super) fn check_max_ticket_age(age: Option<Duration>) -> Result<(), ConfigError> {
    match age {
        Some(Duration::ZERO) => Err(ConfigError::of(
            SESSION_CACHE,
            "max_ticket_age",
            "must be longer than zero (use None to disable)",
        )),
        _ => Ok(()),
    }
}
