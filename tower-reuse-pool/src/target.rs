//! The pool key: scheme, authority, an optional partition and an optional
//! endpoint address.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Uri};

use crate::endpoint::Endpoint;
use crate::error::Error;

/// A tenant, credential set or client identity whose connections must never
/// be shared with another.
///
/// Set it as a request extension; requests without one share the default
/// partition of their target. The value is never printed: `Debug` shows only
/// that a partition is present.
///
/// ```
/// use tower_reuse_pool::Partition;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Partition::new("tenant-a"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Partition(Arc<str>);

impl Partition {
    /// A partition named `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Partition(Arc::from(name.as_ref()))
    }

    /// The partition's name. Treat it as a secret: the pool never records it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Partition(..)")
    }
}

/// Where a connection goes: scheme + authority + optional [`Partition`] +
/// optional [`Endpoint`] address.
///
/// Connections are pooled per target and never cross targets. With an
/// endpoint, the connection goes to its address and the authority stays
/// the name the server is spoken to by (`Host`, TLS server name).
///
/// # User info
///
/// The authority is host and port only. User info in a URL
/// (`http://user:password@host/`) is dropped: the pool sends no credential
/// on its own, not in `Host`, not in HTTP/2's `:authority`, and no
/// `Display`, `Debug`, error or event shows one. URLs that differ only in
/// user info are one target and share connections. A caller who wants basic
/// authentication sets the `Authorization` header; one whose credentials
/// must not share connections gives each set its own [`Partition`].
///
/// ```
/// use tower_reuse_pool::Target;
///
/// let uri = "http://user:secret@example.com:8080/x".parse().unwrap();
/// let target = Target::from_uri(&uri, None).unwrap();
/// assert_eq!(target.authority(), "example.com:8080");
/// assert_eq!(target.to_string(), "http://example.com:8080");
/// ```
#[derive(Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    partition: Option<Partition>,
    endpoint: Option<Endpoint>,
}

