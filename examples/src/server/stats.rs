//! The embedded server's own counters: cheap atomics, plus an exact running
//! integral of idle connections over time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::chaos::Fault;

/// Number of log2 buckets in the requests-per-connection histogram.
pub const REQUESTS_PER_CONNECTION_BUCKETS: usize = 24;

/// At most this many open-connection samples are kept per server.
const MAX_SAMPLES: usize = 200_000;

const FAULT_CLOSED: usize = 0;
const FAULT_RESET: usize = 1;
const FAULT_STALLED: usize = 2;
const FAULT_GOAWAY: usize = 3;

/// A cheap, clonable handle on the server's counters.
#[derive(Clone, Debug)]
pub struct ServerStats {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    accepted: AtomicU64,
    open: AtomicU64,
    peak_open: AtomicU64,
    requests: AtomicU64,
    closed: AtomicU64,
    max_requests_on_connection: AtomicU64,
    requests_per_connection: [AtomicU64; REQUESTS_PER_CONNECTION_BUCKETS],
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    tls_failed: AtomicU64,
    faults: [AtomicU64; 4],
    refused: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    idle: Mutex<IdleIntegral>,
    samples: Mutex<Vec<OpenSample>>,
    /// The load across the addresses up, at each sample with a request in
    /// flight.
    load_samples: Mutex<Vec<LoadSample>>,
}

#[derive(Debug)]
struct IdleIntegral {
    idle_now: u64,
    last_change: Instant,
    socket_seconds: f64,
}

/// One sample of the open-connection count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OpenSample {
    /// Seconds since the server started.
    pub at_s: f64,
    /// Open connections at that time.
    pub open: u64,
    /// Of those, connections with no request in flight.
    pub idle: u64,
}

/// A point-in-time copy of [`ServerStats`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServerSnapshot {
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Connections accepted (TLS: before the handshake).
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// The most connections open at once.
    pub peak_open: u64,
    /// Requests served (responses produced).
    pub requests: u64,
    /// Connections closed so far.
    pub closed: u64,
    /// Most requests served on one connection, open ones included.
    pub max_requests_on_connection: u64,
    /// Closed connections by requests served: bucket `i` counts connections
    /// that served `[2^i - 1, 2^(i+1) - 1)` requests (bucket 0: none).
    pub requests_per_connection: Vec<u64>,
    /// TLS handshakes that were full (including HelloRetryRequest).
    pub tls_full: u64,
    /// TLS handshakes that resumed a session.
    pub tls_resumed: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: u64,
    /// Time integral of open connections with no request in flight.
    pub idle_socket_seconds: f64,
    /// Faults injected (see [`Chaos`](super::Chaos)).
    pub faults: FaultCounts,
    /// HTTP/2 streams refused (`REFUSED_STREAM`) while every slot was still
    /// counted busy (see [`ServerConfig::h2_late_release`](super::ServerConfig::h2_late_release)).
    pub refused: u64,
    /// Requests whose affinity key was in the serving address's cache,
    /// all addresses together (see [`ServerConfig::cache`](super::ServerConfig::cache)).
    pub cache_hits: u64,
    /// Requests whose affinity key was not.
    pub cache_misses: u64,
}

/// Faults the server injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Connections closed (FIN) after reading a request, without answering.
    pub closed: u64,
    /// Connections reset (RST) after reading a request, without answering.
    pub reset: u64,
    /// Answers stalled.
    pub stalled: u64,
    /// Connections closed gracefully after an answer (GOAWAY on HTTP/2,
    /// `Connection: close` on HTTP/1.1).
    pub goaway: u64,
}

impl FaultCounts {
    /// Every fault, all kinds.
    pub fn total(&self) -> u64 {
        self.closed + self.reset + self.stalled + self.goaway
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &FaultCounts) -> FaultCounts {
        FaultCounts {
            closed: self.closed - earlier.closed,
            reset: self.reset - earlier.reset,
            stalled: self.stalled - earlier.stalled,
            goaway: self.goaway - earlier.goaway,
        }
    }
}

