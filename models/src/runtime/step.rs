//! One forward step over a ragged batch: prefill chunks and decode rows of several sequences
//! in the same [`SeqBatch`](kiln_core::SeqBatch).
//!
//! Host work per step: reserve KV blocks, fill the staging mirror (token ids, positions, slots,
//! q_starts, kv_lens, last rows, block tables), upload it in one write, enqueue the ops, read
//! the logits. A step whose rows are all single decode tokens runs at a batch-size bucket
//! (1, 2, 4, ... max_seqs; padding rows use the null block and slot −1) and a KV-length class
//! (the `max_kv_len` bound: a power of two ≥ 256, ≤ the context), with every shape fixed by
//! the pair, so it can be recorded once with `Backend::capture` and replayed: the first
//! step of a pair runs eagerly (warm-up), the second is captured, later ones replay. A capture
//! that fails although the step recorded without error (CUDA: another backend of the device,
//! e.g. a second model tuning on another thread, invalidated it) costs nothing but time: that
//! step runs eagerly and the next one captures again, up to CAPTURE_TRIES times per pair.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::{Backend, Collective, DType, Replay};

use super::kv_cache::{KvCache, KvPart, NULL_BLOCK, SeqId};
use super::model::Model;
use super::plan::{Plan, PlanDims};
use super::weights::Weights;
use crate::arch::ModelConfig;
use crate::arch::block::Fwd;
use crate::error::{ModelError, Result};

mod tp;

/// Smallest `max_kv_len` class (see `Runtime::kv_class`).
const MIN_KV_CLASS: usize = 256;

/// Failed captures of one (bucket, KV class) pair before its steps stay eager.
const CAPTURE_TRIES: u32 = 3;

/// How a runtime is sized.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Sequences per step (batched decode).
    pub max_seqs: usize,
    /// Tokens per sequence; `None`: the model's context length, capped at 4096.
    pub context: Option<usize>,
    /// Prefill chunk: rows per step (≥ max_seqs).
    pub chunk: usize,
    /// KV block size in tokens.
    pub block_size: usize,
    /// KV cache dtype (f16 default; f32 or bf16).
    pub kv_dtype: DType,
    /// KV blocks in the pool; `None`: enough for max_seqs full contexts.
    pub kv_blocks: Option<usize>,
    /// Logits of every row (for `kiln logits`) instead of the last row of each sequence.
    pub all_logits: bool,
    /// Record decode steps as graphs where the backend can (CUDA).
    pub graphs: bool,
}

impl RuntimeOptions {
    /// The plan dimensions for a model whose own context is `model_context` tokens (the
    /// context defaults to it, at most 4096); checks the options.
    pub fn dims(&self, model_context: usize) -> Result<PlanDims> {
        if self.max_seqs == 0 || self.chunk < self.max_seqs || self.block_size == 0 {
            return Err(ModelError::Runtime(format!(
                "runtime options: max_seqs {} ≥ 1, chunk {} ≥ max_seqs and block_size {} ≥ 1 are required",
                self.max_seqs, self.chunk, self.block_size
            )));
        }
        Ok(PlanDims {
            max_tokens: self.chunk,
            max_seqs: self.max_seqs,
            context: self.context.unwrap_or(model_context.min(4096)).max(1),
            block_size: self.block_size,
            all_logits: self.all_logits,
        })
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            max_seqs: 1,
            context: None,
            chunk: 256,
            block_size: 16,
            kv_dtype: DType::F16,
            kv_blocks: None,
            all_logits: false,
            graphs: true,
        }
    }
}

/// Tokens of one sequence for a step: they take positions `len .. len + tokens.len()`.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
}

/// Decode-step timing.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub decode_steps: u64,
    pub decode_time: Duration,
    /// Decode steps that replayed a captured graph.
    pub replayed: u64,
    /// Captures that failed although the step recorded without error (the step ran eagerly).
    pub capture_failures: u64,
    pub prefill_tokens: u64,
    pub prefill_time: Duration,
    /// Time copying logits to the host, after the device finished the step (part of the step
    /// times above).
    pub logits_time: Duration,
}

