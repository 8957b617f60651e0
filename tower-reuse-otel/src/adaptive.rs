//! `OtelAdaptiveEvents`: the adaptive controller's hook, recording each of
//! its decisions and the settings it gave the pool.

use std::fmt;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Meter};
use tower_reuse_adaptive::events::{AdaptiveEvents, Change, Decision, Inputs, Reason};
use tower_reuse_pool::Target;

use crate::attributes::{self, ADAPTIVE_APPLIED, ADAPTIVE_KNOB, ADAPTIVE_REASON};

/// The adaptive controller's
/// [`AdaptiveEvents`] hook as OpenTelemetry metrics: every decision,
/// by target, setting, reason and whether the pool took it; the idle
/// timeout and minimum of idle connections the controller set; the server
/// idle timeout it learned. See the [crate docs](crate) for every
/// instrument.
///
/// Attributes name the target's scheme, host and port only: never its
/// partition, nor anything of the requests.
///
/// ```
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use opentelemetry::global;
/// use tower::ServiceBuilder;
/// use tower_reuse_adaptive::{Adaptive, AdaptiveConfig, AdaptiveLayer};
/// use tower_reuse_otel::{OtelAdaptiveEvents, OtelPoolEvents};
/// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let meter = global::meter("my-client");
/// let adaptive =
///     AdaptiveLayer::with_events(AdaptiveConfig::default(), OtelAdaptiveEvents::new(&meter))
///         .unwrap();
/// // The pool tells both the controller and its own metrics.
/// let pool = PoolLayer::new(PoolConfig::default())
///     .unwrap()
///     .events((adaptive.pool_events(), OtelPoolEvents::new(&meter)));
/// let client: Adaptive<Pool<HttpConnector>> = ServiceBuilder::new()
///     .layer(adaptive)
///     .layer(pool)
///     .service(HttpConnector::new());
/// # let _ = client;
/// # }
/// ```
#[derive(Clone)]
pub struct OtelAdaptiveEvents {
    inner: Arc<Inner>,
}

struct Inner {
    decisions: Counter<u64>,
    idle_timeout: Gauge<f64>,
    min_idle: Gauge<u64>,
    server_idle_limit: Gauge<f64>,
}

impl OtelAdaptiveEvents {
    /// A hook recording with `meter`.
    pub fn new(meter: &Meter) -> Self {
        let inner = Inner {
            decisions: meter
                .u64_counter("tower_reuse.adaptive.decisions")
                .with_description(
                    "Decisions of the adaptive controller, by setting, reason and whether the pool took them.",
                )
                .with_unit("{decision}")
                .build(),
            idle_timeout: meter
                .f64_gauge("tower_reuse.adaptive.idle_timeout")
                .with_description("The idle timeout the adaptive controller gave the target.")
                .with_unit("s")
                .build(),
            min_idle: meter
                .u64_gauge("tower_reuse.adaptive.min_idle")
                .with_description(
                    "The idle connections the adaptive controller keeps open for the target.",
                )
                .with_unit("{connection}")
                .build(),
            server_idle_limit: meter
                .f64_gauge("tower_reuse.adaptive.server_idle_limit")
                .with_description(
                    "The server's idle timeout, as the adaptive controller learned it from the server's closes.",
                )
                .with_unit("s")
                .build(),
        };
        OtelAdaptiveEvents {
            inner: Arc::new(inner),
        }
    }

    /// One decision, from its parts.
    fn record(
        &self,
        target: &Target,
        change: Change,
        reason: Reason,
        applied: bool,
        inputs: &Inputs,
    ) {
        let i = &self.inner;
        let server = attributes::target(target);
        if let Some(limit) = inputs.server_idle_limit {
            i.server_idle_limit
                .record(attributes::seconds(limit), &server);
        }
        if applied {
            match change {
                Change::IdleTimeout { to: Some(to), .. } => {
                    i.idle_timeout.record(attributes::seconds(to), &server);
                }
                Change::MinIdle { to, .. } => {
                    let to = u64::try_from(to).unwrap_or(u64::MAX);
                    i.min_idle.record(to, &server);
                }
                // No idle timeout at all has no value to show: the gauge
                // keeps its last one. Request limits are not a gauge here.
                _ => {}
            }
        }
        let mut attributes = server;
        attributes.extend([
            KeyValue::new(ADAPTIVE_KNOB, change.knob()),
            KeyValue::new(ADAPTIVE_REASON, reason.as_str()),
            KeyValue::new(ADAPTIVE_APPLIED, applied),
        ]);
        i.decisions.add(1, &attributes);
    }
}

impl fmt::Debug for OtelAdaptiveEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelAdaptiveEvents").finish_non_exhaustive()
    }
}

