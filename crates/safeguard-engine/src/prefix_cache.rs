//! The policy-prefix KV cache: the keys and values of a rendered system + policy prefix,
//! computed once per (model, exact token prefix) and reused for every image judged under it.
//!
//! Entries are keyed by the token ids themselves (a hash finds the bucket, the ids are
//! compared in full, so two prefixes never share an entry by accident) and evicted least
//! recently used first when the memory budget would be exceeded. A prefix larger than the
//! whole budget is never stored. A cache with a budget of 0 stores nothing: every lookup
//! misses and the caller recomputes the prefix, which is how the "cache off" path runs.
//!
//! Entries hold a [`KvCache`], whose tensors are reference-counted: handing one out is a
//! cheap clone, and the caller extends its clone without touching the stored entry.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use safeguard_model::qwen2_5_vl::KvCache;

/// Counters of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to compute the prefix.
    pub misses: u64,
    /// Entries dropped to stay within the budget.
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now (keys and values of every layer).
    pub bytes: usize,
    /// The budget, in bytes.
    pub budget: usize,
}

#[derive(Debug)]
struct Entry {
    ids: Vec<u32>,
    kv: KvCache,
    bytes: usize,
    last_used: u64,
}

/// An LRU map from exact token prefixes to their keys/values, bounded in bytes.
#[derive(Debug)]
pub struct PrefixCache {
    entries: HashMap<u64, Vec<Entry>>,
    budget: usize,
    clock: u64,
    stats: PrefixCacheStats,
}

fn key(ids: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// An empty cache holding at most `budget` bytes (0 = off).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            budget,
            clock: 0,
            stats: PrefixCacheStats {
                budget,
                ..Default::default()
            },
        }
    }

    /// The stored keys/values of exactly `ids`, if present (counts a hit or a miss).
    pub fn get(&mut self, ids: &[u32]) -> Option<KvCache> {
        self.clock += 1;
        let now = self.clock;
        let found = self
            .entries
            .get_mut(&key(ids))
            .and_then(|bucket| bucket.iter_mut().find(|e| e.ids == ids))
            .map(|e| {
                e.last_used = now;
                e.kv.clone()
            });
        match found {
            Some(_) => self.stats.hits += 1,
            None => self.stats.misses += 1,
        }
        found
    }

    /// Stores `kv` (the keys/values of exactly `ids`, taking `bytes`), evicting the least
    /// recently used entries as needed. Returns false (and stores nothing) when `bytes` is
    /// larger than the whole budget.
    pub fn insert(&mut self, ids: &[u32], kv: KvCache, bytes: usize) -> bool {
        if bytes > self.budget {
            return false;
        }
        self.remove(ids);
        while self.stats.bytes + bytes > self.budget {
            if !self.evict_oldest() {
                break;
            }
        }
        self.clock += 1;
        self.entries.entry(key(ids)).or_default().push(Entry {
            ids: ids.to_vec(),
            kv,
            bytes,
            last_used: self.clock,
        });
        self.stats.entries += 1;
        self.stats.bytes += bytes;
        true
    }

    fn remove(&mut self, ids: &[u32]) {
        let k = key(ids);
        if let Some(bucket) = self.entries.get_mut(&k) {
            if let Some(i) = bucket.iter().position(|e| e.ids == ids) {
                let e = bucket.swap_remove(i);
                self.stats.entries -= 1;
                self.stats.bytes -= e.bytes;
            }
            if bucket.is_empty() {
                self.entries.remove(&k);
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .entries
            .values()
            .flatten()
            .min_by_key(|e| e.last_used)
            .map(|e| e.ids.clone());
        match oldest {
            Some(ids) => {
                self.remove(&ids);
                self.stats.evictions += 1;
                true
            }
            None => false,
        }
    }

    /// The counters.
    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_respects_the_budget_and_recency() {
        let mut cache = PrefixCache::new(100);
        assert!(cache.insert(&[1, 2], KvCache::new(), 40));
        assert!(cache.insert(&[3], KvCache::new(), 40));
        assert!(cache.get(&[1, 2]).is_some()); // [1, 2] is now the most recent
        assert!(cache.insert(&[4], KvCache::new(), 40)); // evicts [3]
        assert!(cache.get(&[3]).is_none());
        assert!(cache.get(&[1, 2]).is_some());
        assert!(cache.get(&[4]).is_some());
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evictions), (2, 80, 1));
        assert_eq!((stats.hits, stats.misses), (3, 1));
    }

    #[test]
    fn exact_ids_only_and_oversized_entries_are_refused() {
        let mut cache = PrefixCache::new(10);
        assert!(!cache.insert(&[1], KvCache::new(), 11));
        assert!(cache.insert(&[1, 2, 3], KvCache::new(), 10));
        assert!(cache.get(&[1, 2]).is_none());
        assert!(cache.get(&[1, 2, 3, 4]).is_none());
        assert!(cache.get(&[1, 2, 3]).is_some());
        // Re-inserting the same prefix replaces it instead of double counting.
        assert!(cache.insert(&[1, 2, 3], KvCache::new(), 10));
        assert_eq!(cache.stats().bytes, 10);
        let mut off = PrefixCache::new(0);
        assert!(!off.insert(&[1], KvCache::new(), 1));
        assert!(off.get(&[1]).is_none());
    }
}
