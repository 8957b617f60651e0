//! The pool against an HTTP/2 server that sends GOAWAY, refuses streams and
//! lowers its stream limit mid-connection: `h2server` on loopback, and, for
//! the tests on paused time, `MemoryH2` over in-memory pipes.
//!
//! Every wait on real time is bounded by [`bounded`], a guard against hangs
//! that is never a performance assertion.

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_reuse_pool::events::{CloseReason, PoolEvents, Retried, RetryReason};
use tower_reuse_pool::{
    ConnId, ConnectionInfo, Error, ErrorKind, Phase, Pool, PoolConfig, PoolLayer, TargetSnapshot,
};
use tower_reuse_tests::h2server::{H2Options, H2Server, Reply, StreamAt};
use tower_reuse_tests::memory_h2::{Behaviour, FIRST_MAX_STREAMS, MemoryH2, URL, memory_pool};
use tower_reuse_tests::{REAL_TIME_BOUND, on_paused_time_within};
use tower_reuse_tests::{bounded, concurrently, echoed_id, get, info, only, send, server_conn};

/// Records every retry the pool reports.
#[derive(Debug, Default)]
struct Retries(Mutex<Vec<(RetryReason, ConnId)>>);

impl Retries {
    fn seen(&self) -> Vec<(RetryReason, ConnId)> {
        self.0.lock().unwrap().clone()
    }
}

impl PoolEvents for Retries {
    fn on_retry(&self, event: &Retried<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((event.reason(), event.failed_on()));
    }
}

/// An h2c pool, and the retries it reports.
fn h2_pool() -> (Pool<HttpConnector>, Arc<Retries>) {
    let retries = Arc::new(Retries::default());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = PoolLayer::new(PoolConfig::default().http2_prior_knowledge(true))
        .expect("valid config")
        .shared_events(retries.clone())
        .layer(connector);
    (client, retries)
}

/// Send a GET for `url` with id `id` on a task of its own.
fn spawn_get(
    client: &Pool<HttpConnector>,
    url: &str,
    id: u64,
) -> JoinHandle<Result<(http::response::Parts, Bytes), Error>> {
    let mut client = client.clone();
    let req = get(url, id);
    tokio::spawn(async move { send(&mut client, req).await })
}

/// Wait (bounded) until the pool's only target satisfies `done`.
async fn until_pool(client: &Pool<HttpConnector>, done: impl Fn(&TargetSnapshot) -> bool) {
    for _ in 0..200 {
        if done(&only(client)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the pool never got there: {:?}", only(client));
}

/// Stream `index` of connection `conn`.
fn is(stream: StreamAt, conn: usize, index: u64) -> bool {
    stream.conn == conn && stream.index == index
}

#[tokio::test]
async fn goaway_sends_new_requests_to_a_new_connection_and_lets_streams_in_flight_finish() {
    // Connection 0: stream 0 warms the pool up, streams 1 and 2 are held.
    let server = H2Server::start(H2Options::replying(|s| {
        if s.conn == 0 && (1..=2).contains(&s.index) {
            Reply::Hold
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let in_flight: Vec<_> = (1..=2).map(|i| spawn_get(&client, &url, i)).collect();
    bounded(server.wait_until(|seen| seen.streams_on(0) == 3)).await;

    bounded(server.goaway(0)).await;
    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 3)))
        .await
        .expect("a request after GOAWAY succeeds");
    assert_eq!(server_conn(&parts), 1, "it went to a new connection");

    server.release();
    for (task, i) in in_flight.into_iter().zip(1..) {
        let (parts, body) = bounded(task)
            .await
            .unwrap()
            .expect("a stream below the last stream id finishes");
        assert_eq!((server_conn(&parts), echoed_id(&parts)), (0, Some(i)));
        assert_eq!(&body[..], b"ok");
    }
    until_pool(&client, |t| t.closed(CloseReason::GoAway) == 1).await;
    let target = only(&client);
    assert_eq!((target.opened(), target.idle(), target.active()), (2, 1, 0));
    assert_eq!(target.retries(), 0, "nothing was sent twice");
    assert!(retries.seen().is_empty());
    let seen = server.seen();
    assert_eq!(seen.streams_on(0), 3, "no stream went on after GOAWAY");
    assert_eq!(seen.accepted(), 2);
}

#[tokio::test]
async fn goaway_on_an_idle_connection_closes_it() {
    let server = H2Server::start(H2Options::default()).await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();

    bounded(server.goaway(0)).await;
    bounded(server.wait_until(|seen| seen.conns[0].closed)).await;
    until_pool(&client, |t| t.closed(CloseReason::GoAway) == 1).await;
    assert_eq!((only(&client).idle(), only(&client).active()), (0, 0));

    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 1)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 1);
    assert_eq!(only(&client).retries(), 0);
    assert!(retries.seen().is_empty());
}

#[tokio::test]
async fn draining_connection_closes_when_its_last_stream_ends() {
    // Connection 0: stream 0 warms up, stream 1 is held; then a GOAWAY the
    // h2 server does not act on (the relay sends it), so only the client
    // can close the connection.
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 1) {
            Reply::Hold
        } else if is(s, 0, 2) {
            Reply::GoAwayBelow
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let held = spawn_get(&client, &url, 1);
    bounded(server.wait_until(|seen| seen.streams_on(0) == 2)).await;
    // Stream 2 meets the GOAWAY and goes to connection 1.
    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 2)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 1);
    assert_eq!(only(&client).requeued(), 1, "queued again, not retried");
    assert!(retries.seen().is_empty());
    assert_eq!(only(&client).closed_total(), 0, "a stream is still open");
    assert!(!server.seen().conns[0].closed);

    server.release();
    bounded(held).await.unwrap().unwrap();
    bounded(server.wait_until(|seen| seen.conns[0].closed)).await;
    until_pool(&client, |t| t.closed(CloseReason::GoAway) == 1).await;
    assert_eq!(only(&client).closed_total(), 1);
}