impl Target {
    /// A target for `scheme://authority` in `partition`.
    ///
    /// Only `http` and `https` are accepted, and an authority with a host.
    /// User info in `authority` is dropped (see [Target#user-info]).
    ///
    /// ```
    /// use http::uri::Scheme;
    /// use tower_reuse_pool::Target;
    ///
    /// assert!(Target::new(Scheme::HTTP, "example.com:80".parse().unwrap(), None).is_ok());
    /// assert!(Target::new(Scheme::HTTP, ":8080".parse().unwrap(), None).is_err());
    /// ```
    pub fn new(
        scheme: Scheme,
        authority: Authority,
        partition: Option<Partition>,
    ) -> Result<Self, Error> {
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(Error::unsupported_scheme(scheme.as_str()));
        }
        let authority = match authority.as_str().rsplit_once('@') {
            // What follows a valid authority's user info is a valid authority.
            Some((_, host)) => Authority::try_from(host).map_err(|_| Error::empty_host(host))?,
            None => authority,
        };
        if authority.host().is_empty() {
            return Err(Error::empty_host(authority.as_str()));
        }
        Ok(Target {
            scheme,
            authority,
            partition,
            endpoint: None,
        })
    }

    /// This target reached at `endpoint`'s address instead of what its
    /// authority resolves to (`None`: the authority's).
    ///
    /// ```
    /// use tower_reuse_pool::{Endpoint, Target};
    ///
    /// let service = Target::from_uri(&"http://inventory.internal:8080".parse().unwrap(), None).unwrap();
    /// let one = service.clone().with_endpoint(Some(Endpoint::new("127.0.0.2:8080".parse().unwrap())));
    /// assert_ne!(one, service);
    /// assert_eq!(one.to_string(), "http://inventory.internal:8080 at 127.0.0.2:8080");
    /// ```
    pub fn with_endpoint(mut self, endpoint: Option<Endpoint>) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The target of a URI such as `http://example.com:8080/path`.
    ///
    /// ```
    /// use tower_reuse_pool::Target;
    ///
    /// let target = Target::from_uri(&"http://127.0.0.1:8080/x".parse().unwrap(), None).unwrap();
    /// assert_eq!(target.to_string(), "http://127.0.0.1:8080");
    /// assert!(Target::from_uri(&"/relative".parse().unwrap(), None).is_err());
    /// ```
    pub fn from_uri(uri: &Uri, partition: Option<Partition>) -> Result<Self, Error> {
        let authority = uri.authority().ok_or_else(Error::no_authority)?;
        let scheme = uri
            .scheme()
            .ok_or_else(|| Error::no_scheme(host_and_port(authority)))?;
        Target::new(scheme.clone(), authority.clone(), partition)
    }

    /// Whether `req` goes to this target: the check a pool handle makes
    /// against the target it served last, without building a `Target`.
    pub(crate) fn is_for<B>(&self, req: &Request<B>, endpoint: Option<Endpoint>) -> bool {
        let uri = req.uri();
        // The common case first, without looking for user info: the
        // authority's very bytes (a target's never hold user info).
        if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority())
            && authority.as_str() == self.authority.as_str()
        {
            return *scheme == self.scheme
                && req.extensions().get::<Partition>() == self.partition.as_ref()
                && endpoint == self.endpoint;
        }
        TargetKey::of_request(req, endpoint).is_some_and(|key| key == self.key())
    }

    /// Whether `req` goes to this target ([`from_request`](Self::from_request)
    /// would give it), found without building a `Target`: what a layer
    /// that remembers the target of its last request checks first.
    ///
    /// ```
    /// use tower_reuse_pool::{Partition, Target};
    ///
    /// let req = http::Request::get("http://a.test/x").body(()).unwrap();
    /// let target = Target::from_request(&req).unwrap();
    /// assert!(target.is_target_of(&req));
    /// let mut other = http::Request::get("http://a.test/y").body(()).unwrap();
    /// other.extensions_mut().insert(Partition::new("tenant-a"));
    /// assert!(!target.is_target_of(&other));
    /// ```
    pub fn is_target_of<B>(&self, req: &Request<B>) -> bool {
        self.is_for(req, req.extensions().get::<Endpoint>().copied())
    }

    /// The target of a request: its URI and its [`Partition`] and
    /// [`Endpoint`] extensions.
    pub fn from_request<B>(req: &Request<B>) -> Result<Self, Error> {
        let extensions = req.extensions();
        Ok(
            Target::from_uri(req.uri(), extensions.get::<Partition>().cloned())?
                .with_endpoint(extensions.get::<Endpoint>().copied()),
        )
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Host and port (never user info).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The partition, if the requests carry one.
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// The address connections go to, when it is not the authority's.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }

    /// Whether the target is `https`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The plain-TCP target under a TLS layer: `http`, same host and port
    /// (the port written out: `https`' default 443 is not `http`'s), same
    /// partition and endpoint. A transport connector that refuses `https` URIs, such as
    /// hyper-util's `HttpConnector` by default, accepts it.
    pub fn transport(&self) -> Target {
        if !self.is_https() {
            return self.clone();
        }
        let port = self.authority.port_u16().unwrap_or(443);
        let authority = match self.authority.port() {
            Some(_) => self.authority.clone(),
            None => format!("{}:{port}", self.authority.host())
                .parse()
                .unwrap_or_else(|_| self.authority.clone()),
        };
        Target {
            scheme: Scheme::HTTP,
            authority,
            partition: self.partition.clone(),
            endpoint: self.endpoint,
        }
    }

    /// The URI handed to the connector: `scheme://authority/`, or the
    /// endpoint's address in place of the authority.
    pub(crate) fn connect_uri(&self) -> Uri {
        let authority = match self.endpoint {
            Some(endpoint) => Authority::try_from(endpoint.addr().to_string())
                .expect("a socket address is an authority"),
            None => self.authority.clone(),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("scheme and authority were validated")
    }
}

/// A target's parts, borrowed from a `Target` or from a request: the
/// pool's map of targets is looked up with a request's own, so a request
/// finds its target without building one (cloning its authority,
/// validating it again).
#[derive(Clone, Copy)]
pub(crate) struct TargetKey<'a> {
    scheme: &'a Scheme,
    /// Host and port, without user info.
    authority: &'a str,
    partition: Option<&'a Partition>,
    endpoint: Option<Endpoint>,
}

