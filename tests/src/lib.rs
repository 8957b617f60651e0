//! Support for the tower-reuse integration tests: real hyper servers on
//! loopback whose behaviour each test sets, and an in-memory connector for
//! tests on paused time.

pub mod duplex;
pub mod server;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{Layer, Service, ServiceExt};
use tower_reuse_pool::{Error, Pool, PoolBody, PoolConfig, PoolLayer};

/// A pool over a plain `HttpConnector` with `config`.
pub fn pool(config: PoolConfig) -> Pool<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    PoolLayer::new(config)
        .expect("valid config")
        .layer(connector)
}

/// A GET for `uri` carrying `x-request-id: id`.
pub fn get(uri: &str, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::get(uri)
        .header("x-request-id", id)
        .body(Full::default())
        .expect("valid request")
}

/// Send `req`, read the whole body; returns the response head and body.
pub async fn send<S>(
    client: &mut S,
    req: http::Request<Full<Bytes>>,
) -> Result<(http::response::Parts, Bytes), Error>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<PoolBody>, Error = Error>,
{
    let response = client.ready().await?.call(req).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts, body))
}

/// The `x-request-id` a response echoed.
pub fn echoed_id(parts: &http::response::Parts) -> Option<u64> {
    parts
        .headers
        .get("x-request-id")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The server-side connection id a response came on.
pub fn server_conn(parts: &http::response::Parts) -> u64 {
    parts.headers["x-conn-id"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}
