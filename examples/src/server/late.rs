//! An h2c connection whose stream slots are freed late
//! ([`ServerConfig::h2_late_release`](super::ServerConfig::h2_late_release)):
//! served with the `h2` crate's server, which can refuse a stream
//! (`REFUSED_STREAM`), as hyper's cannot from a handler. The server
//! advertises its limit; its own count of busy slots, which keeps a slot
//! busy for a while after the stream has ended, decides the refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use h2::Reason;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::ServerStats;
use super::conn::{Settings, X_REQUEST_ID};

/// The busy slots and requests in flight of one connection.
#[derive(Default)]
struct Slots {
    busy: AtomicUsize,
    in_flight: AtomicU32,
}

/// Serve one h2c connection until it ends or the server shuts down.
pub(crate) async fn serve<IO>(
    io: IO,
    stats: ServerStats,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some((limit, release)) = settings.late_release else {
        return;
    };
    stats.connection_opened();
    let mut requests = 0;
    let slots = Arc::new(Slots::default());
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(limit)
        .handshake::<_, Bytes>(io)
        .await;
    if let Ok(mut connection) = handshake {
        let mut closing = false;
        loop {
            let accepted = tokio::select! {
                accepted = connection.accept() => accepted,
                _ = shutdown.changed(), if !closing => {
                    closing = true;
                    connection.graceful_shutdown();
                    continue;
                }
            };
            let Some(Ok((request, mut respond))) = accepted else {
                break;
            };
            if slots.busy.load(Relaxed) >= limit as usize {
                respond.send_reset(Reason::REFUSED_STREAM);
                stats.stream_refused();
                continue;
            }
            slots.busy.fetch_add(1, Relaxed);
            requests += 1;
            if slots.in_flight.fetch_add(1, Relaxed) == 0 {
                stats.connection_busy();
            }
            let (stats, settings, slots) = (stats.clone(), settings.clone(), slots.clone());
            let nth = requests;
            tokio::spawn(async move {
                answer(request, &mut respond, &settings).await;
                stats.request_served(nth);
                if slots.in_flight.fetch_sub(1, Relaxed) == 1 {
                    stats.connection_idle();
                }
                tokio::time::sleep(release).await;
                slots.busy.fetch_sub(1, Relaxed);
            });
        }
    }
    stats.connection_closed(requests, slots.in_flight.load(Relaxed) == 0);
}

/// Read the request's body, wait the configured latency, answer 200 with
/// the configured body, echoing `x-request-id`.
async fn answer(
    request: Request<h2::RecvStream>,
    respond: &mut h2::server::SendResponse<Bytes>,
    settings: &Settings,
) {
    let (parts, mut body) = request.into_parts();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(latency) = settings.latency {
        tokio::time::sleep(latency).await;
    }
    let mut response = Response::new(());
    if let Some(id) = parts.headers.get(X_REQUEST_ID) {
        response.headers_mut().insert(X_REQUEST_ID, id.clone());
    }
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(settings.body.clone(), true);
    }
}
