//! The pool-wide connection budget (`PoolConfig::max_connections`).
//!
//! Every open or opening connection of every target holds one slot, counted
//! whether a budget is set or not (so that one can be set at run time).
//! Reservations set slots aside for one target or one partition: only
//! their group takes them, and the shared slots are the rest.
//!
//! A target that finds no slot joins a queue of waiting targets; a slot
//! freed while targets wait is handed to the first that may take it (still
//! counted, so no newcomer takes it in between), which takes it or passes
//! it on. The budget's lock is taken after a target's, never before.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::config::ConfigError;
use crate::control::ReservationSnapshot;
use crate::target::{Partition, Target};

use super::slots::Follow;

/// Who a reservation is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Group {
    Target(Target),
    /// Every target of one scheme, authority and partition (the key:
    /// such a target without an endpoint).
    Service(Target),
    Partition(Partition),
}

/// A target waiting for a slot.
pub(crate) trait Claimant: Send + Sync {
    /// A slot was handed over: take it for a connect, or give it back.
    /// Returns what follows (the targets the slots it gave back went to),
    /// for the caller's loop: no nesting, however many pass a slot on.
    fn take_slot(self: Arc<Self>) -> Follow;
}

/// Closes an idle connection of some other target to free its slot.
pub(crate) trait Evictor: Send + Sync {
    /// Close the least recently used idle connection holding a shared
    /// slot, of any target; what follows, if one closed.
    fn evict_idle(&self) -> Option<Follow>;
}

struct Reserved {
    reserved: usize,
    held: usize,
}

struct Queued {
    group: Option<Group>,
    target: Weak<dyn Claimant>,
}

#[derive(Default)]
struct Slots {
    used: usize,
    groups: HashMap<Group, Reserved>,
    waiting: VecDeque<Queued>,
}

impl Slots {
    /// Reserved slots nobody of their group holds: no other target may
    /// take them.
    fn set_aside(&self) -> usize {
        self.groups
            .values()
            .map(|g| g.reserved.saturating_sub(g.held))
            .sum()
    }

    /// Whether `group`'s connections hold shared slots: it reserves none,
    /// or holds more than it reserves.
    fn holds_shared(&self, group: Option<&Group>) -> bool {
        group
            .and_then(|g| self.groups.get(g))
            .is_none_or(|g| g.held > g.reserved)
    }

    fn reserved_total(&self) -> usize {
        self.groups.values().map(|g| g.reserved).sum()
    }

    /// Whether one of `group`'s reserved slots is free. Never beyond
    /// `max`: a reservation set, or a budget lowered, while more slots are
    /// in use than it leaves is kept only as connections go.
    fn reserved_free(&self, max: Option<usize>, group: Option<&Group>) -> bool {
        group
            .and_then(|g| self.groups.get(g))
            .is_some_and(|g| g.held < g.reserved)
            && max.is_none_or(|max| self.used < max)
    }

    /// Whether a target of `group` may take a slot now: one of its group's
    /// reserved ones, or a shared one.
    fn may_take(&self, max: Option<usize>, group: Option<&Group>) -> bool {
        self.reserved_free(max, group) || max.is_none_or(|max| self.used + self.set_aside() < max)
    }

    fn take(&mut self, group: Option<&Group>) {
        self.used += 1;
        if let Some(g) = group.and_then(|g| self.groups.get_mut(g)) {
            g.held += 1;
        }
    }

    /// The first waiting target that may take a slot now gets one, the
    /// target giving the slot back (`from`) only if no other may; the
    /// targets gone on the way leave the queue.
    fn hand_over(
        &mut self,
        max: Option<usize>,
        from: Option<&Weak<dyn Claimant>>,
    ) -> Option<Arc<dyn Claimant>> {
        self.waiting.retain(|q| q.target.strong_count() > 0);
        let others_first = from.and_then(|from| {
            self.waiting.iter().position(|q| {
                !Weak::ptr_eq(&q.target, from) && self.may_take(max, q.group.as_ref())
            })
        });
        let mut i = others_first.unwrap_or(0);
        while i < self.waiting.len() {
            if self.waiting[i].target.strong_count() == 0 {
                self.waiting.remove(i);
                continue;
            }
            if self.may_take(max, self.waiting[i].group.as_ref()) {
                let queued = self.waiting.remove(i).expect("within the queue");
                let Some(target) = queued.target.upgrade() else {
                    continue;
                };
                self.take(queued.group.as_ref());
                return Some(target);
            }
            i += 1;
        }
        None
    }
}

