//! The load driver: closed-loop workers, open-loop Poisson arrivals over
//! Zipf-distributed targets, and bursts. Every loop is bounded in count and
//! in time, and every stack is driven identically (pre-parsed targets, the
//! same headers, one `x-request-id` per request).

mod arrivals;
mod closed;
mod keys;
mod load;
mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use arrivals::Arrivals;
pub use keys::{Keys, Routes, moved_fraction};
pub(crate) use load::{note, send};
pub use load::{run, timed_bursts};
pub use record::Recorder;

/// A request the stack has neither answered nor failed after this long is
/// given up on and counted as lost.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The 64-byte body of the load's POST requests ([`Load::Closed`]'s `post_every`).
pub const POST_BODY: &[u8] =
    b"{\"reuse-lab\":\"a small POST body, sixty-four bytes with padding\"}";

/// The shape of the load.
#[derive(Clone, Debug)]
pub enum Load {
    /// `workers` loops, each sending its next request when the last one is
    /// done (after an optional think time drawn uniformly from `think`),
    /// until `duration` has passed or `max_requests` were issued in all.
    Closed {
        /// Concurrent workers.
        workers: usize,
        /// How long to send.
        duration: Duration,
        /// Stop after this many requests in all.
        max_requests: Option<u64>,
        /// Uniform think time before each request.
        think: Option<(Duration, Duration)>,
        /// Every `n`-th request of a worker is a POST with a small body
        /// ([`POST_BODY`]); the others are GETs. `None`: all GETs.
        post_every: Option<u32>,
        /// Affinity keys the requests carry, drawn by popularity, and
        /// where each was served recorded ([`Recorder::routes`]).
        keys: Option<Arc<Keys>>,
    },
    /// Requests arrive as a Poisson process of `rate` per second for
    /// `duration`, each to a target drawn from a Zipf(`zipf_exponent`)
    /// distribution over the targets (uniform when `None`). An arrival that
    /// finds `max_in_flight` requests outstanding is dropped and counted as an
    /// `overload` error.
    Poisson {
        /// Arrivals per second.
        rate: f64,
        /// How long arrivals come.
        duration: Duration,
        /// Bound on outstanding requests.
        max_in_flight: usize,
        /// Zipf exponent over the targets.
        zipf_exponent: Option<f64>,
        /// Stop after this many arrivals.
        max_requests: Option<u64>,
        /// Affinity keys the requests carry, as for a closed loop.
        keys: Option<Arc<Keys>>,
    },
    /// Closed loops one after another, one client for them all: each
    /// step's workers for its duration (the step starts when the last
    /// one's workers are done). `shift`'s load.
    Steps {
        /// Each step's workers and duration, in order.
        steps: Vec<(usize, Duration)>,
    },
    /// `bursts` bursts of `size` concurrent requests, one every `period`
    /// from the start, whether the last is answered or not.
    Periodic {
        /// Number of bursts.
        bursts: usize,
        /// Requests per burst.
        size: usize,
        /// From one burst's start to the next's.
        period: Duration,
    },
    /// `bursts` times: `size` concurrent requests, wait for all, then `gap`.
    Bursts {
        /// Number of bursts.
        bursts: usize,
        /// Requests per burst.
        size: usize,
        /// Idle gap between bursts.
        gap: Duration,
    },
}

impl Load {
    /// The most requests that can be in flight at once.
    pub fn peak_concurrency(&self) -> usize {
        match self {
            Load::Closed { workers, .. } => *workers,
            Load::Poisson { max_in_flight, .. } => *max_in_flight,
            Load::Bursts { size, .. } | Load::Periodic { size, .. } => *size,
            Load::Steps { steps } => steps.iter().map(|&(workers, _)| workers).max().unwrap_or(0),
        }
    }

    /// Slice `round` of `rounds` of a closed loop, for a run that takes
    /// turns between stacks: an equal share of its duration, and of its
    /// request cap (the shares adding up to the cap exactly). Other loads
    /// are not sliced.
    pub fn slice(&self, rounds: u32, round: u32) -> Load {
        let mut slice = self.clone();
        if let Load::Closed {
            duration,
            max_requests,
            ..
        } = &mut slice
            && rounds > 1
        {
            *duration /= rounds;
            // The first `k` slices' share of `n`, exact and without overflow.
            let upto = |n: u64, k: u32| {
                u64::try_from(u128::from(n) * u128::from(k) / u128::from(rounds)).unwrap_or(n)
            };
            *max_requests = max_requests.map(|n| upto(n, round + 1) - upto(n, round));
        }
        slice
    }

