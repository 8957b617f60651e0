//! The affinity layer's ejection on paused time, over in-memory servers:
//! an endpoint whose connects are refused is ejected after consecutive
//! failures, stays out for its back-off, fails its probe and is ejected for
//! twice as long, then passes a probe and gets its keys back. No request
//! fails meanwhile: each one refused is retried on its key's next endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_reuse_affinity::events::{AffinityEvents, Ejected, Returned};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityKey, AffinityLayer};
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
use tower_reuse_tests::duplex::{DuplexConnector, DuplexIo};
use tower_reuse_tests::server::ServerOptions;
use tower_reuse_tests::{REAL_TIME_BOUND, on_paused_time_within, settle};

const SERVICE: &str = "http://svc.test:8080";

/// In-memory servers by endpoint address.
#[derive(Clone)]
struct Endpoints(Arc<HashMap<String, DuplexConnector>>);

impl Service<Uri> for Endpoints {
    type Response = DuplexIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<DuplexIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        match self.0.get(&authority) {
            Some(server) => server.clone().call(uri),
            None => Box::pin(async { Err(std::io::ErrorKind::ConnectionRefused.into()) }),
        }
    }
}

#[derive(Default)]
struct Events {
    ejected: Mutex<Vec<(Duration, u32)>>,
    returned: Mutex<usize>,
}

impl AffinityEvents for Events {
    fn on_ejected(&self, e: &Ejected<'_>) {
        self.ejected.lock().unwrap().push((e.duration, e.times));
    }
    fn on_returned(&self, _: &Returned<'_>) {
        *self.returned.lock().unwrap() += 1;
    }
}

/// The service's three endpoints.
const ADDRS: [&str; 3] = ["127.0.0.2:80", "127.0.0.3:80", "127.0.0.4:80"];

/// An in-memory server for each endpoint, by address.
fn three_servers() -> HashMap<String, DuplexConnector> {
    ADDRS
        .iter()
        .map(|a| {
            (
                a.to_string(),
                DuplexConnector::new(ServerOptions::default()),
            )
        })
        .collect()
}

/// The affinity layer with `config` over a pool reaching `servers`, the
/// service's endpoints being theirs.
fn client(
    config: AffinityConfig,
    servers: &HashMap<String, DuplexConnector>,
    events: Arc<Events>,
) -> Affinity<Pool<Endpoints>> {
    let layer = AffinityLayer::new(config).unwrap().events(events);
    layer
        .endpoints()
        .set(SERVICE, ADDRS.iter().map(|a| a.parse().unwrap()))
        .unwrap();
    let pool = PoolLayer::new(PoolConfig::default())
        .unwrap()
        .layer(Endpoints(Arc::new(servers.clone())));
    layer.layer(pool)
}

async fn get(client: &mut Affinity<Pool<Endpoints>>, key: u64) {
    let req = http::Request::get(format!("{SERVICE}/"))
        .header("x-user-id", key)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .expect("no request fails: refused ones go to the next endpoint");
    response.into_body().collect().await.unwrap();
}

#[test]
fn ejection_back_off_probation_and_return() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let servers = three_servers();
        let down = servers[ADDRS[2]].clone();
        down.refuse.store(true, Ordering::SeqCst);
        let events = Arc::new(Events::default());
        let mut client = client(
            AffinityConfig::default()
                .key(AffinityKey::header("x-user-id"))
                .warm_aware(false)
                .eject_after(3)
                .ejection_time(Duration::from_secs(30), Duration::from_secs(300)),
            &servers,
            events.clone(),
        );
        let keys = 0..60u64;
        for key in keys.clone() {
            get(&mut client, key).await;
        }
        let ejected = events.ejected.lock().unwrap().clone();
        assert_eq!(ejected.len(), 1, "{ejected:?}");
        let (first, times) = ejected[0];
        assert_eq!(times, 1);
        assert!(first <= Duration::from_secs(30) && first >= Duration::from_secs(27));
        let attempts = down.attempts.load(Ordering::SeqCst);
        assert_eq!(attempts, 3, "nothing more tried once ejected");

        // Out for its back-off: its keys go elsewhere, no connect tried.
        tokio::time::advance(Duration::from_secs(26)).await;
        for key in keys.clone() {
            get(&mut client, key).await;
        }
        assert_eq!(down.attempts.load(Ordering::SeqCst), 3);

        // Back on probation, still down: one probe, which fails; ejected
        // again for twice as long.
        tokio::time::advance(Duration::from_secs(5)).await;
        for key in keys.clone() {
            get(&mut client, key).await;
        }
        assert_eq!(down.attempts.load(Ordering::SeqCst), 4, "one probe");
        let ejected = events.ejected.lock().unwrap().clone();
        assert_eq!(ejected.len(), 2);
        assert_eq!(ejected[1].1, 2);
        assert!(ejected[1].0 >= Duration::from_secs(54) && ejected[1].0 <= Duration::from_secs(60));

        // It comes back up; after its second back-off the probe succeeds
        // and its keys return to it.
        down.refuse.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(61)).await;
        settle().await;
        let served = down.stats.requests();
        for key in keys.clone() {
            get(&mut client, key).await;
        }
        assert_eq!(*events.returned.lock().unwrap(), 1);
        let back = down.stats.requests() - served;
        assert!(back >= 10, "about a third of 60 keys came home: {back}");
        let snapshot = client.snapshot();
        let endpoint = snapshot.services[0]
            .endpoint(ADDRS[2].parse().unwrap())
            .unwrap()
            .clone();
        assert_eq!(endpoint.ejected_until, None);
        assert_eq!(endpoint.ejections, 2);
        assert_eq!(endpoint.failures, 4);
    });
}

/// With warm detours on, a dead endpoint's keys go to their next endpoint
/// before any request of theirs fails there; the connects ahead the layer
/// asks for it fail, each counted once, and it is ejected all the same.
#[test]
fn a_dead_endpoint_kept_cold_by_detours_is_ejected_by_its_failed_warm_ups() {
    on_paused_time_within(REAL_TIME_BOUND, || async {
        let servers = three_servers();
        let dead = servers[ADDRS[2]].clone();
        let events = Arc::new(Events::default());
        let mut client = client(
            AffinityConfig::default()
                .key(AffinityKey::header("x-user-id"))
                .eject_after(3),
            &servers,
            events.clone(),
        );
        // Every endpoint warm, then the third one dies: its connections
        // close and its connects are refused.
        for key in 0..30u64 {
            get(&mut client, key).await;
        }
        assert!(dead.stats.requests() > 0);
        dead.refuse.store(true, Ordering::SeqCst);
        dead.close_open_connections();
        let mut rounds = 0;
        while events.ejected.lock().unwrap().is_empty() {
            rounds += 1;
            assert!(rounds <= 60, "ejected within a minute of detours");
            for key in 0..30u64 {
                get(&mut client, key).await;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        let snapshot = client.snapshot();
        let endpoint = snapshot.services[0]
            .endpoint(ADDRS[2].parse().unwrap())
            .unwrap()
            .clone();
        assert_eq!(endpoint.ejections, 1);
        // Each failed connect counted once: the connects tried, not the
        // requests that saw them.
        assert_eq!(endpoint.failures, 3, "{endpoint:?}");
    });
}