impl StepStats {
    /// Mean decode step time in milliseconds.
    pub fn decode_ms(&self) -> f64 {
        if self.decode_steps == 0 {
            0.0
        } else {
            self.decode_time.as_secs_f64() * 1e3 / self.decode_steps as f64
        }
    }
}

/// The logits a step produced: `rows × vocab`, one row per sequence (in batch order), or one
/// per token when the runtime keeps every row.
#[derive(Debug)]
pub struct Logits<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub vocab: usize,
}

impl Logits<'_> {
    pub fn row(&self, i: usize) -> &[f32] {
        self.data
            .get(i * self.vocab..(i + 1) * self.vocab)
            .unwrap_or(&[])
    }
}

enum Bucket {
    /// Run eagerly once (first use); capture next. `failed`: captures of this pair that failed.
    Warm {
        failed: u32,
    },
    Captured(Box<dyn Replay>),
    /// The backend does not capture.
    Eager,
}

/// One device's part of a step: its backend, its view of the model, its weights and plan.
struct Stage {
    backend: Arc<dyn Backend>,
    cfg: Arc<ModelConfig>,
    w: Arc<Weights>,
    plan: Plan,
    /// Global indices of the layers it runs.
    layers: Range<usize>,
}

/// A model's step runner: plan, KV cache, captured decode graphs. Over several devices it
/// runs a layer split (stages in order, the hidden rows handed over through the host) or a
/// tensor-parallel group (every rank per layer, all-reduce after o and down); see
/// [`shard`](super::shard).
pub struct Runtime {
    /// One per device, in device order.
    stages: Vec<Stage>,
    /// The stages computing logits and their vocabulary columns (one stage with all of them,
    /// or every tensor-parallel rank with its share).
    heads: Vec<(usize, Range<usize>)>,
    /// The tensor-parallel all-reduce (`None`: one device or a layer split).
    tensor: Option<Arc<dyn Collective>>,
    /// The whole model's config.
    cfg: Arc<ModelConfig>,
    kv: KvCache,
    /// Host buffer of a layer-split hand-over: `[T, H]` f32 bytes.
    handoff: Mutex<Vec<u8>>,
    opts: RuntimeOptions,
    /// Decode graphs by (batch-size bucket, KV-length class).
    buckets: HashMap<(usize, usize), Bucket>,
    /// `[logit_rows, V]`; never resized (it may be page-locked: `pinned_by`).
    host_logits: Vec<f32>,
    /// The stage whose backend page-locked `host_logits` (`Backend::pin_host`), if one did.
    pinned_by: Option<usize>,
    stats: StepStats,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(i) = self.pinned_by.take()
            && let Some(s) = self.stages.get(i)
        {
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut self.host_logits[..]);
            // SAFETY: this backend pinned exactly this buffer in Runtime::new (unmoved since:
            // the Vec is never resized) and no read into it is in flight (reads synchronize).
            if let Err(e) = unsafe { s.backend.unpin_host(buf) } {
                eprintln!("kiln runtime: unpinning the logits buffer: {e}");
            }
        }
    }
}