#[tokio::test]
async fn abrupt_goaway_fails_streams_in_flight_as_possibly_processed() {
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 1) {
            Reply::Hold
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let held = spawn_get(&client, &url, 1);
    bounded(server.wait_until(|seen| seen.streams_on(0) == 2)).await;

    server.abrupt_goaway(0, Reason::INTERNAL_ERROR);
    let error = bounded(held)
        .await
        .unwrap()
        .expect_err("the server closed under it");
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Send, Phase::Send)
    );
    assert!(
        error.may_have_been_processed(),
        "it was below the last stream id"
    );
    assert!(retries.seen().is_empty(), "so it is not replayed");

    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 2)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 1);
    until_pool(&client, |t| t.closed_total() == 1).await;
    assert_eq!(server.seen().streams_on(0), 2);
}

#[tokio::test]
async fn stream_above_goaway_last_stream_id_is_queued_again_for_a_new_connection() {
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 1) {
            Reply::GoAwayBelow
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    let (warm, _) = send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let first = warm.extensions.get::<ConnectionInfo>().unwrap().id();

    let (parts, body) = bounded(send(&mut client.clone(), get(&url, 1)))
        .await
        .expect("queued again");
    assert_eq!((server_conn(&parts), echoed_id(&parts)), (1, Some(1)));
    assert_eq!(&body[..], b"ok");
    let info = parts.extensions.get::<ConnectionInfo>().unwrap();
    // Never processed: queued again, and its one retry is still unspent.
    assert_eq!((info.retried(), info.refusals()), (None, 1));
    assert_ne!(info.id(), first);
    assert_eq!((only(&client).retries(), only(&client).requeued()), (0, 1));
    assert!(retries.seen().is_empty());
    let seen = server.seen();
    assert_eq!((seen.streams_on(0), seen.streams_on(1)), (2, 1));
}

