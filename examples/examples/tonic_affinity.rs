//! A gRPC client over `AffinityLayer` over the pool: three tonic servers
//! (tonic-health's service) on 127.0.0.2, .3 and .4 are the endpoints of
//! one logical service, `http://grpc.internal:50051`. Each call carries its
//! tenant in the `x-tenant` metadata header, the affinity key, and each
//! server counts the calls of each tenant it sees: every tenant's calls
//! land on one server. Then the server with the most tenants stops; the
//! calls go on, on the other two, with none failed, each of its tenants
//! again on one server.
//!
//! The pool speaks HTTP/2 by prior knowledge (h2c) to each endpoint's
//! address, while `:authority` stays `grpc.internal:50051`: no name is
//! resolved.
//!
//! What keeps the calls whole is warm-awareness: once the pool has seen
//! the stopped server's GOAWAY and close, its tenants' first choice has no
//! connection, and their calls go one step down their order to an endpoint
//! that has one (a warm detour, counted in the layer's snapshot; directly,
//! once the layer ejects the stopped server). The layer's retry on another
//! endpoint needs a body it can make again, and every gRPC call has a
//! body: with `BufferBodyLayer` above the affinity layer (as the
//! `tonic_health` example puts it above the pool), a call caught by a
//! server's stop is sent once more to its tenant's next endpoint. This
//! example leaves it out, to show that detours alone keep the calls whole.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example tonic_affinity
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_layer::Layer;
use tower_reuse_affinity::{Affinity, AffinityConfig, AffinityKey, AffinityLayer};
use tower_reuse_pool::{Endpoint, Pool, PoolConfig, PoolControl, PoolLayer, Target};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The logical service the client calls.
const SERVICE: &str = "http://grpc.internal:50051";

/// The metadata header that carries the affinity key.
const TENANT: &str = "x-tenant";

/// Tenants, and calls per tenant before and after the stop.
const TENANTS: usize = 24;
const ROUNDS: usize = 3;

/// The pool under tonic: hyper-util's TCP connector, tonic's request body
/// as it is.
type GrpcPool = Pool<HttpConnector, tonic::body::Body>;

/// tonic's transport: the affinity layer over the pool.
type Transport = Affinity<GrpcPool>;

/// Calls per tenant, as one server counted them.
type Calls = BTreeMap<String, u64>;

/// One tonic server: tonic-health's service, counting each tenant's calls.
struct GrpcServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Calls>>,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Starts on `ip`, any port.
    async fn start(ip: &str) -> Result<Self, BoxError> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(Mutex::new(Calls::new()));
        let counted = calls.clone();
        let count = move |call: tonic::Request<()>| {
            let tenant = call
                .metadata()
                .get(TENANT)
                .and_then(|tenant| tenant.to_str().ok())
                .unwrap_or("(none)")
                .to_owned();
            *lock(&counted).entry(tenant).or_default() += 1;
            Ok(call)
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(
            Server::builder()
                .layer(InterceptorLayer::new(count))
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(GrpcServer {
            addr,
            calls,
            stop: Some(stop),
            serving,
        })
    }

    fn calls(&self) -> Calls {
        lock(&self.calls).clone()
    }

    /// Stops gracefully: HTTP/2 GOAWAY to each client, then its
    /// connections and its listener close.
    async fn stop(&mut self) -> Result<(), BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.serving).await??;
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The client: `AffinityLayer`, keyed by the `x-tenant` header, over the
/// pool speaking h2c; `SERVICE`'s endpoints are `endpoints`.
fn client(endpoints: &[SocketAddr]) -> Result<(Transport, PoolControl), BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool: GrpcPool =
        PoolLayer::new(PoolConfig::default().http2_prior_knowledge(true))?.layer(connector);
    let control = pool.control();
    let affinity = AffinityLayer::new(AffinityConfig::default().key(AffinityKey::header(TENANT)))?;
    affinity
        .endpoints()
        .set(SERVICE, endpoints.iter().copied())?;
    Ok((affinity.layer(pool), control))
}

