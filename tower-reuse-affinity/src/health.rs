//! Ejection of failing endpoints: consecutive failures, a back-off that
//! grows with each ejection, probation on return with one request deciding.
//!
//! One endpoint's state machine, on an explicit clock so that it is tested
//! without time passing; the share of a service's endpoints that may be
//! ejected at once is the caller's check ([`Health::on_failure`]'s `room`).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Ejection;

/// Whether an endpoint takes requests now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    /// In service.
    Healthy,
    /// Ejected; back on probation at the instant given.
    Ejected(Instant),
    /// Its ejection is over: the next request to it is the probe.
    Probation,
    /// On probation, with its probe in flight: no other request meanwhile.
    Probing,
}

/// What a request's outcome did to its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to report.
    Unchanged,
    /// Ejected for `for_` (its `times`th ejection in a row), after
    /// `failures` consecutive failures.
    Ejected {
        for_: Duration,
        times: u32,
        failures: u32,
    },
    /// The probe succeeded: back in service.
    Returned,
    /// Enough failures to eject it, but the service's share of ejected
    /// endpoints is used up: it stays in service.
    Kept { failures: u32 },
}

/// One endpoint's health.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Consecutive failures.
    failures: u32,
    /// Ejections so far; forgotten after a healthy `Ejection::max` (the
    /// longest ejection) in service.
    times: u32,
    /// Ejected until then.
    until: Option<Instant>,
    probing: bool,
    /// When it last came back from an ejection.
    back_since: Option<Instant>,
}

impl Health {
    pub(crate) fn availability(&self, now: Instant) -> Availability {
        match self.until {
            None => Availability::Healthy,
            Some(until) if now < until => Availability::Ejected(until),
            Some(_) if self.probing => Availability::Probing,
            Some(_) => Availability::Probation,
        }
    }

    /// Whether it is out of service (ejected, or on probation).
    pub(crate) fn is_out(&self) -> bool {
        self.until.is_some()
    }

    /// Ejections so far.
    #[cfg(test)]
    pub(crate) fn times(&self) -> u32 {
        self.times
    }

    /// Until when it is ejected, if it is.
    pub(crate) fn ejected_until(&self) -> Option<Instant> {
        self.until
    }

    /// Take the probe of an endpoint on probation: `false` if it is not on
    /// probation or another request has it.
    pub(crate) fn claim_probe(&mut self, now: Instant) -> bool {
        if self.availability(now) == Availability::Probation {
            self.probing = true;
            true
        } else {
            false
        }
    }

    /// The probe ended with no outcome (cancelled): the next request probes.
    pub(crate) fn release_probe(&mut self) {
        self.probing = false;
    }

    pub(crate) fn on_success(&mut self, now: Instant) -> Verdict {
        self.failures = 0;
        if self.until.is_some() && self.probing {
            self.until = None;
            self.probing = false;
            self.back_since = Some(now);
            return Verdict::Returned;
        }
        Verdict::Unchanged
    }

