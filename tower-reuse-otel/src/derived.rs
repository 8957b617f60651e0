//! What no HTTP client exports and operators need to judge reuse: the reuse
//! ratio, the handshake time reuse avoided, the TLS resumption ratio.
//!
//! Counted per target in atomics on the request path and read by
//! observable instruments when the SDK collects, like the gauges.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter};
use tower_reuse_pool::TlsHandshake;

/// The derived instruments and every target they observe.
pub(crate) struct Derived {
    /// Read by the instruments' callbacks, which the SDK keeps (the handles
    /// `build` returns are only markers) and which hold them weakly.
    targets: Arc<Mutex<Vec<Arc<TargetStats>>>>,
}

/// One target's counts.
pub(crate) struct TargetStats {
    /// Server attributes (and the partition, when recorded).
    attributes: Vec<KeyValue>,
    checkouts: AtomicU64,
    reused: AtomicU64,
    /// New connections and their connect times (TCP, TLS and HTTP
    /// handshakes), whose mean estimates what a reused checkout avoided.
    connects: AtomicU64,
    connect_nanos: AtomicU64,
    avoided_nanos: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    /// `(checkouts, reused)` and `(full, resumed)` as of the previous
    /// collection: the ratios cover what happened since.
    seen_checkouts: Mutex<(u64, u64)>,
    seen_handshakes: Mutex<(u64, u64)>,
}

impl Derived {
    pub(crate) fn new(meter: &Meter) -> Self {
        let targets: Arc<Mutex<Vec<Arc<TargetStats>>>> = Arc::default();
        // The SDK keeps a callback as long as its meter provider: each holds
        // the counts weakly and observes nothing once the hook is dropped.
        let observe = |read: fn(&TargetStats, &dyn AsyncInstrument<f64>)| {
            let targets = Arc::downgrade(&targets);
            move |observer: &dyn AsyncInstrument<f64>| {
                let Some(targets) = targets.upgrade() else {
                    return;
                };
                let targets = targets.lock().unwrap_or_else(PoisonError::into_inner);
                for target in targets.iter() {
                    read(target, observer);
                }
            }
        };
        let _marker = meter
            .f64_observable_gauge("tower_reuse.connection.reuse_ratio")
            .with_description(
                "Share of checkouts, since the previous collection, that reused a connection.",
            )
            .with_unit("1")
            .with_callback(observe(TargetStats::observe_reuse))
            .build();
        let _marker = meter
            .f64_observable_counter("tower_reuse.handshake.time_avoided")
            .with_description(
                "Connect time (TCP, TLS, HTTP handshakes) reused connections avoided, \
                 estimated from the target's mean measured connect time.",
            )
            .with_unit("s")
            .with_callback(observe(TargetStats::observe_avoided))
            .build();
        let _marker = meter
            .f64_observable_gauge("tower_reuse.tls.resumption_ratio")
            .with_description(
                "Share of new TLS connections, since the previous collection, that resumed a session.",
            )
            .with_unit("1")
            .with_callback(observe(TargetStats::observe_resumption))
            .build();
        Derived { targets }
    }

    /// Counts for a new target with `attributes`, observed from now on.
    pub(crate) fn target(&self, attributes: Vec<KeyValue>) -> Arc<TargetStats> {
        let stats = Arc::new(TargetStats {
            attributes,
            checkouts: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_nanos: AtomicU64::new(0),
            avoided_nanos: AtomicU64::new(0),
            tls_full: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            seen_checkouts: Mutex::new((0, 0)),
            seen_handshakes: Mutex::new((0, 0)),
        });
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stats.clone());
        stats
    }

    /// Stops observing the targets nobody else holds.
    pub(crate) fn prune(&self) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|stats| Arc::strong_count(stats) > 1);
    }
}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Derived")
            .field("targets", &targets.len())
            .finish_non_exhaustive()
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `part / whole` of what changed since `seen`, which then becomes `now`;
/// none (and `seen` kept) when the whole did not change.
fn ratio_since(seen: &Mutex<(u64, u64)>, now: (u64, u64)) -> Option<f64> {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let whole = now.0.saturating_sub(seen.0);
    if whole == 0 {
        return None;
    }
    let part = now.1.saturating_sub(seen.1);
    *seen = now;
    Some((part as f64 / whole as f64).min(1.0))
}

impl TargetStats {
    /// A new connection: its connect time, and its handshake.
    pub(crate) fn connected(&self, duration: Duration, tls: Option<TlsHandshake>) {
        self.connect_nanos
            .fetch_add(nanos(duration), Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
        match tls {
            Some(TlsHandshake::Resumed) => self.tls_resumed.fetch_add(1, Ordering::Relaxed),
            Some(_) => self.tls_full.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    /// The mean measured connect time, once a connect was measured.
    fn mean_connect_nanos(&self) -> Option<u64> {
        let connects = self.connects.load(Ordering::Relaxed);
        self.connect_nanos
            .load(Ordering::Relaxed)
            .checked_div(connects)
    }

    /// A checkout; a reused connection avoided a connect of the mean time.
    pub(crate) fn checked_out(&self, reused: bool) {
        // The checkout is counted before its reuse, and read after it (see
        // `observe_reuse`): a collection never sees more reused checkouts
        // than checkouts.
        self.checkouts.fetch_add(1, Ordering::Release);
        if reused {
            if let Some(mean) = self.mean_connect_nanos() {
                self.avoided_nanos.fetch_add(mean, Ordering::Relaxed);
            }
            self.reused.fetch_add(1, Ordering::Release);
        }
    }

    /// A reused checkout failed and its request was retried: the connect
    /// it was credited with avoiding (at today's mean) is taken back.
    pub(crate) fn retried(&self) {
        if let Some(mean) = self.mean_connect_nanos() {
            let _ =
                self.avoided_nanos
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avoided| {
                        Some(avoided.saturating_sub(mean))
                    });
        }
    }

    fn observe_reuse(&self, observer: &dyn AsyncInstrument<f64>) {
        let reused = self.reused.load(Ordering::Acquire);
        let now = (self.checkouts.load(Ordering::Acquire), reused);
        if let Some(ratio) = ratio_since(&self.seen_checkouts, now) {
            observer.observe(ratio, &self.attributes);
        }
    }

    fn observe_avoided(&self, observer: &dyn AsyncInstrument<f64>) {
        let avoided = self.avoided_nanos.load(Ordering::Relaxed);
        observer.observe(avoided as f64 / 1e9, &self.attributes);
    }

    fn observe_resumption(&self, observer: &dyn AsyncInstrument<f64>) {
        let resumed = self.tls_resumed.load(Ordering::Relaxed);
        let full = self.tls_full.load(Ordering::Relaxed);
        if let Some(ratio) = ratio_since(&self.seen_handshakes, (full + resumed, resumed)) {
            observer.observe(ratio, &self.attributes);
        }
    }
}
