//! `AffinityEvents`: what the affinity layer reports, for metrics and logs.
//!
//! Every method has an empty default; `()` ignores everything. Events are
//! called on the request path or on the thread changing the endpoints:
//! keep them cheap (count, record, never block).

use std::net::SocketAddr;
use std::time::Duration;

/// Hooks for the affinity layer's events.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_reuse_affinity::events::{AffinityEvents, Ejected};
///
/// #[derive(Default)]
/// struct CountEjections(AtomicU64);
///
/// impl AffinityEvents for CountEjections {
///     fn on_ejected(&self, _: &Ejected<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
pub trait AffinityEvents: Send + Sync + 'static {
    /// An endpoint joined a service.
    fn on_endpoint_added(&self, _event: &EndpointChanged<'_>) {}
    /// An endpoint left a service; its connections drain.
    fn on_endpoint_removed(&self, _event: &EndpointChanged<'_>) {}
    /// A service's endpoint set changed: how many of its recent keys now
    /// go elsewhere.
    fn on_rebalance(&self, _event: &Rebalanced<'_>) {}
    /// An endpoint was ejected after consecutive failures.
    fn on_ejected(&self, _event: &Ejected<'_>) {}
    /// An ejected endpoint's probe succeeded: it is back in service.
    fn on_returned(&self, _event: &Returned<'_>) {}
    /// A request went one step down its key's order, to a warm endpoint,
    /// because its first choice had no free connection.
    fn on_warm_detour(&self, _event: &WarmDetour<'_>) {}
    /// A request whose endpoint was down was sent again to another.
    fn on_retry(&self, _event: &Retried<'_>) {}
    /// A key got a dedicated pool (hot tier).
    fn on_promoted(&self, _event: &Promoted<'_>) {}
    /// A key went back to the shared pool (cold tier).
    fn on_demoted(&self, _event: &Demoted<'_>) {}
}

impl AffinityEvents for () {}

/// A shared hook: keep one `Arc` to read what it recorded.
impl<T: AffinityEvents + ?Sized> AffinityEvents for std::sync::Arc<T> {
    fn on_endpoint_added(&self, event: &EndpointChanged<'_>) {
        (**self).on_endpoint_added(event)
    }
    fn on_endpoint_removed(&self, event: &EndpointChanged<'_>) {
        (**self).on_endpoint_removed(event)
    }
    fn on_rebalance(&self, event: &Rebalanced<'_>) {
        (**self).on_rebalance(event)
    }
    fn on_ejected(&self, event: &Ejected<'_>) {
        (**self).on_ejected(event)
    }
    fn on_returned(&self, event: &Returned<'_>) {
        (**self).on_returned(event)
    }
    fn on_warm_detour(&self, event: &WarmDetour<'_>) {
        (**self).on_warm_detour(event)
    }
    fn on_retry(&self, event: &Retried<'_>) {
        (**self).on_retry(event)
    }
    fn on_promoted(&self, event: &Promoted<'_>) {
        (**self).on_promoted(event)
    }
    fn on_demoted(&self, event: &Demoted<'_>) {
        (**self).on_demoted(event)
    }
}

/// An endpoint added to or removed from a service.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EndpointChanged<'a> {
    /// The logical service, `scheme://authority`.
    pub service: &'a str,
    /// The endpoint's address.
    pub endpoint: SocketAddr,
    /// The service's endpoints after the change.
    pub endpoints: usize,
}

/// A service's endpoint set changed.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Rebalanced<'a> {
    /// The logical service.
    pub service: &'a str,
    /// Endpoints before the change.
    pub from: usize,
    /// Endpoints after the change.
    pub to: usize,
    /// Recently seen keys (a bounded sample) whose first endpoint changed.
    pub keys_moved: usize,
    /// Recently seen keys in the sample.
    pub keys_tracked: usize,
}

/// An endpoint ejected.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Ejected<'a> {
    /// The logical service.
    pub service: &'a str,
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// Consecutive failures that ejected it (1 for a failed probe).
    pub failures: u32,
    /// Its ejections in a row, this one included.
    pub times: u32,
    /// How long it is out before its probe.
    pub duration: Duration,
}

/// An endpoint back in service.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Returned<'a> {
    /// The logical service.
    pub service: &'a str,
    /// The endpoint.
    pub endpoint: SocketAddr,
}

/// A warm detour.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct WarmDetour<'a> {
    /// The logical service.
    pub service: &'a str,
    /// The key's first choice, with no free connection.
    pub from: SocketAddr,
    /// The next endpoint of its order, which had one.
    pub to: SocketAddr,
}

/// A retry on another endpoint.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Retried<'a> {
    /// The logical service.
    pub service: &'a str,
    /// The endpoint that failed.
    pub from: SocketAddr,
    /// The endpoint tried next.
    pub to: SocketAddr,
    /// The failure, as the pool reported it.
    pub error: &'a tower_reuse_pool::Error,
}

/// A key's requests got a pool of their own: their rate held at or above
/// `promote_rps` over the promote window.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Promoted<'a> {
    /// `scheme://authority` of the key's requests (never its partition).
    pub service: &'a str,
    /// Its requests per second over `window`.
    pub rate: f64,
    /// The window the rate is measured over.
    pub window: Duration,
    /// The most requests in flight at once over the promote window: the
    /// warm connections its pool keeps.
    pub peak_concurrency: u32,
    /// Slots of the pool's budget reserved for it (none without a budget,
    /// or when the dedicated pools' share of it is spent).
    pub reserved: Option<usize>,
}

/// A key's requests went back to the shared pool; its pool's idle
/// connections close now, busy ones when their requests end.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Demoted<'a> {
    /// `scheme://authority` of the key's requests (never its partition).
    pub service: &'a str,
    /// Why.
    pub reason: DemoteReason,
    /// Its requests per second over `window`.
    pub rate: f64,
    /// The window the rate is measured over (the demote window, or the
    /// promote window for a displacement).
    pub window: Duration,
    /// How long it had its own pool.
    pub dedicated_for: Duration,
}

/// Why a key went back to the shared pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DemoteReason {
    /// Its rate fell below `demote_rps` over the demote window.
    Cold,
    /// No request for `idle_retire_after`.
    Idle,
    /// Every dedicated pool was taken and a hotter key needed one.
    Displaced,
}

impl DemoteReason {
    /// A short snake_case name, for metrics attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            DemoteReason::Cold => "cold",
            DemoteReason::Idle => "idle",
            DemoteReason::Displaced => "displaced",
        }
    }
}