    /// A failure. `room`: whether the service may have one more endpoint
    /// ejected; `jitter` in `[0, 1)` takes up to a tenth off the ejection.
    pub(crate) fn on_failure(
        &mut self,
        now: Instant,
        rules: &Ejection,
        room: bool,
        jitter: f64,
    ) -> Verdict {
        self.failures = self.failures.saturating_add(1);
        let failed_probe = self.until.is_some() && self.probing;
        if !failed_probe && (self.until.is_some() || self.failures < rules.after) {
            return Verdict::Unchanged;
        }
        // A probe's endpoint is out of service already: no room needed.
        if !failed_probe && !room {
            return Verdict::Kept {
                failures: self.failures,
            };
        }
        if self
            .back_since
            .is_some_and(|back| now.saturating_duration_since(back) >= rules.max)
        {
            self.times = 0;
        }
        self.times = self.times.saturating_add(1);
        let full = rules.base.saturating_mul(self.times).min(rules.max);
        let for_ = full.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0));
        self.until = Some(now + for_);
        self.probing = false;
        Verdict::Ejected {
            for_,
            times: self.times,
            failures: std::mem::take(&mut self.failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Ejection {
        Ejection {
            after: 3,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_share: 0.5,
            on_5xx: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_after_consecutive_failures_only() {
        let (mut h, rules, now) = (Health::default(), rules(), Instant::now());
        assert_eq!(h.on_failure(now, &rules, true, 0.0), Verdict::Unchanged);
        assert_eq!(h.on_failure(now, &rules, true, 0.0), Verdict::Unchanged);
        // A success in between starts the count again.
        assert_eq!(h.on_success(now), Verdict::Unchanged);
        assert_eq!(h.on_failure(now, &rules, true, 0.0), Verdict::Unchanged);
        assert_eq!(h.on_failure(now, &rules, true, 0.0), Verdict::Unchanged);
        let verdict = h.on_failure(now, &rules, true, 0.0);
        assert_eq!(
            verdict,
            Verdict::Ejected {
                for_: Duration::from_secs(30),
                times: 1,
                failures: 3
            }
        );
        assert_eq!(
            h.availability(now),
            Availability::Ejected(now + Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_room_keeps_it_in_service() {
        let (mut h, rules, now) = (Health::default(), rules(), Instant::now());
        for _ in 0..2 {
            h.on_failure(now, &rules, false, 0.0);
        }
        assert_eq!(
            h.on_failure(now, &rules, false, 0.0),
            Verdict::Kept { failures: 3 }
        );
        assert_eq!(h.availability(now), Availability::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn probation_lets_one_request_decide_and_back_off_grows() {
        let (mut h, rules) = (Health::default(), rules());
        let start = Instant::now();
        for _ in 0..3 {
            h.on_failure(start, &rules, true, 0.0);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        assert_eq!(h.availability(now), Availability::Probation);
        assert!(h.claim_probe(now));
        assert!(!h.claim_probe(now), "one probe at a time");
        assert_eq!(h.availability(now), Availability::Probing);
        // The probe fails: ejected again, twice as long, whatever `room`.
        let verdict = h.on_failure(now, &rules, false, 0.0);
        assert!(
            matches!(verdict, Verdict::Ejected { for_, times: 2, .. } if for_ == Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let now = Instant::now();
        assert!(h.claim_probe(now));
        // A cancelled probe frees the slot for the next request.
        h.release_probe();
        assert!(h.claim_probe(now));
        assert_eq!(h.on_success(now), Verdict::Returned);
        assert_eq!(h.availability(now), Availability::Healthy);
        // The next ejection soon after grows on: 90 s, with at most a
        // tenth of jitter off.
        for _ in 0..3 {
            h.on_failure(now, &rules, true, 0.999);
        }
        let Availability::Ejected(until) = h.availability(now) else {
            panic!("ejected")
        };
        let d = until - now;
        assert!(
            d <= Duration::from_secs(90) && d > Duration::from_secs(80),
            "{d:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_is_capped_and_forgotten_after_a_long_healthy_spell() {
        let (mut h, rules) = (Health::default(), rules());
        let mut last = Duration::ZERO;
        for _ in 0..15 {
            let now = Instant::now();
            for _ in 0..3 {
                if let Verdict::Ejected { for_, .. } = h.on_failure(now, &rules, true, 0.0) {
                    last = for_;
                }
            }
            tokio::time::advance(last).await;
            assert!(h.claim_probe(Instant::now()));
            h.on_success(Instant::now());
        }
        assert_eq!(last, Duration::from_secs(300), "capped");
        // Five healthy minutes: the next ejection starts from the base.
        tokio::time::advance(Duration::from_secs(300)).await;
        let now = Instant::now();
        for _ in 0..3 {
            h.on_failure(now, &rules, true, 0.0);
        }
        assert_eq!(h.times(), 1);
        assert_eq!(h.ejected_until(), Some(now + Duration::from_secs(30)));
    }
}
