//! Why a TLS connect failed.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// What went wrong in a TLS connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// The target's host is not a valid TLS server name.
    InvalidServerName,
    /// The server's certificate was rejected by the verifier.
    Certificate,
    /// The handshake failed for another reason (alert, protocol error,
    /// connection closed).
    Handshake,
    /// The handshake did not finish within `handshake_timeout`.
    Timeout,
    /// The server selected no protocol the client can speak over ALPN.
    AlpnMismatch,
}

/// A failed TLS connect: its kind, the server name, and the underlying error.
///
/// The pool reports it as an [`Error`](crate::Error) of kind
/// [`Handshake`](crate::ErrorKind::Handshake) in phase
/// [`Connect`](crate::Phase::Connect), with this error as its source.
#[derive(Debug)]
pub struct TlsError {
    kind: TlsErrorKind,
    server: String,
    detail: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl TlsError {
    pub(crate) fn invalid_server_name(
        host: &str,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        TlsError {
            kind: TlsErrorKind::InvalidServerName,
            server: host.to_owned(),
            detail: "invalid server name".to_owned(),
            source: Some(Box::new(source)),
        }
    }

    /// Classifies what tokio-rustls returned: rustls errors travel inside
    /// `io::Error`s.
    pub(crate) fn handshake(server: &str, error: std::io::Error) -> Self {
        let rustls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let kind = match rustls {
            Some(rustls::Error::InvalidCertificate(_)) => TlsErrorKind::Certificate,
            _ => TlsErrorKind::Handshake,
        };
        let detail = match kind {
            TlsErrorKind::Certificate => "server certificate rejected",
            _ => "handshake failed",
        };
        TlsError {
            kind,
            server: server.to_owned(),
            detail: detail.to_owned(),
            source: Some(Box::new(error)),
        }
    }

    pub(crate) fn timeout(server: &str, after: Duration) -> Self {
        TlsError {
            kind: TlsErrorKind::Timeout,
            server: server.to_owned(),
            detail: format!("handshake timed out after {after:?}"),
            source: None,
        }
    }

    pub(crate) fn alpn_mismatch(server: &str, selected: Option<&[u8]>) -> Self {
        let detail = match selected {
            Some(protocol) => format!(
                "server selected {:?} over ALPN",
                String::from_utf8_lossy(protocol)
            ),
            None => "server selected no ALPN protocol and http/1.1 was not offered".to_owned(),
        };
        TlsError {
            kind: TlsErrorKind::AlpnMismatch,
            server: server.to_owned(),
            detail,
            source: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// The server name the handshake was for.
    pub fn server_name(&self) -> &str {
        &self.server
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls to {}: {}", self.server, self.detail)
    }
}

impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
