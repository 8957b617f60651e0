//! Attribute names and the low-cardinality values this crate records.

use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};

// Semantic conventions.
pub(crate) const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub(crate) const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub(crate) const SERVER_ADDRESS: &str = "server.address";
pub(crate) const SERVER_PORT: &str = "server.port";
pub(crate) const URL_SCHEME: &str = "url.scheme";
pub(crate) const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub(crate) const ERROR_TYPE: &str = "error.type";
pub(crate) const URL_FULL: &str = "url.full";
#[cfg(feature = "pool")]
pub(crate) const TLS_RESUMED: &str = "tls.resumed";
#[cfg(feature = "pool")]
pub(crate) const HTTP_CONNECTION_STATE: &str = "http.connection.state";
#[cfg(feature = "affinity")]
pub(crate) const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
#[cfg(feature = "affinity")]
pub(crate) const NETWORK_PEER_PORT: &str = "network.peer.port";

// No convention: prefixed.
#[cfg(feature = "pool")]
pub(crate) const CONNECTION_ID: &str = "tower_reuse.connection.id";
#[cfg(feature = "pool")]
pub(crate) const CONNECTION_REUSED: &str = "tower_reuse.connection.reused";
#[cfg(feature = "pool")]
pub(crate) const CHECKOUT_WAIT: &str = "tower_reuse.checkout.wait";
#[cfg(feature = "pool")]
pub(crate) const CONNECTION_IDLE_FOR: &str = "tower_reuse.connection.idle_for";
#[cfg(feature = "pool")]
pub(crate) const RETRY_REASON: &str = "tower_reuse.retry.reason";
#[cfg(feature = "pool")]
pub(crate) const CONNECT_REASON: &str = "tower_reuse.connect.reason";
#[cfg(feature = "pool")]
pub(crate) const CLOSE_REASON: &str = "tower_reuse.close.reason";
#[cfg(feature = "pool")]
pub(crate) const TLS_HANDSHAKE: &str = "tower_reuse.tls.handshake";
#[cfg(feature = "pool")]
pub(crate) const PREWARM_OUTCOME: &str = "tower_reuse.prewarm.outcome";
#[cfg(feature = "pool")]
pub(crate) const PREWARM_SERVED: &str = "tower_reuse.prewarm.served";
#[cfg(feature = "pool")]
pub(crate) const CONNECTION_REQUESTS: &str = "tower_reuse.connection.requests";
#[cfg(feature = "pool")]
pub(crate) const PARTITION: &str = "tower_reuse.partition";
#[cfg(feature = "affinity")]
pub(crate) const AFFINITY_CHANGE: &str = "tower_reuse.affinity.change";
/// Why a key left its dedicated pool: `cold`, `idle` or `displaced`.
#[cfg(feature = "affinity")]
pub(crate) const TIER_REASON: &str = "tower_reuse.affinity.tier.reason";
/// The setting an adaptive decision changed: `idle_timeout`,
/// `min_idle_per_target` or `max_requests_per_connection`.
#[cfg(feature = "adaptive")]
pub(crate) const ADAPTIVE_KNOB: &str = "tower_reuse.adaptive.knob";
/// Why the controller decided, as `Reason::as_str` spells it.
#[cfg(feature = "adaptive")]
pub(crate) const ADAPTIVE_REASON: &str = "tower_reuse.adaptive.reason";
/// Whether the pool took the decision.
#[cfg(feature = "adaptive")]
pub(crate) const ADAPTIVE_APPLIED: &str = "tower_reuse.adaptive.applied";
#[cfg(feature = "tls")]
pub(crate) const SESSION_CACHE_RESULT: &str = "tower_reuse.tls.session_cache.result";
#[cfg(feature = "tls")]
pub(crate) const SESSION_CACHE_EVICTION: &str = "tower_reuse.tls.session_cache.eviction";

/// The method as the conventions spell it: one of the known methods, else
/// `_OTHER` (so a client sending arbitrary methods cannot blow up
/// cardinality).
pub(crate) fn method(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// `server.address`, `server.port` and `url.scheme` for a scheme and
/// authority: the host without IPv6 brackets, the port made explicit.
/// Never the path, the query or user info. The address is reference
/// counted: cloning these attributes allocates no string.
pub(crate) fn server(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(3);
    if let Some(host) = host {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = StringValue::from(Arc::<str>::from(host));
        attributes.push(KeyValue::new(SERVER_ADDRESS, Value::String(host)));
    }
    let port = port.or(match scheme {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    });
    if let Some(port) = port {
        attributes.push(KeyValue::new(SERVER_PORT, i64::from(port)));
    }
    if let Some(scheme) = scheme {
        let scheme = match scheme {
            "http" => "http",
            "https" => "https",
            _ => "_OTHER",
        };
        attributes.push(KeyValue::new(URL_SCHEME, scheme));
    }
    attributes
}

/// `server.address`, `server.port`, `url.scheme` of a pool's target.
/// Never its partition, nor user info (a target holds none).
#[cfg(feature = "pool")]
pub(crate) fn target(target: &tower_reuse_pool::Target) -> Vec<KeyValue> {
    let authority = target.authority();
    server(
        Some(target.scheme().as_str()),
        Some(authority.host()),
        authority.port_u16(),
    )
}

/// `network.protocol.version` for an HTTP version.
pub(crate) fn version(version: http::Version) -> Option<&'static str> {
    Some(match version {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// `error.type` for a pool error: its kind in snake case.
#[cfg(feature = "pool")]
pub(crate) fn pool_error(error: &tower_reuse_pool::Error) -> &'static str {
    use tower_reuse_pool::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::Connect => "connect",
        ErrorKind::ConnectTimeout => "connect_timeout",
        ErrorKind::Handshake => "handshake",
        ErrorKind::CheckoutTimeout => "checkout_timeout",
        ErrorKind::ResponseTimeout => "response_timeout",
        ErrorKind::ResponseTooLarge => "response_too_large",
        ErrorKind::TooManyWaiters => "too_many_waiters",
        ErrorKind::NotReady => "not_ready",
        ErrorKind::Send => "send",
        ErrorKind::Body => "body",
        ErrorKind::Closed => "closed",
        _ => "_OTHER",
    }
}

/// `error.type` for any service error: a pool error's kind (also inside a
/// `BoxError`), else `_OTHER`.
pub(crate) fn error_type<E: 'static>(error: &E) -> &'static str {
    #[cfg(feature = "pool")]
    {
        let any: &dyn std::any::Any = error;
        if let Some(error) = any.downcast_ref::<tower_reuse_pool::Error>() {
            return pool_error(error);
        }
        if let Some(error) = any
            .downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
            .and_then(|e| e.downcast_ref::<tower_reuse_pool::Error>())
        {
            return pool_error(error);
        }
    }
    #[cfg(not(feature = "pool"))]
    let _ = error;
    "_OTHER"
}

/// A connection id as an attribute value.
#[cfg(feature = "pool")]
pub(crate) fn conn_id(id: tower_reuse_pool::ConnId) -> i64 {
    i64::try_from(id.get()).unwrap_or(i64::MAX)
}

/// A duration in seconds, as the conventions measure time.
pub(crate) fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64()
}
