//! tower-reuse-otel's `OtelAffinityEvents` with the real OpenTelemetry SDK
//! and its in-memory exporter: the affinity layer over the pool against
//! real servers on 127.0.0.x. Endpoints are added and removed, one goes
//! down (ejected, its requests retried on others, its probe failing while
//! it is still down), comes back (returned), another is ejected and then
//! removed, and a cold first choice detours to
//! a warm endpoint, and a busy service gets a dedicated pool and gives it
//! back when idle; every affinity instrument of the crate docs' table is
//! emitted with its unit, kind and attributes, and its values agree with
//! the events the layer reported.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::metrics::MeterProvider as _;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_affinity::events::{
    AffinityEvents, DemoteReason, Demoted, Ejected, EndpointChanged, Promoted, Rebalanced, Retried,
    Returned, WarmDetour,
};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityKey, AffinityLayer, TierConfig};
use tower_reuse_otel::OtelAffinityEvents;
use tower_reuse_pool::{ErrorKind, Partition, Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::server::{ServerOptions, TestServer};

mod telemetry;
use telemetry::{Metric, Telemetry, docs_table};

/// The service whose endpoints come, go and fail.
const SERVICE: &str = "http://svc.test:8080";
/// The service of the warm detour.
const WARM: &str = "http://warm.test:8081";

/// Marks every affinity key and partition sent: none may reach an
/// attribute.
const SECRET: &str = "secret";

/// What the layer reported, beside the hook under test: the values the
/// instruments must agree with.
#[derive(Default)]
struct Reported {
    rebalances: Mutex<Vec<(usize, usize)>>,
    ejected: Mutex<Vec<SocketAddr>>,
    returned: Mutex<Vec<SocketAddr>>,
    /// Each retry's failed endpoint, and whether its error was a refused
    /// connect (`error.type` `connect`).
    retried: Mutex<Vec<(SocketAddr, bool)>>,
    detours: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    /// Promotions (true) and demotions (false), in order.
    tiers: Mutex<Vec<bool>>,
}

/// Forwards every event to the hook under test, keeping a copy.
struct Tee {
    hook: OtelAffinityEvents,
    reported: Arc<Reported>,
}

impl AffinityEvents for Tee {
    fn on_endpoint_added(&self, e: &EndpointChanged<'_>) {
        self.hook.on_endpoint_added(e);
    }
    fn on_endpoint_removed(&self, e: &EndpointChanged<'_>) {
        self.hook.on_endpoint_removed(e);
    }
    fn on_rebalance(&self, e: &Rebalanced<'_>) {
        let r = &self.reported.rebalances;
        r.lock().unwrap().push((e.keys_moved, e.keys_tracked));
        self.hook.on_rebalance(e);
    }
    fn on_ejected(&self, e: &Ejected<'_>) {
        self.reported.ejected.lock().unwrap().push(e.endpoint);
        self.hook.on_ejected(e);
    }
    fn on_returned(&self, e: &Returned<'_>) {
        self.reported.returned.lock().unwrap().push(e.endpoint);
        self.hook.on_returned(e);
    }
    fn on_warm_detour(&self, e: &WarmDetour<'_>) {
        self.reported.detours.lock().unwrap().push((e.from, e.to));
        self.hook.on_warm_detour(e);
    }
    fn on_promoted(&self, e: &Promoted<'_>) {
        self.reported.tiers.lock().unwrap().push(true);
        self.hook.on_promoted(e);
    }
    fn on_demoted(&self, e: &Demoted<'_>) {
        assert_eq!(e.reason, DemoteReason::Idle);
        self.reported.tiers.lock().unwrap().push(false);
        self.hook.on_demoted(e);
    }
    fn on_retry(&self, e: &Retried<'_>) {
        let refused = e.error.kind() == ErrorKind::Connect;
        self.reported
            .retried
            .lock()
            .unwrap()
            .push((e.from, refused));
        self.hook.on_retry(e);
    }
}

type Client = Affinity<Pool<HttpConnector>>;

fn client(config: AffinityConfig, events: impl AffinityEvents) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool = PoolLayer::new(PoolConfig::default().connect_timeout(Some(Duration::from_secs(2))))
        .unwrap()
        .layer(connector);
    AffinityLayer::new(config)
        .unwrap()
        .events(events)
        .layer(pool)
}

