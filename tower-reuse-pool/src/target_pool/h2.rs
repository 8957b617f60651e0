//! HTTP/2 servers that push back: stream limits learned from refusals
//! (`REFUSED_STREAM`) and the back-off after `ENHANCE_YOUR_CALM`.

use std::time::Duration;

use tokio::time::Instant;

use super::{Effects, State};
use crate::conn::ConnId;

/// The first back-off from a target after its server sent
/// `ENHANCE_YOUR_CALM`; doubled each time it comes again soon after.
pub(super) const CALM_BACKOFF: Duration = Duration::from_secs(1);

/// The longest back-off after `ENHANCE_YOUR_CALM`.
pub(super) const CALM_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A back-off after `ENHANCE_YOUR_CALM`.
#[derive(Clone, Copy)]
pub(super) struct CalmBackoff {
    /// No connect before this.
    pub(super) until: Instant,
    pub(super) backoff: Duration,
    /// The connection whose server asked for calm.
    pub(super) id: ConnId,
}

impl<B> State<B> {
    /// Step up the stream limits learned from refusals whose time has come.
    pub(super) fn probe_learned_limits(&mut self, now: Instant) {
        let learned = self.h2_learned;
        for conn in &mut self.h2 {
            if conn.learned.probe_at().is_some_and(|at| at <= now) {
                let advertised = conn.advertised(learned);
                conn.learned.probe(advertised, now);
            }
        }
    }

    /// Whether what refusals taught (lower limits, release lags) keeps a
    /// connect back: it may cost one connection more than the advertised
    /// limits call for (the streams in flight and waiting), not more. A
    /// server that refuses below its advertised limit frees its slots
    /// later, and what was learned wears off.
    pub(super) fn learned_limits_hold_back(&self) -> bool {
        let (mut live, mut in_flight, mut lowered) = (0, 0, false);
        for conn in self.h2.iter().filter(|c| !c.life.is_draining()) {
            live += 1;
            in_flight += conn.streams;
            lowered |= conn.learned.is_lowered() || conn.learned.lag().is_some();
        }
        let demand = in_flight + self.waiters.len();
        lowered && live + self.connecting > demand.div_ceil(self.h2_streams_hint.max(1))
    }

    /// The server sent `ENHANCE_YOUR_CALM`: no connect for a while, longer
    /// each time it comes again before the last back-off is twice over.
    pub(super) fn calm_down(&mut self, id: ConnId, now: Instant, fx: &mut Effects<B>) {
        let backoff = match self.calm_backoff {
            // One connection's signal counts once (a reset stream, then
            // the GOAWAY that ends the connection).
            Some(last) if last.id == id => return,
            Some(last) if now < last.until + last.backoff => {
                (last.backoff * 2).min(CALM_BACKOFF_MAX)
            }
            _ => CALM_BACKOFF,
        };
        self.counters.calm += 1;
        self.calm_backoff = Some(CalmBackoff {
            until: now + backoff,
            backoff,
            id,
        });
        fx.wake_at(Some(now + backoff));
        fx.calmed = Some((id, backoff));
    }

    /// Whether connects wait for an `ENHANCE_YOUR_CALM` back-off; if so,
    /// the reaper is woken when it ends.
    pub(super) fn calming(&self, now: Instant, fx: &mut Effects<B>) -> bool {
        match self.calm_backoff {
            Some(calm) if calm.until > now => {
                fx.wake_at(Some(calm.until));
                true
            }
            _ => false,
        }
    }
}
