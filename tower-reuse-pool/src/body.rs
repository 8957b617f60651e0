//! `PoolBody`: the response body, which gives the connection back when it ends.

use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{BoxError, Error};
use crate::h2_client::H2Body;
use crate::info::ConnectionInfo;
use crate::target::Target;
use crate::target_pool::Outcome;

/// Gives a lease back; type-erased so that `PoolBody` has no type parameters.
/// Not `Sync`: a lease holds the caller's request body type, which need not
/// be (tonic's and axum's bodies are not).
pub(crate) trait BodyGuard: Send {
    fn release(self: Box<Self>, outcome: Outcome);
    fn target(&self) -> &Target;
}

/// A response body as the connection's protocol delivers it.
#[derive(Debug)]
pub(crate) enum Wire {
    Http1(Incoming),
    /// Boxed: a response body stays as small as hyper's.
    Http2(Box<H2Body>),
}

impl Body for Wire {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.get_mut() {
            Wire::Http1(body) => {
                ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(Into::into))
            }
            Wire::Http2(body) => ready!(Pin::new(&mut **body).poll_frame(cx)),
        };
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Wire::Http1(body) => body.is_end_stream(),
            Wire::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Wire::Http1(body) => body.size_hint(),
            Wire::Http2(body) => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from the pool.
    ///
    /// For HTTP/1.1 the connection goes back to the pool when the body has
    /// been read to its end; a body dropped before its end closes the
    /// connection. For HTTP/2 the stream slot is released either way.
    ///
    /// It carries the [`ConnectionInfo`] of the connection that served
    /// the response ([`connection_info`](Self::connection_info)).
    pub struct PoolBody {
        #[pin]
        inner: Wire,
        // Only ever reached through `&mut self` (`get_mut`, no locking): the
        // mutex makes the body `Sync` without asking it of the guard.
        guard: Mutex<Option<Box<dyn BodyGuard>>>,
        permit: Option<OwnedSemaphorePermit>,
        info: ConnectionInfo,
    }
}

impl PoolBody {
    pub(crate) fn new(
        inner: Wire,
        guard: Option<Box<dyn BodyGuard>>,
        permit: Option<OwnedSemaphorePermit>,
        info: ConnectionInfo,
    ) -> Self {
        PoolBody {
            inner,
            guard: Mutex::new(guard),
            permit,
            info,
        }
    }

    /// The connection that carried the response, and how the request got
    /// it. [`ConnectionInfo::of`] reads it from a response.
    ///
    /// ```no_run
    /// # async fn demo(response: http::Response<tower_reuse_pool::PoolBody>) {
    /// let info = response.body().connection_info();
    /// println!("{} reused={}", info.id(), info.reused());
    /// # }
    /// ```
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        let outcome = match &polled {
            None => Some(Outcome::Done),
            Some(Ok(_)) if this.inner.is_end_stream() => Some(Outcome::Done),
            Some(Ok(_)) => None,
            Some(Err(_)) => Some(Outcome::Failed),
        };
        let Some(outcome) = outcome else {
            return Poll::Ready(polled.map(|frame| frame.map_err(|e| Error::body(None, e))));
        };
        let guard = this
            .guard
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The target is named only in an error: no clone on the good path.
        let polled = polled.map(|frame| {
            frame.map_err(|e| Error::body(guard.as_deref().map(BodyGuard::target), e))
        });
        if let Some(guard) = guard {
            guard.release(outcome);
        }
        this.permit.take();
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for PoolBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBody")
            .field(
                "holds_connection",
                &self
                    .guard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::PoolBody;

    /// The body stays `Send + Sync` whatever the request body type (the
    /// guard it holds is only `Send`), so it fits `BoxBody` and friends.
    #[test]
    fn the_response_body_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PoolBody>();
    }
}
