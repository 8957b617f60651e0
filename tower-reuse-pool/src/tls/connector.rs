//! [`TlsLayer`] and the [`TlsConnector`] it builds: rustls over any
//! transport [`Connect`], one session store per [`Partition`], handshake
//! facts for the pool, scheduled key updates and a maximum age.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tower_layer::Layer;

use super::io::{KeyUpdate, TlsIo};
use super::{SessionCache, TlsError};
use crate::conn::TlsHandshake;
use crate::connect::{Connect, ConnectError, Established};
use crate::endpoint::Endpoint;
use crate::target::{Partition, Target};

/// Configures TLS and builds a [`TlsConnector`] over a transport connector.
///
/// ```
/// # use std::sync::Arc;
/// use hyper_util::client::legacy::connect::HttpConnector;
/// use tower::ServiceBuilder;
/// use tower_reuse_pool::tls::TlsLayer;
/// use tower_reuse_pool::{PoolConfig, PoolLayer};
///
/// # fn demo(config: Arc<rustls::ClientConfig>) -> Result<(), Box<dyn std::error::Error>> {
/// // `config` is yours: roots, crypto provider, client certificate.
/// let client = ServiceBuilder::new()
///     .layer(PoolLayer::new(PoolConfig::default())?)
///     .layer(TlsLayer::new(config))
///     .service(HttpConnector::new());
/// # let _: tower_reuse_pool::Pool<tower_reuse_pool::tls::TlsConnector<HttpConnector>> = client;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsLayer {
    tls: Arc<Shared>,
}

/// What every clone of a connector shares.
struct Shared {
    base: Arc<ClientConfig>,
    partitions: HashMap<Partition, Arc<ClientConfig>>,
    cache: Option<SessionCache>,
    handshake_timeout: Option<Duration>,
    key_update_interval: Option<Duration>,
    max_age: Option<Duration>,
    /// The configurations in use, per partition, with the partition's
    /// session store and the ALPN default applied.
    derived: Mutex<HashMap<Scope, Arc<ClientConfig>>>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    full: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    key_updates: Arc<AtomicU64>,
}

/// At most this many derived configurations are kept; beyond it they are
/// rebuilt on demand (one clone of a `ClientConfig`).
const MAX_DERIVED: usize = 1024;

