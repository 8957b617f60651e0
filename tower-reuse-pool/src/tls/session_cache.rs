//! `SessionCache`: a rustls [`ClientSessionStore`], partitioned like the pool
//! and bounded in servers and in tickets per server.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::endpoint::Endpoint;
use crate::target::Partition;

mod config;
mod stats;
#[cfg(test)]
mod tests;

pub use config::SessionCacheConfig;
use config::{check_max_servers, check_max_ticket_age, check_tickets_per_server};
pub use stats::SessionCacheStats;

/// A rustls [`ClientSessionStore`]: TLS 1.3 tickets, TLS 1.2 sessions and
/// key-exchange hints per server, partitioned like the pool, bounded, and
/// sized for connect bursts (see [`SessionCacheConfig`] for the defaults).
///
/// - **Partitioned**: [`store_for`](Self::store_for) gives the store of one
///   [`Partition`]: what it stores is handed out to the same partition only,
///   never to another or to the unpartitioned store (the cache itself).
///   Every store of one cache shares its bounds and its counts.
/// - **Bounded**: in servers (least recently used evicted first; storing or
///   taking a ticket and storing a hint or a session count as a use) and in
///   tickets per server (oldest evicted first).
/// - **Fresh**: tickets and TLS 1.2 sessions reaching `max_ticket_age` are
///   dropped, never handed out. Time is tokio's clock.
/// - The newest ticket is handed out first: the one a server is likeliest
///   still to accept.
/// - **Adjustable** at run time through any clone of the handle; shrinking a
///   bound evicts down to it at once.
///
/// Each call takes one short lock; taking a ticket allocates nothing.
/// `Debug` prints the bounds and counts only, never partitions, server names
/// or tickets.
///
/// ```
/// use std::sync::Arc;
/// use rustls::client::Resumption;
/// use tower_reuse_pool::Partition;
/// use tower_reuse_pool::tls::{SessionCache, SessionCacheConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = SessionCache::new(SessionCacheConfig::default().tickets_per_server(128))?;
/// let provider = Arc::new(rustls::crypto::ring::default_provider());
/// let base = rustls::ClientConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()?
///     .with_root_certificates(rustls::RootCertStore::empty())
///     .with_no_client_auth();
///
/// // One client configuration per partition: tenant A never resumes on B's tickets.
/// let mut tenant_a = base.clone();
/// tenant_a.resumption = Resumption::store(cache.store_for(Some(&Partition::new("tenant-a"))));
/// let mut shared = base;
/// shared.resumption = Resumption::store(Arc::new(cache.clone()));
///
/// // Later, from anywhere holding a clone: observe and resize.
/// cache.set_tickets_per_server(32)?;
/// assert_eq!(cache.stats().tickets(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionCache {
    state: Arc<Mutex<State>>,
}

