//! Poisson arrival times: the schedule of an open-loop load, apart from
//! the sending, so that its counts can be checked without a run.

use std::time::Duration;

/// Arrival times (offsets from the load's start) of a Poisson process of
/// `rate` per second: exponential gaps of mean `1 / rate`, none at or
/// after `duration`, at most `max` in all. Bounded in count and in time.
#[derive(Debug)]
pub struct Arrivals {
    rng: fastrand::Rng,
    mean_gap: f64,
    next: f64,
    duration: f64,
    left: u64,
}

impl Arrivals {
    /// The arrivals of `rate` per second over `duration`, at most `max`,
    /// drawn from `rng`.
    pub fn new(rate: f64, duration: Duration, max: u64, rng: fastrand::Rng) -> Self {
        Self {
            rng,
            mean_gap: 1.0 / rate.max(1e-3),
            next: 0.0,
            duration: duration.as_secs_f64(),
            left: max,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.left == 0 {
            return None;
        }
        // Exponential inter-arrival time; 1 - u is in (0, 1], so ln is finite.
        self.next += -(1.0 - self.rng.f64()).ln() * self.mean_gap;
        if self.next >= self.duration {
            self.left = 0;
            return None;
        }
        self.left -= 1;
        Some(Duration::from_secs_f64(self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200/s over 20 s: 4 000 expected, standard deviation 63; with fixed
    /// seeds every count lies within 4 deviations, times in order and
    /// inside the window.
    #[test]
    fn poisson_arrivals_count_lies_within_bounds() {
        for seed in 0..20 {
            let rng = fastrand::Rng::with_seed(seed);
            let times: Vec<Duration> =
                Arrivals::new(200.0, Duration::from_secs(20), u64::MAX, rng).collect();
            assert!(
                (4_000 - 253..=4_000 + 253).contains(&times.len()),
                "seed {seed}: {} arrivals",
                times.len()
            );
            assert!(times.windows(2).all(|w| w[0] <= w[1]));
            assert!(times.iter().all(|t| *t < Duration::from_secs(20)));
        }
    }

    /// The count bound ends the schedule early; a zero duration has none.
    #[test]
    fn poisson_arrivals_stop_at_the_count_and_the_deadline() {
        let rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            Arrivals::new(1_000.0, Duration::from_secs(10), 50, rng).count(),
            50
        );
        let rng = fastrand::Rng::with_seed(1);
        assert_eq!(Arrivals::new(1_000.0, Duration::ZERO, 50, rng).count(), 0);
    }
}
