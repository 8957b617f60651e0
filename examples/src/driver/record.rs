//! Per-request recording: latency histogram, errors by kind, lost requests,
//! misdelivered responses.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::HeaderValue;

use super::Routes;
use crate::stacks::{Completed, RequestError, RequestErrorKind};

/// Lowest latency the histogram tells apart (1 us, in ns).
const LOWEST_NS: u64 = 1_000;
/// Highest latency recorded (120 s, in ns); longer ones are clamped.
const HIGHEST_NS: u64 = 120_000_000_000;

/// What one worker (or a whole run, once merged) saw.
#[derive(Debug)]
pub struct Recorder {
    latency_ns: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<RequestErrorKind, u64>,
    lost: u64,
    misdelivered: u64,
    unechoed: u64,
    first_error: Option<String>,
    routes: Routes,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            // Two significant digits (1 %) keep a histogram near 40 KiB, so
            // hundreds of workers can each own one.
            latency_ns: Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 2)
                .expect("constant histogram bounds are valid"),
            ok: 0,
            errors: BTreeMap::new(),
            lost: 0,
            misdelivered: 0,
            unechoed: 0,
            first_error: None,
            routes: Routes::default(),
        }
    }

    /// Records one finished request that carried `sent_id`.
    pub fn record(
        &mut self,
        latency: Duration,
        outcome: Result<Completed, RequestError>,
        sent_id: &HeaderValue,
    ) {
        let done = match outcome {
            Ok(done) => done,
            Err(e) => return self.error(e),
        };
        // Every response is checked, an error status too: a misdelivered
        // 503 is as wrong as a misdelivered 200.
        match &done.request_id {
            Some(id) if id != sent_id => self.misdelivered += 1,
            Some(_) => {}
            None => self.unechoed += 1,
        }
        if done.status.is_success() {
            self.ok += 1;
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            let _ = self.latency_ns.record(ns.clamp(LOWEST_NS, HIGHEST_NS));
        } else {
            self.error(RequestError::new(
                RequestErrorKind::Status,
                format!("status {}", done.status),
            ));
        }
    }

    /// Records a request the stack neither answered nor failed within the
    /// lab's limit ([`REQUEST_TIMEOUT`](super::REQUEST_TIMEOUT)).
    pub fn record_lost(&mut self) {
        self.lost += 1;
    }

    /// Counts as lost every one of `sent` requests that has no record here:
    /// no response, no error, not counted lost yet (a request task that
    /// panicked or was still running when the run ended). Requests refused
    /// by the driver itself (`overload`) were never sent.
    pub fn reconcile(&mut self, sent: u64) {
        let unsent = self
            .errors
            .get(&RequestErrorKind::Overload)
            .copied()
            .unwrap_or(0);
        let accounted = self.requests() - unsent;
        self.lost += sent.saturating_sub(accounted);
    }

    /// Records an error; also for a request that failed before it was sent.
    pub fn error(&mut self, error: RequestError) {
        *self.errors.entry(error.kind).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// Adds another recorder's counts to this one.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency_ns.add(&other.latency_ns);
        self.ok += other.ok;
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
        self.lost += other.lost;
        self.misdelivered += other.misdelivered;
        self.unechoed += other.unechoed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.routes.merge(&other.routes);
    }

    /// Notes that key `key`, sent in `phase`, was served by `by`.
    pub fn route(&mut self, phase: u32, key: u32, by: &HeaderValue) {
        self.routes.record(phase, key, by);
    }

    /// Where each affinity key was served (loads with keys only).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Failed requests, all kinds.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failed requests by kind.
    pub fn errors_by_kind(&self) -> &BTreeMap<RequestErrorKind, u64> {
        &self.errors
    }

    /// Requests attempted: successes, failures and lost requests.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors() + self.lost
    }

    /// Requests sent that got neither a response nor an error.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Responses that carried another request's `x-request-id`.
    pub fn misdelivered(&self) -> u64 {
        self.misdelivered
    }

    /// Responses with no `x-request-id` (an external server that does not
    /// echo it, or a stack that lost it).
    pub fn unechoed(&self) -> u64 {
        self.unechoed
    }

    /// The first error seen, for the report.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Latency at quantile `q` (0..=1) of successful requests, in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency_ns.is_empty() {
            return 0.0;
        }
        self.latency_ns.value_at_quantile(q) as f64 / 1_000.0
    }

    /// Latency at each of `quantiles`, in microseconds.
    pub fn quantiles_us(&self, quantiles: &[f64]) -> Vec<(f64, f64)> {
        quantiles
            .iter()
            .map(|&q| (q, self.quantile_us(q)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn response(id: &str) -> Result<Completed, RequestError> {
        Ok(Completed {
            status: StatusCode::OK,
            request_id: Some(HeaderValue::from_str(id).expect("a valid id")),
            body_bytes: 100,
            served_by: None,
        })
    }

    #[test]
    fn every_request_sent_is_a_response_an_error_or_lost() {
        let id = HeaderValue::from_static("1");
        let mut recorder = Recorder::new();
        recorder.record(Duration::from_millis(1), response("1"), &id);
        recorder.record(
            Duration::from_millis(1),
            Err(RequestError::new(RequestErrorKind::Closed, "closed")),
            &id,
        );
        recorder.record_lost();
        // Refused by the driver: never sent.
        recorder.error(RequestError::new(RequestErrorKind::Overload, "full"));
        // Five sent: three recorded, two left no record.
        recorder.reconcile(5);
        assert_eq!(
            (recorder.ok(), recorder.errors(), recorder.lost()),
            (1, 2, 3)
        );
        assert_eq!(recorder.requests(), 6);
    }

    #[test]
    fn reconciling_a_complete_record_loses_nothing() {
        let id = HeaderValue::from_static("1");
        let mut recorder = Recorder::new();
        for _ in 0..3 {
            recorder.record(Duration::from_millis(1), response("1"), &id);
        }
        recorder.reconcile(3);
        assert_eq!(recorder.lost(), 0);
    }

    #[test]
    fn another_requests_id_is_misdelivered() {
        let mut recorder = Recorder::new();
        recorder.record(
            Duration::from_millis(1),
            response("2"),
            &HeaderValue::from_static("1"),
        );
        assert_eq!((recorder.ok(), recorder.misdelivered()), (1, 1));
    }

    #[test]
    fn an_error_status_is_checked_for_its_id_too() {
        let mut recorder = Recorder::new();
        let mut wrong = response("2");
        if let Ok(done) = &mut wrong {
            done.status = StatusCode::SERVICE_UNAVAILABLE;
        }
        recorder.record(
            Duration::from_millis(1),
            wrong,
            &HeaderValue::from_static("1"),
        );
        let mut unechoed = response("1");
        if let Ok(done) = &mut unechoed {
            done.request_id = None;
        }
        recorder.record(
            Duration::from_millis(1),
            unechoed,
            &HeaderValue::from_static("1"),
        );
        assert_eq!(recorder.misdelivered(), 1);
        assert_eq!(recorder.unechoed(), 1);
        assert_eq!((recorder.ok(), recorder.errors()), (1, 1));
    }

    #[test]
    fn merging_adds_lost_requests() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record_lost();
        b.record_lost();
        a.merge(&b);
        assert_eq!(a.lost(), 2);
    }
}
