//! The sliding window: a ring of 10 buckets, each a tenth of the window,
//! the oldest dropped as time moves on.

use std::time::Duration;

use tokio::time::Instant;
use tower_reuse_pool::events::CloseReason;

use crate::histogram::Histogram;

/// Buckets per window.
const BUCKETS: usize = 10;

/// What a stretch of time saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) checkouts: u64,
    pub(crate) reused: u64,
    /// The most requests in flight at once.
    pub(crate) peak: usize,
    /// The most connections the pool had serving requests, at the ticks
    /// that looked (a slow body keeps a connection busy past its
    /// response head, when the request is no longer in flight).
    pub(crate) busy: usize,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) demand_connects: u64,
    pub(crate) other_connects: u64,
    pub(crate) connect_errors: u64,
    pub(crate) tls_full: u64,
    pub(crate) tls_resumed: u64,
    pub(crate) stale: u64,
    pub(crate) retries: u64,
    pub(crate) refused: u64,
    pub(crate) closes: [u64; CloseReason::ALL.len()],
}

impl Counts {
    fn merge(&mut self, other: &Counts) {
        self.checkouts += other.checkouts;
        self.reused += other.reused;
        self.peak = self.peak.max(other.peak);
        self.busy = self.busy.max(other.busy);
        self.requests += other.requests;
        self.errors += other.errors;
        self.demand_connects += other.demand_connects;
        self.other_connects += other.other_connects;
        self.connect_errors += other.connect_errors;
        self.tls_full += other.tls_full;
        self.tls_resumed += other.tls_resumed;
        self.stale += other.stale;
        self.retries += other.retries;
        self.refused += other.refused;
        for (sum, n) in self.closes.iter_mut().zip(other.closes) {
            *sum += n;
        }
    }

    /// Connections closed for `reason`.
    pub(crate) fn closed(&self, reason: CloseReason) -> u64 {
        CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.closes[i])
    }
}

/// One bucket: counts and the distributions of waits, idle gaps, connect
/// times, request latencies and requests in flight.
#[derive(Clone, Debug, Default)]
pub(crate) struct Bucket {
    pub(crate) counts: Counts,
    pub(crate) wait: Histogram,
    pub(crate) gaps: Histogram,
    pub(crate) missed: Histogram,
    pub(crate) connect: Histogram,
    /// TLS handshakes, within the connects.
    pub(crate) tls: Histogram,
    pub(crate) latency: Histogram,
    /// Requests in flight as each request went out (counts, kept as
    /// microseconds).
    pub(crate) in_flight: Histogram,
}

impl Bucket {
    fn merge(&mut self, other: &Bucket) {
        self.counts.merge(&other.counts);
        self.wait.merge(&other.wait);
        self.gaps.merge(&other.gaps);
        self.missed.merge(&other.missed);
        self.connect.merge(&other.connect);
        self.tls.merge(&other.tls);
        self.latency.merge(&other.latency);
        self.in_flight.merge(&other.in_flight);
    }
}

/// The last `BUCKETS` buckets of one target.
#[derive(Debug)]
pub(crate) struct Window {
    buckets: Vec<Bucket>,
    /// The bucket being filled.
    current: usize,
    /// When it started.
    started: Instant,
    span: Duration,
}

impl Window {
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        Window {
            buckets: vec![Bucket::default(); BUCKETS],
            current: 0,
            started: now,
            span: window / BUCKETS as u32,
        }
    }

    /// The bucket for `now`, after dropping the ones that fell out of the
    /// window.
    pub(crate) fn at(&mut self, now: Instant) -> &mut Bucket {
        let mut moved = 0;
        while now.saturating_duration_since(self.started) >= self.span && moved <= BUCKETS {
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = Bucket::default();
            self.started += self.span;
            moved += 1;
        }
        if moved > BUCKETS {
            // Quiet longer than the window: start again from now.
            self.started = now;
        }
        &mut self.buckets[self.current]
    }

    /// The largest `count` of one bucket.
    pub(crate) fn busiest(&self, count: impl Fn(&Counts) -> u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| count(&b.counts))
            .max()
            .unwrap_or(0)
    }

    /// Everything in the window.
    pub(crate) fn total(&self) -> Bucket {
        let mut sum = Bucket::default();
        for bucket in &self.buckets {
            sum.merge(bucket);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_buckets_fall_out_of_the_window() {
        let start = Instant::now();
        let mut window = Window::new(Duration::from_secs(10), start);
        window.at(start).counts.checkouts = 5;
        window.at(start + Duration::from_secs(3)).counts.checkouts = 7;
        assert_eq!(window.total().counts.checkouts, 12);
        assert_eq!(
            window
                .at(start + Duration::from_millis(10_500))
                .counts
                .checkouts,
            0
        );
        assert_eq!(window.total().counts.checkouts, 7);
        window.at(start + Duration::from_secs(100));
        assert_eq!(window.total().counts.checkouts, 0);
    }
}
