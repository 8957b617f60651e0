//! `Tiers`: the per-key rates and the rules that move keys between the
//! shared pool and dedicated ones.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::change::{ChangeKind, DemoteReason, KeySnapshot, Recorded, Tier, TierChange};
use super::config::TierConfig;
use super::table::Table;
use super::window::{Ring, Span};

/// A newcomer takes the coldest dedicated key's place only if its rate is
/// above the coldest's times this: the displaced key, now cold, cannot take
/// the place back unless the rates move by a quarter again (no flapping).
pub(crate) const DISPLACE_MARGIN: f64 = 1.25;

/// The tier controller: a deterministic state machine over explicit
/// instants, with no timer of its own.
///
/// - [`record_and_enter`](Self::record_and_enter), on the request path,
///   counts a request, promoting its key on the spot when the promote rule
///   holds (the promotion, and the displacement it may cause, come back in
///   its [`Recorded`]: there is no queue to drain), and counts it in
///   flight until its [`exit`](Self::exit), for the peak concurrency over
///   the promote window;
/// - [`sweep`](Self::sweep), about once a bucket (a tenth of the promote
///   window), demotes cold and idle keys, promotes those whose rule holds
///   between their requests, and forgets old cold ones.
///
/// One mutex holds every key: the rules are global (the dedicated bound,
/// the coldest key, the least recently seen key), and the work under it is
/// short: for a key already tracked, a hash lookup, two ring updates and a
/// list splice, with no allocation.
#[derive(Debug)]
pub(crate) struct Tiers {
    rules: Rules,
    base: Instant,
    state: Mutex<State>,
}

/// The config in ticks (nanoseconds since `base`).
#[derive(Clone, Copy, Debug)]
struct Rules {
    promote_rps: f64,
    demote_rps: f64,
    /// Buckets of the promote window.
    recent: Span,
    /// Buckets of the demote window.
    long: Span,
    promote_window: u64,
    demote_window: u64,
    idle_retire_after: u64,
    forget_after: u64,
    max_dedicated: usize,
    max_tracked_keys: usize,
}

#[derive(Debug)]
struct State {
    keys: Table<KeyState>,
    /// The dedicated keys' slots (a dedicated key is never forgotten, so
    /// its slot holds).
    dedicated: Vec<u32>,
}

/// What is kept per key: fixed size, see `TierConfig`'s memory bound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyState {
    first_seen: u64,
    last_seen: u64,
    dedicated_since: u64,
    /// The promote-window bucket of the last attempt to displace a
    /// dedicated key, plus one (0: never): at most one attempt a bucket.
    tried_displacing: u64,
    tier: Tier,
    in_flight: u32,
    /// Requests per bucket of the promote window.
    recent: Ring,
    /// Peak in flight per bucket of the promote window.
    peaks: Ring,
    /// Requests per bucket of the demote window.
    long: Ring,
}

fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tiers {
    /// A controller for `config` (validated by the caller; any value still
    /// gives a working controller), its clock starting at `base`.
    pub(crate) fn new(config: &TierConfig, base: Instant) -> Self {
        let rules = Rules {
            promote_rps: config.promote_rps,
            demote_rps: config.demote_rps,
            recent: Span::new(config.promote_window),
            long: Span::new(config.demote_window),
            promote_window: ticks(config.promote_window),
            demote_window: ticks(config.demote_window),
            idle_retire_after: ticks(config.idle_retire_after),
            forget_after: ticks(config.forget_after),
            max_dedicated: config.max_dedicated,
            max_tracked_keys: config.max_tracked_keys.min(TierConfig::MAX_TRACKED_KEYS),
        };
        Tiers {
            rules,
            base,
            state: Mutex::new(State {
                keys: Table::new(rules.max_tracked_keys),
                dedicated: Vec::new(),
            }),
        }
    }

    /// Counts one request of `key` at `now` and returns its tier, this
    /// request included: a cold key whose rule holds is promoted here (see
    /// [`Recorded`]). A new key beyond `max_tracked_keys` replaces the least
    /// recently seen cold key with nothing in flight, or stays untracked
    /// (and cold) if there is none.
    #[cfg(test)]
    pub(crate) fn record(&self, key: u64, now: Instant) -> Recorded {
        let tick = self.tick(now);
        self.rules.record(&mut self.lock(), key, tick)
    }

    /// [`record`](Self::record), then [`enter`](Self::enter), under one
    /// lock: the request path's two calls.
    pub(crate) fn record_and_enter(&self, key: u64, now: Instant) -> (Recorded, bool) {
        let tick = self.tick(now);
        let mut state = self.lock();
        let recorded = self.rules.record(&mut state, key, tick);
        let entered = self
            .rules
            .in_flight(&mut state, key, tick, |n| n.saturating_add(1));
        (recorded, entered)
    }

    /// A request of `key` starts: counted in flight until its
    /// [`exit`](Self::exit). Returns whether the key is tracked (an
    /// untracked key's requests are not followed).
    #[cfg(test)]
    pub(crate) fn enter(&self, key: u64, now: Instant) -> bool {
        let tick = self.tick(now);
        self.rules
            .in_flight(&mut self.lock(), key, tick, |n| n.saturating_add(1))
    }

    /// A request of `key` has ended (its response is done, or it failed or
    /// was dropped). Never below zero.
    pub(crate) fn exit(&self, key: u64, now: Instant) -> bool {
        let tick = self.tick(now);
        self.rules
            .in_flight(&mut self.lock(), key, tick, |n| n.saturating_sub(1))
    }

    /// Demotes dedicated keys that went cold or idle, promotes cold keys
    /// whose rule holds now (a key whose requests come in bursts qualifies
    /// between them, before its next burst), then forgets cold keys not
    /// seen for `forget_after` (forgetting is no tier change, so it is not
    /// reported). Meant to run about once a bucket width.
    pub(crate) fn sweep(&self, now: Instant) -> Vec<TierChange> {
        let tick = self.tick(now);
        let rules = &self.rules;
        let mut state = self.lock();
        let mut changes = Vec::new();
        let mut i = 0;
        while let Some(&slot) = state.dedicated.get(i) {
            let k = state.keys.get(slot);
            let reason = if k.in_flight == 0
                && tick.saturating_sub(k.last_seen) >= rules.idle_retire_after
            {
                Some(DemoteReason::Idle)
            } else if tick.saturating_sub(k.dedicated_since) >= rules.demote_window
                && rules.long_rate(k, tick) < rules.demote_rps
            {
                Some(DemoteReason::Cold)
            } else {
                None
            };
            match reason {
                Some(reason) => changes.push(state.demote(i, reason, tick, rules)),
                None => i += 1,
            }
        }
        let qualified: Vec<u32> = state
            .keys
            .slots()
            .filter(|&slot| {
                let k = state.keys.get(slot);
                k.tier == Tier::Cold && rules.qualifies_between(k, tick)
            })
            .collect();
        for slot in qualified {
            if state.dedicated.len() >= rules.max_dedicated {
                break;
            }
            changes.push(state.promote(slot, tick, rules));
        }
        state.forget(tick, rules);
        changes
    }

    /// Every tracked key: tier, rate and concurrency at `now`.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<KeySnapshot> {
        let tick = self.tick(now);
        let rules = &self.rules;
        let state = self.lock();
        state
            .keys
            .slots()
            .map(|slot| {
                let k = state.keys.get(slot);
                KeySnapshot {
                    key: state.keys.key(slot),
                    tier: k.tier,
                    rate: rules.recent_rate(k, tick),
                    peak_concurrency: rules.peak(k, tick),
                    in_flight: k.in_flight,
                }
            })
            .collect()
    }

    fn tick(&self, now: Instant) -> u64 {
        ticks(now.saturating_duration_since(self.base))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panic elsewhere
        // while it was held leaves nothing half done that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rules {
    /// Counts one request of `key` at `tick` (see [`Tiers::record`]).
    fn record(&self, state: &mut State, key: u64, tick: u64) -> Recorded {
        let slot = match state.keys.find(key) {
            Some(slot) => {
                state.keys.touch(slot);
                slot
            }
            None => match state.track(key, tick, self) {
                Some(slot) => slot,
                None => return Recorded::tier(Tier::Cold),
            },
        };
        let recent_epoch = self.recent.epoch(tick);
        let k = state.keys.get_mut(slot);
        k.last_seen = k.last_seen.max(tick);
        k.recent.add(recent_epoch);
        k.long.add(self.long.epoch(tick));
        if k.tier == Tier::Dedicated || !self.qualifies(k, tick) {
            return Recorded::tier(k.tier);
        }
        let attempt = recent_epoch.wrapping_add(1);
        let tried = std::mem::replace(&mut k.tried_displacing, attempt);
        if state.dedicated.len() < self.max_dedicated {
            let promoted = state.promote(slot, tick, self);
            Recorded {
                tier: Tier::Dedicated,
                displaced: None,
                promoted: Some(promoted),
            }
        } else if tried == attempt {
            Recorded::tier(Tier::Cold)
        } else {
            state.displace(slot, tick, self)
        }
    }

    /// Applies `change` to `key`'s requests in flight, keeping its peak;
    /// whether the key is tracked.
    fn in_flight(
        &self,
        state: &mut State,
        key: u64,
        tick: u64,
        change: impl FnOnce(u32) -> u32,
    ) -> bool {
        let epoch = self.recent.epoch(tick);
        let Some(slot) = state.keys.find(key) else {
            return false;
        };
        let k = state.keys.get_mut(slot);
        k.peaks.advance(epoch, k.in_flight);
        k.in_flight = change(k.in_flight);
        k.peaks.raise(k.in_flight);
        true
    }

    fn recent_rate(&self, k: &KeyState, tick: u64) -> f64 {
        let sum = k.recent.sum_at(self.recent.epoch(tick));
        self.recent.rate(sum, tick)
    }

    fn long_rate(&self, k: &KeyState, tick: u64) -> f64 {
        let sum = k.long.sum_at(self.long.epoch(tick));
        self.long.rate(sum, tick)
    }

    fn peak(&self, k: &KeyState, tick: u64) -> u32 {
        k.peaks.max_at(self.recent.epoch(tick), k.in_flight)
    }

    /// The promote rule: tracked for the promote window, and at least
    /// `promote_rps` over it.
    /// Whether a cold key's rate over the promote window reaches
    /// `promote_rps`, the key having been tracked for the window.
    fn qualifies(&self, k: &KeyState, tick: u64) -> bool {
        tick.saturating_sub(k.first_seen) >= self.promote_window
            && self.recent_rate(k, tick) >= self.promote_rps
    }

    /// [`qualifies`](Self::qualifies) at a sweep, between requests: the
    /// window known to its resolution, a bucket. The ring holds the
    /// window's first bucket until its last begins, so a key whose requests
    /// came in one burst at its start qualifies in that last bucket, before
    /// the burst leaves the window (and before its next burst comes).
    fn qualifies_between(&self, k: &KeyState, tick: u64) -> bool {
        let tracked = self.promote_window.saturating_sub(self.recent.width());
        tick.saturating_sub(k.first_seen) >= tracked
            && self.recent_rate(k, tick) >= self.promote_rps
    }

    fn change(&self, key: u64, kind: ChangeKind, k: &KeyState, tick: u64) -> TierChange {
        let (rate, rate_window) = match kind {
            ChangeKind::Promoted
            | ChangeKind::Demoted {
                reason: DemoteReason::Displaced { .. },
            } => (self.recent_rate(k, tick), self.promote_window),
            ChangeKind::Demoted { .. } => (self.long_rate(k, tick), self.demote_window),
        };
        let dedicated_for = match (kind, k.tier) {
            (ChangeKind::Demoted { .. }, Tier::Dedicated) => tick.saturating_sub(k.dedicated_since),
            _ => 0,
        };
        TierChange {
            key,
            kind,
            rate,
            rate_window: Duration::from_nanos(rate_window),
            peak_concurrency: self.peak(k, tick),
            dedicated_for: Duration::from_nanos(dedicated_for),
        }
    }
}

