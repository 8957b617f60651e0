//! Endpoint addresses: where a request's connection goes when that is not
//! what its authority resolves to.

use std::fmt;
use std::net::SocketAddr;

/// The address to connect to for a request, distinct from the request's
/// authority: a load balancer over a service's endpoints (such as
/// `tower-reuse-affinity`) sets it as a request extension.
///
/// The pool connects to this address, while the `Host` header, HTTP/2's
/// `:authority`, the TLS server name (SNI) and certificate verification stay
/// the request's authority (its logical name). The endpoint is part of the
/// [`Target`](crate::Target): connections to different endpoints of one
/// service never mix.
///
/// ```
/// use tower_reuse_pool::{Endpoint, Target};
///
/// let mut req = http::Request::get("https://inventory.internal:8443/items")
///     .body(())
///     .unwrap();
/// req.extensions_mut()
///     .insert(Endpoint::new("10.1.2.3:8443".parse().unwrap()));
/// let target = Target::from_request(&req).unwrap();
/// assert_eq!(target.authority(), "inventory.internal:8443");
/// assert_eq!(target.endpoint().map(|e| e.addr().to_string()).as_deref(), Some("10.1.2.3:8443"));
/// ```
///
/// An `https` target with an endpoint needs a connector that sees the whole
/// target, such as the pool's `tls::TlsConnector` (feature `tls`): a
/// `tower::Service<Uri>` connector (hyper-rustls' for instance) is handed
/// only a URI, and the pool refuses to hand it the address, which it would
/// verify the certificate against.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint(SocketAddr);

impl Endpoint {
    /// The endpoint at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint(addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint(addr)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
