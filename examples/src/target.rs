//! Request targets, parsed once so every stack is driven with identical,
//! pre-built request parts (a `format!` per request skews the ratios).

use std::fmt;

use http::{HeaderValue, Uri};

/// One target URL, pre-parsed.
#[derive(Clone, Debug)]
pub struct Target {
    /// The absolute URI every stack receives (`http://127.0.0.1:4000/`).
    pub uri: Uri,
    /// The origin-form URI (`/`), for stacks that write HTTP/1 themselves.
    pub origin: Uri,
    /// The `Host` header value, for the same stacks.
    pub host: HeaderValue,
}

/// A URL the lab cannot use.
#[derive(Debug)]
pub struct TargetError(String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// Parses an absolute `http` or `https` URL; a missing path becomes `/`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| TargetError(format!("invalid URL {url:?}: {e}")))?;
        let scheme = uri.scheme_str().unwrap_or_default();
        if scheme != "http" && scheme != "https" {
            return Err(TargetError(format!(
                "unsupported scheme in {url:?}: expected http or https"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError(format!("no host in {url:?}")))?
            .clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let origin: Uri = path
            .parse()
            .map_err(|e| TargetError(format!("invalid path in {url:?}: {e}")))?;
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| TargetError(format!("invalid URL {url:?}: {e}")))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| TargetError(format!("invalid host in {url:?}: {e}")))?;
        Ok(Self { uri, origin, host })
    }

    /// Whether the target is `https`.
    pub fn is_tls(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}
