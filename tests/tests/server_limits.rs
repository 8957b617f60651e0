//! What the pool reports and does about a server's limits: the idle age at
//! which a server closes a connection (`Closed::idle_for`), requests that
//! met a connection the server had closed (`Stale`), and the replacement
//! opened ahead of a connection's last request under
//! `max_requests_per_connection`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::events::{
    CheckedOut, CloseReason, Closed, ConnectReason, ConnectStarted, PoolEvents, RetryReason, Stale,
};
use tower_reuse_pool::{Connect, Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::raw_http1::{Answer, RawHttp1Server};
use tower_reuse_tests::server::{ServerOptions, TestServer};
use tower_reuse_tests::{get, info, only, send, settle, until};

/// The target of the in-memory tests.
const URL: &str = "http://pool.test/";

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Start(ConnectReason),
    Out {
        id: u64,
        wait: Duration,
        idle_for: Option<Duration>,
    },
    Closed {
        id: u64,
        reason: CloseReason,
        idle_for: Option<Duration>,
        opened_for: ConnectReason,
    },
    Stale {
        id: u64,
        idle_for: Option<Duration>,
        written: bool,
    },
}

/// The events these tests look at, in order.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn closed(&self) -> Vec<(CloseReason, Option<Duration>, ConnectReason)> {
        let events = self.events().into_iter();
        events
            .filter_map(|e| match e {
                Event::Closed {
                    reason,
                    idle_for,
                    opened_for,
                    ..
                } => Some((reason, idle_for, opened_for)),
                _ => None,
            })
            .collect()
    }

    fn starts(&self) -> Vec<ConnectReason> {
        let events = self.events().into_iter();
        events
            .filter_map(|e| match e {
                Event::Start(reason) => Some(reason),
                _ => None,
            })
            .collect()
    }

    fn stale(&self) -> Vec<Event> {
        let events = self.events().into_iter();
        events
            .filter(|e| matches!(e, Event::Stale { .. }))
            .collect()
    }
}

impl PoolEvents for Recorder {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.0.lock().unwrap().push(Event::Start(event.reason()));
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.0.lock().unwrap().push(Event::Out {
            id: event.id().get(),
            wait: event.wait(),
            idle_for: event.idle_for(),
        });
    }

    fn on_close(&self, event: &Closed<'_>) {
        assert_eq!(
            event.prewarmed(),
            event.opened_for() == ConnectReason::Prewarm
        );
        self.0.lock().unwrap().push(Event::Closed {
            id: event.id().get(),
            reason: event.reason(),
            idle_for: event.idle_for(),
            opened_for: event.opened_for(),
        });
    }

    fn on_stale(&self, event: &Stale<'_>) {
        self.0.lock().unwrap().push(Event::Stale {
            id: event.id().get(),
            idle_for: event.idle_for(),
            written: event.written(),
        });
    }
}

fn recorded<C: Connect>(connector: C, config: PoolConfig) -> (Pool<C>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = PoolLayer::<Full<Bytes>>::new(config)
        .expect("valid config")
        .shared_events(recorder.clone())
        .layer(connector);
    (client, recorder)
}

fn http_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// A server that closes connections idle 100 ms, with no `Keep-Alive`
/// header: the pool reports the idle age at which it closed one, at least
/// the server's limit (less the exchange: the two clocks start apart). A connection closed at check-in (`Connection:
/// close`) carried its request then: no idle age.
#[tokio::test]
async fn a_server_idle_close_reports_the_idle_age_and_a_checkin_close_none() {
    let limit = Duration::from_millis(100);
    let server = TestServer::start(ServerOptions {
        idle_close: Some(limit),
        ..ServerOptions::default()
    })
    .await;
    let (mut client, recorder) = recorded(http_connector(), PoolConfig::default());
    let start = tokio::time::Instant::now();
    send(&mut client, get(&server.url("/"), 1)).await.unwrap();
    // The server counts its idle time from its response, the pool from
    // the end of the body: apart by less than the exchange took.
    let exchange = start.elapsed();
    for _ in 0..3 {
        tokio::time::sleep(limit).await;
        if !recorder.closed().is_empty() {
            break;
        }
    }
    until("the server's close is seen", || {
        !recorder.closed().is_empty()
    })
    .await;
    let closed = recorder.closed();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let (reason, idle_for, opened_for) = closed[0];
    assert_eq!(
        (reason, opened_for),
        (CloseReason::ServerClosed, ConnectReason::Demand)
    );
    let idle_for = idle_for.expect("closed while idle");
    assert!(
        idle_for + exchange >= limit,
        "closed after {idle_for:?} idle (exchange {exchange:?})"
    );

    let closing = TestServer::start(ServerOptions {
        max_requests_per_conn: Some(1),
        ..ServerOptions::default()
    })
    .await;
    let (mut client, recorder) = recorded(http_connector(), PoolConfig::default());
    send(&mut client, get(&closing.url("/"), 1)).await.unwrap();
    until("the connection is closed", || !recorder.closed().is_empty()).await;
    assert_eq!(
        recorder.closed(),
        [(CloseReason::ServerHint, None, ConnectReason::Demand)]
    );
}

