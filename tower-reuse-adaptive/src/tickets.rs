//! The TLS session cache's tickets per server (feature `tls`): enough for
//! every connection of the largest recent connect burst to one server to
//! resume, since a TLS 1.3 ticket serves one connection. One setting for
//! the whole cache, so one decision per tick, for the busiest target.

use tokio::time::Instant;

use crate::config::AdaptiveConfig;
use crate::events::{Change, Reason};

/// The tickets kept for a burst: this much over its connects.
const HEADROOM: f64 = 1.25;

/// The cache's `tickets_per_server` as the controller set it.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    /// The cache's bound before the controller changed it (the operator's).
    base: Option<usize>,
    /// What the controller set last.
    ours: Option<usize>,
    changed_at: Option<Instant>,
}

impl Tickets {
    /// The change wanted, with the cache at `current` and `burst` TLS
    /// connects to one target in one bucket of the window.
    pub(crate) fn decide(
        &mut self,
        config: &AdaptiveConfig,
        now: Instant,
        current: usize,
        burst: u64,
    ) -> Option<(Change, Reason)> {
        if self.ours != Some(current) {
            // First seen, or changed by the operator: theirs is the base.
            self.base = Some(current);
            self.ours = None;
        }
        let base = self.base.unwrap_or(current);
        let cooled = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= config.cool_down);
        let needed = (burst as f64 * HEADROOM).ceil() as usize;
        let want = needed.min(config.max_tickets_per_server).max(base);
        if want == current || !cooled {
            return None;
        }
        let to = if want > current {
            if (want - current) as f64 <= current as f64 * config.dead_band {
                return None;
            }
            want.min(current.saturating_add(config.max_step))
        } else {
            want.max(current / 2)
        };
        let reason = if to > current {
            Reason::ConnectBursts
        } else {
            Reason::Released
        };
        Some((Change::TlsTickets { from: current, to }, reason))
    }

    pub(crate) fn record(&mut self, to: usize, now: Instant) {
        self.ours = Some(to);
        self.changed_at = Some(now);
    }

    /// Switched off: the operator's bound, if the controller changed it.
    pub(crate) fn restore(&mut self, current: usize) -> Option<Change> {
        let base = self.base?;
        let ours = self.ours.take()?;
        (ours == current && base != current).then_some(Change::TlsTickets {
            from: current,
            to: base,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn raises_for_bursts_in_bounded_steps_and_releases_by_halves() {
        let config = AdaptiveConfig::default().max_step(32);
        let mut tickets = Tickets::default();
        let now = Instant::now();
        // The operator's 64 covers bursts of 40.
        assert_eq!(tickets.decide(&config, now, 64, 40), None);
        let (change, reason) = tickets.decide(&config, now, 64, 200).unwrap();
        assert_eq!(change, Change::TlsTickets { from: 64, to: 96 });
        assert_eq!(reason, Reason::ConnectBursts);
        tickets.record(96, now);
        // Not again before the cool-down.
        assert_eq!(
            tickets.decide(&config, now + Duration::from_secs(1), 96, 200),
            None
        );
        let later = now + Duration::from_secs(5);
        let (change, _) = tickets.decide(&config, later, 96, 200).unwrap();
        assert_eq!(change, Change::TlsTickets { from: 96, to: 128 });
        tickets.record(128, later);
        // Bursts gone: halves, never below the operator's 64.
        let quiet = later + Duration::from_secs(5);
        let (change, reason) = tickets.decide(&config, quiet, 128, 0).unwrap();
        assert_eq!(
            (change, reason),
            (Change::TlsTickets { from: 128, to: 64 }, Reason::Released)
        );
        tickets.record(64, quiet);
        assert_eq!(
            tickets.decide(&config, quiet + Duration::from_secs(60), 64, 0),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_operators_change_becomes_the_base_and_off_restores_it() {
        let config = AdaptiveConfig::default().max_tickets_per_server(100);
        let mut tickets = Tickets::default();
        let now = Instant::now();
        let (change, _) = tickets.decide(&config, now, 64, 1000).unwrap();
        assert_eq!(change, Change::TlsTickets { from: 64, to: 100 });
        tickets.record(100, now);
        assert_eq!(
            tickets.restore(100),
            Some(Change::TlsTickets { from: 100, to: 64 })
        );
        // The operator set 8 meanwhile: it is kept as the floor.
        let mut tickets = Tickets::default();
        tickets.decide(&config, now, 64, 1000);
        tickets.record(100, now);
        assert_eq!(
            tickets.decide(&config, now + Duration::from_secs(10), 8, 0),
            None
        );
        assert_eq!(tickets.restore(8), None);
    }
}
