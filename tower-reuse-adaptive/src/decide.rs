//! The decisions, as pure functions of one target's window, what was
//! learned of its server, and the settings it has: what each knob should
//! be, and the rules that keep it from oscillating (a dead band, a
//! cool-down, a bounded step).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::AdaptiveConfig;
use crate::events::{Change, Inputs, Reason};
use crate::learn::{Learned, margin};
use crate::signals::Samples;
use crate::window::Bucket;

/// Idle gaps needed in the window before they set the idle timeout.
pub(crate) const MIN_GAPS: u64 = 20;

/// The shortest idle timeout the workload's gaps set (a server's learned
/// idle limit may set a shorter one).
pub(crate) const KEEP_FLOOR: Duration = Duration::from_secs(1);

/// The idle timeout the gaps set: this many times their 99th percentile.
const GAP_HEADROOM: f64 = 1.5;

/// Burst starts needed to find a period (three intervals).
const PERIOD_STARTS: usize = 4;

/// Each of those intervals within this share of their median.
const PERIOD_TOLERANCE: f64 = 0.2;

/// Missed reuses (demand connects after an expiry) in the window that set
/// a floor under the idle timeout.
pub(crate) const MIN_MISSES: u64 = 3;

/// Shorter periods are not kept warm for: connections outlive such gaps.
const MIN_PERIOD: Duration = Duration::from_millis(500);

/// One knob as the controller set it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Knob<T> {
    /// The controller's value, if it set one.
    pub(crate) ours: Option<T>,
    /// When it last changed.
    pub(crate) changed_at: Option<Instant>,
}

impl<T: Copy> Knob<T> {
    fn cooled(&self, now: Instant, cool_down: Duration) -> bool {
        self.changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= cool_down)
    }

    fn current(&self, inherited: T) -> T {
        self.ours.unwrap_or(inherited)
    }
}

/// The knobs the controller sets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Knobs {
    pub(crate) idle_timeout: Knob<Option<Duration>>,
    pub(crate) min_idle: Knob<usize>,
    pub(crate) max_idle: Knob<Option<usize>>,
    pub(crate) max_requests: Knob<Option<u64>>,
}

impl Knobs {
    /// Record `change` as made at `now`; `ours` is `None` where it returns
    /// the knob to what the target inherits.
    pub(crate) fn record(&mut self, change: Change, inherited: &Inherited, now: Instant) {
        match change {
            Change::IdleTimeout { to, .. } => {
                self.idle_timeout = Knob {
                    ours: (to != inherited.idle_timeout).then_some(to),
                    changed_at: Some(now),
                };
            }
            Change::MinIdle { to, .. } => {
                self.min_idle = Knob {
                    ours: (to != inherited.min_idle).then_some(to),
                    changed_at: Some(now),
                };
            }
            Change::MaxIdle { to, .. } => {
                self.max_idle = Knob {
                    ours: (to != inherited.max_idle).then_some(to),
                    changed_at: Some(now),
                };
            }
            Change::MaxRequests { to, .. } => {
                self.max_requests = Knob {
                    ours: (to != inherited.max_requests).then_some(to),
                    changed_at: Some(now),
                };
            }
            // The session cache's, not the target's.
            Change::TlsTickets { .. } => {}
        }
    }

    /// Whether `change`'s knob last changed at least `cool_down` ago.
    pub(crate) fn cooled(&self, change: Change, now: Instant, cool_down: Duration) -> bool {
        match change {
            Change::IdleTimeout { .. } => self.idle_timeout.cooled(now, cool_down),
            Change::MinIdle { .. } => self.min_idle.cooled(now, cool_down),
            Change::MaxIdle { .. } => self.max_idle.cooled(now, cool_down),
            Change::MaxRequests { .. } => self.max_requests.cooled(now, cool_down),
            Change::TlsTickets { .. } => true,
        }
    }

    /// Start `change`'s knob's cool-down without changing it (a decision
    /// observed, not applied).
    pub(crate) fn cool(&mut self, change: Change, now: Instant) {
        let at = Some(now);
        match change {
            Change::IdleTimeout { .. } => self.idle_timeout.changed_at = at,
            Change::MinIdle { .. } => self.min_idle.changed_at = at,
            Change::MaxIdle { .. } => self.max_idle.changed_at = at,
            Change::MaxRequests { .. } => self.max_requests.changed_at = at,
            Change::TlsTickets { .. } => {}
        }
    }
}