impl TlsLayer {
    /// TLS with the caller's rustls configuration: its roots, verifier,
    /// crypto provider and client identity are used as they are. If it
    /// offers no ALPN protocols, the connector offers `h2` and `http/1.1`.
    /// Resumption goes through a [`SessionCache`] with default bounds
    /// (see [`session_cache`](Self::session_cache)): the configuration's
    /// own `resumption` store is replaced (and so is a partition
    /// configuration's), unless the cache is turned off.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        TlsLayer {
            tls: Arc::new(Shared {
                base: config,
                partitions: HashMap::new(),
                cache: Some(SessionCache::default()),
                handshake_timeout: Some(Duration::from_secs(5)),
                key_update_interval: None,
                max_age: None,
                derived: Mutex::new(HashMap::new()),
                stats: Counters::default(),
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        match Arc::get_mut(&mut self.tls) {
            Some(shared) => change(shared),
            None => {
                let old = &self.tls;
                let mut shared = Shared {
                    base: old.base.clone(),
                    partitions: old.partitions.clone(),
                    cache: old.cache.clone(),
                    handshake_timeout: old.handshake_timeout,
                    key_update_interval: old.key_update_interval,
                    max_age: old.max_age,
                    derived: Mutex::new(HashMap::new()),
                    stats: Counters::default(),
                };
                change(&mut shared);
                self.tls = Arc::new(shared);
            }
        }
        self.tls
            .derived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self
    }

    /// The session store for resumption, shared by every connection of
    /// every connector built from this layer, one scope per partition (and
    /// per endpoint, for targets with one: each server behind a name gets
    /// back only the tickets it issued).
    /// Pass a clone of a cache to share it with other layers or to adjust
    /// its bounds at run time. `None` leaves resumption to the
    /// configuration as given for unpartitioned targets and turns it off
    /// for partitioned ones (a shared store would link their sessions).
    #[must_use]
    pub fn session_cache(self, cache: Option<SessionCache>) -> Self {
        self.edit(|tls| tls.cache = cache)
    }

    /// Use `config` (a client certificate for mutual TLS, other roots) for
    /// the connections of `partition`, and no other.
    #[must_use]
    pub fn partition_config(self, partition: Partition, config: Arc<ClientConfig>) -> Self {
        self.edit(|tls| {
            tls.partitions.insert(partition, config);
        })
    }

    /// Give up on a handshake after this long, with
    /// [`TlsErrorKind::Timeout`](super::TlsErrorKind::Timeout). Default 5 s:
    /// shorter than the pool's default `connect_timeout` (10 s, which covers
    /// TCP, TLS and HTTP handshakes together), so that a stalled handshake
    /// is reported as one. `None`: the pool's `connect_timeout` alone.
    #[must_use]
    pub fn handshake_timeout(self, timeout: Option<Duration>) -> Self {
        self.edit(|tls| tls.handshake_timeout = timeout)
    }

    /// Refresh the traffic keys of every open TLS 1.3 connection this
    /// often, with a KeyUpdate message (no reconnect). A connection that
    /// sent nothing since its last update is skipped: peers such as rustls
    /// and BoringSSL close a connection after 32 KeyUpdates with no data
    /// between them. Default off: rustls already updates keys before a
    /// cipher's confidentiality limit.
    #[must_use]
    pub fn key_update_interval(self, every: Option<Duration>) -> Self {
        self.edit(|tls| tls.key_update_interval = every)
    }

    /// Retire encrypted connections at this age: the pool connects a
    /// replacement, then drains the old connection (as for its
    /// `max_lifetime`, whichever comes first). Default: no limit.
    #[must_use]
    pub fn max_age(self, age: Option<Duration>) -> Self {
        self.edit(|tls| tls.max_age = age)
    }
}

impl fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tls.fmt(f)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("partition_configs", &self.partitions.len())
            .field("session_cache", &self.cache)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_update_interval", &self.key_update_interval)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<C> Layer<C> for TlsLayer {
    type Service = TlsConnector<C>;

    fn layer(&self, inner: C) -> TlsConnector<C> {
        TlsConnector {
            inner,
            tls: self.tls.clone(),
        }
    }
}

/// rustls over a transport connector `C` (hyper-util's `HttpConnector`, or
/// any [`Connect`]); built by [`TlsLayer`]. `https` targets get TLS over the
/// transport to [`Target::transport`] (plain `http`, same host, port and
/// partition); `http` targets the transport as it is.
///
/// Each [`Partition`] resumes only its own sessions and uses its own
/// configuration if one was given; the handshake kind of every connection
/// reaches the pool (metadata, events, [`ConnectionInfo`](crate::ConnectionInfo)).
#[derive(Clone)]
pub struct TlsConnector<C> {
    inner: C,
    tls: Arc<Shared>,
}

impl<C> fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tls.fmt(f)
    }
}

/// Counts kept by a [`TlsConnector`] and its clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Full handshakes (with or without a HelloRetryRequest).
    pub full: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Handshakes that failed or timed out.
    pub failed: u64,
    /// Key updates sent on open connections.
    pub key_updates: u64,
}

impl<C> TlsConnector<C> {
    /// TLS over `inner` with `config` and the defaults of [`TlsLayer::new`].
    pub fn new(inner: C, config: Arc<ClientConfig>) -> Self {
        TlsLayer::new(config).layer(inner)
    }

    /// Handshake and key update counts so far.
    pub fn stats(&self) -> TlsStats {
        let counters = &self.tls.stats;
        TlsStats {
            full: counters.full.load(Ordering::Relaxed),
            resumed: counters.resumed.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            key_updates: counters.key_updates.load(Ordering::Relaxed),
        }
    }

    /// The session cache, if resumption goes through one.
    pub fn session_cache(&self) -> Option<&SessionCache> {
        self.tls.cache.as_ref()
    }
}

