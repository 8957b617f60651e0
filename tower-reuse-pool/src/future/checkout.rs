//! A checkout: the lease a request holds on a connection, given back when
//! it is dropped or finished.

use super::*;

/// A checked-out lease; dropping it gives the lease back as abandoned.
///
/// Boxed from the grant on ([`Checkout::new`]): the request path moves a
/// pointer, not the lease, and the box becomes the response body's guard.
pub(crate) struct Checkout<B: Send + 'static> {
    pub(super) pool: Arc<TargetPool<B>>,
    pub(super) lease: Option<Lease<B>>,
    pub(crate) protocol: Protocol,
    pub(super) tls: Option<TlsHandshake>,
    pub(crate) reused: bool,
    pub(super) idle_for: Option<Duration>,
    pub(super) revalidate: bool,
    pub(super) settling: bool,
    pub(super) dedicated: bool,
    pub(super) policy: RequestPolicy,
    pub(super) wait: Duration,
}

impl<B: Send + 'static> Checkout<B> {
    /// `since` (when it began waiting) is `None` for a grant made at once.
    #[inline(always)] // once per request: the grant is moved once, not copied into a call
    pub(super) fn new(
        pool: Arc<TargetPool<B>>,
        granted: Granted<B>,
        since: Option<Instant>,
    ) -> Box<Self> {
        let checkout = Box::new(Checkout {
            lease: Some(granted.lease),
            protocol: granted.protocol,
            tls: granted.tls,
            reused: granted.reused,
            idle_for: granted.idle_for,
            revalidate: granted.revalidate,
            settling: granted.settling,
            dedicated: granted.dedicated,
            policy: granted.policy,
            wait: since.map_or(Duration::ZERO, |start| start.elapsed()),
            pool,
        });
        checkout.pool.common.events.on_checkout(&CheckedOut {
            target: &checkout.pool.target,
            id: checkout.id(),
            reused: checkout.reused,
            wait: checkout.wait,
            idle_for: checkout.idle_for,
            protocol: checkout.protocol,
            tls: checkout.tls,
        });
        checkout
    }

    /// Check out a connection for `pool`, waiting in its queue if need be;
    /// not `avoid` unless nothing else can serve.
    pub(crate) async fn acquire(
        pool: &Arc<TargetPool<B>>,
        avoid: Option<ConnId>,
    ) -> Result<Box<Self>, Error> {
        Checkout::acquire_since(pool, avoid, &mut None).await
    }

    /// [`acquire`](Self::acquire) for a request that began waiting at
    /// `since` (and was queued again since): the checkout timeout counts
    /// from then. `None` on its first checkout: set to now, from the one
    /// clock read a checkout makes.
    pub(super) async fn acquire_since(
        pool: &Arc<TargetPool<B>>,
        avoid: Option<ConnId>,
        since: &mut Option<Instant>,
    ) -> Result<Box<Self>, Error> {
        let start = Instant::now();
        let since = *since.get_or_insert(start);
        let waiting = match pool.checkout(start, avoid) {
            Ok(granted) => return Ok(Checkout::new(pool.clone(), granted, None)),
            Err(Err(error)) => return Err(error),
            Err(Ok(waiting)) => waiting,
        };
        let mut guard = WaitGuard {
            pool,
            key: waiting.key,
            rx: Some(waiting.rx),
        };
        let rx = guard.rx.as_mut().expect("set above");
        let received = match waiting.timeout {
            // Past what an `Instant` holds is never (`validate` bounds the
            // limit; a deadline is still never computed unchecked).
            Some(limit) => match since.checked_add(limit) {
                Some(deadline) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(received) => received,
                    Err(_) => return Err(Error::checkout_timeout(&pool.target, limit)),
                },
                None => rx.await,
            },
            None => rx.await,
        };
        guard.rx = None;
        match received {
            Ok(Ok(granted)) => Ok(Checkout::new(pool.clone(), granted, Some(start))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::closed(&pool.target, "the pool was dropped")),
        }
    }

    pub(crate) fn id(&self) -> ConnId {
        self.lease
            .as_ref()
            .expect("a checkout holds its lease")
            .id()
    }

    pub(super) fn lease(&mut self) -> &mut Lease<B> {
        self.lease.as_mut().expect("a checkout holds its lease")
    }

    /// Give the lease back with `outcome`; the checkout is spent.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(lease) = self.lease.take() {
            give_back(&self.pool, lease, self.dedicated, outcome);
        }
    }
}

fn give_back<B: Send + 'static>(
    pool: &Arc<TargetPool<B>>,
    lease: Lease<B>,
    dedicated: bool,
    outcome: Outcome,
) {
    if dedicated {
        pool.release_dedicated(lease);
    } else {
        pool.release(lease, outcome);
    }
}

impl<B: Send + 'static> Drop for Checkout<B> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            give_back(&self.pool, lease, self.dedicated, Outcome::Abandoned);
        }
    }
}

impl<B: Send + 'static> BodyGuard for Checkout<B> {
    fn release(mut self: Box<Self>, outcome: Outcome) {
        self.finish(outcome);
    }

    fn target(&self) -> &Target {
        &self.pool.target
    }
}

/// A parked waiter; leaving the queue early gives back anything already granted.
struct WaitGuard<'a, B: Send + 'static> {
    pool: &'a Arc<TargetPool<B>>,
    key: Option<u64>,
    rx: Option<oneshot::Receiver<Result<Granted<B>, Error>>>,
}

impl<B: Send + 'static> Drop for WaitGuard<'_, B> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        match rx.try_recv() {
            Ok(Ok(granted)) => {
                give_back(self.pool, granted.lease, granted.dedicated, Outcome::Unused)
            }
            _ => {
                if let Some(key) = self.key {
                    self.pool.cancel_waiter(key);
                }
            }
        }
    }
}
