//! `Pool<C, B>`: the request-level service, and the connection-level checkout.

use std::fmt;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::connect::Connect;
use crate::control::PoolControl;
use crate::endpoint::Endpoint;
use crate::error::{BoxError, Error};
use crate::events::PoolEvents;
use crate::future::{self, Checkout, Exchange, ResponseFuture};
use crate::shared::Shared;
use crate::target::{Target, TargetKey};
use crate::target_pool::TargetPool;

/// A pooling HTTP client over the connector `C`, for request bodies `B`.
///
/// Built by [`PoolLayer`](crate::PoolLayer). Cheap to clone; clones share
/// the pool. Requests must carry an absolute `http` or `https` URI: the
/// pool connects to its scheme, host and port. A request without one fails
/// with [`ErrorKind::InvalidRequest`](crate::ErrorKind::InvalidRequest),
/// saying so. User info in the URI (`user:password@`) is dropped, never
/// sent (see [`Target`](crate::Target#user-info)): for basic
/// authentication set the `Authorization` header.
///
/// # With tonic
///
/// tonic's clients send origin-form URIs (`/package.Service/Method`), so
/// tell tonic where the server is with `with_origin`, on a generated client
/// (`HealthClient::with_origin(pool, origin)`) or on
/// `tonic::client::Grpc`. gRPC needs HTTP/2: over plain TCP by prior
/// knowledge, as here; over TLS, ALPN chooses it. The pool's request body
/// is tonic's.
///
/// ```
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::Layer;
/// use tower_reuse_pool::{Pool, PoolConfig, PoolLayer};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let config = PoolConfig::default().http2_prior_knowledge(true);
/// let pool: Pool<HttpConnector, tonic::body::Body> =
///     PoolLayer::new(config)?.layer(HttpConnector::new());
/// let origin = "http://127.0.0.1:50051".parse()?;
/// // Or `HealthClient::with_origin(pool, origin)`, and so on: without the
/// // origin, every call fails with "the request URI has no authority".
/// let mut grpc = tonic::client::Grpc::with_origin(pool, origin);
/// grpc.ready().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Backpressure
///
/// `poll_ready` is pending while `max_requests_in_flight` requests are in
/// flight (a request is in flight until its response body ends or is
/// dropped). Per-target limits queue the request instead, bounded by
/// `max_waiters_per_target` and `checkout_timeout`.
pub struct Pool<C, B = Full<Bytes>> {
    shared: Arc<Shared<C, B>>,
    semaphore: Option<PollSemaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// The target this handle served last: a handle sending to one target
    /// again skips building a `Target` and the shared map's lookup. Holding
    /// it keeps the target from being forgotten (see `is_forgettable`).
    last: Option<Arc<TargetPool<B>>>,
}

impl<C, B> Clone for Pool<C, B> {
    fn clone(&self) -> Self {
        // A clone never inherits a reservation.
        Pool {
            shared: self.shared.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
            last: self.last.clone(),
        }
    }
}

impl<C, B> fmt::Debug for Pool<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &**self.shared.common.config.load())
            .field("ready", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<C, B> Pool<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(connector: C, config: PoolConfig, events: Arc<dyn PoolEvents>) -> Self {
        let semaphore = config
            .max_requests_in_flight
            .map(|max| PollSemaphore::new(Arc::new(Semaphore::new(max))));
        Pool {
            shared: Shared::new(connector, config, events),
            semaphore,
            permit: None,
            last: None,
        }
    }

    /// `call` with the request's connections going to `endpoint` (`None`:
    /// its authority's address), whatever its [`Endpoint`] extension says:
    /// what a balancer over the pool calls, sparing the request an
    /// extension. Like `call`, after `poll_ready`.
    #[inline]
    pub fn call_at(&mut self, req: Request<B>, endpoint: Option<Endpoint>) -> ResponseFuture {
        let permit = self.permit.take();
        if self.semaphore.is_some() && permit.is_none() {
            return ResponseFuture::new(async { Err(Error::not_ready()) });
        }
        let pool = match &self.last {
            Some(pool) if pool.target.is_for(&req, endpoint) => pool.clone(),
            _ => {
                let known =
                    TargetKey::of_request(&req, endpoint).and_then(|key| self.shared.find(key));
                let pool = match known {
                    Some(pool) => pool,
                    None => match Target::from_request(&req) {
                        Ok(target) => self.shared.target_pool(&target.with_endpoint(endpoint)),
                        Err(error) => return ResponseFuture::new(async { Err(error) }),
                    },
                };
                self.last = Some(pool.clone());
                pool
            }
        };
        ResponseFuture::new(future::request(pool, req, permit))
    }

    /// A handle to read the pool's state and steer it.
    pub fn control(&self) -> PoolControl {
        PoolControl {
            inner: self.shared.clone(),
        }
    }

    /// Check out a connection to `target` (connection level). The handle
    /// serves one request; dropping it unused gives the connection back.
    pub async fn checkout(&self, target: &Target) -> Result<Pooled<B>, Error> {
        let pool = self.shared.target_pool(target);
        Ok(Pooled {
            checkout: Some(Checkout::acquire(&pool, None).await?),
        })
    }

    /// The connection level as a make-service: a `Service<Target>` whose
    /// responses are [`Pooled`] handles, each a `Service<Request>` for one
    /// request, checked in on drop (the shape of hyper-util's pool and of
    /// linkerd's stacks).
    pub fn connections(&self) -> Connections<C, B> {
        Connections {
            shared: self.shared.clone(),
        }
    }
}

