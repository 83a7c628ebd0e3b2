//! Prefix cache: full KV blocks keyed by a hash chain, shared by reference count.
//!
//! The key of a full block is `hash(parent key, the block's token ids)`, the parent being the
//! key of the block before it (a fixed root for the first block), so a key names the whole
//! prefix up to the end of its block. Each entry keeps its tokens and parent key and a lookup
//! compares them, so a hash collision can only miss, never return wrong KV.
//!
//! The cache holds one reference on every block it knows. A block whose only holder is the
//! cache is *idle*: it is reusable by a later prompt with the same prefix and evictable, least
//! recently used first, when the pool runs out of free blocks. Only full blocks are cached, and
//! a sequence never writes into a full block, so sharing needs no copy: the first divergent (or
//! partly filled) block of a new prompt is always a fresh block.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::runtime::KvCache;

/// Key of the (empty) prefix before the first block.
pub const ROOT: u64 = 0x6b69_6c6e_5f72_6f6f;

/// The chained key of a block: `parent` is the key of the block before it.
pub fn block_key(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same on every run and machine of one build.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Entry {
    block: u32,
    parent: u64,
    /// The block's token ids `[block_size]`.
    tokens: Vec<u32>,
    /// Tick of the last lookup, registration or release (LRU order).
    last_used: u64,
}

/// The hash-chained block cache (see the module docs).
#[derive(Debug, Default)]
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    /// Block → its key, for the accounting checks.
    by_block: HashMap<u32, u64>,
    tick: u64,
    /// Blocks handed to new sequences from the cache (counted per block, per admission).
    pub hits: u64,
    /// Blocks evicted to make room.
    pub evicted: u64,
}

impl PrefixCache {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The cached blocks that hold the first `max_blocks` full blocks of `tokens`, stopping at
    /// the first miss, with their keys. `block_size` tokens per block.
    pub fn lookup(
        &mut self,
        tokens: &[u32],
        block_size: usize,
        max_blocks: usize,
    ) -> (Vec<u32>, Vec<u64>) {
        let mut blocks = Vec::new();
        let mut keys = Vec::new();
        let mut parent = ROOT;
        let now = self.next_tick();
        for chunk in tokens.chunks_exact(block_size).take(max_blocks) {
            let key = block_key(parent, chunk);
            match self.entries.get_mut(&key) {
                Some(e) if e.parent == parent && e.tokens == chunk => {
                    e.last_used = now;
                    blocks.push(e.block);
                    keys.push(key);
                    parent = key;
                }
                _ => break,
            }
        }
        (blocks, keys)
    }

    /// Record full block `block` with `tokens` after the prefix `parent`; the cache takes a
    /// reference on it. Returns its key. A key already cached (the same prefix computed by
    /// another sequence at the same time) keeps its block.
    pub fn register(&mut self, kv: &mut KvCache, parent: u64, tokens: &[u32], block: u32) -> u64 {
        let key = block_key(parent, tokens);
        if self.entries.contains_key(&key) || self.by_block.contains_key(&block) {
            return key;
        }
        let now = self.next_tick();
        kv.retain_block(block);
        self.entries.insert(
            key,
            Entry {
                block,
                parent,
                tokens: tokens.to_vec(),
                last_used: now,
            },
        );
        self.by_block.insert(block, key);
        key
    }

    /// Mark the blocks named by `keys` as just used (a sequence released them: they enter the
    /// LRU order as the newest idle blocks).
    pub fn touch(&mut self, keys: &[u64]) {
        let now = self.next_tick();
        for k in keys {
            if let Some(e) = self.entries.get_mut(k) {
                e.last_used = now;
            }
        }
    }

    /// Whether the cache holds a reference on `block`.
    pub fn holds(&self, block: u32) -> bool {
        self.by_block.contains_key(&block)
    }

    /// Cached blocks no sequence uses (reference count 1: the cache's own).
    pub fn idle(&self, kv: &KvCache) -> usize {
        self.entries
            .values()
            .filter(|e| kv.pool().ref_count(e.block) == 1)
            .count()
    }

    /// Blocks the cache holds a reference on.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Release idle blocks, least recently used first, until `kv` has `want` free blocks or no
    /// idle block is left. Returns the number evicted.
    pub fn evict_until(&mut self, kv: &mut KvCache, want: usize) -> usize {
        if kv.pool().available() >= want {
            return 0;
        }
        let mut idle: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| kv.pool().ref_count(e.block) == 1)
            .map(|(k, e)| (e.last_used, *k))
            .collect();
        idle.sort_unstable();
        let mut n = 0;
        for (_, key) in idle {
            if kv.pool().available() >= want {
                break;
            }
            if let Some(e) = self.entries.remove(&key) {
                self.by_block.remove(&e.block);
                kv.release_block(e.block);
                n += 1;
            }
        }
        self.evicted += n as u64;
        n
    }

    /// Drop every entry (and the cache's references).
    pub fn clear(&mut self, kv: &mut KvCache) {
        for (_, e) in self.entries.drain() {
            kv.release_block(e.block);
        }
        self.by_block.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kiln_core::{Backend, DType};

    use super::*;

    #[test]
    fn chain_shares_full_blocks_and_evicts_lru() {
        let be: Arc<dyn Backend> = Arc::new(kiln_core::ReferenceBackend::new(0));
        // 5 usable blocks of 2 tokens
        let mut kv = KvCache::new(&be, 1, 1, 4, 2, 6, 5, DType::F32).unwrap();
        let mut pc = PrefixCache::default();
        let s = kv.add_sequence();
        kv.reserve(s, 5).unwrap();
        kv.advance(s, 5).unwrap();
        let toks = [1, 2, 3, 4, 5];
        let b = kv.get(s).unwrap().blocks.clone();
        let k0 = pc.register(&mut kv, ROOT, &toks[0..2], b[0]);
        let k1 = pc.register(&mut kv, k0, &toks[2..4], b[1]);
        assert_eq!(kv.pool().ref_count(b[0]), 2);
        // a prompt sharing the first block only
        let (hit, keys) = pc.lookup(&[1, 2, 3, 9, 5], 2, 2);
        assert_eq!((hit, keys), (vec![b[0]], vec![k0]));
        // the same tokens after another prefix are another key
        assert_ne!(block_key(ROOT, &[3, 4]), k1);
        assert_eq!(pc.lookup(&[3, 4], 2, 1).0, Vec::<u32>::new());
        // in use: nothing evictable
        assert_eq!(pc.idle(&kv), 0);
        kv.remove_sequence(s);
        assert_eq!(pc.idle(&kv), 2);
        assert_eq!(kv.pool().available(), 3);
        // the least recently used (block 1 of the chain, not looked up since) goes first
        assert_eq!(pc.evict_until(&mut kv, 4), 1);
        assert!(!pc.holds(b[1]) && pc.holds(b[0]));
        assert_eq!(kv.pool().available(), 4);
        pc.clear(&mut kv);
        assert_eq!(kv.pool().available(), 5);
    }
}
