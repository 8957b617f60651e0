//! `PoolControl`: read the pool's state and change its knobs at run time.

use std::fmt;
use std::sync::Arc;

use http::Request;
use tokio::time::Instant;

use crate::config::{ConfigError, PoolConfig, TargetConfig};
use crate::conn::{ConnId, Protocol};
use crate::endpoint::Endpoint;
use crate::events::CloseReason;
use crate::target::{Partition, Target, TargetKey};
use crate::target_pool::{Group, WarmUp};

/// Counts for one target at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TargetSnapshot {
    pub(crate) target: Target,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) idle: usize,
    pub(crate) active: usize,
    pub(crate) connecting: usize,
    pub(crate) dedicated: usize,
    pub(crate) closing: usize,
    pub(crate) waiting: usize,
    pub(crate) opened: u64,
    pub(crate) reused: u64,
    pub(crate) checkouts: u64,
    pub(crate) connect_errors: u64,
    pub(crate) retries: u64,
    pub(crate) stale_skips: u64,
    pub(crate) refused: u64,
    pub(crate) requeued: u64,
    pub(crate) calm: u64,
    pub(crate) calm_backoff: Option<Instant>,
    pub(crate) http2: Vec<Http2Snapshot>,
    pub(crate) tls_full: u64,
    pub(crate) tls_resumed: u64,
    pub(crate) closed: [u64; CloseReason::ALL.len()],
}

impl TargetSnapshot {
    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// The protocol its connections speak, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }
    /// Open connections serving nothing.
    pub fn idle(&self) -> usize {
        self.idle
    }
    /// Open connections serving requests (or draining).
    pub fn active(&self) -> usize {
        self.active
    }
    /// Connects in flight.
    pub fn connecting(&self) -> usize {
        self.connecting
    }
    /// Connections of their own given to single requests while reuse is
    /// off (the kill switch), not counted in `active`.
    pub fn dedicated(&self) -> usize {
        self.dedicated
    }
    /// Connections the pool closed whose sockets are not closed yet: they
    /// still count against the budget, as the server still sees them.
    pub fn closing(&self) -> usize {
        self.closing
    }
    /// Requests waiting for a connection.
    pub fn waiting(&self) -> usize {
        self.waiting
    }
    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened
    }
    /// Checkouts that got a connection which had served before.
    pub fn reused(&self) -> u64 {
        self.reused
    }
    /// Checkouts so far.
    pub fn checkouts(&self) -> u64 {
        self.checkouts
    }
    /// Connects that failed.
    pub fn connect_errors(&self) -> u64 {
        self.connect_errors
    }
    /// Requests retried on another connection.
    pub fn retries(&self) -> u64 {
        self.retries
    }
    /// Requests that found their pooled connection closed before anything
    /// was written and moved on to another (not retries: nothing reached a
    /// server).
    pub fn stale_skips(&self) -> u64 {
        self.stale_skips
    }

    /// Streams an HTTP/2 server refused (`REFUSED_STREAM`): it never
    /// processed them. Each lowered its connection's effective limit.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Requests queued again because the server never processed them
    /// (refused, or above a graceful GOAWAY's last stream id). Not retries:
    /// a request may be queued again several times, up to its bound, and
    /// still have its one retry.
    pub fn requeued(&self) -> u64 {
        self.requeued
    }

    /// `ENHANCE_YOUR_CALM` signals from the target's HTTP/2 servers, on a
    /// stream or in a GOAWAY.
    pub fn calm(&self) -> u64 {
        self.calm
    }

    /// Until when connects to the target wait after `ENHANCE_YOUR_CALM`
    /// (possibly past).
    pub fn calm_backoff_until(&self) -> Option<Instant> {
        self.calm_backoff
    }

    /// The target's open HTTP/2 connections, in no particular order.
    pub fn http2_connections(&self) -> &[Http2Snapshot] {
        &self.http2
    }

    /// Connections opened with a full TLS handshake (with or without a retry).
    pub fn tls_full(&self) -> u64 {
        self.tls_full
    }

    /// Connections opened with a resumed TLS session.
    pub fn tls_resumed(&self) -> u64 {
        self.tls_resumed
    }

    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }
    /// Connections closed, for every reason.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }
}

/// One HTTP/2 connection at one moment: its streams and limits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Http2Snapshot {
    pub(crate) id: ConnId,
    pub(crate) streams: usize,
    pub(crate) advertised_limit: usize,
    pub(crate) effective_limit: usize,
    pub(crate) refused: u64,
    pub(crate) release_lag: Option<std::time::Duration>,
    pub(crate) draining: bool,
}

