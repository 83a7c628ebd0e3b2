//! The object-safe Backend trait and the parameter types of its ops.
//!
//! Conventions for every op:
//! - Shapes are row-major, outermost first. Activations are f32 unless `supports` says a backend
//!   also takes f16/bf16 for that op. Outputs are written into views the caller allocated; an op
//!   allocates nothing and may not read its outputs' previous contents (except in-place ops).
//! - Ops are enqueued in order on the device; `read` and `synchronize` wait for them.
//! - Parameters and step inputs — norm weights (`w` of `rms_norm` / `add_rms_norm`), rope's
//!   `inv_freq` and `positions`, the `slots` of `kv_append` / `rope_kv_append`, attention's
//!   batch arrays (`q_starts`, `kv_lens`, `block_tables`) — must hold values put there by
//!   `write`, not by an op that may still be running: a backend may read them before the ops
//!   enqueued earlier have finished (CUDA reads them ahead of the programmatic-dependent-launch
//!   wait, so their latency overlaps the previous kernel). Activations, caches and outputs keep
//!   the plain enqueue order.
//! - An op a backend does not implement for a dtype returns `Error::Unsupported`, and
//!   `supports(op, dtype)` returns false for it. No silent fallbacks.

use crate::devices::{DeviceId, DeviceInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::{Buffer, HostTensor, View, ViewMut, Weight};

/// The op families. `supports(op, dtype)` takes the dtype that matters for the op:
/// the weight dtype for `Matmul`/`Embed`/`Moe`, the KV dtype for `Attention`/`KvAppend`,
/// the activation dtype otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Matmul,
    Attention,
    KvAppend,
    RmsNorm,
    Rope,
    Glu,
    Add,
    Embed,
    Moe,
    Copy,
    AllReduce,
    AddBias,
    Gather,
}

impl OpKind {
    pub const ALL: [OpKind; 13] = [
        OpKind::Matmul,
        OpKind::Attention,
        OpKind::KvAppend,
        OpKind::RmsNorm,
        OpKind::Rope,
        OpKind::Glu,
        OpKind::Add,
        OpKind::Embed,
        OpKind::Moe,
        OpKind::Copy,
        OpKind::AllReduce,
        OpKind::AddBias,
        OpKind::Gather,
    ];
}

/// Gated-linear-unit activations: out = act(gate) · up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// x·sigmoid(x)
    Silu,
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    GeluTanh,
}

/// Which elements RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeStyle {
    /// Pairs (i, i + n_rot/2): HF `rotate_half`, llama.cpp NEOX (qwen2/3, gemma3, HF llama).
    Neox,
    /// Pairs (2i, 2i + 1): llama.cpp NORM, used by llama-arch GGUFs with permuted Q/K rows.
    Interleaved,
}

/// RoPE over the first `n_rot` dims of each head; the angle of pair i at position p is
/// `p · inv_freq[i]`, with `inv_freq` an f32 table of `n_rot/2` values built by
/// [`RopeFreqs::inv_freq`] (so base, per-layer base and scaling live in the table).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    pub style: RopeStyle,
    pub n_rot: usize,
}

/// Frequency scaling schemes.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// inv_freq / factor (position interpolation).
    Linear {
        factor: f64,
    },
    /// Llama 3.1 scaling (MODELS.md §4.1).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// Explicit per-pair divisors (GGUF `rope_freqs.weight`): inv_freq[i] / divisors[i].
    Divisors(Vec<f32>),
}

/// Everything that decides a layer's rotary frequencies (models with per-layer bases, like
/// gemma3, build one per layer kind).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    pub base: f64,
    pub scaling: RopeScaling,
}

impl RopeFreqs {
    /// `n_rot/2` inverse frequencies, computed in f64 and rounded once to f32.
    pub fn inv_freq(&self, n_rot: usize) -> Result<Vec<f32>> {
        if n_rot == 0 || !n_rot.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "rope: n_rot {n_rot} must be even and > 0"
            )));
        }
        let half = n_rot / 2;
        if let RopeScaling::Divisors(d) = &self.scaling
            && d.len() != half
        {
            return Err(Error::Invalid(format!(
                "rope: {} frequency divisors for n_rot {n_rot} (want {half})",
                d.len()
            )));
        }
        let out = (0..half)
            .map(|i| {
                let inv = self.base.powf(-(2.0 * i as f64) / n_rot as f64);
                let inv = match &self.scaling {
                    RopeScaling::None => inv,
                    RopeScaling::Linear { factor } => inv / factor,
                    RopeScaling::Divisors(d) => inv / d[i] as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        let low_wl = original_max_position / low_freq_factor;
                        let high_wl = original_max_position / high_freq_factor;
                        if wavelen < high_wl {
                            inv
                        } else if wavelen > low_wl {
                            inv / factor
                        } else {
                            let s = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * inv / factor + s * inv
                        }
                    }
                };
                inv as f32
            })
            .collect();
        Ok(out)
    }
}

