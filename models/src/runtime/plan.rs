//! The memory plan: every activation buffer of a step, the step's small i32 inputs (one
//! staging buffer), the rope tables and the op scratch, sized for the largest step the runtime
//! accepts and allocated once. A step only narrows these to its row count; nothing is allocated
//! while the model runs.
//!
//! Sizes (T = max tokens per step, S = max sequences per step, R = logit rows: S, or T when
//! every position's logits are wanted; H = hidden, Q = n_heads·head_dim, K = n_kv·head_dim,
//! F = dense FFN size, E = experts, V = vocab, MB = block-table width), all f32:
//!
//! ```text
//! x[2]      [T, H]   residual stream, ping-pong: layer input x[0] → after attention x[1] → x[0]
//! h         [T, H]   normed input of attention / FFN; also the post-norms' output (gemma3)
//! q[2]      [T, Q]   projection, then bias / per-head norm into the other one
//! k[2], v[2][T, K]
//! attn      [T, Q]   attention output
//! o[2]      [T, H]   output projection (+ bias) / FFN output
//! gate, up, act [T, F]  dense FFN (absent when every layer is MoE)
//! router    [T, E]   router logits (MoE models)
//! last      [S, H]   the last row of each sequence (gather), unless every row is wanted
//! normed    [R, H]   final norm
//! logits    [R, V']  V' = the logit columns this device computes (V, or a TP rank's share)
//! rope_global, rope_local  [n_rot/2]  inverse frequencies
//! staging   i32: ids[T] pos[T] slots[T] q_starts[S+1] kv_lens[S] last_rows[S] tables[S, MB]
//! ```

use std::sync::Arc;

use kiln_core::{
    AttnParams, Backend, Buffer, DType, MoeExperts, MoeRouting, SeqBatch, Shape, Tensor, View,
    Weight,
};

use super::weights::{Ffn, Weights};
use crate::arch::ModelConfig;
use crate::error::{ModelError, Result};

/// The i32 inputs of a step: device regions at fixed offsets and their host mirror.
pub struct Staging {
    pub buf: Buffer,
    /// Host copy, written then uploaded in one `write` per step.
    pub host: Vec<i32>,
    pub ids: usize,
    pub pos: usize,
    pub slots: usize,
    pub q_starts: usize,
    pub kv_lens: usize,
    pub last: usize,
    pub tables: usize,
    pub max_tokens: usize,
    pub max_seqs: usize,
    pub max_blocks: usize,
}

/// Round an element count up to 64 (256-byte region offsets).
fn align64(n: usize) -> usize {
    n.div_ceil(64) * 64
}

impl Staging {
    /// Element offsets of the regions and the total length (i32 elements) for `t` tokens, `s`
    /// sequences and block tables `mb` wide: `[ids, pos, slots, q_starts, kv_lens, last,
    /// tables, len]`.
    fn layout(t: usize, s: usize, mb: usize) -> [usize; 8] {
        let ids = 0;
        let pos = ids + align64(t);
        let slots = pos + align64(t);
        let q_starts = slots + align64(t);
        let kv_lens = q_starts + align64(s + 1);
        let last = kv_lens + align64(s);
        let tables = last + align64(s);
        let len = tables + align64(s * mb);
        [ids, pos, slots, q_starts, kv_lens, last, tables, len]
    }

    fn new(backend: &dyn Backend, t: usize, s: usize, mb: usize) -> Result<Staging> {
        let [ids, pos, slots, q_starts, kv_lens, last, tables, len] = Self::layout(t, s, mb);
        let buf = backend
            .alloc(len * 4)
            .map_err(|e| ModelError::backend("allocating the step staging buffer", e))?;
        Ok(Staging {
            buf,
            host: vec![0; len],
            ids,
            pos,
            slots,
            q_starts,
            kv_lens,
            last,
            tables,
            max_tokens: t,
            max_seqs: s,
            max_blocks: mb,
        })
    }

    /// `n` i32 at element `at` as a 1-D view.
    pub fn view(&self, at: usize, n: usize) -> Result<View<'_>> {
        self.buf
            .view(at * 4, Shape::d1(n), DType::I32)
            .map_err(|e| ModelError::backend("staging view", e))
    }

    /// The attention batch of `n_seqs` sequences.
    pub fn batch(
        &self,
        n_seqs: usize,
        max_q_len: usize,
        max_kv_len: usize,
    ) -> Result<SeqBatch<'_>> {
        let tables = self
            .buf
            .view(
                self.tables * 4,
                Shape::d2(n_seqs, self.max_blocks),
                DType::I32,
            )
            .map_err(|e| ModelError::backend("staging view", e))?;
        Ok(SeqBatch {
            q_starts: self.view(self.q_starts, n_seqs + 1)?,
            kv_lens: self.view(self.kv_lens, n_seqs)?,
            block_tables: tables,
            max_q_len,
            max_kv_len,
        })
    }

    /// Upload the host mirror.
    pub fn upload(&self, backend: &dyn Backend) -> Result<()> {
        backend
            .write(&self.buf, 0, bytemuck::cast_slice(&self.host))
            .map_err(|e| ModelError::backend("writing the step inputs", e))
    }
}

