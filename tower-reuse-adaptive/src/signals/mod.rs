//! One target's live signals: what the pool's events and the request path
//! record as they happen (relaxed atomics on the per-request path, a lock
//! only for the rare events: a burst's start, a close, a connect), drained
//! by the controller every tick.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{ConnectionInfo, Endpoint, Target};

use crate::controller::Controller;
use crate::histogram::LiveHistogram;
use crate::window::{Bucket, Counts};

/// A quiet spell at least this long between two requests starts a new
/// burst.
pub(crate) const BURST_QUIET: Duration = Duration::from_millis(100);

const BURST_QUIET_NANOS: u64 = BURST_QUIET.as_nanos() as u64;

/// A server's close of a connection idle at least this long is taken for
/// its idle timeout; a shorter idle age, for a close after a response (its
/// request limit).
pub(crate) const IDLE_SAMPLE_FLOOR: Duration = Duration::from_millis(50);

/// How many bursts are remembered to find a period.
const BURSTS_KEPT: usize = 8;

/// Connections closed at their idle timeout whose would-be reuse is
/// looked for, at most.
const EXPIRED_KEPT: usize = 256;

/// One target's signals as they happen.
#[derive(Debug)]
pub(crate) struct Live {
    /// What the target is and who tracks it: where the signals of the
    /// endpoint a router below chose are found.
    home: Option<Home>,
    /// The origin of `quiet_since`.
    epoch: Instant,
    checkouts: AtomicU64,
    reused: AtomicU64,
    /// Connections open (connected and not yet closed).
    open: AtomicUsize,
    /// The last connection opened speaks HTTP/2: one carries a burst.
    http2: AtomicBool,
    /// Requests through the layer waiting for their response head (those
    /// waiting for a connection included).
    in_flight: AtomicUsize,
    /// The most requests in flight since the last drain.
    peak: AtomicUsize,
    /// The most in flight since the current burst started.
    burst_peak: AtomicUsize,
    /// When the last request in flight ended: nanoseconds after `epoch`,
    /// plus one (zero: none has ended yet).
    quiet_since: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    pub(crate) wait: LiveHistogram,
    /// Idle ages at which connections were reused.
    pub(crate) gaps: LiveHistogram,
    /// Idle ages at which connections closed at their idle timeout would
    /// have been reused (a demand connect after the expiry).
    pub(crate) missed: LiveHistogram,
    pub(crate) connect: LiveHistogram,
    /// TLS handshakes, within the connects.
    pub(crate) tls: LiveHistogram,
    pub(crate) latency: LiveHistogram,
    /// Requests in flight as each went out.
    pub(crate) concurrency: LiveHistogram,
    demand_connects: AtomicU64,
    other_connects: AtomicU64,
    connect_errors: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    stale: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    rare: Mutex<Rare>,
    /// Something was recorded since the last drain: a quiet target costs
    /// the controller's tick nothing.
    touched: AtomicBool,
    /// A router below the layer sends this target's requests to its
    /// endpoints: their connections are theirs, not this target's.
    routes: AtomicBool,
}

/// A tracked target and its controller.
#[derive(Debug)]
struct Home {
    target: Target,
    controller: Weak<Controller>,
}

/// What the rare events leave for the controller.
#[derive(Debug, Default)]
pub(crate) struct Rare {
    /// The current burst's start.
    burst_start: Option<Instant>,
    /// Finished bursts, oldest first.
    pub(crate) bursts: VecDeque<Burst>,
    /// Idle ages at which the server closed connections (or a request found
    /// one closed), since the last drain.
    pub(crate) idle_closes: Vec<Duration>,
    /// Requests served by connections the server closed after a response,
    /// since the last drain.
    pub(crate) request_closes: Vec<u64>,
    /// When each connection closed at its idle timeout had last been used.
    expired: VecDeque<Instant>,
}

/// An instant of the request path: nanoseconds after its `Live`'s epoch,
/// plus one (zero stands for none in `quiet_since`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// The time from `earlier` to this stamp.
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// One finished burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Burst {
    pub(crate) start: Instant,
    pub(crate) peak: usize,
}