/// One layer's paged KV cache. `k` and `v` are `[num_blocks, n_kv_heads, block_size, head_dim]`
/// (f32, f16 or bf16): KV position p of a sequence lives in block `block_tables[s][p / block_size]`
/// at row `p % block_size`.
#[derive(Clone, Copy)]
pub struct PagedKv<'a> {
    pub k: ViewMut<'a>,
    pub v: ViewMut<'a>,
}

impl<'a> PagedKv<'a> {
    pub fn new(k: ViewMut<'a>, v: ViewMut<'a>) -> Result<PagedKv<'a>> {
        if k.shape() != v.shape() || k.dtype() != v.dtype() || k.shape().rank() != 4 {
            return Err(Error::shape(
                OpKind::Attention,
                format!(
                    "K {} {} and V {} {} must both be [blocks, kv_heads, block_size, head_dim]",
                    k.shape(),
                    k.dtype(),
                    v.shape(),
                    v.dtype()
                ),
            ));
        }
        Ok(PagedKv { k, v })
    }
    pub fn num_blocks(&self) -> usize {
        self.k.shape().dim(0)
    }
    pub fn n_kv_heads(&self) -> usize {
        self.k.shape().dim(1)
    }
    pub fn block_size(&self) -> usize {
        self.k.shape().dim(2)
    }
    pub fn head_dim(&self) -> usize {
        self.k.shape().dim(3)
    }
    pub fn dtype(&self) -> DType {
        self.k.dtype()
    }
}

/// A ragged batch of sequences for attention, all in device buffers (so a decode step can be
/// replayed as a CUDA graph with new contents):
/// - `q_starts`: i32 `[n_seqs + 1]`; sequence s owns query rows `q_starts[s]..q_starts[s+1]`.
/// - `kv_lens`: i32 `[n_seqs]`; KV length of s *including* this step's tokens. The queries of s
///   are its last `q_len` positions: query j sits at position `kv_lens[s] − q_len + j`.
/// - `block_tables`: i32 `[n_seqs, max_blocks]`.
/// - `max_q_len`, `max_kv_len`: host-side upper bounds used to size launches; they may be loose.
#[derive(Clone, Copy)]
pub struct SeqBatch<'a> {
    pub q_starts: View<'a>,
    pub kv_lens: View<'a>,
    pub block_tables: View<'a>,
    pub max_q_len: usize,
    pub max_kv_len: usize,
}

impl SeqBatch<'_> {
    pub fn n_seqs(&self) -> usize {
        self.kv_lens.numel()
    }
    pub fn max_blocks(&self) -> usize {
        self.block_tables.shape().last()
    }
}

/// Attention parameters. Query head h reads KV head `h / (n_heads / n_kv_heads)` (GQA/MQA).
/// Scores are `scale · q·k`, then `softcap · tanh(s / softcap)` if `softcap` is set, then
/// masked: causal (key position ≤ query position) and, with a window W, key > query − W.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

/// How a router turns logits into expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeGating {
    /// softmax over all experts, take the top k, optionally divide by their sum
    /// (Mixtral: renormalize; Qwen3-MoE: renormalize iff `norm_topk_prob`).
    SoftmaxTopK { renormalize: bool },
    /// take the top-k logits, softmax over those k.
    TopKSoftmax,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeRouting {
    pub top_k: usize,
    pub gating: MoeGating,
}

/// Expert weights: `gate`, `up` `[experts, ff, dim]`, `down` `[experts, dim, ff]`;
/// expert e computes `down_e · (act(gate_e·x) ⊙ up_e·x)`.
#[derive(Clone, Copy)]
pub struct MoeExperts<'a> {
    pub gate: &'a Weight,
    pub up: &'a Weight,
    pub down: &'a Weight,
    pub act: Activation,
}