impl<'a> TargetKey<'a> {
    /// A request's target parts, when its URI has a scheme and an
    /// authority, at `endpoint` (the request's [`Endpoint`] extension is
    /// passed by callers that have no endpoint of their own). Equal to a
    /// `Target`'s only if `Target::from_request` would give that target:
    /// every `Target` was validated (scheme, host) when it was built.
    #[inline]
    pub(crate) fn of_request<B>(req: &'a Request<B>, endpoint: Option<Endpoint>) -> Option<Self> {
        let uri = req.uri();
        Some(TargetKey {
            scheme: uri.scheme()?,
            authority: host_and_port(uri.authority()?),
            partition: req.extensions().get::<Partition>(),
            endpoint,
        })
    }
}

/// Hashed on every lookup: the authority goes to the hasher in bulk rather
/// than a byte at a time (as `Authority`'s own `Hash` does), lowercased so
/// that it agrees with `Authority`'s case-insensitive equality.
impl Hash for TargetKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scheme.hash(state);
        let mut buf = [0u8; 64];
        for chunk in self.authority.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        self.partition.hash(state);
        // One write for an IPv4 endpoint, rather than one per field.
        match self.endpoint.map(|e| e.addr()) {
            None => {}
            Some(std::net::SocketAddr::V4(addr)) => {
                state.write_u64(u64::from(addr.ip().to_bits()) << 16 | u64::from(addr.port()))
            }
            Some(std::net::SocketAddr::V6(addr)) => {
                state.write_u128(addr.ip().to_bits());
                state.write_u16(addr.port());
            }
        }
    }
}

/// Byte equality of the authorities first: the case-insensitive walk
/// (`Authority`'s equality) is needed only when the bytes differ.
impl PartialEq for TargetKey<'_> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.authority, other.authority);
        (a == b || a.eq_ignore_ascii_case(b))
            && self.scheme == other.scheme
            && self.partition == other.partition
            && self.endpoint == other.endpoint
    }
}

impl Eq for TargetKey<'_> {}

/// What the map of targets is keyed by: a `Target`, looked up by its
/// borrowed parts.
pub(crate) trait Keyed {
    fn key(&self) -> TargetKey<'_>;
}

impl Keyed for Target {
    fn key(&self) -> TargetKey<'_> {
        TargetKey {
            scheme: &self.scheme,
            authority: self.authority.as_str(),
            partition: self.partition.as_ref(),
            endpoint: self.endpoint,
        }
    }
}

impl Keyed for TargetKey<'_> {
    fn key(&self) -> TargetKey<'_> {
        *self
    }
}

impl<'a> Borrow<dyn Keyed + 'a> for Target {
    fn borrow(&self) -> &(dyn Keyed + 'a) {
        self
    }
}

impl Hash for dyn Keyed + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for dyn Keyed + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn Keyed + '_ {}

/// As its parts: the same hash as the lookups by `TargetKey`.
impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Target {}

