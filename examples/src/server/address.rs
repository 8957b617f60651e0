//! One listening address of the embedded server: its requests in flight,
//! its cache of affinity keys, and whether it is up. An address can be
//! taken down (its listener and its connections closed, so connects are
//! refused) and brought back on the same socket address.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::header::HeaderName;
use serde::Serialize;
use tokio::sync::watch;

/// The request header whose value is the request's affinity key, looked
/// up in the serving address's cache ([`ServerConfig::cache`](super::ServerConfig::cache)).
pub const X_AFFINITY_KEY: HeaderName = HeaderName::from_static("x-affinity-key");

/// The response header naming the address that served the request
/// (`127.0.0.3:40123`), sent when [`ServerConfig::served_by`](super::ServerConfig::served_by) is on.
pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// A per-address cache of affinity keys: each address remembers the last
/// `capacity` keys it served; a request whose key is not among them (a
/// miss) waits `miss_latency` before its answer, as a backend filling its
/// cache would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCache {
    /// Keys kept per address (least recently used evicted first).
    pub capacity: usize,
    /// Added to the answer of a request whose key missed.
    pub miss_latency: Duration,
}

/// A copy of one address's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AddressSnapshot {
    /// The socket address.
    pub addr: SocketAddr,
    /// Whether it accepts connections now.
    pub up: bool,
    /// Requests in flight on it now.
    pub in_flight: u64,
    /// Requests whose affinity key was in its cache.
    pub cache_hits: u64,
    /// Requests whose affinity key was not (each waited the miss latency).
    pub cache_misses: u64,
    /// Connections open on it now.
    pub open: u64,
    /// Connections it has accepted so far.
    pub accepted: u64,
}

/// The shared state of one listening address.
#[derive(Debug)]
pub(crate) struct Address {
    pub(crate) addr: SocketAddr,
    pub(crate) served_by: HeaderValue,
    in_flight: AtomicU64,
    open: AtomicU64,
    accepted: AtomicU64,
    /// Added to every answer on this address, in place of the server's
    /// latency ([`ServerConfig::latency_on`](super::ServerConfig::latency_on)).
    pub(crate) latency: Option<Duration>,
    hits: AtomicU64,
    misses: AtomicU64,
    cache: Option<(Mutex<Lru>, Duration)>,
    up: watch::Sender<bool>,
    /// Whether the address counts in the load samples (it is one of the
    /// service's endpoints).
    in_service: AtomicBool,
}

impl Address {
    pub(crate) fn new(
        addr: SocketAddr,
        cache: Option<KeyCache>,
        latency: Option<Duration>,
    ) -> Self {
        Self {
            addr,
            served_by: HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid header value"),
            in_flight: AtomicU64::new(0),
            open: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            latency,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cache: cache.map(|c| (Mutex::new(Lru::new(c.capacity)), c.miss_latency)),
            up: watch::channel(true).0,
            in_service: AtomicBool::new(true),
        }
    }

    pub(crate) fn snapshot(&self) -> AddressSnapshot {
        AddressSnapshot {
            addr: self.addr,
            up: self.is_up(),
            in_flight: self.in_flight(),
            cache_hits: self.hits.load(Relaxed),
            cache_misses: self.misses.load(Relaxed),
            open: self.open.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Whether the address counts in the load samples: up, and not
    /// retired from the service.
    pub(crate) fn in_service(&self) -> bool {
        self.is_up() && self.in_service.load(Relaxed)
    }

    pub(crate) fn set_in_service(&self, on: bool) {
        self.in_service.store(on, Relaxed);
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Resolves once the address is (or already was) taken down.
    pub(crate) async fn went_down(&self) {
        let _ = self.up.subscribe().wait_for(|up| !*up).await;
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn begin(&self) -> AddressLoad<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        AddressLoad { address: self }
    }

    /// Looks `key` up in the cache (adding it on a miss): `None` when the
    /// address has no cache, else `Some(latency to add)`, zero on a hit.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Duration> {
        let (cache, miss_latency) = self.cache.as_ref()?;
        let hit = cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .touch(key);
        if hit {
            self.hits.fetch_add(1, Relaxed);
            Some(Duration::ZERO)
        } else {
            self.misses.fetch_add(1, Relaxed);
            Some(*miss_latency)
        }
    }
}

/// A request in flight on an address.
pub(crate) struct AddressLoad<'a> {
    address: &'a Address,
}

impl Drop for AddressLoad<'_> {
    fn drop(&mut self) {
        self.address.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A least-recently-used set of keys: each key carries the tick of its
/// last use, and the ticks index the keys in use order.
#[derive(Debug)]
pub(crate) struct Lru {
    capacity: usize,
    tick: u64,
    last_use: HashMap<Bytes, u64>,
    by_use: BTreeMap<u64, Bytes>,
}

impl Lru {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            last_use: HashMap::with_capacity(capacity + 1),
            by_use: BTreeMap::new(),
        }
    }

    /// Marks `key` used now; `true` if it was held (a hit). On a miss the
    /// key is added, evicting the least recently used beyond capacity.
    pub(crate) fn touch(&mut self, key: &[u8]) -> bool {
        self.tick += 1;
        if let Some(last) = self.last_use.get_mut(key) {
            let key = self
                .by_use
                .remove(last)
                .expect("every held key is indexed by its last use");
            *last = self.tick;
            self.by_use.insert(self.tick, key);
            return true;
        }
        if self.capacity == 0 {
            return false;
        }
        let key = Bytes::copy_from_slice(key);
        self.last_use.insert(key.clone(), self.tick);
        self.by_use.insert(self.tick, key);
        if self.last_use.len() > self.capacity
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.last_use.remove(&oldest);
        }
        false
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.last_use.len()
    }
}