impl AdaptiveEvents for OtelAdaptiveEvents {
    fn on_decision(&self, decision: &Decision) {
        self.record(
            decision.target(),
            decision.change(),
            decision.reason(),
            decision.applied(),
            decision.inputs(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use tower_reuse_pool::Partition;

    /// Each gauge's points as `(server.port, value)`.
    fn gauges(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(i64, f64)> {
        let exported = exporter.get_finished_metrics().unwrap();
        let mut points = Vec::new();
        for scope in exported.last().unwrap().scope_metrics() {
            for metric in scope.metrics().filter(|m| m.name() == name) {
                match metric.data() {
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                        points.extend(g.data_points().map(|p| (port(p.attributes()), p.value())))
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => points.extend(
                        g.data_points()
                            .map(|p| (port(p.attributes()), p.value() as f64)),
                    ),
                    other => panic!("{name} is not a gauge: {other:?}"),
                }
            }
        }
        points.sort_by_key(|(port, _)| *port);
        points
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// The `server.port` of a point.
    fn port<'a>(mut attributes: impl Iterator<Item = &'a KeyValue>) -> i64 {
        let port = attributes.find(|kv| kv.key.as_str() == "server.port");
        match port.map(|kv| &kv.value) {
            Some(opentelemetry::Value::I64(port)) => *port,
            other => panic!("no port: {other:?}"),
        }
    }

    fn target(port: u16) -> Target {
        let authority = format!("svc.test:{port}").parse().unwrap();
        Target::new(
            http::uri::Scheme::HTTP,
            authority,
            Some(Partition::new("secret-tenant")),
        )
        .unwrap()
    }

    #[test]
    fn gauges_follow_applied_decisions_and_the_learned_server_limit() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let hook = OtelAdaptiveEvents::new(&provider.meter("adaptive-test"));
        let mut learned = Inputs::default();
        learned.server_idle_limit = Some(SECOND * 2);
        let idle = |from, to| Change::IdleTimeout { from, to };

        // Port 1: applied, with a learned server limit.
        let change = idle(Some(SECOND * 90), Some(SECOND));
        hook.record(&target(1), change, Reason::ServerIdleLimit, true, &learned);
        // Port 2: observed only; the gauge stays without a point.
        let change = idle(Some(SECOND * 90), Some(SECOND));
        hook.record(
            &target(2),
            change,
            Reason::IdleGaps,
            false,
            &Inputs::default(),
        );
        // Port 3: set, then to no timeout at all: the gauge keeps 3 s.
        let change = idle(None, Some(SECOND * 3));
        hook.record(
            &target(3),
            change,
            Reason::IdleGaps,
            true,
            &Inputs::default(),
        );
        let change = idle(Some(SECOND * 3), None);
        hook.record(
            &target(3),
            change,
            Reason::Restored,
            true,
            &Inputs::default(),
        );
        // Port 4: warm connections kept, then half released.
        let change = Change::MinIdle { from: 0, to: 8 };
        hook.record(
            &target(4),
            change,
            Reason::PeriodicBurst,
            true,
            &Inputs::default(),
        );
        let change = Change::MinIdle { from: 8, to: 4 };
        hook.record(
            &target(4),
            change,
            Reason::Released,
            true,
            &Inputs::default(),
        );
        // Port 5: a request limit: counted, no gauge.
        let change = Change::MaxRequests {
            from: None,
            to: Some(10),
        };
        hook.record(
            &target(5),
            change,
            Reason::RequestLimit,
            true,
            &Inputs::default(),
        );
        provider.force_flush().unwrap();

        let idle_timeout = gauges(&exporter, "tower_reuse.adaptive.idle_timeout");
        assert_eq!(idle_timeout, [(1, 1.0), (3, 3.0)]);
        let min_idle = gauges(&exporter, "tower_reuse.adaptive.min_idle");
        assert_eq!(min_idle, [(4, 4.0)]);
        let limit = gauges(&exporter, "tower_reuse.adaptive.server_idle_limit");
        assert_eq!(limit, [(1, 2.0)]);

        // Every decision counted once, each by its knob, reason and
        // whether it applied; no partition anywhere.
        let exported = exporter.get_finished_metrics().unwrap();
        let mut decisions = Vec::new();
        for scope in exported.last().unwrap().scope_metrics() {
            for metric in scope.metrics() {
                let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                    continue;
                };
                for point in sum.data_points() {
                    let value = |key: &str| {
                        let kv = point.attributes().find(|kv| kv.key.as_str() == key);
                        kv.map(|kv| kv.value.as_str().into_owned())
                    };
                    assert!(
                        point
                            .attributes()
                            .all(|kv| !kv.value.as_str().contains("secret")),
                        "{:?}",
                        point.attributes().collect::<Vec<_>>()
                    );
                    decisions.push((
                        value("server.port").unwrap(),
                        value("tower_reuse.adaptive.knob").unwrap(),
                        value("tower_reuse.adaptive.reason").unwrap(),
                        value("tower_reuse.adaptive.applied").unwrap(),
                        point.value(),
                    ));
                }
            }
        }
        decisions.sort();
        let expected = [
            ("1", "idle_timeout", "server_idle_limit", "true"),
            ("2", "idle_timeout", "idle_gaps", "false"),
            ("3", "idle_timeout", "idle_gaps", "true"),
            ("3", "idle_timeout", "restored", "true"),
            ("4", "min_idle_per_target", "periodic_burst", "true"),
            ("4", "min_idle_per_target", "released", "true"),
            ("5", "max_requests_per_connection", "request_limit", "true"),
        ]
        .map(|(p, k, r, a)| (p.into(), k.into(), r.into(), a.into(), 1));
        assert_eq!(decisions, expected);
    }
}
