//! `OtelSessionCache`: a TLS session cache's counts as metrics.

use std::fmt;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use tower_reuse_pool::tls::{SessionCache, SessionCacheStats};

use crate::attributes::{SESSION_CACHE_EVICTION, SESSION_CACHE_RESULT};

/// A [`SessionCache`]'s counts as observable metrics, read from
/// [`SessionCache::stats`] when the SDK collects (see the
/// [crate docs](crate) for the instruments). Keep it as long as the cache
/// should be observed.
///
/// One per cache and meter: two caches observed through one meter would
/// overwrite each other's points.
///
/// ```
/// use opentelemetry::global;
/// use tower_reuse_otel::OtelSessionCache;
/// use tower_reuse_pool::tls::SessionCache;
///
/// let cache = SessionCache::default();
/// let observed = OtelSessionCache::new(&global::meter("my-client"), &cache);
/// # let _ = observed;
/// ```
pub struct OtelSessionCache {
    /// What the callbacks read, while this lives (the SDK keeps the
    /// callbacks; they hold the cache weakly).
    _cache: Arc<SessionCache>,
}

impl OtelSessionCache {
    /// Observes `cache` with `meter`.
    pub fn new(meter: &Meter, cache: &SessionCache) -> Self {
        // The SDK keeps a callback as long as its meter provider: each holds
        // the cache weakly and observes nothing once this value is dropped.
        let cache = Arc::new(cache.clone());
        let read = |cache: &Arc<SessionCache>| {
            let cache = Arc::downgrade(cache);
            move || cache.upgrade().map(|cache| cache.stats())
        };
        let stats = read(&cache);
        let _marker = meter
            .u64_observable_counter("tower_reuse.tls.session_cache.lookups")
            .with_description("Session lookups of new TLS connections, by whether one was found.")
            .with_unit("{lookup}")
            .with_callback(move |observer| {
                let Some(stats): Option<SessionCacheStats> = stats() else {
                    return;
                };
                let hits = stats.hits() + stats.tls12_hits();
                let misses = stats.misses().saturating_sub(stats.tls12_hits());
                observer.observe(hits, &[KeyValue::new(SESSION_CACHE_RESULT, "hit")]);
                observer.observe(misses, &[KeyValue::new(SESSION_CACHE_RESULT, "miss")]);
            })
            .build();
        let stats = read(&cache);
        let _marker = meter
            .i64_observable_up_down_counter("tower_reuse.tls.session_cache.tickets")
            .with_description("TLS 1.3 tickets held.")
            .with_unit("{ticket}")
            .with_callback(move |observer| {
                let Some(stats) = stats() else {
                    return;
                };
                let tickets = i64::try_from(stats.tickets()).unwrap_or(i64::MAX);
                observer.observe(tickets, &[]);
            })
            .build();
        let stats = read(&cache);
        let _marker = meter
            .u64_observable_counter("tower_reuse.tls.session_cache.evictions")
            .with_description("Tickets and servers dropped from the cache, by why.")
            .with_unit("{eviction}")
            .with_callback(move |observer| {
                let Some(stats) = stats() else {
                    return;
                };
                for (reason, count) in [
                    ("server_lru", stats.servers_evicted()),
                    ("ticket_lru", stats.tickets_evicted()),
                    ("ticket_expired", stats.tickets_expired()),
                ] {
                    observer.observe(count, &[KeyValue::new(SESSION_CACHE_EVICTION, reason)]);
                }
            })
            .build();
        OtelSessionCache { _cache: cache }
    }
}

impl fmt::Debug for OtelSessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelSessionCache").finish_non_exhaustive()
    }
}
