//! The services and their endpoints: read on every request without a lock
//! (an `ArcSwap` of an immutable map), changed through [`Endpoints`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, Scheme};
use tokio::time::Instant;
use tower_reuse_pool::{Endpoint, PoolControl, TargetConfig};

use crate::choice::{self, Candidate};
use crate::error::Error;
use crate::events::{AffinityEvents, EndpointChanged, Rebalanced};
use crate::health::{Availability, Health};
use crate::snapshot::{AffinitySnapshot, EndpointSnapshot, ServiceSnapshot};

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
    fn new(addr: SocketAddr) -> Self {
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
/// per endpoint: a direct-mapped table, one relaxed store per request.
const RECENT_KEYS: usize = 4096;

#[derive(Debug)]
pub(crate) struct RecentKeys(Box<[AtomicU64]>);

impl RecentKeys {
    fn new() -> Self {
        RecentKeys((0..RECENT_KEYS).map(|_| AtomicU64::new(0)).collect())
    }

    pub(crate) fn record(&self, key: u64) {
        self.0[(key as usize) % RECENT_KEYS].store(key.max(1), Ordering::Relaxed);
    }

    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .iter()
            .map(|k| k.load(Ordering::Relaxed))
            .filter(|&k| k != 0)
    }
}

/// One logical service and its endpoints now.
#[derive(Debug)]
pub(crate) struct ServiceSet {
    pub(crate) name: Arc<str>,
    pub(crate) scheme: Scheme,
    pub(crate) endpoints: Vec<Arc<EndpointState>>,
    pub(crate) recent: Arc<RecentKeys>,
}

impl ServiceSet {
    /// The endpoints as a choice sees them now; `now` read only if one is
    /// out of service.
    pub(crate) fn candidates(&self, out: &mut Vec<Candidate>) {
        let mut now = None;
        out.clear();
        out.extend(self.endpoints.iter().map(|e| Candidate {
            id: e.id,
            load: e.in_flight.load(Ordering::Relaxed),
            eligible: e.eligible(&mut now),
        }));
    }

    /// Whether one more endpoint may be ejected: under the share, never
    /// the last one in service.
    pub(crate) fn room_to_eject(&self, max_share: f64) -> bool {
        let n = self.endpoints.len();
        let out = self.endpoints.iter().filter(|e| e.is_out()).count();
        let allowed = ((max_share * n as f64).floor() as usize).min(n.saturating_sub(1));
        out < allowed
    }

    /// The key's first endpoint, ignoring load and health: where it lives.
    fn home(&self, key: u64) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .max_by_key(|e| choice::score(key, e.id))
            .map(|e| e.addr)
    }
}

/// The registry behind an [`Endpoints`] handle.
pub(crate) struct Registry {
    pub(crate) services: ArcSwap<HashMap<Authority, Arc<ServiceSet>>>,
    update: Mutex<()>,
    pub(crate) events: ArcSwap<Box<dyn AffinityEvents>>,
    /// The pool under the layer: removed endpoints' connections drain.
    pub(crate) control: OnceLock<PoolControl>,
    drained: Mutex<HashSet<SocketAddr>>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            services: ArcSwap::default(),
            update: Mutex::default(),
            events: ArcSwap::from_pointee(Box::new(())),
            control: OnceLock::new(),
            drained: Mutex::default(),
        }
    }
}

/// The endpoints of the services an affinity layer routes: a cheap,
/// cloneable handle (from [`AffinityLayer::endpoints`](crate::AffinityLayer::endpoints)).
///
/// A service is named `scheme://authority`, written as its requests write
/// it (`http://inventory.internal:8080`); requests to an authority with no
/// service here go to the pool unrouted. Changes take effect for the next
/// request; requests in flight finish where they are, and the connections
/// of a removed endpoint drain (closed as they come free).
///
/// ```
/// use tower_reuse_affinity::{AffinityConfig, AffinityLayer};
///
/// let layer = AffinityLayer::new(AffinityConfig::default()).unwrap();
/// let endpoints = layer.endpoints();
/// let a = "127.0.0.2:8080".parse().unwrap();
/// let b = "127.0.0.3:8080".parse().unwrap();
/// endpoints.set("http://inventory.internal:8080", [a, b]).unwrap();
/// endpoints.remove("http://inventory.internal:8080", b).unwrap();
/// assert_eq!(endpoints.get("http://inventory.internal:8080").unwrap(), vec![a]);
/// assert!(endpoints.set("inventory.internal", [a]).unwrap_err().is_invalid_service());
/// ```
///
/// # Feeding it from DNS or a registry
///
/// Call [`set`](Self::set) with every answer of a resolver (each A/AAAA
/// record with the service's port), or [`insert`](Self::insert) and
/// [`remove`](Self::remove) as a registry reports changes; a
/// `tower::discover::Discover` stream of addresses is applied by
/// [`discover`](Self::discover).
#[derive(Clone)]
pub struct Endpoints {
    pub(crate) registry: Arc<Registry>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("services", &self.registry.services.load().len())
            .finish()
    }
}

