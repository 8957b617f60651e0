//! A service's endpoints as the request path reads them: each endpoint's
//! load, health and counts, and the map of services by authority.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use http::uri::Scheme;
use tokio::time::Instant;
use tower_reuse_pool::Endpoint;

use crate::choice::{self, Candidate};
use crate::events::AffinityEvents;
use crate::health::{Availability, Health};

/// One endpoint of a service: its load, health and counts. Kept across
/// changes of the endpoint set while the endpoint stays in it.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) addr: SocketAddr,
    pub(crate) id: u64,
    pub(crate) in_flight: AtomicUsize,
    /// Ejected or on probation: look at `health` before sending.
    out: AtomicBool,
    /// A failure counted since the last success: a success resets it.
    failing: AtomicBool,
    health: Mutex<Health>,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) detours_to: AtomicU64,
    pub(crate) retries_from: AtomicU64,
}

impl EndpointState {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            id: choice::endpoint_id(addr),
            in_flight: AtomicUsize::new(0),
            out: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            health: Mutex::default(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            detours_to: AtomicU64::new(0),
            retries_from: AtomicU64::new(0),
        }
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Its health, locked; the fast flag is kept in step by the caller
    /// through [`EndpointState::sync_out`].
    pub(crate) fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn sync_out(&self, health: &Health) {
        self.out.store(health.is_out(), Ordering::Release);
    }

    /// Whether a request may go here now (`now` read once, when first
    /// needed).
    fn eligible(&self, now: &mut Option<Instant>) -> bool {
        if !self.out.load(Ordering::Acquire) {
            return true;
        }
        let now = *now.get_or_insert_with(Instant::now);
        matches!(
            self.health().availability(now),
            Availability::Healthy | Availability::Probation
        )
    }

    pub(crate) fn is_out(&self) -> bool {
        self.out.load(Ordering::Acquire)
    }