impl ServerStats {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                started: now,
                accepted: AtomicU64::new(0),
                open: AtomicU64::new(0),
                peak_open: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                closed: AtomicU64::new(0),
                max_requests_on_connection: AtomicU64::new(0),
                requests_per_connection: std::array::from_fn(|_| AtomicU64::new(0)),
                tls_full: AtomicU64::new(0),
                tls_resumed: AtomicU64::new(0),
                tls_failed: AtomicU64::new(0),
                faults: std::array::from_fn(|_| AtomicU64::new(0)),
                refused: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                cache_misses: AtomicU64::new(0),
                idle: Mutex::new(IdleIntegral {
                    idle_now: 0,
                    last_change: now,
                    socket_seconds: 0.0,
                }),
                samples: Mutex::new(Vec::new()),
                load_samples: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.inner.open.load(Relaxed)
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> ServerSnapshot {
        let i = &self.inner;
        ServerSnapshot {
            uptime_s: i.started.elapsed().as_secs_f64(),
            accepted: i.accepted.load(Relaxed),
            open: i.open.load(Relaxed),
            peak_open: i.peak_open.load(Relaxed),
            requests: i.requests.load(Relaxed),
            closed: i.closed.load(Relaxed),
            max_requests_on_connection: i.max_requests_on_connection.load(Relaxed),
            requests_per_connection: i
                .requests_per_connection
                .iter()
                .map(|b| b.load(Relaxed))
                .collect(),
            tls_full: i.tls_full.load(Relaxed),
            tls_resumed: i.tls_resumed.load(Relaxed),
            tls_failed: i.tls_failed.load(Relaxed),
            idle_socket_seconds: self.idle_socket_seconds(),
            faults: FaultCounts {
                closed: i.faults[FAULT_CLOSED].load(Relaxed),
                reset: i.faults[FAULT_RESET].load(Relaxed),
                stalled: i.faults[FAULT_STALLED].load(Relaxed),
                goaway: i.faults[FAULT_GOAWAY].load(Relaxed),
            },
            refused: i.refused.load(Relaxed),
            cache_hits: i.cache_hits.load(Relaxed),
            cache_misses: i.cache_misses.load(Relaxed),
        }
    }

    /// The highest load ratio sampled at or after `since_s` seconds of
    /// uptime: at each sample (every
    /// [`sample_interval`](super::ServerConfig::sample_interval)) with a
    /// request in flight, the most requests in flight on one address over
    /// the mean across the addresses up. `None` when no such sample was
    /// taken.
    pub fn max_load_ratio_since(&self, since_s: f64) -> Option<f64> {
        self.max_load_since(since_s, |sample| sample.ratio)
    }

    /// As [`max_load_ratio_since`](Self::max_load_ratio_since), the most
    /// requests in flight on one address over the bounded-load cap
    /// `ceil(1.25 * mean)`, at least 2 (the affinity layer's defaults:
    /// epsilon 0.25, load floor 2): above 1 at a sample where one address
    /// held more than the cap.
    pub fn max_load_over_bound_since(&self, since_s: f64) -> Option<f64> {
        self.max_load_since(since_s, |sample| sample.over_bound)
    }

    fn max_load_since(&self, since_s: f64, figure: fn(&LoadSample) -> f64) -> Option<f64> {
        let samples = self
            .inner
            .load_samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = samples.partition_point(|sample| sample.at_s < since_s);
        samples[start..].iter().map(figure).reduce(f64::max)
    }

    /// Time integral of open connections with no request in flight, so far.
    pub fn idle_socket_seconds(&self) -> f64 {
        let idle = self.lock_idle();
        idle.socket_seconds + idle.idle_now as f64 * idle.last_change.elapsed().as_secs_f64()
    }

