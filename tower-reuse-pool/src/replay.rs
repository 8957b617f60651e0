//! `ReplayBody`: a request extension that lets the pool send a request with
//! a body again.

use std::fmt;
use std::sync::Arc;

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
