//! HTTP/2 servers that push back: streams refused (`REFUSED_STREAM`)
//! because the server counts a stream's slot busy a while after the stream
//! has ended (as grpc-core does), and `ENHANCE_YOUR_CALM`. All on paused
//! time against [`MemoryH2`], each test bounded in real time (a spin
//! would stop paused time from advancing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::Layer;

use tokio::time::Instant;
use tower_reuse_pool::events::{Calmed, PoolEvents, Refused, Retried};
use tower_reuse_pool::{
    ConnId, Connect, Error, ErrorKind, Http2Snapshot, Phase, Pool, PoolConfig, PoolLayer,
};
use tower_reuse_tests::memory_h2::{Behaviour, MemoryH2, URL, memory_pool};
use tower_reuse_tests::{REAL_TIME_BOUND, on_paused_time_within};
use tower_reuse_tests::{concurrently, get, info, only, send};

/// The pool steps a learned limit up by one stream this often.
const PROBE_AFTER: Duration = Duration::from_millis(10);

/// The longest release lag the pool learns (`conn.rs`): ends longer over
/// than this explain no refusal.
const MAX_RELEASE_LAG: Duration = Duration::from_millis(100);

/// The first back-off after `ENHANCE_YOUR_CALM`.
const CALM_BACKOFF: Duration = Duration::from_secs(1);

/// The one HTTP/2 connection of the pool's only target.
fn conn_of<C: Connect>(client: &Pool<C>) -> Http2Snapshot {
    let target = only(client);
    let conns = target.http2_connections();
    assert_eq!(conns.len(), 1, "{target:?}");
    conns[0].clone()
}

/// What the pool reported.
#[derive(Debug, Default)]
struct Seen {
    refused: Mutex<Vec<(ConnId, u32, usize, usize)>>,
    calmed: Mutex<Vec<(ConnId, Duration)>>,
    retries: Mutex<u64>,
}

impl PoolEvents for Seen {
    fn on_refused(&self, event: &Refused<'_>) {
        self.refused.lock().unwrap().push((
            event.failed_on(),
            event.refusals(),
            event.effective_limit(),
            event.advertised_limit(),
        ));
    }

    fn on_calm(&self, event: &Calmed<'_>) {
        self.calmed
            .lock()
            .unwrap()
            .push((event.id(), event.backoff()));
    }

    fn on_retry(&self, _event: &Retried<'_>) {
        *self.retries.lock().unwrap() += 1;
    }
}

/// An h2c pool over `server` with `config`, reporting to a [`Seen`].
fn watched_pool(server: &MemoryH2, config: PoolConfig) -> (Pool<MemoryH2>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let client = PoolLayer::<Full<Bytes>>::new(config.http2_prior_knowledge(true))
        .expect("valid config")
        .shared_events(seen.clone())
        .layer(server.clone());
    (client, seen)
}

/// One connection, at most.
fn one_connection() -> PoolConfig {
    PoolConfig::default().max_connections_per_target(Some(1))
}

/// A server whose 4 stream slots are all counted busy at 60 ms, though the
/// client has only 3 streams in flight there (see [`crowd`]).
struct Crowded {
    server: MemoryH2,
    client: Pool<MemoryH2>,
    seen: Arc<Seen>,
    /// When it began.
    start: Instant,
    /// The 3 requests in flight.
    three: Vec<tokio::task::JoinHandle<Result<(http::response::Parts, bytes::Bytes), Error>>>,
}

/// A server with 4 slots, each answer 50 ms after its stream opens and its
/// slot busy 20 ms more; request A at 0 ms (answered at 50 ms, slot busy
/// until 70 ms), B, C and D at 55 ms; returns at 60 ms, when for the
/// client 3 streams are in flight, for the server 4 slots are busy.
async fn crowd(config: PoolConfig) -> Crowded {
    let server = MemoryH2::new(Behaviour::Respond)
        .max_streams(4)
        .respond_after(Duration::from_millis(50))
        .late_release(Duration::from_millis(20));
    let (client, seen) = watched_pool(&server, config);
    let start = Instant::now();
    send(&mut client.clone(), get(URL, 0)).await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(55)).await;
    let three = (1..=3)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { send(&mut client, get(URL, i)).await })
        })
        .collect();
    tokio::time::sleep_until(start + Duration::from_millis(60)).await;
    Crowded {
        server,
        client,
        seen,
        start,
        three,
    }
}