/// Sizes the plan is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanDims {
    /// Rows (tokens) per step.
    pub max_tokens: usize,
    /// Sequences per step.
    pub max_seqs: usize,
    /// Tokens per sequence (KV positions).
    pub context: usize,
    pub block_size: usize,
    /// Logits for every row (`kiln logits`) instead of the last row of each sequence.
    pub all_logits: bool,
}

impl PlanDims {
    pub fn max_blocks(&self) -> usize {
        self.context.div_ceil(self.block_size)
    }
    pub fn logit_rows(&self) -> usize {
        if self.all_logits {
            self.max_tokens
        } else {
            self.max_seqs
        }
    }
}

/// Every buffer of a step (see the module docs for shapes).
pub struct Plan {
    pub dims: PlanDims,
    /// The logit columns this device computes (`None`: no logits; then `last`, `normed` and
    /// `logits` are 1-element placeholders): the vocabulary on a single device, the last stage
    /// of a layer split or rank 0 of a tensor-parallel group with a tied output matrix; each
    /// rank's share of it with an untied one (runtime/shard.rs `head_rows`).
    pub head: Option<usize>,
    pub x: [Tensor; 2],
    pub h: Tensor,
    pub q: [Tensor; 2],
    pub k: [Tensor; 2],
    pub v: [Tensor; 2],
    pub attn: Tensor,
    pub o: [Tensor; 2],
    pub gate: Option<Tensor>,
    pub up: Option<Tensor>,
    pub act: Option<Tensor>,
    pub router: Option<Tensor>,
    pub last: Tensor,
    pub normed: Tensor,
    pub logits: Tensor,
    pub rope_global: Tensor,
    pub rope_local: Tensor,
    pub attn_scratch: Option<Tensor>,
    pub moe_scratch: Option<Tensor>,
    pub staging: Staging,
    /// Device bytes of everything above.
    pub bytes: usize,
}

/// `[rows, cols]` of every f32 activation buffer: one table for [`Plan::new`] (which
/// allocates it) and [`Plan::bytes_for`] (which only sums it), so the planner's number is the
/// allocation. `cfg` is the device's view of the model (a tensor-parallel rank's heads/FFN).
struct Sizes {
    /// x, h, o: `[T, H]`.
    th: (usize, usize),
    /// q, attn: `[T, Q]`.
    tq: (usize, usize),
    /// k, v: `[T, K]`.
    tk: (usize, usize),
    /// gate, up, act `[T, F]`, when some layer is dense.
    ff: Option<(usize, usize)>,
    /// router `[T, E]`, MoE models.
    router: Option<(usize, usize)>,
    /// last `[S, H]`, normed `[R, H]`, logits `[R, V']` (V' = the device's logit columns):
    /// 1×1 when the device computes no logits.
    last: (usize, usize),
    normed: (usize, usize),
    logits: (usize, usize),
    /// Inverse-frequency tables.
    rope: [usize; 2],
}

impl Sizes {
    fn new(cfg: &ModelConfig, d: PlanDims, head: Option<usize>) -> Sizes {
        let one = |r: usize, c: usize| (r.max(1), c.max(1));
        let (t, s, r) = (d.max_tokens, d.max_seqs, d.logit_rows());
        let dense = cfg.layers.iter().any(|l| !l.moe);
        let (last, normed, logits) = match head {
            Some(cols) => (one(s, cfg.hidden), one(r, cfg.hidden), one(r, cols)),
            None => ((1, 1), (1, 1), (1, 1)),
        };
        Sizes {
            th: one(t, cfg.hidden),
            tq: one(t, cfg.q_dim()),
            tk: one(t, cfg.kv_dim()),
            ff: dense.then(|| one(t, cfg.ffn)),
            router: cfg.moe.as_ref().map(|m| one(t, m.n_experts)),
            last,
            normed,
            logits,
            rope: [cfg.n_rot / 2, cfg.n_rot / 2],
        }
    }

