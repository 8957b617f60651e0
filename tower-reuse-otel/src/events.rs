//! `OtelPoolEvents`: the pool's hook, recording connection metrics.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tower_reuse_pool::events::{
    CheckedIn, CheckedOut, Closed, ConnectFailed, ConnectReason, Connected, PoolEvents, Retried,
};
use tower_reuse_pool::{ConnId, Target};

use crate::MAX_TARGETS;
use crate::attributes::{
    self, CLOSE_REASON, CONNECT_REASON, CONNECTION_ID, CONNECTION_REQUESTS, CONNECTION_REUSED,
    ERROR_TYPE, HTTP_CONNECTION_STATE, NETWORK_PROTOCOL_VERSION, PARTITION, PREWARM_OUTCOME,
    PREWARM_SERVED, RETRY_REASON, TLS_HANDSHAKE,
};
use crate::bound::BoundF64;
use crate::connection_spans::ConnectionSpans;
use crate::derived::{Derived, TargetStats};
use crate::gauges::{self, Gauges};

/// Bucket boundaries for `http.client.connection.duration`, in seconds:
/// the semantic conventions' advice.
const CONNECTION_DURATION_BOUNDARIES: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Bucket boundaries for `tower_reuse.checkout.wait` and
/// `tower_reuse.tls.handshake.duration`, in seconds: most checkouts take
/// microseconds, a connect (and its handshake) milliseconds.
const CHECKOUT_WAIT_BOUNDARIES: [f64; 15] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The pool's [`PoolEvents`] hook as OpenTelemetry metrics (see the
/// [crate docs](crate) for every instrument).
///
/// Connection ids are unique within one pool: give each pool its own
/// hook, made for a second pool with [`for_another_pool`](Self::for_another_pool)
/// so that the observable counts of the two add up (two hooks built with
/// `new` from one meter would overwrite each other's observations).
///
/// ```
/// use opentelemetry::global;
/// use tower_reuse_otel::OtelPoolEvents;
/// use tower_reuse_pool::{PoolConfig, PoolLayer};
///
/// let layer = PoolLayer::<String>::new(PoolConfig::default())
///     .unwrap()
///     .events(OtelPoolEvents::new(&global::meter("my-client")));
/// # let _ = layer;
/// ```
pub struct OtelPoolEvents {
    /// The instruments and per-target counts, shared with the hooks of
    /// other pools made by [`for_another_pool`](Self::for_another_pool).
    shared: Arc<Shared>,
    /// Open connections, by id: their attributes and requests in flight,
    /// so `http.client.open_connections` moves between idle and active
    /// consistently and each close takes away what its connect added.
    open: Mutex<OpenConnections>,
    record_partition: bool,
    connection_spans: Option<ConnectionSpans>,
}

/// What the hooks of several pools share: counts of one attribute set
/// add up instead of overwriting each other's observations.
struct Shared {
    instruments: Instruments,
    derived: Derived,
    /// The derived counts of each attribute set (targets that differ only
    /// in what is not recorded, such as an unrecorded partition, count
    /// together), made at its first connection.
    targets: Mutex<HashMap<Vec<KeyValue>, Arc<TargetStats>>>,
}

impl Shared {
    /// Drops the targets out of use: no open connection of any hook
    /// sharing them holds their counts (the map and the derived
    /// instruments hold the other two references). Their points are no
    /// longer observed; a target that comes back starts again from 0.
    fn prune(&self, targets: &mut HashMap<Vec<KeyValue>, Arc<TargetStats>>) {
        targets.retain(|_, stats| Arc::strong_count(stats) > 2);
        self.derived.prune();
        self.instruments.open_connections.prune();
    }
}

/// Open connections by id. Ids are a pool's sequence numbers, so a
/// multiplicative hash spreads them as well as SipHash, for a fraction of
/// the cost on every checkout and checkin.
type OpenConnections = HashMap<ConnId, Open, BuildHasherDefault<ConnIdHasher>>;

/// Fibonacci hashing of a connection id.
#[derive(Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Instruments {
    /// `http.client.open_connections`, one count per attribute set.
    open_connections: Gauges,
    connection_duration: Histogram<f64>,
    checkout_wait: Histogram<f64>,
    opened: Counter<u64>,
    closed: Counter<u64>,
    connect_errors: Counter<u64>,
    tls_handshakes: Counter<u64>,
    tls_handshake_duration: Histogram<f64>,
    retries: Counter<u64>,
    prewarm: Counter<u64>,
    prewarm_closed: Counter<u64>,
}

