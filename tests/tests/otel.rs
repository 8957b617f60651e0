//! tower-reuse-otel with the real OpenTelemetry SDK and its in-memory
//! exporters: requests through `OtelLayer` over a `Pool` whose hook is
//! `OtelPoolEvents`, against real loopback servers (plain, TLS, and a raw
//! HTTP/1.1 server that closes a connection under a request).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{SdkTracer, SpanData};
use tower::Layer;
use tower_reuse_otel::{ConnectionSpans, Otel, OtelLayer, OtelPoolEvents, OtelSessionCache};
use tower_reuse_pool::tls::{SessionCache, TlsLayer};
use tower_reuse_pool::{Connect, Partition, Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::tls_server::{Alpn, TestCa, TlsServer, TlsServerOptions};
use tower_reuse_tests::{get, send};

mod telemetry;
use telemetry::{Metric, Telemetry, docs_table};

/// A query string that must never reach an attribute.
const SECRET_QUERY: &str = "?token=secret-query-value";

impl Telemetry {
    fn layer(&self) -> OtelLayer<SdkTracer> {
        OtelLayer::new(
            self.tracer_provider.tracer("otel-test"),
            &self.meter_provider.meter("otel-test"),
        )
    }

    fn hook(&self) -> OtelPoolEvents {
        OtelPoolEvents::new(&self.meter_provider.meter("otel-test"))
    }

    /// `OtelLayer` over a pool over `connector` with the hook.
    fn client<C: Connect>(&self, config: PoolConfig, connector: C) -> Otel<Pool<C>, SdkTracer> {
        let pool = PoolLayer::new(config)
            .unwrap()
            .events(self.hook())
            .layer(connector);
        self.layer().layer(pool)
    }

    /// `layer` over a TCP pool with the hook, each request span linked to
    /// the span of its connection.
    fn linked_client(
        &self,
        layer: OtelLayer<SdkTracer>,
    ) -> Otel<Pool<hyper_util::client::legacy::connect::HttpConnector>, SdkTracer> {
        let spans = ConnectionSpans::new(self.tracer_provider.tracer("otel-test"));
        let pool = PoolLayer::new(PoolConfig::default())
            .unwrap()
            .events(self.hook().connection_spans(spans.clone()))
            .layer(tcp());
        layer.link_connection_spans(spans).layer(pool)
    }
}

/// A loopback port that refuses connections.
async fn refusing_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A client kept alive: a dropped layer or hook is no longer observed.
type Alive = Box<dyn std::any::Any + Send>;

/// Plain HTTP/1.1: one request, then one that reuses its connection, with
/// one pre-warmed connection kept.
async fn reuse_run(telemetry: &Telemetry, server: &TestServer) -> Alive {
    let mut client = telemetry.client(PoolConfig::default().min_idle_per_target(1), tcp());
    for i in 0..2 {
        let (parts, _) = send(
            &mut client,
            get(&server.url(&format!("/a{SECRET_QUERY}")), i),
        )
        .await
        .unwrap();
        assert!(parts.status.is_success());
    }
    // The pre-warmed connection opens in the background.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Box::new(client)
}

/// A request with a pre-warmed connection kept, then the pool dropped:
/// every connection closes, the pre-warmed ones counted by whether they
/// served the request.
async fn prewarm_run(telemetry: &Telemetry, server: &TestServer) {
    let mut client = telemetry.client(PoolConfig::default().min_idle_per_target(1), tcp());
    send(&mut client, get(&server.url("/e"), 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A connect refused: the request fails, and so does the pre-warming
/// connect the request's target then starts.
async fn refused_run(telemetry: &Telemetry) -> Alive {
    let port = refusing_port().await;
    let mut client = telemetry.client(PoolConfig::default().min_idle_per_target(1), tcp());
    let url = format!("http://127.0.0.1:{port}/b{SECRET_QUERY}");
    let error = send(&mut client, get(&url, 1)).await.unwrap_err();
    assert!(error.is_connect(), "{error}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    Box::new(client)
}

/// A reused connection closed under a GET: retried once, on a new one.
/// Returns the client and the server's port.
async fn retry_run(telemetry: &Telemetry) -> (Alive, u16) {
    let server = RawHttp1Server::start(|conn, index| match (conn, index) {
        (0, 1) => Answer::Close,
        _ => Answer::Respond,
    })
    .await;
    let mut client = telemetry.client(PoolConfig::default(), tcp());
    for i in 0..2 {
        send(
            &mut client,
            get(&server.url(&format!("/c{SECRET_QUERY}")), i),
        )
        .await
        .unwrap();
    }
    (Box::new(client), server.addr.port())
}

/// TLS 1.3, one request per connection: a full handshake, then a resumed
/// one; the session cache is observed for as long as the returned value
/// lives.
async fn tls_run(telemetry: &Telemetry) -> (OtelSessionCache, Alive) {
    let ca = TestCa::new("otel-ca");
    let server = TlsServer::start(
        &ca,
        TlsServerOptions {
            alpn: Alpn::Http1Only,
            close_after: Some(1),
            ..TlsServerOptions::default()
        },
    )
    .await;
    let cache = SessionCache::default();
    let observed = OtelSessionCache::new(&telemetry.meter_provider.meter("otel-test"), &cache);
    let connector = TlsLayer::new(Arc::new(ca.client_config(None)))
        .session_cache(Some(cache))
        .layer(tcp());
    let mut client = telemetry.client(PoolConfig::default(), connector);
    for i in 0..2 {
        send(
            &mut client,
            get(&server.url(&format!("/d{SECRET_QUERY}")), i),
        )
        .await
        .unwrap();
    }
    (observed, Box::new(client))
}

/// TCP to loopback servers, letting `https` through for the TLS layer.
fn tcp() -> hyper_util::client::legacy::connect::HttpConnector {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector
}

fn span_keys(span: &SpanData) -> BTreeSet<String> {
    span.attributes
        .iter()
        .map(|kv| kv.key.to_string())
        .collect()
}

fn span_attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instrument_in_the_docs_table_is_emitted_with_its_unit_and_attributes() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let prewarm_server = TestServer::start(ServerOptions::default()).await;
    prewarm_run(&telemetry, &prewarm_server).await;
    // Observed until the metrics are read.
    let (retried, retry_port) = retry_run(&telemetry).await;
    let _alive = (
        reuse_run(&telemetry, &server).await,
        refused_run(&telemetry).await,
        retried,
        tls_run(&telemetry).await,
    );

    let metrics = telemetry.metrics();
    // The affinity layer's instruments are `otel_affinity.rs`'s, the
    // adaptive controller's `otel_adaptive.rs`'s.
    let mut table = docs_table();
    table.retain(|row| !row.is_affinity() && !row.is_adaptive());
    for row in &table {
        let metric = metrics
            .get(&row.name)
            .unwrap_or_else(|| panic!("{} was not emitted; got {:?}", row.name, metrics.keys()));
        assert_eq!(metric.unit, row.unit, "unit of {}", row.name);
        // An observable up-down counter exports the same non-monotonic sum
        // as a synchronous one: the table's kind less `Observable`.
        let kind = row.kind.strip_prefix("Observable").unwrap_or(&row.kind);
        assert_eq!(metric.kind, kind, "kind of {}", row.name);
        assert_eq!(
            metric.keys(),
            row.attributes,
            "attribute keys of {}",
            row.name
        );
    }
    let documented: BTreeSet<_> = table.iter().map(|r| r.name.clone()).collect();
    let emitted: BTreeSet<_> = metrics.keys().cloned().collect();
    assert_eq!(
        emitted, documented,
        "every emitted instrument is in the table"
    );

    // The facts behind the attributes.
    let wait = &metrics["tower_reuse.checkout.wait"];
    assert!(wait.total(&[("tower_reuse.connection.reused", "true")]) >= 1.0);
    assert!(wait.total(&[("tower_reuse.connection.reused", "false")]) >= 1.0);
    let handshakes = &metrics["tower_reuse.tls.handshakes"];
    assert_eq!(
        handshakes.total(&[("tower_reuse.tls.handshake", "full")]),
        1.0
    );
    assert_eq!(
        handshakes.total(&[("tower_reuse.tls.handshake", "resumed")]),
        1.0
    );
    // Each TLS handshake timed, by kind (a histogram's count).
    let took = &metrics["tower_reuse.tls.handshake.duration"];
    assert_eq!(took.total(&[("tower_reuse.tls.handshake", "full")]), 1.0);
    assert_eq!(took.total(&[("tower_reuse.tls.handshake", "resumed")]), 1.0);
    let retries = &metrics["tower_reuse.retries"];
    assert_eq!(
        retries.total(&[("tower_reuse.retry.reason", "closed_idempotent")]),
        1.0
    );
    let prewarm = &metrics["tower_reuse.prewarm.connects"];
    assert!(prewarm.total(&[("tower_reuse.prewarm.outcome", "connected")]) >= 1.0);
    assert!(
        prewarm.total(&[
            ("tower_reuse.prewarm.outcome", "failed"),
            ("error.type", "connect")
        ]) >= 1.0
    );
    let opened = &metrics["tower_reuse.connection.opened"];
    assert!(opened.total(&[("tower_reuse.connect.reason", "demand")]) >= 1.0);
    assert!(opened.total(&[("tower_reuse.connect.reason", "prewarm")]) >= 1.0);
    let duration = &metrics["http.client.request.duration"];
    assert_eq!(duration.total(&[("error.type", "connect")]), 1.0);
    assert_eq!(duration.total(&[("http.response.status_code", "200")]), 7.0);
    let active = &metrics["http.client.active_requests"];
    assert_eq!(active.total(&[]), 0.0, "every request left: {active:?}");

    // The derived figures. `reuse_run`'s target: the share of its
    // checkouts that reused a connection, as the checkout histogram counts
    // them. `prewarm_run`'s: each pre-warmed connection reported when the
    // dropped pool closed it (served or not: which connection lands first
    // serves the request).
    let port = server.addr.port().to_string();
    let at = [("server.port", port.as_str())];
    let reused = wait.total(&[
        ("server.port", &port),
        ("tower_reuse.connection.reused", "true"),
    ]);
    assert!(reused >= 1.0);
    assert_eq!(
        metrics["tower_reuse.connection.reuse_ratio"].total(&at),
        reused / wait.total(&at)
    );
    assert!(metrics["tower_reuse.handshake.time_avoided"].total(&at) > 0.0);
    // `retry_run`'s: its one reused checkout failed and was retried on a
    // new connection, so no connect was avoided after all.
    let retry_port = retry_port.to_string();
    assert_eq!(
        metrics["tower_reuse.handshake.time_avoided"].total(&[("server.port", &retry_port)]),
        0.0
    );
    let prewarm_port = prewarm_server.addr.port().to_string();
    let prewarm_at = [("server.port", prewarm_port.as_str())];
    let prewarmed = metrics["tower_reuse.prewarm.connections"].total(&prewarm_at);
    assert!(prewarmed >= 1.0);
    assert_eq!(
        prewarmed,
        opened.total(&[
            ("server.port", &prewarm_port),
            ("tower_reuse.connect.reason", "prewarm")
        ])
    );
    // The TLS target: one full handshake, one resumed, both seen by the
    // session cache.
    let tls_target = [("url.scheme", "https")];
    assert_eq!(
        metrics["tower_reuse.tls.resumption_ratio"].total(&tls_target),
        0.5
    );
    let lookups = &metrics["tower_reuse.tls.session_cache.lookups"];
    assert_eq!(
        lookups.total(&[("tower_reuse.tls.session_cache.result", "hit")]),
        1.0
    );
    assert_eq!(
        lookups.total(&[("tower_reuse.tls.session_cache.result", "miss")]),
        1.0
    );

    // Nothing of any URL's path or query in any attribute.
    for (name, metric) in &metrics {
        for (attributes, _) in &metric.points {
            for value in attributes.values() {
                assert!(
                    !value.contains("secret") && !value.contains('/'),
                    "{name} recorded {value:?}"
                );
            }
        }
    }
    // Nothing opt-in is recorded by default: no full URL, header or
    // partition, on any span or metric point.
    let opt_in = |key: &str| {
        key == "url.full"
            || key == "tower_reuse.partition"
            || key.starts_with("http.request.header.")
            || key.starts_with("http.response.header.")
    };
    for (name, metric) in &metrics {
        assert!(
            !metric.keys().iter().any(|key| opt_in(key)),
            "{name}: {:?}",
            metric.keys()
        );
    }
    for span in telemetry.finished_spans() {
        assert!(
            !span_keys(&span).iter().any(|key| opt_in(key)),
            "span {}: {:?}",
            span.name,
            span_keys(&span)
        );
        for kv in &span.attributes {
            let value = kv.value.as_str();
            assert!(
                !value.contains("secret") && !value.contains('/'),
                "span {} recorded {}={value:?}",
                span.name,
                kv.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_move_between_idle_and_active_and_return_to_zero() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(300)),
        ..ServerOptions::default()
    })
    .await;
    let mut client = telemetry.client(
        PoolConfig::default().idle_timeout(Some(Duration::from_millis(400))),
        tcp(),
    );
    let url = server.url("/");
    let mut background = client.clone();
    let in_flight = tokio::spawn(async move { send(&mut background, get(&url, 1)).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let open = |state: &str| {
        telemetry.metrics()["http.client.open_connections"]
            .total(&[("http.connection.state", state)])
    };
    assert_eq!(
        (open("active"), open("idle")),
        (1.0, 0.0),
        "one request in flight"
    );
    in_flight.await.unwrap().unwrap();
    assert_eq!(
        (open("active"), open("idle")),
        (0.0, 1.0),
        "its connection idle"
    );
    send(&mut client, get(&server.url("/"), 2)).await.unwrap();
    assert_eq!(
        (open("active"), open("idle")),
        (0.0, 1.0),
        "reused, idle again"
    );
    // Past the idle timeout the pool closes it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!((open("active"), open("idle")), (0.0, 0.0), "closed");
    let metrics = telemetry.metrics();
    assert_eq!(
        metrics["tower_reuse.connection.closed"]
            .total(&[("tower_reuse.close.reason", "idle_timeout")]),
        1.0
    );
    assert_eq!(metrics["http.client.connection.duration"].total(&[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_carry_the_conventions_and_the_connection_facts() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.client(PoolConfig::default(), tcp());
    for i in 0..2 {
        send(
            &mut client,
            get(&server.url(&format!("/a{SECRET_QUERY}")), i),
        )
        .await
        .unwrap();
    }
    let spans = telemetry.finished_spans();
    assert_eq!(spans.len(), 2);
    let conventions = [
        "http.request.method",
        "server.address",
        "server.port",
        "url.scheme",
        "http.response.status_code",
        "network.protocol.version",
    ];
    let facts = [
        "tower_reuse.connection.id",
        "tower_reuse.connection.reused",
        "tower_reuse.checkout.wait",
    ];
    let first_keys: Vec<_> = conventions.iter().chain(&facts).copied().collect();
    assert_eq!(span_keys(&spans[0]), set(&first_keys));
    let second_keys: Vec<_> = first_keys
        .iter()
        .copied()
        .chain(["tower_reuse.connection.idle_for"])
        .collect();
    assert_eq!(span_keys(&spans[1]), set(&second_keys));
    for span in &spans {
        assert_eq!(span.name, "GET");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.status, Status::Unset);
        assert_eq!(
            span_attribute(span, "http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            span_attribute(span, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            span_attribute(span, "server.port"),
            Some(server.addr.port().to_string())
        );
        assert_eq!(span_attribute(span, "url.scheme").as_deref(), Some("http"));
        assert_eq!(
            span_attribute(span, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(
            span_attribute(span, "network.protocol.version").as_deref(),
            Some("1.1")
        );
    }
    let reused = |span: &SpanData| span_attribute(span, "tower_reuse.connection.reused");
    assert_eq!(reused(&spans[0]).as_deref(), Some("false"));
    assert_eq!(reused(&spans[1]).as_deref(), Some("true"));
    assert_eq!(
        span_attribute(&spans[0], "tower_reuse.connection.id"),
        span_attribute(&spans[1], "tower_reuse.connection.id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_sets_error_type_on_the_span_and_the_duration() {
    let telemetry = Telemetry::new();
    refused_run(&telemetry).await;
    let spans = telemetry.finished_spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(
        span_keys(span),
        set(&[
            "http.request.method",
            "server.address",
            "server.port",
            "url.scheme",
            "error.type"
        ])
    );
    assert_eq!(
        span_attribute(span, "error.type").as_deref(),
        Some("connect")
    );
    assert!(
        matches!(span.status, Status::Error { .. }),
        "{:?}",
        span.status
    );
    let duration = &telemetry.metrics()["http.client.request.duration"];
    assert_eq!(duration.points.len(), 1);
    assert_eq!(
        duration.keys(),
        set(&[
            "http.request.method",
            "server.address",
            "server.port",
            "url.scheme",
            "error.type"
        ])
    );
    assert_eq!(duration.total(&[("error.type", "connect")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_say_whether_a_tls_session_was_resumed() {
    let telemetry = Telemetry::new();
    tls_run(&telemetry).await;
    let spans = telemetry.finished_spans();
    let resumed: Vec<_> = spans
        .iter()
        .map(|span| span_attribute(span, "tls.resumed"))
        .collect();
    assert_eq!(resumed, [Some("false".to_owned()), Some("true".to_owned())]);
    assert_eq!(
        span_attribute(&spans[0], "url.scheme").as_deref(),
        Some("https")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_requests_are_counted_per_target_while_in_flight() {
    let telemetry = Telemetry::new();
    let slow = TestServer::start(ServerOptions {
        delay: Some(Duration::from_millis(300)),
        ..ServerOptions::default()
    })
    .await;
    let fast = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.client(PoolConfig::default(), tcp());
    let active = |port: u16| {
        telemetry.metrics()["http.client.active_requests"].total(&[
            ("server.port", &port.to_string()),
            ("http.request.method", "GET"),
            ("server.address", "127.0.0.1"),
            ("url.scheme", "http"),
        ])
    };
    // One service, alternating targets: each target keeps its own count.
    let mut background = client.clone();
    let url = slow.url("/");
    let in_flight = tokio::spawn(async move { send(&mut background, get(&url, 1)).await });
    send(&mut client, get(&fast.url("/"), 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (active(slow.addr.port()), active(fast.addr.port())),
        (1.0, 0.0),
        "the slow request in flight"
    );
    in_flight.await.unwrap().unwrap();
    assert_eq!(
        (active(slow.addr.port()), active(fast.addr.port())),
        (0.0, 0.0)
    );

    // A response future dropped before its response leaves the count too.
    let mut future = Box::pin(tower::ServiceExt::oneshot(
        client.clone(),
        get(&slow.url("/"), 3),
    ));
    let polled = tokio::time::timeout(Duration::from_millis(100), &mut future).await;
    assert!(polled.is_err(), "still waiting for the slow server");
    assert_eq!(active(slow.addr.port()), 1.0);
    drop(future);
    assert_eq!(active(slow.addr.port()), 0.0);
    send(&mut client, get(&slow.url("/"), 4)).await.unwrap();
    assert_eq!(
        telemetry.metrics()["http.client.request.duration"]
            .total(&[("server.port", &slow.addr.port().to_string())]),
        2.0,
        "the dropped request has no duration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_opted_into_is_recorded() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let layer = telemetry
        .layer()
        .record_url_full()
        .record_request_header(http::HeaderName::from_static("x-request-id"))
        .record_response_header(http::HeaderName::from_static("x-request-id"))
        .record_partition(true);
    let hook = telemetry.hook().record_partition(true);
    let pool = PoolLayer::new(PoolConfig::default())
        .unwrap()
        .events(hook)
        .layer(tcp());
    let mut client = layer.layer(pool);
    let url = server.url(&format!("/opted{SECRET_QUERY}"));
    let mut request = get(&url, 7);
    request.extensions_mut().insert(Partition::new("tenant-7"));
    send(&mut client, request).await.unwrap();

    let spans = telemetry.finished_spans();
    let span = &spans[0];
    assert_eq!(
        span_attribute(span, "url.full").as_deref(),
        Some(url.as_str())
    );
    assert_eq!(
        span_attribute(span, "http.request.header.x-request-id").as_deref(),
        Some("[\"7\"]")
    );
    assert_eq!(
        span_attribute(span, "http.response.header.x-request-id").as_deref(),
        Some("[\"7\"]")
    );
    assert_eq!(
        span_attribute(span, "tower_reuse.partition").as_deref(),
        Some("tenant-7")
    );
    let metrics = telemetry.metrics();
    for name in [
        "tower_reuse.connection.opened",
        "http.client.open_connections",
        "tower_reuse.checkout.wait",
    ] {
        assert_eq!(
            metrics[name].total(&[("tower_reuse.partition", "tenant-7")]),
            1.0,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_reach_no_span_and_no_metric() {
    const PASSWORD: &str = "pw-not-for-telemetry";
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.linked_client(telemetry.layer().record_url_full());
    let url = format!("http://user:{PASSWORD}@{}/c", server.addr);
    send(&mut client, get(&url, 1)).await.unwrap();
    let refused = format!(
        "http://user:{PASSWORD}@127.0.0.1:{}/",
        refusing_port().await
    );
    send(&mut client, get(&refused, 2)).await.unwrap_err();
    drop(client); // ends the connection span

    let finished = telemetry.finished_spans();
    let request = finished
        .iter()
        .find(|span| span_attribute(span, "server.port") == Some(server.addr.port().to_string()))
        .filter(|span| span.name == "GET")
        .expect("the request span");
    assert_eq!(
        span_attribute(request, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(span_attribute(request, "url.full"), Some(server.url("/c")));
    assert!(finished.iter().any(|span| span.name == "HTTP connection"));
    for span in &finished {
        assert!(!span.name.contains(PASSWORD));
        let events = span.events.iter().flat_map(|e| e.attributes.iter());
        for kv in span.attributes.iter().chain(events) {
            let value = kv.value.as_str();
            assert!(
                !value.contains(PASSWORD) && !value.contains("user:"),
                "{}: {value}",
                kv.key
            );
        }
    }
    for (name, metric) in telemetry.metrics() {
        for (attributes, _) in &metric.points {
            for (key, value) in attributes {
                assert!(!value.contains(PASSWORD), "{name} {key}: {value}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_link_to_the_span_of_their_connection() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.linked_client(telemetry.layer());
    for i in 0..3 {
        send(&mut client, get(&server.url("/"), i)).await.unwrap();
    }
    // The connection span ends when the connection closes: with the pool.
    drop(client);

    let finished = telemetry.finished_spans();
    let (connections, requests): (Vec<_>, Vec<_>) = finished
        .iter()
        .partition(|span| span.name == "HTTP connection");
    assert_eq!((connections.len(), requests.len()), (1, 3));
    let connection = connections[0];
    assert_eq!(
        span_keys(connection),
        set(&[
            "server.address",
            "server.port",
            "url.scheme",
            "network.protocol.version",
            "tower_reuse.connection.id",
            "tower_reuse.connect.reason",
            "tower_reuse.close.reason",
            "tower_reuse.connection.requests",
        ])
    );
    assert_eq!(
        span_attribute(connection, "tower_reuse.connection.requests").as_deref(),
        Some("3")
    );
    assert_eq!(
        span_attribute(connection, "tower_reuse.close.reason").as_deref(),
        Some("pool_dropped")
    );
    assert_eq!(
        connection.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    for request in requests {
        let links: Vec<_> = request
            .links
            .iter()
            .map(|l| l.span_context.clone())
            .collect();
        assert_eq!(
            links,
            std::slice::from_ref(&connection.span_context),
            "{}",
            request.name
        );
        assert_eq!(
            span_attribute(request, "tower_reuse.connection.id"),
            span_attribute(connection, "tower_reuse.connection.id")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_of_two_pools_add_up() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let first = telemetry.hook();
    let second = first.for_another_pool();
    let mut clients = Vec::new();
    for hook in [first, second] {
        let pool = PoolLayer::new(PoolConfig::default())
            .unwrap()
            .events(hook)
            .layer(tcp());
        clients.push(telemetry.layer().layer(pool));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        send(client, get(&server.url("/"), i as u64)).await.unwrap();
    }
    let metrics = telemetry.metrics();
    assert_eq!(
        metrics["http.client.open_connections"].total(&[("http.connection.state", "idle")]),
        2.0,
        "one idle connection in each pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pool_is_no_longer_observed() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.client(PoolConfig::default(), tcp());
    send(&mut client, get(&server.url("/"), 1)).await.unwrap();
    let observed = |metrics: &BTreeMap<String, Metric>, name: &str| {
        metrics.get(name).map_or(0, |metric| metric.points.len())
    };
    let alive = telemetry.metrics();
    for name in [
        "http.client.open_connections",
        "http.client.active_requests",
        "tower_reuse.connection.reuse_ratio",
        "tower_reuse.handshake.time_avoided",
    ] {
        assert!(
            observed(&alive, name) > 0,
            "{name} observed while the pool lives"
        );
    }
    // The SDK keeps every callback for as long as its provider lives; the
    // dropped layer and hook must not be read, nor kept alive, by them.
    // (The pool's background tasks let go of the hook as they end.)
    drop(client);
    let mut dropped = telemetry.metrics();
    for _ in 0..100 {
        if observed(&dropped, "http.client.open_connections") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        dropped = telemetry.metrics();
    }
    for name in [
        "http.client.open_connections",
        "http.client.active_requests",
        "tower_reuse.handshake.time_avoided",
    ] {
        assert_eq!(
            observed(&dropped, name),
            0,
            "{name} observed after the drop"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_of_400_and_above_is_an_error_type_and_a_span_error() {
    let telemetry = Telemetry::new();
    let server = TestServer::start(ServerOptions::default()).await;
    let mut client = telemetry.client(PoolConfig::default(), tcp());
    for (id, status) in [(1, "404"), (2, "503"), (3, "200")] {
        let mut request = get(&server.url("/"), id);
        request
            .headers_mut()
            .insert("x-status", http::HeaderValue::from_static(status));
        let (parts, _) = send(&mut client, request).await.unwrap();
        assert_eq!(parts.status.as_str(), status);
    }
    let spans = telemetry.finished_spans();
    let errors: Vec<_> = spans
        .iter()
        .map(|span| {
            (
                span_attribute(span, "error.type"),
                matches!(span.status, Status::Error { .. }),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (Some("404".to_owned()), true),
            (Some("503".to_owned()), true),
            (None, false)
        ]
    );
    let duration = &telemetry.metrics()["http.client.request.duration"];
    for status in ["404", "503"] {
        assert_eq!(
            duration.total(&[
                ("http.response.status_code", status),
                ("error.type", status)
            ]),
            1.0,
            "{status}: {duration:?}"
        );
    }
    assert_eq!(duration.total(&[("http.response.status_code", "200")]), 1.0);
    // The explicit bucket boundaries of the conventions, not the SDK's.
    assert_eq!(
        telemetry.histogram_bounds("http.client.request.duration"),
        [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ]
    );
}

/// The layer and the hook keep at most this many targets resolved
/// (`tower_reuse_otel`'s bound, not public).
const MAX_TARGETS: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_out_of_use_stop_being_observed_past_the_bound() {
    let telemetry = Telemetry::new();
    // Every target a host name on the in-memory connector (no socket, so no
    // file descriptor per target), whose server closes each connection
    // after one request: once answered, a target has no connection and no
    // request in flight.
    let connector = DuplexConnector::new(ServerOptions {
        max_requests_per_conn: Some(1),
        ..ServerOptions::default()
    });
    let mut client = telemetry.client(PoolConfig::default(), connector);
    let host = |i: usize| format!("t{i}.test");
    let addresses = |name: &str| {
        let metrics = telemetry.metrics();
        let addresses: BTreeSet<String> = metrics[name]
            .points
            .iter()
            .map(|(attributes, _)| match attributes.get("server.address") {
                Some(address) => address.clone(),
                None => format!("{attributes:?}"),
            })
            .collect();
        addresses
    };
    for i in 0..MAX_TARGETS {
        let url = format!("http://{}/", host(i));
        send(&mut client, get(&url, i as u64)).await.unwrap();
    }
    // (`http.client.open_connections` has two attribute sets per target,
    // idle and active: past 1 000 targets the SDK's default cardinality
    // limit folds the rest into one overflow point.)
    for name in [
        "tower_reuse.handshake.time_avoided",
        "http.client.active_requests",
    ] {
        assert_eq!(
            addresses(name).len(),
            MAX_TARGETS,
            "{name}: every target so far"
        );
    }

    // One target more: the others are out of use and go, with their
    // points; the layer keeps the target its service sent to last.
    let url = format!("http://{}/", host(MAX_TARGETS));
    send(&mut client, get(&url, 0)).await.unwrap();
    let only_last = BTreeSet::from([host(MAX_TARGETS)]);
    assert_eq!(addresses("tower_reuse.handshake.time_avoided"), only_last);
    assert_eq!(addresses("http.client.open_connections"), only_last);
    assert_eq!(
        addresses("http.client.active_requests"),
        BTreeSet::from([host(MAX_TARGETS - 1), host(MAX_TARGETS)])
    );
    // What was recorded meanwhile stays: every duration point.
    assert_eq!(
        addresses("http.client.request.duration").len(),
        MAX_TARGETS + 1
    );
}
