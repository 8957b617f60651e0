//! What a response tells its caller about the connection it came on.

use std::any::Any;
use std::time::Duration;

use crate::conn::{ConnId, Protocol, TlsHandshake};
use crate::endpoint::Endpoint;
use crate::events::RetryReason;

/// The connection that carried a response, and how its request got it:
/// carried by every response's [`PoolBody`](crate::PoolBody), and by its
/// `http::Extensions` too with
/// [`PoolConfig::connection_info_extension`](crate::PoolConfig::connection_info_extension).
///
/// ```no_run
/// # async fn demo(response: http::Response<tower_reuse_pool::PoolBody>) {
/// use tower_reuse_pool::ConnectionInfo;
///
/// let info = ConnectionInfo::of(&response).unwrap();
/// println!("{} reused={} waited {:?}", info.id(), info.reused(), info.wait());
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionInfo {
    pub(crate) id: ConnId,
    pub(crate) protocol: Protocol,
    pub(crate) tls: Option<TlsHandshake>,
    pub(crate) reused: bool,
    pub(crate) wait: Duration,
    pub(crate) idle_for: Option<Duration>,
    pub(crate) retried: Option<RetryReason>,
    pub(crate) refusals: u32,
    pub(crate) endpoint: Option<Endpoint>,
}

impl ConnectionInfo {
    /// The pool's account of `response`'s connection: from its body when
    /// the body is the pool's [`PoolBody`](crate::PoolBody), otherwise from
    /// its extensions (present with
    /// [`PoolConfig::connection_info_extension`](crate::PoolConfig::connection_info_extension)).
    /// `None` for a response that did not come from the pool, or whose
    /// body a layer replaced without the extension on.
    pub fn of<B: 'static>(response: &http::Response<B>) -> Option<&ConnectionInfo> {
        let body: &dyn Any = response.body();
        match body.downcast_ref::<crate::PoolBody>() {
            Some(body) => Some(body.connection_info()),
            None => response.extensions().get::<ConnectionInfo>(),
        }
    }

    /// The connection that carried the response.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// HTTP/1.1 or HTTP/2.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The connection's TLS handshake (full or resumed), if it is encrypted.
    pub fn tls_handshake(&self) -> Option<TlsHandshake> {
        self.tls
    }

    /// Whether the connection had served a request before this one.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// How long the request waited for a connection (including a connect).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// How long a reused connection had been idle before this request.
    pub fn idle_for(&self) -> Option<Duration> {
        self.idle_for
    }

    /// Why the request was retried, if it was.
    pub fn retried(&self) -> Option<RetryReason> {
        self.retried
    }

    /// How many times an HTTP/2 server refused the request (or left it
    /// unprocessed in a GOAWAY) before this response: each time it went
    /// back to the pool's queue, which is not a retry.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// The address the connection was opened to, when the request named
    /// one ([`Endpoint`], set by its caller or by a router such as the
    /// affinity layer): a layer above a router learns from it which of the
    /// service's endpoints served the request.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }
}
