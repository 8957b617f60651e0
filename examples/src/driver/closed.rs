//! The closed loop: workers each sending their next request when the
//! last is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::load::{draw, note, send};
use super::{Keys, Load, Progress, Recorder};
use crate::stacks::{Stack, StackError, WorkerClient};
use crate::target::Target;

/// Closed-loop workers flush their progress count this often.
const PROGRESS_BATCH: u64 = 16;

/// A closed loop ([`Load::Closed`]) from now to its duration: each
/// worker's client from [`Stack::worker`], given back at the end.
pub(super) async fn closed(
    stack: &Stack,
    targets: &Arc<[Target]>,
    load: &Load,
    sent: &Arc<AtomicU64>,
    progress: &Arc<Progress>,
    track_in_flight: bool,
    round: u32,
) -> Result<Recorder, StackError> {
    let Load::Closed {
        workers,
        duration,
        max_requests,
        think,
        post_every,
        keys,
    } = load
    else {
        return Err(StackError::new("not a closed loop"));
    };
    let started = Instant::now();
    let deadline = started + *duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..*workers {
        let client = stack.worker(w).ok_or_else(|| {
            StackError::new(format!("{}: no client for worker {w}", stack.kind()))
        })?;
        let worker = ClosedWorker {
            client,
            target: targets[0].clone(),
            id_base: ((w as u64) << 40) | (u64::from(round) << 32),
            deadline,
            max_requests: *max_requests,
            issued: issued.clone(),
            think: *think,
            post_every: post_every.map(u64::from),
            keys: keys.clone(),
            sent: sent.clone(),
            progress: progress.clone(),
            track_in_flight,
        };
        tasks.spawn(worker.run());
    }
    let mut all = Recorder::new();
    while let Some(done) = tasks.join_next().await {
        // A worker that panicked leaves no record: its requests are
        // counted lost when the run reconciles.
        if let Ok((recorder, client)) = done {
            all.merge(&recorder);
            stack.give_back(client);
        }
    }
    Ok(all)
}

struct ClosedWorker {
    client: WorkerClient,
    target: Target,
    id_base: u64,
    deadline: Instant,
    max_requests: Option<u64>,
    issued: Arc<AtomicU64>,
    think: Option<(Duration, Duration)>,
    post_every: Option<u64>,
    keys: Option<Arc<Keys>>,
    sent: Arc<AtomicU64>,
    progress: Arc<Progress>,
    track_in_flight: bool,
}

impl ClosedWorker {
    /// The worker's record, and its client for the next round.
    async fn run(mut self) -> (Recorder, WorkerClient) {
        let mut recorder = Recorder::new();
        let mut seq = 0u64;
        let mut unreported = 0;
        loop {
            if let Some((low, high)) = self.think {
                let gap = low + (high.saturating_sub(low)).mul_f64(fastrand::f64());
                sleep_until((Instant::now() + gap).min(self.deadline)).await;
            }
            if Instant::now() >= self.deadline {
                break;
            }
            if let Some(max) = self.max_requests
                && self.issued.fetch_add(1, Relaxed) >= max
            {
                break;
            }
            seq += 1;
            let id = HeaderValue::from(self.id_base | seq);
            if self.track_in_flight {
                self.progress.in_flight_delta(1);
            }
            let post = self
                .post_every
                .is_some_and(|n| seq.is_multiple_of(n.max(1)));
            let keyed = draw(self.keys.as_deref());
            let key = self.keys.as_ref().zip(keyed).map(|(k, (i, _))| k.value(i));
            let (latency, answer) =
                send(&mut self.client, &self.target, &id, post, key, &self.sent).await;
            if self.track_in_flight {
                self.progress.in_flight_delta(-1);
            }
            note(&mut recorder, latency, answer, &id, keyed);
            unreported += 1;
            if unreported == PROGRESS_BATCH {
                self.progress.add_done(unreported);
                unreported = 0;
            }
        }
        self.progress.add_done(unreported);
        (recorder, self.client)
    }
}
