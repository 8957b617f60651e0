//! Opening connections: the connector, the HTTP handshake, and the task that
//! drives each connection and reports its end.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use http::Uri;
use http_body::Body;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::conn::{ConnId, Http1Conn, Lifecycle, Protocol};
use crate::error::{BoxError, Error};
use crate::events::{ConnectFailed, ConnectReason, ConnectStarted, Connected};
use crate::target_pool::{Dial, Grant, Granted, Http2Parts, Lease, TargetPool};

/// Opens connections for a pool with a connector `C`.
#[derive(Debug)]
pub(crate) struct Dialer<C> {
    pub(crate) connector: C,
}

impl<C, B> Dial<B> for Dialer<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn dial(&self, pool: Arc<TargetPool<B>>, reason: ConnectReason, direct: Option<Grant<B>>) {
        pool.common.events.on_connect_start(&ConnectStarted {
            target: &pool.target,
            reason,
        });
        let connector = self.connector.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let config = pool.config();
            let opened = match config.connect_timeout {
                Some(limit) => tokio::time::timeout(limit, open(connector, &pool, &config))
                    .await
                    .unwrap_or_else(|_| Err(Error::connect_timeout(&pool.target, limit))),
                None => open(connector, &pool, &config).await,
            };
            let duration = start.elapsed();
            match opened {
                Ok((id, opened)) => {
                    let protocol = opened.protocol();
                    #[cfg(feature = "tracing")]
                    tracing::debug!(target = %pool.target, %id, ?protocol, ?duration, "connected");
                    pool.common.events.on_connect(&Connected {
                        target: &pool.target,
                        id,
                        protocol,
                        reason,
                        duration,
                    });
                    let life = Lifecycle::established(
                        id,
                        protocol,
                        Instant::now(),
                        &config,
                        reason == ConnectReason::Prewarm,
                    );
                    match direct {
                        Some(grant) => {
                            pool.dedicated_done(true);
                            let lease = match opened {
                                Opened::Http1(tx) => Lease::Http1(Http1Conn { tx, life }),
                                Opened::Http2(tx, _) => Lease::Dedicated2 { tx, life },
                            };
                            let mut granted = Granted::fresh(lease, protocol);
                            granted.dedicated = true;
                            if let Err(Ok(granted)) = grant.send(Ok(granted)) {
                                pool.release_dedicated(granted.lease);
                            }
                        }
                        None => pool.connected(opened, life, reason),
                    }
                }
                Err(error) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(target = %pool.target, %error, "connect failed");
                    pool.common.events.on_connect_error(&ConnectFailed {
                        target: &pool.target,
                        reason,
                        duration,
                        error: error.clone(),
                    });
                    match direct {
                        Some(grant) => {
                            pool.dedicated_done(false);
                            let _ = grant.send(Err(error));
                        }
                        None => pool.connect_failed(reason, &error),
                    }
                }
            }
        });
    }
}

/// The stream limit assumed until the server's SETTINGS arrive. A connection
/// whose limit still reads this has not been heard from (or the server chose
/// this very value): it carries one stream until its first response.
const ASSUMED_MAX_STREAMS: usize = 100;

/// A connection just opened, before the pool gives it a lifecycle.
#[derive(Debug)]
pub(crate) enum Opened<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>, Http2Parts),
}

impl<B> Opened<B> {
    fn protocol(&self) -> Protocol {
        match self {
            Opened::Http1(_) => Protocol::Http1,
            Opened::Http2(..) => Protocol::Http2,
        }
    }
}

/// Connector, then HTTP/1.1 or HTTP/2 handshake; spawns the connection task.
async fn open<C, B>(
    mut connector: C,
    pool: &Arc<TargetPool<B>>,
    config: &PoolConfig,
) -> Result<(ConnId, Opened<B>), Error>
where
    C: Service<Uri> + Send + 'static,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let target = &pool.target;
    poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| Error::connect(target, e))?;
    let io = connector
        .call(pool.connect_uri.clone())
        .await
        .map_err(|e| Error::connect(target, e))?;
    let h2 = config.http2_prior_knowledge || io.connected().is_negotiated_h2();
    let id = pool.common.next_id();
    let weak = Arc::downgrade(pool);
    if h2 {
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_max_send_streams(ASSUMED_MAX_STREAMS)
            .handshake(io)
            .await
            .map_err(|e| Error::handshake(target, e))?;
        // The server's SETTINGS may already have been read.
        let now = conn.current_max_send_streams();
        let parts = Http2Parts {
            max_streams: Arc::new(AtomicUsize::new(now)),
            settled: Arc::new(AtomicBool::new(now != ASSUMED_MAX_STREAMS)),
        };
        tokio::spawn(drive_h2(
            Box::pin(conn),
            parts.max_streams.clone(),
            parts.settled.clone(),
            weak,
            id,
        ));
        Ok((id, Opened::Http2(tx, parts)))
    } else {
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| Error::handshake(target, e))?;
        tokio::spawn(async move {
            let result = conn.await;
            if let Some(pool) = weak.upgrade() {
                pool.connection_ended(id, result.is_ok());
            }
        });
        Ok((id, Opened::Http1(tx)))
    }
}

/// Drives an HTTP/2 connection, keeping the server's stream limit current
/// for the pool and telling it when the limit changes and when the
/// connection ends. Holds the pool weakly: a dropped pool closes its
/// connections.
async fn drive_h2<F, B>(
    mut conn: Pin<Box<F>>,
    max_streams: Arc<AtomicUsize>,
    settled: Arc<AtomicBool>,
    pool: Weak<TargetPool<B>>,
    id: ConnId,
) where
    F: Future<Output = hyper::Result<()>> + MaxStreams,
    B: Send + 'static,
{
    let mut last = ASSUMED_MAX_STREAMS;
    let result = poll_fn(|cx| {
        let polled = conn.as_mut().poll(cx);
        let now = conn.max_send_streams();
        if now != last {
            last = now;
            max_streams.store(now, Ordering::Release);
            settled.store(true, Ordering::Release);
            if let Some(pool) = pool.upgrade() {
                pool.h2_capacity_changed(now);
            }
        }
        polled
    })
    .await;
    if let Some(pool) = pool.upgrade() {
        pool.connection_ended(id, result.is_ok());
    }
}

/// Reads an HTTP/2 connection's current `SETTINGS_MAX_CONCURRENT_STREAMS`.
pub(crate) trait MaxStreams {
    fn max_send_streams(&self) -> usize;
}

impl<T, B> MaxStreams for http2::Connection<T, B, TokioExecutor>
where
    T: Read + Write + Unpin + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn max_send_streams(&self) -> usize {
        self.current_max_send_streams()
    }
}