impl Default for Live {
    fn default() -> Self {
        Live::new(None)
    }
}

impl Live {
    fn new(home: Option<Home>) -> Self {
        Live {
            home,
            epoch: Instant::now(),
            checkouts: AtomicU64::default(),
            reused: AtomicU64::default(),
            open: AtomicUsize::default(),
            http2: AtomicBool::default(),
            in_flight: AtomicUsize::default(),
            peak: AtomicUsize::default(),
            burst_peak: AtomicUsize::default(),
            quiet_since: AtomicU64::default(),
            requests: AtomicU64::default(),
            errors: AtomicU64::default(),
            wait: LiveHistogram::default(),
            gaps: LiveHistogram::default(),
            missed: LiveHistogram::default(),
            connect: LiveHistogram::default(),
            tls: LiveHistogram::default(),
            latency: LiveHistogram::default(),
            concurrency: LiveHistogram::default(),
            demand_connects: AtomicU64::default(),
            other_connects: AtomicU64::default(),
            connect_errors: AtomicU64::default(),
            tls_full: AtomicU64::default(),
            tls_resumed: AtomicU64::default(),
            stale: AtomicU64::default(),
            retries: AtomicU64::default(),
            refused: AtomicU64::default(),
            closes: Default::default(),
            rare: Mutex::default(),
            touched: AtomicBool::default(),
            routes: AtomicBool::default(),
        }
    }

    /// `target`'s signals, tracked by `controller`.
    pub(crate) fn tracked(target: Target, controller: Weak<Controller>) -> Self {
        Live::new(Some(Home { target, controller }))
    }

    /// Mark the target as having news for the next tick (a load, and a
    /// store only on the first event since the tick).
    fn touch(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Now, as the request path stamps it: one clock read, and integer
    /// arithmetic from there.
    pub(crate) fn now(&self) -> Stamp {
        let nanos = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos();
        Stamp(u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1)
    }

    /// A request through the layer went out at `at`.
    pub(crate) fn started(&self, at: Stamp) {
        self.touch();
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            self.busy(at);
        }
        // A load first: in a steady load the peaks are rarely raised.
        if self.peak.load(Ordering::Relaxed) <= before {
            self.peak.fetch_max(before + 1, Ordering::Relaxed);
        }
        if self.burst_peak.load(Ordering::Relaxed) <= before {
            self.burst_peak.fetch_max(before + 1, Ordering::Relaxed);
        }
        self.concurrency.record_count(before + 1);
    }

    /// A request through the layer got its response head, failed or was
    /// given up, at `at`.
    pub(crate) fn ended(&self, at: Stamp) {
        let mut n = self.in_flight.load(Ordering::Relaxed);
        while n > 0 {
            // The quiet spell's start is stamped before the count reaches
            // zero: a request that starts then sees it.
            if n == 1 {
                self.quiet_since.store(at.0, Ordering::Relaxed);
            }
            match self.in_flight.compare_exchange_weak(
                n,
                n - 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => n = now,
            }
        }
    }

    /// A request went out with nothing in flight: a new burst if the
    /// target was quiet long enough (a lock only then).
    fn busy(&self, at: Stamp) {
        let quiet_since = self.quiet_since.load(Ordering::Relaxed);
        // A request has ended, so a burst has started.
        if quiet_since != 0 && at.0.saturating_sub(quiet_since) < BURST_QUIET_NANOS {
            return;
        }
        let now = self.epoch + Duration::from_nanos(at.0 - 1);
        let mut rare = self.lock();
        // The previous burst's peak; the requests in flight now (this one
        // included) count in the new one.
        let peak = self
            .burst_peak
            .swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(start) = rare.burst_start.replace(now) {
            if rare.bursts.len() == BURSTS_KEPT {
                rare.bursts.pop_front();
            }
            rare.bursts.push_back(Burst { start, peak });
        }
    }