impl State {
    /// Starts tracking `key`, making room under the cap by forgetting the
    /// least recently seen cold key with nothing in flight; `None` if there
    /// is no such key.
    fn track(&mut self, key: u64, tick: u64, rules: &Rules) -> Option<u32> {
        if self.keys.len() >= rules.max_tracked_keys {
            let mut at = self.keys.oldest();
            while let Some(slot) = at {
                let k = self.keys.get(slot);
                if k.tier == Tier::Cold && k.in_flight == 0 {
                    break;
                }
                at = self.keys.newer(slot);
            }
            self.keys.remove(at?);
        }
        let recent = Ring::new(rules.recent.epoch(tick));
        Some(self.keys.insert(
            key,
            KeyState {
                first_seen: tick,
                last_seen: tick,
                dedicated_since: 0,
                tried_displacing: 0,
                tier: Tier::Cold,
                in_flight: 0,
                recent,
                peaks: recent,
                long: Ring::new(rules.long.epoch(tick)),
            },
        ))
    }

    fn promote(&mut self, slot: u32, tick: u64, rules: &Rules) -> TierChange {
        let key = self.keys.key(slot);
        let k = self.keys.get_mut(slot);
        let change = rules.change(key, ChangeKind::Promoted, k, tick);
        k.tier = Tier::Dedicated;
        k.dedicated_since = tick;
        self.dedicated.push(slot);
        change
    }

