//! `SessionCacheStats`: what the cache holds and what it did.

/// Counts of a [`SessionCache`](super::SessionCache), from [`SessionCache::stats`](super::SessionCache::stats).
///
/// Every TLS 1.3 ticket inserted is accounted for exactly once:
/// `inserts == hits + tickets_evicted + tickets_expired + tickets`.
///
/// ```
/// use tower_reuse_pool::tls::SessionCache;
///
/// let stats = SessionCache::default().stats();
/// let resumable = stats.hits() as f64 / (stats.hits() + stats.misses()).max(1) as f64;
/// assert_eq!((stats.servers(), stats.tickets(), resumable), (0, 0, 0.0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCacheStats {
    pub(super) servers: usize,
    pub(super) tickets: usize,
    pub(super) hits: u64,
    pub(super) misses: u64,
    pub(super) inserts: u64,
    pub(super) tls12_hits: u64,
    pub(super) tls12_misses: u64,
    pub(super) servers_evicted: u64,
    pub(super) tickets_evicted: u64,
    pub(super) tickets_expired: u64,
}

impl SessionCacheStats {
    /// Servers remembered now, counting a server once per partition.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// TLS 1.3 tickets held now.
    pub fn tickets(&self) -> usize {
        self.tickets
    }

    /// TLS 1.3 tickets handed out for a resumption.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Asks for a TLS 1.3 ticket that found none usable: a full handshake,
    /// unless a TLS 1.2 session resumes it.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// TLS 1.3 tickets received from servers and stored.
    pub fn inserts(&self) -> u64 {
        self.inserts
    }

    /// TLS 1.2 sessions handed out. rustls asks for one only after finding
    /// no TLS 1.3 ticket, and only when built with its `tls12` feature.
    pub fn tls12_hits(&self) -> u64 {
        self.tls12_hits
    }

    /// Asks for a TLS 1.2 session that found none usable.
    pub fn tls12_misses(&self) -> u64 {
        self.tls12_misses
    }

    /// Servers evicted as the least recently used, to make room for a new
    /// one or when `max_servers` shrank. Their tickets count in
    /// [`tickets_evicted`](Self::tickets_evicted).
    pub fn servers_evicted(&self) -> u64 {
        self.servers_evicted
    }

    /// Tickets dropped unused to stay within a bound: the oldest of a server
    /// at `tickets_per_server`, or every ticket of an evicted server.
    pub fn tickets_evicted(&self) -> u64 {
        self.tickets_evicted
    }

    /// Tickets dropped unused because they reached `max_ticket_age`.
    pub fn tickets_expired(&self) -> u64 {
        self.tickets_expired
    }
}