/// The connection that refused with nothing else in flight now carries no
/// stream (until it probes back up), so a new connection serves the
/// request, queued again rather than retried.
#[tokio::test]
async fn refused_stream_is_queued_again_and_served_by_another_connection() {
    // Connection 0 serves its first stream and refuses every later one.
    let server = H2Server::start(H2Options::replying(|s| {
        if s.conn == 0 && s.index > 0 {
            Reply::Refuse
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    let (warm, _) = send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let first = warm.extensions.get::<ConnectionInfo>().unwrap().id();

    let result = bounded(send(&mut client.clone(), get(&url, 1))).await;
    let seen = server.seen();
    let (parts, _) = result.unwrap_or_else(|e| panic!("{e} after {seen:?}"));
    assert_eq!((server_conn(&parts), echoed_id(&parts)), (1, Some(1)));
    let info = parts.extensions.get::<ConnectionInfo>().unwrap();
    assert_eq!(info.retried(), None);
    // Refused once, or again if connection 0 probed back up to one stream
    // before connection 1 was up.
    let refusals = u64::from(info.refusals());
    assert!(refusals >= 1);
    let target = only(&client);
    assert_eq!(
        (target.retries(), target.requeued(), target.refused()),
        (0, refusals, refusals)
    );
    assert!(retries.seen().is_empty());
    assert_eq!(seen.streams_on(0), 1 + refusals);
    assert_eq!(seen.streams_on(1), 1);
    let refused_on = target
        .http2_connections()
        .iter()
        .find(|c| c.id() == first)
        .expect("connection 0 is open");
    assert_eq!(refused_on.refused(), refusals);
}

/// A server that refuses every stream: the request goes back to the queue
/// until its tenth refusal, which fails it, typed as never processed; the
/// learned limits hold connects back (no connect per refusal).
#[tokio::test]
async fn a_server_refusing_every_stream_fails_the_request_at_its_tenth_refusal() {
    // Every stream but the very first is refused, on every connection.
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 0) {
            Reply::Respond
        } else {
            Reply::Refuse
        }
    }))
    .await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();

    let error = bounded(send(&mut client.clone(), get(&url, 1)))
        .await
        .expect_err("refused every time");
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Send, Phase::Send)
    );
    assert!(!error.may_have_been_processed(), "{error}");
    assert!(
        error.to_string().contains("refused the request 10 times"),
        "{error}"
    );
    let target = only(&client);
    assert_eq!(
        (target.retries(), target.requeued(), target.refused()),
        (0, 9, 10)
    );
    assert!(retries.seen().is_empty());
    let seen = server.seen();
    assert_eq!(seen.streams(), 11, "the first request, then 10 refusals");
    assert!(seen.accepted() <= 2, "a connect per refusal: {seen:?}");
}

#[tokio::test]
async fn lowered_max_streams_is_honoured_once_the_pool_has_read_it() {
    // Connection 0: stream 0 warms up, stream 1 runs after the SETTINGS
    // (and lets the pool read them), stream 2 is held.
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 2) {
            Reply::Hold
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, _) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    bounded(server.lower_max_streams(0, 1)).await;
    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 1)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 0);
    let held = spawn_get(&client, &url, 2);
    bounded(server.wait_until(|seen| seen.streams_on(0) == 3)).await;

    // Connection 0 is full: queued behind the held stream, this request
    // would wait as long as that stream does.
    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 3)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 1);
    server.release();
    let (parts, _) = bounded(held).await.unwrap().unwrap();
    assert_eq!(server_conn(&parts), 0);
    assert_eq!(server.seen().streams_on(0), 3);
}

