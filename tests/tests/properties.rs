//! Properties of the pool over random sequences of requests, checked with
//! proptest on paused time against in-memory servers:
//!
//! - under random cancellations (in the checkout queue, after the request
//!   reached the server, mid-body, on a timer), concurrency, server faults
//!   and idle closes, every response carries its own request's id, the
//!   server sees a request twice only where the safe-retry rules allow (never
//!   a POST), and the pool ends with nothing active and nobody waiting;
//! - over TLS with client certificates, tenants ([`Partition`]s) never share
//!   a connection nor resume one another's sessions, as the server sees it.
//!
//! Each runs a fixed, small number of cases; a failure prints the shrunk
//! case. No failure files are written.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::tls::{SessionCache, SessionCacheConfig, TlsLayer};
use tower_reuse_pool::{Connect, Error, ErrorKind, Partition, Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::{Seen, ServerOptions, ServerStats};
use tower_reuse_tests::tls_server::{
    Alpn, ClientAuth, TestCa, TlsServer, TlsServerOptions, TlsVersion,
};

/// The target of the in-memory plain-HTTP server.
const URL: &str = "http://pool.test/";

/// Response bodies this large arrive in several frames (the in-memory pipe
/// holds 64 KiB), so a body can be dropped mid-way.
const LARGE_BODY: usize = 200_000;

/// Cases per property: each case takes milliseconds on paused time, so a
/// property runs in about a second in a debug build.
const CASES: u32 = 64;

/// A fixed, small number of cases, no failure files, shrinking bounded (at
/// most four times the cases in iterations, and 30 s).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    }
}

/// Run `property` on `cases` cases of `strategy`; a failure panics with the
/// shrunk case.
fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config(cases));
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{failure}");
    }
}

/// Run `case` to its end on a fresh single-threaded runtime on paused time;
/// a case still waiting after ten minutes of (paused) time fails as hung.
fn on_paused_time<F: Future<Output = Result<(), TestCaseError>>>(
    case: F,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(600), case).await {
            Ok(result) => result,
            Err(_) => Err(TestCaseError::fail("the case hung")),
        }
    })
}

/// Split `items` into batches to run concurrently, one batch after
/// another: an item joins the batch before it when `with_previous` says so,
/// up to `max` items a batch. Items keep their index.
fn batches<T: Clone>(
    items: &[T],
    max: usize,
    with_previous: impl Fn(&T) -> bool,
) -> Vec<Vec<(usize, T)>> {
    let mut batches: Vec<Vec<(usize, T)>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match batches.last_mut() {
            Some(batch) if with_previous(item) && batch.len() < max => {
                batch.push((i, item.clone()))
            }
            _ => batches.push(vec![(i, item.clone())]),
        }
    }
    batches
}

// ---------------------------------------------------------------------------
// 1. Random cancellation points over a shared pool.
// ---------------------------------------------------------------------------

/// What a request sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    /// A POST with this many body bytes (0 for none).
    Post(usize),
}

/// Where a request is given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancel {
    /// Its response future is polled once (so it is parked in the checkout
    /// queue, waiting for a connect, or on its way to the server), left
    /// unpolled this many milliseconds while the rest runs (a connection
    /// may be granted to it meanwhile), then dropped.
    Unpolled(u8),
    /// Dropped once the server has its head, before the response head is
    /// back (the server delays its answer).
    Sent,
    /// The response body (a large one) dropped after its first frame.
    MidBody,
    /// Dropped when a timer of this many milliseconds fires, wherever the
    /// request is by then.
    Timer(u8),
}

/// One request of a scenario.
#[derive(Clone)]
struct Op {
    method: Method,
    cancel: Option<Cancel>,
    /// The server drops the connection the first time it sees this request.
    fault: bool,
    /// The server waits this long before answering.
    delay_ms: u8,
    /// The response body is [`LARGE_BODY`] bytes.
    large_body: bool,
    /// Runs concurrently with the request before it.
    with_previous: bool,
    /// Idle time before it, when it starts a batch.
    pause_ms: u8,
}

