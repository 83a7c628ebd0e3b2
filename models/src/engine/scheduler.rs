//! The scheduler: one [`Runtime::step`] per call over a batch mixing decode rows and prefill
//! chunks, admission under the token budget and the free KV blocks, prefix-cache reuse,
//! preemption of the youngest running request, cancellation. See the module docs of
//! [`crate::engine`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::prefix::{PrefixCache, ROOT};
use super::request::Req;
use super::{EventSink, FinishReason, RequestId};
use crate::error::{ModelError, Result};
use crate::runtime::generate::{GenerateOptions, StopReason};
use crate::runtime::{Logits, Model, Runtime, RuntimeOptions, Sampler, SeqInput};
use rayon::prelude::*;

/// How an engine is sized.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// The runtime under the engine: `max_seqs` is the most sequences per step, `chunk` the
    /// most tokens per step, `kv_blocks` the KV pool.
    pub runtime: RuntimeOptions,
    /// Tokens per step, decode rows and prefill chunks together (clamped to `runtime.chunk`).
    pub max_batch_tokens: usize,
    /// Requests waiting for their first admission before `submit` refuses with
    /// [`ModelError::QueueFull`].
    pub max_queue: usize,
    /// Share full prompt blocks between requests.
    pub prefix_cache: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            runtime: RuntimeOptions {
                max_seqs: 32,
                chunk: 512,
                ..RuntimeOptions::default()
            },
            max_batch_tokens: 512,
            max_queue: 256,
            prefix_cache: true,
        }
    }
}

/// KV blocks by state; `free + cached + in_use == total` (block 0, the null block, is not
/// counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounts {
    pub total: usize,
    pub free: usize,
    /// Held only by the prefix cache: reusable, evictable.
    pub cached: usize,
    /// Held by at least one sequence.
    pub in_use: usize,
}

/// Counters since the scheduler started, and the current state.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    pub steps: u64,
    pub running: usize,
    pub waiting: usize,
    pub finished: u64,
    pub cancelled: u64,
    pub errors: u64,
    pub preemptions: u64,
    /// Blocks handed to admitted requests from the prefix cache.
    pub prefix_hit_blocks: u64,
    pub evicted_blocks: u64,
    pub generated_tokens: u64,
    /// Tokens run in steps (prompt chunks, recomputation and decode rows).
    pub step_tokens: u64,
    /// Steps that were pure decode (one token per sequence) and of those, the ones that
    /// replayed a captured graph.
    pub decode_steps: u64,
    pub replayed_steps: u64,
    /// Decode-graph captures that failed and ran eagerly instead (`StepStats::capture_failures`).
    pub capture_failures: u64,
    /// Where the engine thread's time went: inside `Runtime::step` (the device step and the
    /// logits' copy to the host), sampling, and the whole of [`Scheduler::step`] (these two
    /// plus planning, admission, block accounting and streaming).
    pub runtime_time: Duration,
    /// Of `runtime_time`: copying the logits to the host.
    pub logits_time: Duration,
    pub sample_time: Duration,
    pub busy_time: Duration,
    pub blocks: BlockCounts,
}

/// Sample the next token of every planned row that ends its request's pending tokens (row k of
/// `logits` belongs to `running[rows[k].0]`); `None` for prefill chunks that do not. Many rows
/// are sampled in parallel (each request has its own sampler and random state, so the result
/// does not depend on the thread count): a greedy argmax streams its 0.5 MB row (128k vocab) from
/// memory at a few GB/s per core, and on the H200 host 64 rows one after the other took 10 ms per
/// step, as long as the decode step itself (kiln bench serve's engine split).
fn sample_rows(
    running: &mut [Req<'_>],
    rows: &[(usize, usize)],
    logits: &Logits<'_>,
) -> Vec<Option<u32>> {
    let mut row_of: Vec<Option<usize>> = vec![None; running.len()];
    for (k, &(i, n)) in rows.iter().enumerate() {
        if let Some(r) = running.get(i)
            && r.fed + n == r.tokens.len()
        {
            row_of[i] = Some(k);
        }
    }
    let mut jobs: Vec<(usize, &mut Sampler, &[u32])> = running
        .iter_mut()
        .zip(row_of)
        .filter_map(|(r, k)| k.map(|k| (k, &mut r.sampler, r.tokens.as_slice())))
        .collect();
    let run = |(k, s, t): &mut (usize, &mut Sampler, &[u32])| (*k, s.sample(logits.row(*k), t));
    let done: Vec<(usize, u32)> = if jobs.len() >= PARALLEL_SAMPLING_ROWS {
        jobs.par_iter_mut().map(run).collect()
    } else {
        jobs.iter_mut().map(run).collect()
    };
    let mut out = vec![None; rows.len()];
    for (k, t) in done {
        out[k] = Some(t);
    }
    out
}

/// Rows from which sampling runs on the thread pool.
const PARALLEL_SAMPLING_ROWS: usize = 4;

/// The synchronous engine core (see the module docs).
pub struct Scheduler<'m> {
    model: &'m Model,
    rt: Runtime,
    opts: EngineOptions,
    waiting: VecDeque<Req<'m>>,
    /// In admission order: the youngest is last.
    running: Vec<Req<'m>>,
    prefix: PrefixCache,
    next_id: RequestId,
    stats: EngineStats,
    /// Requests submitted and not yet admitted once (the queue bound), shared with `Engine`.
    queued: Arc<AtomicUsize>,
}