/// The pool reads the server's live stream limit at checkout, so the next
/// request goes elsewhere instead of queueing in h2 behind the held stream.
#[tokio::test]
async fn lowering_max_streams_to_one_sends_new_requests_elsewhere() {
    let server = H2Server::start(H2Options::replying(|s| {
        if is(s, 0, 1) {
            Reply::Hold
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, _) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let held = spawn_get(&client, &url, 1);
    bounded(server.wait_until(|seen| seen.streams_on(0) == 2)).await;

    bounded(server.lower_max_streams(0, 1)).await;
    // Connection 0 is full now: queued behind the held stream, this request
    // would wait as long as that stream does.
    let (parts, _) = bounded(send(&mut client.clone(), get(&url, 2)))
        .await
        .unwrap();
    assert_eq!(server_conn(&parts), 1);

    server.release();
    bounded(held).await.unwrap().unwrap();
    assert_eq!(server.seen().streams_on(0), 2);
}

/// As above, with a limit of 0: the first request after the SETTINGS must
/// not go to connection 0, where h2 would wait for a stream that never frees.
#[tokio::test]
async fn lowering_max_streams_to_zero_sends_new_requests_elsewhere() {
    let server = H2Server::start(H2Options::default()).await;
    let (client, _) = h2_pool();
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();

    bounded(server.lower_max_streams(0, 0)).await;
    for i in 1..=3 {
        let (parts, _) = bounded(send(&mut client.clone(), get(&url, i)))
            .await
            .unwrap();
        assert_eq!(server_conn(&parts), 1);
    }
    assert_eq!(server.seen().streams_on(0), 1);
}

#[tokio::test]
async fn goaway_after_every_first_response_costs_at_most_one_connection_per_request() {
    // Every connection answers its first stream, then shuts down gracefully;
    // streams that reach it before the shutdown completes are answered too.
    let server = H2Server::start(H2Options::replying(|s| {
        if s.index == 0 {
            Reply::RespondThenGoAway
        } else {
            Reply::Respond
        }
    }))
    .await;
    let (client, _) = h2_pool();
    let url = server.url("/");
    for i in 0..10 {
        bounded(send(&mut client.clone(), get(&url, i)))
            .await
            .unwrap();
    }
    let burst = bounded(concurrently(10, |i| {
        let mut client = client.clone();
        let url = url.clone();
        async move { send(&mut client, get(&url, 10 + i)).await.map(|_| ()) }
    }))
    .await;
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");

    let seen = server.seen();
    assert!(seen.accepted() <= 20, "{seen:?}");
    assert!(
        seen.conns.iter().all(|c| c.streams > 0),
        "no connection opened in vain: {seen:?}"
    );
    assert!(seen.streams() <= 20 + only(&client).retries(), "{seen:?}");
    // Each connection is closed in the pool once the server has sent GOAWAY.
    bounded(server.wait_until(|seen| seen.open() == 0)).await;
    let accepted = seen.accepted() as u64;
    until_pool(&client, |t| t.closed(CloseReason::GoAway) == accepted).await;
    let target = only(&client);
    assert_eq!((target.idle(), target.active()), (0, 0));
}

#[tokio::test]
async fn goaway_before_every_first_stream_fails_each_request_without_a_retry() {
    // Every connection answers its first stream with GOAWAY (last stream
    // id 0): nothing is ever processed, and the first stream of a brand-new
    // connection is not retried (no dial loop).
    let server = H2Server::start(H2Options::replying(|_| Reply::GoAwayBelow)).await;
    let (client, retries) = h2_pool();
    let url = server.url("/");
    for i in 0..5 {
        let error = bounded(send(&mut client.clone(), get(&url, i)))
            .await
            .expect_err("never processed");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::Send, Phase::Send)
        );
        assert!(
            !error.may_have_been_processed(),
            "a stream above GOAWAY's last stream id was not processed: {error}"
        );
    }
    let seen = server.seen();
    assert_eq!(
        seen.accepted(),
        5,
        "one connection each, no retry: {seen:?}"
    );
    assert_eq!(seen.streams(), 5);
    assert_eq!(only(&client).retries(), 0);
    assert!(retries.seen().is_empty());
    assert_eq!(only(&client).closed(CloseReason::GoAway), 5);
}

#[tokio::test]
async fn a_server_without_a_stream_limit_takes_a_burst_on_prewarmed_connections() {
    // No SETTINGS_MAX_CONCURRENT_STREAMS: h2 reads the limit as usize::MAX,
    // which the pool's arithmetic must take without overflowing.
    let server = H2Server::start(H2Options {
        max_concurrent_streams: None,
        ..H2Options::default()
    })
    .await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = PoolLayer::new(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .min_idle_per_target(3),
    )
    .expect("valid config")
    .layer(connector);
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let burst: Vec<_> = (1..=20).map(|i| spawn_get(&client, &url, i)).collect();
    for (task, i) in burst.into_iter().zip(1..) {
        let (parts, _) = bounded(task).await.unwrap().expect("served");
        assert_eq!(echoed_id(&parts), Some(i));
    }
    assert!(server.seen().conns.len() <= 4, "{:?}", server.seen());
}

#[tokio::test]
async fn a_retried_request_keeps_its_in_flight_permit() {
    // Connection 0 refuses its second stream; connection 1 holds the retry.
    let server = H2Server::start(H2Options::replying(|s| match (s.conn, s.index) {
        (0, 0) => Reply::Respond,
        (0, _) => Reply::Refuse,
        _ => Reply::Hold,
    }))
    .await;
    let client: Pool<HttpConnector> = PoolLayer::new(
        PoolConfig::default()
            .http2_prior_knowledge(true)
            .max_requests_in_flight(Some(1)),
    )
    .expect("valid config")
    .layer(HttpConnector::new());
    let url = server.url("/");
    send(&mut client.clone(), get(&url, 0)).await.unwrap();
    let retried = spawn_get(&client, &url, 1);
    bounded(server.wait_until(|seen| seen.streams_on(1) == 1)).await;
    // The retry is in flight: the pool's one permit is still taken.
    let mut other = client.clone();
    let ready = std::future::poll_fn(|cx| Poll::Ready(other.poll_ready(cx).is_ready())).await;
    assert!(
        !ready,
        "a second request got a permit while the retry was in flight"
    );
    server.release();
    let (parts, _) = bounded(retried).await.unwrap().expect("the retry succeeds");
    assert_eq!(server_conn(&parts), 1);
}

/// An hour of paused time passes, which it cannot while any task spins,
/// and in it nothing dials and nothing stays open; the pool's expiry task
/// wakes for deadlines only.
async fn stays_quiet_for_an_hour(client: &Pool<MemoryH2>, server: &MemoryH2) {
    let accepted = server.accepted();
    let wakeups = client.control().snapshot().reaper_wakeups();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(server.accepted(), accepted, "still dialing");
    assert_eq!(server.open(), 0, "a connection stayed open");
    let snapshot = client.control().snapshot();
    let woken = snapshot.reaper_wakeups() - wakeups;
    assert!(
        woken <= 4,
        "the expiry task woke {woken} times in an idle hour"
    );
    for target in &snapshot.targets {
        assert_eq!(
            (target.connecting(), target.idle(), target.active()),
            (0, 0, 0),
            "{target:?}"
        );
    }
}

/// A request sent as a graceful GOAWAY arrives, before the client has read
/// it, is answered on its connection: its stream is below the GOAWAY's last
/// stream id, so the server processes it. (Over hyper's HTTP/2 client it
/// failed, "dispatch task is gone", after its HEADERS had gone out: the
/// pool could neither call it unprocessed nor replay it.)
#[test]
fn a_request_racing_a_graceful_goaway_is_answered_on_its_connection() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::Respond);
        let mut client = memory_pool(&server, PoolConfig::default().retry(false));
        let (first, _) = send(&mut client, get(URL, 1)).await.expect("answered");
        // From a task of its own: woken as the GOAWAY is written, it runs
        // before the client's connection task reads it (the runtime's main
        // future would run after).
        let racing = {
            let (server, mut client) = (server.clone(), client.clone());
            tokio::spawn(async move {
                server.drain_racing(0).await;
                send(&mut client, get(URL, 2)).await
            })
        };
        let (second, _) = racing
            .await
            .expect("no panic")
            .expect("a stream below the GOAWAY's last stream id is answered");
        assert_eq!(info(&second).id(), info(&first).id());
        assert_eq!(info(&second).retried(), None);
        assert_eq!(server.streams(), (2, 2));
        // The draining connection takes no new stream: the next request
        // opens another.
        let (third, _) = send(&mut client, get(URL, 3)).await.expect("answered");
        assert_ne!(info(&third).id(), info(&first).id());
        assert_eq!(server.accepted(), 2);
    });
}