/// A service name's parts.
fn parse_service(service: &str) -> Result<(Scheme, Authority, String), Error> {
    let invalid = || Error::invalid_service(service);
    let uri: Uri = service.parse().map_err(|_| invalid())?;
    let scheme = uri.scheme().ok_or_else(invalid)?.clone();
    let authority = uri.authority().ok_or_else(invalid)?.clone();
    if (scheme != Scheme::HTTP && scheme != Scheme::HTTPS)
        || authority.host().is_empty()
        || authority.as_str().contains('@')
        || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
    {
        return Err(invalid());
    }
    let name = format!("{scheme}://{authority}");
    Ok((scheme, authority, name))
}

impl Endpoints {
    /// Replace `service`'s endpoints with `addrs` (an empty list leaves the
    /// service with none: its requests fail with
    /// [`Error::is_no_endpoints`](crate::Error::is_no_endpoints)).
    pub fn set(
        &self,
        service: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<(), Error> {
        let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        self.change(service, |_| addrs)
    }

    /// Add `addr` to `service`'s endpoints (creating the service).
    pub fn insert(&self, service: &str, addr: SocketAddr) -> Result<(), Error> {
        self.change(service, |mut addrs| {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
            addrs
        })
    }

    /// Remove `addr` from `service`'s endpoints.
    pub fn remove(&self, service: &str, addr: SocketAddr) -> Result<(), Error> {
        self.change(service, |mut addrs| {
            addrs.retain(|&a| a != addr);
            addrs
        })
    }

    /// Forget `service`: its requests go to the pool unrouted again.
    pub fn forget(&self, service: &str) -> Result<(), Error> {
        let (_, authority, _) = parse_service(service)?;
        let _one_at_a_time = lock(&self.registry.update);
        let mut services = HashMap::clone(&self.registry.services.load());
        if let Some(old) = services.remove(&authority) {
            self.drain(&old.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>());
        }
        self.registry.services.store(Arc::new(services));
        Ok(())
    }

    /// `service`'s endpoints now; an error for a service not registered.
    pub fn get(&self, service: &str) -> Result<Vec<SocketAddr>, Error> {
        let (_, authority, _) = parse_service(service)?;
        let services = self.registry.services.load();
        let set = services
            .get(&authority)
            .ok_or_else(|| Error::no_endpoints(service))?;
        Ok(set.endpoints.iter().map(|e| e.addr).collect())
    }

    /// Per service, per endpoint: load, health and counts now.
    pub fn snapshot(&self) -> AffinitySnapshot {
        let services = self.registry.services.load();
        let mut snapshot = AffinitySnapshot {
            services: services
                .values()
                .map(|set| ServiceSnapshot::of(set))
                .collect(),
        };
        snapshot.services.sort_by(|a, b| a.service.cmp(&b.service));
        snapshot
    }

    fn change(
        &self,
        service: &str,
        f: impl FnOnce(Vec<SocketAddr>) -> Vec<SocketAddr>,
    ) -> Result<(), Error> {
        let (scheme, authority, name) = parse_service(service)?;
        let registry = &self.registry;
        let _one_at_a_time = lock(&registry.update);
        let services = registry.services.load_full();
        let old = services.get(&authority);
        let before: Vec<SocketAddr> = old
            .map(|s| s.endpoints.iter().map(|e| e.addr).collect())
            .unwrap_or_default();
        let mut after = f(before.clone());
        dedup(&mut after);
        let kept: HashMap<SocketAddr, Arc<EndpointState>> = old
            .map(|s| s.endpoints.iter().map(|e| (e.addr, e.clone())).collect())
            .unwrap_or_default();
        let set = Arc::new(ServiceSet {
            name: old.map_or_else(|| Arc::from(name.as_str()), |s| s.name.clone()),
            scheme,
            endpoints: after
                .iter()
                .map(|&addr| {
                    kept.get(&addr)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(EndpointState::new(addr)))
                })
                .collect(),
            recent: old.map_or_else(|| Arc::new(RecentKeys::new()), |s| s.recent.clone()),
        });
        let mut next = HashMap::clone(&services);
        next.insert(authority, set.clone());
        registry.services.store(Arc::new(next));

        let added: Vec<SocketAddr> = after
            .iter()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        let removed: Vec<SocketAddr> = before
            .iter()
            .filter(|a| !after.contains(a))
            .copied()
            .collect();
        self.undrain(&added);
        self.drain(&removed);
        let events = registry.events.load();
        for (addrs, added) in [(&added, true), (&removed, false)] {
            for &endpoint in addrs {
                let event = EndpointChanged {
                    service: &set.name,
                    endpoint,
                    endpoints: after.len(),
                };
                if added {
                    events.on_endpoint_added(&event);
                } else {
                    events.on_endpoint_removed(&event);
                }
            }
        }
        if let Some(old) = old.filter(|_| !added.is_empty() || !removed.is_empty()) {
            let (mut moved, mut tracked) = (0, 0);
            for key in set.recent.keys() {
                tracked += 1;
                if old.home(key) != set.home(key) {
                    moved += 1;
                }
            }
            events.on_rebalance(&Rebalanced {
                service: &set.name,
                from: before.len(),
                to: after.len(),
                keys_moved: moved,
                keys_tracked: tracked,
            });
        }
        Ok(())
    }