    pub(crate) fn has_failures(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn note_failure(&self) {
        self.failing.store(true, Ordering::Release);
    }

    pub(crate) fn clear_failures(&self) {
        self.failing.store(false, Ordering::Release);
    }
}

/// How many recent keys a service remembers to report rebalances and keys
/// per endpoint, and to tell its hot keys: a direct-mapped table.
const RECENT_KEYS: usize = 1024;

/// A key is hot once it holds its slot of the table by this many requests
/// more than the other keys that hash there: a key with well over
/// 1/`RECENT_KEYS` of the service's requests.
const HOT: u32 = 64;

/// The most a slot counts.
const MAX_COUNT: u32 = 1 << 16;

/// Recent keys, one per slot, each with a count: a request of the slot's
/// key adds one, a request of another key takes one off, and takes the
/// slot when it is at one (a heavy-hitter sketch, slot by slot). Racy
/// updates lose a count now and then: the counts are estimates.
#[derive(Debug)]
pub(crate) struct RecentKeys {
    keys: Box<[AtomicU64]>,
    counts: Box<[AtomicU32]>,
}

impl RecentKeys {
    pub(crate) fn new() -> Self {
        RecentKeys {
            keys: (0..RECENT_KEYS).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..RECENT_KEYS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Count a request of `key`; whether the key is hot.
    pub(crate) fn record(&self, key: u64) -> bool {
        let key = key.max(1);
        let slot = (key as usize) % RECENT_KEYS;
        let count = &self.counts[slot];
        if self.keys[slot].load(Ordering::Relaxed) == key {
            let n = count.load(Ordering::Relaxed);
            if n < MAX_COUNT {
                count.store(n + 1, Ordering::Relaxed);
            }
            return n + 1 >= HOT;
        }
        let n = count.load(Ordering::Relaxed);
        if n <= 1 {
            self.keys[slot].store(key, Ordering::Relaxed);
            count.store(1, Ordering::Relaxed);
        } else {
            count.store(n - 1, Ordering::Relaxed);
        }
        false
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys
            .iter()
            .map(|k| k.load(Ordering::Relaxed))
            .filter(|&k| k != 0)
    }
}

/// One logical service and its endpoints now.
pub(crate) struct ServiceSet {
    pub(crate) name: Arc<str>,
    pub(crate) scheme: Scheme,
    /// Its authority as the map keys it.
    pub(crate) key: Arc<str>,
    pub(crate) endpoints: Vec<Arc<EndpointState>>,
    /// Kept across changes of the endpoint set, as the lock below.
    pub(crate) recent: Arc<RecentKeys>,
    /// Taken by each failure while it checks and changes the share of
    /// endpoints out of service.
    pub(crate) ejections: Arc<Mutex<()>>,
    /// The layer's event hook (shared, so that a request's outcome reaches
    /// it through its service alone).
    pub(crate) events: Arc<Events>,
}

impl std::fmt::Debug for ServiceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSet")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// An affinity layer's event hook, replaceable.
pub(crate) type Events = ArcSwap<Box<dyn AffinityEvents>>;

impl ServiceSet {
    /// `f` of the endpoints as a choice sees them now (on the stack for up
    /// to 12 endpoints); the clock is read only if one is out of service.
    pub(crate) fn with_candidates<R>(&self, f: impl FnOnce(&mut [Candidate]) -> R) -> R {
        const INLINE: usize = 12;
        let mut now = None;
        let mut candidate = |e: &EndpointState| Candidate {
            id: e.id,
            load: e.in_flight.load(Ordering::Relaxed),
            eligible: e.eligible(&mut now),
        };
        if self.endpoints.len() <= INLINE {
            let mut buf = [Candidate::default(); INLINE];
            for (slot, e) in buf.iter_mut().zip(&self.endpoints) {
                *slot = candidate(e);
            }
            f(&mut buf[..self.endpoints.len()])
        } else {
            let mut all: Vec<Candidate> = self.endpoints.iter().map(|e| candidate(e)).collect();
            f(&mut all)
        }
    }

    /// Whether one more endpoint may be ejected: under the share, never
    /// the last one in service.
    pub(crate) fn room_to_eject(&self, max_share: f64) -> bool {
        let n = self.endpoints.len();
        let out = self.endpoints.iter().filter(|e| e.is_out()).count();
        let allowed = ((max_share * n as f64).floor() as usize).min(n.saturating_sub(1));
        out < allowed
    }

    /// One failure at a time, for the share of endpoints out.
    pub(crate) fn ejecting(&self) -> MutexGuard<'_, ()> {
        self.ejections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint at `addr`.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Option<usize> {
        self.endpoints.iter().position(|e| e.addr == addr)
    }

    /// The key's first endpoint, ignoring load and health: where it lives.
    pub(crate) fn home(&self, key: u64) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .max_by_key(|e| choice::score(key, e.id))
            .map(|e| e.addr)
    }
}

/// The routed services by authority (lowercase, without user info or its
/// scheme's default port), one per scheme.
pub(crate) type Services = HashMap<Box<str>, Schemes, BuildHasherDefault<choice::Fnv>>;

/// The services of one authority: `http` and `https` are two services.
#[derive(Clone, Debug, Default)]
pub(crate) struct Schemes {
    pub(crate) http: Option<Arc<ServiceSet>>,
    pub(crate) https: Option<Arc<ServiceSet>>,
}

impl Schemes {
    pub(crate) fn get(&self, scheme: &Scheme) -> Option<&Arc<ServiceSet>> {
        match scheme.as_str() {
            "http" => self.http.as_ref(),
            "https" => self.https.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn slot(&mut self, scheme: &Scheme) -> &mut Option<Arc<ServiceSet>> {
        if *scheme == Scheme::HTTPS {
            &mut self.https
        } else {
            &mut self.http
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }
}

/// `:443` for `https`, `:80` otherwise: the port a URI may leave out.
fn default_port(scheme: &Scheme) -> &'static str {
    if *scheme == Scheme::HTTPS {
        ":443"
    } else {
        ":80"
    }
}

/// `authority` as the map keys it: without user info, lowercase, without
/// `scheme`'s default port; `None` if it is too long to key.
pub(crate) fn service_key(scheme: &Scheme, authority: &str) -> Option<String> {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let default_port = default_port(scheme);
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Some(authority.to_ascii_lowercase())
}

/// The service a request to `scheme://authority` goes to: looked up by the
/// authority's bytes as they are, as nearly every request writes them (as
/// registered), and by its key (`service_key`) otherwise.
pub(crate) fn find<'a>(
    services: &'a Services,
    scheme: &Scheme,
    authority: &str,
) -> Option<&'a Arc<ServiceSet>> {
    if let Some(set) = services.get(authority).and_then(|s| s.get(scheme)) {
        return Some(set);
    }
    // Only an authority written otherwise than its key is looked up again:
    // a request to an authority no service has costs no allocation.
    let default_port = default_port(scheme);
    let written_otherwise = authority.contains('@')
        || authority.ends_with(default_port)
        || authority.bytes().any(|b| b.is_ascii_uppercase());
    if services.is_empty() || !written_otherwise {
        return None;
    }
    services
        .get(service_key(scheme, authority)?.as_str())?
        .get(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_many_requests_is_hot_and_rare_ones_are_not() {
        let recent = RecentKeys::new();
        let slot = |n: u64| n * RECENT_KEYS as u64 + 7; // all in slot 7
        let hot = slot(1);
        // Rare keys sharing the slot take turns; none gets hot.
        for n in 2..200 {
            assert!(!recent.record(slot(n)));
        }
        // A key sent far more often than its neighbours takes the slot and
        // becomes hot, and stays hot through a few of theirs.
        let mut was_hot = false;
        for round in 0..200 {
            was_hot = recent.record(hot);
            if round % 10 == 0 {
                recent.record(slot(1_000 + round));
            }
        }
        assert!(was_hot);
        assert!(recent.keys().any(|k| k == hot));
        // Once its neighbours outnumber it, it is cold again.
        for n in 0..(MAX_COUNT as u64 + 10) {
            recent.record(slot(5_000 + n));
        }
        assert!(!recent.keys().any(|k| k == hot));
    }
}
