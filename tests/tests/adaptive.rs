//! The adaptive controller over a real pool and an in-process server, on
//! paused time: it learns a server's idle timeout and request limit from
//! the closes it sees (no header says them), and keeps connections warm
//! ahead of periodic bursts. Each test runs the same load with the
//! controller off too, which is what shows the controller did it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_adaptive::{Adaptive, AdaptiveConfig, AdaptiveLayer, Mode};
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityLayer};
use tower_reuse_pool::events::{
    CheckedOut, CloseReason, Closed, ConnectReason, ConnectStarted, PoolEvents, Stale,
};
use tower_reuse_pool::{Pool, PoolConfig, PoolLayer, Target};
use tower_reuse_tests::duplex::DuplexConnector;
use tower_reuse_tests::server::ServerOptions;
use tower_reuse_tests::{get, settle};

const URL: &str = "http://adaptive.test/";

/// What the pool did, in order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Connect(ConnectReason),
    Out { wait: Duration },
    Closed(CloseReason),
    Stale,
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl PoolEvents for Recorder {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.0.lock().unwrap().push(Seen::Connect(event.reason()));
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Out { wait: event.wait() });
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.0.lock().unwrap().push(Seen::Closed(event.reason()));
    }

    fn on_stale(&self, _event: &Stale<'_>) {
        self.0.lock().unwrap().push(Seen::Stale);
    }
}

type Client = Adaptive<Pool<DuplexConnector>>;

/// The controller (in `mode`) over a pool with `config`, to an in-process
/// server with `options`.
fn client(
    options: ServerOptions,
    config: PoolConfig,
    mode: Mode,
) -> (Client, Arc<Recorder>, AdaptiveLayer) {
    let adaptive = AdaptiveLayer::new(AdaptiveConfig::default().mode(mode)).unwrap();
    let recorder = Arc::new(Recorder::default());
    let pool = PoolLayer::<Full<Bytes>>::new(config)
        .unwrap()
        .events((SharedRecorder(recorder.clone()), adaptive.pool_events()));
    let client = adaptive.layer(pool.layer(DuplexConnector::new(options)));
    (client, recorder, adaptive)
}

#[derive(Debug)]
struct SharedRecorder(Arc<Recorder>);

impl PoolEvents for SharedRecorder {
    fn on_connect_start(&self, event: &ConnectStarted<'_>) {
        self.0.on_connect_start(event);
    }

    fn on_checkout(&self, event: &CheckedOut<'_>) {
        self.0.on_checkout(event);
    }

    fn on_close(&self, event: &Closed<'_>) {
        self.0.on_close(event);
    }

    fn on_stale(&self, event: &Stale<'_>) {
        self.0.on_stale(event);
    }
}

async fn one(client: &mut Client, id: u64) {
    let response = client
        .ready()
        .await
        .unwrap()
        .call(get(URL, id))
        .await
        .unwrap();
    let (_, body) = response.into_parts();
    http_body_util::BodyExt::collect(body).await.unwrap();
}

type Routed = Adaptive<Affinity<Pool<DuplexConnector>>>;

/// The controller (in `mode`) over the affinity layer, which routes
/// `URL`'s service to `endpoints`, over a pool to an in-process server
/// with `options`.
fn routed(
    options: ServerOptions,
    mode: Mode,
    endpoints: &[&str],
) -> (Routed, Arc<Recorder>, AdaptiveLayer, AffinityLayer) {
    let adaptive = AdaptiveLayer::new(AdaptiveConfig::default().mode(mode)).unwrap();
    let recorder = Arc::new(Recorder::default());
    let pool = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
        .unwrap()
        .events((SharedRecorder(recorder.clone()), adaptive.pool_events()));
    let affinity = AffinityLayer::new(AffinityConfig::default()).unwrap();
    let addrs = endpoints.iter().map(|a| a.parse().unwrap());
    affinity
        .endpoints()
        .set("http://adaptive.test", addrs)
        .unwrap();
    let connector = DuplexConnector::new(options);
    let client = adaptive.layer(affinity.layer(pool.layer(connector)));
    (client, recorder, adaptive, affinity)
}

fn target() -> Target {
    Target::from_uri(&URL.parse().unwrap(), None).unwrap()
}

/// Gaps around the server's 1 s idle timeout, some exactly at it.
const GAPS_MS: [u64; 8] = [500, 1200, 1000, 800, 1500, 1000, 950, 1100];

