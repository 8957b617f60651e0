//! The controller: every target's live signals, drained each tick into its
//! window; what was learned of its server; the decisions, written to the
//! pool through its control handle and told to the events hook.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tower_reuse_pool::{PoolControl, Target, TargetConfig};

use crate::config::{AdaptiveConfig, Mode};
use crate::decide::{Inherited, Knobs, View, decide, periodic};
use crate::events::{AdaptiveEvents, Decision, Inputs};
#[cfg(feature = "tls")]
use crate::events::{Change, Reason};
use crate::learn::Learned;
use crate::signals::{Live, Samples};
use crate::snapshot::{AdaptiveSnapshot, TargetEstimates};
use crate::window::Window;

mod apply;
mod targets;

use apply::inherited;
use targets::{TargetHasher, is_held};

/// What the layer, its services, the pool's hook and the task share.
pub(crate) struct Controller {
    pub(crate) config: AdaptiveConfig,
    mode: AtomicU8,
    live: RwLock<HashMap<Target, Arc<Live>, BuildHasherDefault<TargetHasher>>>,
    states: Mutex<HashMap<Target, TargetState>>,
    pub(crate) control: OnceLock<PoolControl>,
    events: Arc<dyn AdaptiveEvents>,
    started: std::sync::atomic::AtomicBool,
    untracked: AtomicU64,
    ticks: AtomicU64,
    /// The pool's TLS session cache, whose tickets per server it tunes.
    #[cfg(feature = "tls")]
    pub(crate) session_cache: OnceLock<tower_reuse_pool::tls::SessionCache>,
    #[cfg(feature = "tls")]
    tickets: Mutex<crate::tickets::Tickets>,
}

/// One target as the controller keeps it between ticks.
#[derive(Debug)]
struct TargetState {
    window: Window,
    learned: Learned,
    knobs: Knobs,
    /// The bursts as last drained.
    bursts: Samples,
    last_active: Instant,
    /// Whether the pool serves it (a service's target over a router such
    /// as the affinity layer has no connections: its endpoints do).
    pooled: bool,
    /// Connections open at the last drain.
    open: usize,
    /// Whether its connections speak HTTP/2.
    http2: bool,
    /// The target's own settings as the controller last wrote them, and
    /// what they were without the controller's knobs.
    written: Option<Option<TargetConfig>>,
    base: Option<TargetConfig>,
    inputs: Inputs,
    inherited: Inherited,
    decisions: u64,
    /// What the recent missed reuses ask of the idle timeout, and when
    /// they last did.
    miss_floor: Option<(Duration, Instant)>,
}

impl TargetState {
    fn new(config: &AdaptiveConfig, now: Instant) -> Self {
        TargetState {
            window: Window::new(config.window, now),
            learned: Learned::default(),
            knobs: Knobs::default(),
            bursts: Samples::default(),
            last_active: now,
            pooled: false,
            open: 0,
            http2: false,
            written: None,
            base: None,
            inputs: Inputs::default(),
            inherited: Inherited::default(),
            decisions: 0,
            miss_floor: None,
        }
    }
}

impl Controller {
    pub(crate) fn new(config: AdaptiveConfig, events: Arc<dyn AdaptiveEvents>) -> Self {
        Controller {
            mode: AtomicU8::new(mode_index(config.mode)),
            config,
            live: RwLock::default(),
            states: Mutex::default(),
            control: OnceLock::new(),
            events,
            started: std::sync::atomic::AtomicBool::new(false),
            untracked: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            #[cfg(feature = "tls")]
            session_cache: OnceLock::new(),
            #[cfg(feature = "tls")]
            tickets: Mutex::default(),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        MODES[usize::from(self.mode.load(Ordering::Relaxed))]
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode_index(mode), Ordering::Relaxed);
    }

