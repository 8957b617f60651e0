//! The controller: every target's live signals, drained each tick into its
//! window; what was learned of its server; the decisions, written to the
//! pool through its control handle and told to the events hook.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tower_reuse_pool::{PoolControl, Target, TargetConfig};

use crate::config::{AdaptiveConfig, Mode};
use crate::decide::{Inherited, Knobs, View, decide, periodic};
use crate::events::{AdaptiveEvents, Change, Decision, Inputs, Reason};
use crate::learn::Learned;
use crate::signals::{Live, Samples};
use crate::snapshot::{AdaptiveSnapshot, TargetEstimates};
use crate::window::Window;

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

    /// Run `f` on `target`'s live signals, tracking it if it is new and
    /// the cap allows.
    pub(crate) fn with_live<R>(
        self: &Arc<Self>,
        target: &Target,
        f: impl FnOnce(&Live) -> R,
    ) -> Option<R> {
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if let Some(signals) = live.get(target) {
                return Some(f(signals));
            }
        }
        self.track(target).map(|signals| f(&signals))
    }

    /// `target`'s live signals, tracked from now if the cap allows.
    pub(crate) fn live_of(self: &Arc<Self>, target: &Target) -> Option<Arc<Live>> {
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if let Some(signals) = live.get(target) {
                return Some(signals.clone());
            }
        }
        self.track(target)
    }

    fn track(self: &Arc<Self>, target: &Target) -> Option<Arc<Live>> {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if let Some(signals) = live.get(target) {
            return Some(signals.clone());
        }
        if live.len() >= self.config.max_targets {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let signals = Arc::new(Live::tracked(target.clone(), Arc::downgrade(self)));
        live.insert(target.clone(), signals.clone());
        Some(signals)
    }

    /// Start the ticking task once, on the runtime of the first request.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        let tick = self.config.tick;
        tokio::spawn(run(me, tick));
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
                if !live.is_touched() {
                    // Quiet since the last tick: forgotten in time, and
                    // looked at every tenth tick only, a tenth of them at
                    // each tick (for what time alone
                    // changes: a window emptying), unless it has warm
                    // connections to release, settings to take back, or
                    // an idle timeout of the controller's under settings
                    // it inherits that changed (a tier's demotion).
                    if now.saturating_duration_since(state.last_active) >= self.config.forget_after
                        && !is_held(live)
                    {
                        forgotten.push(target.clone());
                    } else if state.pooled
                        && ((ticks + i as u64).is_multiple_of(10)
                            || state.knobs.min_idle.ours.is_some()
                            || (mode == Mode::Off && state.written.is_some())
                            || (state.knobs.idle_timeout.ours.is_some()
                                && inherited(control, target, state.base.as_ref())
                                    != state.inherited))
                    {
                        state.window.at(now);
                        decisions.extend(self.decide_one(control, target, state, mode, now));
                    }
                    continue;
                }
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
                // Its connections are the pool's, or the requests in flight
                // wait for them; unless a router below sends its requests
                // to endpoints (targets of their own).
                state.pooled = (state.pooled
                    || before.0 != after.0
                    || before.2 != after.2
                    || live.in_flight() > 0)
                    && !live.routes();
                state.open = live.open();
                state.learned.observe(&samples);
                state.bursts = samples;
                if now.saturating_duration_since(state.last_active) >= self.config.forget_after
                    && !is_held(live)
                {
                    forgotten.push(target.clone());
                    continue;
                }
                if !state.pooled {
                    continue;
                }
                decisions.extend(self.decide_one(control, target, state, mode, now));
            }
            #[cfg(feature = "tls")]
            decisions.extend(self.decide_tickets(&states, mode, now));
            for target in &forgotten {
                if let Some(state) = states.remove(target)
                    && state.written.is_some()
                {
                    let _ = control.set_target_config(target, state.base);
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
        let total = state.window.total();
        state.miss_floor = miss_floor(state.miss_floor, &total, now, self.config.forget_after);
        let view = View {
            now,
            window: &total,
            open: state.open,
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

    /// Write the base settings with the controller's knobs over them.
    fn write(&self, control: &PoolControl, target: &Target, state: &mut TargetState) -> bool {
        let mut own = state.base.clone().unwrap_or_default();
        let knobs = state.knobs;
        if let Some(idle) = knobs.idle_timeout.ours {
            own = own.idle_timeout(idle);
        }
        if let Some(min) = knobs.min_idle.ours {
            own = own.min_idle_per_target(min);
        }
        if let Some(max) = knobs.max_idle.ours {
            own = own.max_idle_per_target(max);
        }
        if let Some(max) = knobs.max_requests.ours {
            own = own.max_requests_per_connection(max);
        }
        let own = (own != TargetConfig::default() || state.base.is_some()).then_some(own);
        let ok = control.set_target_config(target, own.clone()).is_ok();
        state.written = Some(if ok {
            own
        } else {
            control.target_config(target)
        });
        ok
    }

    /// Switched off: take back every knob the controller set.
    fn restore(
        &self,
        control: &PoolControl,
        target: &Target,
        state: &mut TargetState,
    ) -> Vec<Decision> {
        if state.written.is_none() {
            return Vec::new();
        }
        let inherited = state.inherited;
        let knobs = std::mem::take(&mut state.knobs);
        let applied = control
            .set_target_config(target, state.base.clone())
            .is_ok();
        state.written = None;
        let mut changes = Vec::new();
        if let Some(from) = knobs.idle_timeout.ours {
            changes.push(Change::IdleTimeout {
                from,
                to: inherited.idle_timeout,
            });
        }
        if let Some(from) = knobs.min_idle.ours {
            changes.push(Change::MinIdle {
                from,
                to: inherited.min_idle,
            });
        }
        if let Some(from) = knobs.max_idle.ours {
            changes.push(Change::MaxIdle {
                from,
                to: inherited.max_idle,
            });
        }
        if let Some(from) = knobs.max_requests.ours {
            changes.push(Change::MaxRequests {
                from,
                to: inherited.max_requests,
            });
        }
        changes
            .into_iter()
            .map(|change| Decision {
                target: target.clone(),
                change,
                reason: Reason::Restored,
                applied,
                inputs: state.inputs.clone(),
            })
            .collect()
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

/// Whether `live`'s target is in use: a service handle of the layer holds
/// its signals (its last target's, besides the map's and the tick's), or a
/// request is on one of its connections (one longer than `forget_after`).
/// Such a target is not forgotten, or its signals would go where no one
/// reads them.
fn is_held(live: &Arc<Live>) -> bool {
    Arc::strong_count(live) > 2 || live.in_flight() > 0
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

/// The target's settings without the controller: its own (the base), its
/// service's, its partition's, the pool's, first set wins.
fn inherited(control: &PoolControl, target: &Target, base: Option<&TargetConfig>) -> Inherited {
    let pool = control.config();
    let service = control.service_config(target);
    let partition = target.partition().and_then(|p| control.partition_config(p));
    let levels = [base, service.as_ref(), partition.as_ref()];
    let levels = || levels.into_iter().flatten();
    let pick_duration = levels()
        .find_map(TargetConfig::get_idle_timeout)
        .unwrap_or(pool.get_idle_timeout());
    let pick_min = levels()
        .find_map(TargetConfig::get_min_idle_per_target)
        .unwrap_or(pool.get_min_idle_per_target());
    let pick_max = levels()
        .find_map(TargetConfig::get_max_requests_per_connection)
        .unwrap_or(pool.get_max_requests_per_connection());
    let pick_max_idle = levels()
        .find_map(TargetConfig::get_max_idle_per_target)
        .unwrap_or(pool.get_max_idle_per_target());
    let pick_max_connections = levels()
        .find_map(TargetConfig::get_max_connections_per_target)
        .unwrap_or(pool.get_max_connections_per_target());
    let pick_min_connections = levels()
        .find_map(TargetConfig::get_min_connections_per_target)
        .unwrap_or(pool.get_min_connections_per_target());
    Inherited {
        idle_timeout: pick_duration,
        min_idle: pick_min,
        max_idle: pick_max_idle,
        min_connections: pick_min_connections,
        max_connections: pick_max_connections,
        max_requests: pick_max,
        own_idle_timeout: base.is_some_and(|b| b.get_idle_timeout().is_some()),
        own_min_idle: base.is_some_and(|b| b.get_min_idle_per_target().is_some()),
        own_max_idle: base.is_some_and(|b| b.get_max_idle_per_target().is_some()),
        own_max_requests: base.is_some_and(|b| b.get_max_requests_per_connection().is_some()),
    }
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

/// The target map's hasher, looked up at each of the pool's rare events
/// and when a service handle's target changes: a multiply and rotate per word (as rustc's own maps hash) rather
/// than SipHash, whose resistance to chosen keys the map does not need
/// (at most `max_targets` entries, each one of the client's own targets).
#[derive(Default)]
struct TargetHasher(u64);

impl Hasher for TargetHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.add(word);
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        if !rest.is_empty() {
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TargetHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
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
