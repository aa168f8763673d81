//! A map keyed by sequence number, for what an ack-protocol consumer
//! holds. Its keys are mostly one dense ascending run (new messages,
//! taken in order, acknowledged roughly in order), with a few outside it
//! (messages given back, taken behind higher ones). The run is a ring of
//! slots indexed by `seq - base`: an insert, lookup or removal there is
//! an index, not a hash (the two hash maps of the acking path cost about
//! a quarter of the relay's work per acknowledged message). Keys outside
//! the run go to a small B-tree.
//!
//! Holes in the run (messages acknowledged out of order) stay as empty
//! slots until the front moves past them; a run that is more than half
//! holes gives its front key to the B-tree, so a consumer that keeps one
//! old message and acknowledges the rest holds O(messages held) slots.

use std::collections::{BTreeMap, VecDeque};

/// How far past the run's end a key may start new slots (further: the
/// B-tree).
const MAX_GAP: u64 = 4096;

/// Empty slots allowed beyond those the occupied ones justify.
const SLACK: usize = 64;

#[derive(Debug)]
pub(super) struct SeqMap<V> {
    /// Slot `i` holds key `base + i`. The front slot is occupied whenever
    /// any is; with none occupied, `slots` is empty.
    base: u64,
    slots: VecDeque<Option<V>>,
    /// Occupied slots.
    dense: usize,
    /// Keys outside the run.
    sparse: BTreeMap<u64, V>,
}

impl<V> Default for SeqMap<V> {
    fn default() -> Self {
        SeqMap {
            base: 0,
            slots: VecDeque::new(),
            dense: 0,
            sparse: BTreeMap::new(),
        }
    }
}

impl<V> SeqMap<V> {
    /// The slot of `seq`, if it is inside the run.
    fn slot(&self, seq: u64) -> Option<usize> {
        let i = seq.checked_sub(self.base)?;
        (i < self.slots.len() as u64).then_some(i as usize)
    }