    /// The open-connection samples taken so far (see
    /// [`ServerConfig::sample_interval`](super::ServerConfig::sample_interval)).
    pub fn samples(&self) -> Vec<OpenSample> {
        self.inner
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Open-connection samples taken at or after `since_s` seconds of uptime.
    pub fn samples_since(&self, since_s: f64) -> Vec<OpenSample> {
        let samples = self
            .inner
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = samples.partition_point(|s| s.at_s < since_s);
        samples[start..].to_vec()
    }

    /// Seconds since the server started (the time base of the samples).
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleIntegral> {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn change_idle(&self, up: bool) {
        let mut idle = self.lock_idle();
        let now = Instant::now();
        idle.socket_seconds +=
            idle.idle_now as f64 * now.duration_since(idle.last_change).as_secs_f64();
        idle.last_change = now;
        if up {
            idle.idle_now += 1;
        } else {
            idle.idle_now = idle.idle_now.saturating_sub(1);
        }
    }

    pub(crate) fn sample(&self) {
        let open = self.inner.open.load(Relaxed);
        let idle = self.lock_idle().idle_now;
        let at_s = self.inner.started.elapsed().as_secs_f64();
        let mut samples = self
            .inner
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if samples.len() < MAX_SAMPLES {
            samples.push(OpenSample { at_s, open, idle });
        }
    }

    /// Samples the load of the addresses up (requests in flight on each);
    /// a sample with nothing in flight is not kept.
    pub(crate) fn sample_load(&self, in_flight: &[u64]) {
        let Some(mut sample) = load_sample(in_flight) else {
            return;
        };
        sample.at_s = self.inner.started.elapsed().as_secs_f64();
        let mut samples = self
            .inner
            .load_samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if samples.len() < MAX_SAMPLES {
            samples.push(sample);
        }
    }

    /// A request's affinity key was looked up in its address's cache.
    pub(crate) fn cache_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.inner.cache_hits
        } else {
            &self.inner.cache_misses
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts an accepted connection and returns its index (0 for the first).
    pub(crate) fn accepted_connection(&self) -> u64 {
        self.inner.accepted.fetch_add(1, Relaxed)
    }

    pub(crate) fn fault_injected(&self, fault: Fault) {
        let i = match fault {
            Fault::Close => FAULT_CLOSED,
            Fault::Reset => FAULT_RESET,
            Fault::Stall(_) => FAULT_STALLED,
            Fault::GoAway => FAULT_GOAWAY,
        };
        self.inner.faults[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn tls_handshake(&self, kind: Option<rustls::HandshakeKind>) {
        let counter = match kind {
            Some(rustls::HandshakeKind::Resumed) => &self.inner.tls_resumed,
            Some(_) => &self.inner.tls_full,
            None => &self.inner.tls_failed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A connection is being served: it is open and idle.
    pub(crate) fn connection_opened(&self) {
        let open = self.inner.open.fetch_add(1, Relaxed) + 1;
        self.inner.peak_open.fetch_max(open, Relaxed);
        self.change_idle(true);
    }

    /// A connection closed after serving `requests`; `was_idle` if no request
    /// was in flight on it.
    pub(crate) fn connection_closed(&self, requests: u64, was_idle: bool) {
        self.inner.open.fetch_sub(1, Relaxed);
        self.inner.closed.fetch_add(1, Relaxed);
        self.inner
            .max_requests_on_connection
            .fetch_max(requests, Relaxed);
        let bucket = (u64::BITS - (requests + 1).leading_zeros() - 1) as usize;
        self.inner.requests_per_connection[bucket.min(REQUESTS_PER_CONNECTION_BUCKETS - 1)]
            .fetch_add(1, Relaxed);
        if was_idle {
            self.change_idle(false);
        }
    }

    /// A connection went from no request in flight to one.
    pub(crate) fn connection_busy(&self) {
        self.change_idle(false);
    }

    /// A connection went from requests in flight to none.
    pub(crate) fn connection_idle(&self) {
        self.change_idle(true);
    }

    /// A response was produced: the `served`-th on its connection.
    pub(crate) fn request_served(&self, served: u64) {
        self.inner.requests.fetch_add(1, Relaxed);
        self.inner
            .max_requests_on_connection
            .fetch_max(served, Relaxed);
    }

    /// An HTTP/2 stream was refused (`REFUSED_STREAM`).
    pub(crate) fn stream_refused(&self) {
        self.inner.refused.fetch_add(1, Relaxed);
    }
}

/// One sample of the load across addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LoadSample {
    pub(crate) at_s: f64,
    /// The most requests in flight on one address over the mean.
    pub(crate) ratio: f64,
    /// The same over `ceil(1.25 * mean)`, at least 2.
    pub(crate) over_bound: f64,
}

/// The load figures of `in_flight` (one count per address); `None` when
/// nothing is in flight.
pub(crate) fn load_sample(in_flight: &[u64]) -> Option<LoadSample> {
    let total: u64 = in_flight.iter().sum();
    let max = in_flight.iter().copied().max()?;
    if total == 0 {
        return None;
    }
    let mean = total as f64 / in_flight.len() as f64;
    Some(LoadSample {
        at_s: 0.0,
        ratio: max as f64 / mean,
        over_bound: max as f64 / (1.25 * mean).ceil().max(2.0),
    })
}
