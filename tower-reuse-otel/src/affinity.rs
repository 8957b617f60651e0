//! `OtelAffinityEvents`: the affinity layer's hook, recording how a
//! service's requests are routed over its endpoints.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::uri::{Authority, Scheme};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
use tower_reuse_affinity::events::{
    AffinityEvents, Demoted, Ejected, EndpointChanged, Promoted, Rebalanced, Retried, Returned,
    WarmDetour,
};

use crate::attributes::{
    self, AFFINITY_CHANGE, ERROR_TYPE, NETWORK_PEER_ADDRESS, NETWORK_PEER_PORT, TIER_REASON,
};

/// Bucket boundaries for `tower_reuse.affinity.rebalance.moved`: the least
/// a change can move is `1/(n+1)` of the keys when one endpoint joins `n`
/// (a third to a twentieth for 2 to 19 endpoints), and up to all of them
/// when most endpoints go.
const MOVED_BOUNDARIES: [f64; 11] = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.65, 0.8, 1.0];

/// The affinity layer's [`AffinityEvents`] hook as OpenTelemetry metrics
/// (see the [crate docs](crate) for every instrument): endpoints joining
/// and leaving, the share of keys each change moved, ejections and
/// returns, warm detours and retries, each by service and endpoint.
///
/// The logical service is `server.address` and `server.port` (with
/// `url.scheme`), an endpoint is `network.peer.address` and
/// `network.peer.port`. No affinity key, header value or partition is
/// ever recorded: the events carry none.
///
/// Clones record into the same instruments and share the count of
/// endpoints out of service, so one hook may serve several layers.
///
/// ```
/// use opentelemetry::global;
/// use tower_reuse_affinity::{AffinityConfig, AffinityLayer};
/// use tower_reuse_otel::OtelAffinityEvents;
///
/// let layer = AffinityLayer::new(AffinityConfig::default())
///     .unwrap()
///     .events(OtelAffinityEvents::new(&global::meter("my-client")));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct OtelAffinityEvents {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: UpDownCounter<i64>,
    ejected_now: UpDownCounter<i64>,
    changes: Counter<u64>,
    moved: Histogram<f64>,
    ejections: Counter<u64>,
    returns: Counter<u64>,
    warm_detours: Counter<u64>,
    retries: Counter<u64>,
    dedicated: UpDownCounter<i64>,
    promotions: Counter<u64>,
    demotions: Counter<u64>,
    /// The endpoints out of service now (ejected or on probation), by
    /// service: an endpoint ejected again after a failed probe is counted
    /// once, and one removed while out leaves the count.
    out: Mutex<HashSet<(Box<str>, SocketAddr)>>,
}

impl OtelAffinityEvents {
    /// A hook recording with `meter`.
    pub fn new(meter: &Meter) -> Self {
        let inner = Inner {
            endpoints: meter
                .i64_up_down_counter("tower_reuse.affinity.endpoints")
                .with_description("Endpoints of each routed service.")
                .with_unit("{endpoint}")
                .build(),
            ejected_now: meter
                .i64_up_down_counter("tower_reuse.affinity.endpoints.ejected")
                .with_description(
                    "Endpoints of each routed service out of service now (ejected or on probation).",
                )
                .with_unit("{endpoint}")
                .build(),
            changes: meter
                .u64_counter("tower_reuse.affinity.endpoint.changes")
                .with_description("Endpoints added to or removed from a service.")
                .with_unit("{endpoint}")
                .build(),
            moved: meter
                .f64_histogram("tower_reuse.affinity.rebalance.moved")
                .with_description(
                    "Per change of a service's endpoints, the share of its recently seen keys whose endpoint changed.",
                )
                .with_unit("1")
                .with_boundaries(MOVED_BOUNDARIES.to_vec())
                .build(),
            ejections: meter
                .u64_counter("tower_reuse.affinity.ejections")
                .with_description("Endpoints ejected after consecutive failures.")
                .with_unit("{ejection}")
                .build(),
            returns: meter
                .u64_counter("tower_reuse.affinity.returns")
                .with_description("Ejected endpoints back in service after a successful probe.")
                .with_unit("{return}")
                .build(),
            warm_detours: meter
                .u64_counter("tower_reuse.affinity.warm_detours")
                .with_description(
                    "Requests sent one step down their key's order because the first choice had no free connection.",
                )
                .with_unit("{request}")
                .build(),
            retries: meter
                .u64_counter("tower_reuse.affinity.retries")
                .with_description("Requests sent again to another endpoint because theirs was down.")
                .with_unit("{retry}")
                .build(),
            dedicated: meter
                .i64_up_down_counter("tower_reuse.affinity.tier.dedicated")
                .with_description("Keys with a dedicated pool now (hot tier).")
                .with_unit("{pool}")
                .build(),
            promotions: meter
                .u64_counter("tower_reuse.affinity.tier.promotions")
                .with_description("Keys given a dedicated pool.")
                .with_unit("{promotion}")
                .build(),
            demotions: meter
                .u64_counter("tower_reuse.affinity.tier.demotions")
                .with_description("Keys sent back to the shared pool, by reason.")
                .with_unit("{demotion}")
                .build(),
            out: Mutex::default(),
        };
        OtelAffinityEvents {
            inner: Arc::new(inner),
        }
    }

