//! One forward step over a ragged batch: prefill chunks and decode rows of several sequences
//! in the same [`SeqBatch`](kiln_core::SeqBatch).
//!
//! Host work per step: reserve KV blocks, fill the staging mirror (token ids, positions, slots,
//! q_starts, kv_lens, last rows, block tables), upload it in one write, enqueue the ops, read
//! the logits. A step whose rows are all single decode tokens runs at a batch-size bucket
//! (1, 2, 4, ... max_seqs; padding rows use the null block and slot −1) and a KV-length class
//! (the `max_kv_len` bound: a power of two ≥ 256, ≤ the context), with every shape fixed by
//! the pair, so it can be recorded once with `Backend::capture` and replayed: the first
//! step of a pair runs eagerly (warm-up), the second is captured, later ones replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::{Backend, DType, Replay};

use super::kv_cache::{KvCache, NULL_BLOCK, SeqId};
use super::model::Model;
use super::plan::{Plan, PlanDims};
use super::weights::Weights;
use crate::arch::ModelConfig;
use crate::arch::block::Fwd;
use crate::error::{ModelError, Result};

/// Smallest `max_kv_len` class (see `Runtime::kv_class`).
const MIN_KV_CLASS: usize = 256;

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
    pub prefill_tokens: u64,
    pub prefill_time: Duration,
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
    /// First use: run eagerly once.
    Warm,
    Captured(Box<dyn Replay>),
    /// The backend does not capture.
    Eager,
}

/// A model's step runner: plan, KV cache, captured decode graphs.
pub struct Runtime {
    backend: Arc<dyn Backend>,
    cfg: Arc<ModelConfig>,
    w: Arc<Weights>,
    plan: Plan,
    kv: KvCache,
    opts: RuntimeOptions,
    /// Decode graphs by (batch-size bucket, KV-length class).
    buckets: HashMap<(usize, usize), Bucket>,
    host_logits: Vec<f32>,
    stats: StepStats,
}