/// The server closes connections idle 1 s and says nothing of it. Once the
/// controller has seen it close one, the pool closes first: no request
/// meets a connection the server closed, and the server closes none
/// again. With the controller off the server keeps closing them, and a
/// request sent as it closes meets the close.
#[tokio::test(start_paused = true)]
async fn learns_a_servers_idle_close_and_closes_first() {
    for mode in [Mode::On, Mode::Off] {
        let options = ServerOptions {
            idle_close: Some(Duration::from_secs(1)),
            ..ServerOptions::default()
        };
        let (mut client, recorder, adaptive) = client(options, PoolConfig::default(), mode);
        // Until the server's first close is seen (the controller's tick
        // follows within a second).
        one(&mut client, 0).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let learning = recorder.take();
        assert!(learning.contains(&Seen::Closed(CloseReason::ServerClosed)));
        for (i, gap) in GAPS_MS.iter().cycle().take(40).enumerate() {
            one(&mut client, i as u64 + 1).await;
            tokio::time::sleep(Duration::from_millis(*gap)).await;
        }
        let after = recorder.take();
        let server_closes = after
            .iter()
            .filter(|s| **s == Seen::Closed(CloseReason::ServerClosed))
            .count();
        let stale = after.iter().filter(|s| **s == Seen::Stale).count();
        match mode {
            Mode::On => {
                assert_eq!((server_closes, stale), (0, 0), "{after:?}");
                let estimates = adaptive.handle().snapshot();
                let target = estimates.target(&target()).expect("tracked");
                assert!(target.server_idle_limit >= Some(Duration::from_secs(1)));
                let idle = target.idle_timeout.flatten().expect("set");
                assert!(idle <= Duration::from_millis(900), "{idle:?}");
            }
            _ => assert!(server_closes + stale >= 10, "{after:?}"),
        }
    }
}

/// The server closes every connection after its 10th request (with
/// `Connection: close`). Once three closes agree, the controller sets the
/// limit, and the pool opens each replacement during a connection's last
/// request (a connect takes 40 ms, a response 50): no later request waits
/// for a connect. Off, every 10th request waits for one.
#[tokio::test(start_paused = true)]
async fn learns_a_request_limit_and_replaces_connections_ahead() {
    for mode in [Mode::On, Mode::Off] {
        let options = ServerOptions {
            max_requests_per_conn: Some(10),
            delay: Some(Duration::from_millis(50)),
            ..ServerOptions::default()
        };
        let connector_delay = Duration::from_millis(40);
        let adaptive = AdaptiveLayer::new(AdaptiveConfig::default().mode(mode)).unwrap();
        let recorder = Arc::new(Recorder::default());
        let pool = PoolLayer::<Full<Bytes>>::new(PoolConfig::default())
            .unwrap()
            .events((SharedRecorder(recorder.clone()), adaptive.pool_events()));
        let connector = DuplexConnector::new(options).with_connect_delay(connector_delay);
        let mut client = adaptive.layer(pool.layer(connector));
        for id in 0..40 {
            one(&mut client, id).await;
        }
        // The controller's tick; then the first request of a connection.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        one(&mut client, 40).await;
        recorder.take();
        for id in 41..101 {
            one(&mut client, id).await;
        }
        let after = recorder.take();
        let waited = after
            .iter()
            .filter(|s| matches!(s, Seen::Out { wait } if *wait >= connector_delay))
            .count();
        let demand = after
            .iter()
            .filter(|s| **s == Seen::Connect(ConnectReason::Demand))
            .count();
        match mode {
            Mode::On => {
                assert_eq!((waited, demand), (0, 0), "{after:?}");
                let ahead = after
                    .iter()
                    .filter(|s| **s == Seen::Connect(ConnectReason::Replacement))
                    .count();
                assert_eq!(ahead, 6, "{after:?}");
                let estimates = adaptive.handle().snapshot();
                assert_eq!(estimates.target(&target()).unwrap().request_limit, Some(10));
            }
            _ => assert_eq!((waited, demand), (6, 6), "{after:?}"),
        }
    }
}

