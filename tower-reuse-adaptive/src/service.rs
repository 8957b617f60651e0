//! `Adaptive`: passes requests to the pool, noting each one's latency and
//! outcome for its target.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use tower_reuse_pool::{PoolControl, PoolHandle, Target};
use tower_service::Service;

use crate::controller::Controller;
use crate::future::ResponseFuture;
use crate::signals::Live;

/// The service of [`AdaptiveLayer`](crate::AdaptiveLayer).
///
/// # Backpressure
///
/// `poll_ready` is the inner service's: the layer adds no queue.
#[derive(Debug)]
pub struct Adaptive<S> {
    inner: S,
    controller: Arc<Controller>,
    control: PoolControl,
    /// The target this handle sent to last, and its signals.
    last: Option<(Target, Arc<Live>)>,
}

impl<S: Clone> Clone for Adaptive<S> {
    fn clone(&self) -> Self {
        Adaptive {
            inner: self.inner.clone(),
            controller: self.controller.clone(),
            control: self.control.clone(),
            last: self.last.clone(),
        }
    }
}

impl<S> Adaptive<S> {
    pub(crate) fn new(inner: S, controller: Arc<Controller>, control: PoolControl) -> Self {
        Adaptive {
            inner,
            controller,
            control,
            last: None,
        }
    }

    /// The service below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn live<B>(&mut self, req: &Request<B>) -> Option<Arc<Live>> {
        if let Some((last, live)) = &self.last
            && last.is_target_of(req)
        {
            return Some(live.clone());
        }
        let target = Target::from_request(req).ok()?;
        let live = self.controller.live_of(&target)?;
        self.last = Some((target, live.clone()));
        Some(live)
    }
}

impl<S> PoolHandle for Adaptive<S> {
    fn pool_control(&self) -> PoolControl {
        self.control.clone()
    }
}

impl<S, B, RB> Service<Request<B>> for Adaptive<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.controller.start();
        let live = self.live(&req);
        ResponseFuture::new(self.inner.call(req), live)
    }
}
