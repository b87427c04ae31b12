//! The distinct keys of one document in first-seen order, each with its index.
//!
//! Most documents hold a handful of references: a linear scan over them costs less than
//! building and hashing into a `HashMap` for every request (the cache-hit profile in
//! docs/PERFORMANCE.md). A document may also hold thousands (up to `[limits]`), so past
//! [`FirstSeen::SMALL`] keys a hash index takes over and the work stays linear in the keys.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub(super) struct FirstSeen<K> {
    keys: Vec<K>,
    index: Option<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone> FirstSeen<K> {
    /// Keys up to this many are found by scanning.
    const SMALL: usize = 16;

    pub(super) fn new() -> Self {
        Self {
            keys: Vec::new(),
            index: None,
        }
    }

    /// The index of `key`, if it was seen.
    pub(super) fn get(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.keys.iter().position(|k| k == key),
        }
    }

    /// The index of `key`, and whether it is new (then it was added at the end).
    pub(super) fn insert(&mut self, key: K) -> (usize, bool) {
        if let Some(i) = self.get(&key) {
            return (i, false);
        }
        let i = self.keys.len();
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), i);
        }
        self.keys.push(key);
        if self.index.is_none() && self.keys.len() > Self::SMALL {
            let index = self.keys.iter().cloned().zip(0..).collect();
            self.index = Some(index);
        }
        (i, true)
    }

    pub(super) fn keys(&self) -> &[K] {
        &self.keys
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Indices and first-seen order are the same below and above the scan limit.
    #[test]
    fn indices_survive_the_switch_to_a_hash_index() {
        let mut seen = FirstSeen::new();
        for round in 0..2 {
            for k in 0..100u32 {
                let (i, new) = seen.insert(k % 40);
                assert_eq!(i, (k % 40) as usize);
                assert_eq!(new, round == 0 && k < 40, "{round} {k}");
            }
        }
        assert_eq!(seen.len(), 40);
        assert_eq!(seen.keys(), (0..40).collect::<Vec<_>>());
        assert_eq!(seen.get(&39), Some(39));
        assert_eq!(seen.get(&40), None);
        assert!(seen.index.is_some());
    }
}