/// A GET written on a reused connection the server closes without
/// answering: a `Stale` event (written), with the idle age the checkout
/// reported, besides the retry.
#[tokio::test]
async fn a_get_meeting_a_server_close_after_writing_is_reported_stale() {
    let server = RawHttp1Server::start(|conn, index| match (conn, index) {
        (0, 1) => Answer::Close,
        _ => Answer::Respond,
    })
    .await;
    let (mut client, recorder) = recorded(http_connector(), PoolConfig::default());
    let (first, _) = send(&mut client, get(&server.url("/"), 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (parts, _) = send(&mut client, get(&server.url("/"), 2)).await.unwrap();
    assert_eq!(info(&parts).retried(), Some(RetryReason::ClosedIdempotent));
    let first = info(&first).id().get();
    let checked_out = recorder.events().into_iter().find_map(|e| match e {
        Event::Out { id, idle_for, .. } if id == first && idle_for.is_some() => idle_for,
        _ => None,
    });
    assert!(checked_out >= Some(Duration::from_millis(20)));
    assert_eq!(
        recorder.stale(),
        [Event::Stale {
            id: first,
            idle_for: checked_out,
            written: true,
        }]
    );
}

/// A middlebox resets connections idle longer than 2 s: a request on a
/// connection idle 3 s finds it reset before its bytes are written, is
/// reported stale (not written) with that idle age, and goes out on a new
/// connection.
#[tokio::test(start_paused = true)]
async fn a_request_meeting_an_idle_reset_is_reported_stale_with_its_idle_age() {
    let connector =
        DuplexConnector::new(ServerOptions::default()).with_idle_reset(Duration::from_secs(2));
    let (mut client, recorder) = recorded(connector.clone(), PoolConfig::default());
    let (first, _) = send(&mut client, get(URL, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (second, _) = send(&mut client, get(URL, 2)).await.unwrap();
    assert_eq!(
        connector.resets.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_ne!(info(&second).id(), info(&first).id());
    assert_eq!(info(&second).retried(), None);
    let snapshot = only(&client);
    assert_eq!(snapshot.stale_skips(), 1, "{snapshot:?}");
    assert_eq!(
        recorder.stale(),
        [Event::Stale {
            id: info(&first).id().get(),
            idle_for: Some(Duration::from_secs(3)),
            written: false,
        }]
    );
}

/// Checkouts after the first: their waits, in order.
fn later_waits(events: &[Event]) -> Vec<Duration> {
    let waits = events.iter().filter_map(|e| match e {
        Event::Out { wait, .. } => Some(*wait),
        _ => None,
    });
    waits.skip(1).collect()
}

/// The server takes 50 ms over each response, a connect 40 ms: a
/// replacement started at a connection's last request is up before the
/// next request, which waits for nothing.
fn slow_responses() -> DuplexConnector {
    DuplexConnector::new(ServerOptions {
        delay: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    })
    .with_connect_delay(Duration::from_millis(40))
}

/// With 10 requests per connection, one sequential client sending 30: one
/// connect on demand, a replacement at the 10th, 20th and 30th request,
/// and no request after the first waits for a connection.
#[tokio::test(start_paused = true)]
async fn a_replacement_is_opened_ahead_of_a_connections_last_request() {
    for prior_knowledge in [false, true] {
        let config = PoolConfig::default()
            .max_requests_per_connection(Some(10))
            .http2_prior_knowledge(prior_knowledge);
        let (mut client, recorder) = recorded(slow_responses(), config);
        for i in 0..30 {
            send(&mut client, get(URL, i)).await.unwrap();
        }
        settle().await;
        use ConnectReason::{Demand, Replacement};
        assert_eq!(
            recorder.starts(),
            [Demand, Replacement, Replacement, Replacement],
            "h2: {prior_knowledge}"
        );
        // Each replacement started with the checkout of a connection's
        // 10th request (reported just before that checkout is).
        let events = recorder.events();
        let mut checkouts = 0;
        let mut starts = Vec::new();
        for event in &events {
            match event {
                Event::Out { .. } => checkouts += 1,
                Event::Start(Replacement) => starts.push(checkouts),
                _ => {}
            }
        }
        assert_eq!(starts, [9, 19, 29], "h2: {prior_knowledge}");
        let waits = later_waits(&events);
        assert_eq!(waits, [Duration::ZERO; 29], "h2: {prior_knowledge}");
        let mut closed = recorder.closed();
        closed.sort_by_key(|c| c.2 == Replacement);
        let max = (CloseReason::MaxRequests, None);
        assert_eq!(
            closed,
            [
                (max.0, max.1, Demand),
                (max.0, max.1, Replacement),
                (max.0, max.1, Replacement)
            ],
            "h2: {prior_knowledge}"
        );
        assert_eq!(only(&client).idle(), 1, "the last replacement waits idle");
    }
}

/// Another connection idle at a connection's last request: no replacement,
/// the idle one serves next.
#[tokio::test(start_paused = true)]
async fn no_replacement_while_another_connection_is_idle() {
    let config = PoolConfig::default().max_requests_per_connection(Some(10));
    let (client, recorder) = recorded(slow_responses(), config);
    // Two connections, each with one request served.
    let (mut a, mut b) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(send(&mut a, get(URL, 0)), send(&mut b, get(URL, 1)));
    let (first, second) = (info(&first.unwrap().0), info(&second.unwrap().0));
    assert_ne!(first.id(), second.id(), "two connections");
    let mut client = client;
    // The most recent one serves 9 more: its 10th with the other idle.
    for i in 2..11 {
        send(&mut client, get(URL, i)).await.unwrap();
    }
    settle().await;
    assert_eq!(
        recorder.starts(),
        [ConnectReason::Demand, ConnectReason::Demand]
    );
    assert_eq!(
        recorder.closed(),
        [(CloseReason::MaxRequests, None, ConnectReason::Demand)]
    );
    let (parts, _) = send(&mut client, get(URL, 11)).await.unwrap();
    assert_eq!(info(&parts).wait(), Duration::ZERO);
}

/// A moment's idle connection among busy ones is not spare (a closed
/// loop's connections are idle between their requests): with one of four
/// connections idle and two busy, the fourth's last request still starts
/// its replacement.
#[tokio::test(start_paused = true)]
async fn a_replacement_starts_when_few_of_many_connections_are_idle() {
    let config = PoolConfig::default().max_requests_per_connection(Some(10));
    let (client, recorder) = recorded(slow_responses(), config);
    // Four connections, one request served on each.
    let opened = tower_reuse_tests::concurrently(4, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, i)).await.unwrap() }
    })
    .await;
    assert_eq!(opened.len(), 4);
    // Two held busy: their responses' bodies unread.
    let mut busy = Vec::new();
    for i in 0..2 {
        let mut client = client.clone();
        let response = client.ready().await.unwrap().call(get(URL, 10 + i)).await;
        busy.push(response.unwrap());
    }
    // One serves 9 more; its 10th with one other idle and two busy.
    let mut serial = client.clone();
    for i in 0..9 {
        let (parts, _) = send(&mut serial, get(URL, 20 + i)).await.unwrap();
        assert!(info(&parts).reused());
    }
    assert_eq!(
        recorder.starts().last(),
        Some(&ConnectReason::Replacement),
        "{:?}",
        recorder.starts()
    );
    drop(busy);
}

/// A replacement takes a free slot of the pool-wide budget or none: with
/// the budget at one connection, the connection retires after its last
/// request and the next request connects on demand.
#[tokio::test(start_paused = true)]
async fn a_replacement_never_exceeds_the_budget() {
    let config = PoolConfig::default()
        .max_requests_per_connection(Some(10))
        .max_connections(Some(1));
    let (mut client, recorder) = recorded(slow_responses(), config);
    for i in 0..11 {
        send(&mut client, get(URL, i)).await.unwrap();
    }
    settle().await;
    assert_eq!(
        recorder.starts(),
        [ConnectReason::Demand, ConnectReason::Demand]
    );
    let waits = later_waits(&recorder.events());
    assert_eq!(waits[9], Duration::from_millis(40), "{waits:?}");
}

/// A replacement takes a free connect slot or none: the connection's last
/// request comes while a connect on demand is in flight, which with one
/// connect allowed per target leaves no slot for it (with two, it starts).
#[tokio::test(start_paused = true)]
async fn a_replacement_takes_a_free_connect_slot_or_none() {
    for (max_connecting, replaced) in [(1, false), (2, true)] {
        let connector = DuplexConnector::new(ServerOptions::default())
            .with_connect_delay(Duration::from_millis(100));
        let config = PoolConfig::default()
            .max_requests_per_connection(Some(3))
            .max_connecting_per_target(Some(max_connecting));
        let (client, recorder) = recorded(connector, config);
        send(&mut client.clone(), get(URL, 0)).await.unwrap();
        // The second request holds the connection 50 ms; the third waits
        // for it, starting a connect that takes 100 ms, and gets it back
        // first, for its last request.
        let mut slow = get(URL, 1);
        slow.headers_mut()
            .insert("x-delay-ms", http::HeaderValue::from_static("50"));
        let mut other = client.clone();
        let second = tokio::spawn(async move { send(&mut other, slow).await });
        settle().await;
        let (third, _) = send(&mut client.clone(), get(URL, 2)).await.unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(info(&third).wait(), Duration::from_millis(50));
        use ConnectReason::{Demand, Replacement};
        let expected: &[ConnectReason] = if replaced {
            &[Demand, Demand, Replacement]
        } else {
            &[Demand, Demand]
        };
        assert_eq!(recorder.starts(), expected, "{max_connecting} connecting");
    }
}