/// Bursts of 16 every 3 s to a server that closes connections idle 2 s:
/// once the period is seen, the controller keeps 16 connections warm
/// (the pool replaces those the server closes), and the later bursts wait
/// for no connect. Off, every burst opens its connections anew.
#[tokio::test(start_paused = true)]
async fn keeps_connections_warm_ahead_of_periodic_bursts() {
    for mode in [Mode::On, Mode::Off] {
        let options = ServerOptions {
            idle_close: Some(Duration::from_secs(2)),
            delay: Some(Duration::from_millis(5)),
            ..ServerOptions::default()
        };
        let (client, recorder, _adaptive) = client(options, PoolConfig::default(), mode);
        let mut demand_per_burst = Vec::new();
        for burst in 0..10u64 {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let mut client = client.clone();
                    tokio::spawn(async move { one(&mut client, burst * 100 + i).await })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let seen = recorder.take();
            demand_per_burst.push(
                seen.iter()
                    .filter(|s| **s == Seen::Connect(ConnectReason::Demand))
                    .count(),
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        match mode {
            // Found after the fourth burst's start (three equal intervals).
            Mode::On => assert_eq!(demand_per_burst[6..], [0, 0, 0, 0], "{demand_per_burst:?}"),
            _ => assert!(
                demand_per_burst.iter().all(|&n| n == 16),
                "{demand_per_burst:?}"
            ),
        }
    }
}

/// The layer adds no queue: the pool's backpressure comes through, a
/// clone of a ready service is not ready, and a request given up midway
/// leaves nothing counted in flight.
#[tokio::test(start_paused = true)]
async fn backpressure_passes_through_and_a_cancelled_request_is_not_left_in_flight() {
    let options = ServerOptions {
        delay: Some(Duration::from_secs(5)),
        ..ServerOptions::default()
    };
    let config = PoolConfig::default().max_requests_in_flight(Some(1));
    let (mut client, _recorder, adaptive) = client(options, config, Mode::On);
    let slow = client.ready().await.unwrap().call(get(URL, 1));
    let mut blocked = client.clone();
    let mut waiting = tokio::spawn(async move {
        blocked.ready().await.unwrap();
    });
    settle().await;
    assert!(!waiting.is_finished(), "ready past the pool's limit");
    let in_flight = || {
        adaptive
            .handle()
            .snapshot()
            .target(&target())
            .map_or(0, |t| t.in_flight)
    };
    // Give the request time to be on its connection, then give it up.
    let slow = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(100)).await;
    adaptive.handle().tick();
    assert_eq!(in_flight(), 1);
    slow.abort();
    let _ = slow.await;
    settle().await;
    assert!(
        waiting.is_finished(),
        "not woken when the request was given up"
    );
    (&mut waiting).await.unwrap();
    adaptive.handle().tick();
    assert_eq!(in_flight(), 0);

    let mut ready = client.clone();
    std::future::poll_fn(|cx| ready.poll_ready(cx))
        .await
        .unwrap();
    let mut clone = ready.clone();
    assert!(
        clone.call(get(URL, 2)).await.is_err(),
        "a clone took the readiness"
    );
}

/// Under the kill switch each request has a connection of its own: its
/// end still reaches the controller, which counts nothing left in flight.
#[tokio::test(start_paused = true)]
async fn requests_under_the_kill_switch_end_for_the_controller_too() {
    let config = PoolConfig::default().reuse(false);
    let (mut client, _recorder, adaptive) = client(ServerOptions::default(), config, Mode::On);
    for id in 0..5 {
        one(&mut client, id).await;
    }
    settle().await;
    adaptive.handle().tick();
    let estimates = adaptive.handle().snapshot();
    assert_eq!(estimates.target(&target()).expect("tracked").in_flight, 0);
}

/// A server error counts against the target's success rate, as an error
/// does; a 404 does not.
#[tokio::test(start_paused = true)]
async fn server_errors_count_against_the_success_rate() {
    for (status, rate) in [(503, 0.0), (404, 1.0)] {
        let options = ServerOptions {
            status: Some(status),
            ..ServerOptions::default()
        };
        let (mut client, _recorder, adaptive) = client(options, PoolConfig::default(), Mode::On);
        for id in 0..4 {
            one(&mut client, id).await;
        }
        adaptive.handle().tick();
        let estimates = adaptive.handle().snapshot();
        let target = estimates.target(&target()).expect("tracked");
        assert_eq!(target.success_rate, Some(rate), "status {status}");
    }
}

/// Over a router (the affinity layer), each response's connection facts
/// go to the endpoint that served it: the controller tunes the endpoints'
/// targets, which hold the connections, and leaves the service's alone.
#[tokio::test(start_paused = true)]
async fn over_a_router_each_endpoint_gets_its_connections_facts() {
    let endpoints = ["127.0.0.2:80", "127.0.0.3:80"];
    let (mut client, _, adaptive, _) = routed(ServerOptions::default(), Mode::On, &endpoints);
    for id in 0..40 {
        let response = client.ready().await.unwrap().call(get(URL, id));
        let body = response.await.unwrap().into_body();
        http_body_util::BodyExt::collect(body).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    adaptive.handle().tick();
    let targets = adaptive.handle().snapshot().targets;
    let served: Vec<_> = targets
        .iter()
        .map(|t| {
            (
                t.target.endpoint().map(|e| e.addr().to_string()),
                t.reuse_ratio,
            )
        })
        .collect();
    assert_eq!(served.len(), 2, "{served:?}");
    for (endpoint, reuse) in served {
        assert!(
            endpoint.is_some_and(|e| endpoints.contains(&e.as_str())),
            "{targets:?}"
        );
        assert!(reuse.is_some_and(|r| r > 0.5), "{targets:?}");
    }
}

/// A connection stays busy until its response's body is read, past the
/// request's response head (when the layer stops counting it in flight):
/// the idle cap counts the connections the pool has serving requests, so
/// bodies read late never make it close connections the next round needs.
#[tokio::test(start_paused = true)]
async fn bodies_read_late_keep_their_connections() {
    for mode in [Mode::Off, Mode::On] {
        let options = ServerOptions::default();
        let (mut client, recorder, _adaptive) = client(options, PoolConfig::default(), mode);
        let mut late = 0;
        for round in 0..16 {
            // Eight responses one after another, their bodies held.
            let mut held = Vec::new();
            for id in 0..8 {
                let call = client.ready().await.unwrap().call(get(URL, id));
                held.push(call.await.unwrap());
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            for response in held {
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let seen = recorder.take();
            let connects = seen
                .iter()
                .filter(|s| matches!(s, Seen::Connect(_)))
                .count();
            if round >= 8 {
                late += connects;
            }
        }
        assert_eq!(late, 0, "{mode:?}: connects after warm-up");
    }
}

/// Over a router the endpoints' requests are counted in flight on their
/// service: the endpoints get no idle cap of their own (one from a peak
/// of zero would close the connections every burst needs), and the
/// controller makes bursts open no more connections than without it.
#[tokio::test(start_paused = true)]
async fn over_a_router_bursts_keep_their_connections() {
    for mode in [Mode::Off, Mode::On] {
        let options = ServerOptions {
            delay: Some(Duration::from_millis(5)),
            ..ServerOptions::default()
        };
        let endpoints = ["127.0.0.2:80", "127.0.0.3:80"];
        let (client, recorder, adaptive, _) = routed(options, mode, &endpoints);
        let mut late = 0;
        for round in 0..40 {
            let burst: Vec<_> = (0..16)
                .map(|id| {
                    let mut client = client.clone();
                    tokio::spawn(async move {
                        let call = client.ready().await.unwrap().call(get(URL, id));
                        let body = call.await.unwrap().into_body();
                        http_body_util::BodyExt::collect(body).await.unwrap();
                    })
                })
                .collect();
            for request in burst {
                request.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let seen = recorder.take();
            if round >= 20 {
                late += seen
                    .iter()
                    .filter(|s| matches!(s, Seen::Connect(_)))
                    .count();
            }
        }
        assert_eq!(late, 0, "{mode:?}: connects after warm-up");
        let capped: Vec<_> = adaptive
            .handle()
            .snapshot()
            .targets
            .into_iter()
            .filter(|t| t.max_idle.is_some())
            .collect();
        assert!(capped.is_empty(), "{capped:?}");
    }
}

/// A service whose router stops routing (its endpoints forgotten) is the
/// pool's target again: the controller tunes it and shows it.
#[tokio::test(start_paused = true)]
async fn a_service_no_longer_routed_is_tuned_again() {
    let endpoints = ["127.0.0.2:80"];
    let (mut client, _, adaptive, affinity) =
        routed(ServerOptions::default(), Mode::On, &endpoints);
    let mut send = async |n: u64| {
        for id in 0..n {
            let call = client.ready().await.unwrap().call(get(URL, id));
            let body = call.await.unwrap().into_body();
            http_body_util::BodyExt::collect(body).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        adaptive.handle().tick();
    };
    send(20).await;
    let shown = |adaptive: &AdaptiveLayer| {
        adaptive
            .handle()
            .snapshot()
            .targets
            .iter()
            .map(|t| t.target.endpoint().is_some())
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&adaptive), [true], "the endpoint's target only");
    affinity.endpoints().forget("http://adaptive.test").unwrap();
    send(20).await;
    assert!(
        shown(&adaptive).contains(&false),
        "the service's own target, once requests go to it"
    );
}
