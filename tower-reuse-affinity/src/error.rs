//! The affinity layer's errors.

use std::fmt;

/// What went wrong with a request routed by the affinity layer.
#[derive(Clone, Debug)]
pub struct Error {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// The service has no endpoint that takes requests.
    NoEndpoints { service: String },
    /// A service name that is not `http(s)://host:port`.
    InvalidService { service: String },
    /// The pool's error, for the request's (last) endpoint.
    Pool(tower_reuse_pool::Error),
}

impl Error {
    pub(crate) fn no_endpoints(service: &str) -> Self {
        Error {
            kind: Kind::NoEndpoints {
                service: service.to_owned(),
            },
        }
    }

    pub(crate) fn invalid_service(service: &str) -> Self {
        // User info would be a credential: never kept.
        let service = match service.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{host}"),
                None => service.to_owned(),
            },
            None => service.to_owned(),
        };
        Error {
            kind: Kind::InvalidService { service },
        }
    }

    /// Whether the service had no endpoint to take the request (none
    /// registered, or every one removed).
    pub fn is_no_endpoints(&self) -> bool {
        matches!(self.kind, Kind::NoEndpoints { .. })
    }

    /// Whether a service name was not `http(s)://host:port`.
    pub fn is_invalid_service(&self) -> bool {
        matches!(self.kind, Kind::InvalidService { .. })
    }

    /// The pool's error, when the request reached the pool.
    pub fn pool_error(&self) -> Option<&tower_reuse_pool::Error> {
        match &self.kind {
            Kind::Pool(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tower_reuse_pool::Error> for Error {
    fn from(error: tower_reuse_pool::Error) -> Self {
        Error {
            kind: Kind::Pool(error),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::NoEndpoints { service } => write!(f, "no endpoint of {service} takes requests"),
            Kind::InvalidService { service } => write!(
                f,
                "{service:?} is not a service name such as http://host:port"
            ),
            Kind::Pool(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Pool(e) => e.source(),
            _ => None,
        }
    }
}