impl Runtime {
    pub fn new(model: &Model, opts: RuntimeOptions) -> Result<Runtime> {
        let cfg = model.config_arc();
        let context = opts.context.unwrap_or(cfg.context_length.min(4096)).max(1);
        if opts.max_seqs == 0 || opts.chunk < opts.max_seqs || opts.block_size == 0 {
            return Err(ModelError::Runtime(format!(
                "runtime options: max_seqs {} ≥ 1, chunk {} ≥ max_seqs and block_size {} ≥ 1 are required",
                opts.max_seqs, opts.chunk, opts.block_size
            )));
        }
        let dims = PlanDims {
            max_tokens: opts.chunk,
            max_seqs: opts.max_seqs,
            context,
            block_size: opts.block_size,
            all_logits: opts.all_logits,
        };
        let backend = model.backend().clone();
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
        let w = model.weights_arc();
        let plan = Plan::new(&backend, &cfg, &w, dims, true)?;
        let max_blocks = dims.max_blocks();
        let blocks = opts.kv_blocks.unwrap_or(opts.max_seqs * max_blocks) + 1;
        let kv = KvCache::new(
            &backend,
            cfg.n_layers,
            cfg.n_kv_heads,
            cfg.head_dim,
            opts.block_size,
            blocks,
            max_blocks,
            opts.kv_dtype,
        )?;
        let host_logits = vec![0f32; dims.logit_rows() * cfg.vocab];
        Ok(Runtime {
            backend,
            cfg,
            w,
            plan,
            kv,
            opts,
            buckets: HashMap::new(),
            host_logits,
            stats: StepStats::default(),
        })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }
    pub fn context(&self) -> usize {
        self.plan.dims.context
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
    /// Device bytes of the plan (activations, staging, scratch) and of the KV cache.
    pub fn bytes(&self) -> (usize, usize) {
        (self.plan.bytes, self.kv.bytes())
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
        let started = Instant::now();
        let n_seqs = batch.len();
        let n_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        self.check(batch, n_tokens)?;
        for s in batch {
            let len = self.kv.len(s.seq)?;
            self.kv.reserve(s.seq, len + s.tokens.len())?;
        }
        let decode = !self.opts.all_logits && batch.iter().all(|s| s.tokens.len() == 1);
        let rows = if decode {
            // The smallest bucket (power of two, or max_seqs) holding the batch; see Plan::buckets.
            let bucket = n_seqs.next_power_of_two().min(self.plan.dims.max_seqs);
            self.fill(batch, bucket)?;
            let kv = self.kv_class(batch)?;
            self.run_decode(bucket, kv)?;
            n_seqs
        } else {
            self.fill(batch, n_seqs)?;
            let max_q = batch.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
            let max_kv = self.kv_class(batch)?;
            self.forward(n_tokens, n_seqs, max_q, max_kv)?;
            if self.opts.all_logits {
                n_tokens
            } else {
                n_seqs
            }
        };
        let vocab = self.cfg.vocab;
        let out = &mut self.host_logits[..rows * vocab];
        self.backend
            .read(
                &self.plan.logits.buf,
                self.plan.logits.offset,
                bytemuck::cast_slice_mut(out),
            )
            .map_err(|e| ModelError::backend("reading logits", e))?;
        if let Some(c) = self.cfg.final_softcap {
            out.iter_mut().for_each(|x| *x = c * (*x / c).tanh());
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
        Ok(Logits {
            data: &self.host_logits[..rows * vocab],
            rows,
            vocab,
        })
    }

    fn check(&self, batch: &[SeqInput<'_>], n_tokens: usize) -> Result<()> {
        let d = self.plan.dims;
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
        let st = &mut self.plan.staging;
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
        st.upload(self.backend.as_ref())
    }

    /// Enqueue the whole forward pass for `n` rows of `n_seqs` sequences.
    fn forward(&self, n: usize, n_seqs: usize, max_q: usize, max_kv: usize) -> Result<()> {
        let f = Fwd {
            b: self.backend.as_ref(),
            cfg: &self.cfg,
            w: &self.w,
            p: &self.plan,
            n,
            batch: self.plan.staging.batch(n_seqs, max_q, max_kv)?,
        };
        f.embed()?;
        for (i, (l, spec)) in self.w.layers.iter().zip(&self.cfg.layers).enumerate() {
            let kv = self.kv.layer(i)?;
            f.layer(l, spec, &kv).map_err(|e| match e {
                ModelError::Backend { what, source } => ModelError::Backend {
                    what: format!("layer {i}: {what}"),
                    source,
                },
                e => e,
            })?;
        }
        f.head(n_seqs, self.opts.all_logits)
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
            .min(self.plan.dims.context))
    }

    /// A decode step at bucket `b` with KV bound `max_kv`: eager warm-up, then capture, then
    /// replay.
    fn run_decode(&mut self, b: usize, max_kv: usize) -> Result<()> {
        let key = (b, max_kv);
        let state = self.buckets.remove(&key);
        let next = match state {
            None => {
                self.forward(b, b, 1, max_kv)?;
                if self.opts.graphs {
                    Bucket::Warm
                } else {
                    Bucket::Eager
                }
            }
            Some(Bucket::Eager) => {
                self.forward(b, b, 1, max_kv)?;
                Bucket::Eager
            }
            Some(Bucket::Warm) => {
                let mut err = None;
                let captured = {
                    let this = &*self;
                    let mut record = || {
                        this.forward(b, b, 1, max_kv).map_err(|e| {
                            let msg = e.to_string();
                            err = Some(e);
                            kiln_core::Error::Invalid(msg)
                        })
                    };
                    this.backend.capture(&mut record)
                };
                if let Some(e) = err {
                    return Err(e);
                }
                match captured.map_err(|e| ModelError::backend("capturing the decode step", e))? {
                    Some(g) => {
                        g.replay()
                            .map_err(|e| ModelError::backend("replaying the decode step", e))?;
                        self.stats.replayed += 1;
                        Bucket::Captured(g)
                    }
                    None => {
                        self.forward(b, b, 1, max_kv)?;
                        Bucket::Eager
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
