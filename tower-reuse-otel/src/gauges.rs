//! Counts kept in plain atomics and read by an observable instrument.
//!
//! The request path only adds to an [`AtomicI64`] it already holds; the
//! SDK reads every count in the instrument's callback at collection time.
//! This keeps `http.client.active_requests` and
//! `http.client.open_connections` off the SDK's per-measurement attribute
//! handling entirely.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};

/// One count per attribute set, observed as an `ObservableUpDownCounter`.
///
/// A set is registered once, on first use, and kept until
/// [`prune`](Gauges::prune) finds it out of use: until then its point stays
/// exported (at 0 when nothing is counted), as a synchronous
/// `UpDownCounter`'s would.
pub(crate) struct Gauges {
    /// Read by the instrument's callback, which the SDK keeps (the handle
    /// `build` returns is only a marker) and which holds them weakly.
    counts: Arc<Mutex<Vec<Count>>>,
}

struct Count {
    attributes: Vec<KeyValue>,
    value: Arc<AtomicI64>,
}

impl Gauges {
    /// Registers the observable up-down counter `name` on `meter`.
    pub(crate) fn new(
        meter: &Meter,
        name: &'static str,
        description: &'static str,
        unit: &'static str,
    ) -> Self {
        let counts: Arc<Mutex<Vec<Count>>> = Arc::default();
        // The SDK keeps a callback as long as its meter provider: it holds
        // the counts weakly and observes nothing once they are dropped.
        let observed = Arc::downgrade(&counts);
        let _marker = meter
            .i64_observable_up_down_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer: &dyn AsyncInstrument<i64>| {
                let Some(counts) = observed.upgrade() else {
                    return;
                };
                let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                for count in counts.iter() {
                    observer.observe(count.value.load(Ordering::Relaxed), &count.attributes);
                }
            })
            .build();
        Gauges { counts }
    }

    /// The count for `attributes`, registered on first use. Callers keep
    /// the `Arc` and add to it directly.
    pub(crate) fn count(&self, attributes: Vec<KeyValue>) -> Arc<AtomicI64> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.iter().find(|c| c.attributes == attributes) {
            return count.value.clone();
        }
        let value = Arc::new(AtomicI64::new(0));
        counts.push(Count {
            attributes,
            value: value.clone(),
        });
        value
    }

    /// How many attribute sets are observed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops observing the counts nobody else holds: their attribute sets
    /// are out of use (whoever counts holds the count).
    pub(crate) fn prune(&self) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|c| Arc::strong_count(&c.value) > 1);
    }
}

impl fmt::Debug for Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Gauges")
            .field("attribute_sets", &counts.len())
            .finish_non_exhaustive()
    }
}

/// Adds `delta` to a count.
pub(crate) fn add(count: &AtomicI64, delta: i64) {
    count.fetch_add(delta, Ordering::Relaxed);
}
