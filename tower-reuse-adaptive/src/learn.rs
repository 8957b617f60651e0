//! What the controller learns of a server from the closes it sees: its idle
//! timeout and its request limit per connection. No header is needed: a
//! server that sends `Keep-Alive: timeout` is already honoured by the pool.

use std::collections::VecDeque;
use std::time::Duration;

use crate::signals::Samples;

/// Idle closes remembered.
const IDLE_KEPT: usize = 8;

/// Closes after a response that must agree on a count before it is taken
/// for the server's request limit.
const REQUEST_AGREE: usize = 3;

/// One server's limits as learned so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct Learned {
    idle_closes: VecDeque<Duration>,
    request_closes: VecDeque<u64>,
    /// The server's idle timeout, as the client sees it.
    pub(crate) idle_limit: Option<Duration>,
    /// The requests the server serves on one connection.
    pub(crate) request_limit: Option<u64>,
}

impl Learned {
    /// Take in a drain's samples.
    pub(crate) fn observe(&mut self, samples: &Samples) {
        if !is_mass_close(&samples.idle_closes) {
            self.observe_idle(&samples.idle_closes);
        }
        self.observe_requests(&samples.request_closes);
    }

    fn observe_idle(&mut self, idle_closes: &[Duration]) {
        for &idle in idle_closes {
            if self.idle_closes.len() == IDLE_KEPT {
                self.idle_closes.pop_front();
            }
            self.idle_closes.push_back(idle);
        }
        if !idle_closes.is_empty() {
            self.idle_limit = self.idle_estimate();
        }
    }

    fn observe_requests(&mut self, request_closes: &[u64]) {
        for &served in request_closes {
            if self.request_closes.len() == REQUEST_AGREE {
                self.request_closes.pop_front();
            }
            self.request_closes.push_back(served);
            let first = self.request_closes[0];
            // One request per connection is what error pages closing
            // their connection look like, not a limit to keep.
            if first > 1
                && self.request_closes.len() == REQUEST_AGREE
                && self.request_closes.iter().all(|&n| n == first)
            {
                self.request_limit = Some(first);
            }
        }
    }

    /// The shortest idle age the server closed at; once three are known,
    /// the second shortest, so that one close for another cause (a
    /// restart, a server shedding load) does not set it.
    fn idle_estimate(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.idle_closes.iter().copied().collect();
        sorted.sort_unstable();
        let at = usize::from(sorted.len() >= 3);
        sorted.get(at).copied()
    }
}

/// Many idle connections closed by the server within one tick at idle ages
/// far apart: a restart, a reload or a server shedding connections, not an
/// idle timeout (whose closes come at one age).
fn is_mass_close(idle_closes: &[Duration]) -> bool {
    let (Some(min), Some(max)) = (idle_closes.iter().min(), idle_closes.iter().max()) else {
        return false;
    };
    idle_closes.len() >= MASS_CLOSE && *max > min.mul_f64(1.5)
}

/// Idle closes in one tick that may be a mass close.
const MASS_CLOSE: usize = 4;

/// How far below the server's idle limit the pool closes: the time a
/// request needs to reach the server (at most the connect time, which
/// spans a round trip or more), twice, and never less than a tenth of the
/// limit, so a request sent just before the pool's close is not met by
/// the server's.
pub(crate) fn margin(limit: Duration, connect: Option<Duration>) -> Duration {
    let trip = connect.unwrap_or_default() * 2;
    trip.max(limit / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(ms: &[u64]) -> Samples {
        Samples {
            idle_closes: ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            ..Samples::default()
        }
    }

    #[test]
    fn the_idle_limit_is_the_shortest_close_ignoring_one_outlier() {
        let mut learned = Learned::default();
        learned.observe(&idle(&[1004]));
        assert_eq!(learned.idle_limit, Some(Duration::from_millis(1004)));
        learned.observe(&idle(&[1001, 120, 1003]));
        assert_eq!(learned.idle_limit, Some(Duration::from_millis(1001)));
        learned.observe(&idle(&[400, 410]));
        assert_eq!(learned.idle_limit, Some(Duration::from_millis(400)));
    }

    #[test]
    fn a_request_limit_needs_three_closes_that_agree() {
        let mut learned = Learned::default();
        let served = |n: &[u64]| Samples {
            request_closes: n.to_vec(),
            ..Samples::default()
        };
        learned.observe(&served(&[10, 10]));
        assert_eq!(learned.request_limit, None);
        learned.observe(&served(&[4]));
        assert_eq!(learned.request_limit, None);
        learned.observe(&served(&[10, 10, 10]));
        assert_eq!(learned.request_limit, Some(10));
        learned.observe(&served(&[7, 3]));
        assert_eq!(learned.request_limit, Some(10));
    }

    #[test]
    fn a_mass_close_at_scattered_ages_is_not_an_idle_limit() {
        let mut learned = Learned::default();
        learned.observe(&idle(&[1004]));
        // A restart: every idle connection at once, whatever its age.
        learned.observe(&idle(&[120, 340, 560, 900, 1003]));
        assert_eq!(learned.idle_limit, Some(Duration::from_millis(1004)));
        // Many closes at one age are the limit (the one close before them
        // is outvoted).
        learned.observe(&idle(&[2001, 2003, 2002, 2004, 2001]));
        assert_eq!(learned.idle_limit, Some(Duration::from_millis(2001)));
    }

    #[test]
    fn connections_closed_after_one_request_teach_no_limit() {
        let mut learned = Learned::default();
        learned.observe(&Samples {
            request_closes: vec![1, 1, 1],
            ..Samples::default()
        });
        assert_eq!(learned.request_limit, None);
    }

    #[test]
    fn the_margin_covers_the_round_trip_and_a_tenth() {
        let second = Duration::from_secs(1);
        assert_eq!(margin(second, None), Duration::from_millis(100));
        assert_eq!(
            margin(second, Some(Duration::from_millis(80))),
            Duration::from_millis(160)
        );
    }
}
