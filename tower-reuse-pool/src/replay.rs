//! Sending a request again: [`SentHead`], the copy of a request kept while
//! it is in flight, and [`ReplayBody`], the extension that lets a request
//! with a body be replayed.

use std::fmt;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body;

/// Makes a request with a body replayable: the pool calls the factory for a
/// fresh copy of the body when it sends the request again, as Go's
/// `Request.GetBody` does.
///
/// Without it only requests with an empty body are replayed after their
/// bytes may have reached the server. With it, an idempotent request (`GET`,
/// `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) whose reused HTTP/1.1
/// connection closes as it is written is sent once more on another
/// connection; a `POST` never is. Over HTTP/2 the body also lets a refused
/// stream, or one above a graceful GOAWAY's last stream id, go again.
///
/// The factory must return the same bytes each time. It is called only for
/// a replay; a request without a body, or without this extension, costs
/// nothing more.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_reuse_pool::ReplayBody;
///
/// let payload = Bytes::from_static(b"{\"state\": \"on\"}");
/// let replay = payload.clone();
/// let request = http::Request::put("http://127.0.0.1:8080/switch")
///     .extension(ReplayBody::new(move || Full::new(replay.clone())))
///     .body(Full::new(payload))
///     .unwrap();
/// assert!(request.extensions().get::<ReplayBody<Full<Bytes>>>().is_some());
/// ```
pub struct ReplayBody<B> {
    make: Arc<dyn Fn() -> B + Send + Sync>,
}

impl<B> ReplayBody<B> {
    /// A replayable body made by `make`.
    pub fn new(make: impl Fn() -> B + Send + Sync + 'static) -> Self {
        ReplayBody {
            make: Arc::new(make),
        }
    }

    /// A fresh copy of the body.
    pub fn body(&self) -> B {
        (self.make)()
    }
}

// By hand: the factory is shared, so `B` need not be `Clone`.
impl<B> Clone for ReplayBody<B> {
    fn clone(&self) -> Self {
        ReplayBody {
            make: self.make.clone(),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody").finish_non_exhaustive()
    }
}

/// What a replay needs of a request whose bytes are on their way: its
/// method, URI, version and headers, serialized into one allocation, and
/// its [`ReplayBody`] if its body is not empty.
///
/// Kept for every request that could be replayed, and nearly never used:
/// cloning the `HeaderMap` and `Uri` instead costs two allocations for the
/// map and one more per header value parsed from a string (its bytes are
/// made shareable on their first clone), over a thousand instructions per
/// request. This costs one allocation and a copy of the bytes; parsing
/// them back is left to the rare replay.
pub(crate) struct SentHead<B> {
    /// A version byte, then the method and the URI, then per header a
    /// sensitivity byte, its name and its value: the method, the URI, each
    /// name and each value prefixed with their length as a `u32`.
    bytes: Box<[u8]>,
    replay: Option<ReplayBody<B>>,
}

impl<B: Body + Default + 'static> SentHead<B> {
    /// The head of `req`, if its body can be had again: it is empty, or the
    /// request carries a [`ReplayBody`] (looked up only then). Other
    /// extensions stay behind.
    pub(crate) fn of(req: &Request<B>) -> Option<Self> {
        let replay = if req.body().is_end_stream() {
            None
        } else {
            Some(req.extensions().get::<ReplayBody<B>>()?.clone())
        };
        let uri = req.uri();
        let scheme = uri.scheme_str().unwrap_or_default();
        let separator = if scheme.is_empty() { "" } else { "://" };
        let authority = uri.authority().map_or("", |a| a.as_str());
        let path = uri.path_and_query().map_or("", |p| p.as_str());
        let uri_len = scheme.len() + separator.len() + authority.len() + path.len();
        let headers = req.headers();
        let headers_len: usize = headers
            .iter()
            .map(|(name, value)| 9 + name.as_str().len() + value.len())
            .sum();
        let method = req.method().as_str();
        let len = 1 + 8 + method.len() + uri_len + headers_len;
        // Every length fits the `u32` prefixes once the whole does.
        u32::try_from(len).ok()?;
        let mut bytes = Vec::with_capacity(len);
        bytes.push(version_code(req.version()));
        put(&mut bytes, method.as_bytes());
        put_len(&mut bytes, uri_len);
        for piece in [scheme, separator, authority, path] {
            bytes.extend_from_slice(piece.as_bytes());
        }
        for (name, value) in headers {
            bytes.push(u8::from(value.is_sensitive()));
            put(&mut bytes, name.as_str().as_bytes());
            put(&mut bytes, value.as_bytes());
        }
        Some(SentHead {
            bytes: bytes.into_boxed_slice(),
            replay,
        })
    }