/// Case 10 of the fault matrix (faults.rs), the GOAWAY storm, on paused
/// time: every connection answers one stream, then sends GOAWAY and closes.
/// One request after another, each succeeds on a connection of its own. In
/// a burst the pool puts several streams on a connection the server will
/// answer one of: each request succeeds or, after at most one retry, fails
/// typed as never processed, and the burst costs at most a connection per
/// request. Afterwards nothing spins (see [`stays_quiet_for_an_hour`]).
#[test]
fn a_goaway_after_every_first_stream_costs_a_connection_per_request_and_no_spin() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        const SEQUENTIAL: u64 = 100;
        const BURST: u64 = 50;
        let server = MemoryH2::new(Behaviour::GoAwayAfterFirstStream);
        let client = memory_pool(&server, PoolConfig::default());
        for i in 0..SEQUENTIAL {
            let (parts, _) = send(&mut client.clone(), get(URL, i))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
            assert!(!info(&parts).reused(), "request {i}");
        }
        assert_eq!(server.accepted() as u64, SEQUENTIAL);
        assert_eq!(only(&client).retries(), 0);

        let burst = burst(&client, SEQUENTIAL, BURST).await;
        let served = burst.iter().filter(|r| r.is_ok()).count() as u64;
        for error in burst.iter().filter_map(|r| r.as_ref().err()) {
            assert_never_processed(error);
        }
        // Every connection answers its first stream: a burst that got no
        // answer at all would be a pool that stopped sending.
        let burst_connections = server.accepted() as u64 - SEQUENTIAL;
        assert!(
            (1..=burst_connections).contains(&served),
            "{served} served on {burst_connections} connections"
        );
        // Each answered stream reached its request; no failed one was processed.
        assert_eq!(server.streams().1, SEQUENTIAL + served);
        assert!(only(&client).retries() <= BURST, "{:?}", only(&client));
        assert_no_more_connections_than_requests(&server, SEQUENTIAL + BURST);
        stays_quiet_for_an_hour(&client, &server).await;
    });
}