    /// Let the connections to `addrs` close as they come free: the pool's
    /// kill switch for those targets (idle ones close now, busy ones when
    /// their requests end, none pre-warmed).
    fn drain(&self, addrs: &[SocketAddr]) {
        let Some(control) = self.registry.control.get() else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        lock(&self.registry.drained).extend(addrs);
        let drain = TargetConfig::default().reuse(false);
        for target in control.snapshot().targets {
            let target = target.target();
            if target.endpoint().is_some_and(|e| addrs.contains(&e.addr())) {
                // A drain configuration is valid over any pool-wide one.
                let _ = control.set_target_config(target, Some(drain.clone()));
            }
        }
    }

    /// Endpoints back in a service keep connections again.
    fn undrain(&self, addrs: &[SocketAddr]) {
        let Some(control) = self.registry.control.get() else {
            return;
        };
        let mut drained = lock(&self.registry.drained);
        let back: Vec<SocketAddr> = addrs
            .iter()
            .filter(|a| drained.remove(a))
            .copied()
            .collect();
        drop(drained);
        if back.is_empty() {
            return;
        }
        for target in control.snapshot().targets {
            let target = target.target();
            if target.endpoint().is_some_and(|e| back.contains(&e.addr())) {
                let _ = control.set_target_config(target, None);
            }
        }
    }
}

fn dedup(addrs: &mut Vec<SocketAddr>) {
    let mut seen = HashSet::new();
    addrs.retain(|a| seen.insert(*a));
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ServiceSnapshot {
    fn of(set: &ServiceSet) -> Self {
        let mut keys = vec![0usize; set.endpoints.len()];
        for key in set.recent.keys() {
            if let Some(i) = set
                .endpoints
                .iter()
                .enumerate()
                .max_by_key(|(_, e)| choice::score(key, e.id))
                .map(|(i, _)| i)
            {
                keys[i] += 1;
            }
        }
        ServiceSnapshot {
            service: set.name.to_string(),
            endpoints: set
                .endpoints
                .iter()
                .zip(keys)
                .map(|(e, keys_seen)| {
                    let health = e.health();
                    EndpointSnapshot {
                        addr: e.addr,
                        in_flight: e.in_flight.load(Ordering::Relaxed),
                        keys_seen,
                        ejected_until: health.ejected_until(),
                        ejections: e.ejections.load(Ordering::Relaxed),
                        requests: e.requests.load(Ordering::Relaxed),
                        failures: e.failures.load(Ordering::Relaxed),
                        warm_detours_to: e.detours_to.load(Ordering::Relaxed),
                        retries_from: e.retries_from.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }
}
