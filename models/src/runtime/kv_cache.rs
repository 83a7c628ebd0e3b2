//! The paged KV cache: a pool of fixed-size blocks with a free list and reference counts, and
//! per-sequence block tables.
//!
//! Device layout, per layer: K and V `[num_blocks, n_kv_heads, block_size, head_dim]` (f16 by
//! default). KV position p of a sequence lives in block `table[p / block_size]`, row
//! `p % block_size`; its slot is `block · block_size + row`.
//!
//! Block 0 is the *null block*: never handed out, zero-filled at creation. Padding rows of a
//! batch-size bucket and unused block-table entries point at it, so a captured decode step
//! reads finite zeros there instead of another sequence's data.
//!
//! The allocator is what the engine builds on: blocks are reference-counted, so a prefix can be
//! shared by several sequences ([`KvCache::fork`]) and is returned to the free list when the last
//! sequence holding it lets go; a sequence can be dropped at any time to free its blocks
//! (preemption).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_core::{Backend, DType, PagedKv, Shape, Tensor};

use crate::error::{ModelError, Result};

/// The null block (see the module docs).
pub const NULL_BLOCK: u32 = 0;

/// A pool of `num_blocks` blocks; block 0 is reserved.
#[derive(Debug)]
pub struct BlockPool {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> BlockPool {
        // Hand out low ids first (pop from the end).
        let free = (1..num_blocks as u32).rev().collect();
        BlockPool {
            free,
            refs: vec![0; num_blocks],
        }
    }
    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }
    /// Blocks that can still be allocated.
    pub fn available(&self) -> usize {
        self.free.len()
    }
    /// A fresh block with one reference, `None` when the pool is exhausted.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refs[b as usize] = 1;
        Some(b)
    }
    /// One more holder of `b`.
    pub fn retain(&mut self, b: u32) {
        if let Some(r) = self.refs.get_mut(b as usize)
            && *r > 0
        {
            *r += 1;
        }
    }
    /// One holder fewer; the block returns to the free list at zero.
    pub fn release(&mut self, b: u32) {
        if let Some(r) = self.refs.get_mut(b as usize)
            && *r > 0
        {
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }
    pub fn ref_count(&self, b: u32) -> u32 {
        self.refs.get(b as usize).copied().unwrap_or(0)
    }
}

/// A sequence's identity in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// One sequence's blocks and length.
#[derive(Clone, Debug, Default)]
pub struct SeqBlocks {
    pub blocks: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    pub len: usize,
}

/// Where one device's part of the cache lives: the layers it holds and its KV heads (a
/// tensor-parallel rank holds every layer with its share of the heads).
pub struct KvPart<'a> {
    pub backend: &'a Arc<dyn Backend>,
    pub layers: std::ops::Range<usize>,
    pub n_kv_heads: usize,
}

/// Per-layer K/V buffers, the block pool and the sequences' block tables.
///
/// One block table serves every device: a layer's K/V live on the device holding the layer
/// (layer split) or on every rank with its heads (tensor parallelism), all with the same
/// block ids.
pub struct KvCache {
    /// Per layer, per device holding it (in part order): (K, V), each
    /// `[num_blocks, n_kv_heads, block_size, head_dim]`.
    layers: Vec<Vec<(Tensor, Tensor)>>,
    pool: BlockPool,
    seqs: HashMap<SeqId, SeqBlocks>,
    next_id: u64,
    block_size: usize,
    /// Block-table width: blocks of the longest sequence the plan allows.
    max_blocks: usize,
    dtype: DType,
    bytes: usize,
}