struct Open {
    in_flight: u32,
    attributes: Arc<ConnAttributes>,
    /// Its span, when connection spans are on.
    span: Option<BoxedSpan>,
}

/// One connection's attribute sets and counts, built once at connect.
struct ConnAttributes {
    /// Server attributes and `network.protocol.version`.
    base: Vec<KeyValue>,
    /// Its `tower_reuse.checkout.wait` points as a new connection
    /// (`reused` false) and as a reused one.
    checkout_new: BoundF64,
    checkout_reused: BoundF64,
    /// Its `http.client.open_connections` counts, idle and active.
    idle: Arc<AtomicI64>,
    active: Arc<AtomicI64>,
    /// Its target's derived counts.
    target: Arc<TargetStats>,
}

impl ConnAttributes {
    fn checkout(&self, reused: bool) -> &BoundF64 {
        if reused {
            &self.checkout_reused
        } else {
            &self.checkout_new
        }
    }
}

impl OtelPoolEvents {
    /// A hook recording with `meter`.
    pub fn new(meter: &Meter) -> Self {
        let instruments = Instruments {
            open_connections: Gauges::new(
                meter,
                "http.client.open_connections",
                "Number of connections in the pool, by state.",
                "{connection}",
            ),
            connection_duration: meter
                .f64_histogram("http.client.connection.duration")
                .with_description("How long connections stayed open.")
                .with_unit("s")
                .with_boundaries(CONNECTION_DURATION_BOUNDARIES.to_vec())
                .build(),
            checkout_wait: meter
                .f64_histogram("tower_reuse.checkout.wait")
                .with_description("How long requests waited for a connection.")
                .with_unit("s")
                .with_boundaries(CHECKOUT_WAIT_BOUNDARIES.to_vec())
                .build(),
            opened: meter
                .u64_counter("tower_reuse.connection.opened")
                .with_description("Connections opened, by why they were opened.")
                .with_unit("{connection}")
                .build(),
            closed: meter
                .u64_counter("tower_reuse.connection.closed")
                .with_description("Connections closed, by why they closed.")
                .with_unit("{connection}")
                .build(),
            connect_errors: meter
                .u64_counter("tower_reuse.connect.errors")
                .with_description("Connects that failed.")
                .with_unit("{connect}")
                .build(),
            tls_handshakes: meter
                .u64_counter("tower_reuse.tls.handshakes")
                .with_description("TLS handshakes on new connections, by kind.")
                .with_unit("{handshake}")
                .build(),
            tls_handshake_duration: meter
                .f64_histogram("tower_reuse.tls.handshake.duration")
                .with_description("How long TLS handshakes on new connections took, by kind.")
                .with_unit("s")
                .with_boundaries(CHECKOUT_WAIT_BOUNDARIES.to_vec())
                .build(),
            retries: meter
                .u64_counter("tower_reuse.retries")
                .with_description("Requests retried on another connection, by why.")
                .with_unit("{retry}")
                .build(),
            prewarm: meter
                .u64_counter("tower_reuse.prewarm.connects")
                .with_description("Pre-warming connects, by outcome.")
                .with_unit("{connect}")
                .build(),
            prewarm_closed: meter
                .u64_counter("tower_reuse.prewarm.connections")
                .with_description(
                    "Pre-warmed connections at their close, by whether they served a request.",
                )
                .with_unit("{connection}")
                .build(),
        };
        OtelPoolEvents {
            shared: Arc::new(Shared {
                instruments,
                derived: Derived::new(meter),
                targets: Mutex::default(),
            }),
            open: Mutex::new(OpenConnections::default()),
            record_partition: false,
            connection_spans: None,
        }
    }

    /// A hook for another pool recording into the same instruments, so
    /// the two pools' counts of one target add up (two hooks built with
    /// [`new`](Self::new) from one meter would each observe their own, and
    /// the SDK keeps one observation per attribute set). Its options are
    /// this hook's; give it its own [`ConnectionSpans`].
    pub fn for_another_pool(&self) -> Self {
        OtelPoolEvents {
            shared: self.shared.clone(),
            open: Mutex::new(OpenConnections::default()),
            record_partition: self.record_partition,
            connection_spans: None,
        }
    }