    /// f32 bytes of all activation buffers and rope tables (pairs twice, FFN three times).
    fn bytes(&self) -> usize {
        let n = |(r, c): (usize, usize)| r * c * 4;
        let ff = self.ff.map_or(0, |f| 3 * n(f));
        let router = self.router.map_or(0, n);
        // x[2], h, o[2]; q[2], attn; k[2], v[2].
        5 * n(self.th)
            + 3 * n(self.tq)
            + 4 * n(self.tk)
            + ff
            + router
            + n(self.last)
            + n(self.normed)
            + n(self.logits)
            + 4 * (self.rope[0].max(1) + self.rope[1].max(1))
    }
}

struct Alloc<'a> {
    backend: &'a dyn Backend,
    bytes: usize,
}

impl Alloc<'_> {
    fn f32(&mut self, what: &str, (rows, cols): (usize, usize)) -> Result<Tensor> {
        self.tensor(what, Shape::d2(rows, cols), DType::F32)
    }
    fn tensor(&mut self, what: &str, shape: Shape, dt: DType) -> Result<Tensor> {
        let ctx = |e| ModelError::backend(format!("allocating {what} {shape}"), e);
        let n = dt.bytes_for(shape.numel()).map_err(ctx)?;
        let buf = self.backend.alloc(n).map_err(ctx)?;
        self.bytes += n;
        Tensor::new(buf, 0, shape, dt).map_err(ctx)
    }
    fn pair(&mut self, what: &str, size: (usize, usize)) -> Result<[Tensor; 2]> {
        Ok([self.f32(what, size)?, self.f32(what, size)?])
    }
}

/// The MoE expert matrices a scratch size depends on: gate, up, down.
type Experts<'w> = Option<(&'w Weight, &'w Weight, &'w Weight)>;

fn check_dims(dims: PlanDims) -> Result<()> {
    if dims.max_tokens < dims.max_seqs || dims.max_seqs == 0 || dims.context == 0 {
        return Err(ModelError::Runtime(format!(
            "plan of {} tokens for {} sequences of {} tokens: need tokens ≥ sequences ≥ 1 and a context ≥ 1",
            dims.max_tokens, dims.max_seqs, dims.context
        )));
    }
    Ok(())
}

