//! Changes to a table that apply made since the last checkpoint, kept in memory over the
//! table's last durable contents (issue 25: the state machine writes redb at checkpoints, not
//! at every apply batch).
//!
//! A lookup asks the overlay first: a key it holds was written ([`Lookup::Written`]) or removed
//! ([`Lookup::Removed`]) since the checkpoint, whatever the file says; only an
//! [`Lookup::Unknown`] key is read from the file. A range read merges the overlay's range with
//! the file's, the overlay winning on equal keys and hiding removed ones.
//!
//! A checkpoint writes the overlay into one redb transaction, in key order. After a crash the
//! overlay is gone and openraft re-applies the entries after the checkpoint's `last_applied`,
//! rebuilding it (`crate::live`).

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::RangeBounds;

/// What the overlay knows of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup<V> {
    /// Written since the checkpoint: this is the value.
    Written(V),
    /// Removed since the checkpoint: the key does not exist, whatever the file holds.
    Removed,
    /// Not touched since the checkpoint: the file knows.
    Unknown,
}

/// The changes to one table since the last checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Overlay<K, V> {
    changes: BTreeMap<K, Option<V>>,
    /// The hash of every key in `changes`. Most lookups in apply are of keys that a layer never
    /// saw (a new user's stream and email), and a probe here answers those without walking
    /// the map, whose linear search inside each node compares long string keys dozens of
    /// times (4,400 instructions for one owner lookup through the layers, in callgrind;
    /// bench/README.md, issue 25 step 8).
    hashes: HashSet<u64, BuildHasherDefault<KeyHashIsTheHash>>,
}

impl<K, V> Default for Overlay<K, V> {
    fn default() -> Self {
        Overlay {
            changes: BTreeMap::new(),
            hashes: HashSet::default(),
        }
    }
}

/// The hash of a key (or of its borrowed form: `String` and `str` hash alike), with fixed
/// seeds: the filter decides nothing, but a run should be the same run every time.
fn key_hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    ahash::RandomState::with_seeds(0x7569_6e69, 0x716c_6f67, 0x6b65_7973, 0x6669_6c74).hash_one(key)
}

/// The set's members are hashes already: hashing them again would only cost.
#[derive(Default)]
struct KeyHashIsTheHash(u64);

impl Hasher for KeyHashIsTheHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the set holds `u64`s); fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<K: Ord + Hash, V> Overlay<K, V> {
    /// What the overlay knows of `key` (a `&str` for a `String` key: no allocation).
    pub(crate) fn get<Q: Ord + Hash + ?Sized>(&self, key: &Q) -> Lookup<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        if !self.hashes.contains(&key_hash(key)) {
            return Lookup::Unknown;
        }
        match self.changes.get(key) {
            Some(Some(v)) => Lookup::Written(v),
            Some(None) => Lookup::Removed,
            None => Lookup::Unknown,
        }
    }

    /// The value of `key`: the overlay's if it knows the key, else `base`'s.
    #[cfg(test)]
    pub(crate) fn get_or<E>(
        &self,
        key: &K,
        base: impl FnOnce(&K) -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E>
    where
        V: Clone,
    {
        match self.get(key) {
            Lookup::Written(v) => Ok(Some(v.clone())),
            Lookup::Removed => Ok(None),
            Lookup::Unknown => base(key),
        }
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.hashes.insert(key_hash(&key));
        self.changes.insert(key, Some(value));
    }

    pub(crate) fn remove(&mut self, key: K) {
        self.hashes.insert(key_hash(&key));
        self.changes.insert(key, None);
    }

    /// Lay `newer`'s changes over this overlay's (a batch merged into the layer below it).
    pub(crate) fn absorb(&mut self, newer: Overlay<K, V>) {
        if self.changes.is_empty() {
            self.changes = newer.changes;
            self.hashes = newer.hashes;
        } else {
            self.changes.extend(newer.changes);
            self.hashes.extend(newer.hashes);
        }
    }
}

/// What needs no key hashes: reads in key order and changes in place.
impl<K: Ord, V> Overlay<K, V> {
    /// Keys changed since the checkpoint.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }

    /// Every change in key order, leaving the overlay as it is: what a checkpoint of a frozen
    /// layer writes.
    pub(crate) fn changes(&self) -> impl Iterator<Item = (&K, Option<&V>)> {
        self.changes.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// The value written under `key` in this overlay, to change in place (no new key).
    pub(crate) fn written_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.changes.get_mut(key).and_then(Option::as_mut)
    }

