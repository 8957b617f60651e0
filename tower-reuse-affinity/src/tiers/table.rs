//! The tracked keys: a map to slots in a slab, the slots linked from the
//! least to the most recently seen, so that the least recently seen key is
//! found without a scan. A slot keeps its index while its key is tracked.

use std::collections::HashMap;

/// No slot (the end of the list).
const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Table<T> {
    index: HashMap<u64, u32>,
    slots: Vec<Slot<T>>,
    /// Slots of forgotten keys, reused before the slab grows.
    free: Vec<u32>,
    /// The least recently seen key's slot.
    oldest: u32,
    /// The most recently seen key's slot.
    newest: u32,
    /// Most slots the slab grows to.
    cap: usize,
}

#[derive(Debug)]
pub(crate) struct Slot<T> {
    key: u64,
    older: u32,
    newer: u32,
    pub(crate) value: T,
}

impl<T> Table<T> {
    /// A table for at most `cap` keys (at most `u32::MAX`).
    pub(crate) fn new(cap: usize) -> Self {
        Table {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
            cap: cap.min(NIL as usize),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn find(&self, key: u64) -> Option<u32> {
        self.index.get(&key).copied()
    }

    pub(crate) fn get(&self, slot: u32) -> &T {
        &self.slots[slot as usize].value
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> &mut T {
        &mut self.slots[slot as usize].value
    }

    pub(crate) fn key(&self, slot: u32) -> u64 {
        self.slots[slot as usize].key
    }

    /// Tracks `key` as the most recently seen; the caller keeps the count
    /// under the cap. The slab doubles as it grows, but never past the cap.
    pub(crate) fn insert(&mut self, key: u64, value: T) -> u32 {
        let slot = Slot {
            key,
            older: NIL,
            newer: NIL,
            value,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = slot;
                at
            }
            None => {
                let len = self.slots.len();
                if len == self.slots.capacity() {
                    let more = len.clamp(4, self.cap.saturating_sub(len).max(4));
                    self.slots.reserve_exact(more);
                }
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, at);
        self.link_newest(at);
        at
    }

    /// Forgets the key in `slot`.
    pub(crate) fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        self.index.remove(&self.slots[slot as usize].key);
        self.free.push(slot);
    }

    /// Marks the key in `slot` as the most recently seen.
    pub(crate) fn touch(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_newest(slot);
        }
    }

    /// The slots from the least to the most recently seen key. Read the
    /// next one before removing the current one.
    pub(crate) fn oldest(&self) -> Option<u32> {
        (self.oldest != NIL).then_some(self.oldest)
    }

    pub(crate) fn newer(&self, slot: u32) -> Option<u32> {
        let newer = self.slots[slot as usize].newer;
        (newer != NIL).then_some(newer)
    }

    /// Every tracked key's slot, in no order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.values().copied()
    }

    fn unlink(&mut self, slot: u32) {
        let Slot { older, newer, .. } = self.slots[slot as usize];
        match older {
            NIL => self.oldest = newer,
            older => self.slots[older as usize].newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            newer => self.slots[newer as usize].older = older,
        }
    }

    fn link_newest(&mut self, slot: u32) {
        let previous = self.newest;
        {
            let s = &mut self.slots[slot as usize];
            s.older = previous;
            s.newer = NIL;
        }
        match previous {
            NIL => self.oldest = slot,
            previous => self.slots[previous as usize].newer = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(table: &Table<()>) -> Vec<u64> {
        let mut keys = Vec::new();
        let mut at = table.oldest();
        while let Some(slot) = at {
            keys.push(table.key(slot));
            at = table.newer(slot);
        }
        keys
    }

    #[test]
    fn keeps_keys_from_least_to_most_recently_seen() {
        let mut table = Table::new(8);
        let a = table.insert(1, ());
        let b = table.insert(2, ());
        table.insert(3, ());
        assert_eq!(order(&table), [1, 2, 3]);
        table.touch(a);
        assert_eq!(order(&table), [2, 3, 1]);
        table.remove(b);
        assert_eq!(order(&table), [3, 1]);
        assert_eq!(table.find(2), None);
        let d = table.insert(4, ());
        assert_eq!(d, b, "a forgotten key's slot is reused");
        assert_eq!(order(&table), [3, 1, 4]);
        table.touch(d);
        assert_eq!(order(&table), [3, 1, 4]);
        for key in [3, 1, 4] {
            table.remove(table.find(key).unwrap());
        }
        assert_eq!(order(&table), Vec::<u64>::new());
        assert_eq!(table.len(), 0);
        table.insert(5, ());
        assert_eq!(order(&table), [5]);
    }
}
