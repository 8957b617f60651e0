//! What a response says about its connection's future.

use std::time::Duration;

use http::header::{CONNECTION, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The server's word on reuse, read from a response head.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServerHints {
    /// `Connection: close`, HTTP/1.0 without keep-alive, or an upgrade.
    pub(crate) close: bool,
    /// `Keep-Alive: timeout=N`.
    pub(crate) idle_limit: Option<Duration>,
}

impl ServerHints {
    /// One pass over the head: cheaper than a lookup per header name for
    /// the few headers a response carries.
    pub(crate) fn of<B>(response: &Response<B>) -> Self {
        let mut tokens = ConnectionTokens::default();
        let mut idle_limit = None;
        for (name, value) in response.headers() {
            if *name == CONNECTION {
                tokens.add(value);
            } else if *name == KEEP_ALIVE && idle_limit.is_none() {
                idle_limit = value.to_str().ok().and_then(keep_alive_timeout);
            }
        }
        let close = tokens.close
            || (response.version() == Version::HTTP_10 && !tokens.keep_alive)
            || response.status() == StatusCode::SWITCHING_PROTOCOLS;
        ServerHints { close, idle_limit }
    }
}

/// The `close` and `keep-alive` tokens of the `Connection` headers.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTokens {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
}

impl ConnectionTokens {
    /// Adds one `Connection` header value's tokens.
    pub(crate) fn add(&mut self, value: &HeaderValue) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
}

/// Parses the `timeout` parameter of a `Keep-Alive` header value, such as
/// `timeout=5, max=1000`. Anything malformed gives `None`.
pub fn keep_alive_timeout(value: &str) -> Option<Duration> {
    value.split(',').find_map(|param| {
        let (name, secs) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let secs: u64 = secs.trim().trim_matches('"').parse().ok()?;
        // A day is already longer than any idle timeout worth honouring.
        Some(Duration::from_secs(secs.min(86_400)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(version: Version, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().version(version);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn reads_connection_close_and_http10() {
        assert!(ServerHints::of(&response(Version::HTTP_11, &[("connection", "Close")])).close);
        assert!(
            ServerHints::of(&response(
                Version::HTTP_11,
                &[("connection", "upgrade, close")]
            ))
            .close
        );
        assert!(ServerHints::of(&response(Version::HTTP_10, &[])).close);
        assert!(
            !ServerHints::of(&response(Version::HTTP_10, &[("connection", "keep-alive")])).close
        );
        assert!(!ServerHints::of(&response(Version::HTTP_11, &[])).close);
    }

    #[test]
    fn reads_keep_alive_timeout() {
        let hints = ServerHints::of(&response(
            Version::HTTP_11,
            &[("keep-alive", "timeout=5, max=100")],
        ));
        assert_eq!(hints.idle_limit, Some(Duration::from_secs(5)));
        // The first `Keep-Alive` whose timeout parses, not the first one.
        let hints = ServerHints::of(&response(
            Version::HTTP_11,
            &[("keep-alive", "max=100"), ("keep-alive", "timeout=7")],
        ));
        assert_eq!(hints.idle_limit, Some(Duration::from_secs(7)));
        assert_eq!(
            keep_alive_timeout("max=3, TIMEOUT = 7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            keep_alive_timeout("timeout=\"2\""),
            Some(Duration::from_secs(2))
        );
        assert_eq!(keep_alive_timeout("timeout=-1"), None);
        assert_eq!(keep_alive_timeout("timeout="), None);
        assert_eq!(keep_alive_timeout("garbage"), None);
        assert_eq!(keep_alive_timeout("timeout=99999999999999999999"), None);
        assert_eq!(
            keep_alive_timeout("timeout=999999999"),
            Some(Duration::from_secs(86_400))
        );
    }
}