    /// The rows of `range` as they are now: `base` (the file's rows of the same range, in key
    /// order, or in reverse with `descending`) with the overlay's changes laid over it.
    pub(crate) fn merge<'a, R, I, E>(
        &'a self,
        range: R,
        base: I,
        descending: bool,
    ) -> impl Iterator<Item = Result<(K, V), E>> + 'a
    where
        R: RangeBounds<K>,
        I: Iterator<Item = Result<(K, V), E>> + 'a,
        K: Clone,
        V: Clone,
    {
        let changes = self.changes.range(range);
        let overlay: Changes<'a, K, V> = if descending {
            Box::new(changes.rev())
        } else {
            Box::new(changes)
        };
        Merge {
            overlay: overlay.peekable(),
            base: base.peekable(),
            descending,
        }
    }
}

type Changes<'a, K, V> = Box<dyn Iterator<Item = (&'a K, &'a Option<V>)> + 'a>;

struct Merge<'a, K, V, I: Iterator> {
    overlay: std::iter::Peekable<Changes<'a, K, V>>,
    base: std::iter::Peekable<I>,
    /// Keys come from the largest down.
    descending: bool,
}

impl<'a, K, V, I, E> Iterator for Merge<'a, K, V, I>
where
    K: Ord + Clone,
    V: Clone,
    I: Iterator<Item = Result<(K, V), E>>,
{
    type Item = Result<(K, V), E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let from_overlay = match (self.overlay.peek(), self.base.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                // An error from the file is handed on at once.
                (_, Some(Err(_))) => false,
                (Some((ok, _)), Some(Ok((bk, _)))) => {
                    if *ok == bk {
                        // The overlay's change replaces the file's row.
                        self.base.next();
                        true
                    } else {
                        (*ok < bk) != self.descending
                    }
                }
            };
            if from_overlay {
                let (k, v) = self.overlay.next().expect("peeked");
                match v {
                    Some(v) => return Some(Ok((k.clone(), v.clone()))),
                    None => continue,
                }
            }
            return self.base.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Remove(u8),
        /// The batch's changes go into the layer below it (the end of an apply batch).
        Absorb,
        /// The layer (with the batch absorbed first) is written to the file.
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k % 32, v)),
            2 => any::<u8>().prop_map(|k| Op::Remove(k % 32)),
            2 => Just(Op::Absorb),
            1 => Just(Op::Checkpoint),
        ]
    }

    proptest! {
        /// A batch over a layer over a file reads like one map that took every change
        /// directly, before and after batches are absorbed and layers checkpointed, for single
        /// keys and for every range, in both directions.
        #[test]
        fn reads_as_if_every_change_went_to_the_file(
            ops in prop::collection::vec(op(), 0..200),
            lo in 0u8..32,
            len in 0u8..32,
        ) {
            let mut file: BTreeMap<u8, u16> = BTreeMap::new();
            let mut layer: Overlay<u8, u16> = Overlay::default();
            let mut batch: Overlay<u8, u16> = Overlay::default();
            let mut model: BTreeMap<u8, u16> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        batch.insert(k, v);
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        batch.remove(k);
                        model.remove(&k);
                    }
                    Op::Absorb => layer.absorb(std::mem::take(&mut batch)),
                    Op::Checkpoint => {
                        layer.absorb(std::mem::take(&mut batch));
                        for (k, v) in layer.changes() {
                            match v {
                                Some(v) => file.insert(*k, *v),
                                None => file.remove(k),
                            };
                        }
                        layer = Overlay::default();
                    }
                }
                for k in 0..32u8 {
                    let got = batch
                        .get_or(&k, |k| {
                            layer.get_or(k, |k| Ok::<_, ()>(file.get(k).copied()))
                        })
                        .unwrap();
                    prop_assert_eq!(got, model.get(&k).copied());
                }
                let hi = lo.saturating_add(len);
                let base = file.range(lo..hi).map(|(k, v)| Ok::<_, ()>((*k, *v)));
                let merged: Vec<(u8, u16)> = batch
                    .merge(lo..hi, layer.merge(lo..hi, base, false), false)
                    .collect::<Result<_, _>>()
                    .unwrap();
                let expected: Vec<(u8, u16)> =
                    model.range(lo..hi).map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(merged, expected.clone());
                let base_rev = file.range(lo..hi).rev().map(|(k, v)| Ok::<_, ()>((*k, *v)));
                let merged_rev: Vec<(u8, u16)> = batch
                    .merge(lo..hi, layer.merge(lo..hi, base_rev, true), true)
                    .collect::<Result<_, _>>()
                    .unwrap();
                let expected_rev: Vec<(u8, u16)> = expected.into_iter().rev().collect();
                prop_assert_eq!(merged_rev, expected_rev);
            }
        }
    }

    #[test]
    fn an_error_from_the_file_is_handed_on() {
        let mut overlay: Overlay<u8, u8> = Overlay::default();
        overlay.insert(1, 10);
        let base = vec![Ok((0, 0)), Err("damaged"), Ok((2, 2))].into_iter();
        let got: Vec<_> = overlay.merge(.., base, false).collect();
        assert_eq!(
            got,
            vec![Ok((0, 0)), Err("damaged"), Ok((1, 10)), Ok((2, 2))]
        );
    }
}