    /// Opt-in: records each target's [`Partition`](tower_reuse_pool::Partition)
    /// as `tower_reuse.partition` on every connection metric. A partition
    /// often names a tenant: off by default, and a cardinality risk with
    /// many partitions.
    pub fn record_partition(mut self, on: bool) -> Self {
        self.record_partition = on;
        self
    }

    /// Opt-in: a span per connection (see [`ConnectionSpans`]).
    pub fn connection_spans(mut self, spans: ConnectionSpans) -> Self {
        self.connection_spans = Some(spans);
        self
    }

    /// The attributes of `target`'s connection metrics.
    fn target_attributes(&self, target: &Target) -> Vec<KeyValue> {
        let mut attributes = attributes::target(target);
        if self.record_partition
            && let Some(partition) = target.partition()
        {
            attributes.push(KeyValue::new(PARTITION, partition.as_str().to_owned()));
        }
        attributes
    }

    /// The derived counts of targets with `attributes`. Past
    /// [`MAX_TARGETS`], the targets out of use go first (see
    /// [`Shared::prune`]).
    fn target_stats(&self, attributes: &[KeyValue]) -> Arc<TargetStats> {
        let mut targets = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = targets.get(attributes) {
            return stats.clone();
        }
        if targets.len() >= MAX_TARGETS {
            self.shared.prune(&mut targets);
        }
        let stats = self.shared.derived.target(attributes.to_vec());
        targets.insert(attributes.to_vec(), stats.clone());
        stats
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for OtelPoolEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelPoolEvents")
            .field("open", &self.open().len())
            .finish_non_exhaustive()
    }
}

fn with(mut attributes: Vec<KeyValue>, extra: impl IntoIterator<Item = KeyValue>) -> Vec<KeyValue> {
    attributes.extend(extra);
    attributes
}

fn connect_reason(reason: ConnectReason) -> &'static str {
    match reason {
        ConnectReason::Demand => "demand",
        ConnectReason::Prewarm => "prewarm",
        ConnectReason::Rotation => "rotation",
        ConnectReason::Dedicated => "dedicated",
        ConnectReason::Replacement => "replacement",
        _ => "_OTHER",
    }
}

fn state(state: &'static str) -> KeyValue {
    KeyValue::new(HTTP_CONNECTION_STATE, state)
}

impl PoolEvents for OtelPoolEvents {
    fn on_connect(&self, event: &Connected<'_>) {
        let target = self.target_attributes(event.target());
        let stats = self.target_stats(&target);
        stats.connected(event.duration(), event.tls());
        let base = with(
            target.clone(),
            [KeyValue::new(
                NETWORK_PROTOCOL_VERSION,
                event.protocol().as_str(),
            )],
        );
        let reason = KeyValue::new(CONNECT_REASON, connect_reason(event.reason()));
        let i = &self.shared.instruments;
        i.opened.add(1, &with(base.clone(), [reason.clone()]));
        let handshake = event
            .tls()
            .map(|handshake| KeyValue::new(TLS_HANDSHAKE, handshake.as_str()));
        if let Some(handshake) = &handshake {
            let attributes = with(target.clone(), [handshake.clone()]);
            i.tls_handshakes.add(1, &attributes);
            if let Some(took) = event.tls_time() {
                i.tls_handshake_duration
                    .record(took.as_secs_f64(), &attributes);
            }
        }
        if event.reason() == ConnectReason::Prewarm {
            i.prewarm.add(
                1,
                &with(
                    target.clone(),
                    [KeyValue::new(PREWARM_OUTCOME, "connected")],
                ),
            );
        }
        let span = self.connection_spans.as_ref().map(|spans| {
            let id = KeyValue::new(CONNECTION_ID, attributes::conn_id(event.id()));
            let start = SystemTime::now()
                .checked_sub(event.duration())
                .unwrap_or(UNIX_EPOCH);
            spans.start(
                event.id(),
                start,
                with(base.clone(), [id, reason].into_iter().chain(handshake)),
            )
        });
        let open_connections = &i.open_connections;
        let attributes = Arc::new(ConnAttributes {
            idle: open_connections.count(with(base.clone(), [state("idle")])),
            active: open_connections.count(with(base.clone(), [state("active")])),
            checkout_new: BoundF64::new(
                &i.checkout_wait,
                &with(target.clone(), [KeyValue::new(CONNECTION_REUSED, false)]),
            ),
            checkout_reused: BoundF64::new(
                &i.checkout_wait,
                &with(target, [KeyValue::new(CONNECTION_REUSED, true)]),
            ),
            base,
            target: stats,
        });
        gauges::add(&attributes.idle, 1);
        self.open().insert(
            event.id(),
            Open {
                in_flight: 0,
                attributes,
                span,
            },
        );
    }