/// Send `n` GETs at once, with ids from `first`.
async fn burst(client: &Pool<MemoryH2>, first: u64, n: u64) -> Vec<Result<(), Error>> {
    concurrently(n, |i| {
        let mut client = client.clone();
        async move { send(&mut client, get(URL, first + i)).await.map(|_| ()) }
    })
    .await
}

/// No dial loop: at most a connection per request so far.
fn assert_no_more_connections_than_requests(server: &MemoryH2, requests: u64) {
    let accepted = server.accepted() as u64;
    assert!(
        accepted <= requests,
        "{accepted} connections for {requests} requests"
    );
}

/// A request failed, typed as never processed: safe to send again.
fn assert_never_processed(error: &Error) {
    assert_eq!(
        (error.kind(), error.phase(), error.may_have_been_processed()),
        (ErrorKind::Send, Phase::Send, false),
        "{error:?}"
    );
}

/// The storm's other form, on paused time: every connection sends GOAWAY
/// (last stream id 0) before any stream. Every request fails, typed as
/// never processed, and is not retried (a brand-new connection's first
/// stream): no dial loop, no spin.
#[test]
fn a_goaway_before_every_first_stream_fails_each_request_without_a_dial_loop_or_spin() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        const SEQUENTIAL: u64 = 50;
        const BURST: u64 = 50;
        let server = MemoryH2::new(Behaviour::GoAwayAtOnce);
        let client = memory_pool(&server, PoolConfig::default());
        for i in 0..SEQUENTIAL {
            let error = send(&mut client.clone(), get(URL, i))
                .await
                .expect_err("nothing is ever answered");
            assert_never_processed(&error);
        }
        assert_eq!(server.accepted() as u64, SEQUENTIAL, "one connection each");
        assert_eq!(only(&client).retries(), 0);

        let burst = burst(&client, SEQUENTIAL, BURST).await;
        for result in &burst {
            assert_never_processed(result.as_ref().expect_err("nothing is ever answered"));
        }
        assert_no_more_connections_than_requests(&server, SEQUENTIAL + BURST);
        assert_eq!(server.streams().1, 0);
        stays_quiet_for_an_hour(&client, &server).await;
    });
}

/// Case 10, a stream limit lowered to 0 while the pool may open no other
/// connection: the request waits for a stream that never frees, and ends
/// in a typed `CheckoutTimeout` at the checkout timeout rather than
/// queueing in h2 for ever. Raised again, the limit lets the connection
/// serve.
#[test]
fn a_stream_limit_lowered_to_zero_at_the_connection_cap_ends_in_a_checkout_timeout() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let checkout_timeout = Duration::from_secs(2);
        let server = MemoryH2::new(Behaviour::Respond);
        let client = memory_pool(
            &server,
            PoolConfig::default()
                .max_connections_per_target(Some(1))
                .checkout_timeout(Some(checkout_timeout)),
        );
        let (first, _) = send(&mut client.clone(), get(URL, 0)).await.unwrap();
        server.set_max_streams(0, 0).await;

        let started = Instant::now();
        // Bounded on paused time: a request queued in h2 for a stream that never
        // frees would wait here for ever.
        let error = tokio::time::timeout(
            checkout_timeout * 10,
            send(&mut client.clone(), get(URL, 1)),
        )
        .await
        .expect("hung: neither served nor timed out")
        .expect_err("no stream may open");
        assert_eq!(
            (error.kind(), error.phase()),
            (ErrorKind::CheckoutTimeout, Phase::Checkout),
            "{error:?}"
        );
        assert_eq!(started.elapsed(), checkout_timeout);
        assert_eq!(server.accepted(), 1, "a connection beyond the cap");
        assert_eq!(server.streams(), (1, 1), "a stream went out over the limit");

        server.set_max_streams(0, FIRST_MAX_STREAMS).await;
        let (parts, _) =
            tokio::time::timeout(checkout_timeout, send(&mut client.clone(), get(URL, 2)))
                .await
                .expect("hung")
                .expect("served once the limit is raised");
        assert_eq!(info(&parts).id(), info(&first).id());
        assert_eq!(server.streams(), (2, 2));
    });
}
