//! What an HTTP/2 server's refusals (`REFUSED_STREAM`) teach about the
//! streams it takes on a connection: a release lag, or a lower limit.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How long a connection keeps a limit learned from a refusal before it
/// tries one stream more, and again after each step up.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(10);

/// A lag learned from refusals is kept within this: a refusal it would
/// take longer to explain teaches a lower limit instead.
pub(crate) const MAX_RELEASE_LAG: Duration = Duration::from_millis(100);

/// Below this a learned lag is forgotten.
const MIN_RELEASE_LAG: Duration = Duration::from_micros(500);

/// Stream ends kept to explain a refusal: as many as slots it can explain.
const ENDS_KEPT: usize = 64;

/// What a server's refusals (`REFUSED_STREAM`) taught about the streams it
/// takes on a connection.
///
/// A server may count a stream's slot busy for a while after the stream
/// has ended on the client's side (grpc-core does), and refuse a new
/// stream that the advertised limit allows. A refusal is explained, where
/// it can be, by such a *release lag*: the server still counted the
/// `advertised - in flight` streams that ended last, so it holds their
/// slots at least as long as the oldest of them has been over. From then on
/// a slot freed by a stream's end is taken again only after the lag (that
/// time and a millisecond; doubled by each later refusal that comes while
/// it holds), so the connection keeps carrying up to the advertised limit. A refusal no
/// recent end explains (a server enforcing less than it advertises) limits
/// the connection to the streams in flight then, which the server had
/// accepted. Every [`PROBE_AFTER`] the lag shrinks by a quarter and the
/// limit goes up, one stream at first and twice as many at each step after,
/// back to the advertised limit: a few steps even where a server advertises
/// no limit (`usize::MAX`) or 2^31 - 1.
#[derive(Debug, Default)]
pub(crate) struct LearnedLimit {
    /// The limit in force, below the advertised one; `None`: the advertised one.
    effective: Option<usize>,
    /// How long a slot stays the server's after its stream ended.
    lag: Option<Duration>,
    /// When a refusal last raised it.
    raised_at: Option<Instant>,
    /// When recent streams ended, the newest last.
    ended: VecDeque<Instant>,
    /// When the limit goes up (and the lag shrinks), and by how many streams.
    probe_at: Option<Instant>,
    step: usize,
    /// Streams the server refused on this connection.
    pub(crate) refused: u64,
}

impl LearnedLimit {
    /// A stream the server had accepted ended.
    pub(crate) fn ended(&mut self, now: Instant) {
        if self.ended.len() == ENDS_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back(now);
    }

    /// The server refused a stream while `in_flight` others were open on
    /// the connection, under an `advertised` limit.
    pub(crate) fn refused(&mut self, in_flight: usize, advertised: usize, now: Instant) {
        self.refused += 1;
        self.probe_at = now.checked_add(PROBE_AFTER);
        self.step = 1;
        let held = advertised.saturating_sub(in_flight);
        let explained = held
            .checked_sub(1)
            .and_then(|back| self.ended.iter().rev().nth(back))
            .map(|&end| now.saturating_duration_since(end))
            .filter(|&over| over < MAX_RELEASE_LAG);
        match explained {
            Some(over) => {
                let seen = over + Duration::from_millis(1);
                // Refused again under a lag learned earlier (not in the
                // same burst): it was too short, double it.
                let doubled = self
                    .lag
                    .zip(self.raised_at)
                    .filter(|&(_, at)| now >= at + Duration::from_millis(1))
                    .map(|(lag, _)| lag * 2);
                let lag = self
                    .lag
                    .into_iter()
                    .chain(doubled)
                    .fold(seen, Duration::max);
                self.lag = Some(lag.min(MAX_RELEASE_LAG));
                self.raised_at = Some(now);
            }
            None => {
                self.effective = Some(self.effective.map_or(in_flight, |e| e.min(in_flight)));
            }
        }
    }

    /// Step the limit up and the lag down for every [`PROBE_AFTER`] passed,
    /// each limit step twice the last; at the advertised limit and with no
    /// lag left, nothing learned remains.
    pub(crate) fn probe(&mut self, advertised: usize, now: Instant) {
        while let Some(at) = self.probe_at {
            if at > now {
                return;
            }
            if let Some(effective) = self.effective {
                let raised = effective.saturating_add(self.step);
                self.effective = (raised < advertised).then_some(raised);
                self.step = self.step.saturating_mul(2);
            }
            self.lag = self
                .lag
                .map(|lag| lag * 7 / 8)
                .filter(|&lag| lag >= MIN_RELEASE_LAG);
            self.probe_at = if self.effective.is_some() || self.lag.is_some() {
                at.checked_add(PROBE_AFTER)
            } else {
                None
            };
        }
    }

    /// `advertised`, or less after a refusal.
    pub(crate) fn cap(&self, advertised: usize) -> usize {
        self.effective.map_or(advertised, |e| e.min(advertised))
    }

