//! Samples open connections (the server's count when embedded, the
//! client's with `--target`) and the lab's requests in flight during a run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::driver::Progress;
use crate::server::{OpenSample, ServerStats};
use crate::stacks::ClientStats;

/// Where the open-connection count comes from.
#[derive(Clone, Debug)]
pub(super) enum OpenCount {
    /// The embedded server's count.
    Server(ServerStats),
    /// The client connector's count.
    Client(ClientStats),
}

impl OpenCount {
    fn get(&self) -> u64 {
        match self {
            OpenCount::Server(stats) => stats.open(),
            OpenCount::Client(stats) => stats.open(),
        }
    }
}

const EVERY: Duration = Duration::from_millis(25);
const MAX_SAMPLES: usize = 200_000;

#[derive(Debug)]
struct State {
    started: Instant,
    samples: Vec<OpenSample>,
    /// The integral up to the last sample.
    idle_seconds: f64,
    progress: Arc<Progress>,
}

impl State {
    /// Takes a sample now, adding the last one's idle count over the time
    /// since to the integral.
    fn sample(&mut self, open: &OpenCount) {
        let at_s = self.started.elapsed().as_secs_f64();
        let open = open.get();
        let idle = open.saturating_sub(self.progress.in_flight());
        let sample = OpenSample { at_s, open, idle };
        if let Some(last) = self.samples.last() {
            self.idle_seconds += idle_between(last, &sample);
        }
        // Past the cap only the integral goes on (and the window's last
        // sample, taken by `finish`).
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample);
        } else if let Some(last) = self.samples.last_mut() {
            *last = sample;
        }
    }
}

/// Idle socket-seconds between two samples: the earlier one's idle count
/// held until the later one (the count is a step function, sampled).
fn idle_between(earlier: &OpenSample, later: &OpenSample) -> f64 {
    earlier.idle as f64 * (later.at_s - earlier.at_s).max(0.0)
}

/// The idle socket-seconds of a trace of samples (the step integral the
/// sampler adds up as it goes), from its first sample to its last.
#[cfg(test)]
fn idle_socket_seconds(samples: &[OpenSample]) -> f64 {
    samples.windows(2).map(|w| idle_between(&w[0], &w[1])).sum()
}

/// Samples open connections and requests in flight every 25 ms, from
/// [`ClientSampler::start`] to [`ClientSampler::finish`], both ends
/// included. Idle sockets are open connections minus requests in flight
/// (at least 0): the connections beyond what the load needs at that
/// moment. For HTTP/1 this is the number of connections with no request on
/// them; for HTTP/2 a lower bound.
#[derive(Debug)]
pub(super) struct ClientSampler {
    open: OpenCount,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientSampler {
    pub(super) fn start(open: OpenCount, progress: Arc<Progress>) -> Self {
        let mut state = State {
            started: Instant::now(),
            samples: Vec::new(),
            idle_seconds: 0.0,
            progress,
        };
        state.sample(&open);
        let state = Arc::new(Mutex::new(state));
        let task = tokio::spawn(sample(open.clone(), state.clone()));
        Self { open, state, task }
    }

    /// Stops sampling after one last sample, so the window ends now;
    /// returns the idle-socket integral over the window and the samples
    /// (seconds from its start).
    pub(super) fn finish(&self) -> (f64, Vec<OpenSample>) {
        self.task.abort();
        let mut state = self.lock();
        state.sample(&self.open);
        (state.idle_seconds, state.samples.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ClientSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn sample(open: OpenCount, state: Arc<Mutex<State>>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: `start` took that sample.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(&open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: f64, open: u64, idle: u64) -> OpenSample {
        OpenSample { at_s, open, idle }
    }

    /// Two connections idle for 1 s, then busy for 2 s, then one of them
    /// idle for half a second before both close: 2 + 0 + 0.5.
    #[test]
    fn idle_seconds_are_the_step_integral_of_a_trace() {
        let trace = [
            at(0.0, 2, 2),
            at(1.0, 2, 0),
            at(3.0, 2, 1),
            at(3.5, 0, 0),
            at(5.0, 0, 0),
        ];
        assert_eq!(idle_socket_seconds(&trace), 2.5);
        assert_eq!(idle_socket_seconds(&trace[..1]), 0.0);
    }

    /// The sampler's running figure is the trace's integral, its window
    /// closed by `finish`.
    #[tokio::test(start_paused = true)]
    async fn the_sampler_integrates_what_it_samples() {
        let stats = ClientStats::default();
        let progress = Progress::new();
        let sampler = ClientSampler::start(OpenCount::Client(stats), progress);
        tokio::time::sleep(Duration::from_millis(110)).await;
        let (idle, samples) = sampler.finish();
        assert_eq!(idle, idle_socket_seconds(&samples));
        let last = samples.last().expect("a sample at finish");
        assert!((last.at_s - 0.110).abs() < 1e-9, "{samples:?}");
    }
}
