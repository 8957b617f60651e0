//! The controller on paused time: signals fed as the pool's hook feeds
//! them, ticks at explicit instants, and the settings read back from a real
//! pool's control handle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::{Instant, advance};
use tower_layer::Layer;
use tower_reuse_pool::events::CloseReason;
use tower_reuse_pool::{Pool, PoolConfig, PoolControl, PoolLayer, Target, TargetConfig};

use crate::config::{AdaptiveConfig, Mode};
use crate::controller::Controller;
use crate::events::{AdaptiveEvents, Change, Decision, Reason};

mod learning;
mod modes;
mod stability;
mod tiers;
mod warm;

/// Notes every decision.
#[derive(Clone, Debug, Default)]
struct Noted(Arc<Mutex<Vec<Decision>>>);

impl AdaptiveEvents for Noted {
    fn on_decision(&self, decision: &Decision) {
        self.0.lock().unwrap().push(decision.clone());
    }
}

impl Noted {
    fn take(&self) -> Vec<Decision> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

struct Rig {
    controller: Arc<Controller>,
    control: PoolControl,
    noted: Noted,
    target: Target,
    _pool: Pool<HttpConnector>,
}

const TICK: Duration = Duration::from_secs(1);

fn rig(config: AdaptiveConfig) -> Rig {
    rig_with(config, PoolConfig::default())
}

fn rig_with(config: AdaptiveConfig, pool: PoolConfig) -> Rig {
    let pool: Pool<HttpConnector> = PoolLayer::new(pool).unwrap().layer(HttpConnector::new());
    let control = pool.control();
    let noted = Noted::default();
    let controller = Arc::new(Controller::new(
        config.validate().unwrap(),
        Arc::new(noted.clone()),
    ));
    controller.control.set(control.clone()).unwrap();
    let target = Target::from_uri(&"http://127.0.0.1:9".parse().unwrap(), None).unwrap();
    Rig {
        controller,
        control,
        noted,
        target,
        _pool: pool,
    }
}

impl Rig {
    /// One tick's worth of closed-loop load: `workers` requests in flight
    /// at once, `rounds` times, each reusing a connection idle `gap`.
    fn load(&self, workers: usize, rounds: usize, gap: Duration) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..rounds {
                for _ in 0..workers {
                    live.out(true, Duration::ZERO, Some(gap));
                }
                for _ in 0..workers {
                    live.back();
                }
            }
        });
    }

    /// A burst of `size` requests that end at once.
    fn burst(&self, size: usize) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..size {
                live.out(false, Duration::ZERO, None);
            }
            for _ in 0..size {
                live.back();
            }
        });
    }

    fn server_closed_idle(&self, idle: Duration) {
        self.controller.with_live(&self.target, |live| {
            live.closed(CloseReason::ServerClosed, Some(idle), 1)
        });
    }

    /// `n` connections expire idle `idle`; `ticks` ticks later, `n` demand
    /// connects would have reused them (missed reuses).
    async fn missed_reuses(&self, n: usize, idle: Option<Duration>, ticks: usize) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.closed(CloseReason::IdleTimeout, idle, 1);
            }
        });
        for _ in 0..ticks {
            self.tick().await;
        }
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.connect_started(true);
            }
        });
    }

    async fn tick(&self) {
        advance(TICK).await;
        self.controller.tick(Instant::now());
    }

    /// `seconds` of steady load, a tick each second.
    async fn steady(&self, seconds: usize, workers: usize) {
        for _ in 0..seconds {
            self.load(workers, 50, Duration::from_millis(1));
            self.tick().await;
        }
    }

    fn own(&self) -> TargetConfig {
        self.control.target_config(&self.target).unwrap_or_default()
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.own()
            .get_idle_timeout()
            .unwrap_or(self.control.config().get_idle_timeout())
    }

    fn max_idle(&self) -> Option<usize> {
        self.own().get_max_idle_per_target().flatten()
    }

    /// `n` HTTP/1.1 connections open.
    fn connected(&self, n: usize) {
        self.connected_as(n, false);
    }

    /// `n` connections open, HTTP/2 ones with `http2`.
    fn connected_as(&self, n: usize, http2: bool) {
        self.controller.with_live(&self.target, |live| {
            for _ in 0..n {
                live.connected(true, Duration::from_millis(1), None, None, http2);
            }
        });
    }

    /// What the pool does with a lowered cap: the idle connections above
    /// it close.
    fn close_above_cap(&self) {
        let open = self.controller.live_of(&self.target).unwrap().open();
        let cap = self.max_idle().unwrap_or(usize::MAX);
        self.controller.with_live(&self.target, |live| {
            for _ in cap..open {
                live.closed(CloseReason::OverLimit, Some(Duration::from_secs(1)), 1);
            }
        });
    }

    fn min_idle(&self) -> usize {
        self.own().get_min_idle_per_target().unwrap_or(0)
    }
}

/// Bursts of `size` every `period`, ticking each second, for `bursts`.
async fn bursts(rig: &Rig, size: usize, period: Duration, count: usize) {
    let ticks = (period.as_secs_f64() / TICK.as_secs_f64()).round() as usize;
    for _ in 0..count {
        rig.burst(size);
        for _ in 0..ticks {
            rig.tick().await;
        }
    }
}
