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
        noted: Option<(Arc<Live>, Instant)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, live: Option<Arc<Live>>) -> Self {
        ResponseFuture {
            inner,
            noted: live.map(|live| (live, Instant::now())),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some((live, start)) = this.noted.take() {
            live.request(start.elapsed(), result.is_err());
        }
        Poll::Ready(result)
    }
}
