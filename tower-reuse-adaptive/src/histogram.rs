//! Durations in log-scale buckets: four per doubling (a quarter octave, so
//! a quantile is read within 19 % of the value), from 1 µs to 19 hours.
//! The live form takes one relaxed atomic add per value; the controller
//! drains it into plain counts each tick.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How many buckets: values below 8 µs each have their own, then four per
/// doubling up to 2^36 µs.
pub(crate) const BUCKETS: usize = 140;

/// The bucket of `d`.
pub(crate) fn index(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if us < 8 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // at least 3
    let quarter = ((us >> (exp - 2)) & 3) as usize;
    ((exp - 1) * 4 + quarter).min(BUCKETS - 1)
}

/// The smallest value of bucket `i`.
pub(crate) fn lower(i: usize) -> Duration {
    if i < 8 {
        return Duration::from_micros(i as u64);
    }
    let exp = i / 4 + 1;
    let quarter = (i % 4) as u64;
    Duration::from_micros((4 + quarter) << (exp - 2))
}

/// The values of bucket `i` are below this.
pub(crate) fn upper(i: usize) -> Duration {
    lower(i + 1)
}

/// Counts per bucket, filled from many threads.
pub(crate) struct LiveHistogram {
    counts: Box<[AtomicU32; BUCKETS]>,
}

impl Default for LiveHistogram {
    fn default() -> Self {
        LiveHistogram {
            counts: Box::new(std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }
}

impl LiveHistogram {
    pub(crate) fn record(&self, d: Duration) {
        self.counts[index(d)].fetch_add(1, Ordering::Relaxed);
    }

    /// Record a count (requests in flight): exact below 8, within a
    /// quarter octave above.
    pub(crate) fn record_count(&self, n: usize) {
        self.record(Duration::from_micros(n as u64));
    }

    /// Move the counts into `into`, leaving zeros.
    pub(crate) fn drain_into(&self, into: &mut Histogram) {
        for (i, count) in self.counts.iter().enumerate() {
            if count.load(Ordering::Relaxed) != 0 {
                let n = count.swap(0, Ordering::Relaxed);
                into.add(i, n);
            }
        }
    }
}

impl std::fmt::Debug for LiveHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHistogram").finish_non_exhaustive()
    }
}

/// Counts per bucket, owned by the controller; empty until a value comes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    counts: Option<Box<[u32; BUCKETS]>>,
    total: u64,
}

impl Histogram {
    pub(crate) fn add(&mut self, i: usize, n: u32) {
        let counts = self.counts.get_or_insert_with(|| Box::new([0; BUCKETS]));
        counts[i] = counts[i].saturating_add(n);
        self.total += u64::from(n);
    }

    #[cfg(test)]
    pub(crate) fn record(&mut self, d: Duration) {
        self.add(index(d), 1);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        if let Some(counts) = &other.counts {
            for (i, &n) in counts.iter().enumerate() {
                if n != 0 {
                    self.add(i, n);
                }
            }
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0 to 1), as its bucket's upper edge: at
    /// least the true value, and within a quarter octave of it.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let counts = self.counts.as_ref()?;
        let rank = ((self.total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(upper(i));
            }
        }
        None
    }

    /// The `q` quantile of counts recorded with
    /// [`LiveHistogram::record_count`]: the bucket's smallest count.
    pub(crate) fn quantile_count(&self, q: f64) -> Option<usize> {
        let upper = self.quantile(q)?;
        let i = index(upper).saturating_sub(1);
        Some(lower(i).as_micros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        for i in 0..BUCKETS - 1 {
            assert!(lower(i) < upper(i), "bucket {i}");
            assert_eq!(index(lower(i)), i, "lower edge of {i}");
            assert_eq!(
                index(upper(i).saturating_sub(Duration::from_nanos(1000))),
                i,
                "top of {i}"
            );
        }
        assert_eq!(index(Duration::MAX), BUCKETS - 1);
        assert_eq!(index(Duration::ZERO), 0);
    }

    #[test]
    fn counts_are_exact_to_eight_and_within_a_quarter_octave_below_above() {
        let live = LiveHistogram::default();
        for n in [1, 1, 2, 3, 5, 7] {
            live.record_count(n);
        }
        let mut h = Histogram::default();
        live.drain_into(&mut h);
        assert_eq!(h.quantile_count(0.0), Some(1));
        assert_eq!(h.quantile_count(0.5), Some(2));
        assert_eq!(h.quantile_count(1.0), Some(7));
        let live = LiveHistogram::default();
        for n in 1..=100 {
            live.record_count(n);
        }
        let mut h = Histogram::default();
        live.drain_into(&mut h);
        let p50 = h.quantile_count(0.5).unwrap();
        assert!((42..=50).contains(&p50), "{p50}");
    }

    #[test]
    fn a_quantile_is_within_a_quarter_octave_above_the_value() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(99));
        assert!(p99 <= Duration::from_millis(99).mul_f64(1.19 * 1.19));
        assert_eq!(h.count(), 100);
        assert!(Histogram::default().quantile(0.5).is_none());
    }

    #[test]
    fn live_counts_drain_once() {
        let live = LiveHistogram::default();
        live.record(Duration::from_millis(5));
        live.record(Duration::from_millis(5));
        let mut h = Histogram::default();
        live.drain_into(&mut h);
        live.drain_into(&mut h);
        assert_eq!(h.count(), 2);
        let mut merged = Histogram::default();
        merged.merge(&h);
        merged.merge(&h);
        assert_eq!(merged.count(), 4);
    }
}