impl Plan {
    /// Allocate every buffer of a step on `backend` for `cfg` (this device's view of the
    /// model) and `dims`; `head`: the logit columns this device computes.
    pub fn new(
        backend: &Arc<dyn Backend>,
        cfg: &ModelConfig,
        w: &Weights,
        dims: PlanDims,
        head: Option<usize>,
    ) -> Result<Plan> {
        check_dims(dims)?;
        let b = backend.as_ref();
        let mut a = Alloc {
            backend: b,
            bytes: 0,
        };
        let z = Sizes::new(cfg, dims, head);
        let staging = Staging::new(b, dims.max_tokens, dims.max_seqs, dims.max_blocks())?;
        let rope = |a: &mut Alloc<'_>, what: &str, f: &kiln_core::RopeFreqs| -> Result<Tensor> {
            let inv = f
                .inv_freq(cfg.n_rot)
                .map_err(|e| ModelError::backend("rope frequencies", e))?;
            let tns = a.tensor(what, Shape::d1(inv.len().max(1)), DType::F32)?;
            let bytes: Vec<u8> = inv.iter().flat_map(|x| x.to_le_bytes()).collect();
            b.write(&tns.buf, 0, &bytes)
                .map_err(|e| ModelError::backend("writing rope frequencies", e))?;
            Ok(tns)
        };
        let mut plan = Plan {
            dims,
            head,
            x: a.pair("x", z.th)?,
            h: a.f32("h", z.th)?,
            q: a.pair("q", z.tq)?,
            k: a.pair("k", z.tk)?,
            v: a.pair("v", z.tk)?,
            attn: a.f32("attn", z.tq)?,
            o: a.pair("o", z.th)?,
            gate: z.ff.map(|f| a.f32("gate", f)).transpose()?,
            up: z.ff.map(|f| a.f32("up", f)).transpose()?,
            act: z.ff.map(|f| a.f32("act", f)).transpose()?,
            router: z.router.map(|r| a.f32("router", r)).transpose()?,
            last: a.f32("last", z.last)?,
            normed: a.f32("normed", z.normed)?,
            logits: a.f32("logits", z.logits)?,
            rope_global: rope(&mut a, "rope_global", &cfg.rope_global)?,
            rope_local: rope(&mut a, "rope_local", &cfg.rope_local)?,
            attn_scratch: None,
            moe_scratch: None,
            staging,
            bytes: 0,
        };
        let (attn_bytes, moe_bytes) = scratch_bytes(b, cfg, dims, &plan.staging, experts(w))?;
        plan.attn_scratch = (attn_bytes > 0)
            .then(|| a.tensor("attention scratch", Shape::d1(attn_bytes), DType::U8))
            .transpose()?;
        plan.moe_scratch = (moe_bytes > 0)
            .then(|| a.tensor("moe scratch", Shape::d1(moe_bytes), DType::U8))
            .transpose()?;
        plan.bytes = a.bytes + plan.staging.host.len() * 4;
        Ok(plan)
    }

    /// The device bytes [`Plan::new`] allocates, without allocating the plan: the activation
    /// table, the staging buffer and the backend's attention / MoE scratch (asked of `backend`
    /// with a staging buffer of a few KiB it allocates and frees). `moe`: the dtypes of the
    /// expert gate, up and down matrices of a MoE model.
    pub fn bytes_for(
        backend: &Arc<dyn Backend>,
        cfg: &ModelConfig,
        dims: PlanDims,
        head: Option<usize>,
        moe: Option<(DType, DType, DType)>,
    ) -> Result<usize> {
        check_dims(dims)?;
        let b = backend.as_ref();
        let staging = Staging::new(b, dims.max_tokens, dims.max_seqs, dims.max_blocks())?;
        // Shape-only stand-ins: the scratch queries read shapes and dtypes, never the data.
        let stand_ins = match (&cfg.moe, moe) {
            (Some(m), Some((g, u, d))) => {
                let w = |dt, n, k| {
                    Weight::new(Arc::new(()), Shape::d3(m.n_experts, n, k), dt, b.id(), 0)
                };
                Some((
                    w(g, m.ff, cfg.hidden),
                    w(u, m.ff, cfg.hidden),
                    w(d, cfg.hidden, m.ff),
                ))
            }
            _ => None,
        };
        let ex = stand_ins.as_ref().map(|(g, u, d)| (g, u, d));
        let (attn, moe) = scratch_bytes(b, cfg, dims, &staging, ex)?;
        let z = Sizes::new(cfg, dims, head);
        Ok(z.bytes() + staging.host.len() * 4 + attn + moe)
    }

    /// Batch-size buckets of captured decode steps: 1, 2, 4, ... up to max_seqs.
    pub fn buckets(&self) -> Vec<usize> {
        buckets(self.dims.max_seqs)
    }
}

fn buckets(max_seqs: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut b = 1;
    while b < max_seqs {
        v.push(b);
        b *= 2;
    }
    v.push(max_seqs);
    v
}

/// The expert matrices of the first MoE layer, if any.
fn experts(w: &Weights) -> Experts<'_> {
    w.layers.iter().find_map(|l| match &l.ffn {
        Ffn::Moe { gate, up, down, .. } => Some((gate, up, down)),
        Ffn::Dense { .. } => None,
    })
}

/// The largest scratch any step shape needs: prefill (T rows, S sequences) and every decode
/// bucket, for every layer's attention parameters.
fn scratch_bytes(
    b: &dyn Backend,
    cfg: &ModelConfig,
    d: PlanDims,
    staging: &Staging,
    experts: Experts<'_>,
) -> Result<(usize, usize)> {
    let mut shapes = vec![(d.max_tokens, d.max_seqs, d.max_tokens.min(d.context))];
    shapes.extend(buckets(d.max_seqs).into_iter().map(|n| (n, n, 1)));
    let mut attn = 0;
    let mut moe = 0;
    for &(n_tokens, n_seqs, max_q) in &shapes {
        let batch = staging.batch(n_seqs, max_q, d.context)?;
        for spec in &cfg.layers {
            let p = attn_params(cfg, spec.window);
            attn = attn.max(b.attention_scratch_bytes(&p, n_tokens, &batch));
        }
        if let (Some(m), Some((gate, up, down))) = (&cfg.moe, experts) {
            let ex = MoeExperts {
                gate,
                up,
                down,
                act: cfg.act,
            };
            let r = MoeRouting {
                top_k: m.top_k,
                gating: m.gating,
            };
            moe = moe.max(b.moe_scratch_bytes(n_tokens, &ex, &r));
        }
    }
    Ok((attn, moe))
}

/// Attention parameters of a layer with this window.
pub fn attn_params(cfg: &ModelConfig, window: Option<usize>) -> AttnParams {
    AttnParams {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        scale: cfg.attn_scale,
        causal: true,
        window,
        softcap: cfg.attn_softcap,
    }
}
