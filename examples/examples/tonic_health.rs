//! A gRPC client over the tower-reuse stack: tonic-health's `HealthClient`
//! whose transport is a tower-reuse `Pool` speaking HTTP/2 by prior
//! knowledge (h2c), against tonic's own health service on `127.0.0.1`.
//! The checks share one pooled connection; the pool's `ConnectionInfo`
//! rides along in each tonic response's extensions.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example tonic_health
//! ```
//!
//! `OtelLayer` (tower-reuse-otel) goes on top of the transport as over
//! any other client: `OtelLayer::new(tracer, &meter).layer(transport)`.

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as CheckedStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_layer::Layer;
use tower_reuse_pool::{ConnectionInfo, Pool, PoolConfig, PoolControl, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service whose status the example toggles (the empty name is the
/// whole server).
const SERVICE: &str = "tower_reuse.Demo";

/// The pool under tonic: hyper-util's TCP connector, tonic's request body
/// as it is. The pool is the whole transport.
type GrpcPool = Pool<HttpConnector, tonic::body::Body>;

/// The pool speaking h2c (gRPC needs HTTP/2; over plain TCP there is no
/// ALPN, so prior knowledge) over a TCP connector.
fn pool() -> Result<GrpcPool, BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Ok(PoolLayer::new(PoolConfig::default().http2_prior_knowledge(true))?.layer(connector))
}

/// One `Check` call: the status the server gave and the pooled connection
/// that carried it.
#[derive(Debug)]
struct Checked {
    service: &'static str,
    status: CheckedStatus,
    connection: u64,
    reused: bool,
}

/// What a run saw.
#[derive(Debug)]
struct Outcome {
    checks: Vec<Checked>,
    /// The gRPC code for a service the server does not know.
    unknown: tonic::Code,
    /// Connections the pool opened for all of it.
    opened: u64,
}

/// Starts tonic's health service on `127.0.0.1`, checks the server and
/// [`SERVICE`], marks [`SERVICE`] not serving and checks it again, then
/// asks about a service the server does not know.
async fn run() -> Result<Outcome, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin: Uri = format!("http://{}", listener.local_addr()?).parse()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let server = tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let pool = pool()?;
    let control: PoolControl = pool.control();
    let mut client = HealthClient::with_origin(pool, origin);
    let mut checks = Vec::new();
    for service in ["", SERVICE] {
        checks.push(check(&mut client, service).await?);
    }
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    checks.push(check(&mut client, SERVICE).await?);
    let unknown = match client.check(request("tower_reuse.Unknown")).await {
        Ok(response) => return Err(format!("an unknown service checked: {response:?}").into()),
        Err(status) => status.code(),
    };
    server.abort();
    Ok(Outcome {
        checks,
        unknown,
        opened: control.snapshot().total(|target| target.opened()),
    })
}

async fn check(
    client: &mut HealthClient<GrpcPool>,
    service: &'static str,
) -> Result<Checked, BoxError> {
    let response = client.check(request(service)).await?;
    let info = response
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .ok_or("no ConnectionInfo in the response")?;
    let answer: &HealthCheckResponse = response.get_ref();
    Ok(Checked {
        service,
        status: answer.status(),
        connection: info.id().get(),
        reused: info.reused(),
    })
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let outcome = run().await?;
    for checked in &outcome.checks {
        println!(
            "Check({:?}) = {} on connection {} (reused: {})",
            checked.service,
            checked.status.as_str_name(),
            checked.connection,
            checked.reused
        );
    }
    println!("Check(unknown service) = {:?}", outcome.unknown);
    println!("connections opened by the pool: {}", outcome.opened);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_checks_share_one_h2c_connection_through_the_pool() {
        let outcome = run().await.unwrap();
        let statuses: Vec<_> = outcome
            .checks
            .iter()
            .map(|c| (c.service, c.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("", CheckedStatus::Serving),
                (SERVICE, CheckedStatus::Serving),
                (SERVICE, CheckedStatus::NotServing),
            ]
        );
        assert_eq!(outcome.unknown, tonic::Code::NotFound);
        // One connection carried every call: the first opened it, the rest
        // reused it.
        assert_eq!(outcome.opened, 1);
        let first = outcome.checks[0].connection;
        assert!(outcome.checks.iter().all(|c| c.connection == first));
        let reused: Vec<_> = outcome.checks.iter().map(|c| c.reused).collect();
        assert_eq!(reused, [false, true, true]);
    }
}
