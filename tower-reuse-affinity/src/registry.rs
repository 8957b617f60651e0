//! The services and their endpoints: read on every request without a lock
//! (an `ArcSwap` of an immutable map), changed through [`Endpoints`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::Scheme;
use tower_reuse_pool::{PoolControl, Target, TargetConfig};

use crate::choice;
use crate::error::Error;
use crate::events::{EndpointChanged, Rebalanced};
use crate::services::{
    EndpointState, Events, RecentKeys, Schemes, ServiceSet, Services, service_key,
};
use crate::snapshot::{AffinitySnapshot, EndpointSnapshot, ServiceSnapshot};

/// The registry behind an [`Endpoints`] handle.
pub(crate) struct Registry {
    pub(crate) services: ArcSwap<Services>,
    /// Bumped by every change of `services`: a handle's last service is
    /// good while it stays the same.
    pub(crate) generation: AtomicU64,
    update: Mutex<()>,
    pub(crate) events: Arc<Events>,
    /// The pool under the layer: removed endpoints' connections drain.
    pub(crate) control: OnceLock<PoolControl>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            services: ArcSwap::default(),
            generation: AtomicU64::new(0),
            update: Mutex::default(),
            events: Arc::new(ArcSwap::from_pointee(Box::new(()))),
            control: OnceLock::new(),
        }
    }

    /// The service `set` as it is now (it may have changed since `set` was
    /// read).
    pub(crate) fn current(&self, set: &ServiceSet) -> Option<Arc<ServiceSet>> {
        self.services
            .load()
            .get(&*set.key)
            .and_then(|s| s.get(&set.scheme))
            .cloned()
    }
}

/// The endpoints of the services an affinity layer routes: a cheap,
/// cloneable handle (from [`AffinityLayer::endpoints`](crate::AffinityLayer::endpoints)).
///
/// A service is named `scheme://authority` (`http://inventory.internal:8080`);
/// `http` and `https` are two services, and a scheme's default port may be
/// written or not. Requests to an authority with no service here go to the
/// pool unrouted. Changes take effect for the next request; requests in
/// flight finish where they are, and the pool retires a removed endpoint's
/// connections of this service (closed as they come free, forgotten once
/// none is open; see `PoolControl::retire`).
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
/// [`discover`](Self::discover). Keep the last good answer when a lookup
/// fails or comes back empty: `set` with no address leaves the service
/// with none, and its requests fail.
///
/// Event hooks are called while the change is applied: a hook must not
/// change the endpoints itself.
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