/// What a target has without the controller. A knob the operator set on
/// the target itself (`own_*`) is left alone.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Inherited {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) min_idle: usize,
    pub(crate) max_idle: Option<usize>,
    /// Connections kept open (busy or idle): an affinity tier's dedicated
    /// pool sets it.
    pub(crate) min_connections: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_requests: Option<u64>,
    pub(crate) own_idle_timeout: bool,
    pub(crate) own_min_idle: bool,
    pub(crate) own_max_idle: bool,
    pub(crate) own_max_requests: bool,
}

/// Bursts that come at a steady period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Periodic {
    pub(crate) period: Duration,
    /// The most in flight in the last bursts.
    pub(crate) peak: usize,
    /// The next burst is not overdue.
    pub(crate) ongoing: bool,
}

/// The period of the latest bursts, if their starts are evenly spaced.
pub(crate) fn periodic(samples: &Samples, now: Instant) -> Option<Periodic> {
    let mut starts: Vec<Instant> = samples.bursts.iter().map(|b| b.start).collect();
    starts.extend(samples.burst_start);
    let latest = starts.get(starts.len().checked_sub(PERIOD_STARTS)?..)?;
    let mut intervals: Vec<Duration> = latest
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .collect();
    intervals.sort_unstable();
    let period = intervals[intervals.len() / 2];
    let tolerance = period.mul_f64(PERIOD_TOLERANCE);
    if period < MIN_PERIOD || intervals.iter().any(|i| i.abs_diff(period) > tolerance) {
        return None;
    }
    let peak = samples
        .bursts
        .iter()
        .rev()
        .take(PERIOD_STARTS - 1)
        .map(|b| b.peak)
        .max()?;
    let last = *latest.last()?;
    Some(Periodic {
        period,
        peak,
        ongoing: now.saturating_duration_since(last) < period * 2,
    })
}

/// One target's view at a tick.
#[derive(Debug)]
pub(crate) struct View<'a> {
    pub(crate) now: Instant,
    pub(crate) window: &'a Bucket,
    /// Connections open now.
    pub(crate) open: usize,
    /// Its connections speak HTTP/2.
    pub(crate) http2: bool,
    /// The most TLS connects in one bucket of the window.
    pub(crate) connect_burst: u64,
    /// The idle timeout that would have kept the connections a recent
    /// demand connect replaced (a floor kept for a while after).
    pub(crate) miss_floor: Option<Duration>,
    pub(crate) learned: &'a Learned,
    pub(crate) periodic: Option<Periodic>,
    pub(crate) inherited: Inherited,
    pub(crate) knobs: Knobs,
}

/// What the controller saw, and the changes it wants now.
pub(crate) fn decide(config: &AdaptiveConfig, view: &View<'_>) -> (Inputs, Vec<(Change, Reason)>) {
    let window = view.window;
    let connect_p50 = window.connect.quantile(0.5);
    let margin = view.learned.idle_limit.map(|l| margin(l, connect_p50));
    let inputs = Inputs {
        rate: window.counts.checkouts as f64 / config.window.as_secs_f64(),
        peak: window.counts.peak,
        open: view.open,
        gap_p99: window.gaps.quantile(0.99),
        server_idle_limit: view.learned.idle_limit,
        margin,
        request_limit: view.learned.request_limit,
        period: view.periodic.map(|p| p.period),
        burst_peak: view.periodic.map(|p| p.peak),
        connect_burst: view.connect_burst,
        miss_floor: view.miss_floor,
    };
    let mut changes = Vec::new();
    changes.extend(idle_timeout(config, view, &inputs));
    let min_idle = min_idle(config, view);
    let warm = min_idle.map(|(change, _)| match change {
        Change::MinIdle { to, .. } => to,
        _ => 0,
    });
    changes.extend(min_idle);
    changes.extend(max_idle(config, view, warm));
    changes.extend(max_requests(config, view));
    (inputs, changes)
}