/// One line per request in a failing case.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.method {
            Method::Get => write!(f, "GET")?,
            Method::Post(len) => write!(f, "POST {len} bytes")?,
        }
        if let Some(cancel) = self.cancel {
            write!(f, ", cancel {cancel:?}")?;
        }
        if self.fault {
            write!(f, ", server drops it")?;
        }
        write!(f, ", answered after {} ms", self.delay_ms)?;
        if self.large_body {
            write!(f, ", large body")?;
        }
        if self.with_previous {
            write!(f, ", with the previous")?;
        } else if self.pause_ms > 0 {
            write!(f, ", after {} ms idle", self.pause_ms)?;
        }
        Ok(())
    }
}

/// A pool, a server and the requests between them.
#[derive(Clone, Debug)]
struct Scenario {
    http2: bool,
    connect_delay_ms: u64,
    max_connections: Option<usize>,
    max_requests_per_connection: Option<u64>,
    server_close_after: Option<u64>,
    server_idle_close_ms: Option<u64>,
    /// The requests; request `i` has id `i`.
    ops: Vec<Op>,
}

fn op() -> impl Strategy<Value = Op> {
    let method = prop_oneof![
        3 => Just(Method::Get),
        1 => Just(Method::Post(0)),
        2 => (1usize..=4096).prop_map(Method::Post),
    ];
    let cancel = prop_oneof![
        5 => Just(None),
        1 => (0u8..=20).prop_map(|ms| Some(Cancel::Unpolled(ms))),
        1 => Just(Some(Cancel::Sent)),
        1 => Just(Some(Cancel::MidBody)),
        1 => (0u8..=30).prop_map(|ms| Some(Cancel::Timer(ms))),
    ];
    // Pauses of exactly the server's idle close (10 or 25 ms) race it.
    let pause = prop_oneof![Just(0u8), Just(10), Just(25), 1u8..=40];
    (
        method,
        cancel,
        proptest::bool::weighted(0.1),
        0u8..=20,
        proptest::bool::weighted(0.1),
        any::<bool>(),
        pause,
    )
        .prop_map(
            |(method, cancel, fault, delay_ms, large_body, with_previous, pause_ms)| Op {
                method,
                cancel,
                fault,
                // The answer comes after the server has the head for long
                // enough to be seen there first.
                delay_ms: if cancel == Some(Cancel::Sent) {
                    delay_ms.max(2)
                } else {
                    delay_ms
                },
                large_body: large_body || cancel == Some(Cancel::MidBody),
                with_previous,
                pause_ms,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::bool::weighted(0.25),
        prop_oneof![Just(0u64), 1u64..=5],
        proptest::option::weighted(0.7, 1usize..=3),
        proptest::option::weighted(0.3, 1u64..=4),
        proptest::option::weighted(0.3, 1u64..=4),
        proptest::option::weighted(0.5, prop_oneof![Just(10u64), Just(25)]),
        proptest::collection::vec(op(), 20..=60),
    )
        .prop_map(
            |(
                http2,
                connect_delay_ms,
                max_connections,
                max_requests_per_connection,
                server_close_after,
                server_idle_close_ms,
                ops,
            )| Scenario {
                http2,
                connect_delay_ms,
                max_connections,
                max_requests_per_connection,
                server_close_after,
                server_idle_close_ms,
                ops,
            },
        )
}

/// Where a cancelled request was when it was given up, as observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Stage {
    /// Parked in the checkout queue, for a connection to come back or a
    /// connect to finish (the pool's waiter count rose by one on its one
    /// poll), possibly granted a connection since.
    Parked,
    /// Not yet at the server, not seen parked.
    BeforeServer,
    /// At the server, no response head yet.
    BeforeHead,
    /// Response head in, body partly read.
    MidBody,
    /// On a timer: anywhere.
    Timer,
}