    /// The request to send again, with a fresh body from its
    /// [`ReplayBody`] (which it keeps); `None` if the bytes do not parse back. Every piece
    /// was valid, but an absolute URI whose parts each fit `http`'s limit
    /// of about 64 KiB may not once joined: such a request is then not
    /// replayed, and fails as it would have without a replay.
    pub(crate) fn into_request(self) -> Option<Request<B>> {
        let mut rest = &self.bytes[..];
        let version = version_of(take_byte(&mut rest)?)?;
        let method = Method::from_bytes(take(&mut rest)?).ok()?;
        let uri = Uri::try_from(take(&mut rest)?).ok()?;
        let mut headers = HeaderMap::new();
        while !rest.is_empty() {
            let sensitive = take_byte(&mut rest)? == 1;
            let name = HeaderName::from_bytes(take(&mut rest)?).ok()?;
            let mut value = HeaderValue::from_bytes(take(&mut rest)?).ok()?;
            value.set_sensitive(sensitive);
            headers.append(name, value);
        }
        let body = self
            .replay
            .as_ref()
            .map_or_else(B::default, ReplayBody::body);
        let mut req = Request::new(body);
        // Sent again, it may be refused again: it stays replayable.
        if let Some(replay) = self.replay {
            req.extensions_mut().insert(replay);
        }
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        Some(req)
    }
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> Option<Version> {
    Some(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    })
}

/// A length the caller has checked fits in a `u32`.
#[inline]
fn put_len(bytes: &mut Vec<u8>, len: usize) {
    bytes.extend_from_slice(&(len as u32).to_le_bytes());
}

#[inline]
fn put(bytes: &mut Vec<u8>, piece: &[u8]) {
    put_len(bytes, piece.len());
    bytes.extend_from_slice(piece);
}

fn take_byte(rest: &mut &[u8]) -> Option<u8> {
    let (&byte, tail) = rest.split_first()?;
    *rest = tail;
    Some(byte)
}

fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if tail.len() < len {
        return None;
    }
    let (piece, tail) = tail.split_at(len);
    *rest = tail;
    Some(piece)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;

    fn round_trip(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        SentHead::of(req)
            .expect("replayable")
            .into_request()
            .expect("parses back")
    }

    /// The replayed head is the sent one: method, URI in any form,
    /// version, every header value in order, sensitivity.
    #[test]
    fn a_head_comes_back_as_it_was_sent() {
        let mut secret = HeaderValue::from_static("Bearer abc");
        secret.set_sensitive(true);
        for uri in [
            "/a/b?c=d",
            "http://example.com:8080/x?y",
            "https://[::1]/",
            "example.com:443",
            "*",
        ] {
            let req = Request::builder()
                .method("PROPFIND")
                .uri(uri)
                .version(Version::HTTP_2)
                .header("accept", "*/*")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .header("authorization", secret.clone())
                .header("x-bytes", &b"caf\xe9"[..])
                .body(Full::default())
                .unwrap();
            let again = round_trip(&req);
            assert_eq!(again.method(), req.method(), "{uri}");
            assert_eq!(again.uri(), req.uri(), "{uri}");
            assert_eq!(again.version(), req.version());
            assert_eq!(again.headers(), req.headers());
            let order: Vec<_> = again.headers().iter().collect();
            assert_eq!(order, req.headers().iter().collect::<Vec<_>>());
            assert!(again.headers()["authorization"].is_sensitive());
            assert!(!again.headers()["accept"].is_sensitive());
        }
    }

    /// A body needs its factory: without one the request is not
    /// replayable, with one the replay gets a fresh body.
    #[test]
    fn a_body_comes_back_only_from_its_factory() {
        let mut req = Request::put("/p")
            .body(Full::new(Bytes::from_static(b"data")))
            .unwrap();
        assert!(SentHead::of(&req).is_none());
        req.extensions_mut()
            .insert(ReplayBody::new(|| Full::new(Bytes::from_static(b"data"))));
        let again = round_trip(&req);
        assert_eq!(again.body().size_hint().exact(), Some(4));
        // Only the factory comes along, so it can be sent yet again.
        assert_eq!(again.extensions().len(), 1);
        assert!(SentHead::of(&again).is_some(), "replayable again");
    }
}
