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

#[derive(Debug, Default)]
struct State {
    samples: Vec<OpenSample>,
    idle_seconds: f64,
    progress: Option<Arc<Progress>>,
}

/// Samples open connections and requests in flight every 25 ms. Idle
/// sockets are open connections minus requests in flight (at least 0): the
/// connections beyond what the load needs at that moment. For HTTP/1 this
/// is the number of connections with no request on them; for HTTP/2 a
/// lower bound.
#[derive(Debug)]
pub(super) struct ClientSampler {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientSampler {
    pub(super) fn start(open: OpenCount, progress: Arc<Progress>) -> Self {
        let state = Arc::new(Mutex::new(State {
            progress: Some(progress),
            ..State::default()
        }));
        let task = tokio::spawn(sample(open, state.clone()));
        Self { state, task }
    }

    /// Stops sampling; returns the idle-socket integral and the samples.
    pub(super) fn finish(&self) -> (f64, Vec<OpenSample>) {
        self.task.abort();
        let state = self.lock();
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
    let started = Instant::now();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = started;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let open = open.get();
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let in_flight = state.progress.as_ref().map_or(0, |p| p.in_flight());
        let idle = open.saturating_sub(in_flight);
        state.idle_seconds += idle as f64 * now.duration_since(last).as_secs_f64();
        last = now;
        if state.samples.len() < MAX_SAMPLES {
            state.samples.push(OpenSample {
                at_s: now.duration_since(started).as_secs_f64(),
                open,
                idle,
            });
        }
    }
}