/// A request made while every stream slot of the server is still counted
/// busy is refused. The refusal is explained by the stream that ended
/// last (A, 10 ms before): the connection keeps its advertised limit but
/// holds each slot freed by a stream's end for a release lag (10 ms and
/// one), and the request waits it out (nothing is sent meanwhile). Sent
/// again at 61 ms, while the server still counts A's slot (until 70 ms), it
/// is refused once more, which doubles the lag; at 72 ms it is taken.
#[test]
fn a_refusal_explained_by_a_late_release_waits_out_a_learned_lag() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let Crowded {
            server,
            client,
            seen,
            start,
            three,
        } = crowd(one_connection()).await;
        assert_eq!(conn_of(&client).advertised_limit(), 4);
        let mut e_client = client.clone();
        let e = tokio::spawn(async move { send(&mut e_client, get(URL, 4)).await });
        tokio::time::sleep(Duration::from_micros(500)).await;
        let conn = conn_of(&client);
        assert_eq!(
            (conn.refused(), conn.streams(), conn.effective_limit()),
            (1, 3, 4),
            "the limit stands: a lingering slot explains the refusal"
        );
        assert_eq!(conn.release_lag(), Some(Duration::from_millis(11)));
        assert_eq!(only(&client).waiting(), 1, "E waits out the lag");
        assert_eq!(
            *seen.refused.lock().unwrap(),
            [(conn.id(), 1, 4, 4)],
            "connection, refusals of the request, effective, advertised"
        );
        assert_eq!(server.streams().0, 5, "nothing sent within the lag");
        tokio::time::sleep_until(start + Duration::from_millis(61) + Duration::from_micros(500))
            .await;
        assert_eq!(
            (server.streams().0, server.refused()),
            (6, 2),
            "sent again at 61 ms"
        );
        assert_eq!(
            conn_of(&client).release_lag(),
            Some(Duration::from_millis(22))
        );
        for task in three {
            task.await.unwrap().unwrap();
        }
        let (parts, _) = e.await.unwrap().expect("E is served after its refusals");
        assert_eq!(info(&parts).refusals(), 2);
        assert_eq!(info(&parts).retried(), None, "the one retry is left");
        let target = only(&client);
        assert_eq!(
            (target.refused(), target.requeued(), target.retries()),
            (2, 2, 0)
        );
        assert_eq!((server.refused(), server.accepted()), (2, 1));
        assert_eq!(*seen.retries.lock().unwrap(), 0);
        // Without refusals the lag wears off, an eighth every probe, and
        // is forgotten.
        tokio::time::sleep(PROBE_AFTER * 40).await;
        assert_eq!(conn_of(&client).release_lag(), None);
    });
}

/// With room under the per-target cap, a refused request does not wait for
/// the connection at its learned limit: a new connection serves it.
#[test]
fn a_refused_request_goes_to_a_new_connection_within_the_cap() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let config = PoolConfig::default().max_connections_per_target(Some(2));
        let Crowded {
            server,
            client,
            start,
            three,
            ..
        } = crowd(config).await;
        let (parts, _) = send(&mut client.clone(), get(URL, 4)).await.unwrap();
        assert_eq!(info(&parts).refusals(), 1);
        assert_ne!(info(&parts).id(), conn_of_first(&client));
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(110),
            "answered 50 ms after its second send at 60 ms, not after a stream ended"
        );
        assert_eq!(server.accepted(), 2);
        for task in three {
            task.await.unwrap().unwrap();
        }
    });
}

/// The oldest HTTP/2 connection's id (ids grow).
fn conn_of_first<C: Connect>(client: &Pool<C>) -> ConnId {
    only(client)
        .http2_connections()
        .iter()
        .map(Http2Snapshot::id)
        .min()
        .expect("a connection")
}