impl Http2Snapshot {
    /// The connection.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// Streams checked out on it now.
    pub fn streams(&self) -> usize {
        self.streams
    }
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` (before its SETTINGS
    /// arrive: what the pool assumes, one stream or the target's last).
    pub fn advertised_limit(&self) -> usize {
        self.advertised_limit
    }
    /// The streams the pool puts on it: the advertised limit, or less while
    /// a limit learned from the server's refusals holds (stepped back up
    /// one stream at a time).
    pub fn effective_limit(&self) -> usize {
        self.effective_limit
    }
    /// Streams the server refused on it.
    pub fn refused(&self) -> u64 {
        self.refused
    }
    /// How long the pool holds a stream slot after its stream ended,
    /// learned from refusals the server's lingering slots explain (it
    /// shrinks by a quarter every 10 ms without one).
    pub fn release_lag(&self) -> Option<std::time::Duration> {
        self.release_lag
    }
    /// Whether it takes no new stream (GOAWAY, `ENHANCE_YOUR_CALM`, retiring).
    pub fn draining(&self) -> bool {
        self.draining
    }
}

/// The pool's state: one snapshot per target.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// Per-target counts, in no particular order.
    pub targets: Vec<TargetSnapshot>,
    /// The pool-wide connection budget.
    pub budget: BudgetSnapshot,
    pub(crate) reaper_wakeups: u64,
}

/// The pool-wide connection budget ([`PoolConfig::max_connections`]) now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetSnapshot {
    /// The budget, if one is set.
    pub limit: Option<usize>,
    /// Connections open or opening, across every target (counted with or
    /// without a budget); a slot being handed to a waiting target counts.
    pub connections: usize,
    /// Targets waiting for a slot.
    pub waiting_targets: usize,
    /// Each reservation, in no particular order.
    pub reservations: Vec<ReservationSnapshot>,
}

/// One reservation of the budget: for one target, or for every target of
/// one partition together.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReservationSnapshot {
    /// The target it is for, if set with `set_target_config`.
    pub target: Option<Target>,
    /// The service it is for (every endpoint of one scheme, authority and
    /// partition), if set with `set_service_config`.
    pub service: Option<Target>,
    /// The partition it is for, if set with `set_partition_config`.
    pub partition: Option<Partition>,
    /// Slots reserved.
    pub reserved: usize,
    /// Slots its connections hold (beyond `reserved`, shared ones).
    pub held: usize,
}

impl PoolSnapshot {
    /// The snapshot of `target`, if the pool knows it.
    pub fn target(&self, target: &Target) -> Option<&TargetSnapshot> {
        self.targets.iter().find(|t| &t.target == target)
    }

    /// How many times the pool's expiry task has woken so far: the pool's
    /// own background cost. It wakes for deadlines, not per request, and not
    /// at all while nothing is pooled.
    pub fn reaper_wakeups(&self) -> u64 {
        self.reaper_wakeups
    }

    /// Sum of `f` over every target.
    pub fn total(&self, f: impl Fn(&TargetSnapshot) -> u64) -> u64 {
        self.targets.iter().map(f).sum()
    }
}

/// What a control handle needs from a pool; implemented by the pool's shared
/// state so that the handle has no type parameters.
pub(crate) trait Controlled: Send + Sync {
    fn snapshot(&self) -> PoolSnapshot;
    fn target_snapshot(&self, target: &Target) -> Option<TargetSnapshot>;
    fn config(&self) -> Arc<PoolConfig>;
    /// Stores a valid pool-wide configuration and resolves every target's
    /// own settings over it again; rejected if that makes one invalid.
    fn set_config(&self, config: PoolConfig) -> Result<(), ConfigError>;
    /// Held across an update's read, change and store.
    fn update_lock(&self) -> std::sync::MutexGuard<'_, ()>;
    /// Creates the target if need be, through the one path that also starts
    /// the reaper; hence the `Arc` receiver.
    fn set_target_config(
        self: Arc<Self>,
        target: &Target,
        own: Option<TargetConfig>,
    ) -> Result<(), ConfigError>;
    fn target_config(&self, target: &Target) -> Option<TargetConfig>;
    /// Settings for a service's or a partition's targets.
    fn set_group_config(
        &self,
        group: Group,
        settings: Option<TargetConfig>,
    ) -> Result<(), ConfigError>;
    fn group_settings(&self, group: &Group) -> Option<TargetConfig>;
    /// Gives an existing target the retirement's settings.
    fn retire(&self, target: &Target);
    fn is_warm(&self, key: TargetKey<'_>) -> bool;
    /// Creates the target if need be.
    fn warm_up(self: Arc<Self>, target: &Target) -> WarmUp;
}

/// A handle to read and steer a running pool; cheap to clone.
///
/// The adaptive and affinity layers drive a pool through this handle.
///
/// ```
/// use std::time::Duration;
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::Layer;
/// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool: Pool<HttpConnector> = PoolLayer::new(PoolConfig::default())
///     .unwrap()
///     .layer(HttpConnector::new());
/// let control = pool.control();
/// control
///     .update(|c| c.idle_timeout(Some(Duration::from_secs(20))))
///     .unwrap();
/// assert!(control.snapshot().targets.is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct PoolControl {
    pub(crate) inner: Arc<dyn Controlled>,
}

