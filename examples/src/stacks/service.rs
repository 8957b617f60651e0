//! Stacks that route one logical service over several endpoints:
//! `hyper-util+p2c`, and `reuse` as the affinity layer over the pool (in
//! the affinity scenarios; `reuse+affinity` is the same over one endpoint).

use std::net::SocketAddr;
use std::time::Duration;

use tower_layer::Layer;
use tower_reuse_affinity::{
    Affinity, AffinityConfig, AffinityKey, AffinityLayer, EndpointSnapshot,
};
use tower_reuse_pool::PoolControl;

use super::{
    Inner, LabConnector, P2c, Protocol, Stack, StackError, StackKind, pool_layer, reuse_pool,
};
use crate::server::X_AFFINITY_KEY;
use crate::target::Target;

/// The `reuse` stacks' affinity layer: the key from `x-affinity-key`, the
/// layer's defaults, but for ejection: 250 ms growing to 1 s at most
/// (instead of 30 s to 300 s), so that an endpoint's return within a
/// scenario's run is seen.
pub(super) fn affinity_layer() -> Result<AffinityLayer, StackError> {
    let config = AffinityConfig::default()
        .key(AffinityKey::header(X_AFFINITY_KEY.as_str()))
        .ejection_time(Duration::from_millis(250), Duration::from_secs(1));
    AffinityLayer::new(config).map_err(|e| StackError::new(format!("invalid affinity config: {e}")))
}

/// Registers `target`'s authority, an IP address and port, as a service
/// whose one endpoint is that address (`reuse+affinity`).
pub(super) fn one_endpoint<S>(client: &Affinity<S>, target: &Target) -> Result<(), StackError> {
    let addr: SocketAddr = target
        .uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default()
        .parse()
        .map_err(|_| {
            StackError::new(format!(
                "reuse+affinity: {} is not an IP address and port",
                target.uri
            ))
        })?;
    set(client, target, &[addr])
}

fn set<S>(
    client: &Affinity<S>,
    service: &Target,
    endpoints: &[SocketAddr],
) -> Result<(), StackError> {
    client
        .endpoints()
        .set(&service_name(service), endpoints.iter().copied())
        .map_err(|e| StackError::new(format!("setting {}'s endpoints: {e}", service.uri)))
}

/// `scheme://authority`, as the affinity layer names a service.
fn service_name(service: &Target) -> String {
    format!(
        "{}://{}",
        service.uri.scheme_str().unwrap_or("http"),
        service.uri.authority().map_or("", |a| a.as_str())
    )
}

/// Requests the pool retried plus those the affinity layer sent again to
/// another endpoint.
pub(super) fn retries<S>(client: &Affinity<S>, pool: &PoolControl) -> u64 {
    pool.snapshot().total(|t| t.retries()) + total(client, |e| e.retries_from)
}

/// `count` of every endpoint of every service, added up.
fn total<S>(client: &Affinity<S>, count: fn(&EndpointSnapshot) -> u64) -> u64 {
    client
        .snapshot()
        .services
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(count)
        .sum()
}

impl Stack {
    /// Builds `kind` for a logical service with several endpoints
    /// ([`Stack::set_endpoints`]), HTTP/1.1: `hyper-util+p2c`, or `reuse`
    /// (the affinity layer over the pool, as `reuse+affinity`). No
    /// endpoint yet.
    pub fn build_for_service(
        kind: StackKind,
        tls: rustls::ClientConfig,
        service: &Target,
        policy: Option<&tower_reuse_pool::PoolConfig>,
    ) -> Result<Self, StackError> {
        let protocol = Protocol::Http1;
        let connector = LabConnector::new(protocol, tls.clone());
        let connector_stats = connector.stats().clone();
        let inner = match kind {
            StackKind::HyperUtilP2c => Inner::P2c(P2c::new(connector)),
            StackKind::Reuse | StackKind::ReuseAffinity => {
                let layer = pool_layer(kind, protocol, service, policy)?;
                let pool = reuse_pool(layer, protocol, tls, &connector_stats);
                let control = pool.control();
                Inner::ReuseAffinity(affinity_layer()?.layer(pool), control)
            }
            _ => {
                return Err(StackError::new(format!(
                    "{kind} does not route a service over endpoints"
                )));
            }
        };
        Ok(Self::from_parts(kind, protocol, connector_stats, inner))
    }

    /// Makes `endpoints` the endpoints of the logical `service` (requests
    /// go to `service`'s URI; the stack picks the endpoint). An error for
    /// a stack without endpoints.
    pub fn set_endpoints(
        &self,
        service: &Target,
        endpoints: &[SocketAddr],
    ) -> Result<(), StackError> {
        match &self.inner {
            Inner::P2c(p2c) => p2c.set_endpoints(service, endpoints),
            Inner::ReuseAffinity(client, _) => set(client, service, endpoints),
            _ => Err(StackError::new(format!(
                "{}: the stack has no endpoints to set",
                self.kind
            ))),
        }
    }

    /// Endpoint ejections so far (the affinity layer's count, every
    /// endpoint of every service); `None` for a stack that does not eject
    /// endpoints (`hyper-util+p2c`: tower's balancer drops an endpoint only
    /// when its client is not ready, and hyper-util's always is).
    pub fn ejections(&self) -> Option<u64> {
        match &self.inner {
            Inner::ReuseAffinity(client, _) => Some(total(client, |e| e.ejections)),
            _ => None,
        }
    }

    /// Requests the affinity layer sent one step down their key's order to
    /// a warm endpoint; `None` for a stack without the affinity layer.
    pub fn warm_detours(&self) -> Option<u64> {
        match &self.inner {
            Inner::ReuseAffinity(client, _) => Some(total(client, |e| e.warm_detours_to)),
            _ => None,
        }
    }
}