/// A server that keeps refusing (its slots stay busy 1 s after each
/// stream): each refusal leaves the request waiting for the next probe,
/// never a spin, and after 10 refusals it fails, typed as never processed.
/// Then, with nothing more refused, the limit steps back up at each probe
/// interval, one stream at first and twice as many each step after.
#[test]
fn a_request_refused_ten_times_fails_unprocessed_and_the_limit_steps_back_up() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::Respond)
            .max_streams(4)
            .late_release(Duration::from_secs(1));
        let (client, seen) = watched_pool(&server, one_connection());
        for i in 0..4 {
            send(&mut client.clone(), get(URL, i)).await.unwrap();
        }
        // Their ends are too long over to explain a refusal (a server
        // enforcing less than it advertises): refusals lower the limit.
        tokio::time::sleep(MAX_RELEASE_LAG).await;
        let start = Instant::now();
        let error = send(&mut client.clone(), get(URL, 4))
            .await
            .expect_err("refused every time");
        assert_eq!(
            (error.kind(), error.phase(), error.may_have_been_processed()),
            (ErrorKind::Send, Phase::Send, false),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("refused the request 10 times"),
            "{error}"
        );
        // Refused with nothing in flight, the connection carried no stream
        // until each probe: nine waits between ten sends.
        assert_eq!(Instant::now() - start, PROBE_AFTER * 9);
        assert_eq!(server.refused(), 10);
        let refusals: Vec<_> = seen.refused.lock().unwrap().iter().map(|r| r.1).collect();
        assert_eq!(refusals, (1..=10).collect::<Vec<_>>());
        let target = only(&client);
        assert_eq!(
            (target.refused(), target.requeued(), target.retries()),
            (10, 9, 0)
        );
        let mut limits = Vec::new();
        for _ in 0..5 {
            limits.push(conn_of(&client).effective_limit());
            tokio::time::sleep(PROBE_AFTER).await;
        }
        // Back up by one stream, then two, then the advertised four.
        assert_eq!(limits, [0, 1, 3, 4, 4]);
        assert_eq!(server.accepted(), 1);
    });
}

/// Queued again after refusals, a request still ends at its checkout
/// timeout, counted from its first checkout.
#[test]
fn refusals_end_at_the_checkout_timeout() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::Respond)
            .max_streams(4)
            .late_release(Duration::from_secs(1));
        let timeout = Duration::from_millis(35);
        let config = one_connection().checkout_timeout(Some(timeout));
        let (client, _) = watched_pool(&server, config);
        for i in 0..4 {
            send(&mut client.clone(), get(URL, i)).await.unwrap();
        }
        tokio::time::sleep(MAX_RELEASE_LAG).await;
        let start = Instant::now();
        let error = send(&mut client.clone(), get(URL, 4))
            .await
            .expect_err("refused until the timeout");
        assert_eq!(error.kind(), ErrorKind::CheckoutTimeout, "{error:?}");
        assert_eq!(Instant::now() - start, timeout);
        assert_eq!(server.refused(), 4, "sent at 0, 10, 20 and 30 ms");
    });
}

/// The reproduction of grpc-core's behaviour: 16 requests at once, 4 times
/// the server's limit, on one connection; slots counted busy 5 ms after
/// each answer. Every request succeeds; refusals are queued again, not
/// retried, and the pool's counts match the server's.
#[test]
fn a_burst_at_four_times_a_late_releasing_limit_all_succeeds() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::Respond)
            .max_streams(4)
            .respond_after(Duration::from_millis(10))
            .late_release(Duration::from_millis(5));
        let (client, seen) = watched_pool(&server, one_connection());
        send(&mut client.clone(), get(URL, 0)).await.unwrap();
        let results = concurrently(16, |i| {
            let mut client = client.clone();
            async move { send(&mut client, get(URL, 1 + i)).await }
        })
        .await;
        let mut refusals = 0;
        for result in results {
            let (parts, _) = result.expect("every request succeeds");
            refusals += u64::from(info(&parts).refusals());
        }
        let target = only(&client);
        assert!(server.refused() > 0, "the server refused none: no test");
        assert_eq!(target.refused(), server.refused());
        assert_eq!(target.requeued(), refusals);
        assert_eq!(target.requeued(), target.refused());
        assert_eq!(target.retries(), 0);
        assert_eq!(*seen.retries.lock().unwrap(), 0);
        assert!(server.conns()[0].peak_busy <= 4);
        assert_eq!(server.accepted(), 1);
    });
}

