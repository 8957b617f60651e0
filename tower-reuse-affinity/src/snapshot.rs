//! What the affinity layer holds now, per service and endpoint.

use std::net::SocketAddr;

use tokio::time::Instant;

/// Every routed service's endpoints now.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AffinitySnapshot {
    /// By service name.
    pub services: Vec<ServiceSnapshot>,
}

impl AffinitySnapshot {
    /// The service named `scheme://authority`, if it is routed.
    pub fn service(&self, name: &str) -> Option<&ServiceSnapshot> {
        self.services.iter().find(|s| s.service == name)
    }
}

/// One service's endpoints.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceSnapshot {
    /// `scheme://authority`.
    pub service: String,
    /// In the order they were added.
    pub endpoints: Vec<EndpointSnapshot>,
}

impl ServiceSnapshot {
    /// The endpoint at `addr`.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }
}

/// One endpoint's load, health and counts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests sent to it and not yet answered (head received).
    pub in_flight: usize,
    /// Recently seen keys (of a bounded sample) whose first choice it is.
    pub keys_seen: usize,
    /// Ejected (or on probation) until then.
    pub ejected_until: Option<Instant>,
    /// Times ejected.
    pub ejections: u64,
    /// Requests sent to it (retries included).
    pub requests: u64,
    /// Failures counted toward ejection.
    pub failures: u64,
    /// Requests that came to it by a warm detour.
    pub warm_detours_to: u64,
    /// Requests that failed here and were retried elsewhere.
    pub retries_from: u64,
}