    /// A request through the layer ended after `latency`; `failed` if it
    /// errored or its status is a server error.
    pub(crate) fn answered(&self, latency: Duration, failed: bool) {
        self.touch();
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(latency);
    }

    /// What a response's connection said: whether it was reused, after
    /// how long idle, and how long the request waited for it. When a
    /// router below the layer chose the connection's endpoint, they belong
    /// to that endpoint's target (a lookup, only then).
    pub(crate) fn served(&self, info: &ConnectionInfo) {
        let (reused, wait, idle_for) = (info.reused(), info.wait(), info.idle_for());
        match info.endpoint() {
            Some(endpoint) if !self.has_endpoint() => {
                if !self.routes.load(Ordering::Relaxed) {
                    self.routes.store(true, Ordering::Relaxed);
                }
                if let Some(live) = self.routed(endpoint) {
                    live.checkout(reused, wait, idle_for);
                }
            }
            _ => {
                // No router (or no longer one): the connection is this
                // target's.
                if self.routes.load(Ordering::Relaxed) {
                    self.routes.store(false, Ordering::Relaxed);
                }
                self.checkout(reused, wait, idle_for);
            }
        }
    }

    /// A request got a connection.
    pub(crate) fn checkout(&self, reused: bool, wait: Duration, idle_for: Option<Duration>) {
        self.touch();
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        if reused {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        self.wait.record(wait);
        if let Some(idle) = idle_for {
            self.gaps.record(idle);
        }
    }

    /// The signals of `endpoint` of this target, when a router below the
    /// layer sent a request there: the connection's facts belong to it.
    pub(crate) fn routed(&self, endpoint: Endpoint) -> Option<Arc<Live>> {
        let home = self.home.as_ref()?;
        let target = home.target.clone().with_endpoint(Some(endpoint));
        home.controller.upgrade()?.live_of(&target)
    }

    /// Whether a router below the layer sends this target's requests to
    /// its endpoints.
    pub(crate) fn routes(&self) -> bool {
        self.routes.load(Ordering::Relaxed)
    }

    /// Whether this target names an endpoint itself.
    pub(crate) fn has_endpoint(&self) -> bool {
        self.home
            .as_ref()
            .is_some_and(|home| home.target.endpoint().is_some())
    }

    /// A connect started: a demand connect after connections expired at the
    /// idle timeout tells how long one of them would have waited.
    pub(crate) fn connect_started(&self, demand: bool) {
        self.touch();
        if !demand {
            return;
        }
        let now = Instant::now();
        if let Some(last_used) = self.lock().expired.pop_back() {
            self.missed.record(now.saturating_duration_since(last_used));
        }
    }

    pub(crate) fn connected(
        &self,
        demand: bool,
        duration: Duration,
        tls: Option<Duration>,
        resumed: Option<bool>,
        http2: bool,
    ) {
        self.touch();
        self.open.fetch_add(1, Ordering::Relaxed);
        self.http2.store(http2, Ordering::Relaxed);
        let count = if demand {
            &self.demand_connects
        } else {
            &self.other_connects
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.connect.record(duration);
        if let Some(tls) = tls {
            self.tls.record(tls);
        }
        match resumed {
            Some(true) => self.tls_resumed.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.tls_full.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    pub(crate) fn connect_failed(&self) {
        self.touch();
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed: what it says of the server's limits.
    pub(crate) fn closed(&self, reason: CloseReason, idle_for: Option<Duration>, served: u64) {
        self.touch();
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
        let idle_sample = idle_for.filter(|d| *d >= IDLE_SAMPLE_FLOOR);
        let after_response = idle_for.is_some_and(|d| d < IDLE_SAMPLE_FLOOR);
        // An HTTP/2 server ends a connection with GOAWAY where an HTTP/1.1
        // one closes it.
        let server = matches!(reason, CloseReason::ServerClosed | CloseReason::GoAway);
        match reason {
            _ if server && idle_sample.is_some() => {
                self.lock().idle_closes.extend(idle_sample);
            }
            _ if server && after_response && served > 0 => {
                self.lock().request_closes.push(served);
            }
            CloseReason::ServerHint if served > 0 => self.lock().request_closes.push(served),
            CloseReason::IdleTimeout => {
                if let Some(idle) = idle_for {
                    let mut rare = self.lock();
                    if rare.expired.len() == EXPIRED_KEPT {
                        rare.expired.pop_front();
                    }
                    let last_used = Instant::now().checked_sub(idle);
                    rare.expired.extend(last_used);
                }
            }
            _ => {}
        }
    }

    /// A request found a reused connection the server had closed, taken
    /// after `idle_for` idle: the server's idle limit is at most that.
    pub(crate) fn stale(&self, idle_for: Option<Duration>) {
        self.touch();
        self.stale.fetch_add(1, Ordering::Relaxed);
        if let Some(idle) = idle_for.filter(|d| *d >= IDLE_SAMPLE_FLOOR) {
            self.lock().idle_closes.push(idle);
        }
    }

    pub(crate) fn retried(&self) {
        self.touch();
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.touch();
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the target's connections speak HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether anything was recorded since the last drain.
    pub(crate) fn is_touched(&self) -> bool {
        self.touched.load(Ordering::Relaxed)
    }

    /// Move everything recorded since the last drain into `bucket`; the
    /// samples of the server's limits are returned. `forget_before`: the
    /// expired connections last used before it can no longer be reused.
    pub(crate) fn drain(&self, bucket: &mut Bucket, forget_before: Instant) -> Samples {
        self.touched.store(false, Ordering::Relaxed);
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let counts: &mut Counts = &mut bucket.counts;
        counts.checkouts += take(&self.checkouts);
        counts.reused += take(&self.reused);
        let peak = self
            .peak
            .swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        counts.peak = counts.peak.max(peak);
        counts.requests += take(&self.requests);
        counts.errors += take(&self.errors);
        counts.demand_connects += take(&self.demand_connects);
        counts.other_connects += take(&self.other_connects);
        counts.connect_errors += take(&self.connect_errors);
        counts.tls_full += take(&self.tls_full);
        counts.tls_resumed += take(&self.tls_resumed);
        counts.stale += take(&self.stale);
        counts.retries += take(&self.retries);
        counts.refused += take(&self.refused);
        for (sum, live) in counts.closes.iter_mut().zip(&self.closes) {
            *sum += take(live);
        }
        self.wait.drain_into(&mut bucket.wait);
        self.gaps.drain_into(&mut bucket.gaps);
        self.missed.drain_into(&mut bucket.missed);
        self.connect.drain_into(&mut bucket.connect);
        self.tls.drain_into(&mut bucket.tls);
        self.latency.drain_into(&mut bucket.latency);
        self.concurrency.drain_into(&mut bucket.in_flight);
        let mut rare = self.lock();
        while rare.expired.front().is_some_and(|&at| at < forget_before) {
            rare.expired.pop_front();
        }
        Samples {
            idle_closes: std::mem::take(&mut rare.idle_closes),
            request_closes: std::mem::take(&mut rare.request_closes),
            bursts: rare.bursts.iter().copied().collect(),
            burst_start: rare.burst_start,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rare> {
        self.rare.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
impl Live {
    /// A request out now, on a connection with these facts.
    pub(crate) fn out(&self, reused: bool, wait: Duration, idle_for: Option<Duration>) {
        self.started(self.now());
        self.checkout(reused, wait, idle_for);
    }

    /// A request back now.
    pub(crate) fn back(&self) {
        self.ended(self.now());
    }
}

/// What one drain found of the server's limits and the bursts.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub(crate) idle_closes: Vec<Duration>,
    pub(crate) request_closes: Vec<u64>,
    /// Finished bursts, oldest first.
    pub(crate) bursts: Vec<Burst>,
    /// When the current burst started.
    pub(crate) burst_start: Option<Instant>,
}

#[cfg(test)]
mod tests;