impl KvCache {
    /// Allocate `num_blocks` blocks for every layer on `backend` and zero the null block.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: &Arc<dyn Backend>,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        num_blocks: usize,
        max_blocks: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        let part = KvPart {
            backend,
            layers: 0..n_layers,
            n_kv_heads,
        };
        Self::placed(
            &[part],
            n_layers,
            head_dim,
            block_size,
            num_blocks,
            max_blocks,
            dtype,
        )
    }

    /// A cache whose layers live on several devices (see [`KvPart`]); every layer below
    /// `n_layers` must be held by at least one part.
    #[allow(clippy::too_many_arguments)]
    pub fn placed(
        parts: &[KvPart<'_>],
        n_layers: usize,
        head_dim: usize,
        block_size: usize,
        num_blocks: usize,
        max_blocks: usize,
        dtype: DType,
    ) -> Result<KvCache> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::Runtime(format!(
                "KV cache dtype {dtype} is not supported (f32, f16, bf16)"
            )));
        }
        if block_size == 0 || num_blocks < 2 {
            return Err(ModelError::Runtime(format!(
                "KV cache of {num_blocks} blocks × {block_size} rows: need a block size > 0 and at least 2 blocks (block 0 is reserved)"
            )));
        }
        let mut layers: Vec<Vec<(Tensor, Tensor)>> = (0..n_layers).map(|_| Vec::new()).collect();
        let mut total = 0;
        for part in parts {
            let shape = Shape::d4(num_blocks, part.n_kv_heads, block_size, head_dim);
            let bytes = dtype
                .bytes_for(shape.numel())
                .map_err(|e| ModelError::backend("sizing the KV cache", e))?;
            let zeros = vec![0u8; bytes / num_blocks];
            for l in part.layers.clone() {
                let on = part.backend.id();
                let ctx = |what| {
                    format!("allocating the {what} cache of layer {l} on {on} ({bytes} bytes)")
                };
                let mut kv = Vec::with_capacity(2);
                for what in ["K", "V"] {
                    let buf = part
                        .backend
                        .alloc(bytes)
                        .map_err(|e| ModelError::backend(ctx(what), e))?;
                    // bf16/f16/f32 zero is all-zero bytes: the null block.
                    part.backend
                        .write(&buf, 0, &zeros)
                        .map_err(|e| ModelError::backend(ctx(what), e))?;
                    kv.push(
                        Tensor::new(buf, 0, shape, dtype)
                            .map_err(|e| ModelError::backend(ctx(what), e))?,
                    );
                    total += bytes;
                }
                let slot = layers.get_mut(l).ok_or_else(|| {
                    ModelError::Runtime(format!("KV part holds layer {l} of {n_layers}"))
                })?;
                if let (Some(v), Some(k)) = (kv.pop(), kv.pop()) {
                    slot.push((k, v));
                }
            }
        }
        if let Some(l) = layers.iter().position(Vec::is_empty) {
            return Err(ModelError::Runtime(format!(
                "KV cache: no device holds layer {l}"
            )));
        }
        Ok(KvCache {
            layers,
            pool: BlockPool::new(num_blocks),
            seqs: HashMap::new(),
            next_id: 0,
            block_size,
            max_blocks,
            dtype,
            bytes: total,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Device bytes of all layers' K and V.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }
    /// Layer `l`'s cache as the attention ops take it (on the first device holding it).
    pub fn layer(&self, l: usize) -> Result<PagedKv<'_>> {
        self.layer_on(l, 0)
    }

    /// Layer `l`'s cache on the `i`-th device holding it (a tensor-parallel rank).
    pub fn layer_on(&self, l: usize, i: usize) -> Result<PagedKv<'_>> {
        let (k, v) =
            self.layers.get(l).and_then(|d| d.get(i)).ok_or_else(|| {
                ModelError::Runtime(format!("KV cache has no layer {l} part {i}"))
            })?;
        PagedKv::new(k.view_mut(), v.view_mut())
            .map_err(|e| ModelError::backend("KV cache view", e))
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, SeqBlocks::default());
        id
    }

    /// A new sequence sharing the first `len` cached tokens of `parent` (whole blocks are
    /// shared; a partly filled last block is shared too, so the child must not write into it:
    /// the engine copies or recomputes that block before appending).
    pub fn fork(&mut self, parent: SeqId, len: usize) -> Result<SeqId> {
        let p = self.get(parent)?;
        if len > p.len {
            return Err(ModelError::Runtime(format!(
                "fork of {len} tokens from a sequence of {}",
                p.len
            )));
        }
        let n_blocks = len.div_ceil(self.block_size);
        let blocks: Vec<u32> = p.blocks[..n_blocks].to_vec();
        for &b in &blocks {
            self.pool.retain(b);
        }
        let id = self.add_sequence();
        self.seqs.insert(id, SeqBlocks { blocks, len });
        Ok(id)
    }

    /// A new sequence made of `blocks` already filled by others (a cached prefix), holding
    /// `len` tokens; each block gains a reference. The blocks must be allocated (reference
    /// count ≥ 1) and cover `len`: `len.div_ceil(block_size) == blocks.len()`.
    pub fn add_sequence_with(&mut self, blocks: &[u32], len: usize) -> Result<SeqId> {
        if len.div_ceil(self.block_size) != blocks.len() || blocks.len() > self.max_blocks {
            return Err(ModelError::Runtime(format!(
                "a sequence of {len} tokens over {} blocks of {} (at most {} blocks)",
                blocks.len(),
                self.block_size,
                self.max_blocks
            )));
        }
        if let Some(&b) = blocks
            .iter()
            .find(|&&b| b == NULL_BLOCK || self.pool.ref_count(b) == 0)
        {
            return Err(ModelError::Runtime(format!(
                "block {b} is not allocated: it cannot start a sequence"
            )));
        }
        for &b in blocks {
            self.pool.retain(b);
        }
        let id = self.add_sequence();
        self.seqs.insert(
            id,
            SeqBlocks {
                blocks: blocks.to_vec(),
                len,
            },
        );
        Ok(id)
    }

    /// One more holder of block `b` outside any sequence (the engine's prefix cache).
    pub fn retain_block(&mut self, b: u32) {
        self.pool.retain(b);
    }

    /// Drop a holder of block `b` taken with [`KvCache::retain_block`].
    pub fn release_block(&mut self, b: u32) {
        self.pool.release(b);
    }

    /// Sequences currently in the cache.
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Drop a sequence and release its blocks.
    pub fn remove_sequence(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.remove(&id) {
            for b in s.blocks {
                self.pool.release(b);
            }
        }
    }

    pub fn get(&self, id: SeqId) -> Result<&SeqBlocks> {
        self.seqs
            .get(&id)
            .ok_or_else(|| ModelError::Runtime(format!("no sequence {id:?} in the KV cache")))
    }

    /// Cached length of a sequence.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.get(id)?.len)
    }

    /// Make room for `new_len` tokens: allocate the missing blocks. On failure nothing changes.
    pub fn reserve(&mut self, id: SeqId, new_len: usize) -> Result<()> {
        let need = new_len.div_ceil(self.block_size);
        if need > self.max_blocks {
            return Err(ModelError::Runtime(format!(
                "a sequence of {new_len} tokens exceeds the planned context of {} tokens",
                self.max_blocks * self.block_size
            )));
        }
        let have = self.get(id)?.blocks.len();
        let missing = need.saturating_sub(have);
        if missing > self.pool.available() {
            return Err(ModelError::Runtime(format!(
                "KV cache full: {missing} more blocks needed, {} free of {}",
                self.pool.available(),
                self.pool.num_blocks() - 1
            )));
        }
        let mut fresh = Vec::with_capacity(missing);
        for _ in 0..missing {
            if let Some(b) = self.pool.alloc() {
                fresh.push(b);
            }
        }
        if let Some(s) = self.seqs.get_mut(&id) {
            s.blocks.extend(fresh);
        }
        Ok(())
    }

    /// Record that `n` more tokens of `id` are in the cache.
    pub fn advance(&mut self, id: SeqId, n: usize) -> Result<()> {
        let bs = self.block_size;
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| ModelError::Runtime(format!("no sequence {id:?} in the KV cache")))?;
        if (s.len + n).div_ceil(bs) > s.blocks.len() {
            return Err(ModelError::Runtime(format!(
                "advance past the reserved blocks of {id:?}"
            )));
        }
        s.len += n;
        Ok(())
    }

    /// Forget the last tokens of a sequence beyond `len` (blocks no longer needed are released).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let bs = self.block_size;
        let s = self
            .seqs
            .get_mut(&id)
            .ok_or_else(|| ModelError::Runtime(format!("no sequence {id:?} in the KV cache")))?;
        s.len = s.len.min(len);
        let keep = s.len.div_ceil(bs);
        for b in s.blocks.drain(keep..) {
            self.pool.release(b);
        }
        Ok(())
    }

    /// Slot of position `pos` of a sequence (its block must be reserved).
    pub fn slot(&self, s: &SeqBlocks, pos: usize) -> Option<i32> {
        let b = *s.blocks.get(pos / self.block_size)?;
        i32::try_from(b as usize * self.block_size + pos % self.block_size).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_blocks_and_counts_references() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.available(), 3);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!((a, b), (1, 2));
        p.retain(a);
        p.release(a);
        assert_eq!(p.available(), 1);
        p.release(a);
        assert_eq!(p.available(), 2);
        assert_eq!(p.alloc(), Some(a));
        assert_eq!(p.alloc(), Some(3));
        assert_eq!(p.alloc(), None);
        // the null block is never handed out nor freed into the list
        p.release(NULL_BLOCK);
        assert_eq!(p.available(), 0);
    }

    #[test]
    fn sequences_reserve_fork_truncate() {
        let be: Arc<dyn Backend> = Arc::new(kiln_core::ReferenceBackend::new(0));
        let mut kv = KvCache::new(&be, 1, 1, 4, 2, 6, 3, DType::F16).unwrap();
        let s = kv.add_sequence();
        kv.reserve(s, 5).unwrap();
        kv.advance(s, 5).unwrap();
        assert_eq!(kv.get(s).unwrap().blocks, vec![1, 2, 3]);
        assert_eq!(kv.slot(kv.get(s).unwrap(), 4), Some(6));
        // beyond the planned context
        assert!(
            kv.reserve(s, 7)
                .unwrap_err()
                .to_string()
                .contains("context")
        );
        let c = kv.fork(s, 4).unwrap();
        assert_eq!(kv.get(c).unwrap().blocks, vec![1, 2]);
        assert_eq!(kv.pool().ref_count(1), 2);
        let t = kv.add_sequence();
        kv.reserve(t, 4).unwrap();
        // only 5 usable blocks: 3 (s) + 2 (t); nothing left
        let u = kv.add_sequence();
        assert!(
            kv.reserve(u, 1)
                .unwrap_err()
                .to_string()
                .contains("KV cache full")
        );
        kv.remove_sequence(s);
        assert_eq!(kv.pool().available(), 1); // block 3; 1 and 2 still held by the fork
        kv.truncate(c, 1).unwrap();
        assert_eq!(kv.get(c).unwrap().blocks, vec![1]);
        assert_eq!(kv.pool().available(), 2);
        // a sequence over cached blocks shares them; a free block cannot start one
        kv.retain_block(1);
        let d = kv.add_sequence_with(&[1], 2).unwrap();
        assert_eq!(kv.pool().ref_count(1), 3);
        assert!(kv.add_sequence_with(&[3], 2).is_err());
        assert!(kv.add_sequence_with(&[1], 3).is_err());
        kv.remove_sequence(d);
        kv.release_block(1);
        assert_eq!(kv.pool().ref_count(1), 1);
        assert_eq!(kv.num_sequences(), 3);
    }
}