/// What one phase of calls saw.
#[derive(Debug)]
struct Phase {
    calls: usize,
    failed: usize,
    /// Per server (by address), the calls of each tenant it served.
    served: BTreeMap<SocketAddr, Calls>,
}

impl Phase {
    /// The servers each tenant's calls reached.
    fn servers_of(&self) -> BTreeMap<&str, BTreeSet<SocketAddr>> {
        let mut of: BTreeMap<&str, BTreeSet<SocketAddr>> = BTreeMap::new();
        for (addr, calls) in &self.served {
            for tenant in calls.keys() {
                of.entry(tenant).or_default().insert(*addr);
            }
        }
        of
    }

    /// Each tenant's one server; an error naming a tenant seen by several.
    fn homes(&self) -> Result<BTreeMap<String, SocketAddr>, BoxError> {
        let mut homes = BTreeMap::new();
        for (tenant, servers) in self.servers_of() {
            let [home] = servers.iter().copied().collect::<Vec<_>>()[..] else {
                return Err(format!("{tenant}'s calls reached {servers:?}").into());
            };
            homes.insert(tenant.to_owned(), home);
        }
        Ok(homes)
    }
}

/// `ROUNDS` calls of each tenant, one at a time; what each server counted
/// meanwhile.
async fn calls(client: &mut HealthClient<Transport>, servers: &[GrpcServer]) -> Phase {
    let before: Vec<Calls> = servers.iter().map(GrpcServer::calls).collect();
    let mut failed = 0;
    for _ in 0..ROUNDS {
        for tenant in 0..TENANTS {
            let mut call = tonic::Request::new(HealthCheckRequest::default());
            let tenant = format!("tenant-{tenant:02}");
            call.metadata_mut()
                .insert(TENANT, tenant.parse().expect("ascii"));
            match client.check(call).await {
                Ok(answer) if answer.get_ref().status() == ServingStatus::Serving => {}
                _ => failed += 1,
            }
        }
    }
    let served = servers
        .iter()
        .zip(before)
        .map(|(server, before)| {
            let mut during = server.calls();
            for (tenant, n) in &mut during {
                *n -= before.get(tenant).copied().unwrap_or(0);
            }
            during.retain(|_, n| *n > 0);
            (server.addr, during)
        })
        .collect();
    Phase {
        calls: ROUNDS * TENANTS,
        failed,
        served,
    }
}

/// What a run saw: the calls before and after one server stopped.
#[derive(Debug)]
struct Outcome {
    endpoints: Vec<SocketAddr>,
    before: Phase,
    stopped: SocketAddr,
    after: Phase,
    /// Calls that went one step down their tenant's order because its
    /// first choice had no free connection (after the stop: the stopped
    /// server).
    warm_detours: u64,
}