/// The pool-wide budget.
#[derive(Default)]
pub(crate) struct Budget {
    slots: Mutex<Slots>,
    /// Targets are waiting for a slot: a connection that would go idle
    /// closes instead, if its slot is a shared one.
    starving: AtomicBool,
}

impl Budget {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot for a target of `group`, within `max`. Without one,
    /// `waiter` (if given) joins the queue of waiting targets, unless
    /// `queued` says it is in it already.
    pub(crate) fn acquire(
        &self,
        max: Option<usize>,
        group: Option<&Group>,
        waiter: Option<Weak<dyn Claimant>>,
        queued: bool,
    ) -> bool {
        let mut slots = self.lock();
        // Targets already waiting go first: no newcomer jumps the queue
        // for a shared slot.
        if slots.reserved_free(max, group)
            || (slots.waiting.is_empty() && slots.may_take(max, group))
        {
            slots.take(group);
            return true;
        }
        if let Some(target) = waiter.filter(|_| !queued) {
            slots.waiting.push_back(Queued {
                group: group.cloned(),
                target,
            });
            self.starving.store(true, Ordering::Release);
        }
        false
    }

    /// Give a slot of `group` back; the target it went to, if one waited
    /// (a target other than `from`, the one giving it back, if one may
    /// take it: a busy target closing a connection for the others waiting
    /// does not get the slot back itself).
    pub(crate) fn release(
        &self,
        max: Option<usize>,
        group: Option<&Group>,
        from: Option<&Weak<dyn Claimant>>,
    ) -> Option<Arc<dyn Claimant>> {
        let mut slots = self.lock();
        slots.used = slots.used.saturating_sub(1);
        if let Some(g) = group.and_then(|g| slots.groups.get_mut(g)) {
            g.held = g.held.saturating_sub(1);
        }
        if let Some(g) = group
            && slots
                .groups
                .get(g)
                .is_some_and(|g| g.reserved == 0 && g.held == 0)
        {
            slots.groups.remove(g);
        }
        let next = slots.hand_over(max, from);
        self.starving
            .store(!slots.waiting.is_empty(), Ordering::Release);
        next
    }

    /// Hand out the slots a raised budget frees to the targets waiting.
    pub(crate) fn settle(&self, max: Option<usize>) -> Vec<Arc<dyn Claimant>> {
        let mut slots = self.lock();
        let mut next = Vec::new();
        while let Some(target) = slots.hand_over(max, None) {
            next.push(target);
        }
        self.starving
            .store(!slots.waiting.is_empty(), Ordering::Release);
        next
    }

    /// Move `held` slots from one group to another (a target's reservation
    /// changed), and the target's place in the queue, if it waits, so that
    /// it is handed its new group's slots.
    pub(crate) fn regroup(
        &self,
        from: Option<&Group>,
        to: Option<&Group>,
        held: usize,
        me: &Weak<dyn Claimant>,
    ) {
        if from == to {
            return;
        }
        let mut slots = self.lock();
        for queued in slots.waiting.iter_mut() {
            if Weak::ptr_eq(&queued.target, me) {
                queued.group = to.cloned();
            }
        }
        if let Some(g) = from.and_then(|g| slots.groups.get_mut(g)) {
            g.held = g.held.saturating_sub(held);
        }
        if let Some(g) = to.and_then(|g| slots.groups.get_mut(g)) {
            g.held += held;
        }
    }

    /// Reserve `reserved` slots for `group` (none: drop its reservation),
    /// if every reservation then fits in `max`.
    pub(crate) fn reserve(
        &self,
        max: Option<usize>,
        group: Group,
        reserved: Option<usize>,
    ) -> Result<(), ConfigError> {
        let mut slots = self.lock();
        let current = slots.groups.get(&group).map_or(0, |g| g.reserved);
        let total = slots.reserved_total() - current + reserved.unwrap_or(0);
        if reserved.is_some() && max.is_none_or(|max| total > max) {
            return Err(ConfigError::new(
                "reserved_connections",
                "the reservations together must fit in max_connections",
            ));
        }
        let entry = slots.groups.entry(group).or_insert(Reserved {
            reserved: 0,
            held: 0,
        });
        entry.reserved = reserved.unwrap_or(0);
        // A group that reserves nothing is kept only while its slots count.
        slots.groups.retain(|_, g| g.reserved > 0 || g.held > 0);
        Ok(())
    }

