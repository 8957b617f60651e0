//! A target's share of the pool-wide connection budget: taking a slot for
//! each connect, giving it back when a connection leaves, taking the slots
//! handed over while it waited, and closing an idle connection so that
//! another target may connect.

use std::sync::{Arc, Weak};

use tokio::time::Instant;

use super::budget::{Budget, Claimant, Group};
use super::{Effects, State, TargetPool};
use crate::config::PoolConfig;
use crate::conn::ConnId;
use crate::events::CloseReason;

/// What a target holds of the budget.
#[derive(Default)]
pub(crate) struct Slots {
    /// Slots held: open, dedicated and connecting connections, and slots
    /// handed over and not used yet (`credit`).
    pub(super) held: usize,
    pub(super) credit: usize,
    /// The reservation they count against.
    pub(super) group: Option<Group>,
    /// In the budget's queue of waiting targets.
    pub(super) queued: bool,
    /// Connections the pool let go of whose sockets are not closed yet
    /// (their tasks still run): their slots are held until they are, so
    /// that servers never see more connections than the budget.
    pub(super) ending: Vec<ConnId>,
    /// Connections whose tasks ended while the pool still had them lent.
    pub(super) ended: Vec<ConnId>,
}

/// What is left to do after a target's effects: slots handed to waiting
/// targets, and idle connections to close for them. Done in a loop, so
/// that a slot passed from target to target never nests calls.
#[derive(Default)]
pub(crate) struct Follow {
    pub(crate) grants: Vec<Arc<dyn Claimant>>,
    pub(crate) evictions: usize,
}

impl Follow {
    pub(crate) fn merge(&mut self, other: Follow) {
        self.grants.extend(other.grants);
        self.evictions += other.evictions;
    }
}

impl Slots {
    /// A slot for one more connection, if one is free (handed over, or the
    /// budget's); never waits.
    pub(super) fn take_free(&mut self, budget: &Budget, max: Option<usize>) -> bool {
        self.take(budget, max, None)
    }

    fn take(
        &mut self,
        budget: &Budget,
        max: Option<usize>,
        waiter: Option<Weak<dyn Claimant>>,
    ) -> bool {
        if self.credit > 0 {
            self.credit -= 1;
            return true;
        }
        let taken = budget.acquire(max, self.group.as_ref(), waiter, self.queued);
        if taken {
            self.held += 1;
        }
        taken
    }
}

impl<B> State<B> {
    /// The pool let go of connection `id`: its slot goes back once its
    /// socket is closed.
    pub(super) fn slot_closing(&mut self, id: ConnId, fx: &mut Effects<B>) {
        if let Some(pos) = self.slots.ended.iter().position(|e| *e == id) {
            self.slots.ended.remove(pos);
            self.free_slot(fx);
        } else {
            self.slots.ending.push(id);
        }
    }

    /// Connection `id`'s task ended: its socket is closed.
    pub(super) fn slot_ended(&mut self, id: ConnId, fx: &mut Effects<B>) {
        if let Some(pos) = self.slots.ending.iter().position(|e| *e == id) {
            self.slots.ending.swap_remove(pos);
            self.free_slot(fx);
        } else {
            self.slots.ended.push(id);
            // Each one remembered is of a connection the pool still counts
            // (lent, landing or dedicated), to be given back: however many
            // end at once, none is forgotten. Only more than those (never
            // to be given back) are let go, the oldest first.
            let counted = self.open + self.dedicated_open + self.connecting;
            if self.slots.ended.len() > counted {
                let stale = self.slots.ended.len() - counted;
                self.slots.ended.drain(..stale);
            }
        }
    }

    /// A connect left without a connection: its slot goes back.
    pub(super) fn free_slot(&mut self, fx: &mut Effects<B>) {
        self.slots.held = self.slots.held.saturating_sub(1);
        fx.freed += 1;
        if fx.freed == 1 {
            fx.group = self.slots.group.clone();
        }
    }
}

impl<B> TargetPool<B> {
    /// A slot for one more connection: one handed over, or one of the
    /// budget's. With `wait`, a target that gets none joins the budget's
    /// queue and asks for another target's idle connection to be closed;
    /// pre-warming and rotation take free slots only.
    pub(super) fn take_slot(
        &self,
        state: &mut State<B>,
        config: &PoolConfig,
        wait: bool,
        fx: &mut Effects<B>,
    ) -> bool {
        let waiter = wait.then(|| self.me.clone());
        let taken = state
            .slots
            .take(&self.common.budget, config.max_connections, waiter);
        if !taken && wait && !state.slots.queued {
            state.slots.queued = true;
            fx.evict = true;
        }
        taken
    }

