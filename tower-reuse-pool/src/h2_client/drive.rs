//! The task that drives one HTTP/2 connection: the server's stream limit,
//! the end of new streams after a GOAWAY, keep-alive PINGs, and writes
//! batched while requests come from several tasks.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::Connection;
use h2::{Ping, PingPong};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::H2Sender;

/// How the connection's task reports to the pool.
pub(crate) trait ConnectionEvents: Send + 'static {
    /// The server's stream limit is now `limit`.
    fn limit_changed(&mut self, limit: usize);
    /// The connection takes no new stream: `graceful` after a GOAWAY with
    /// `NO_ERROR`, `calm` after `ENHANCE_YOUR_CALM`. Called once.
    fn closed(&mut self, graceful: bool, calm: bool);
}

/// Drives the connection until it ends: reads the server's stream limit
/// after each step, marks the sender closed (and tells `events`) once the
/// connection takes no new stream, and sends a PING every `ping_every`,
/// closing the connection when one is not answered within that time.
pub(crate) async fn drive<T, E>(
    mut conn: Connection<T, Bytes>,
    sender: H2Sender,
    mut senders_gone: oneshot::Receiver<()>,
    ping_every: Option<Duration>,
    mut events: E,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    E: ConnectionEvents,
{
    let mut keep_alive = ping_every.and_then(|every| {
        conn.ping_pong()
            .map(|ping_pong| KeepAlive::new(ping_pong, every))
    });
    let mut last_limit = conn.max_concurrent_send_streams();
    // A handle of the task's own, to see when the connection takes no new
    // stream; dropped once the pool's senders are all gone, so that the
    // connection can close.
    let shared = Arc::downgrade(&sender.0);
    let mut probe = Some(sender.0.send.clone());
    let sending = sender.0.sending.clone();
    drop(sender);
    let mut open = true;
    let mut step = |cx: &mut Context<'_>| {
        if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
            return Step::Ended(result.map_err(Some));
        }
        if let Some(keep_alive) = &mut keep_alive
            && keep_alive.poll_timed_out(cx)
        {
            // Dropping the connection fails its streams.
            if let Some(shared) = shared.upgrade() {
                shared.ping_timed_out.store(true, Ordering::Release);
            }
            return Step::Ended(Err(None));
        }
        let limit = conn.max_concurrent_send_streams();
        if limit != last_limit {
            last_limit = limit;
            events.limit_changed(limit);
        }
        if probe.is_some() && Pin::new(&mut senders_gone).poll(cx).is_ready() {
            probe = None;
        }
        if open
            && let Some(probe) = &mut probe
            && let Poll::Ready(Err(error)) =
                probe.poll_ready(&mut Context::from_waker(Waker::noop()))
        {
            open = false;
            if let Some(shared) = shared.upgrade() {
                shared.closed.store(true, Ordering::Release);
            }
            events.closed(is_graceful(&error), is_calm(&error));
        }
        // With other requests on their way, more are likely to come from
        // other tasks.
        Step::Pending {
            busy: sending.load(Ordering::Relaxed) > 1,
        }
    };
    let ended = loop {
        let busy = match poll_fn(|cx| Poll::Ready(step(cx))).await {
            Step::Ended(ended) => break ended,
            Step::Pending { busy } => busy,
        };
        woken().await;
        if busy {
            // Let the tasks already scheduled run before this one writes:
            // the requests they send go out together. Run at once (woken
            // by each request's stream, it runs next), the task would
            // write each request on its own.
            tokio::task::yield_now().await;
        }
    };
    // Dropped before the pool hears of it: the streams left fail now.
    drop(conn);
    if let Some(shared) = shared.upgrade() {
        shared.closed.store(true, Ordering::Release);
    }
    if open {
        let (graceful, calm) = match &ended {
            Ok(()) => (true, false),
            Err(Some(error)) => (is_graceful(error), is_calm(error)),
            // The keep-alive PING went unanswered.
            Err(None) => (false, false),
        };
        events.closed(graceful, calm);
    }
}

/// One poll of a connection's task: its end (`Err(None)`: the keep-alive
/// PING went unanswered), or whether requests are being sent at once.
enum Step {
    Ended(Result<(), Option<h2::Error>>),
    Pending { busy: bool },
}

/// Pending once, then ready: completes when the task is next polled, i.e.
/// woken by whatever its last poll registered with.
fn woken() -> impl Future<Output = ()> {
    let mut first = true;
    poll_fn(move |_| {
        if std::mem::take(&mut first) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
}

/// Whether an HTTP/2 error is a graceful GOAWAY (`NO_ERROR`).
pub(crate) fn is_graceful(error: &h2::Error) -> bool {
    error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR)
}

/// Whether an HTTP/2 error carries `ENHANCE_YOUR_CALM` (on a stream, or in
/// the GOAWAY that ended the connection).
pub(crate) fn is_calm(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
}

/// A PING every interval; the connection is over when one goes unanswered
/// for an interval.
struct KeepAlive {
    ping_pong: PingPong,
    every: Duration,
    /// The next PING when none is out; the deadline of its PONG when one is.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl KeepAlive {
    fn new(ping_pong: PingPong, every: Duration) -> KeepAlive {
        KeepAlive {
            ping_pong,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            waiting: false,
        }
    }

    /// Sends PINGs as due; true once one went unanswered too long.
    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.waiting {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + self.every);
                        continue;
                    }
                    // The connection failed: its own poll says how.
                    Poll::Ready(Err(_)) => return false,
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx).is_ready();
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.ping_pong.send_ping(Ping::opaque()).is_err() {
                return false;
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + self.every);
        }
    }
}