/// A service that reaches a pool's control handle: the pool itself, or a
/// layer's service stacked over it. The layers that steer the pool
/// (affinity, adaptive) take the handle from the service they wrap.
pub trait PoolHandle {
    /// The pool's control handle.
    fn pool_control(&self) -> PoolControl;
}

impl<C, B> PoolHandle for Pool<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn pool_control(&self) -> PoolControl {
        self.control()
    }
}

impl<C, B> Service<Request<B>> for Pool<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<crate::PoolBody>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(semaphore) = self.semaphore.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if self.permit.is_none() {
            match semaphore.poll_acquire(cx) {
                Poll::Ready(Some(permit)) => self.permit = Some(permit),
                Poll::Ready(None) => unreachable!("the pool never closes its semaphore"),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let endpoint = req.extensions().get::<Endpoint>().copied();
        self.call_at(req, endpoint)
    }
}

/// The connection-level face of a [`Pool`], from [`Pool::connections`]:
/// `call(target)` checks out a connection to `target`.
///
/// # Backpressure
///
/// Always ready: per-target limits queue the checkout, bounded by
/// `max_waiters_per_target` and `checkout_timeout`.
pub struct Connections<C, B = Full<Bytes>> {
    shared: Arc<Shared<C, B>>,
}

impl<C, B> Clone for Connections<C, B> {
    fn clone(&self) -> Self {
        Connections {
            shared: self.shared.clone(),
        }
    }
}

impl<C, B> fmt::Debug for Connections<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl<C, B> Service<Target> for Connections<C, B>
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Pooled<B>;
    type Error = Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Pooled<B>, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Target) -> Self::Future {
        let pool = self.shared.target_pool(&target);
        Box::pin(async move {
            Ok(Pooled {
                checkout: Some(Checkout::acquire(&pool, None).await?),
            })
        })
    }
}

/// A connection checked out of a [`Pool`] for one request.
///
/// Call it once (after `poll_ready`); for HTTP/1.1 the connection returns
/// to the pool when that response's body ends, for HTTP/2 the stream slot
/// does. Dropped unused, it returns at once.
pub struct Pooled<B: Send + 'static> {
    checkout: Option<Box<Checkout<B>>>,
}

impl<B: Send + 'static> fmt::Debug for Pooled<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("protocol", &self.checkout.as_ref().map(|c| c.protocol))
            .field("reused", &self.checkout.as_ref().map(|c| c.reused))
            .finish()
    }
}

impl<B: Send + 'static> Pooled<B> {
    /// Whether the connection had served a request before.
    pub fn is_reused(&self) -> bool {
        self.checkout.as_ref().is_some_and(|c| c.reused)
    }
}

impl<B: Send + 'static> Drop for Pooled<B> {
    fn drop(&mut self) {
        if let Some(mut checkout) = self.checkout.take() {
            checkout.finish(crate::target_pool::Outcome::Unused);
        }
    }
}

impl<B> Service<Request<B>> for Pooled<B>
where
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<crate::PoolBody>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(if self.checkout.is_some() {
            Ok(())
        } else {
            Err(Error::spent())
        })
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let Some(checkout) = self.checkout.take() else {
            return ResponseFuture::new(async { Err(Error::spent()) });
        };
        let mut slot = Some(req);
        ResponseFuture::new(async move {
            match future::exchange(checkout, &mut slot, false, None, 0, &mut None).await {
                Exchange::Response(response) => Ok(response),
                Exchange::Failed { error, .. } => Err(error),
            }
        })
    }
}

/// Held by the reaper: the pool, weakly.
pub(crate) type WeakShared<C, B> = Weak<Shared<C, B>>;
