//! The scenario's progress bar, moved by time or by requests done.

use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};

use crate::driver::{Load, Progress};

/// The scenario's bar moving with a run ([`tick`]) until stopped.
pub(super) struct Ticker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    /// Moves `bar` by up to `share` as `load` progresses.
    pub(super) fn start(
        bar: &ProgressBar,
        progress: &Arc<Progress>,
        load: &Load,
        share: u64,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(tick(
            bar.clone(),
            progress.clone(),
            load.clone(),
            share,
            stopped,
        ));
        Self { stop, task }
    }

    /// Moves the bar to the end of its share.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Moves the scenario's bar by up to `share` as the run progresses (by
/// time or by request count, whichever is further).
async fn tick(
    bar: ProgressBar,
    progress: Arc<Progress>,
    load: Load,
    share: u64,
    mut stop: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let nominal = load.nominal_duration().as_secs_f64().max(1e-3);
    let expected = match &load {
        Load::Closed { max_requests, .. } | Load::Poisson { max_requests, .. } => *max_requests,
        Load::Bursts { bursts, size, .. } | Load::Periodic { bursts, size, .. } => {
            Some((bursts * size) as u64)
        }
        Load::Steps { .. } => None,
    };
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = sleep(Duration::from_millis(100)) => {}
            _ = &mut stop => {
                bar.inc(share - shown);
                return;
            }
        }
        let by_time = started.elapsed().as_secs_f64() / nominal;
        let by_count = expected.map_or(0.0, |n| progress.done() as f64 / n.max(1) as f64);
        let percent = ((by_time.max(by_count) * share as f64) as u64).min(share.saturating_sub(1));
        if percent > shown {
            bar.inc(percent - shown);
            shown = percent;
        }
    }
}
