//! An axum service that calls a downstream service through one shared
//! tower-reuse client kept in its state. A "shop" answers `GET
//! /item/{name}` by asking an "inventory" service, both axum on
//! `127.0.0.1`; the inventory counts the connections it accepts, so the
//! run shows the shop's calls reusing them.
//!
//! ```sh
//! cargo run -p tower-reuse-examples --example axum_downstream
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_reuse_pool::{ConnectionInfo, Pool, PoolConfig, PoolLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Requests sent one after another, then this many at once.
const SEQUENTIAL: usize = 10;
const CONCURRENT: usize = 8;

/// The shop's state: one pool, cloned into every request (a clone shares
/// the connections), and where the inventory is.
#[derive(Clone, Debug)]
struct Shop {
    client: Pool<HttpConnector>,
    inventory: String,
}

/// A tower-reuse client over hyper-util's TCP connector, pool defaults.
fn client() -> Result<Pool<HttpConnector>, BoxError> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Ok(PoolLayer::new(PoolConfig::default())?.layer(connector))
}

/// The downstream service: how many of an item are in stock.
fn inventory() -> Router {
    Router::new().route(
        "/stock/{name}",
        get(|Path(name): Path<String>| async move { (name.len() * 10).to_string() }),
    )
}

/// The service in front: answers from the inventory's response and says
/// which pooled connection carried the call.
fn shop(state: Shop) -> Router {
    Router::new()
        .route("/item/{name}", get(item))
        .with_state(state)
}

async fn item(
    State(shop): State<Shop>,
    Path(name): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let request = Request::get(format!("{}/stock/{name}", shop.inventory))
        .body(Full::<Bytes>::default())
        .map_err(bad_gateway)?;
    let response = shop.client.oneshot(request).await.map_err(bad_gateway)?;
    let connection = ConnectionInfo::of(&response).map_or(0, |info| info.id().get());
    if !response.status().is_success() {
        return Err(bad_gateway(format!(
            "inventory answered {}",
            response.status()
        )));
    }
    let stock = response
        .into_body()
        .collect()
        .await
        .map_err(bad_gateway)?
        .to_bytes();
    Ok(format!(
        "{name}: {} in stock (inventory connection {connection})",
        String::from_utf8_lossy(&stock)
    ))
}

fn bad_gateway(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, error.to_string())
}

/// Serves `router` on `127.0.0.1`; counts the connections it accepts.
async fn serve(router: Router) -> Result<(SocketAddr, Arc<AtomicU64>), BoxError> {
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((addr, accepted))
}

/// What a run saw.
#[derive(Debug)]
struct Outcome {
    /// The shop's answers, in order for the sequential part.
    answers: Vec<String>,
    /// Inventory connections accepted after the sequential requests.
    accepted_sequential: u64,
    /// And after the concurrent ones.
    accepted: u64,
}

/// Starts both services, sends [`SEQUENTIAL`] requests to the shop one
/// after another and then [`CONCURRENT`] at once.
async fn run() -> Result<Outcome, BoxError> {
    let (inventory_addr, inventory_accepted) = serve(inventory()).await?;
    let state = Shop {
        client: client()?,
        inventory: format!("http://{inventory_addr}"),
    };
    let (shop_addr, _) = serve(shop(state)).await?;

    // The caller: another tower-reuse client.
    let caller = client()?;
    let get = move |name: String| {
        let caller = caller.clone();
        async move {
            let request = Request::get(format!("http://{shop_addr}/item/{name}"))
                .body(Full::<Bytes>::default())?;
            let response = caller.oneshot(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            if !status.is_success() {
                return Err(format!("shop answered {status}: {body}").into());
            }
            Ok::<_, BoxError>(body)
        }
    };

    let mut answers = Vec::new();
    for i in 0..SEQUENTIAL {
        answers.push(get(format!("widget-{i}")).await?);
    }
    let accepted_sequential = inventory_accepted.load(Ordering::Relaxed);
    let mut burst = JoinSet::new();
    for i in 0..CONCURRENT {
        burst.spawn(get(format!("gadget-{i}")));
    }
    while let Some(answer) = burst.join_next().await {
        answers.push(answer??);
    }
    Ok(Outcome {
        answers,
        accepted_sequential,
        accepted: inventory_accepted.load(Ordering::Relaxed),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let outcome = run().await?;
    for answer in &outcome.answers {
        println!("{answer}");
    }
    println!(
        "inventory connections accepted: {} for {SEQUENTIAL} sequential requests, {} after {CONCURRENT} concurrent ones",
        outcome.accepted_sequential, outcome.accepted
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shop_calls_the_inventory_over_reused_connections() {
        let outcome = run().await.unwrap();
        assert_eq!(outcome.answers.len(), SEQUENTIAL + CONCURRENT);
        assert_eq!(
            outcome.answers[0],
            "widget-0: 80 in stock (inventory connection 1)"
        );
        // One after another: one inventory connection for all.
        assert!(
            outcome.answers[..SEQUENTIAL]
                .iter()
                .all(|a| a.ends_with("(inventory connection 1)")),
            "{:?}",
            outcome.answers
        );
        assert_eq!(outcome.accepted_sequential, 1);
        // At once: never more connections than requests in flight.
        assert!(
            outcome.answers[SEQUENTIAL..]
                .iter()
                .all(|a| a.contains(": 80 in stock"))
        );
        assert!(
            (1..=CONCURRENT as u64).contains(&outcome.accepted),
            "{} inventory connections for {CONCURRENT} concurrent requests",
            outcome.accepted
        );
    }
}