    /// Demotes the `i`th dedicated key.
    fn demote(&mut self, i: usize, reason: DemoteReason, tick: u64, rules: &Rules) -> TierChange {
        let slot = self.dedicated.swap_remove(i);
        let key = self.keys.key(slot);
        let k = self.keys.get_mut(slot);
        let change = rules.change(key, ChangeKind::Demoted { reason }, k, tick);
        k.tier = Tier::Cold;
        change
    }

    /// The bound is reached and the cold key in `slot` qualifies: it takes
    /// the coldest dedicated key's place if its rate beats that one's by
    /// the margin.
    fn displace(&mut self, slot: u32, tick: u64, rules: &Rules) -> Recorded {
        let rate = rules.recent_rate(self.keys.get(slot), tick);
        let coldest = self
            .dedicated
            .iter()
            .map(|&d| rules.recent_rate(self.keys.get(d), tick))
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((i, coldest_rate)) = coldest else {
            return Recorded::tier(Tier::Cold);
        };
        // Rates are finite: a count over a span that is never zero.
        if rate <= coldest_rate * DISPLACE_MARGIN {
            return Recorded::tier(Tier::Cold);
        }
        let by = self.keys.key(slot);
        let reason = DemoteReason::Displaced { by };
        let displaced = self.demote(i, reason, tick, rules);
        Recorded {
            tier: Tier::Dedicated,
            displaced: Some(displaced),
            promoted: Some(self.promote(slot, tick, rules)),
        }
    }

    /// Forgets cold keys with nothing in flight not seen for
    /// `forget_after`, from the least recently seen on.
    fn forget(&mut self, tick: u64, rules: &Rules) {
        let mut at = self.keys.oldest();
        while let Some(slot) = at {
            at = self.keys.newer(slot);
            let k = self.keys.get(slot);
            if tick.saturating_sub(k.last_seen) < rules.forget_after {
                break;
            }
            if k.tier == Tier::Cold && k.in_flight == 0 {
                self.keys.remove(slot);
            }
        }
    }
}