impl PoolControl {
    /// Per-target counts now.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.inner.snapshot()
    }

    /// One target's counts now, if the pool knows it: what
    /// [`snapshot`](Self::snapshot) gives for it, without the others'.
    pub fn target_snapshot(&self, target: &Target) -> Option<TargetSnapshot> {
        self.inner.target_snapshot(target)
    }

    /// The pool-wide configuration in force.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.inner.config()
    }

    /// Change the pool-wide configuration; rejected values leave it as it was.
    /// Takes effect at each connection's next decision (checkout, check-in,
    /// expiry), for every target but in the knobs a target sets itself
    /// (see [`TargetConfig`]). Concurrent updates apply one after the other,
    /// none lost. `max_requests_in_flight` is fixed when the pool is built:
    /// changing it here is an error, and so is a change that would make a
    /// target's own configuration invalid.
    pub fn update(&self, change: impl FnOnce(PoolConfig) -> PoolConfig) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.update_lock();
        let current = self.inner.config();
        let config = change((*current).clone()).validate()?;
        if config.max_requests_in_flight != current.max_requests_in_flight {
            return Err(ConfigError::new(
                "max_requests_in_flight",
                "is fixed when the pool is built",
            ));
        }
        self.inner.set_config(config)
    }

    /// Give `target` its own settings: the knobs `own` sets override the
    /// pool-wide ones for this target, the others keep following them
    /// (see [`TargetConfig`] for the precedence; the kill switch governs
    /// every target). `None` returns the target to the pool-wide
    /// configuration. The target is created if the pool has not seen it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower::Layer;
    /// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer, Target, TargetConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool: Pool<HttpConnector> = PoolLayer::new(PoolConfig::default())
    ///     .unwrap()
    ///     .layer(HttpConnector::new());
    /// let control = pool.control();
    /// let hot = Target::from_uri(&"http://127.0.0.1:8080".parse().unwrap(), None).unwrap();
    /// control
    ///     .set_target_config(&hot, Some(TargetConfig::default().min_idle_per_target(4)))
    ///     .unwrap();
    /// // A later pool-wide change still reaches the knobs `hot` leaves unset.
    /// control
    ///     .update(|c| c.idle_timeout(Some(Duration::from_secs(20))))
    ///     .unwrap();
    /// assert_eq!(
    ///     control.target_config(&hot).unwrap().get_min_idle_per_target(),
    ///     Some(4)
    /// );
    /// # }
    /// ```
    pub fn set_target_config(
        &self,
        target: &Target,
        own: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.update_lock();
        self.inner.clone().set_target_config(target, own)
    }

    /// The settings `target` was given with
    /// [`set_target_config`](Self::set_target_config), if any.
    pub fn target_config(&self, target: &Target) -> Option<TargetConfig> {
        self.inner.target_config(target)
    }

    /// Retire `target` (an endpoint that left its service): its settings
    /// become the kill switch's (idle connections close now, busy ones when
    /// their requests end, none opens ahead; a request still sent to it gets
    /// a connection of its own), and the pool forgets it once nothing is
    /// open, as it forgets any unused target. A target the pool has not
    /// seen is left alone; `set_target_config` undoes a retirement.
    pub fn retire(&self, target: &Target) {
        let _one_at_a_time = self.inner.update_lock();
        self.inner.retire(target);
    }

    /// Give every target of `partition` (those the pool has and those it
    /// will have) these settings: the knobs set here override the
    /// pool-wide ones, and a target's own settings
    /// ([`set_target_config`](Self::set_target_config)) override these.
    /// A reservation ([`TargetConfig::reserved_connections`]) set here is
    /// for the partition's targets together: a group of targets with slots
    /// of the budget kept for them. `None` returns the partition's targets
    /// to the pool-wide configuration and drops its reservation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower::Layer;
    /// use tower_reuse_pool::{Partition, Pool, PoolConfig, PoolLayer, TargetConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool: Pool<HttpConnector> = PoolLayer::new(PoolConfig::default().max_connections(Some(64)))
    ///     .unwrap()
    ///     .layer(HttpConnector::new());
    /// let control = pool.control();
    /// let payments = Partition::new("payments");
    /// let settings = TargetConfig::default()
    ///     .reserved_connections(Some(8))
    ///     .idle_timeout(Some(Duration::from_secs(30)));
    /// control.set_partition_config(&payments, Some(settings)).unwrap();
    /// // Reservations beyond the budget are refused.
    /// let greedy = TargetConfig::default().reserved_connections(Some(60));
    /// assert!(control.set_partition_config(&Partition::new("batch"), Some(greedy)).is_err());
    /// assert_eq!(control.snapshot().budget.reservations[0].reserved, 8);
    /// # }
    /// ```
    pub fn set_partition_config(
        &self,
        partition: &Partition,
        settings: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.update_lock();
        self.inner
            .set_group_config(Group::Partition(partition.clone()), settings)
    }

    /// The settings given to `partition` with
    /// [`set_partition_config`](Self::set_partition_config), if any.
    pub fn partition_config(&self, partition: &Partition) -> Option<TargetConfig> {
        self.inner
            .group_settings(&Group::Partition(partition.clone()))
    }

    /// Give every target of `service`'s scheme, authority and partition,
    /// whatever its endpoint (those the pool has and those it will have),
    /// these settings: over its partition's, under each target's own. A
    /// reservation set here is for those targets together. The tiers of
    /// the affinity layer give a busy service its settings this way: its
    /// connections stay, and live by the new settings. `None` returns them
    /// to what they inherited before and drops the reservation.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower::Layer;
    /// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer, Target, TargetConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool: Pool<HttpConnector> = PoolLayer::new(PoolConfig::default().max_connections(Some(64)))
    ///     .unwrap()
    ///     .layer(HttpConnector::new());
    /// let control = pool.control();
    /// let inventory = Target::from_uri(&"http://inventory.internal:8080".parse().unwrap(), None).unwrap();
    /// let hot = TargetConfig::default()
    ///     .reserved_connections(Some(4))
    ///     .idle_timeout(Some(Duration::from_secs(30)));
    /// control.set_service_config(&inventory, Some(hot)).unwrap();
    /// assert_eq!(control.snapshot().budget.reservations[0].reserved, 4);
    /// # }
    /// ```
    pub fn set_service_config(
        &self,
        service: &Target,
        settings: Option<TargetConfig>,
    ) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.update_lock();
        let group = Group::Service(service.clone().with_endpoint(None));
        self.inner.set_group_config(group, settings)
    }

    /// The settings given to `service` with
    /// [`set_service_config`](Self::set_service_config), if any.
    pub fn service_config(&self, service: &Target) -> Option<TargetConfig> {
        let group = Group::Service(service.clone().with_endpoint(None));
        self.inner.group_settings(&group)
    }

    /// Whether `req` would find a connection of its target free now, with no
    /// connect to wait for: an idle HTTP/1.1 connection or an HTTP/2 one
    /// with a stream to spare. The affinity layer asks it to prefer warm
    /// endpoints; it takes the target's lock for a moment.
    ///
    /// ```
    /// use hyper_util::client::legacy::connect::HttpConnector;
    /// use tower::Layer;
    /// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool: Pool<HttpConnector> = PoolLayer::new(PoolConfig::default())
    ///     .unwrap()
    ///     .layer(HttpConnector::new());
    /// let req = http::Request::get("http://127.0.0.1:8080/").body(()).unwrap();
    /// assert!(!pool.control().is_warm(&req));
    /// # }
    /// ```
    pub fn is_warm<B>(&self, req: &Request<B>) -> bool {
        self.is_warm_at(req, req.extensions().get::<Endpoint>().copied())
    }

    /// [`is_warm`](Self::is_warm) at `endpoint`, whatever the request's
    /// [`Endpoint`] extension says.
    pub fn is_warm_at<B>(&self, req: &Request<B>, endpoint: Option<Endpoint>) -> bool {
        TargetKey::of_request(req, endpoint).is_some_and(|key| self.inner.is_warm(key))
    }

    /// Open one connection to `target` ahead of its next request, if it
    /// has none free and none connecting, within its limits (with reuse on,
    /// not while a failed pre-warm backs off or the server asks for calm).
    /// The affinity layer calls it for an endpoint it steered a request
    /// away from because it was cold, so that the next request finds it
    /// warm; what it returns says whether the endpoint's connects fail.
    pub fn warm_up(&self, target: &Target) -> WarmUp {
        self.inner.clone().warm_up(target)
    }

    /// The kill switch: `false` makes every request use a new connection and
    /// closes idle ones.
    pub fn set_reuse(&self, reuse: bool) -> Result<(), ConfigError> {
        self.update(|c| c.reuse(reuse))
    }
}

impl fmt::Debug for PoolControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolControl").finish_non_exhaustive()
    }
}