impl Runtime {
    pub fn new(model: &Model, opts: RuntimeOptions) -> Result<Runtime> {
        let cfg = Arc::new(model.config().clone());
        let dims = opts.dims(cfg.context_length)?;
        let mut stages = Vec::with_capacity(model.shards().len());
        for sh in model.shards() {
            let backend = &sh.backend;
            for op in [kiln_core::OpKind::Attention, kiln_core::OpKind::KvAppend] {
                if !backend.supports(op, opts.kv_dtype) {
                    return Err(ModelError::backend(
                        format!("a {} KV cache on {}", opts.kv_dtype, backend.id()),
                        kiln_core::Error::Unsupported {
                            op,
                            dtype: opts.kv_dtype,
                            backend: backend.id().to_string(),
                        },
                    ));
                }
            }
            let cols = sh.head_rows().map(|r| r.len());
            let plan = Plan::new(backend, &sh.config, &sh.weights, dims, cols)?;
            // The matmul workspace at its planned size now, so no op grows it later (the
            // memory planner counts exactly this).
            backend
                .reserve_workspace(&crate::planner::matmul_uses(&sh.weights, dims))
                .map_err(|e| ModelError::backend("reserving the matmul workspace", e))?;
            stages.push(Stage {
                backend: backend.clone(),
                cfg: sh.config.clone(),
                w: sh.weights.clone(),
                plan,
                layers: sh.layers(),
            });
        }
        let heads: Vec<(usize, Range<usize>)> = model
            .shards()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.head_rows()?)))
            .collect();
        if heads.iter().map(|(_, r)| r.len()).sum::<usize>() != cfg.vocab {
            return Err(ModelError::Runtime(format!(
                "the devices compute logits for {:?}, not the vocabulary of {}",
                heads.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
                cfg.vocab
            )));
        }
        let max_blocks = dims.max_blocks();
        let blocks = opts.kv_blocks.unwrap_or(opts.max_seqs * max_blocks) + 1;
        let parts: Vec<KvPart<'_>> = stages
            .iter()
            .map(|s| KvPart {
                backend: &s.backend,
                layers: s.layers.clone(),
                n_kv_heads: s.cfg.n_kv_heads,
            })
            .collect();
        let kv = KvCache::placed(
            &parts,
            cfg.n_layers,
            cfg.head_dim,
            opts.block_size,
            blocks,
            max_blocks,
            opts.kv_dtype,
        )?;
        let mut host_logits = vec![0f32; dims.logit_rows() * cfg.vocab];
        // Page-lock the logits buffer for the heads' reads (a pageable copy of 64 rows of 128k
        // logits took 2.5–2.9 ms on an H200 host). Best effort: reads work unpinned too.
        let mut pinned_by = None;
        for (i, _) in &heads {
            let Some(st) = stages.get(*i) else { continue };
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut host_logits[..]);
            // SAFETY: the Vec is stored in the Runtime, never resized, and unpinned by this
            // backend in Runtime's Drop before it is freed.
            let pinned = unsafe { st.backend.pin_host(buf) };
            if pinned.unwrap_or(false) {
                pinned_by = Some(*i);
                break;
            }
        }
        let handoff = Mutex::new(if stages.len() > 1 {
            vec![0u8; dims.max_tokens * cfg.hidden * 4]
        } else {
            Vec::new()
        });
        Ok(Runtime {
            stages,
            heads,
            tensor: model.collective().cloned(),
            cfg,
            kv,
            handoff,
            opts,
            buckets: HashMap::new(),
            host_logits,
            pinned_by,
            stats: StepStats::default(),
        })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }
    pub fn context(&self) -> usize {
        self.dims().context
    }
    fn dims(&self) -> PlanDims {
        self.stages[0].plan.dims
    }
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }
    pub fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }
    pub fn stats(&self) -> StepStats {
        self.stats
    }
    pub fn reset_stats(&mut self) {
        self.stats = StepStats::default();
    }
    /// Device bytes of the plans (activations, staging, scratch; every device) and of the KV
    /// cache.
    pub fn bytes(&self) -> (usize, usize) {
        let plans = self.stages.iter().map(|s| s.plan.bytes).sum();
        (plans, self.kv.bytes())
    }
    pub fn add_sequence(&mut self) -> SeqId {
        self.kv.add_sequence()
    }
    pub fn remove_sequence(&mut self, id: SeqId) {
        self.kv.remove_sequence(id)
    }
    pub fn seq_len(&self, id: SeqId) -> Result<usize> {
        self.kv.len(id)
    }

    /// Run one step. Returns one logits row per sequence (its last token), or one per token
    /// with `all_logits`.
    pub fn step(&mut self, batch: &[SeqInput<'_>]) -> Result<Logits<'_>> {
        let rows = self.run(batch, true)?;
        let vocab = self.cfg.vocab;
        Ok(Logits {
            data: &self.host_logits[..rows * vocab],
            rows,
            vocab,
        })
    }

    /// Run one step without computing logits: the tokens only enter the KV cache (a prefill
    /// chunk whose logits nobody reads; with `all_logits` the LM head of every row is the
    /// largest matmul of a long prompt).
    pub fn feed(&mut self, batch: &[SeqInput<'_>]) -> Result<()> {
        self.run(batch, false).map(|_| ())
    }

    /// A step; returns the number of logits rows in `host_logits` (0 without `logits`).
    fn run(&mut self, batch: &[SeqInput<'_>], logits: bool) -> Result<usize> {
        let started = Instant::now();
        let n_seqs = batch.len();
        let n_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        self.check(batch, n_tokens)?;
        for s in batch {
            let len = self.kv.len(s.seq)?;
            self.kv.reserve(s.seq, len + s.tokens.len())?;
        }
        let decode = logits && !self.opts.all_logits && batch.iter().all(|s| s.tokens.len() == 1);
        let rows = if decode {
            // The smallest bucket (power of two, or max_seqs) holding the batch; see Plan::buckets.
            let bucket = n_seqs.next_power_of_two().min(self.dims().max_seqs);
            self.fill(batch, bucket)?;
            let kv = self.kv_class(batch)?;
            self.run_decode(bucket, kv)?;
            n_seqs
        } else {
            self.fill(batch, n_seqs)?;
            let max_q = batch.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
            let max_kv = self.kv_class(batch)?;
            self.forward(n_tokens, n_seqs, max_q, max_kv, logits)?;
            match (logits, self.opts.all_logits) {
                (false, _) => 0,
                (true, true) => n_tokens,
                (true, false) => n_seqs,
            }
        };
        if logits {
            self.read_logits(rows)?;
        } else {
            // Nothing is read back: wait here so that step times stay honest.
            for s in &self.stages {
                s.backend
                    .synchronize()
                    .map_err(|e| ModelError::backend("finishing a step", e))?;
            }
        }
        for s in batch {
            self.kv.advance(s.seq, s.tokens.len())?;
        }
        let dt = started.elapsed();
        if decode {
            self.stats.decode_steps += 1;
            self.stats.decode_time += dt;
        } else {
            self.stats.prefill_tokens += n_tokens as u64;
            self.stats.prefill_time += dt;
        }
        Ok(rows)
    }

    /// `rows` logits rows into `host_logits` `[rows, V]`: read whole from one head, or each
    /// rank's columns straight into their place (`Backend::read_rows`); then the final soft-cap.
    fn read_logits(&mut self, rows: usize) -> Result<()> {
        let vocab = self.cfg.vocab;
        // Wait for the step first, so that the copy's own time is known (the read would wait
        // for it anyway).
        for (i, _) in &self.heads {
            self.stages[*i]
                .backend
                .synchronize()
                .map_err(|e| ModelError::backend("finishing a step", e))?;
        }
        let started = Instant::now();
        let out: &mut [u8] = bytemuck::cast_slice_mut(&mut self.host_logits[..rows * vocab]);
        for (i, cols) in &self.heads {
            let (p, b) = (&self.stages[*i].plan.logits, &self.stages[*i].backend);
            let at = cols.start * 4;
            b.read_rows(
                &p.buf,
                p.offset,
                cols.len() * 4,
                rows,
                &mut out[at..],
                vocab * 4,
            )
            .map_err(|e| ModelError::backend("reading logits", e))?;
        }
        self.stats.logits_time += started.elapsed();
        if let Some(c) = self.cfg.final_softcap {
            let out = &mut self.host_logits[..rows * vocab];
            out.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
        }
        Ok(())
    }

    fn check(&self, batch: &[SeqInput<'_>], n_tokens: usize) -> Result<()> {
        let d = self.dims();
        if batch.is_empty() || batch.len() > d.max_seqs {
            return Err(ModelError::Runtime(format!(
                "a step takes 1..={} sequences, got {}",
                d.max_seqs,
                batch.len()
            )));
        }
        if n_tokens > d.max_tokens {
            return Err(ModelError::Runtime(format!(
                "a step takes at most {} tokens (the prefill chunk), got {n_tokens}",
                d.max_tokens
            )));
        }
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Runtime(format!(
                    "sequence {i} of the step has no tokens"
                )));
            }
            if batch[..i].iter().any(|o| o.seq == s.seq) {
                return Err(ModelError::Runtime(format!(
                    "sequence {:?} appears twice in a step",
                    s.seq
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
                return Err(ModelError::Runtime(format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    self.cfg.vocab
                )));
            }
            let len = self.kv.len(s.seq)?;
            if len + s.tokens.len() > d.context {
                return Err(ModelError::Runtime(format!(
                    "context full: {len} + {} tokens exceed the context of {} tokens",
                    s.tokens.len(),
                    d.context
                )));
            }
        }
        Ok(())
    }

    /// Fill and upload the staging inputs for `batch`, padded to `n_seqs_padded` one-token
    /// sequences (decode buckets).
    fn fill(&mut self, batch: &[SeqInput<'_>], n_seqs_padded: usize) -> Result<()> {
        let (first, rest) = self.stages.split_at_mut(1);
        let st = &mut first[0].plan.staging;
        let mb = st.max_blocks;
        let mut row = 0usize;
        for (i, s) in batch.iter().enumerate() {
            let blocks = self.kv.get(s.seq)?;
            let len = blocks.len;
            st.host[st.q_starts + i] = row as i32;
            st.host[st.kv_lens + i] = (len + s.tokens.len()) as i32;
            for (j, &t) in s.tokens.iter().enumerate() {
                let pos = len + j;
                st.host[st.ids + row] = t as i32;
                st.host[st.pos + row] = pos as i32;
                st.host[st.slots + row] = self.kv.slot(blocks, pos).ok_or_else(|| {
                    ModelError::Runtime(format!("position {pos} of {:?} has no KV block", s.seq))
                })?;
                row += 1;
            }
            st.host[st.last + i] = row as i32 - 1;
            let table = &mut st.host[st.tables + i * mb..st.tables + (i + 1) * mb];
            table.fill(NULL_BLOCK as i32);
            for (d, &b) in table.iter_mut().zip(&blocks.blocks) {
                *d = b as i32;
            }
        }
        // Padding sequences: one token at position 0 reading the null block, writing nothing.
        for i in batch.len()..n_seqs_padded {
            st.host[st.q_starts + i] = row as i32;
            st.host[st.kv_lens + i] = 1;
            st.host[st.ids + row] = 0;
            st.host[st.pos + row] = 0;
            st.host[st.slots + row] = -1;
            st.host[st.last + i] = row as i32;
            st.host[st.tables + i * mb..st.tables + (i + 1) * mb].fill(NULL_BLOCK as i32);
            row += 1;
        }
        st.host[st.q_starts + n_seqs_padded] = row as i32;
        st.upload(first[0].backend.as_ref())?;
        // Every device reads the same inputs (same layout: the plans share their dims).
        for s in rest {
            s.plan.staging.host.copy_from_slice(&st.host);
            s.plan.staging.upload(s.backend.as_ref())?;
        }
        Ok(())
    }

    /// Enqueue the whole forward pass for `n` rows of `n_seqs` sequences.
    fn forward(
        &self,
        n: usize,
        n_seqs: usize,
        max_q: usize,
        max_kv: usize,
        logits: bool,
    ) -> Result<()> {
        let mut fwds = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            fwds.push(Fwd {
                b: s.backend.as_ref(),
                cfg: &s.cfg,
                w: &s.w,
                p: &s.plan,
                n,
                batch: s.plan.staging.batch(n_seqs, max_q, max_kv)?,
            });
        }
        match &self.tensor {
            None => {
                for (i, (s, f)) in self.stages.iter().zip(&fwds).enumerate() {
                    if i == 0 {
                        f.embed()?;
                    } else {
                        self.hand_over(&self.stages[i - 1], s, n)?;
                    }
                    let layers = s.layers.clone();
                    if !layers.is_empty() {
                        f.attn_norm(self.layer(s, layers.start)?.0)
                            .map_err(|e| at_layer(e, layers.start))?;
                    }
                    for l in layers.clone() {
                        let (lw, spec) = self.layer(s, l)?;
                        let next = if l + 1 < layers.end {
                            Some(self.layer(s, l + 1)?.0)
                        } else {
                            None
                        };
                        f.layer(lw, spec, &self.kv.layer(l)?, next)
                            .map_err(|e| at_layer(e, l))?;
                    }
                }
            }
            Some(group) => {
                for f in &fwds {
                    f.embed()?;
                }
                self.tensor_layers(group.as_ref(), &fwds)?;
            }
        }
        if !logits {
            return Ok(());
        }
        for (i, _) in &self.heads {
            fwds[*i].head(n_seqs, self.opts.all_logits)?;
        }
        Ok(())
    }

    /// Layer `l`'s weights on stage `s` and its attention settings.
    fn layer<'s>(
        &'s self,
        s: &'s Stage,
        l: usize,
    ) -> Result<(&'s super::weights::LayerWeights, &'s crate::arch::LayerSpec)> {
        let lw = l
            .checked_sub(s.w.first_layer)
            .and_then(|i| s.w.layers.get(i));
        match (lw, self.cfg.layers.get(l)) {
            (Some(lw), Some(spec)) => Ok((lw, spec)),
            _ => Err(ModelError::Runtime(format!(
                "{} holds no layer {l}",
                s.backend.id()
            ))),
        }
    }

    /// Copy the `n` hidden rows `x[0]` from one stage of a layer split to the next.
    fn hand_over(&self, from: &Stage, to: &Stage, n: usize) -> Result<()> {
        let mut buf = self.handoff.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = n * self.cfg.hidden * 4;
        let host = buf.get_mut(..bytes).ok_or_else(|| {
            ModelError::Runtime(format!("hand-over of {n} rows exceeds the plan"))
        })?;
        let (src, dst) = (&from.plan.x[0], &to.plan.x[0]);
        let what = || {
            format!(
                "handing rows from {} to {}",
                from.backend.id(),
                to.backend.id()
            )
        };
        from.backend
            .read(&src.buf, src.offset, host)
            .map_err(|e| ModelError::backend(what(), e))?;
        to.backend
            .write(&dst.buf, dst.offset, host)
            .map_err(|e| ModelError::backend(what(), e))
    }

    /// The `max_kv_len` bound of a step: the longest sequence after it, rounded up to a power
    /// of two (at least MIN_KV_CLASS, at most the context). Kernels size their launch from it
    /// (e.g. split-K over keys), so a short sequence does not pay for the whole context, while
    /// a decode graph is still reused for every length in its class.
    fn kv_class(&self, batch: &[SeqInput<'_>]) -> Result<usize> {
        let mut longest = 1;
        for s in batch {
            longest = longest.max(self.kv.len(s.seq)? + s.tokens.len());
        }
        Ok(longest
            .next_power_of_two()
            .max(MIN_KV_CLASS)
            .min(self.dims().context))
    }

    /// A decode step at bucket `b` with KV bound `max_kv`: eager warm-up, then capture, then
    /// replay.
    fn run_decode(&mut self, b: usize, max_kv: usize) -> Result<()> {
        let key = (b, max_kv);
        let state = self.buckets.remove(&key);
        let next = match state {
            None => {
                self.forward(b, b, 1, max_kv, true)?;
                if self.opts.graphs {
                    Bucket::Warm { failed: 0 }
                } else {
                    Bucket::Eager
                }
            }
            Some(Bucket::Eager) => {
                self.forward(b, b, 1, max_kv, true)?;
                Bucket::Eager
            }
            Some(Bucket::Warm { failed }) => {
                let mut record_failed = false;
                let captured = {
                    let this = &*self;
                    let mut record = || {
                        this.forward(b, b, 1, max_kv, true).map_err(|e| {
                            record_failed = true;
                            kiln_core::Error::Invalid(e.to_string())
                        })
                    };
                    match this.stages.as_slice() {
                        [one] => one.backend.capture(&mut record),
                        // A tensor-parallel step: every rank's stream recorded at once (its
                        // NCCL calls included), one graph per device.
                        all if this.tensor.is_some() => capture_group(all, &mut record),
                        // A layer split hands rows over through the host: not capturable.
                        _ => Ok(None),
                    }
                };
                match captured {
                    Ok(Some(g)) if !record_failed => {
                        g.replay()
                            .map_err(|e| ModelError::backend("replaying the decode step", e))?;
                        self.stats.replayed += 1;
                        Bucket::Captured(g)
                    }
                    Ok(None) if !record_failed => {
                        self.forward(b, b, 1, max_kv, true)?;
                        Bucket::Eager
                    }
                    // The capture failed, in recording (CUDA: a launch into a capture another
                    // thread invalidated fails) or at its end; nothing of it ran. Run the step
                    // eagerly (an error of the step itself comes back from there), and capture
                    // again next time while tries are left.
                    _ => {
                        self.stats.capture_failures += 1;
                        self.forward(b, b, 1, max_kv, true)?;
                        if failed + 1 < CAPTURE_TRIES {
                            Bucket::Warm { failed: failed + 1 }
                        } else {
                            Bucket::Eager
                        }
                    }
                }
            }
            Some(Bucket::Captured(g)) => {
                g.replay()
                    .map_err(|e| ModelError::backend("replaying the decode step", e))?;
                self.stats.replayed += 1;
                Bucket::Captured(g)
            }
        };
        self.buckets.insert(key, next);
        Ok(())
    }
}

/// Name the layer in a backend error.
fn at_layer(e: ModelError, l: usize) -> ModelError {
    match e {
        ModelError::Backend { what, source } => ModelError::Backend {
            what: format!("layer {l}: {what}"),
            source,
        },
        e => e,
    }
}

fn collect<T>(v: Vec<Result<T>>) -> Result<Vec<T>> {
    v.into_iter().collect()
}

/// One captured graph per device of a group, replayed in order (launches are asynchronous, so
/// a graph waiting in an all-reduce for its peers does not hold up the host).
struct GroupReplay(Vec<Box<dyn Replay>>);

impl Replay for GroupReplay {
    fn replay(&self) -> kiln_core::Result<()> {
        self.0.iter().try_for_each(|g| g.replay())
    }
}

/// Record `f` with every stage's stream capturing (nested `Backend::capture` calls); `None`
/// when some device does not capture (then `f` may not have run: the caller runs it eagerly).
fn capture_group(
    stages: &[Stage],
    f: &mut dyn FnMut() -> kiln_core::Result<()>,
) -> kiln_core::Result<Option<Box<dyn Replay>>> {
    fn nest(
        stages: &[Stage],
        f: &mut dyn FnMut() -> kiln_core::Result<()>,
        out: &mut Vec<Box<dyn Replay>>,
    ) -> kiln_core::Result<bool> {
        let Some((first, rest)) = stages.split_first() else {
            f()?;
            return Ok(true);
        };
        let mut inner_ok = false;
        let g = first.backend.capture(&mut || {
            inner_ok = nest(rest, f, out)?;
            Ok(())
        })?;
        match g {
            Some(g) if inner_ok => {
                out.push(g);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    let mut graphs = Vec::with_capacity(stages.len());
    Ok(nest(stages, f, &mut graphs)?.then(|| Box::new(GroupReplay(graphs)) as Box<dyn Replay>))
}