impl Shared {
    /// The configuration for `partition`'s connections to `endpoint`: with
    /// a session cache, each endpoint of a name resumes only its own
    /// sessions (a ticket goes back to the server that issued it).
    fn config_for(
        &self,
        partition: Option<&Partition>,
        endpoint: Option<Endpoint>,
    ) -> Arc<ClientConfig> {
        let mut derived = self.derived.lock().unwrap_or_else(|e| e.into_inner());
        let key = (partition.cloned(), endpoint);
        if let Some(config) = derived.get(&key) {
            return config.clone();
        }
        let base = partition
            .and_then(|p| self.partitions.get(p))
            .unwrap_or(&self.base);
        let mut config = ClientConfig::clone(base);
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        match (&self.cache, partition) {
            (Some(cache), _) => {
                config.resumption = Resumption::store(cache.store_at(partition, endpoint))
            }
            (None, Some(_)) => config.resumption = Resumption::disabled(),
            (None, None) => {}
        }
        let config = Arc::new(config);
        if derived.len() >= MAX_DERIVED {
            derived.clear();
        }
        derived.insert(key, config.clone());
        config
    }
}

/// Whose connections a derived configuration is for.
type Scope = (Option<Partition>, Option<Endpoint>);

/// The server name to verify: the target's host, without IPv6 brackets.
fn server_name(target: &Target) -> Result<ServerName<'static>, TlsError> {
    let host = target.authority().host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|e| TlsError::invalid_server_name(host, e))
}

impl<C: Connect> Connect for TlsConnector<C> {
    type Io = TlsIo<C::Io>;
    type Future = Pin<Box<dyn Future<Output = Result<Established<Self::Io>, ConnectError>> + Send>>;

    fn connect(&self, target: &Target) -> Self::Future {
        let transport = self.inner.connect(&target.transport());
        if !target.is_https() {
            return Box::pin(async move { Ok(transport.await?.map_io(TlsIo::plain)) });
        }
        let tls = self.tls.clone();
        let server = server_name(target);
        let config = tls.config_for(target.partition(), target.endpoint());
        Box::pin(async move {
            let server = server.map_err(ConnectError::tls)?;
            let established = transport.await?;
            let result = handshake(&tls, config, server, established).await;
            if result.is_err() {
                tls.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            result.map_err(ConnectError::tls)
        })
    }
}

/// The TLS handshake over an established transport, and what it tells the pool.
async fn handshake<Io>(
    tls: &Shared,
    config: Arc<ClientConfig>,
    server: ServerName<'static>,
    transport: Established<Io>,
) -> Result<Established<TlsIo<Io>>, TlsError>
where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let name = server.to_str().into_owned();
    let offered_http1 = config.alpn_protocols.iter().any(|p| p == b"http/1.1");
    let transport_age = transport.max_age;
    let connecting =
        tokio_rustls::TlsConnector::from(config).connect(server, TokioIo::new(transport.io));
    let started = tokio::time::Instant::now();
    let stream = match tls.handshake_timeout {
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| TlsError::timeout(&name, limit))?,
        None => connecting.await,
    }
    .map_err(|e| TlsError::handshake(&name, e))?;
    let took = started.elapsed();
    let session = stream.get_ref().1;
    // The configuration always offers ALPN (see `config_for`).
    let h2 = match session.alpn_protocol() {
        Some(b"h2") => true,
        Some(b"http/1.1") => false,
        None if offered_http1 => false,
        other => return Err(TlsError::alpn_mismatch(&name, other)),
    };
    let kind = match session.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => {
            tls.stats.resumed.fetch_add(1, Ordering::Relaxed);
            TlsHandshake::Resumed
        }
        Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => {
            tls.stats.full.fetch_add(1, Ordering::Relaxed);
            TlsHandshake::FullWithRetry
        }
        _ => {
            tls.stats.full.fetch_add(1, Ordering::Relaxed);
            TlsHandshake::Full
        }
    };
    let key_update = tls
        .key_update_interval
        .map(|every| KeyUpdate::new(every, tls.stats.key_updates.clone()));
    let mut established = Established::new(TlsIo::encrypted(stream, key_update))
        .negotiated_h2(h2)
        .tls(kind)
        .tls_time(took);
    established.max_age = match (transport_age, tls.max_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(established)
}
