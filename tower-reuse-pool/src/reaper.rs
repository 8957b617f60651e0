//! One background task per pool that closes expired connections, starts
//! rotations and pre-warm connects. It sleeps until the next deadline and,
//! when nothing has a deadline, until woken: an empty pool costs no wakeups.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body::Body;
use tokio::time::Instant;

use crate::connect::Connect;
use crate::error::BoxError;
use crate::service::WeakShared;
use crate::shared::Shared;

/// Spawn the reaper for `shared`.
pub(crate) fn spawn<C, B>(shared: &Arc<Shared<C, B>>)
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    tokio::spawn(run(Arc::downgrade(shared)));
}

async fn run<C, B>(weak: WeakShared<C, B>)
where
    C: Connect,
    B: Body + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        shared.common.reaper_wakeups.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let next = shared
            .target_pools()
            .iter()
            .filter_map(|pool| pool.reap(now))
            .min();
        shared.forget_idle_targets(now);
        let common = shared.common.clone();
        drop(shared);
        let notified = common.reaper_wake.notified();
        match next {
            Some(deadline) => {
                common
                    .reaper_next
                    .store(common.since_epoch(deadline), Ordering::Release);
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
            None => {
                common.reaper_next.store(u64::MAX, Ordering::Release);
                notified.await;
            }
        }
    }
}