impl<'m> Scheduler<'m> {
    pub fn new(model: &'m Model, mut opts: EngineOptions) -> Result<Scheduler<'m>> {
        opts.max_batch_tokens = opts.max_batch_tokens.clamp(1, opts.runtime.chunk.max(1));
        let rt = Runtime::new(model, opts.runtime.clone())?;
        Ok(Scheduler {
            model,
            rt,
            opts,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix: PrefixCache::default(),
            next_id: 0,
            stats: EngineStats::default(),
            queued: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
    /// Tokens per sequence.
    pub fn context(&self) -> usize {
        self.rt.context()
    }
    /// Usable KV blocks (the null block excluded).
    pub fn total_blocks(&self) -> usize {
        self.rt.kv().pool().num_blocks() - 1
    }
    pub(crate) fn queued_counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
    /// No request running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Why `prompt` cannot be served, if it cannot: empty, a token outside the vocabulary,
    /// longer than the context, or more KV blocks than the pool has.
    pub fn validate(&self, prompt: &[u32]) -> Result<()> {
        validate(
            prompt,
            self.model.config().vocab,
            self.context(),
            self.rt.kv().block_size(),
            self.total_blocks(),
        )
    }

    /// Queue a request; its events go to `sink`. Returns its id and its cancel flag (set it to
    /// cancel). Refused when the queue is full or the prompt cannot be served.
    pub fn submit(
        &mut self,
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sink: Box<dyn EventSink>,
    ) -> Result<(RequestId, Arc<AtomicBool>)> {
        self.validate(&prompt)?;
        let max = self.opts.max_queue;
        if self.queued.fetch_add(1, Ordering::SeqCst) >= max {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(ModelError::QueueFull { max });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.next_id;
        self.next_id += 1;
        self.enqueue(id, prompt, opts, sink, cancel.clone());
        Ok((id, cancel))
    }

    /// Queue a request already validated and counted against the queue bound.
    pub(crate) fn enqueue(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sink: Box<dyn EventSink>,
        cancel: Arc<AtomicBool>,
    ) {
        let tok = self.model.tokenizer();
        self.waiting
            .push_back(Req::new(id, tok, prompt, opts, sink, cancel));
    }

    /// Cancel every request (engine shutdown).
    pub fn cancel_all(&mut self) {
        for r in self.running.iter().chain(self.waiting.iter()) {
            r.cancel.store(true, Ordering::Relaxed);
        }
        self.reap_cancelled();
    }

    /// Counters and the current block state.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        s.running = self.running.len();
        s.waiting = self.waiting.len();
        s.prefix_hit_blocks = self.prefix.hits;
        s.evicted_blocks = self.prefix.evicted;
        let kv = self.rt.kv();
        let free = kv.pool().available();
        let cached = self.prefix.idle(kv);
        let total = self.total_blocks();
        s.blocks = BlockCounts {
            total,
            free,
            cached,
            in_use: total - free - cached,
        };
        s
    }

    /// Check the block accounting: every block's reference count equals the number of its
    /// holders (running sequences and the prefix cache), blocks without holders are exactly
    /// the free list, waiting requests hold no sequence, and no sequence is left over.
    pub fn check_blocks(&self) -> Result<BlockCounts> {
        let kv = self.rt.kv();
        let pool = kv.pool();
        let n = pool.num_blocks();
        let mut holders = vec![0u32; n];
        for r in &self.running {
            let seq = r.seq.ok_or_else(|| {
                ModelError::Runtime(format!("running request {} has no sequence", r.id))
            })?;
            for &b in &kv.get(seq)?.blocks {
                holders[b as usize] += 1;
            }
        }
        if let Some(r) = self.waiting.iter().find(|r| r.seq.is_some()) {
            return Err(ModelError::Runtime(format!(
                "waiting request {} still holds a sequence",
                r.id
            )));
        }
        if kv.num_sequences() != self.running.len() {
            return Err(ModelError::Runtime(format!(
                "{} sequences in the KV cache for {} running requests (leaked sequences)",
                kv.num_sequences(),
                self.running.len()
            )));
        }
        for b in 1..n as u32 {
            if self.prefix.holds(b) {
                holders[b as usize] += 1;
            }
        }
        let mut free = 0;
        let mut cached = 0;
        for (b, &held) in holders.iter().enumerate().skip(1) {
            let refs = pool.ref_count(b as u32);
            if refs != held {
                return Err(ModelError::Runtime(format!(
                    "block {b}: {refs} references but {held} holders (leaked or lost references)"
                )));
            }
            if refs == 0 {
                free += 1;
            } else if refs == 1 && self.prefix.holds(b as u32) {
                cached += 1;
            }
        }
        if free != pool.available() {
            return Err(ModelError::Runtime(format!(
                "{free} blocks without holders but {} on the free list",
                pool.available()
            )));
        }
        let total = n - 1;
        Ok(BlockCounts {
            total,
            free,
            cached,
            in_use: total - free - cached,
        })
    }

    /// One scheduling step: reap cancelled requests, plan the batch (running requests oldest
    /// first, then admissions), make room (evict idle cached blocks, else preempt the youngest
    /// running request), run one `Runtime::step`, sample and stream. Returns whether a step ran.
    /// A failed runtime step ends every running request with an error and is returned.
    pub fn step(&mut self) -> Result<bool> {
        let started = Instant::now();
        let r = self.step_inner();
        self.stats.busy_time += started.elapsed();
        r
    }

    fn step_inner(&mut self) -> Result<bool> {
        self.reap_cancelled();
        if self.is_idle() {
            return Ok(false);
        }
        let budget = self.opts.max_batch_tokens;
        let max_seqs = self.rt.options().max_seqs;
        // (index in `running`, tokens this step)
        let mut plan: Vec<(RequestId, usize)> = Vec::new();
        let mut used = 0;
        for r in &self.running {
            if plan.len() == max_seqs || used == budget {
                break;
            }
            let n = r.pending().min(budget - used);
            plan.push((r.id, n));
            used += n;
        }
        // Room for the running rows: evictable cached blocks, else preemption.
        let mut preempted = false;
        loop {
            let need = self.blocks_needed(&plan)?;
            let room = self.rt.kv().pool().available() + self.prefix.idle(self.rt.kv());
            if need <= room {
                break;
            }
            let Some(r) = self.running.pop() else { break };
            plan.retain(|p| p.0 != r.id);
            used = plan.iter().map(|p| p.1).sum();
            if self.running.is_empty() {
                // Alone, it still does not fit: the pool cannot hold this sequence.
                self.retire(r, FinishReason::Stop(StopReason::Context));
            } else {
                self.preempt(r);
                preempted = true;
            }
        }
        if !preempted {
            self.admit(&mut plan, &mut used, budget, max_seqs)?;
        }
        if plan.is_empty() {
            return Ok(!self.is_idle());
        }
        let need = self.blocks_needed(&plan)?;
        self.prefix.evict_until(self.rt.kv_mut(), need);
        self.run(&plan)?;
        Ok(true)
    }

    /// Admit waiting requests (front first) while sequences, tokens and blocks allow.
    fn admit(
        &mut self,
        plan: &mut Vec<(RequestId, usize)>,
        used: &mut usize,
        budget: usize,
        max_seqs: usize,
    ) -> Result<()> {
        let bs = self.rt.kv().block_size();
        // Idle cached blocks and the planned rows' new blocks, kept up to date below (no scan
        // of the cache per candidate).
        let mut idle = self.prefix.idle(self.rt.kv());
        let mut planned = self.blocks_needed(plan)?;
        while plan.len() < max_seqs && *used < budget {
            let Some(front) = self.waiting.front() else {
                break;
            };
            if front.opts.max_tokens == 0 {
                if let Some(r) = self.waiting.pop_front() {
                    self.retire(r, FinishReason::Stop(StopReason::MaxTokens));
                }
                continue;
            }
            // One token must run to produce logits: reuse at most the blocks before it.
            let max_reuse = (front.tokens.len() - 1) / bs;
            let (blocks, keys) = if self.opts.prefix_cache {
                self.prefix.lookup(&front.tokens, bs, max_reuse)
            } else {
                (Vec::new(), Vec::new())
            };
            let cached_len = blocks.len() * bs;
            // Reused blocks that were idle (only the cache held them) stop being evictable.
            let took = blocks
                .iter()
                .filter(|&&b| self.rt.kv().pool().ref_count(b) == 1)
                .count();
            let kv = self.rt.kv_mut();
            let seq = if blocks.is_empty() {
                kv.add_sequence()
            } else {
                kv.add_sequence_with(&blocks, cached_len)?
            };
            let n = (front.tokens.len() - cached_len).min(budget - *used);
            let fresh = (cached_len + n).div_ceil(bs) - blocks.len();
            let room = self.rt.kv().pool().available() + idle - took;
            if planned + fresh > room {
                self.rt.kv_mut().remove_sequence(seq);
                break;
            }
            let Some(mut r) = self.waiting.pop_front() else {
                self.rt.kv_mut().remove_sequence(seq);
                break;
            };
            if r.queued {
                r.queued = false;
                self.queued.fetch_sub(1, Ordering::SeqCst);
            }
            if r.preemptions == 0 {
                r.cached_tokens = cached_len;
            }
            self.prefix.hits += blocks.len() as u64;
            idle -= took;
            planned += fresh;
            r.seq = Some(seq);
            r.fed = cached_len;
            r.keys = keys;
            plan.push((r.id, n));
            *used += n;
            self.running.push(r);
        }
        Ok(())
    }

    /// New blocks the planned rows need.
    fn blocks_needed(&self, plan: &[(RequestId, usize)]) -> Result<usize> {
        let kv = self.rt.kv();
        let bs = kv.block_size();
        let mut need = 0;
        for &(id, n) in plan {
            let r = self.find(id)?;
            let seq = r.seq.ok_or_else(|| {
                ModelError::Runtime(format!("running request {id} has no sequence"))
            })?;
            let have = kv.get(seq)?.blocks.len();
            need += (r.fed + n).div_ceil(bs).saturating_sub(have);
        }
        Ok(need)
    }

    fn find(&self, id: RequestId) -> Result<&Req<'m>> {
        self.running
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ModelError::Runtime(format!("request {id} is not running")))
    }

    /// Run the planned rows in one runtime step, then sample and stream.
    fn run(&mut self, plan: &[(RequestId, usize)]) -> Result<()> {
        // Planned rows by index in `running`.
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(plan.len());
        for &(id, n) in plan {
            if let Some(i) = self.running.iter().position(|r| r.id == id) {
                rows.push((i, n));
            }
        }
        let mut inputs = Vec::with_capacity(rows.len());
        for &(i, n) in &rows {
            let r = &self.running[i];
            let seq = r.seq.ok_or_else(|| {
                ModelError::Runtime(format!("running request {} has no sequence", r.id))
            })?;
            inputs.push(SeqInput {
                seq,
                tokens: &r.tokens[r.fed..r.fed + n],
            });
        }
        let before = self.rt.stats();
        let t0 = Instant::now();
        let stepped = self.rt.step(&inputs);
        let t1 = Instant::now();
        let sampled: Vec<Option<u32>> = match stepped {
            Ok(logits) => sample_rows(&mut self.running, &rows, &logits),
            Err(e) => {
                let msg = format!("step failed: {e}");
                for r in std::mem::take(&mut self.running) {
                    self.retire(r, FinishReason::Error(msg.clone()));
                }
                return Err(e);
            }
        };
        let after = self.rt.stats();
        self.stats.runtime_time += t1 - t0;
        self.stats.logits_time += after.logits_time.saturating_sub(before.logits_time);
        self.stats.sample_time += t1.elapsed();
        self.stats.decode_steps += after.decode_steps - before.decode_steps;
        self.stats.replayed_steps += after.replayed - before.replayed;
        self.stats.capture_failures += after.capture_failures - before.capture_failures;
        self.stats.steps += 1;
        self.stats.step_tokens += rows.iter().map(|r| r.1 as u64).sum::<u64>();
        let context = self.rt.context();
        let tok = self.model.tokenizer();
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for (&(i, n), t) in rows.iter().zip(sampled) {
            self.register_blocks(i, n)?;
            let Some(t) = t else { continue };
            self.stats.generated_tokens += 1;
            let r = &mut self.running[i];
            match r.accept(t, tok, context) {
                Ok(Some(reason)) => done.push((i, FinishReason::Stop(reason))),
                Ok(None) => {}
                Err(e) => done.push((i, FinishReason::Error(e.to_string()))),
            }
        }
        // Remove from the back so indices stay valid.
        done.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
        for (i, reason) in done {
            let r = self.running.remove(i);
            self.retire(r, reason);
        }
        Ok(())
    }

    /// `n` more tokens of running request `i` are cached: register its newly full blocks.
    fn register_blocks(&mut self, i: usize, n: usize) -> Result<()> {
        let bs = self.rt.kv().block_size();
        let r = &mut self.running[i];
        r.fed += n;
        if !self.opts.prefix_cache {
            return Ok(());
        }
        let Some(seq) = r.seq else { return Ok(()) };
        let full = r.fed / bs;
        if r.keys.len() >= full {
            return Ok(());
        }
        let blocks = self.rt.kv().get(seq)?.blocks.clone();
        for (k, &block) in blocks.iter().enumerate().take(full).skip(r.keys.len()) {
            let parent = if k == 0 { ROOT } else { r.keys[k - 1] };
            let toks = &r.tokens[k * bs..(k + 1) * bs];
            let key = self.prefix.register(self.rt.kv_mut(), parent, toks, block);
            r.keys.push(key);
        }
        Ok(())
    }

    /// Drop `r`'s sequence and send it back to the front of the queue, to be recomputed.
    fn preempt(&mut self, mut r: Req<'m>) {
        self.release(&mut r);
        r.preemptions += 1;
        self.stats.preemptions += 1;
        self.waiting.push_front(r);
    }

    /// Free `r`'s sequence (its full blocks stay in the prefix cache, newest in LRU order).
    fn release(&mut self, r: &mut Req<'m>) {
        if let Some(seq) = r.seq.take() {
            self.rt.kv_mut().remove_sequence(seq);
        }
        self.prefix.touch(&r.keys);
        r.keys.clear();
        r.fed = 0;
    }

    /// End `r` with `reason`: free its blocks, send its final event.
    fn retire(&mut self, mut r: Req<'m>, reason: FinishReason) {
        self.release(&mut r);
        if r.queued {
            r.queued = false;
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        match r.finish(reason) {
            FinishReason::Cancelled => self.stats.cancelled += 1,
            FinishReason::Error(_) => self.stats.errors += 1,
            FinishReason::Stop(_) => self.stats.finished += 1,
        }
    }

    /// End every cancelled request, running or waiting.
    fn reap_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let r = self.running.remove(i);
                self.retire(r, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        while let Some(r) = self.waiting.pop_front() {
            if r.cancelled() {
                self.retire(r, FinishReason::Cancelled);
            } else {
                keep.push_back(r);
            }
        }
        self.waiting = keep;
    }
}

/// See [`Scheduler::validate`].
pub(crate) fn validate(
    prompt: &[u32],
    vocab: usize,
    context: usize,
    block_size: usize,
    total_blocks: usize,
) -> Result<()> {
    if prompt.is_empty() {
        return Err(ModelError::Runtime("the prompt has no tokens".into()));
    }
    if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Runtime(format!(
            "token id {t} is outside the vocabulary of {vocab} tokens"
        )));
    }
    if prompt.len() > context {
        return Err(ModelError::Runtime(format!(
            "the prompt has {} tokens; the context is {context} tokens",
            prompt.len()
        )));
    }
    if prompt.len().div_ceil(block_size) > total_blocks {
        return Err(ModelError::Runtime(format!(
            "the prompt needs {} KV blocks; the pool has {total_blocks}",
            prompt.len().div_ceil(block_size)
        )));
    }
    Ok(())
}
