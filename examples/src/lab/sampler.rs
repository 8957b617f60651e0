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
    idle: IdleIntegral,
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
        self.idle.add(sample);
        // Past the cap only the integral goes on (and the window's last
        // sample, taken by `finish`).
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample);
        } else if let Some(last) = self.samples.last_mut() {
            *last = sample;
        }
    }
}

/// The idle socket-seconds of a trace of samples, added up as they come:
/// each sample's idle count held until the next (the count is a step
/// function, sampled), from the first sample to the last.
#[derive(Debug, Default)]
struct IdleIntegral {
    last: Option<OpenSample>,
    seconds: f64,
}

impl IdleIntegral {
    fn add(&mut self, sample: OpenSample) {
        if let Some(last) = self.last {
            self.seconds += last.idle as f64 * (sample.at_s - last.at_s).max(0.0);
        }
        self.last = Some(sample);
    }
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
            idle: IdleIntegral::default(),
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
        (state.idle.seconds, state.samples.clone())
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
        let mut integral = IdleIntegral::default();
        integral.add(trace[0]);
        assert_eq!(integral.seconds, 0.0, "one sample spans no time");
        for sample in &trace[1..] {
            integral.add(*sample);
        }
        assert_eq!(integral.seconds, 2.5);
    }
}
