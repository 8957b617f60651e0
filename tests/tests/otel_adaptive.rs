//! tower-reuse-otel's `OtelAdaptiveEvents` with the real OpenTelemetry SDK
//! and its in-memory exporter: the adaptive controller over the pool,
//! against real servers on loopback. One target's requests come a
//! millisecond apart (the idle gaps set a 1 s idle timeout); another's in
//! bursts at a steady period longer than its idle timeout (the controller
//! keeps connections warm for them). After one tick, the decisions and
//! the settings the controller gave are the documented instruments, with
//! the values the pool now holds, and no partition in any attribute.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::metrics::MeterProvider as _;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_adaptive::{Adaptive, AdaptiveConfig, AdaptiveLayer};
use tower_reuse_otel::OtelAdaptiveEvents;
use tower_reuse_pool::{Partition, Pool, PoolConfig, PoolLayer, Target, TargetConfig};
use tower_reuse_tests::server::{ServerOptions, TestServer};

mod telemetry;
use telemetry::{Telemetry, docs_table};

/// The partition every request carries: it may reach no attribute.
const SECRET: &str = "secret-tenant";

/// The bursty target's period, and its idle timeout (shorter: its
/// connections do not live from one burst to the next).
const PERIOD: Duration = Duration::from_millis(600);
const BURSTY_IDLE: Duration = Duration::from_millis(300);

/// Requests in flight in each burst.
const BURST: usize = 4;

type Client = Adaptive<Pool<HttpConnector>>;

/// GET `url` in the secret partition, with the server holding the answer
/// `delay_ms`.
async fn get(mut client: Client, url: String, delay_ms: u64) {
    let mut req = http::Request::get(url)
        .header("x-delay-ms", delay_ms.to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    req.extensions_mut().insert(Partition::new(SECRET));
    let response = client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("a whole body");
}

fn target(server: &TestServer) -> Target {
    Target::from_uri(
        &server.url("/").parse().unwrap(),
        Some(Partition::new(SECRET)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_decisions_are_recorded_as_the_documented_instruments() {
    let telemetry = Telemetry::new();
    let hook = OtelAdaptiveEvents::new(&telemetry.meter_provider.meter("otel-adaptive-test"));
    let steady = TestServer::start(ServerOptions::default()).await;
    let bursty = TestServer::start(ServerOptions::default()).await;

    // The controller ticks only when the test says: its own task's first
    // tick is a minute away.
    let config = AdaptiveConfig::default()
        .tick(Duration::from_secs(60))
        .cool_down(Duration::from_secs(60))
        .window(Duration::from_secs(120));
    let adaptive = AdaptiveLayer::with_events(config, hook).unwrap();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool = PoolLayer::new(PoolConfig::default().idle_timeout(Some(Duration::from_secs(5))))
        .unwrap()
        .events(adaptive.pool_events())
        .layer(connector);
    let control = pool.control();
    // The bursty target's own idle timeout, shorter than its period.
    control
        .set_target_config(
            &target(&bursty),
            Some(TargetConfig::default().idle_timeout(Some(BURSTY_IDLE))),
        )
        .unwrap();
    let client = adaptive.layer(pool);

    // 50 requests one after another, about a millisecond apart.
    for _ in 0..50 {
        get(client.clone(), steady.url("/"), 0).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Four bursts, a period apart: four starts make a steady period.
    let mut period = tokio::time::interval(PERIOD);
    for _ in 0..4 {
        period.tick().await;
        let burst: Vec<_> = (0..BURST)
            .map(|_| tokio::spawn(get(client.clone(), bursty.url("/"), 30)))
            .collect();
        for request in burst {
            request.await.unwrap();
        }
    }
    adaptive.handle().tick();

    let metrics = telemetry.metrics();

    // The decisions: the steady target's idle timeout, from its gaps; the
    // bursty target's warm connections, for its period.
    let decisions = metrics
        .get("tower_reuse.adaptive.decisions")
        .unwrap_or_else(|| panic!("no decision recorded; got {:?}", metrics.keys()));
    let steady_port = steady.addr.port().to_string();
    let bursty_port = bursty.addr.port().to_string();
    let decided = |port: &str, knob: &str, reason: &str| {
        decisions.total(&[
            ("server.address", "127.0.0.1"),
            ("server.port", port),
            ("url.scheme", "http"),
            ("tower_reuse.adaptive.knob", knob),
            ("tower_reuse.adaptive.reason", reason),
            ("tower_reuse.adaptive.applied", "true"),
        ])
    };
    assert_eq!(
        decided(&steady_port, "idle_timeout", "idle_gaps"),
        1.0,
        "{decisions:?}"
    );
    assert_eq!(
        decided(&bursty_port, "min_idle_per_target", "periodic_burst"),
        1.0,
        "{decisions:?}"
    );
    assert_eq!(decisions.total(&[]), 2.0, "{decisions:?}");

    // The gauges hold what the pool now has for each target.
    let steady_config = control.target_config(&target(&steady)).unwrap();
    let idle_timeout = steady_config.get_idle_timeout().flatten().unwrap();
    assert_eq!(idle_timeout, Duration::from_secs(1));
    let gauge = &metrics["tower_reuse.adaptive.idle_timeout"];
    assert_eq!(gauge.points.len(), 1, "{gauge:?}");
    assert_eq!(
        gauge.total(&[("server.port", &steady_port)]),
        idle_timeout.as_secs_f64()
    );
    let bursty_config = control.target_config(&target(&bursty)).unwrap();
    let min_idle = bursty_config.get_min_idle_per_target().unwrap();
    assert!((1..=BURST).contains(&min_idle), "{bursty_config:?}");
    let gauge = &metrics["tower_reuse.adaptive.min_idle"];
    assert_eq!(gauge.points.len(), 1, "{gauge:?}");
    assert_eq!(
        gauge.total(&[("server.port", &bursty_port)]),
        min_idle as f64
    );
    // No server closed a connection: nothing learned, no limit recorded.
    assert!(!metrics.contains_key("tower_reuse.adaptive.server_idle_limit"));

    // Each instrument emitted as the docs table says; none undocumented.
    let table: Vec<_> = docs_table()
        .into_iter()
        .filter(|row| row.is_adaptive())
        .collect();
    assert_eq!(table.len(), 4, "{table:?}");
    let emitted: BTreeSet<_> = metrics
        .keys()
        .filter(|name| name.starts_with("tower_reuse.adaptive."))
        .cloned()
        .collect();
    let documented: BTreeSet<_> = table.iter().map(|row| row.name.clone()).collect();
    assert!(emitted.is_subset(&documented), "{emitted:?}");
    assert_eq!(emitted.len(), 3, "{emitted:?}");
    for row in table.iter().filter(|row| emitted.contains(&row.name)) {
        let metric = &metrics[&row.name];
        assert_eq!(metric.unit, row.unit, "unit of {}", row.name);
        assert_eq!(metric.kind, row.kind, "kind of {}", row.name);
        assert_eq!(metric.keys(), row.attributes, "attributes of {}", row.name);
    }

    // No partition in any attribute.
    telemetry::assert_no_attribute_holds(&metrics, SECRET);
}
