//! Feeding a service's endpoints from a `tower::discover::Discover` stream.

use std::collections::{HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;

use tower::discover::{Change, Discover};

use crate::error::Error;
use crate::registry::Endpoints;

impl Endpoints {
    /// Apply `discover`'s changes to `service` for as long as the stream
    /// runs: spawn the future it returns. Each `Change::Insert(key,
    /// address)` adds an endpoint (a key inserted again moves to its new
    /// address), each `Change::Remove(key)` removes its address unless
    /// another key still names it; changes ready together apply as one.
    /// The service is registered (with no endpoint) if it is not yet, so
    /// that its requests fail, typed, rather than go unrouted before the
    /// first insert. The service's endpoints are the stream's: on its first
    /// changes, endpoints set otherwise that it does not name are removed
    /// (a feed started again after a reconnect applies its first answer as
    /// one change, leaving the endpoints it still names alone). The future
    /// ends with the stream, or with its first error.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::net::SocketAddr;
    /// use std::pin::Pin;
    /// use std::task::{Context, Poll};
    /// use tokio::sync::mpsc;
    /// use tower::discover::Change;
    /// use tower_reuse_affinity::{AffinityConfig, AffinityLayer};
    ///
    /// /// A registry's watch: changes arrive on a channel.
    /// struct Watch(mpsc::UnboundedReceiver<Change<String, SocketAddr>>);
    ///
    /// impl futures_core::Stream for Watch {
    ///     type Item = Result<Change<String, SocketAddr>, Infallible>;
    ///     fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
    ///         self.0.poll_recv(cx).map(|change| change.map(Ok))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let layer = AffinityLayer::new(AffinityConfig::default()).unwrap();
    /// let endpoints = layer.endpoints();
    /// let (tx, rx) = mpsc::unbounded_channel();
    /// let feed = endpoints.discover("http://svc.internal:8080", Watch(rx)).unwrap();
    /// let a: SocketAddr = "127.0.0.2:8080".parse().unwrap();
    /// tx.send(Change::Insert("pod-a".to_owned(), a)).unwrap();
    /// tx.send(Change::Insert("pod-b".to_owned(), "127.0.0.3:8080".parse().unwrap())).unwrap();
    /// tx.send(Change::Remove("pod-b".to_owned())).unwrap();
    /// drop(tx);
    /// feed.await.unwrap(); // in a service: tokio::spawn(feed)
    /// assert_eq!(endpoints.get("http://svc.internal:8080").unwrap(), vec![a]);
    /// # }
    /// ```
    pub fn discover<D>(
        &self,
        service: &str,
        discover: D,
    ) -> Result<impl Future<Output = Result<(), D::Error>> + Send + 'static, Error>
    where
        D: Discover<Service = SocketAddr> + Send + 'static,
        D::Key: Hash + Eq + Send,
    {
        self.ensure(service)?;
        let endpoints = self.clone();
        let service = service.to_owned();
        Ok(async move {
            let mut discover = pin!(discover);
            let mut named: HashMap<D::Key, SocketAddr> = HashMap::new();
            loop {
                // Every change ready now, applied as one: a registry's
                // first answer of a thousand endpoints is one change.
                let (batch, ended) = poll_fn(|cx| {
                    let mut batch = Vec::new();
                    loop {
                        match discover.as_mut().poll_discover(cx) {
                            Poll::Ready(Some(change)) => batch.push(change),
                            Poll::Ready(None) => return Poll::Ready((batch, true)),
                            Poll::Pending if batch.is_empty() => return Poll::Pending,
                            Poll::Pending => return Poll::Ready((batch, false)),
                        }
                    }
                })
                .await;
                let mut failed = None;
                for change in batch {
                    match change {
                        Ok(Change::Insert(key, addr)) => {
                            named.insert(key, addr);
                        }
                        Ok(Change::Remove(key)) => {
                            named.remove(&key);
                        }
                        Err(error) => {
                            failed = Some(error);
                            break;
                        }
                    }
                }
                // The service name was checked above; the set is what the
                // keys name now (an address named by two keys stays while
                // one of them does).
                let _ = endpoints.change(&service, |mut addrs| {
                    let named: HashSet<SocketAddr> = named.values().copied().collect();
                    addrs.retain(|a| named.contains(a));
                    addrs.extend(named);
                    addrs
                });
                if let Some(error) = failed {
                    return Err(error);
                }
                if ended {
                    return Ok(());
                }
            }
        })
    }
}