/// How one request ended.
#[derive(Debug)]
enum Ended {
    Completed,
    Failed(Error),
    Cancelled(Stage),
}

/// One request's record: how it ended and, if a response head came, the
/// request id it echoed.
#[derive(Debug)]
struct Record {
    ended: Ended,
    echoed: Option<Option<String>>,
}

fn request(op: &Op, id: usize) -> http::Request<Full<Bytes>> {
    let (method, body) = match op.method {
        Method::Get => (http::Method::GET, Bytes::new()),
        Method::Post(len) => (http::Method::POST, Bytes::from(vec![b'p'; len])),
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(URL)
        .header("x-request-id", id)
        .header("x-delay-ms", u16::from(op.delay_ms));
    if op.large_body {
        req = req.header("x-body-size", LARGE_BODY);
    }
    if op.fault {
        req = req.header("x-fault", "drop");
    }
    req.body(Full::new(body)).expect("a valid request")
}

/// Requests waiting for a connection, pool-wide.
fn waiting<C: Connect>(client: &Pool<C>) -> usize {
    client
        .control()
        .snapshot()
        .targets
        .iter()
        .map(|t| t.waiting())
        .sum()
}

/// Send `op` as request `id` and give it up where it says.
async fn run_op<C: Connect>(
    mut client: Pool<C>,
    stats: Arc<ServerStats>,
    id: usize,
    op: Op,
) -> Record {
    let req = request(&op, id);
    let key = id.to_string();
    let mut echoed = None;
    let client = match client.ready().await {
        Ok(client) => client,
        Err(error) => {
            return Record {
                ended: Ended::Failed(error),
                echoed,
            };
        }
    };
    let mut future = pin!(client.call(req));
    let exchange = async {
        let head = match op.cancel {
            Some(Cancel::Unpolled(ms)) => {
                let before = waiting(client);
                let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
                if let Poll::Ready(result) = polled {
                    result
                } else {
                    let parked = waiting(client) == before + 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    return Ended::Cancelled(if parked {
                        Stage::Parked
                    } else if stats.saw(&key) {
                        Stage::BeforeHead
                    } else {
                        Stage::BeforeServer
                    });
                }
            }
            Some(Cancel::Sent) => loop {
                tokio::select! {
                    biased;
                    result = future.as_mut() => break result,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {
                        if stats.saw(&key) {
                            return Ended::Cancelled(Stage::BeforeHead);
                        }
                    }
                }
            },
            _ => future.as_mut().await,
        };
        let response = match head {
            Ok(response) => response,
            Err(error) => return Ended::Failed(error),
        };
        echoed = Some(
            response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let mut body = response.into_body();
        if op.cancel == Some(Cancel::MidBody) {
            match body.frame().await {
                Some(Ok(_)) if !body.is_end_stream() => return Ended::Cancelled(Stage::MidBody),
                Some(Ok(_)) | None => {}
                Some(Err(error)) => return Ended::Failed(error),
            }
        }
        match body.collect().await {
            Ok(_) => Ended::Completed,
            Err(error) => Ended::Failed(error),
        }
    };
    let ended = match op.cancel {
        Some(Cancel::Timer(ms)) => {
            let limit = Duration::from_millis(u64::from(ms));
            match tokio::time::timeout(limit, exchange).await {
                Ok(ended) => ended,
                Err(_) => Ended::Cancelled(Stage::Timer),
            }
        }
        _ => exchange.await,
    };
    Record { ended, echoed }
}

/// Cancellations seen per stage, over all cases.
#[derive(Debug, Default)]
struct Coverage {
    parked: AtomicU64,
    before_head: AtomicU64,
    mid_body: AtomicU64,
    retried: AtomicU64,
    seen_twice: AtomicU64,
}

async fn cancellation_case(scenario: Scenario, coverage: &Coverage) -> Result<(), TestCaseError> {
    let connector = DuplexConnector::new(ServerOptions {
        max_requests_per_conn: scenario.server_close_after,
        idle_close: scenario.server_idle_close_ms.map(Duration::from_millis),
        ..ServerOptions::default()
    })
    .with_connect_delay(Duration::from_millis(scenario.connect_delay_ms));
    let stats = connector.stats.clone();
    let pool_config = PoolConfig::default()
        .http2_prior_knowledge(scenario.http2)
        .max_connections_per_target(scenario.max_connections)
        .max_requests_per_connection(scenario.max_requests_per_connection);
    let client = PoolLayer::<Full<Bytes>>::new(pool_config)
        .expect("a valid config")
        .layer(connector);

    let mut records: Vec<Option<Record>> = (0..scenario.ops.len()).map(|_| None).collect();
    for batch in batches(&scenario.ops, 8, |op| op.with_previous) {
        let pause = batch[0].1.pause_ms;
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
        }
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|(id, op)| {
                let task = tokio::spawn(run_op(client.clone(), stats.clone(), id, op));
                (id, task)
            })
            .collect();
        for (id, task) in tasks {
            match task.await {
                Ok(record) => records[id] = Some(record),
                Err(panic) => {
                    return Err(TestCaseError::fail(format!(
                        "request {id} panicked: {panic}"
                    )));
                }
            }
        }
    }
    // Let every delayed answer, close and connect in flight play out.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let records: Vec<Record> = records.into_iter().map(Option::unwrap).collect();
    let seen = stats.seen();
    let snapshot = client.control().snapshot();
    let retries = snapshot.total(|t| t.retries());

    // Every response head received carries its own request's id.
    for (id, record) in records.iter().enumerate() {
        if let Some(echoed) = &record.echoed {
            let own = id.to_string();
            prop_assert_eq!(
                echoed.as_deref(),
                Some(own.as_str()),
                "request {} got another's response",
                id
            );
        }
    }

    // The server saw each request at most once, but for a GET retried
    // after its reused connection closed under it; never a POST twice.
    let mut sightings: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        let id = s.request_id.as_deref().expect("every request has an id");
        sightings.entry(id).or_default().push(s);
    }
    let mut twice = 0u64;
    for (id, sightings) in &sightings {
        let index: usize = id.parse().expect("a request id");
        let op = &scenario.ops[index];
        if sightings.len() == 1 {
            continue;
        }
        twice += 1;
        prop_assert_eq!(
            op.method,
            Method::Get,
            "request {} ({:?}) reached the server {} times: {:?}",
            id,
            op.method,
            sightings.len(),
            sightings
        );
        prop_assert_eq!(
            sightings.len(),
            2,
            "GET {} sent more than twice: {:?}",
            id,
            sightings
        );
        prop_assert!(
            sightings[0].served > 1 && sightings[0].conn != sightings[1].conn,
            "GET {} retried, but not from a reused connection to another: {:?}",
            id,
            sightings
        );
    }
    prop_assert!(
        twice <= retries,
        "{} requests reached the server twice, {} retries counted",
        twice,
        retries
    );

    // Failures have a cause in the scenario: the request's own server fault,
    // or a server that closes idle connections (a POST meeting the close is
    // not retried). A request said not to have been processed never was.
    for (id, record) in records.iter().enumerate() {
        let Ended::Failed(error) = &record.ended else {
            continue;
        };
        let op = &scenario.ops[id];
        prop_assert!(
            op.fault || scenario.server_idle_close_ms.is_some(),
            "request {} ({:?}) failed without a fault: {}",
            id,
            op,
            error
        );
        prop_assert!(
            matches!(error.kind(), ErrorKind::Send | ErrorKind::Body),
            "request {} failed with {:?}: {}",
            id,
            error.kind(),
            error
        );
        if !error.may_have_been_processed() {
            prop_assert!(
                !sightings.contains_key(id.to_string().as_str()),
                "request {} reached the server but its error says it was not processed: {}",
                id,
                error
            );
        }
    }

    // Nothing leaked: no connection held, nobody waiting, no connect stuck.
    for target in &snapshot.targets {
        prop_assert_eq!(
            (target.active(), target.waiting(), target.connecting()),
            (0, 0, 0),
            "(active, waiting, connecting) after every request ended: {:?}",
            target
        );
    }

    for record in &records {
        let counter = match record.ended {
            Ended::Cancelled(Stage::Parked) => &coverage.parked,
            Ended::Cancelled(Stage::BeforeHead) => &coverage.before_head,
            Ended::Cancelled(Stage::MidBody) => &coverage.mid_body,
            _ => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    coverage.retried.fetch_add(retries, Ordering::Relaxed);
    coverage.seen_twice.fetch_add(twice, Ordering::Relaxed);
    Ok(())
}

#[test]
fn responses_never_cross_and_requests_repeat_only_as_retries_allow() {
    let coverage = Coverage::default();
    check(CASES, scenario(), |scenario| {
        on_paused_time(cancellation_case(scenario, &coverage))
    });
    // The generator reaches every cancellation point and the retry path.
    println!("{coverage:?}");
    assert!(coverage.parked.load(Ordering::Relaxed) > 0, "{coverage:?}");
    assert!(
        coverage.before_head.load(Ordering::Relaxed) > 0,
        "{coverage:?}"
    );
    assert!(
        coverage.mid_body.load(Ordering::Relaxed) > 0,
        "{coverage:?}"
    );
    assert!(coverage.retried.load(Ordering::Relaxed) > 0, "{coverage:?}");
}

// ---------------------------------------------------------------------------
// 2. Tenants never cross partitions, nor resume each other's sessions.
// ---------------------------------------------------------------------------

/// The tenants (partition names) and the client identity each presents.
/// The first two share one certificate (and one client configuration), so
/// that rustls' own refusal to resume a session under other credentials
/// cannot hide a session shared between them: only the pool keeps them
/// apart. A scenario takes the first two to four.
const TENANTS: [(&str, &str); 4] = [
    ("tenant-a", "identity-1"),
    ("tenant-b", "identity-1"),
    ("tenant-c", "identity-2"),
    ("tenant-d", "identity-3"),
];

/// The identity tenant `partition` presents.
fn identity_of(partition: &str) -> Option<&'static str> {
    TENANTS
        .iter()
        .find(|(tenant, _)| *tenant == partition)
        .map(|(_, identity)| *identity)
}