    /// An endpoint added (or removed): the service's count, and the change.
    fn changed(&self, event: &EndpointChanged<'_>, added: bool) {
        let i = &self.inner;
        let (delta, change) = if added { (1, "added") } else { (-1, "removed") };
        i.endpoints.add(delta, &service(event.service));
        let change = KeyValue::new(AFFINITY_CHANGE, change);
        i.changes
            .add(1, &at_endpoint(event.service, event.endpoint, [change]));
    }

    /// Marks `endpoint` of `service` out of service (or back in): whether
    /// that changed anything, so that each endpoint is counted once.
    fn mark_out(&self, service: &str, endpoint: SocketAddr, out: bool) -> bool {
        let mut set = self
            .inner
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (Box::from(service), endpoint);
        if out {
            set.insert(key)
        } else {
            set.remove(&key)
        }
    }
}

impl fmt::Debug for OtelAffinityEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelAffinityEvents").finish_non_exhaustive()
    }
}

/// `server.address`, `server.port` and `url.scheme` of a service named
/// `scheme://authority`.
fn service(name: &str) -> Vec<KeyValue> {
    let (scheme, authority) = name.split_once("://").unwrap_or(("", name));
    let scheme = scheme.parse::<Scheme>().ok();
    match authority.parse::<Authority>() {
        Ok(authority) => attributes::server(
            scheme.as_ref().map(Scheme::as_str),
            Some(authority.host()),
            authority.port_u16(),
        ),
        Err(_) => attributes::server(scheme.as_ref().map(Scheme::as_str), None, None),
    }
}

/// The service's attributes with `network.peer.address` and
/// `network.peer.port` of `endpoint`, and `extra`.
fn at_endpoint(
    name: &str,
    endpoint: SocketAddr,
    extra: impl IntoIterator<Item = KeyValue>,
) -> Vec<KeyValue> {
    let mut attributes = service(name);
    attributes.push(KeyValue::new(
        NETWORK_PEER_ADDRESS,
        endpoint.ip().to_string(),
    ));
    attributes.push(KeyValue::new(NETWORK_PEER_PORT, i64::from(endpoint.port())));
    attributes.extend(extra);
    attributes
}

impl AffinityEvents for OtelAffinityEvents {
    fn on_endpoint_added(&self, event: &EndpointChanged<'_>) {
        self.changed(event, true);
    }

    fn on_endpoint_removed(&self, event: &EndpointChanged<'_>) {
        if self.mark_out(event.service, event.endpoint, false) {
            self.inner.ejected_now.add(-1, &service(event.service));
        }
        self.changed(event, false);
    }

    fn on_rebalance(&self, event: &Rebalanced<'_>) {
        if event.keys_tracked == 0 {
            return;
        }
        let moved = event.keys_moved as f64 / event.keys_tracked as f64;
        self.inner.moved.record(moved, &service(event.service));
    }

    fn on_ejected(&self, event: &Ejected<'_>) {
        let i = &self.inner;
        if self.mark_out(event.service, event.endpoint, true) {
            i.ejected_now.add(1, &service(event.service));
        }
        i.ejections
            .add(1, &at_endpoint(event.service, event.endpoint, []));
    }

    fn on_returned(&self, event: &Returned<'_>) {
        let i = &self.inner;
        if self.mark_out(event.service, event.endpoint, false) {
            i.ejected_now.add(-1, &service(event.service));
        }
        i.returns
            .add(1, &at_endpoint(event.service, event.endpoint, []));
    }

    fn on_warm_detour(&self, event: &WarmDetour<'_>) {
        self.inner
            .warm_detours
            .add(1, &at_endpoint(event.service, event.from, []));
    }

    fn on_retry(&self, event: &Retried<'_>) {
        let error = KeyValue::new(ERROR_TYPE, attributes::pool_error(event.error));
        self.inner
            .retries
            .add(1, &at_endpoint(event.service, event.from, [error]));
    }

    fn on_promoted(&self, event: &Promoted<'_>) {
        let attributes = service(event.service);
        self.inner.dedicated.add(1, &[]);
        self.inner.promotions.add(1, &attributes);
    }

    fn on_demoted(&self, event: &Demoted<'_>) {
        let mut attributes = service(event.service);
        attributes.push(KeyValue::new(TIER_REASON, event.reason.as_str()));
        self.inner.dedicated.add(-1, &[]);
        self.inner.demotions.add(1, &attributes);
    }
}