/// A service name's parts: its scheme, its authority as the map keys it,
/// and its name.
fn parse_service(service: &str) -> Result<(Scheme, String, String), Error> {
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
    let key = service_key(&scheme, authority.as_str()).ok_or_else(invalid)?;
    let name = format!("{scheme}://{key}");
    Ok((scheme, key, name))
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
            addrs.push(addr);
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
        let (scheme, key, _) = parse_service(service)?;
        let _one_at_a_time = lock(&self.registry.update);
        let mut services = Services::clone(&self.registry.services.load());
        let old = services
            .get_mut(key.as_str())
            .and_then(|s| s.slot(&scheme).take());
        if services.get(key.as_str()).is_some_and(Schemes::is_empty) {
            services.remove(key.as_str());
        }
        self.registry.services.store(Arc::new(services));
        self.registry.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = old {
            let addrs: Vec<SocketAddr> = old.endpoints.iter().map(|e| e.addr).collect();
            self.retire(&old, &addrs);
            let events = self.registry.events.load();
            for (left, &endpoint) in addrs.iter().enumerate().rev() {
                events.on_endpoint_removed(&EndpointChanged {
                    service: &old.name,
                    endpoint,
                    endpoints: left,
                });
            }
        }
        Ok(())
    }

    /// `service`'s endpoints now; an error for a service not registered.
    pub fn get(&self, service: &str) -> Result<Vec<SocketAddr>, Error> {
        let (scheme, key, _) = parse_service(service)?;
        let services = self.registry.services.load();
        let set = services
            .get(key.as_str())
            .and_then(|s| s.get(&scheme))
            .ok_or_else(|| Error::no_endpoints(service))?;
        Ok(set.endpoints.iter().map(|e| e.addr).collect())
    }

    /// Register `service` with no endpoint if it is not registered yet
    /// (its requests fail, typed, rather than go unrouted).
    pub(crate) fn ensure(&self, service: &str) -> Result<(), Error> {
        self.change(service, |addrs| addrs)
    }

    /// Per service, per endpoint: load, health and counts now.
    pub fn snapshot(&self) -> AffinitySnapshot {
        let services = self.registry.services.load();
        let mut snapshot = AffinitySnapshot {
            services: services
                .values()
                .flat_map(|s| s.http.iter().chain(s.https.iter()))
                .map(|set| ServiceSnapshot::of(set))
                .collect(),
        };
        snapshot.services.sort_by(|a, b| a.service.cmp(&b.service));
        snapshot
    }

    pub(crate) fn change(
        &self,
        service: &str,
        f: impl FnOnce(Vec<SocketAddr>) -> Vec<SocketAddr>,
    ) -> Result<(), Error> {
        let (scheme, key, name) = parse_service(service)?;
        let registry = &self.registry;
        let _one_at_a_time = lock(&registry.update);
        let services = registry.services.load_full();
        let old = services
            .get(key.as_str())
            .and_then(|s| s.get(&scheme))
            .cloned();
        let before: Vec<SocketAddr> = old
            .as_ref()
            .map(|s| s.endpoints.iter().map(|e| e.addr).collect())
            .unwrap_or_default();
        let mut after = f(before.clone());
        dedup(&mut after);
        let kept: HashMap<SocketAddr, Arc<EndpointState>> = old
            .as_ref()
            .map(|s| s.endpoints.iter().map(|e| (e.addr, e.clone())).collect())
            .unwrap_or_default();
        let set = Arc::new(ServiceSet {
            name: old
                .as_ref()
                .map_or_else(|| Arc::from(name.as_str()), |s| s.name.clone()),
            scheme: scheme.clone(),
            key: Arc::from(key.as_str()),
            endpoints: after
                .iter()
                .map(|&addr| {
                    kept.get(&addr)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(EndpointState::new(addr)))
                })
                .collect(),
            recent: old
                .as_ref()
                .map_or_else(|| Arc::new(RecentKeys::new()), |s| s.recent.clone()),
            ejections: old
                .as_ref()
                .map_or_else(Arc::default, |s| s.ejections.clone()),
            events: registry.events.clone(),
        });
        let mut next = Services::clone(&services);
        *next.entry(key.into()).or_default().slot(&scheme) = Some(set.clone());
        registry.services.store(Arc::new(next));
        registry.generation.fetch_add(1, Ordering::AcqRel);

        let (before_set, after_set): (HashSet<_>, HashSet<_>) =
            (before.iter().collect(), after.iter().collect());
        let added: Vec<SocketAddr> = after
            .iter()
            .filter(|a| !before_set.contains(a))
            .copied()
            .collect();
        let removed: Vec<SocketAddr> = before
            .iter()
            .filter(|a| !after_set.contains(a))
            .copied()
            .collect();
        self.unretire(&set, &added);
        self.retire(&set, &removed);
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
            for key in set.recent.keys().take(REBALANCE_SAMPLE) {
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

    /// Have the pool retire `set`'s targets at `addrs` (every partition):
    /// their connections close as they come free, none opens ahead, and
    /// the pool forgets them once none is open. Another service's
    /// connections to the same address are left alone.
    fn retire(&self, set: &ServiceSet, addrs: &[SocketAddr]) {
        let Some(control) = self.registry.control.get().filter(|_| !addrs.is_empty()) else {
            return;
        };
        for target in control.snapshot().targets {
            let target = target.target();
            if serves(set, target) && target.endpoint().is_some_and(|e| addrs.contains(&e.addr())) {
                control.retire(target);
            }
        }
    }

    /// Endpoints back in `set` keep connections again: a retirement still
    /// in force is undone.
    fn unretire(&self, set: &ServiceSet, addrs: &[SocketAddr]) {
        let Some(control) = self.registry.control.get().filter(|_| !addrs.is_empty()) else {
            return;
        };
        let retired = TargetConfig::default().reuse(false);
        for target in control.snapshot().targets {
            let target = target.target();
            if serves(set, target)
                && target.endpoint().is_some_and(|e| addrs.contains(&e.addr()))
                && control.target_config(target).as_ref() == Some(&retired)
            {
                let _ = control.set_target_config(target, None);
            }
        }
    }
}

/// How many recent keys a rebalance event checks: a sample, so that a
/// change costs the same however many keys were seen.
const REBALANCE_SAMPLE: usize = 256;

/// Whether `target` is one of `set`'s (any endpoint, any partition).
fn serves(set: &ServiceSet, target: &Target) -> bool {
    target.scheme() == &set.scheme
        && service_key(&set.scheme, target.authority().as_str()).as_deref() == Some(&*set.key)
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