    pub fn insert(&mut self, seq: u64, v: V) -> Option<V> {
        if let Some(i) = self.slot(seq) {
            let old = self.slots[i].replace(v);
            if old.is_none() {
                self.dense += 1;
            }
            return old;
        }
        if let Some(old) = self.sparse.get_mut(&seq) {
            return Some(std::mem::replace(old, v));
        }
        if self.slots.is_empty() {
            self.base = seq;
        }
        let end = self.base + self.slots.len() as u64;
        if seq < end || seq - end > MAX_GAP {
            return self.sparse.insert(seq, v);
        }
        // Keys the run grows over leave the B-tree (no key is in both).
        let moved: Vec<(u64, V)> = if self.sparse.is_empty() {
            Vec::new()
        } else {
            let inside: Vec<u64> = self.sparse.range(end..seq).map(|(&k, _)| k).collect();
            inside
                .into_iter()
                .filter_map(|k| self.sparse.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let mut moved = moved.into_iter().peekable();
        while self.base + (self.slots.len() as u64) < seq {
            let k = self.base + self.slots.len() as u64;
            match moved.next_if(|(m, _)| *m == k) {
                Some((_, v)) => {
                    self.slots.push_back(Some(v));
                    self.dense += 1;
                }
                None => self.slots.push_back(None),
            }
        }
        self.slots.push_back(Some(v));
        self.dense += 1;
        self.compact();
        None
    }

    pub fn get(&self, seq: u64) -> Option<&V> {
        match self.slot(seq) {
            Some(i) => self.slots[i].as_ref(),
            None => self.sparse.get(&seq),
        }
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut V> {
        match self.slot(seq) {
            Some(i) => self.slots[i].as_mut(),
            None => self.sparse.get_mut(&seq),
        }
    }

    #[cfg(test)]
    pub fn contains_key(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    pub fn remove(&mut self, seq: u64) -> Option<V> {
        let Some(i) = self.slot(seq) else {
            return self.sparse.remove(&seq);
        };
        let v = self.slots[i].take()?;
        self.dense -= 1;
        self.trim();
        self.compact();
        Some(v)
    }

    /// The lowest key.
    pub fn lowest(&self) -> Option<u64> {
        let run = (self.dense > 0).then_some(self.base);
        let out = self.sparse.first_key_value().map(|(&k, _)| k);
        match (run, out) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn len(&self) -> usize {
        self.dense + self.sparse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(move |(i, _)| base + i as u64)
            .chain(self.sparse.keys().copied())
    }

    /// Drops the empty slots at the front (the front is occupied after).
    fn trim(&mut self) {
        while self.slots.front().is_some_and(Option::is_none) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Keeps the run at most about half holes: its front keys move to the
    /// B-tree.
    fn compact(&mut self) {
        while self.slots.len() > 2 * self.dense + SLACK {
            if let Some(Some(v)) = self.slots.pop_front() {
                self.dense -= 1;
                self.sparse.insert(self.base, v);
            }
            self.base += 1;
            self.trim();
        }
    }
}

impl<V: 'static> IntoIterator for SeqMap<V> {
    type Item = (u64, V);
    type IntoIter = Box<dyn Iterator<Item = (u64, V)>>;

    fn into_iter(self) -> Self::IntoIter {
        let base = self.base;
        Box::new(
            self.slots
                .into_iter()
                .enumerate()
                .filter_map(move |(i, s)| s.map(|v| (base + i as u64, v)))
                .chain(self.sparse),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        /// Inserts the next few keys after the highest so far.
        Run(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..20_000u64).prop_map(Op::Insert),
            3 => (0..20_000u64).prop_map(Op::Remove),
            3 => any::<u8>().prop_map(Op::Run),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn seq_map_against_a_btree(ops in proptest::collection::vec(op(), 1..120)) {
            let mut m = SeqMap::default();
            let mut model = BTreeMap::new();
            let mut next = 0u64;
            let mut value = 0u64;
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        value += 1;
                        prop_assert_eq!(m.insert(k, value), model.insert(k, value));
                        next = next.max(k + 1);
                    }
                    Op::Remove(k) => {
                        // Mostly keys that are there.
                        let k = model.keys().nth(k as usize % model.len().max(1)).copied().unwrap_or(k);
                        prop_assert_eq!(m.remove(k), model.remove(&k));
                    }
                    Op::Run(n) => {
                        for k in next..next + u64::from(n) {
                            value += 1;
                            prop_assert_eq!(m.insert(k, value), model.insert(k, value));
                        }
                        next += u64::from(n);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert_eq!(m.lowest(), model.keys().next().copied());
                let mut keys: Vec<u64> = m.keys().collect();
                keys.sort_unstable();
                prop_assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
                for (&k, v) in model.iter().step_by(7) {
                    prop_assert_eq!(m.get(k), Some(v));
                }
                prop_assert!(m.slots.len() <= 2 * m.dense + SLACK + 1);
            }
            let mut all: Vec<(u64, u64)> = m.into_iter().collect();
            all.sort_unstable();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_run_that_grows_over_a_key_in_the_btree_takes_it_in() {
        let mut m = SeqMap::default();
        m.insert(100, 'a');
        m.insert(10_000, 'b'); // too far past the run: the B-tree
        assert_eq!(m.remove(100), Some('a')); // the run is empty
        for k in 9_000..10_000 {
            m.insert(k, 'c'); // a new run, up to the B-tree's key
        }
        m.insert(10_001, 'd'); // grows over it
        assert_eq!(m.get(10_000), Some(&'b'));
        assert_eq!(m.len(), 1_002);
        assert_eq!(m.remove(10_000), Some('b'));
        assert_eq!(m.get(10_000), None);
        assert_eq!(m.lowest(), Some(9_000));
    }

    #[test]
    fn one_old_key_held_does_not_grow_the_run() {
        let mut m = SeqMap::default();
        m.insert(0, ());
        for k in 1..100_000u64 {
            m.insert(k, ());
            m.remove(k);
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.lowest(), Some(0));
        assert!(m.slots.len() < 1000, "{} slots for one key", m.slots.len());
    }
}