/// Tenants, a TLS server that requires their certificates, and their
/// requests.
#[derive(Clone, Debug)]
struct TenantScenario {
    version: TlsVersion,
    http2: bool,
    tickets_per_handshake: usize,
    /// The server closes a connection after this many requests.
    server_close_after: Option<u64>,
    /// The pool closes a connection after this many requests.
    max_requests_per_connection: Option<u64>,
    /// The requests, from the first two to four of [`TENANTS`]; request
    /// `i` has id `i`.
    requests: Vec<TenantRequest>,
}

/// One request of a tenant.
#[derive(Clone)]
struct TenantRequest {
    /// Its tenant, an index into [`TENANTS`].
    tenant: usize,
    /// Runs concurrently with the request before it.
    with_previous: bool,
}

/// One line per request in a failing case.
impl std::fmt::Debug for TenantRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", TENANTS[self.tenant].0)?;
        if self.with_previous {
            write!(f, ", with the previous")?;
        }
        Ok(())
    }
}

fn tenant_scenario() -> impl Strategy<Value = TenantScenario> {
    let closes = prop_oneof![
        (1u64..=4).prop_map(|n| (Some(n), None)),
        (1u64..=4).prop_map(|n| (None, Some(n))),
        (1u64..=4, 1u64..=4).prop_map(|(server, pool)| (Some(server), Some(pool))),
    ];
    let requests = (2usize..=4).prop_flat_map(|tenants| {
        let request =
            (0..tenants, any::<bool>()).prop_map(|(tenant, with_previous)| TenantRequest {
                tenant,
                with_previous,
            });
        proptest::collection::vec(request, 10..=40)
    });
    (
        requests,
        prop_oneof![Just(TlsVersion::Tls13), Just(TlsVersion::Tls12)],
        any::<bool>(),
        1usize..=4,
        closes,
    )
        .prop_map(
            |(requests, version, http2, tickets_per_handshake, closes)| TenantScenario {
                version,
                http2,
                tickets_per_handshake,
                server_close_after: closes.0,
                max_requests_per_connection: closes.1,
                requests,
            },
        )
}

