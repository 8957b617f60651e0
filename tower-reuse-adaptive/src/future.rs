//! The response future: notes the request's time to its response head,
//! whether it failed, and what the pool says of its connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use tower_reuse_pool::ConnectionInfo;

use crate::signals::{Live, Stamp};

pin_project! {
    /// The response future of [`Adaptive`](crate::Adaptive).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        noted: Option<Noted>,
    }
}

/// A request counted in its target's in-flight requests until its
/// response head, its failure or its drop.
#[derive(Debug)]
struct Noted {
    live: Arc<Live>,
    start: Stamp,
    ended: bool,
}

impl Drop for Noted {
    fn drop(&mut self) {
        if !self.ended {
            self.live.ended(self.live.now());
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, live: Option<Arc<Live>>) -> Self {
        let noted = live.map(|live| {
            let start = live.now();
            live.started(start);
            Noted {
                live,
                start,
                ended: false,
            }
        });
        ResponseFuture { inner, noted }
    }
}

/// A request fails for the controller when it errors or its status is a
/// server error (5xx).
impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: 'static,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(mut noted) = this.noted.take() {
            let now = noted.live.now();
            noted.ended = true;
            noted.live.ended(now);
            let response = result.as_ref().ok();
            let failed = response.is_none_or(|r| r.status().is_server_error());
            noted.live.answered(now.since(noted.start), failed);
            // The pool's account of the connection, on every response.
            if let Some(info) = response.and_then(ConnectionInfo::of) {
                noted.live.served(info);
            }
        }
        Poll::Ready(result)
    }
}