    /// Slots whose streams ended within the lag: still the server's.
    pub(crate) fn lingering(&self, now: Instant) -> usize {
        let Some(lag) = self.lag else { return 0 };
        self.ended
            .iter()
            .rev()
            .take_while(|&&end| end + lag > now)
            .count()
    }

    /// When the next lingering slot is free again.
    pub(crate) fn next_free(&self, now: Instant) -> Option<Instant> {
        let lag = self.lag?;
        self.ended
            .iter()
            .map(|&end| end + lag)
            .find(|&free| free > now)
    }

    /// Whether a refusal holds the limit below the advertised one.
    pub(crate) fn is_lowered(&self) -> bool {
        self.effective.is_some()
    }

    /// The release lag learned, if any.
    pub(crate) fn lag(&self) -> Option<Duration> {
        self.lag
    }

    /// When the limit next goes up or the lag down, if either was learned.
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        self.probe_at
    }

    /// When the reaper should next look at this connection: a probe, or a
    /// lingering slot freed.
    pub(crate) fn next_event(&self, now: Instant) -> Option<Instant> {
        match (self.probe_at, self.next_free(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_limit_steps_back_up_doubling_its_step() {
        let now = Instant::now();
        let mut learned = LearnedLimit::default();
        learned.refused(15, 20, now);
        assert_eq!(learned.cap(20), 15);
        let mut at = now;
        for cap in [16, 18] {
            at += PROBE_AFTER;
            learned.probe(20, at);
            assert_eq!(learned.cap(20), cap);
        }
        at += PROBE_AFTER;
        learned.probe(20, at);
        assert!(!learned.is_lowered(), "forgotten at the advertised limit");
    }

    #[test]
    fn a_learned_limit_under_no_advertised_limit_is_forgotten_in_few_steps() {
        let now = Instant::now();
        let mut learned = LearnedLimit::default();
        learned.refused(16, usize::MAX, now);
        let mut steps = 0;
        while learned.is_lowered() {
            steps += 1;
            assert!(steps <= usize::BITS, "still lowered after {steps} steps");
            learned.probe(usize::MAX, now + PROBE_AFTER * steps);
        }
    }

    #[test]
    fn a_refusal_recent_ends_explain_teaches_a_release_lag() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut learned = LearnedLimit::default();
        for at in [0, 2, 4] {
            learned.ended(start + ms(at));
        }
        // Refused at 5 ms with 14 of 16 in flight: the two latest ends
        // (2 and 4 ms) still held their slots, the older for 3 ms.
        learned.refused(14, 16, start + ms(5));
        assert_eq!((learned.lag(), learned.cap(16)), (Some(ms(4)), 16));
        assert_eq!(learned.lingering(start + ms(5)), 2, "ended at 2 and 4 ms");
        assert_eq!(learned.next_free(start + ms(5)), Some(start + ms(6)));
        // A second refusal of the same burst does not double it; a later
        // one does.
        learned.refused(14, 16, start + ms(5));
        assert_eq!(learned.lag(), Some(ms(4)));
        learned.refused(14, 16, start + ms(7));
        assert_eq!(learned.lag(), Some(ms(8)));
        // It wears off an eighth per probe, then is forgotten.
        learned.probe(16, start + ms(17));
        assert_eq!(learned.lag(), Some(ms(7)));
        learned.probe(16, start + ms(1000));
        assert_eq!((learned.lag(), learned.probe_at()), (None, None));
    }

    #[test]
    fn a_refusal_no_recent_end_explains_lowers_the_limit() {
        let start = Instant::now();
        let mut learned = LearnedLimit::default();
        learned.ended(start);
        // Three slots held beyond the one end: not a lag.
        learned.refused(12, 16, start + Duration::from_millis(1));
        assert_eq!((learned.lag(), learned.cap(16)), (None, 12));
        // An end too long over explains nothing either.
        let later = start + MAX_RELEASE_LAG;
        learned.refused(15, 16, later);
        assert_eq!((learned.lag(), learned.cap(16)), (None, 12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_limit_steps_back_up_to_the_advertised_one() {
        let mut learned = LearnedLimit::default();
        assert_eq!(learned.cap(16), 16);
        let start = Instant::now();
        learned.refused(14, 16, start);
        learned.refused(15, 16, start);
        assert_eq!((learned.cap(16), learned.refused), (14, 2));
        learned.probe(16, start + PROBE_AFTER - Duration::from_millis(1));
        assert_eq!(learned.cap(16), 14);
        learned.probe(16, start + PROBE_AFTER);
        assert_eq!(learned.cap(16), 15);
        assert_eq!(learned.probe_at(), Some(start + PROBE_AFTER * 2));
        learned.probe(16, start + PROBE_AFTER * 2);
        assert_eq!((learned.cap(16), learned.probe_at()), (16, None));
        // A server that lowers its advertised limit below the learned one wins.
        learned.refused(10, 16, start);
        assert_eq!(learned.cap(8), 8);
    }
}