    /// Start the ticking task once, on the runtime of the first request;
    /// again on a later request's runtime if that one has shut down.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Outside a runtime there is nothing to tick on: the next request
        // from inside one starts it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let me = Arc::downgrade(self);
        let tick = self.config.tick;
        // Made before the task is spawned: a runtime that shuts down before
        // polling it still drops it, and the next request starts another.
        let running = Running(me.clone());
        runtime.spawn(async move {
            let _running = running;
            run(me, tick).await;
        });
    }

    /// One tick: drain, learn, decide, write, tell.
    pub(crate) fn tick(&self, now: Instant) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let Some(control) = self.control.get() else {
            return;
        };
        let mode = self.mode();
        let lives: Vec<(Target, Arc<Live>)> = self
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, l)| (t.clone(), l.clone()))
            .collect();
        let mut decisions = Vec::new();
        let mut forgotten = Vec::new();
        {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (target, live)) in lives.iter().enumerate() {
                // The key is cloned once, when the target is new: not at
                // every tick.
                if !states.contains_key(target) {
                    states.insert(target.clone(), TargetState::new(&self.config, now));
                }
                let Some(state) = states.get_mut(target) else {
                    continue;
                };
                let forget_before = now.checked_sub(self.config.window).unwrap_or(now);
                let ticks = self.ticks.load(Ordering::Relaxed);
                let touched = live.is_touched();
                if touched {
                    let bucket = state.window.at(now);
                    let before = (
                        bucket.counts.checkouts,
                        bucket.counts.requests,
                        bucket.counts.closes,
                    );
                    let samples = live.drain(bucket, forget_before);
                    let after = (
                        bucket.counts.checkouts,
                        bucket.counts.requests,
                        bucket.counts.closes,
                    );
                    if before != after || live.in_flight() > 0 {
                        state.last_active = now;
                    }
                    // Its connections are the pool's, or the requests in
                    // flight wait for them; unless a router below sends its
                    // requests to endpoints (targets of their own).
                    state.pooled = (state.pooled
                        || before.0 != after.0
                        || before.2 != after.2
                        || live.in_flight() > 0)
                        && !live.routes();
                    state.open = live.open();
                    state.http2 = live.is_http2();
                    state.learned.observe(&samples);
                    state.bursts = samples;
                }
                if now.saturating_duration_since(state.last_active) >= self.config.forget_after
                    && !is_held(live)
                {
                    forgotten.push(target.clone());
                    continue;
                }
                // A target quiet since the last tick is looked at every
                // tenth tick only, a tenth of them at each tick (for what
                // time alone changes: a window emptying), unless it has
                // warm connections to release, settings to take back, or
                // an idle timeout of the controller's under settings it
                // inherits that changed (a tier's demotion).
                let due = state.pooled
                    && (touched
                        || (ticks + i as u64).is_multiple_of(10)
                        || state.knobs.min_idle.ours.is_some()
                        || (mode == Mode::Off && state.written.is_some())
                        || (state.knobs.idle_timeout.ours.is_some()
                            && inherited(control, target, state.base.as_ref()) != state.inherited));
                if due {
                    state.window.at(now);
                    decisions.extend(self.decide_one(control, target, state, mode, now));
                }
            }
            #[cfg(feature = "tls")]
            decisions.extend(self.decide_tickets(&states, mode, now));
            // A forgotten target's settings go back to its own, told as
            // any other change.
            for target in &forgotten {
                if let Some(mut state) = states.remove(target) {
                    decisions.extend(self.restore(control, target, &mut state));
                }
            }
        }
        if !forgotten.is_empty() {
            let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
            for target in &forgotten {
                live.remove(target);
            }
        }
        for decision in &decisions {
            #[cfg(feature = "tracing")]
            tracing::debug!(
                target = %decision.target,
                knob = decision.change.knob(),
                change = ?decision.change,
                reason = decision.reason.as_str(),
                applied = decision.applied,
                "adaptive decision"
            );
            self.events.on_decision(decision);
        }
    }

    fn decide_one(
        &self,
        control: &PoolControl,
        target: &Target,
        state: &mut TargetState,
        mode: Mode,
        now: Instant,
    ) -> Vec<Decision> {
        let own = control.target_config(target);
        if state.written.as_ref().is_some_and(|w| *w != own) {
            // The operator changed the target's settings: theirs are the
            // base from now on, and the controller starts again from them.
            state.base = own.clone();
            state.knobs = Knobs::default();
            state.written = None;
        } else if state.written.is_none() {
            state.base = own.clone();
        }
        state.inherited = inherited(control, target, state.base.as_ref());
        let mut total = state.window.total();
        if state.open > total.counts.peak.max(total.counts.busy) {
            // More connections open than requests were seen in flight: how
            // many serve requests now, before the idle cap counts the rest
            // as spare.
            if let Some(busy) = control.target_snapshot(target).map(|t| t.active()) {
                let counts = &mut state.window.at(now).counts;
                counts.busy = counts.busy.max(busy);
                total = state.window.total();
            }
        }
        state.miss_floor = miss_floor(state.miss_floor, &total, now, self.config.forget_after);
        let view = View {
            now,
            window: &total,
            open: state.open,
            http2: state.http2,
            connect_burst: state.window.busiest(|c| c.tls_full + c.tls_resumed),
            miss_floor: state.miss_floor.map(|(floor, _)| floor),
            learned: &state.learned,
            periodic: periodic(&state.bursts, now),
            inherited: state.inherited,
            knobs: state.knobs,
        };
        let (inputs, mut changes) = decide(&self.config, &view);
        state.inputs = inputs;
        if mode == Mode::Off {
            return self.restore(control, target, state);
        }
        if mode == Mode::Observe {
            // A lowering made at once when on (for a server's closes, or
            // under what the target inherits) is told once per cool-down.
            let cool_down = self.config.cool_down;
            changes.retain(|(change, _)| state.knobs.cooled(*change, now, cool_down));
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let before = state.knobs;
        for (change, _) in &changes {
            if mode == Mode::On {
                state.knobs.record(*change, &state.inherited, now);
            } else {
                // Observing: the pool keeps what it has, and the same
                // decision is told again only after a cool-down.
                state.knobs.cool(*change, now);
            }
        }
        let applied = mode == Mode::On && self.write(control, target, state);
        if mode == Mode::On && !applied {
            // The pool refused the settings: the knobs stay as the pool has
            // them, and the decision waits a cool-down before it is tried
            // again.
            state.knobs = before;
            for (change, _) in &changes {
                state.knobs.cool(*change, now);
            }
        }
        state.decisions += changes.len() as u64;
        changes
            .into_iter()
            .map(|(change, reason)| Decision {
                target: target.clone(),
                change,
                reason,
                applied,
                inputs: state.inputs.clone(),
            })
            .collect()
    }

    /// The session cache's tickets per server, for the largest TLS connect
    /// burst to one target.
    #[cfg(feature = "tls")]
    fn decide_tickets(
        &self,
        states: &HashMap<Target, TargetState>,
        mode: Mode,
        now: Instant,
    ) -> Option<Decision> {
        let cache = self.session_cache.get()?;
        let (target, state) = states
            .iter()
            .filter(|(_, s)| s.pooled)
            .max_by_key(|(_, s)| s.inputs.connect_burst)?;
        let current = cache.tickets_per_server();
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let (change, reason) = if mode == Mode::Off {
            (tickets.restore(current)?, Reason::Restored)
        } else {
            tickets.decide(&self.config, now, current, state.inputs.connect_burst)?
        };
        let Change::TlsTickets { to, .. } = change else {
            return None;
        };
        if mode != Mode::Off {
            tickets.record(to, now);
        }
        let applied = mode != Mode::Observe && cache.set_tickets_per_server(to).is_ok();
        Some(Decision {
            target: target.clone(),
            change,
            reason,
            applied,
            inputs: state.inputs.clone(),
        })
    }

    pub(crate) fn snapshot(&self) -> AdaptiveSnapshot {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        let mut targets: Vec<TargetEstimates> = states
            .iter()
            .filter(|(_, s)| s.pooled)
            .map(|(target, s)| {
                let in_flight = live.get(target).map_or(0, |l| l.in_flight());
                TargetEstimates::new(
                    target.clone(),
                    &s.window.total(),
                    &s.inputs,
                    s.knobs,
                    in_flight,
                    s.decisions,
                    &self.config,
                )
            })
            .collect();
        targets.sort_by_key(|t| t.target.to_string());
        AdaptiveSnapshot {
            mode: self.mode(),
            tracked: live.len(),
            untracked: self.untracked.load(Ordering::Relaxed),
            ticks: self.ticks.load(Ordering::Relaxed),
            targets,
        }
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

/// The floor the missed reuses set under the idle timeout: raised to 1.5
/// times their median gap while the window holds a few, kept for
/// `forget_after` after the last, so that the timeout does not go down and
/// back up as the window forgets them.
fn miss_floor(
    floor: Option<(Duration, Instant)>,
    window: &crate::window::Bucket,
    now: Instant,
    forget_after: Duration,
) -> Option<(Duration, Instant)> {
    let floor = floor.filter(|&(_, at)| now.saturating_duration_since(at) < forget_after);
    if window.missed.count() < crate::decide::MIN_MISSES {
        return floor;
    }
    let asked = window.missed.quantile(0.5)?.mul_f64(1.5);
    Some((floor.map_or(asked, |(f, _)| f.max(asked)), now))
}

/// Tick until the controller is dropped.
async fn run(controller: Weak<Controller>, tick: std::time::Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        let now = interval.tick().await;
        let Some(controller) = controller.upgrade() else {
            return;
        };
        controller.tick(now);
    }
}

/// Held by the ticking task: when its runtime shuts down and drops it,
/// the next request starts it again on its own runtime.
struct Running(Weak<Controller>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(controller) = self.0.upgrade() {
            controller.started.store(false, Ordering::Release);
        }
    }
}

const MODES: [Mode; 3] = [Mode::On, Mode::Observe, Mode::Off];

fn mode_index(mode: Mode) -> u8 {
    match mode {
        Mode::On => 0,
        Mode::Observe => 1,
        Mode::Off => 2,
    }
}