/// What the TLS cases saw, over all cases.
#[derive(Debug, Default)]
struct TlsCoverage {
    full: AtomicU64,
    resumed: AtomicU64,
    requests: AtomicU64,
}

async fn tenant_case(
    scenario: TenantScenario,
    ca: &TestCa,
    layer: &TlsLayer,
    coverage: &TlsCoverage,
) -> Result<(), TestCaseError> {
    let server = TlsServer::in_memory(
        ca,
        TlsServerOptions {
            alpn: if scenario.http2 {
                Alpn::H2AndHttp1
            } else {
                Alpn::Http1Only
            },
            client_auth: ClientAuth::Required,
            version: scenario.version,
            close_after: scenario.server_close_after,
            tickets_per_handshake: Some(scenario.tickets_per_handshake),
            ..TlsServerOptions::default()
        },
    );
    // A fresh session cache per case: what one case stored, the next does
    // not resume.
    let cache = SessionCache::new(SessionCacheConfig::default()).expect("a valid cache config");
    let connector = layer
        .clone()
        .session_cache(Some(cache))
        .layer(server.connector());
    let client = PoolLayer::<Full<Bytes>>::new(
        PoolConfig::default().max_requests_per_connection(scenario.max_requests_per_connection),
    )
    .expect("a valid config")
    .layer(connector);
    let url = server.url("/");

    for batch in batches(&scenario.requests, 6, |req| req.with_previous) {
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|(id, req)| {
                let (tenant, _) = TENANTS[req.tenant];
                let mut client = client.clone();
                let mut req = http::Request::get(url.as_str())
                    .header("x-request-id", id)
                    .header("x-partition", tenant)
                    .body(Full::<Bytes>::default())
                    .expect("a valid request");
                req.extensions_mut().insert(Partition::new(tenant));
                let task = tokio::spawn(async move {
                    let response = client.ready().await?.call(req).await?;
                    let (parts, body) = response.into_parts();
                    body.collect().await?;
                    Ok::<_, Error>(parts)
                });
                (id, task)
            })
            .collect();
        for (id, task) in tasks {
            let parts = match task.await {
                Ok(Ok(parts)) => parts,
                Ok(Err(error)) => {
                    return Err(TestCaseError::fail(format!("request {id} failed: {error}")));
                }
                Err(panic) => {
                    return Err(TestCaseError::fail(format!(
                        "request {id} panicked: {panic}"
                    )));
                }
            };
            let echoed = parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok());
            let own = id.to_string();
            prop_assert_eq!(
                echoed,
                Some(own.as_str()),
                "request {} got another's response",
                id
            );
        }
    }

    // From the server's side: every request arrived on a connection whose
    // handshake (full, or resumed from an earlier session) carries the
    // certificate of the request's own tenant, and a connection serves one
    // tenant only.
    let seen = server.stats.seen();
    let handshakes = server.stats.handshakes();
    let by_conn: HashMap<u64, _> = handshakes.iter().map(|h| (h.conn, h)).collect();
    prop_assert_eq!(seen.len(), scenario.requests.len());
    let mut tenant_of: HashMap<u64, &str> = HashMap::new();
    for s in &seen {
        let partition = s
            .partition
            .as_deref()
            .expect("every request names its tenant");
        let handshake = by_conn.get(&s.conn);
        prop_assert!(handshake.is_some(), "no handshake for {:?}", s);
        let handshake = handshake.expect("checked");
        prop_assert_eq!(
            handshake.client.as_deref(),
            identity_of(partition),
            "request {:?} of {} arrived on a connection of {:?} (resumed from connection {:?})",
            s.request_id,
            partition,
            handshake.client,
            handshake.resumed_from
        );
        let owner = *tenant_of.entry(s.conn).or_insert(partition);
        prop_assert_eq!(
            owner,
            partition,
            "connection {} served both {} and {}",
            s.conn,
            owner,
            partition
        );
    }
    // No handshake under one tenant resumed a session of another: a resumed
    // connection and the connection that issued its session serve one
    // tenant (TLS 1.3 and TLS 1.2 alike: the server knows the issuer of
    // every session it resumes).
    for handshake in handshakes.iter().filter(|h| h.resumed) {
        let from = handshake.resumed_from;
        prop_assert!(from.is_some(), "no issuer for {:?}", handshake);
        let Some(from) = from else {
            continue;
        };
        if let (Some(tenant), Some(issuer)) = (tenant_of.get(&handshake.conn), tenant_of.get(&from))
        {
            prop_assert_eq!(
                tenant,
                issuer,
                "connection {} of {} resumed the session of connection {} of {}",
                handshake.conn,
                tenant,
                from,
                issuer
            );
        }
    }

    coverage
        .full
        .fetch_add(server.stats.full() as u64, Ordering::Relaxed);
    coverage
        .resumed
        .fetch_add(server.stats.resumed() as u64, Ordering::Relaxed);
    coverage
        .requests
        .fetch_add(seen.len() as u64, Ordering::Relaxed);
    Ok(())
}

