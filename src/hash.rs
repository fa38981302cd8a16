//! The hasher of every map in the core: ahash, keyed once per process.
//!
//! `ahash::RandomState` carries its four keys in every map (32 bytes each;
//! a session has three maps, every trie node with many children one). This
//! zero-sized state reads the keys from one process-wide value instead, so
//! maps stay keyed at random (HashDoS) and cost only their table.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Zero-sized [`BuildHasher`]: ahash with keys chosen at random once per
/// process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastState;

impl BuildHasher for FastState {
    type Hasher = ahash::AHasher;

    #[inline]
    fn build_hasher(&self) -> ahash::AHasher {
        static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sized_and_consistent() {
        assert_eq!(std::mem::size_of::<FastState>(), 0);
        assert_eq!(FastState.hash_one("a/b"), FastState.hash_one("a/b"));
        assert_ne!(FastState.hash_one("a/b"), FastState.hash_one("a/c"));
        let mut m: std::collections::HashMap<&str, u8, FastState> = Default::default();
        m.insert("k", 1);
        assert_eq!(m.get("k"), Some(&1));
    }
}