/// A matmul a runtime will run, for [`Backend::workspace_bytes`]: the weight's dtype and shape
/// `[n, k]` (one expert's `[n, k]` for a 3-D weight) and the most rows of x it will pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulUse {
    pub dtype: DType,
    pub shape: Shape,
    pub max_rows: usize,
}

/// A compute device. Object-safe: a runtime holds `Vec<Arc<dyn Backend>>` across vendors.
pub trait Backend: Send + Sync {
    fn info(&self) -> &DeviceInfo;
    fn id(&self) -> DeviceId {
        self.info().id
    }
    fn supports(&self, op: OpKind, dtype: DType) -> bool;

    // ---- memory ----
    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    /// Host → device. Ordered after all previously enqueued ops.
    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()>;
    /// Device → host; waits for previously enqueued ops.
    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Page-lock the host memory `buf` so that reads from this device into it run at full bus
    /// speed (CUDA: `cuMemHostRegister`, portable to every context; a pageable copy of 64 rows
    /// of 128k logits took 2.5–2.9 ms on an H200 host). Ok(true): this call pinned it; Ok(false):
    /// the backend has no use for it or the memory is pinned already. Reads work either way.
    ///
    /// # Safety
    /// After Ok(true), `buf` must stay allocated at the same address until
    /// [`Backend::unpin_host`] is called with it on this backend.
    unsafe fn pin_host(&self, _buf: &mut [u8]) -> Result<bool> {
        Ok(false)
    }
    /// Undo this backend's [`Backend::pin_host`] of `buf` that returned Ok(true).
    ///
    /// # Safety
    /// `buf` is exactly the memory that call pinned.
    unsafe fn unpin_host(&self, _buf: &mut [u8]) -> Result<()> {
        Ok(())
    }
    /// Device → host of `rows` contiguous rows of `row_bytes` starting at `offset`, row i into
    /// `dst[i·dst_pitch ..][.. row_bytes]` (e.g. one rank's columns of a logits matrix); the
    /// bytes between rows of `dst` are left alone. Default: one contiguous read, then a host
    /// scatter; a backend with a pitched copy (CUDA's cuMemcpy2D) writes in place.
    fn read_rows(
        &self,
        src: &Buffer,
        offset: usize,
        row_bytes: usize,
        rows: usize,
        dst: &mut [u8],
        dst_pitch: usize,
    ) -> Result<()> {
        check::rows_fit(row_bytes, rows, dst.len(), dst_pitch)?;
        if rows <= 1 || row_bytes == dst_pitch {
            // Contiguous in `dst` too.
            return self.read(src, offset, &mut dst[..row_bytes * rows]);
        }
        let mut tmp = vec![0u8; row_bytes * rows];
        self.read(src, offset, &mut tmp)?;
        if row_bytes > 0 {
            for (i, r) in tmp.chunks_exact(row_bytes).enumerate() {
                dst[i * dst_pitch..i * dst_pitch + row_bytes].copy_from_slice(r);
            }
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()>;

    /// Upload (and repack, if the backend wants) a weight once. 2-D `[n, k]` or 3-D `[e, n, k]`.
    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight>;

    /// Device bytes `prepare_weight` will hold for a weight of this dtype and shape (what its
    /// `Weight::bytes` reports), computed without the data: for the memory planner. Default:
    /// the bytes of the data as given.
    fn weight_bytes(&self, dtype: DType, shape: &Shape) -> Result<usize> {
        dtype.bytes_for(shape.numel())
    }

    /// Device bytes the backend allocates on its own (outside `alloc` and `prepare_weight`:
    /// library workspaces, lazily grown op scratch, transient tuning buffers) when running
    /// `matmuls`, at the peak. Exact when [`Backend::reserve_workspace`] was called with the
    /// same uses before the first op. Workspace the backend already holds and keeps (from an
    /// earlier runtime in the same process) counts: the plan is what the device will hold.
    /// Default: none.
    fn workspace_bytes(&self, _matmuls: &[MatmulUse]) -> usize {
        0
    }

    /// Allocate now the persistent part of [`Backend::workspace_bytes`], so that no op grows
    /// it later (call once after the weights are prepared). Default: nothing to allocate.
    fn reserve_workspace(&self, _matmuls: &[MatmulUse]) -> Result<()> {
        Ok(())
    }

    // ---- ops ----
    /// y = x·Wᵀ: x `[m, k]`, W `[n, k]` (any weight dtype), out `[m, n]`.
    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()>;

    /// out_i = x·W_iᵀ for every `(W_i, out_i)` of `parts`: weights that read the same x (a
    /// layer's q, k, v projections; its FFN gate and up). A backend may run them as one kernel
    /// (CUDA does at one row: one launch instead of three); the default runs one `matmul` each,
    /// and a fused version must meet `matmul`'s tolerance for every part. Errors as `matmul`'s.
    fn matmul_many(&self, x: View<'_>, parts: &[(&Weight, ViewMut<'_>)]) -> Result<()> {
        for (w, out) in parts {
            self.matmul(x, w, *out)?;
        }
        Ok(())
    }

