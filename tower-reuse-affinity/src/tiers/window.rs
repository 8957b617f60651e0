//! A sliding window as a ring of buckets: request counts (summed) and
//! in-flight peaks (maxed) over the last `BUCKETS` bucket widths.
//!
//! Time is a tick: nanoseconds since the controller's base instant. A
//! bucket's epoch is `tick / width`; the ring keeps the counts of the epochs
//! `(epoch - BUCKETS, epoch]`. Its size is fixed (no allocation), whatever
//! the window.

use std::time::Duration;

/// Buckets per window: a rate is known to a tenth of its window.
pub(crate) const BUCKETS: usize = 10;

/// The bucket geometry of one window, shared by every key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    /// Nanoseconds per bucket, at least 1.
    width: u64,
}

impl Span {
    pub(crate) fn new(window: Duration) -> Self {
        let width = window.as_nanos() / BUCKETS as u128;
        Span {
            width: u64::try_from(width).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Nanoseconds per bucket.
    pub(crate) fn width(self) -> u64 {
        self.width
    }

    /// The bucket a tick falls in.
    pub(crate) fn epoch(self, tick: u64) -> u64 {
        tick / self.width
    }

    /// The seconds a ring's sum covers at `tick`: the `BUCKETS - 1` whole
    /// buckets before the current one and the current one's elapsed part.
    /// Never zero, so a rate is always finite.
    pub(crate) fn covered_secs(self, tick: u64) -> f64 {
        let whole = self.width.saturating_mul(BUCKETS as u64 - 1);
        whole.saturating_add(tick % self.width) as f64 / 1e9
    }

    /// Requests per second for `count` requests over the window at `tick`.
    pub(crate) fn rate(self, count: u64, tick: u64) -> f64 {
        count as f64 / self.covered_secs(tick)
    }
}

/// One value per bucket, the newest at `epoch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring {
    epoch: u64,
    values: [u32; BUCKETS],
}

impl Ring {
    pub(crate) fn new(epoch: u64) -> Self {
        Ring {
            epoch,
            values: [0; BUCKETS],
        }
    }

    /// Moves the ring on to `epoch`, setting the buckets it enters to
    /// `fill`. A late epoch (before the ring's) changes nothing: its value
    /// then lands in the newest bucket.
    pub(crate) fn advance(&mut self, epoch: u64, fill: u32) {
        if epoch <= self.epoch {
            return;
        }
        if epoch - self.epoch >= BUCKETS as u64 {
            self.values = [fill; BUCKETS];
        } else {
            for e in self.epoch + 1..=epoch {
                self.values[Self::slot(e)] = fill;
            }
        }
        self.epoch = epoch;
    }

    /// Counts one at `epoch` (saturating).
    pub(crate) fn add(&mut self, epoch: u64) {
        self.advance(epoch, 0);
        let value = &mut self.values[Self::slot(self.epoch)];
        *value = value.saturating_add(1);
    }

    /// Raises the newest bucket to at least `value`.
    pub(crate) fn raise(&mut self, value: u32) {
        let newest = &mut self.values[Self::slot(self.epoch)];
        *newest = (*newest).max(value);
    }

    /// The sum over the window ending at `epoch`, without moving the ring.
    pub(crate) fn sum_at(&self, epoch: u64) -> u64 {
        self.live(epoch).map(u64::from).sum()
    }

    /// The largest value over the window ending at `epoch`, without moving
    /// the ring: the buckets it would enter hold `fill`.
    pub(crate) fn max_at(&self, epoch: u64, fill: u32) -> u32 {
        let entered = if epoch > self.epoch { fill } else { 0 };
        self.live(epoch).fold(entered, u32::max)
    }

    /// The values of the buckets still inside the window ending at `epoch`.
    fn live(&self, epoch: u64) -> impl Iterator<Item = u32> + '_ {
        let epoch = epoch.max(self.epoch);
        (0..BUCKETS as u64)
            .take_while(move |&back| back <= self.epoch)
            .map(move |back| self.epoch - back)
            .filter(move |&e| e.saturating_add(BUCKETS as u64) > epoch)
            .map(move |e| self.values[Self::slot(e)])
    }

    fn slot(epoch: u64) -> usize {
        (epoch % BUCKETS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_the_window_bucket_by_bucket() {
        let mut ring = Ring::new(0);
        for epoch in 0..BUCKETS as u64 {
            ring.add(epoch);
        }
        assert_eq!(ring.sum_at(9), 10);
        assert_eq!(ring.sum_at(10), 9, "epoch 0 has left");
        assert_eq!(ring.sum_at(15), 4);
        assert_eq!(ring.sum_at(19), 0);
        ring.add(12);
        assert_eq!(ring.sum_at(12), 7 + 1, "epochs 3..=9 and the new one");
        ring.add(1_000);
        assert_eq!(ring.sum_at(1_000), 1, "a long gap clears every bucket");
        ring.add(999);
        assert_eq!(
            ring.sum_at(1_000),
            2,
            "a late count lands in the newest bucket"
        );
    }

    #[test]
    fn peaks_fill_the_buckets_a_ring_enters() {
        let mut ring = Ring::new(0);
        ring.raise(7);
        ring.advance(3, 2);
        assert_eq!(ring.max_at(3, 2), 7);
        assert_eq!(ring.max_at(10, 2), 2, "epoch 0 left, 1..=3 hold the fill");
        assert_eq!(ring.max_at(100, 2), 2, "still 2 in flight");
        assert_eq!(ring.max_at(100, 0), 0);
    }

    #[test]
    fn rates_are_finite_for_any_span() {
        for window in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let span = Span::new(window);
            for tick in [0, 1, u64::MAX] {
                let rate = span.rate(u64::MAX, tick);
                assert!(rate.is_finite() && rate >= 0.0, "{window:?} {tick}");
                let _ = span.epoch(tick);
            }
        }
        let span = Span::new(Duration::from_secs(5));
        assert_eq!(span.covered_secs(0), 4.5);
        assert_eq!(span.rate(45, 10_000_000_000), 10.0);
    }
}