    fn on_connect_error(&self, event: &ConnectFailed<'_>) {
        let target = self.target_attributes(event.target());
        let error = KeyValue::new(ERROR_TYPE, attributes::pool_error(&event.error()));
        let i = &self.shared.instruments;
        i.connect_errors.add(
            1,
            &with(
                target.clone(),
                [
                    KeyValue::new(CONNECT_REASON, connect_reason(event.reason())),
                    error.clone(),
                ],
            ),
        );
        if event.reason() == ConnectReason::Prewarm {
            i.prewarm.add(
                1,
                &with(target, [KeyValue::new(PREWARM_OUTCOME, "failed"), error]),
            );
        }
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        let attributes = {
            let mut open = self.open();
            open.get_mut(&event.id()).map(|conn| {
                conn.in_flight += 1;
                if conn.in_flight == 1 {
                    gauges::add(&conn.attributes.idle, -1);
                    gauges::add(&conn.attributes.active, 1);
                }
                conn.attributes.clone()
            })
        };
        let wait = attributes::seconds(event.wait());
        match attributes {
            Some(attributes) => {
                attributes.checkout(event.reused()).record(wait);
                attributes.target.checked_out(event.reused());
            }
            None => self.shared.instruments.checkout_wait.record(
                wait,
                &with(
                    self.target_attributes(event.target()),
                    [KeyValue::new(CONNECTION_REUSED, event.reused())],
                ),
            ),
        }
    }

    fn on_checkin(&self, event: &CheckedIn<'_>) {
        let mut open = self.open();
        if let Some(conn) = open.get_mut(&event.id())
            && conn.in_flight > 0
        {
            conn.in_flight -= 1;
            if conn.in_flight == 0 {
                gauges::add(&conn.attributes.active, -1);
                gauges::add(&conn.attributes.idle, 1);
            }
        }
    }

    fn on_close(&self, event: &Closed<'_>) {
        let reason = KeyValue::new(CLOSE_REASON, event.reason().as_str());
        let closed = self.open().remove(&event.id());
        let i = &self.shared.instruments;
        let target = match &closed {
            Some(conn) => {
                let state = if conn.in_flight > 0 {
                    &conn.attributes.active
                } else {
                    &conn.attributes.idle
                };
                gauges::add(state, -1);
                conn.attributes.base.clone()
            }
            None => self.target_attributes(event.target()),
        };
        if event.prewarmed() {
            let served = event.requests_served() > 0;
            i.prewarm_closed.add(
                1,
                &with(
                    self.target_attributes(event.target()),
                    [KeyValue::new(PREWARM_SERVED, served)],
                ),
            );
        }
        if let (Some(spans), Some(span)) =
            (&self.connection_spans, closed.and_then(|conn| conn.span))
        {
            let served = i64::try_from(event.requests_served()).unwrap_or(i64::MAX);
            spans.end(
                event.id(),
                span,
                vec![reason.clone(), KeyValue::new(CONNECTION_REQUESTS, served)],
            );
        }
        let attributes = with(target, [reason]);
        i.closed.add(1, &attributes);
        i.connection_duration
            .record(attributes::seconds(event.lifetime()), &attributes);
    }

    fn on_retry(&self, event: &Retried<'_>) {
        let target = self.target_attributes(event.target());
        // Only a reused connection's failure is retried: the connect its
        // checkout was credited with avoiding is owed after all.
        self.target_stats(&target).retried();
        self.shared.instruments.retries.add(
            1,
            &with(
                target,
                [KeyValue::new(RETRY_REASON, event.reason().as_str())],
            ),
        );
    }
}