    /// out = act(x·Gᵀ) ⊙ (x·Uᵀ): a dense FFN's gate and up projections and its GLU. x `[m, k]`,
    /// G and U `[n, k]`, out `[m, n]`; `g_out` and `u_out` `[m, n]` are scratch for the default
    /// (`matmul_many`, then `glu`); a fused version (CUDA at one row: the GLU in the GEMV's
    /// epilogue) may leave them unwritten. Tolerance: that of `glu` over `matmul`'s outputs.
    #[allow(clippy::too_many_arguments)]
    fn matmul_glu(
        &self,
        x: View<'_>,
        gate: &Weight,
        up: &Weight,
        act: Activation,
        g_out: ViewMut<'_>,
        u_out: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.matmul_many(x, &[(gate, g_out), (up, u_out)])?;
        self.glu(g_out.as_view(), u_out.as_view(), act, out)
    }

    /// Bytes of scratch `attention` needs for this batch shape (0 if none).
    fn attention_scratch_bytes(
        &self,
        _p: &AttnParams,
        _n_tokens: usize,
        _batch: &SeqBatch<'_>,
    ) -> usize {
        0
    }
    /// Paged attention. q, out: `[n_tokens, n_heads, head_dim]`.
    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        batch: &SeqBatch<'_>,
        p: &AttnParams,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()>;

    /// Write k, v `[n_tokens, n_kv_heads, head_dim]` into the cache at `slots` (i32 `[n_tokens]`,
    /// slot = block · block_size + row; a negative slot skips the token).
    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()>;

    /// out = x / sqrt(mean(x²) + eps) · w, per row: x, out `[rows, dim]`, w f32 `[dim]`.
    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()>;

    /// The residual add and the next norm in one op (rms_norm family): sum = a + b, then
    /// out = rms_norm(sum)·w; a, b, sum, out f32 `[rows, dim]`, w f32 `[dim]`. A backend may
    /// fuse it into one pass; the default is `add` then `rms_norm`, and a fused version must
    /// give the same `sum` bit for bit (a + b in f32) and `out` within rms_norm's tolerance.
    fn add_rms_norm(
        &self,
        a: View<'_>,
        b: View<'_>,
        w: View<'_>,
        eps: f32,
        sum: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let s = sum.as_view();
        self.add(a, b, sum)?;
        self.rms_norm(s, w, eps, out)
    }

    /// In place: x `[n_tokens, n_heads, head_dim]`, positions i32 `[n_tokens]`,
    /// inv_freq f32 `[n_rot/2]`.
    fn rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()>;

    /// A layer's attention inputs in one op: q `[n_tokens, n_heads, head_dim]` and k
    /// `[n_tokens, n_kv_heads, head_dim]` (f32) rotated in place as `rope` does, then the rotated
    /// k and v written into the cache at `slots` as `kv_append` does. The default runs those
    /// three ops; a fused version must give bit for bit the same q, k and cache.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_append(
        &self,
        q: ViewMut<'_>,
        k: ViewMut<'_>,
        v: View<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<()> {
        rope_kv_append_unfused(self, q, k, v, positions, inv_freq, p, kv, slots)
    }

    /// out = act(gate) ⊙ up, all `[rows, n]`.
    fn glu(&self, gate: View<'_>, up: View<'_>, act: Activation, out: ViewMut<'_>) -> Result<()>;

    /// out = a + b (same shape).
    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()>;

    /// out = x + bias, bias `[n]` broadcast over the rows of x, out `[rows, n]` (q/k/v biases).
    fn add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        let _ = (bias, out);
        Err(check::unsupported(OpKind::AddBias, x.dtype(), self.info()))
    }