/// Request `id` fails on `ENHANCE_YOUR_CALM`, saying so, and is not
/// replayed; returns how long
/// the next request (`id + 1`) then waits, and its response head.
async fn calmed_then_next(client: &Pool<MemoryH2>, id: u64) -> (Duration, http::response::Parts) {
    let error = send(&mut client.clone(), get(URL, id))
        .await
        .expect_err("ENHANCE_YOUR_CALM");
    assert_eq!(
        (error.kind(), error.phase()),
        (ErrorKind::Send, Phase::Send)
    );
    assert!(error.to_string().contains("ENHANCE_YOUR_CALM"), "{error}");
    // The server may have processed it: not replayed.
    assert!(error.may_have_been_processed(), "{error}");
    let start = Instant::now();
    let (parts, _) = send(&mut client.clone(), get(URL, id + 1)).await.unwrap();
    (Instant::now() - start, parts)
}

/// `ENHANCE_YOUR_CALM` on a stream: the request fails saying so (the
/// server may have processed it); the connection takes no new stream and
/// closes; the next connect waits out the back-off, which doubles when the
/// server asks again soon after.
#[test]
fn enhance_your_calm_fails_the_request_and_backs_off_the_next_connect() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::CalmAfter(1));
        let (client, seen) = watched_pool(&server, PoolConfig::default());
        send(&mut client.clone(), get(URL, 0)).await.unwrap();
        // The next request waits for the back-off, then a new connection.
        let (waited, parts) = calmed_then_next(&client, 1).await;
        assert_eq!(waited, CALM_BACKOFF);
        assert!(!info(&parts).reused());
        assert_eq!(server.accepted(), 2);
        assert_eq!(seen.calmed.lock().unwrap()[0].1, CALM_BACKOFF);
        // The calmed connection took no new stream and closed.
        let target = only(&client);
        assert_eq!(target.calm(), 1);
        assert_eq!(target.http2_connections().len(), 1, "{target:?}");
        assert_eq!(server.conns()[0].streams, 2);

        // Asked again within the back-off's span: twice as long.
        let (waited, _) = calmed_then_next(&client, 3).await;
        assert_eq!(waited, CALM_BACKOFF * 2);
        assert_eq!(only(&client).calm(), 2);
        assert_eq!(server.accepted(), 3);
        assert_eq!(seen.calmed.lock().unwrap().len(), 2);
    });
}

/// `ENHANCE_YOUR_CALM` in a GOAWAY: the same back-off, counted once for
/// the connection though both its stream and its end carry it.
#[test]
fn a_goaway_with_enhance_your_calm_backs_off_the_next_connect() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::CalmGoAwayAfter(1));
        let (client, seen) = watched_pool(&server, PoolConfig::default());
        send(&mut client.clone(), get(URL, 0)).await.unwrap();
        let (waited, _) = calmed_then_next(&client, 1).await;
        assert_eq!(waited, CALM_BACKOFF);
        assert_eq!(only(&client).calm(), 1);
        assert_eq!(seen.calmed.lock().unwrap().len(), 1);
        assert_eq!(server.accepted(), 2);
    });
}

/// Without a back-off the pool would connect at once: the memory server
/// lets the tests above see the difference (a control for them).
#[test]
fn a_plain_close_connects_again_at_once() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let server = MemoryH2::new(Behaviour::GoAwayAfterFirstStream);
        let client = memory_pool(&server, PoolConfig::default());
        send(&mut client.clone(), get(URL, 0)).await.unwrap();
        let start = Instant::now();
        send(&mut client.clone(), get(URL, 1)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::ZERO);
        assert_eq!(only(&client).calm(), 0);
    });
}
