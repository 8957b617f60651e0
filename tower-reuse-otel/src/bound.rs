//! A histogram with its attribute set fixed once, recorded by value only.
//!
//! The SDK finds a measurement's aggregation by hashing its whole attribute
//! set (SipHash over every key and value) on every record: about 2 000
//! instructions for an `http.client.request.duration` point, more than the
//! pool's whole checkout. The attribute sets here are fixed per target and
//! outcome, so they are resolved once. With the feature
//! `bound-instruments` the SDK's own bound instruments skip the lookup
//! entirely; without it the set is kept and recorded as usual.

use std::fmt;
#[cfg(not(feature = "bound-instruments"))]
use std::sync::Arc;

use opentelemetry::KeyValue;
#[cfg(feature = "bound-instruments")]
use opentelemetry::metrics::BoundHistogram;
use opentelemetry::metrics::Histogram;

/// `histogram` with `attributes`, ready to record values.
#[derive(Clone)]
pub(crate) struct BoundF64 {
    #[cfg(feature = "bound-instruments")]
    bound: BoundHistogram<f64>,
    #[cfg(not(feature = "bound-instruments"))]
    histogram: Histogram<f64>,
    #[cfg(not(feature = "bound-instruments"))]
    attributes: Arc<[KeyValue]>,
}

impl BoundF64 {
    pub(crate) fn new(histogram: &Histogram<f64>, attributes: &[KeyValue]) -> Self {
        BoundF64 {
            #[cfg(feature = "bound-instruments")]
            bound: histogram.bind(attributes),
            #[cfg(not(feature = "bound-instruments"))]
            histogram: histogram.clone(),
            #[cfg(not(feature = "bound-instruments"))]
            attributes: attributes.into(),
        }
    }

    pub(crate) fn record(&self, value: f64) {
        #[cfg(feature = "bound-instruments")]
        self.bound.record(value);
        #[cfg(not(feature = "bound-instruments"))]
        self.histogram.record(value, &self.attributes);
    }
}

impl fmt::Debug for BoundF64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundF64").finish_non_exhaustive()
    }
}