    /// out[i] = x[ids[i]]: x `[rows, d]`, ids i32 `[n]`, out `[n, d]` (e.g. the last token of each
    /// sequence of a ragged batch before the LM head). The caller guarantees ids < rows.
    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        let _ = (ids, out);
        Err(check::unsupported(OpKind::Gather, x.dtype(), self.info()))
    }

    /// out[i] = scale · table[ids[i]]: ids i32 `[n]`, table `[vocab, dim]` (any weight dtype),
    /// out `[n, dim]`. The caller guarantees ids < vocab (GPU backends cannot report it).
    fn embed(&self, ids: View<'_>, table: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()>;

    /// Bytes of scratch `moe` needs for `n_tokens` (0 if none).
    fn moe_scratch_bytes(
        &self,
        _n_tokens: usize,
        _experts: &MoeExperts<'_>,
        _r: &MoeRouting,
    ) -> usize {
        0
    }
    /// Routed expert FFN: x `[n_tokens, dim]`, router_logits f32 `[n_tokens, experts]`,
    /// out `[n_tokens, dim]` = Σ_k w_k · expert_k(x).
    fn moe(
        &self,
        x: View<'_>,
        router_logits: View<'_>,
        experts: &MoeExperts<'_>,
        r: &MoeRouting,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()>;

    /// Copy with dtype conversion among f32/f16/bf16 (same element count).
    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()>;

    /// Record the ops `f` enqueues into a replayable graph (CUDA graphs). The recorded ops keep
    /// their buffers and arguments; replaying runs them again on the buffers' current contents,
    /// so everything that changes between replays must live in device buffers. `Ok(None)` means
    /// this backend does not capture (the caller runs `f` eagerly instead).
    fn capture(&self, _f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Box<dyn Replay>>> {
        Ok(None)
    }
}

/// A captured sequence of ops (see `Backend::capture`).
pub trait Replay: Send + Sync {
    /// Enqueue the whole recorded sequence once.
    fn replay(&self) -> Result<()>;
}

/// `Backend::rope_kv_append` as its three ops, rope(q), rope(k), kv_append(k, v): the trait's
/// default, and the fallback of a backend whose fused kernel does not take some operands.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_append_unfused<B: Backend + ?Sized>(
    b: &B,
    q: ViewMut<'_>,
    k: ViewMut<'_>,
    v: View<'_>,
    positions: View<'_>,
    inv_freq: View<'_>,
    p: &RopeParams,
    kv: &PagedKv<'_>,
    slots: View<'_>,
) -> Result<()> {
    b.rope(q, positions, inv_freq, p)?;
    b.rope(k, positions, inv_freq, p)?;
    b.kv_append(k.as_view(), v, kv, slots)
}

/// Helpers every backend uses to validate op arguments with uniform messages.
pub mod check {
    use super::*;

    /// `rows` rows of `row_bytes` at a pitch of `pitch` fit in a destination of `len` bytes
    /// (rows do not overlap: `row_bytes ≤ pitch` when there are several).
    pub fn rows_fit(row_bytes: usize, rows: usize, len: usize, pitch: usize) -> Result<()> {
        let end = rows
            .checked_sub(1)
            .map(|r| r.checked_mul(pitch).and_then(|x| x.checked_add(row_bytes)));
        let ok = match end {
            None => true,
            Some(end) => (rows == 1 || row_bytes <= pitch) && end.is_some_and(|e| e <= len),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "read_rows: {rows} rows of {row_bytes} bytes at a pitch of {pitch} do not fit {len} bytes"
            )))
        }
    }

    pub fn device(op: OpKind, backend: DeviceId, found: DeviceId) -> Result<()> {
        if backend != found {
            return Err(Error::WrongDevice {
                op,
                expected: backend,
                found,
            });
        }
        Ok(())
    }

    pub fn dtype(op: OpKind, what: &str, got: DType, allowed: &[DType]) -> Result<()> {
        if !allowed.contains(&got) {
            return Err(Error::shape(
                op,
                format!("{what} has dtype {got}, expected one of {allowed:?}"),
            ));
        }
        Ok(())
    }

    pub fn eq(op: OpKind, what: &str, a: usize, b: usize) -> Result<()> {
        if a != b {
            return Err(Error::shape(op, format!("{what}: {a} != {b}")));
        }
        Ok(())
    }

    pub fn unsupported(op: OpKind, dtype: DType, backend: &DeviceInfo) -> Error {
        Error::Unsupported {
            op,
            dtype,
            backend: backend.id.to_string(),
        }
    }
}
