//! Configuration values at their bounds and connectors that misbehave:
//! a typed error or a working pool, never a panic or a leaked slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::advance;
use tower::Layer;
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{
    Connect, ConnectError, ErrorKind, Established, PoolConfig, PoolLayer, Target,
};
use tower_reuse_tests::duplex::{DuplexConnector, DuplexIo};
use tower_reuse_tests::server::ServerOptions;
use tower_reuse_tests::{client, get, only, send, settle};

const URL: &str = "http://pool.test/";

/// The in-memory connector, made to misbehave: its first `panics`
/// connects panic, and every connection reports `max_age` as the age at
/// which it must retire.
#[derive(Clone, Debug)]
struct Misbehaving {
    inner: DuplexConnector,
    panics: Arc<AtomicU64>,
    max_age: Option<Duration>,
}

impl Misbehaving {
    fn new(panics: u64, max_age: Option<Duration>) -> Self {
        Misbehaving {
            inner: DuplexConnector::new(ServerOptions::default()),
            panics: Arc::new(AtomicU64::new(panics)),
            max_age,
        }
    }
}

impl Connect for Misbehaving {
    type Io = DuplexIo;
    type Future = Pin<Box<dyn Future<Output = Result<Established<DuplexIo>, ConnectError>> + Send>>;

    fn connect(&self, target: &Target) -> Self::Future {
        let connecting = Connect::connect(&self.inner, target);
        let panics = self.panics.clone();
        let max_age = self.max_age;
        Box::pin(async move {
            let panic_now = panics
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            assert!(!panic_now, "a connector bug");
            let established = connecting.await?;
            Ok(match max_age {
                Some(age) => established.max_age(age),
                None => established,
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_connect_fails_its_request_and_leaks_no_connect_slot() {
    let connector = Misbehaving::new(2, None);
    let mut client = client(
        connector,
        PoolConfig::default()
            .max_connecting_per_target(Some(1))
            .checkout_timeout(Some(Duration::from_secs(5))),
    );
    for id in 0..2 {
        let error = send(&mut client, get(URL, id)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    }
    // Both panics gave their one connect slot back.
    send(&mut client, get(URL, 2)).await.unwrap();
    let snapshot = only(&client);
    assert_eq!(snapshot.connect_errors(), 2, "{snapshot:?}");
    assert_eq!(snapshot.connecting(), 0, "{snapshot:?}");
}

#[tokio::test(start_paused = true)]
async fn an_age_past_any_instant_from_a_connector_is_never() {
    let connector = Misbehaving::new(0, Some(Duration::MAX));
    let mut client = client(
        connector,
        PoolConfig::default()
            .idle_timeout(Some(Duration::from_secs(10)))
            .max_lifetime(Some(PoolConfig::MAX_DURATION)),
    );
    send(&mut client, get(URL, 1)).await.unwrap();
    send(&mut client, get(URL, 2)).await.unwrap();
    assert_eq!(only(&client).opened(), 1);
    // The reaper is alive: the idle connection expires on time.
    advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(only(&client).closed(CloseReason::IdleTimeout), 1);
}

#[test]
fn durations_past_the_bound_are_rejected_naming_the_field() {
    let huge = Duration::from_secs(9_223_372_036_854_775_807);
    let err = PoolLayer::<http_body_util::Full<bytes::Bytes>>::new(
        PoolConfig::default().max_lifetime(Some(huge)),
    )
    .unwrap_err();
    assert_eq!(err.field(), "max_lifetime");
    let err = PoolLayer::<http_body_util::Full<bytes::Bytes>>::new(
        PoolConfig::default().idle_timeout(Some(huge)),
    )
    .unwrap_err();
    assert_eq!(err.field(), "idle_timeout");
}

#[tokio::test]
async fn requests_in_flight_past_a_semaphores_count_are_rejected_not_a_panic() {
    let err = PoolLayer::<http_body_util::Full<bytes::Bytes>>::new(
        PoolConfig::default().max_requests_in_flight(Some(usize::MAX)),
    )
    .unwrap_err();
    assert_eq!(err.field(), "max_requests_in_flight");
    // The largest accepted value builds a pool.
    let layer = PoolLayer::<http_body_util::Full<bytes::Bytes>>::new(
        PoolConfig::default().max_requests_in_flight(Some(PoolConfig::MAX_REQUESTS_IN_FLIGHT)),
    )
    .unwrap();
    let _pool = layer.layer(DuplexConnector::new(ServerOptions::default()));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_connect_under_the_kill_switch_frees_its_slot_for_the_next_request() {
    let client = client(
        Misbehaving::new(1, None),
        PoolConfig::default()
            .reuse(false)
            .max_connections_per_target(Some(1))
            .checkout_timeout(Some(Duration::from_secs(5))),
    );
    let mut first = client.clone();
    let mut second = client.clone();
    // The first takes the one slot and panics; the second waits behind it.
    let (first, second) = tokio::join!(
        send(&mut first, get(URL, 0)),
        send(&mut second, get(URL, 1))
    );
    let error = first.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Connect, "{error}");
    second.unwrap();
    let snapshot = only(&client);
    assert_eq!(snapshot.connecting(), 0, "{snapshot:?}");
    assert_eq!(snapshot.closed(CloseReason::KillSwitch), 1, "{snapshot:?}");
}
