//! Feeding a service's endpoints from a `tower::discover::Discover` stream.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::net::SocketAddr;
use std::pin::pin;

use tower::discover::{Change, Discover};

use crate::error::Error;
use crate::registry::Endpoints;

impl Endpoints {
    /// Apply `discover`'s changes to `service` (whose endpoints it replaces,
    /// starting from none), for as long as the stream runs: spawn the
    /// future it returns. Each `Change::Insert(key, address)` adds an
    /// endpoint (a key inserted again moves to its new address), each
    /// `Change::Remove(key)` removes its address unless another key still
    /// names it. The future ends with the stream, or with its first error.
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
        self.set(service, [])?;
        let endpoints = self.clone();
        let service = service.to_owned();
        Ok(async move {
            let mut discover = pin!(discover);
            let mut named: HashMap<D::Key, SocketAddr> = HashMap::new();
            while let Some(change) = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await {
                // The service name was checked by `set` above.
                let _ = match change? {
                    Change::Insert(key, addr) => {
                        let old = named.insert(key, addr);
                        let result = endpoints.insert(&service, addr);
                        match old {
                            Some(old) if old != addr && !named.values().any(|&a| a == old) => {
                                endpoints.remove(&service, old)
                            }
                            _ => result,
                        }
                    }
                    Change::Remove(key) => match named.remove(&key) {
                        Some(old) if !named.values().any(|&a| a == old) => {
                            endpoints.remove(&service, old)
                        }
                        _ => Ok(()),
                    },
                };
            }
            Ok(())
        })
    }
}