/// Starts the three servers, calls, stops the busiest, calls again; an
/// error if a call failed or a tenant's calls were not on one server.
async fn run() -> Result<Outcome, BoxError> {
    let mut servers = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        servers.push(GrpcServer::start(ip).await?);
    }
    let endpoints: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let (transport, control) = client(&endpoints)?;
    let layer_view = transport.clone();
    // A connection to each endpoint first, as a service's warm-up would
    // open them: a tenant whose endpoint had none yet would take a warm
    // detour to the next one of its order.
    for &addr in &endpoints {
        control.warm_up(&Target::from_request(&to(addr)?)?);
    }
    until("every endpoint warm", || {
        endpoints
            .iter()
            .all(|&addr| to(addr).is_ok_and(|req| control.is_warm(&req)))
    })
    .await?;
    // tonic sends origin-form URIs: the origin is the logical service.
    let mut client = HealthClient::with_origin(transport, Uri::from_static(SERVICE));

    let before = calls(&mut client, &servers).await;
    let homes = before.homes()?;
    if before.failed > 0 || homes.len() != TENANTS {
        return Err(format!("before the stop: {before:?}").into());
    }

    // The server with the most tenants stops. Once the pool has seen it go
    // (its GOAWAY, then its connection's close), its tenants' first choice
    // has no connection and their calls take the next endpoint of their
    // order, which has one. A call sent in the instant before would find
    // the connection closing and the connect refused: the layer does not
    // keep a gRPC call's body to send it again elsewhere.
    let busiest = (0..servers.len())
        .max_by_key(|&i| before.served[&servers[i].addr].len())
        .expect("three servers");
    let stopped = servers[busiest].addr;
    servers[busiest].stop().await?;
    let probe = to(stopped)?;
    until("the pool sees the server stop", || !control.is_warm(&probe)).await?;

    let after = calls(&mut client, &servers).await;
    let moved = after.homes()?;
    if after.failed > 0 || moved.len() != TENANTS {
        return Err(format!("after the stop: {after:?}").into());
    }
    for (tenant, home) in &homes {
        let now = moved[tenant];
        if now == stopped || (*home != stopped && now != *home) {
            return Err(format!("{tenant} went from {home} to {now}").into());
        }
    }
    let snapshot = layer_view.snapshot();
    let warm_detours = snapshot
        .service(SERVICE)
        .map(|s| s.endpoints.iter().map(|e| e.warm_detours_to).sum())
        .unwrap_or(0);
    Ok(Outcome {
        endpoints,
        before,
        stopped,
        after,
        warm_detours,
    })
}

/// A request to the service, for its endpoint at `addr`.
fn to(addr: SocketAddr) -> Result<http::Request<()>, http::Error> {
    http::Request::get(SERVICE)
        .extension(Endpoint::new(addr))
        .body(())
}

/// Waits until `done`, for 5 seconds at most.
async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), BoxError> {
    for _ in 0..1000 {
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("not done within 5 s: {what}").into())
}

fn print_phase(title: &str, phase: &Phase, stopped: Option<SocketAddr>) {
    println!("{title}: {} calls, {} failed", phase.calls, phase.failed);
    for (addr, calls) in &phase.served {
        if Some(*addr) == stopped {
            println!("  {addr:<16} stopped");
            continue;
        }
        let tenants: Vec<&str> = calls.keys().map(String::as_str).collect();
        println!(
            "  {addr:<16} {:>3} calls, {:>2} tenants: {}",
            calls.values().sum::<u64>(),
            tenants.len(),
            tenants.join(" ")
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let outcome = run().await?;
    println!("service {SERVICE}, endpoints {:?}", outcome.endpoints);
    println!("calls keyed by the {TENANT} metadata header\n");
    print_phase("before the stop", &outcome.before, None);
    println!("\nstopped {}\n", outcome.stopped);
    print_phase("after the stop", &outcome.after, Some(outcome.stopped));
    println!(
        "\nevery tenant's calls on one server, before and after; \
         tenants of the stopped server moved, the others stayed; \
         {} warm detours",
        outcome.warm_detours
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tenants_stick_to_one_server_and_survive_a_server_stopping() {
        // `run` fails on a failed call or a tenant on two servers.
        let outcome = run().await.unwrap();
        assert_eq!((outcome.before.failed, outcome.after.failed), (0, 0));
        let moved: Vec<&String> = outcome.before.served[&outcome.stopped].keys().collect();
        assert!(!moved.is_empty());
        assert!(outcome.after.served[&outcome.stopped].is_empty());
        // The moved tenants' calls went one step down their order: by warm
        // detours (and directly, once the stopped server is ejected, if
        // the layer ejects it within the run); no other call detoured.
        let moved_calls = (moved.len() * ROUNDS) as u64;
        assert!(
            (1..=moved_calls).contains(&outcome.warm_detours),
            "{} warm detours for {moved_calls} calls",
            outcome.warm_detours
        );
        let survivors: u64 = outcome
            .after
            .served
            .values()
            .flat_map(|calls| calls.values())
            .sum();
        assert_eq!(survivors, (TENANTS * ROUNDS) as u64);
    }
}