    /// How long the load runs, roughly (for progress bars).
    pub fn nominal_duration(&self) -> Duration {
        match self {
            Load::Closed { duration, .. } | Load::Poisson { duration, .. } => *duration,
            Load::Bursts { bursts, gap, .. } => {
                (*gap + Duration::from_millis(20)) * u32::try_from(*bursts).unwrap_or(u32::MAX)
            }
            Load::Steps { steps } => steps.iter().map(|&(_, duration)| duration).sum(),
            Load::Periodic { bursts, period, .. } => {
                *period * u32::try_from(*bursts).unwrap_or(u32::MAX)
            }
        }
    }
}

/// Live counters of a run, read by the progress bar and the client sampler.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    in_flight: AtomicI64,
}

impl Progress {
    /// A fresh, shared progress counter.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests finished so far (updated in small batches).
    pub fn done(&self) -> u64 {
        self.done.load(Relaxed)
    }

    /// Requests in flight now (only tracked when the run asks for it).
    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.load(Relaxed)).unwrap_or(0)
    }

    fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Relaxed);
    }

    fn in_flight_delta(&self, d: i64) {
        self.in_flight.fetch_add(d, Relaxed);
    }
}

/// What a load run produced.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Every request's outcome, merged.
    pub recorder: Recorder,
    /// From the first request sent to the last response read.
    pub elapsed: Duration,
}

/// Draws indices `0..n` with probability proportional to `1 / (i + 1)^s`.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` items with exponent `s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n.max(1))
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect();
        for p in &mut cdf {
            *p /= acc;
        }
        Self { cdf }
    }

    /// A uniform distribution over `n` items.
    pub fn uniform(n: usize) -> Self {
        Self::new(n, 0.0)
    }

    /// Draws an index.
    pub fn sample(&self) -> usize {
        self.at(fastrand::f64())
    }

    /// Draws an index with `rng`.
    pub fn sample_with(&self, rng: &mut fastrand::Rng) -> usize {
        self.at(rng.f64())
    }

    fn at(&self, u: f64) -> usize {
        self.cdf.partition_point(|&p| p < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zipf(1.1) over 990 targets (`tiers`' cold ones): with a fixed seed,
    /// each of the first items is drawn about `n / ((i + 1)^1.1 * H)`
    /// times (within 5 standard deviations), and the tail beyond the
    /// first 100 gets its share too.
    #[test]
    fn zipf_draws_follow_the_popularity_law() {
        let (items, s, n) = (990usize, 1.1, 200_000u32);
        let zipf = Zipf::new(items, s);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = vec![0u32; items];
        for _ in 0..n {
            counts[zipf.sample_with(&mut rng)] += 1;
        }
        let weight = |i: usize| 1.0 / ((i + 1) as f64).powf(s);
        let total: f64 = (0..items).map(weight).sum();
        let expect =
            |range: std::ops::Range<usize>| f64::from(n) * range.map(weight).sum::<f64>() / total;
        let check = |what: &str, got: u32, expected: f64| {
            let deviation = expected.sqrt();
            assert!(
                (f64::from(got) - expected).abs() < 5.0 * deviation,
                "{what}: {got} drawn, {expected:.0} expected"
            );
        };
        for i in [0, 1, 2, 9, 49] {
            check(&format!("item {i}"), counts[i], expect(i..i + 1));
        }
        check(
            "items 100..",
            counts[100..].iter().sum(),
            expect(100..items),
        );
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
    }

    /// A closed loop splits into equal turns whose request caps add up to
    /// its own; other loads stay whole.
    #[test]
    fn a_closed_loop_slices_into_turns() {
        let closed = Load::Closed {
            workers: 32,
            duration: Duration::from_secs(3),
            max_requests: Some(1000),
            think: None,
            post_every: Some(10),
            keys: None,
        };
        let mut total = 0;
        for round in 0..6 {
            let Load::Closed {
                workers,
                duration,
                max_requests,
                post_every,
                ..
            } = closed.slice(6, round)
            else {
                panic!("still a closed loop");
            };
            assert_eq!(workers, 32);
            assert_eq!(duration, Duration::from_millis(500));
            assert_eq!(post_every, Some(10));
            let cap = max_requests.expect("a cap");
            assert!((166..=167).contains(&cap), "{cap}");
            total += cap;
        }
        assert_eq!(total, 1000);
        let Load::Closed { duration, .. } = closed.slice(1, 0) else {
            panic!("still a closed loop");
        };
        assert_eq!(duration, Duration::from_secs(3));
        let bursts = Load::Bursts {
            bursts: 5,
            size: 64,
            gap: Duration::from_millis(200),
        };
        assert!(matches!(bursts.slice(6, 0), Load::Bursts { bursts: 5, .. }));
    }
}