    /// Whether a pool-wide `max` holds every reservation.
    pub(crate) fn check_limit(&self, max: Option<usize>) -> Result<(), ConfigError> {
        let reserved = self.lock().reserved_total();
        if reserved > 0 && max.is_none_or(|max| reserved > max) {
            return Err(ConfigError::new(
                "max_connections",
                "must hold every reserved_connections",
            ));
        }
        Ok(())
    }

    /// Whether a connection of `group` holds a shared slot (one another
    /// target could use), rather than one of its group's reserved ones.
    pub(crate) fn holds_shared(&self, group: Option<&Group>) -> bool {
        group.is_none() || self.lock().holds_shared(group)
    }

    /// Whether a connection of `group` holds a shared slot and a target
    /// other than `me` waits for a slot.
    pub(crate) fn others_wait(&self, group: Option<&Group>, me: &Weak<dyn Claimant>) -> bool {
        let slots = self.lock();
        slots.holds_shared(group)
            && slots
                .waiting
                .iter()
                .any(|q| q.target.strong_count() > 0 && !Weak::ptr_eq(&q.target, me))
    }

    /// Targets wait for a slot.
    pub(crate) fn is_starving(&self) -> bool {
        self.starving.load(Ordering::Acquire)
    }

    /// Slots in use, targets waiting, and each reservation.
    pub(crate) fn snapshot(&self) -> (usize, usize, Vec<ReservationSnapshot>) {
        let slots = self.lock();
        let reservations = slots
            .groups
            .iter()
            .filter(|(_, g)| g.reserved > 0)
            .map(|(group, g)| ReservationSnapshot {
                target: match group {
                    Group::Target(t) => Some(t.clone()),
                    _ => None,
                },
                service: match group {
                    Group::Service(t) => Some(t.clone()),
                    _ => None,
                },
                partition: match group {
                    Group::Partition(p) => Some(p.clone()),
                    _ => None,
                },
                reserved: g.reserved,
                held: g.held,
            })
            .collect();
        let waiting = slots
            .waiting
            .iter()
            .filter(|q| q.target.strong_count() > 0)
            .count();
        (slots.used, waiting, reservations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;
    impl Claimant for Nobody {
        fn take_slot(self: Arc<Self>) -> Follow {
            Follow::default()
        }
    }

    fn group(name: &str) -> Group {
        Group::Partition(Partition::new(name))
    }

    #[test]
    fn a_full_budget_queues_and_a_freed_slot_goes_to_the_first_waiting() {
        let budget = Budget::default();
        assert!(budget.acquire(Some(2), None, None, false));
        assert!(budget.acquire(Some(2), None, None, false));
        let waiting: Arc<dyn Claimant> = Arc::new(Nobody);
        assert!(!budget.acquire(Some(2), None, Some(Arc::downgrade(&waiting)), false));
        assert!(budget.is_starving());
        // A newcomer does not jump the queue, even once a slot frees.
        let next = budget.release(Some(2), None, None).expect("handed over");
        assert!(Arc::ptr_eq(&next, &waiting));
        assert!(!budget.is_starving());
        assert_eq!(budget.snapshot().0, 2, "the handed slot stays counted");
    }

    #[test]
    fn a_slot_given_back_goes_to_another_waiting_target_first() {
        let budget = Budget::default();
        assert!(budget.acquire(Some(1), None, None, false));
        let busy: Arc<dyn Claimant> = Arc::new(Nobody);
        let other: Arc<dyn Claimant> = Arc::new(Nobody);
        let (busy_weak, other_weak) = (Arc::downgrade(&busy), Arc::downgrade(&other));
        assert!(!budget.acquire(Some(1), None, Some(busy_weak.clone()), false));
        assert!(!budget.acquire(Some(1), None, Some(other_weak), false));
        // The busy target, first in the queue, closes one of its
        // connections for the others: the other one gets the slot.
        let next = budget.release(Some(1), None, Some(&busy_weak)).unwrap();
        assert!(Arc::ptr_eq(&next, &other));
        // With nobody else waiting, it gets its own slot back.
        let next = budget.release(Some(1), None, Some(&busy_weak)).unwrap();
        assert!(Arc::ptr_eq(&next, &busy));
    }

    #[test]
    fn reserved_slots_are_kept_for_their_group() {
        let budget = Budget::default();
        budget.reserve(Some(4), group("quiet"), Some(2)).unwrap();
        assert!(budget.acquire(Some(4), None, None, false));
        assert!(budget.acquire(Some(4), None, None, false));
        assert!(
            !budget.acquire(Some(4), None, None, false),
            "2 are set aside"
        );
        assert!(budget.acquire(Some(4), Some(&group("quiet")), None, false));
        assert!(budget.acquire(Some(4), Some(&group("quiet")), None, false));
        assert!(!budget.holds_shared(Some(&group("quiet"))));
        assert!(!budget.acquire(Some(4), Some(&group("quiet")), None, false));
        assert_eq!(budget.snapshot().0, 4);
    }

    #[test]
    fn reservations_beyond_the_budget_are_rejected() {
        let budget = Budget::default();
        budget.reserve(Some(4), group("a"), Some(3)).unwrap();
        let err = budget.reserve(Some(4), group("b"), Some(2)).unwrap_err();
        assert_eq!(err.field(), "reserved_connections");
        assert!(budget.reserve(None, group("b"), Some(1)).is_err());
        // Changing one's own reservation counts it once.
        budget.reserve(Some(4), group("a"), Some(4)).unwrap();
        assert_eq!(
            budget.check_limit(Some(3)).unwrap_err().field(),
            "max_connections"
        );
        assert!(budget.check_limit(None).is_err());
        budget.reserve(Some(4), group("a"), None).unwrap();
        assert!(budget.check_limit(None).is_ok());
    }

    #[test]
    fn a_waiting_target_of_a_group_gets_its_groups_freed_reserved_slot() {
        let budget = Budget::default();
        budget.reserve(Some(3), group("g"), Some(1)).unwrap();
        assert!(budget.acquire(Some(3), None, None, false));
        assert!(budget.acquire(Some(3), None, None, false));
        assert!(budget.acquire(Some(3), Some(&group("g")), None, false));
        let shared: Arc<dyn Claimant> = Arc::new(Nobody);
        let member: Arc<dyn Claimant> = Arc::new(Nobody);
        assert!(!budget.acquire(Some(3), None, Some(Arc::downgrade(&shared)), false));
        assert!(!budget.acquire(
            Some(3),
            Some(&group("g")),
            Some(Arc::downgrade(&member)),
            false
        ));
        // The group's reserved slot frees: only its member may take it.
        let next = budget.release(Some(3), Some(&group("g")), None).unwrap();
        assert!(Arc::ptr_eq(&next, &member));
        // A shared one frees: the first in the queue gets it.
        let next = budget.release(Some(3), None, None).unwrap();
        assert!(Arc::ptr_eq(&next, &shared));
    }

    #[test]
    fn a_reserved_slot_is_never_taken_beyond_the_budget() {
        let budget = Budget::default();
        assert!(budget.acquire(Some(2), None, None, false));
        assert!(budget.acquire(Some(2), None, None, false));
        // A reservation set while the budget is spent.
        budget.reserve(Some(2), group("g"), Some(1)).unwrap();
        let member: Arc<dyn Claimant> = Arc::new(Nobody);
        let me = Arc::downgrade(&member);
        assert!(!budget.acquire(Some(2), Some(&group("g")), Some(me.clone()), false));
        assert_eq!(budget.snapshot().0, 2);
        let next = budget.release(Some(2), None, None).expect("handed over");
        assert!(Arc::ptr_eq(&next, &member));
        assert_eq!(budget.snapshot().2[0].held, 1);
    }

    #[test]
    fn a_waiting_target_given_a_reservation_waits_for_it() {
        let budget = Budget::default();
        assert!(budget.acquire(Some(2), None, None, false));
        assert!(budget.acquire(Some(2), None, None, false));
        let target: Arc<dyn Claimant> = Arc::new(Nobody);
        let me = Arc::downgrade(&target);
        assert!(!budget.acquire(Some(2), None, Some(me.clone()), false));
        // It is given a reservation while it waits, holding nothing.
        budget.reserve(Some(2), group("g"), Some(1)).unwrap();
        budget.regroup(None, Some(&group("g")), 0, &me);
        let next = budget
            .release(Some(2), None, None)
            .expect("its reserved slot");
        assert!(Arc::ptr_eq(&next, &target));
        assert_eq!(budget.snapshot().2[0].held, 1, "counted in its group");
    }

    #[test]
    fn targets_gone_leave_the_queue() {
        let budget = Budget::default();
        assert!(budget.acquire(Some(1), None, None, false));
        let gone: Arc<dyn Claimant> = Arc::new(Nobody);
        assert!(!budget.acquire(Some(1), None, Some(Arc::downgrade(&gone)), false));
        drop(gone);
        assert!(budget.release(Some(1), None, None).is_none());
        assert!(!budget.is_starving());
        assert_eq!(budget.snapshot(), (0, 0, Vec::new()));
    }
}