impl SessionCache {
    /// A cache with `config`'s bounds, after validating it.
    pub fn new(config: SessionCacheConfig) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        Ok(SessionCache {
            state: Arc::new(Mutex::new(State {
                config,
                partitions: HashMap::new(),
                clock: 0,
                stats: SessionCacheStats::default(),
            })),
        })
    }

    /// The store of `partition`, for `rustls::client::Resumption::store`.
    /// `None` is the unpartitioned store, the same as the cache itself.
    ///
    /// Stores of different partitions never see each other's entries; all
    /// share this cache's bounds and counts.
    pub fn store_for(&self, partition: Option<&Partition>) -> Arc<dyn ClientSessionStore> {
        self.store_at(partition, None)
    }

    /// The store of `partition`'s connections to `endpoint`: the pool's
    /// TLS connector keeps each endpoint's sessions apart.
    pub(crate) fn store_at(
        &self,
        partition: Option<&Partition>,
        endpoint: Option<Endpoint>,
    ) -> Arc<dyn ClientSessionStore> {
        Arc::new(PartitionStore {
            cache: self.clone(),
            partition: (partition.cloned(), endpoint),
        })
    }

    /// The counts, after dropping (in one pass over the servers) what
    /// reached `max_ticket_age`.
    pub fn stats(&self) -> SessionCacheStats {
        let now = Instant::now();
        let mut state = self.lock();
        state.drop_expired_everywhere(now);
        state.stats
    }

    /// The tickets kept per server now (as changed at run time).
    pub fn tickets_per_server(&self) -> usize {
        self.lock().config.tickets_per_server
    }

    /// Changes `max_servers`, evicting the least recently used servers down
    /// to it at once. Zero is rejected and changes nothing.
    pub fn set_max_servers(&self, max: usize) -> Result<(), ConfigError> {
        check_max_servers(max)?;
        let mut state = self.lock();
        state.config.max_servers = max;
        state.evict_servers_down_to(max);
        Ok(())
    }

    /// Changes `tickets_per_server`, dropping every server's oldest tickets
    /// down to it at once. Zero is rejected and changes nothing.
    pub fn set_tickets_per_server(&self, max: usize) -> Result<(), ConfigError> {
        check_tickets_per_server(max)?;
        let mut state = self.lock();
        state.config.tickets_per_server = max;
        let State {
            partitions, stats, ..
        } = &mut *state;
        for server in partitions.values_mut().flat_map(HashMap::values_mut) {
            let excess = server.tickets.len().saturating_sub(max);
            server.tickets.drain(..excess);
            stats.tickets -= excess;
            stats.tickets_evicted += excess as u64;
        }
        Ok(())
    }

    /// Changes `max_ticket_age`, dropping what reached it at once. A zero
    /// age is rejected and changes nothing; `None` disables the limit.
    pub fn set_max_ticket_age(&self, age: Option<Duration>) -> Result<(), ConfigError> {
        check_max_ticket_age(age)?;
        let now = Instant::now();
        let mut state = self.lock();
        state.config.max_ticket_age = age;
        state.drop_expired_everywhere(now);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock could leave a count off, never an
        // entry unusable: the cache stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for SessionCache {
    /// A cache with [`SessionCacheConfig::default`]'s bounds.
    fn default() -> Self {
        SessionCache::new(SessionCacheConfig::default()).expect("the defaults are valid")
    }
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SessionCache")
            .field("config", &state.config)
            .field("stats", &state.stats)
            .finish()
    }
}

/// What rustls asks, for one partition (`None` for the unpartitioned store).
impl SessionCache {
    fn set_kx_hint_in(&self, partition: &Key, server: ServerName<'static>, group: NamedGroup) {
        self.lock().server_mut(partition, server).kx_hint = Some(group);
    }

    fn kx_hint_in(&self, partition: &Key, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.lock()
            .read_server(partition, server, |server| server.kx_hint)
    }

    fn set_tls12_session_in(
        &self,
        partition: &Key,
        server: ServerName<'static>,
        value: Tls12ClientSessionValue,
    ) {
        let stored_at = Instant::now();
        self.lock().server_mut(partition, server).tls12 = Some(Stored { value, stored_at });
    }

    fn tls12_session_in(
        &self,
        partition: &Key,
        server: &ServerName<'_>,
    ) -> Option<Tls12ClientSessionValue> {
        let now = Instant::now();
        let mut state = self.lock();
        let max_age = state.config.max_ticket_age;
        let session = state.read_server(partition, server, |server| {
            let session = server.tls12.as_ref()?;
            (!session.has_expired(now, max_age)).then(|| session.value.clone())
        });
        match session {
            Some(_) => state.stats.tls12_hits += 1,
            None => state.stats.tls12_misses += 1,
        }
        session
    }

    fn remove_tls12_session_in(&self, partition: &Key, server: &ServerName<'static>) {
        let mut state = self.lock();
        if let Some(server) = state
            .partitions
            .get_mut(partition)
            .and_then(|servers| servers.get_mut(server))
        {
            server.tls12 = None;
        }
    }