    /// Give the budget back the slots `fx` freed; the targets they went to.
    pub(super) fn give_back(&self, fx: &Effects<B>) -> Follow {
        let mut follow = Follow {
            grants: Vec::new(),
            evictions: usize::from(fx.evict),
        };
        if fx.freed > 0 {
            let max = self.common.config.load().max_connections;
            for _ in 0..fx.freed {
                if let Some(next) =
                    self.common
                        .budget
                        .release(max, fx.group.as_ref(), Some(&self.me))
                {
                    follow.grants.push(next);
                }
            }
        }
        follow
    }

    /// Whether a connection checked in closes, its slot going to another
    /// target waiting for one: while the budget is spent and others wait,
    /// a target keeps no idle connection on a shared slot, and one with
    /// requests queued of its own keeps one connection at least. Without
    /// it, a busy target would keep its slots for ever and the others
    /// would wait until their requests time out.
    pub(super) fn yields_slot(&self, state: &State<B>) -> bool {
        self.common.budget.is_starving()
            && (state.waiters.is_empty() || state.slots.held >= 2)
            && self
                .common
                .budget
                .others_wait(state.slots.group.as_ref(), &self.me)
    }

    /// Connection `id`, left idle (landed, or its last HTTP/2 stream ended)
    /// while none of this target's requests waits and other targets wait
    /// for a slot, closes (`CloseReason::Evicted`) so that its slot goes to
    /// them: a waiting target asks for an eviction once, when it joins the
    /// queue, and what goes idle after that would otherwise keep its slot
    /// until its idle timeout.
    pub(super) fn yield_idle(
        &self,
        state: &mut State<B>,
        id: ConnId,
        now: Instant,
        fx: &mut Effects<B>,
    ) {
        if !state.waiters.is_empty() || !self.yields_slot(state) {
            return;
        }
        let mut life = if let Some(pos) = state.idle.iter().position(|c| c.life.id == id) {
            state.idle.remove(pos).life
        } else if let Some(pos) = state
            .h2
            .iter()
            .position(|c| c.life.id == id && c.streams == 0 && !c.life.is_draining())
        {
            state.h2.swap_remove(pos).life
        } else {
            return;
        };
        state.closed(&mut life, CloseReason::Evicted, now, fx);
    }

    /// Connections it let go of whose sockets are not closed yet.
    pub(crate) fn closing(&self) -> usize {
        self.lock().slots.ending.len()
    }

    /// When the least recently used of its idle connections was last used,
    /// if it has one holding a shared slot.
    pub(crate) fn oldest_idle(&self) -> Option<Instant> {
        let state = self.lock();
        let oldest = self.oldest_idle_of(&state)?.1;
        self.common
            .budget
            .holds_shared(state.slots.group.as_ref())
            .then_some(oldest)
    }

    /// Its least recently used idle connection: HTTP/1.1 (its index) or
    /// HTTP/2 (its id), and when it was last used.
    fn oldest_idle_of(
        &self,
        state: &State<B>,
    ) -> Option<(Result<usize, crate::conn::ConnId>, Instant)> {
        let h1 = state.idle.first().map(|c| (Ok(0), c.life.last_used));
        let h2 = state
            .h2
            .iter()
            .filter(|c| c.streams == 0 && !c.life.is_draining())
            .min_by_key(|c| c.life.last_used)
            .map(|c| (Err(c.life.id), c.life.last_used));
        match (h1, h2) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl<B: Send + 'static> TargetPool<B> {
    /// Close its least recently used idle connection for a target waiting
    /// for a slot (`CloseReason::Evicted`), if it still has one holding a
    /// shared slot.
    pub(crate) fn evict_idle(self: &Arc<Self>) -> Option<Follow> {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            if !self.common.budget.holds_shared(state.slots.group.as_ref()) {
                return None;
            }
            let (which, _) = self.oldest_idle_of(&state)?;
            let mut life = match which {
                Ok(index) => state.idle.remove(index).life,
                Err(id) => {
                    let pos = state.h2.iter().position(|c| c.life.id == id)?;
                    state.h2.swap_remove(pos).life
                }
            };
            state.closed(&mut life, CloseReason::Evicted, now, &mut fx);
        }
        Some(self.finish_local(fx))
    }
}

impl<B: Send + 'static> Claimant for TargetPool<B> {
    fn take_slot(self: Arc<Self>) -> Follow {
        let now = Instant::now();
        let mut fx = Effects::new();
        {
            let mut state = self.lock();
            state.slots.queued = false;
            state.slots.credit += 1;
            state.slots.held += 1;
            let config = self.config_of(&state);
            self.plan(&mut state, &config, now, &mut fx);
            // Nothing to connect for after all: the slot goes on.
            while state.slots.credit > 0 {
                state.slots.credit -= 1;
                state.free_slot(&mut fx);
            }
        }
        self.finish_local(fx)
    }
}
