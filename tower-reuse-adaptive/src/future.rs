//! The response future: notes the request's time to its response head and
//! whether it failed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::signals::Live;

pin_project! {
    /// The response future of [`Adaptive`](crate::Adaptive).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        noted: Option<Noted>,
    }
}

/// A request counted in its target's demand until its response head, its
/// failure or its drop.
#[derive(Debug)]
struct Noted {
    live: Arc<Live>,
    start: Instant,
}

impl Drop for Noted {
    fn drop(&mut self) {
        self.live.demand_ended();
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, live: Option<Arc<Live>>) -> Self {
        let noted = live.map(|live| {
            live.demand_started();
            Noted {
                live,
                start: Instant::now(),
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
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(noted) = this.noted.take() {
            let failed = result
                .as_ref()
                .map_or(true, |response| response.status().is_server_error());
            noted.live.request(noted.start.elapsed(), failed);
        }
        Poll::Ready(result)
    }
}