/// The longest idle timeout the controller may set: the target's own
/// without it, within the operator's bound.
fn idle_ceiling(config: &AdaptiveConfig, inherited: &Inherited) -> Option<Duration> {
    match (inherited.idle_timeout, config.idle_timeout_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Close before the server does; keep connections as long as the gaps
/// between their requests need, no longer, and never longer than the
/// target would without the controller.
fn idle_timeout(
    config: &AdaptiveConfig,
    view: &View<'_>,
    inputs: &Inputs,
) -> Option<(Change, Reason)> {
    if view.inherited.own_idle_timeout {
        return None;
    }
    let ceiling = idle_ceiling(config, &view.inherited);
    let server_safe = view
        .learned
        .idle_limit
        .filter(|_| config.learn_idle_timeout)
        .zip(inputs.margin)
        .map(|(limit, margin)| limit.saturating_sub(margin).max(config.idle_timeout_min));
    let knob = view.knobs.idle_timeout;
    let current = knob.current(view.inherited.idle_timeout);
    // The gaps set the timeout once there are enough of them, and never
    // below what the recent missed reuses (gaps a connect paid for) ask.
    let gaps = (view.window.gaps.count() >= MIN_GAPS)
        .then_some(inputs.gap_p99)
        .flatten()
        .map(|gap| gap.mul_f64(GAP_HEADROOM).max(KEEP_FLOOR));
    let workload = match (gaps, view.miss_floor) {
        (Some(g), Some(m)) => Some(g.max(m)),
        (g, m) => g.or(m),
    };
    // With no opinion of the gaps, the timeout stays as it is.
    let (mut want, mut why) = match knob.ours {
        Some(ours) => (ours, Reason::IdleGaps),
        None => (ceiling, Reason::Restored),
    };
    if let Some(w) = workload {
        (want, why) = (Some(w), Reason::IdleGaps);
    }
    if let Some(c) = ceiling.filter(|&c| want.is_none_or(|w| w > c)) {
        (want, why) = (Some(c), Reason::Restored);
    }
    if let Some(s) = server_safe.filter(|&s| want.is_none_or(|x| s < x)) {
        (want, why) = (Some(s), Reason::ServerIdleLimit);
    }
    let want = match (want.map(|w| w.max(config.idle_timeout_min)), ceiling) {
        (Some(w), Some(c)) => Some(w.min(c)),
        (w, _) => w,
    };
    if want == current {
        return None;
    }
    let change = |to| Change::IdleTimeout { from: current, to };
    // A server that closes connections before the pool does fails requests
    // on them: past half the margin (the learned limit moves by a few
    // milliseconds from close to close), no cool-down, no step bound,
    // straight to safe.
    let risky = view
        .learned
        .idle_limit
        .zip(inputs.margin)
        .map(|(limit, margin)| limit.saturating_sub(margin / 2));
    if let Some(safe) =
        server_safe.filter(|_| risky.is_some_and(|risky| current.is_none_or(|c| c > risky)))
    {
        return Some((change(Some(safe)), Reason::ServerIdleLimit));
    }
    // What the target inherits fell below the controller's value (a tier
    // demoted it, the operator lowered it): back under it at once, with no
    // cool-down, dead band or step bound, or the controller would keep
    // connections longer than the target allows without it.
    if let Some(c) = ceiling.filter(|&c| current.is_none_or(|current| current > c)) {
        return Some((change(Some(c)), Reason::Restored));
    }
    if !knob.cooled(view.now, config.cool_down) {
        return None;
    }
    let (Some(to), Some(from)) = (want, current) else {
        // From or to no timeout at all: no step to bound.
        return Some((change(want), why));
    };
    if from.as_secs_f64() * config.dead_band >= to.abs_diff(from).as_secs_f64() {
        return None;
    }
    let stepped = if to < from {
        to.max(from.div_f64(config.max_factor))
    } else {
        to.min(Duration::try_from_secs_f64(from.as_secs_f64() * config.max_factor).unwrap_or(to))
    };
    Some((change(Some(stepped)), why))
}

/// Keep the recent bursts' peak warm while bursts come at a steady period
/// with gaps that outlast the connections; release gradually otherwise.
fn min_idle(config: &AdaptiveConfig, view: &View<'_>) -> Option<(Change, Reason)> {
    if view.inherited.own_min_idle {
        return None;
    }
    let ceiling = idle_ceiling(config, &view.inherited);
    let floor = view.inherited.min_idle;
    // Only when the connections cannot be kept through the gap: the
    // server closes them first, or the idle timeout may not be that long.
    // Otherwise the idle gaps lengthen the idle timeout instead.
    let outlasted = |p: &Periodic| {
        view.learned.idle_limit.is_some_and(|l| l < p.period)
            || ceiling.is_some_and(|c| c < p.period)
    };
    let want = view
        .periodic
        .filter(|p| config.prewarm && p.ongoing && outlasted(p))
        // One HTTP/2 connection carries a burst's streams (the pool opens
        // more if the server's stream limit binds).
        .map_or(floor, |p| {
            let peak = if view.http2 { 1 } else { p.peak };
            peak.min(config.max_prewarm).max(floor)
        });
    // The pool refuses more warm connections than the target may keep idle.
    let want = idle_cap(&view.inherited).map_or(want, |c| want.min(c).max(floor));
    let knob = view.knobs.min_idle;
    let current = knob.current(floor);
    if want == current || !knob.cooled(view.now, config.cool_down) {
        return None;
    }
    let change = |to| Change::MinIdle { from: current, to };
    if want > current {
        if (want - current) as f64 <= current as f64 * config.dead_band {
            return None;
        }
        let to = want.min(current.saturating_add(config.max_step));
        return Some((change(to), Reason::PeriodicBurst));
    }
    // Released at most half at a time.
    let to = want
        .max(current / 2)
        .max(current.saturating_sub(config.max_step));
    Some((change(to), Reason::Released))
}

/// Keep no more idle connections than the window's peak in flight needs
/// (a quarter more, the dead band): a spike's connections go once it
/// leaves the window, half of them at a time, rather than each at its idle
/// timeout. Only while more connections are open than that: a steady load
/// gets no cap. Never under the connections kept warm or open, never above the
/// target's own caps. `warm`: the warm connections this tick decided.
fn max_idle(
    config: &AdaptiveConfig,
    view: &View<'_>,
    warm: Option<usize>,
) -> Option<(Change, Reason)> {
    let inherited = &view.inherited;
    if inherited.own_max_idle {
        return None;
    }
    let floor = [
        view.knobs.min_idle.current(inherited.min_idle),
        warm.unwrap_or(0),
        inherited.min_connections,
        1,
    ]
    .into_iter()
    .max()
    .unwrap_or(1);
    let ceiling = idle_cap(inherited);
    if ceiling.is_some_and(|c| c < floor) {
        return None;
    }
    // No request seen in flight through the layer in the window (a quiet
    // target, whose idle timeout lets its connections go; or a router's
    // endpoint, whose requests are counted on its service): no opinion.
    if view.window.counts.peak == 0 {
        return None;
    }
    let peak = view.window.counts.peak.max(view.window.counts.busy);
    let headroom = (peak as f64 * config.dead_band).ceil() as usize;
    let want = peak.saturating_add(headroom).max(floor);
    let want = ceiling.map_or(want, |c| want.min(c));
    let knob = view.knobs.max_idle;
    let current = knob.current(inherited.max_idle);
    let change = |to| Change::MaxIdle { from: current, to };
    match current {
        // Under what the load needs (the peak, not its headroom): closing
        // connections it reuses.
        Some(c) if c < want && (c < peak || c < floor) => {
            Some((change(Some(want)), Reason::RecentPeak))
        }
        // Lowered only while connections beyond the need are open.
        Some(c) if c <= want || view.open <= want => None,
        // Over: lowered after the cool-down, outside the dead band, by at
        // most half (or `max_step`) at a time.
        Some(c) => {
            if !knob.cooled(view.now, config.cool_down)
                || (c - want) as f64 <= c as f64 * config.dead_band
            {
                return None;
            }
            let to = want.max(c / 2).max(c.saturating_sub(config.max_step));
            Some((change(Some(to)), Reason::RecentPeak))
        }
        // No cap yet: one once more connections are open than the load
        // needs.
        None if view.open > want && knob.cooled(view.now, config.cool_down) => {
            let to = want.max(view.open / 2);
            Some((change(Some(to)), Reason::RecentPeak))
        }
        None => None,
    }
}

/// The most idle connections the target may keep without the controller:
/// its `max_idle_per_target`, or its `max_connections_per_target`.
fn idle_cap(inherited: &Inherited) -> Option<usize> {
    match (inherited.max_idle, inherited.max_connections) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Retire connections at the server's request limit, so the pool opens the
/// replacement ahead of the last request.
fn max_requests(config: &AdaptiveConfig, view: &View<'_>) -> Option<(Change, Reason)> {
    if view.inherited.own_max_requests {
        return None;
    }
    let inherited = view.inherited.max_requests;
    let learned = view
        .learned
        .request_limit
        .filter(|&n| config.learn_request_limit && inherited.is_none_or(|m| n < m));
    let (want, why) = match learned {
        Some(n) => (Some(n), Reason::RequestLimit),
        None => (inherited, Reason::Restored),
    };
    let knob = view.knobs.max_requests;
    let current = knob.current(inherited);
    if want == current || !knob.cooled(view.now, config.cool_down) {
        return None;
    }
    Some((
        Change::MaxRequests {
            from: current,
            to: want,
        },
        why,
    ))
}
