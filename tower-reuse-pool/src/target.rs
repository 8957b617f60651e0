//! The pool key: scheme, authority and an optional partition.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Uri};

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

/// Where a connection goes: scheme + authority + optional [`Partition`].
///
/// Connections are pooled per target and never cross targets.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    partition: Option<Partition>,
}

impl Target {
    /// A target for `scheme://authority` in `partition`.
    ///
    /// Only `http` and `https` are accepted.
    pub fn new(
        scheme: Scheme,
        authority: Authority,
        partition: Option<Partition>,
    ) -> Result<Self, Error> {
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(Error::unsupported_scheme(scheme.as_str()));
        }
        Ok(Target {
            scheme,
            authority,
            partition,
        })
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
        let authority = uri
            .authority()
            .ok_or_else(|| Error::invalid_uri("the URI has no authority (host)", uri))?;
        if authority.host().is_empty() {
            return Err(Error::invalid_uri("the URI has an empty host", uri));
        }
        let scheme = uri
            .scheme()
            .ok_or_else(|| Error::invalid_uri("the URI has no scheme", uri))?;
        Target::new(scheme.clone(), authority.clone(), partition)
    }

    /// Whether `req` goes to this target: the check a pool handle makes
    /// against the target it served last, without building a `Target`.
    pub(crate) fn is_for<B>(&self, req: &Request<B>) -> bool {
        let uri = req.uri();
        // Byte equality first: `Authority`'s own is a slower case-insensitive
        // walk, needed only when the bytes differ.
        let same_authority = uri.authority().is_some_and(|authority| {
            authority.as_str() == self.authority.as_str() || *authority == self.authority
        });
        same_authority
            && uri.scheme() == Some(&self.scheme)
            && req.extensions().get::<Partition>() == self.partition.as_ref()
    }

    /// The target of a request: its URI and its [`Partition`] extension.
    pub fn from_request<B>(req: &Request<B>) -> Result<Self, Error> {
        Target::from_uri(req.uri(), req.extensions().get::<Partition>().cloned())
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The partition, if the requests carry one.
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Whether the target is `https`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The plain-TCP target under a TLS layer: `http`, same host and port
    /// (the port written out: `https`' default 443 is not `http`'s), same
    /// partition. A transport connector that refuses `https` URIs, such as
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
        }
    }

    /// The URI handed to the connector: `scheme://authority/`.
    pub(crate) fn connect_uri(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were validated")
    }
}

/// Hashed on every request: the authority goes to the hasher in bulk rather
/// than a byte at a time (as `Authority`'s own `Hash` does), lowercased so
/// that it agrees with `Authority`'s case-insensitive equality.
impl Hash for Target {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.scheme.hash(state);
        let mut buf = [0u8; 64];
        for chunk in self.authority.as_str().as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        self.partition.hash(state);
    }
}

/// Prints `scheme://authority`, never the partition.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
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
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

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
}