    fn insert_tls13_ticket_in(
        &self,
        partition: &Key,
        server: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let now = Instant::now();
        let mut state = self.lock();
        let max_age = state.config.max_ticket_age;
        let bound = state.config.tickets_per_server;
        let server = state.server_mut(partition, server);
        let expired = drop_expired(&mut server.tickets, now, max_age);
        let evicted = (server.tickets.len() + 1).saturating_sub(bound);
        server.tickets.drain(..evicted);
        server.tickets.push_back(Stored {
            value,
            stored_at: now,
        });
        let stats = &mut state.stats;
        stats.tickets = stats.tickets + 1 - expired - evicted;
        stats.inserts += 1;
        stats.tickets_expired += expired as u64;
        stats.tickets_evicted += evicted as u64;
    }

    fn take_tls13_ticket_in(
        &self,
        partition: &Key,
        server: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        state.clock += 1;
        let server = state
            .partitions
            .get_mut(partition)
            .and_then(|servers| servers.get_mut(server));
        let (expired, ticket) = match server {
            Some(server) => {
                server.last_used = state.clock;
                let expired = drop_expired(&mut server.tickets, now, state.config.max_ticket_age);
                (expired, server.tickets.pop_back())
            }
            None => (0, None),
        };
        let stats = &mut state.stats;
        stats.tickets -= expired + usize::from(ticket.is_some());
        stats.tickets_expired += expired as u64;
        match ticket {
            Some(ticket) => {
                stats.hits += 1;
                Some(ticket.value)
            }
            None => {
                stats.misses += 1;
                None
            }
        }
    }
}

/// The unpartitioned store: the same entries as `store_for(None)`.
impl ClientSessionStore for SessionCache {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.set_kx_hint_in(&UNSCOPED, server, group)
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.kx_hint_in(&UNSCOPED, server)
    }

    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.set_tls12_session_in(&UNSCOPED, server, value)
    }

    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.tls12_session_in(&UNSCOPED, server)
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.remove_tls12_session_in(&UNSCOPED, server)
    }

    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.insert_tls13_ticket_in(&UNSCOPED, server, value)
    }

    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.take_tls13_ticket_in(&UNSCOPED, server)
    }
}

/// The store of one partition, from [`SessionCache::store_for`].
struct PartitionStore {
    cache: SessionCache,
    partition: Key,
}

impl fmt::Debug for PartitionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionStore")
            .field("partitioned", &self.partition.0.is_some())
            .field("cache", &self.cache)
            .finish()
    }
}

impl ClientSessionStore for PartitionStore {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.cache.set_kx_hint_in(&self.partition, server, group)
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache.kx_hint_in(&self.partition, server)
    }

    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.cache
            .set_tls12_session_in(&self.partition, server, value)
    }

    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.cache.tls12_session_in(&self.partition, server)
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.cache.remove_tls12_session_in(&self.partition, server)
    }

    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.cache
            .insert_tls13_ticket_in(&self.partition, server, value)
    }

    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.cache.take_tls13_ticket_in(&self.partition, server)
    }
}

/// The scope part of an entry's key: the partition, and the endpoint the
/// connection went to, when its target has one (servers behind one name
/// do not share their session keys, as a rule: a ticket goes back to the
/// server that issued it).
type Key = (Option<Partition>, Option<Endpoint>);

/// The unpartitioned store's scope.
const UNSCOPED: Key = (None, None);

/// Entries by partition, then by server: a lookup borrows both parts of the
/// key as given, and so clones nothing.
struct State {
    config: SessionCacheConfig,
    partitions: HashMap<Key, HashMap<ServerName<'static>, Server>>,
    /// Stamps `Server::last_used`: a larger stamp is a more recent use.
    clock: u64,
    /// Counters, with `servers` and `tickets` kept current.
    stats: SessionCacheStats,
}

#[derive(Default)]
struct Server {
    last_used: u64,
    kx_hint: Option<NamedGroup>,
    tls12: Option<Stored<Tls12ClientSessionValue>>,
    /// Oldest first, so also in order of `stored_at`.
    tickets: VecDeque<Stored<Tls13ClientSessionValue>>,
}

