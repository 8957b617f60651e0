//! Fault injection for the `chaos` scenarios: per request, with small
//! probabilities drawn from a seeded generator per connection, the server
//! closes or resets the connection instead of answering, stalls the
//! answer, or closes the connection gracefully after answering (GOAWAY on
//! HTTP/2, `Connection: close` on HTTP/1.1).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Which faults the server injects and how often. Probabilities are per
/// request, at most one fault per request; build with [`Chaos::default`]
/// (no faults) and the by-value setters.
///
/// ```
/// use std::time::Duration;
/// use tower_reuse_examples::server::{Chaos, ServerConfig};
///
/// let chaos = Chaos::default()
///     .close(0.005)
///     .reset(0.005)
///     .stall(0.005, Duration::from_millis(50), Duration::from_millis(200))
///     .goaway(0.005);
/// let config = ServerConfig::default().chaos(Some(chaos));
/// # let _ = config;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Chaos {
    close: f64,
    reset: f64,
    stall: f64,
    stall_min: Duration,
    stall_max: Duration,
    goaway: f64,
    seed: u64,
}

impl Default for Chaos {
    fn default() -> Self {
        Self {
            close: 0.0,
            reset: 0.0,
            stall: 0.0,
            stall_min: Duration::from_millis(50),
            stall_max: Duration::from_millis(200),
            goaway: 0.0,
            seed: 0x5EED,
        }
    }
}

impl Chaos {
    /// Read the request, then close the connection (FIN) without answering.
    /// On HTTP/2 every stream of the connection loses its answer. Defaults
    /// to 0.
    pub fn close(mut self, probability: f64) -> Self {
        self.close = probability.clamp(0.0, 1.0);
        self
    }

    /// Read the request, then reset the connection (`SO_LINGER` 0, then
    /// close: an RST) without answering. Defaults to 0.
    pub fn reset(mut self, probability: f64) -> Self {
        self.reset = probability.clamp(0.0, 1.0);
        self
    }

    /// Hold the answer for a time drawn uniformly from `min..=max`.
    /// Defaults to 0, 50 to 200 ms.
    pub fn stall(mut self, probability: f64, min: Duration, max: Duration) -> Self {
        self.stall = probability.clamp(0.0, 1.0);
        self.stall_min = min.min(max);
        self.stall_max = max.max(min);
        self
    }

    /// Answer, then close the connection gracefully: GOAWAY on HTTP/2
    /// (streams in flight still finish), `Connection: close` on HTTP/1.1.
    /// Defaults to 0.
    pub fn goaway(mut self, probability: f64) -> Self {
        self.goaway = probability.clamp(0.0, 1.0);
        self
    }

    /// The seed; connection `i` (in accept order) draws from `seed + i`, so
    /// the `n`-th draw of the `i`-th connection is the same in every run.
    /// Which request meets it is not: that depends on how many connections
    /// a client opens and how it spreads its requests over them. Defaults
    /// to `0x5EED`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The generator of connection `index`.
    pub(crate) fn generator(&self, index: u64) -> FaultGenerator {
        FaultGenerator {
            chaos: self.clone(),
            rng: Mutex::new(fastrand::Rng::with_seed(self.seed.wrapping_add(index))),
        }
    }
}

impl fmt::Display for Chaos {
    /// `close 0.5 %, reset 0.5 %, stall 0.5 % (50-200 ms), goaway 0.5 %`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "close {} %, reset {} %, stall {} % ({}-{} ms), goaway {} % of requests",
            percent(self.close),
            percent(self.reset),
            percent(self.stall),
            self.stall_min.as_millis(),
            self.stall_max.as_millis(),
            percent(self.goaway)
        )
    }
}

/// `p` in per cent, at most two decimals, no trailing zeros.
fn percent(p: f64) -> String {
    let text = format!("{:.2}", p * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Close,
    Reset,
    Stall(Duration),
    GoAway,
}

/// One connection's fault draws (a lock: HTTP/2 handlers run concurrently).
#[derive(Debug)]
pub(crate) struct FaultGenerator {
    chaos: Chaos,
    rng: Mutex<fastrand::Rng>,
}

impl FaultGenerator {
    /// The fault for the next request, if any.
    pub(crate) fn draw(&self) -> Option<Fault> {
        let c = &self.chaos;
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let mut u = rng.f64();
        for (p, fault) in [
            (c.close, Fault::Close),
            (c.reset, Fault::Reset),
            (c.goaway, Fault::GoAway),
        ] {
            if u < p {
                return Some(fault);
            }
            u -= p;
        }
        if u < c.stall {
            let span = c.stall_max - c.stall_min;
            return Some(Fault::Stall(c.stall_min + span.mul_f64(rng.f64())));
        }
        None
    }
}

/// The server's side of an accepted TCP connection: dropped with an RST
/// instead of a FIN once [`reset_on_drop`](Self::reset_on_drop)'s flag is
/// set (`SO_LINGER` 0 is set only then, so normal closes stay graceful).
#[derive(Debug)]
pub(crate) struct ServerStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ServerStream {
    pub(crate) fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            reset: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag that turns the close into a reset.
    pub(crate) fn reset_on_drop(&self) -> Arc<AtomicBool> {
        self.reset.clone()
    }
}

impl Drop for ServerStream {
    fn drop(&mut self) {
        if self.reset.load(Relaxed) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(chaos: &Chaos, index: u64, n: usize) -> Vec<Option<Fault>> {
        let generator = chaos.generator(index);
        (0..n).map(|_| generator.draw()).collect()
    }

    #[test]
    fn default_injects_nothing() {
        assert!(
            draws(&Chaos::default(), 0, 10_000)
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn same_seed_and_connection_draw_the_same_faults() {
        let chaos = Chaos::default().close(0.1).reset(0.1).goaway(0.1).stall(
            0.1,
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        assert_eq!(draws(&chaos, 3, 1_000), draws(&chaos, 3, 1_000));
        assert_ne!(draws(&chaos, 3, 1_000), draws(&chaos, 4, 1_000));
    }

    #[test]
    fn draws_each_fault_near_its_probability() {
        let chaos = Chaos::default().close(0.01).reset(0.02).goaway(0.03).stall(
            0.04,
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        let all = draws(&chaos, 0, 100_000);
        let count = |f: fn(&Fault) -> bool| all.iter().flatten().filter(|x| f(x)).count();
        let near = |n: usize, p: f64| (n as f64 - p * 100_000.0).abs() < p * 100_000.0 * 0.15;
        assert!(near(count(|f| *f == Fault::Close), 0.01));
        assert!(near(count(|f| *f == Fault::Reset), 0.02));
        assert!(near(count(|f| *f == Fault::GoAway), 0.03));
        assert!(near(count(|f| matches!(f, Fault::Stall(_))), 0.04));
        assert!(all.iter().flatten().all(|f| match f {
            Fault::Stall(d) => (Duration::from_millis(50)..=Duration::from_millis(200)).contains(d),
            _ => true,
        }));
    }
}