/// An authority without its user info: what follows the last `@` (a host
/// never holds one).
#[inline]
pub(crate) fn host_and_port(authority: &Authority) -> &str {
    let authority = authority.as_str();
    // A byte loop: an authority is a few dozen bytes, under the set-up
    // cost of the vectorised search `rsplit_once` makes (on every
    // request's lookup).
    match authority.bytes().rposition(|b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

/// Prints `scheme://authority`, and ` at address` with an endpoint; never
/// the partition.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)?;
        match self.endpoint {
            Some(endpoint) => write!(f, " at {endpoint}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Target");
        d.field("scheme", &self.scheme.as_str())
            .field("authority", &self.authority.as_str());
        if self.partition.is_some() {
            d.field("partition", &"..");
        }
        if let Some(endpoint) = self.endpoint {
            d.field("endpoint", &endpoint.addr());
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_request_is_for_its_target_with_or_without_user_info() {
        let target = Target::from_uri(&"http://a.test:8080".parse().unwrap(), None).unwrap();
        let req = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(target.is_for(&req("http://a.test:8080/x"), None));
        assert!(target.is_for(&req("http://user:pw@a.test:8080/x"), None));
        assert!(target.is_for(&req("http://A.TEST:8080/x"), None));
        assert!(!target.is_for(&req("https://a.test:8080/x"), None));
        assert!(!target.is_for(&req("http://a.test:8081/x"), None));
        let endpoint = Endpoint::new("127.0.0.2:8080".parse().unwrap());
        assert!(!target.is_for(&req("http://a.test:8080/x"), Some(endpoint)));
        let mut partitioned = req("http://a.test:8080/x");
        partitioned
            .extensions_mut()
            .insert(Partition::new("tenant-a"));
        assert!(!target.is_for(&partitioned, None));
        let tenant = Target::from_uri(
            &"http://a.test:8080".parse().unwrap(),
            Some(Partition::new("tenant-a")),
        )
        .unwrap();
        assert!(tenant.is_for(&partitioned, None));
        assert!(!tenant.is_for(&req("http://a.test:8080/x"), None));
    }

    #[test]
    fn authorities_differing_in_case_are_one_target() {
        let upper = Target::from_uri(&"http://Example.COM:8080/".parse().unwrap(), None).unwrap();
        let lower = Target::from_uri(&"http://example.com:8080/x".parse().unwrap(), None).unwrap();
        assert_eq!(upper, lower);
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&upper), hasher.hash_one(&lower));
        let long = format!("http://{}.example:1/", "A".repeat(100));
        let a = Target::from_uri(&long.parse().unwrap(), None).unwrap();
        let b = Target::from_uri(&long.to_lowercase().parse().unwrap(), None).unwrap();
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        let tenant = Target::from_uri(
            &"http://example.com:8080/".parse().unwrap(),
            Some(Partition::new("t")),
        )
        .unwrap();
        assert_ne!(tenant, lower);
    }

    fn request(uri: &str, partition: Option<&str>) -> Request<()> {
        let mut req = Request::get(uri).body(()).unwrap();
        if let Some(partition) = partition {
            req.extensions_mut().insert(Partition::new(partition));
        }
        req
    }

    #[test]
    fn a_request_finds_its_target_in_a_map_without_building_one() {
        let target = |uri: &str, partition: Option<&str>| {
            Target::from_uri(&uri.parse().unwrap(), partition.map(Partition::new)).unwrap()
        };
        let map: std::collections::HashMap<Target, &str> = [
            (target("http://Example.COM:8080/", None), "plain"),
            (target("http://example.com:8080/", Some("t")), "tenant"),
            (target("https://example.com:8080/", None), "tls"),
        ]
        .into();
        let find = |req: &Request<()>| {
            let key = TargetKey::of_request(req, req.extensions().get::<Endpoint>().copied())?;
            map.get(&key as &dyn Keyed).copied()
        };
        // Any case, any path: the one target; the partition and the scheme
        // make others.
        assert_eq!(
            find(&request("http://example.com:8080/x", None)),
            Some("plain")
        );
        assert_eq!(
            find(&request("http://EXAMPLE.com:8080/", None)),
            Some("plain")
        );
        assert_eq!(
            find(&request("http://example.com:8080/", Some("t"))),
            Some("tenant")
        );
        assert_eq!(
            find(&request("https://example.com:8080/", None)),
            Some("tls")
        );
        assert_eq!(find(&request("http://example.com:8080/", Some("u"))), None);
        assert_eq!(find(&request("http://example.com:8081/", None)), None);
        // No scheme or no authority: no key, the request is checked by
        // `Target::from_request`.
        assert!(TargetKey::of_request(&request("/x", None), None).is_none());
        // The handle's check against its last target agrees.
        let last = target("http://example.com:8080/", None);
        assert!(last.is_for(&request("http://Example.com:8080/y", None), None));
        assert!(!last.is_for(&request("http://example.com:8080/y", Some("t")), None));
        assert!(!last.is_for(&request("/y", None), None));
    }
}