struct Stored<T> {
    value: T,
    stored_at: Instant,
}

impl<T> Stored<T> {
    /// Expired at exactly `max_age`.
    fn has_expired(&self, now: Instant, max_age: Option<Duration>) -> bool {
        max_age.is_some_and(|max| now.saturating_duration_since(self.stored_at) >= max)
    }
}

/// Drops the tickets that reached `max_age` (the oldest, at the front) and
/// returns how many.
fn drop_expired(
    tickets: &mut VecDeque<Stored<Tls13ClientSessionValue>>,
    now: Instant,
    max_age: Option<Duration>,
) -> usize {
    let expired = tickets
        .iter()
        .take_while(|ticket| ticket.has_expired(now, max_age))
        .count();
    tickets.drain(..expired);
    expired
}

impl State {
    /// Reads a server's entry. Reads do not count as a use: rustls follows
    /// every handshake that read a hint or a session with a write.
    fn read_server<R>(
        &self,
        partition: &Key,
        server: &ServerName<'_>,
        read: impl FnOnce(&Server) -> Option<R>,
    ) -> Option<R> {
        // Keys are `ServerName<'static>`; the map is covariant in its key, so
        // it can be searched with a name borrowed for less, without a clone.
        let servers: &HashMap<ServerName<'_>, Server> = self.partitions.get(partition)?;
        servers.get(server).and_then(read)
    }

    /// A server's entry, created if new (evicting the least recently used
    /// server when full), and marked as just used.
    fn server_mut(&mut self, partition: &Key, server: ServerName<'static>) -> &mut Server {
        let known = self
            .partitions
            .get(partition)
            .is_some_and(|servers| servers.contains_key(&server));
        if !known {
            self.evict_servers_down_to(self.config.max_servers.saturating_sub(1));
            self.stats.servers += 1;
        }
        self.clock += 1;
        let entry = self
            .partitions
            .entry(partition.clone())
            .or_default()
            .entry(server)
            .or_default();
        entry.last_used = self.clock;
        entry
    }

    /// Evicts the least recently used servers until at most `max` remain.
    fn evict_servers_down_to(&mut self, max: usize) {
        let excess = self.stats.servers.saturating_sub(max);
        let stamps = self
            .partitions
            .values()
            .flat_map(HashMap::values)
            .map(|server| server.last_used);
        // Stamps are unique, so evicting every server used no later than the
        // `excess`-th oldest stamp evicts exactly `excess` servers.
        let newest_evicted = match excess {
            0 => return,
            1 => stamps.min(),
            _ => {
                let mut stamps: Vec<u64> = stamps.collect();
                stamps.select_nth_unstable(excess - 1);
                stamps.get(excess - 1).copied()
            }
        };
        let Some(newest_evicted) = newest_evicted else {
            return;
        };
        let State {
            partitions, stats, ..
        } = self;
        partitions.retain(|_, servers| {
            servers.retain(|_, server| {
                let keep = server.last_used > newest_evicted;
                if !keep {
                    stats.servers -= 1;
                    stats.servers_evicted += 1;
                    stats.tickets -= server.tickets.len();
                    stats.tickets_evicted += server.tickets.len() as u64;
                }
                keep
            });
            !servers.is_empty()
        });
    }

    /// Drops every ticket and TLS 1.2 session that reached `max_ticket_age`.
    fn drop_expired_everywhere(&mut self, now: Instant) {
        let max_age = self.config.max_ticket_age;
        if max_age.is_none() {
            return;
        }
        for server in self.partitions.values_mut().flat_map(HashMap::values_mut) {
            let expired = drop_expired(&mut server.tickets, now, max_age);
            self.stats.tickets -= expired;
            self.stats.tickets_expired += expired as u64;
            if server
                .tls12
                .as_ref()
                .is_some_and(|session| session.has_expired(now, max_age))
            {
                server.tls12 = None;
            }
        }
    }
}