#[test]
fn tenants_never_share_connections_or_sessions() {
    let ca = TestCa::new("tenants-ca");
    let base = Arc::new(ca.client_config(None));
    let mut configs: HashMap<&str, Arc<rustls::ClientConfig>> = HashMap::new();
    let layer = TENANTS
        .iter()
        .fold(TlsLayer::new(base), |layer, &(tenant, identity)| {
            let config = configs
                .entry(identity)
                .or_insert_with(|| Arc::new(ca.client_config(Some(&ca.client_identity(identity)))))
                .clone();
            layer.partition_config(Partition::new(tenant), config)
        });
    let coverage = TlsCoverage::default();
    check(CASES, tenant_scenario(), |scenario| {
        on_paused_time(tenant_case(scenario, &ca, &layer, &coverage))
    });
    // Sessions were resumed, so the property said something about them.
    println!("{coverage:?}");
    assert!(coverage.resumed.load(Ordering::Relaxed) > 0, "{coverage:?}");
}

/// A case the property once found: request 1 reaches the server, which
/// drops its connection; its replay meets a connection the server closes
/// while idle, before anything is written. The request's error must still
/// say it may have been processed (its first attempt was).
#[test]
fn a_replay_that_fails_unwritten_still_says_the_first_attempt_may_have_been_processed() {
    let plain = || Op {
        method: Method::Get,
        cancel: None,
        fault: false,
        delay_ms: 0,
        large_body: false,
        with_previous: false,
        pause_ms: 0,
    };
    let mut ops = vec![plain()];
    ops.push(Op {
        fault: true,
        delay_ms: 10,
        pause_ms: 1,
        ..plain()
    });
    ops.push(Op {
        cancel: Some(Cancel::Unpolled(14)),
        with_previous: true,
        ..plain()
    });
    for _ in 0..17 {
        ops.push(plain());
    }
    let scenario = Scenario {
        http2: false,
        connect_delay_ms: 4,
        max_connections: None,
        max_requests_per_connection: None,
        server_close_after: None,
        server_idle_close_ms: Some(10),
        ops,
    };
    let coverage = Coverage::default();
    on_paused_time(cancellation_case(scenario, &coverage)).unwrap();
}