fn keyed() -> AffinityConfig {
    AffinityConfig::default().key(AffinityKey::header("x-user-id"))
}

/// GET `service` with key `key` in a partition: both secrets.
async fn get(client: &mut Client, service: &str, key: u64) {
    let mut req = http::Request::get(format!("{service}/k"))
        .header("x-user-id", format!("{SECRET}-user-{key}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    req.extensions_mut()
        .insert(Partition::new(format!("{SECRET}-tenant")));
    let response = client
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .expect("every request answered, retried if its endpoint is down");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("a whole body");
}

/// Rounds of keys 0..40 until `done`, at most 10.
async fn rounds_until(client: &mut Client, mut done: impl FnMut() -> bool) {
    for _ in 0..10 {
        for key in 0..40 {
            get(client, SERVICE, key).await;
        }
        if done() {
            return;
        }
    }
    panic!("not done after 10 rounds");
}

/// `(server.address, host)` and `(network.peer.*, addr)` of an endpoint.
fn at(service_host: &'static str, addr: SocketAddr) -> [(&'static str, String); 3] {
    [
        ("server.address", service_host.to_owned()),
        ("network.peer.address", addr.ip().to_string()),
        ("network.peer.port", addr.port().to_string()),
    ]
}

/// `metric`'s total over points with every attribute of `with`.
fn total(metric: &Metric, with: &[(&str, String)]) -> f64 {
    let with: Vec<(&str, &str)> = with.iter().map(|(k, v)| (*k, v.as_str())).collect();
    metric.total(&with)
}

fn ejected_now(telemetry: &Telemetry) -> f64 {
    telemetry.metrics()["tower_reuse.affinity.endpoints.ejected"]
        .total(&[("server.address", "svc.test")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_events_are_recorded_as_the_documented_instruments() {
    let telemetry = Telemetry::new();
    let hook = OtelAffinityEvents::new(&telemetry.meter_provider.meter("otel-affinity-test"));
    let reported = Arc::new(Reported::default());
    // Four endpoints of svc.test, then two of warm.test; `None` is down.
    let mut servers = Vec::new();
    for i in 0..6 {
        let addr = format!("127.0.0.{}:0", 2 + i);
        servers.push(Some(
            TestServer::start_on(&addr, ServerOptions::default()).await,
        ));
    }
    let addr: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
    // Without warm detours, which would steer keys off a cold, dead
    // endpoint before any of its connects failed.
    let config = keyed()
        .warm_aware(false)
        .eject_after(3)
        .ejection_time(Duration::from_millis(200), Duration::from_secs(1));
    let tee = Tee {
        hook: hook.clone(),
        reported: reported.clone(),
    };
    let mut client = client(config, tee);
    let endpoints = client.endpoints();

    // Three endpoints, then a fourth: the keys seen so far rebalance.
    endpoints.set(SERVICE, addr[..3].iter().copied()).unwrap();
    for key in 0..40 {
        get(&mut client, SERVICE, key).await;
    }
    endpoints.insert(SERVICE, addr[3]).unwrap();

    // The first endpoint goes down: ejected, its requests retried.
    servers[0] = None;
    rounds_until(&mut client, || !reported.ejected.lock().unwrap().is_empty()).await;
    assert_eq!(*reported.ejected.lock().unwrap(), [addr[0]]);
    assert_eq!(ejected_now(&telemetry), 1.0);

    // Its ejection over, still down: its probe fails, and it is ejected
    // again, still one endpoint out.
    tokio::time::sleep(Duration::from_millis(250)).await;
    rounds_until(&mut client, || reported.ejected.lock().unwrap().len() == 2).await;
    assert_eq!(*reported.ejected.lock().unwrap(), [addr[0], addr[0]]);
    assert_eq!(ejected_now(&telemetry), 1.0);

    // It comes back on its address: once its second ejection is over, a
    // probe request returns it to service.
    servers[0] = Some(TestServer::start_on(&addr[0].to_string(), ServerOptions::default()).await);
    tokio::time::sleep(Duration::from_millis(450)).await;
    rounds_until(&mut client, || {
        !reported.returned.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*reported.returned.lock().unwrap(), [addr[0]]);
    assert_eq!(ejected_now(&telemetry), 0.0);

    // The fourth leaves; the second goes down, is ejected, and is removed
    // while out of service.
    endpoints.remove(SERVICE, addr[3]).unwrap();
    servers[1] = None;
    rounds_until(&mut client, || reported.ejected.lock().unwrap().len() == 3).await;
    assert_eq!(ejected_now(&telemetry), 1.0);
    endpoints.remove(SERVICE, addr[1]).unwrap();
    assert_eq!(ejected_now(&telemetry), 0.0);

    // A warm detour: find a key of each of two endpoints (with a layer of
    // its own, no hook), warm the second only, send the first's key.
    let (a, b) = (addr[4], addr[5]);
    let mut probe = self::client(keyed().warm_aware(false), ());
    probe.endpoints().set(WARM, [a, b]).unwrap();
    let server_a = servers[4].as_ref().unwrap();
    let mut home_of = [None, None];
    for key in 0..20 {
        let before = server_a.stats.requests();
        get(&mut probe, WARM, key).await;
        let on_a = server_a.stats.requests() > before;
        home_of[usize::from(!on_a)].get_or_insert(key);
    }
    let (key_a, key_b) = (home_of[0].unwrap(), home_of[1].unwrap());
    let tee = Tee {
        hook: hook.clone(),
        reported: reported.clone(),
    };
    let mut warm = self::client(keyed(), tee);
    warm.endpoints().set(WARM, [a, b]).unwrap();
    get(&mut warm, WARM, key_b).await;
    get(&mut warm, WARM, key_a).await;
    assert_eq!(*reported.detours.lock().unwrap(), [(a, b)]);

    // Tiers: warm.test busy for 300 ms gets a pool of its own, then, idle,
    // goes back.
    let tiers = TierConfig::default()
        .promote_rps(20.0)
        .promote_window(Duration::from_millis(100))
        .demote_rps(5.0)
        .demote_window(Duration::from_millis(200))
        .idle_retire_after(Duration::from_millis(150));
    let tee = Tee {
        hook: hook.clone(),
        reported: reported.clone(),
    };
    let mut tiered = self::client(keyed().warm_aware(false).tiers(Some(tiers)), tee);
    tiered.endpoints().set(WARM, [a, b]).unwrap();
    for key in 0..30 {
        get(&mut tiered, WARM, key).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(*reported.tiers.lock().unwrap(), [true, false]);

    let metrics = telemetry.metrics();

    // Every affinity instrument of the docs table, as documented; nothing
    // undocumented.
    let table: Vec<_> = docs_table()
        .into_iter()
        .filter(|row| row.is_affinity())
        .collect();
    assert!(table.len() >= 8, "{table:?}");
    for row in &table {
        let metric = metrics
            .get(&row.name)
            .unwrap_or_else(|| panic!("{} was not emitted; got {:?}", row.name, metrics.keys()));
        assert_eq!(metric.unit, row.unit, "unit of {}", row.name);
        assert_eq!(metric.kind, row.kind, "kind of {}", row.name);
        assert_eq!(metric.keys(), row.attributes, "attributes of {}", row.name);
    }
    let documented: BTreeSet<_> = table.iter().map(|r| r.name.clone()).collect();
    let emitted: BTreeSet<_> = metrics
        .keys()
        .filter(|name| name.starts_with("tower_reuse.affinity."))
        .cloned()
        .collect();
    assert_eq!(emitted, documented);

    // Endpoints: svc.test had 3, +1, -1, -1; warm.test 2 in each of the
    // warm and tiered layers (the probe has no hook).
    let svc = [("server.address", "svc.test".to_owned())];
    let endpoints_now = &metrics["tower_reuse.affinity.endpoints"];
    assert_eq!(total(endpoints_now, &svc), 2.0);
    assert_eq!(
        endpoints_now.total(&[("server.address", "warm.test"), ("server.port", "8081")]),
        4.0
    );
    let warm_service = [("server.address", "warm.test"), ("server.port", "8081")];
    let promotions = &metrics["tower_reuse.affinity.tier.promotions"];
    assert_eq!(promotions.total(&warm_service), 1.0);
    let demotions = &metrics["tower_reuse.affinity.tier.demotions"];
    assert_eq!(
        demotions.total(&[
            ("server.address", "warm.test"),
            ("tower_reuse.affinity.tier.reason", "idle")
        ]),
        1.0
    );
    assert_eq!(
        metrics["tower_reuse.affinity.tier.dedicated"].total(&[]),
        0.0
    );
    let changes = &metrics["tower_reuse.affinity.endpoint.changes"];
    let change = |what: &str, endpoint: SocketAddr| {
        let mut with = at("svc.test", endpoint).to_vec();
        with.push(("tower_reuse.affinity.change", what.to_owned()));
        total(changes, &with)
    };
    for endpoint in &addr[..4] {
        assert_eq!(change("added", *endpoint), 1.0, "{endpoint}");
    }
    assert_eq!(change("removed", addr[3]), 1.0);
    assert_eq!(change("removed", addr[1]), 1.0);
    assert_eq!(
        changes.total(&[("tower_reuse.affinity.change", "removed")]),
        2.0
    );

    // Each change of svc.test's endpoints moved a share of its keys: the
    // histogram holds the shares the layer reported.
    let shares: Vec<f64> = reported
        .rebalances
        .lock()
        .unwrap()
        .iter()
        .map(|&(moved, tracked)| moved as f64 / tracked as f64)
        .collect();
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert!(shares.iter().all(|&s| s > 0.0 && s < 0.7), "{shares:?}");
    let moved = &metrics["tower_reuse.affinity.rebalance.moved"];
    assert_eq!(total(moved, &svc), 3.0, "one point per change");
    let sum: f64 = moved
        .sums
        .iter()
        .filter(|(attributes, _)| attributes["server.address"] == "svc.test")
        .map(|(_, sum)| sum)
        .sum();
    assert!(
        (sum - shares.iter().sum::<f64>()).abs() < 1e-9,
        "{sum} {shares:?}"
    );

    // Ejections and returns, by endpoint.
    let ejections = &metrics["tower_reuse.affinity.ejections"];
    assert_eq!(total(ejections, &at("svc.test", addr[0])), 2.0);
    assert_eq!(total(ejections, &at("svc.test", addr[1])), 1.0);
    assert_eq!(ejections.total(&[]), 3.0);
    let returns = &metrics["tower_reuse.affinity.returns"];
    assert_eq!(total(returns, &at("svc.test", addr[0])), 1.0);
    assert_eq!(returns.total(&[]), 1.0);

    // Retries, by the endpoint that failed and the error.
    let retried = reported.retried.lock().unwrap().clone();
    let retries = &metrics["tower_reuse.affinity.retries"];
    assert_eq!(retries.total(&[]), retried.len() as f64);
    for endpoint in [addr[0], addr[1]] {
        let from: Vec<_> = retried
            .iter()
            .filter(|(from, _)| *from == endpoint)
            .collect();
        assert!(from.len() >= 3, "{endpoint}: {retried:?}");
        assert_eq!(total(retries, &at("svc.test", endpoint)), from.len() as f64);
        let refused = from.iter().filter(|(_, refused)| *refused).count();
        let mut with = at("svc.test", endpoint).to_vec();
        with.push(("error.type", "connect".to_owned()));
        assert_eq!(total(retries, &with), refused as f64);
    }

    // The detour, at the cold first choice.
    let detours = &metrics["tower_reuse.affinity.warm_detours"];
    assert_eq!(total(detours, &at("warm.test", a)), 1.0);
    assert_eq!(detours.total(&[]), 1.0);

    // No key, header value or partition in any attribute.
    telemetry::assert_no_attribute_holds(&metrics, SECRET);
}
