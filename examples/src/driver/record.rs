//! Per-request recording: latency histogram, errors by kind, misdelivered
//! responses.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::HeaderValue;

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
    misdelivered: u64,
    unechoed: u64,
    first_error: Option<String>,
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
            misdelivered: 0,
            unechoed: 0,
            first_error: None,
        }
    }

    /// Records one finished request that carried `sent_id`.
    pub fn record(
        &mut self,
        latency: Duration,
        outcome: Result<Completed, RequestError>,
        sent_id: &HeaderValue,
    ) {
        match outcome {
            Ok(done) if done.status.is_success() => {
                self.ok += 1;
                let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                let _ = self.latency_ns.record(ns.clamp(LOWEST_NS, HIGHEST_NS));
                match &done.request_id {
                    Some(id) if id != sent_id => self.misdelivered += 1,
                    Some(_) => {}
                    None => self.unechoed += 1,
                }
            }
            Ok(done) => self.error(RequestError::new(
                RequestErrorKind::Status,
                format!("status {}", done.status),
            )),
            Err(e) => self.error(e),
        }
    }

    /// Records a request that failed before it was sent.
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
        self.misdelivered += other.misdelivered;
        self.unechoed += other.unechoed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
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

    /// Requests attempted: successes and failures.
    pub fn requests(&self) -> u64 {
        self.ok + self.errors()
    }

    /// Responses that carried another request's `x-request-id`.
    pub fn misdelivered(&self) -> u64 {
        self.misdelivered
    }

    /// Successful responses with no `x-request-id` (an external server that
    /// does not echo it).
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
