//! attention (kernels/attention.cu): paged attention for a ragged batch mixing decode rows and
//! prefill chunks, with no host-side look at the batch contents (graph-capturable).
//!
//! Every call enqueues, sized only from the host-side bounds (`max_q_len`, `max_kv_len`, the
//! number of sequences and how many decode CTAs the device keeps resident):
//! 1. the decode kernel for sequences with `q_len ≤ qd` (qd = max(1, 16 / G), G = query heads
//!    per KV head): one 16-row tile per (sequence, KV head), the KV range split into `splits`
//!    chunks of `chunk` keys (flash-decoding);
//! 2. if `splits > 1`, the partials (acc, m, l) of rows whose keys span more than one chunk are
//!    merged (rows that fit one chunk were written directly): by the decode kernel itself (the
//!    last CTA of a row tile to finish merges, counted in a backend-owned counter buffer that
//!    the merging CTA sets back to 0, so graph replays need no memset), or by `attn_combine_hd*`
//!    when no counter buffer can be had (first use inside a graph capture);
//! 3. if `max_q_len > qd`, the prefill kernel (64-row tiles, no split) for the other sequences.
//!
//! Sequences that break the batch contract (q_starts not increasing inside n_tokens, q_len >
//! kv_len, kv_len above the bounds or the block tables' capacity) cannot be reported from the
//! GPU: their rows are left unwritten and nothing outside the buffers is read. Block-table
//! entries outside the cache read as zero rows.

use std::sync::Mutex;

use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{DevicePtr, DeviceRepr};
use kiln_core::backend::check;
use kiln_core::{AttnParams, DType, Error, OpKind, PagedKv, Result, SeqBatch, View, ViewMut};

use super::arg_i32;
use crate::device::CudaBackend;
use crate::module_cache::ATTENTION;

const OP: OpKind = OpKind::Attention;
/// Rows of a decode tile (one mma M tile) and of a prefill tile (4 warps × 16).
const DECODE_ROWS: usize = 16;
const PREFILL_ROWS: usize = 64;
/// Keys per decode tile; chunks are multiples of it.
const DECODE_BC: usize = 64;
/// Resident decode CTAs per SM assumed when the occupancy query fails.
const FALLBACK_CTAS_PER_SM: usize = 2;
/// Split-merge counters per SM in the backend-owned buffer: at least the resident 128-thread
/// CTAs an SM can hold (16 at 2048 threads per SM), hence at least any plan's `counters`.
const COUNTERS_PER_SM: usize = 16;
/// Smallest split of the KV range (keys): one 64-key tile. Measured on the H200 (lab
/// backend-cuda/labs/attn_decode): ctx 1024 batch 1 runs 16 splits of 64 keys in 9.7 µs
/// against 8 of 128 in 10.8 µs; more splits than resident slots lose (ctx 4096: 64 splits of 64
/// keys on 2 CTAs/SM 22 µs against 32 of 128 in 15 µs), which the slot bound already prevents.
const MIN_CHUNK: usize = 64;
/// Head sizes with kernels.
pub(crate) const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// The kernels' argument block (same fields, order and types as `AttnArgs` in attention.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttnArgs {
    q: u64,
    kc: u64,
    vc: u64,
    out: u64,
    q_starts: u64,
    kv_lens: u64,
    tables: u64,
    part_acc: u64,
    part_ml: u64,
    counters: u64,
    n_seqs: i32,
    n_tokens: i32,
    n_heads: i32,
    n_kv: i32,
    group: i32,
    block_size: i32,
    max_blocks: i32,
    num_blocks: i32,
    max_q_len: i32,
    max_kv_len: i32,
    scale: f32,
    softcap: f32,
    window: i32,
    causal: i32,
    qd: i32,
    rd: i32,
    splits: i32,
    chunk: i32,
    row_tiles: i32,
    kv_f32: i32,
    bs_shift: i32,
    /// 1: the decode splits of a row tile run as one thread-block cluster and merge in it.
    cluster: i32,
}

// SAFETY: plain old data (u64/i32/f32 fields, no padding: 10·8 + 22·4 = 168 bytes) with the C
// layout of the kernels' `AttnArgs`; the kernels only read it.
unsafe impl DeviceRepr for AttnArgs {}

/// Launch geometry of one call, from host-side bounds only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttnPlan {
    /// Query heads per KV head.
    pub group: usize,
    /// The decode kernel takes sequences with q_len ≤ qd; prefill the others.
    pub qd: usize,
    /// Partial rows per (sequence, KV head): qd · group.
    pub rd: usize,
    /// Decode row tiles per (sequence, KV head) (0: no decode launch).
    pub decode_row_tiles: usize,
    /// KV splits of the decode kernel and keys per split (a multiple of 64).
    pub splits: usize,
    pub chunk: usize,
    /// Prefill row tiles per (sequence, KV head) (0: no prefill launch).
    pub prefill_row_tiles: usize,
    /// f32 partials: acc `[n_seqs, n_kv, rd, splits, head_dim]`, then (m, l) `[.., 2]`; counted
    /// for the most splits any shorter KV length can take (see `plan`), so ≥ what is used.
    pub part_acc_floats: usize,
    pub part_ml_floats: usize,
    /// Arrival counters of the fused split merge: one per (sequence, KV head, decode row tile)
    /// when the decode is split, else 0. Never above `slots / 2` (a split needs two slots per
    /// tile), so a buffer of `COUNTERS_PER_SM` per SM always holds them.
    pub counters: usize,
}

impl AttnPlan {
    pub fn scratch_bytes(&self) -> usize {
        4 * (self.part_acc_floats + self.part_ml_floats)
    }
}

/// The plan for `n_seqs` sequences with the given bounds on a device that keeps `slots` decode
/// CTAs resident at once (SMs × occupancy). The KV range is split so that the decode grid is
/// one wave of co-resident CTAs with equal work (no tail), as wide as the slots allow and no
/// chunk shorter than MIN_CHUNK keys; `chunk · splits ≥ max_kv_len`, so every key position a
/// valid sequence has lies in a split.
pub(crate) fn plan(
    p: &AttnParams,
    n_seqs: usize,
    max_q_len: usize,
    max_kv_len: usize,
    slots: usize,
) -> AttnPlan {
    let group = (p.n_heads / p.n_kv_heads.max(1)).max(1);
    let qd = (DECODE_ROWS / group).max(1);
    let rd = qd * group;
    let decode_row_tiles = (max_q_len.min(qd) * group).div_ceil(DECODE_ROWS);
    let base = (n_seqs * p.n_kv_heads * decode_row_tiles).max(1);
    let max_splits = max_kv_len.div_ceil(MIN_CHUNK).max(1);
    let splits0 = (slots / base).clamp(1, max_splits);
    let chunk = (max_kv_len.div_ceil(splits0).div_ceil(DECODE_BC) * DECODE_BC).max(DECODE_BC);
    let splits = max_kv_len.div_ceil(chunk).max(1);
    let prefill_row_tiles = if max_q_len > qd {
        (max_q_len * group).div_ceil(PREFILL_ROWS)
    } else {
        0
    };
    // The partials are sized for splits0 (≥ splits) splits: `splits` is not monotone in
    // max_kv_len (slots 264, one sequence: 17 splits of 128 keys at 2128 keys, 33 of 64 at
    // 2112), but splits0 is, so the scratch a planner sizes at the longest context covers every
    // shorter one (sized by `splits`, a step at 2112 keys under a plan made for 2128 needed
    // twice the planned bytes and the attention op failed; BENCHMARKS.md stop 24). The layout
    // strides stay `splits`.
    let rows = if splits > 1 && decode_row_tiles > 0 {
        n_seqs * p.n_kv_heads * rd * splits0
    } else {
        0
    };
    AttnPlan {
        group,
        qd,
        rd,
        decode_row_tiles,
        splits,
        chunk,
        prefill_row_tiles,
        part_acc_floats: rows * p.head_dim,
        part_ml_floats: rows * 2,
        counters: if rows > 0 { base } else { 0 },
    }
}

/// Decode or prefill configuration of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Decode,
    Prefill,
}

/// A compiled kernel variant and its dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub name: &'static str,
    pub smem: usize,
}

/// (mode, head_dim, stages, keys per tile, kernel for f16/f32 caches, kernel for bf16 caches),
/// the default first (`variant`); exactly the instantiations at the end of attention.cu ("" =
/// none). `decode_variant` may prefer another stage count of the same head_dim.
type Entry = (Mode, usize, usize, usize, &'static str, &'static str);
const VARIANTS: [Entry; 9] = [
    (
        Mode::Decode,
        64,
        3,
        64,
        "attn_decode_hd64_f16_s3",
        "attn_decode_hd64_bf16_s3",
    ),
    (
        Mode::Decode,
        128,
        2,
        64,
        "attn_decode_hd128_f16_s2",
        "attn_decode_hd128_bf16_s2",
    ),
    (
        Mode::Decode,
        128,
        3,
        64,
        "attn_decode_hd128_f16_s3",
        "attn_decode_hd128_bf16_s3",
    ),
    (
        Mode::Decode,
        256,
        2,
        64,
        "attn_decode_hd256_f16_s2",
        "attn_decode_hd256_bf16_s2",
    ),
    (
        Mode::Decode,
        256,
        1,
        64,
        "attn_decode_hd256_f16_s1",
        "attn_decode_hd256_bf16_s1",
    ),
    (
        Mode::Prefill,
        64,
        2,
        64,
        "attn_prefill_hd64_f16_s2",
        "attn_prefill_hd64_bf16_s2",
    ),
    (
        Mode::Prefill,
        128,
        2,
        64,
        "attn_prefill_hd128_f16_s2",
        "attn_prefill_hd128_bf16_s2",
    ),
    (Mode::Prefill, 128, 1, 64, "", "attn_prefill_hd128_bf16_s1"),
    (
        Mode::Prefill,
        256,
        1,
        32,
        "attn_prefill_hd256_f16_s1",
        "attn_prefill_hd256_bf16_s1",
    ),
];

/// Shared memory of a variant: Q (two 16-bit copies for bf16: hi and lo) and NS stages of K and
/// V tiles, rows padded to head_dim + 8 elements.
pub(crate) fn smem_bytes(mode: Mode, hd: usize, kv: DType, stages: usize, bc: usize) -> usize {
    let rows = if mode == Mode::Decode {
        DECODE_ROWS
    } else {
        PREFILL_ROWS
    };
    let nq = if kv == DType::BF16 { 2 } else { 1 };
    2 * (hd + 8) * (nq * rows + stages * 2 * bc)
}

/// Keys per split from which decode takes the `…p` kernels (K/V rows in pairs, Q in registers):
/// H200, BENCHMARKS.md 2026-11-23: 10–15 % faster with many tiles per CTA (4k batch 32: f16 153.7
/// → 134.8 µs, bf16 163.7 → 136.3), a slower step with one (ctx 512 batch 1: 4.356 → 4.470 ms).
const PAIRED_MIN_CHUNK: usize = 4 * DECODE_BC;

/// Whether `chunk` keys per split take the paired kernels (`KILN_ATTN_PAIR=0|1`, read once: A/B).
pub(crate) fn decode_paired(chunk: usize) -> bool {
    static FORCE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let force = FORCE.get_or_init(|| match std::env::var("KILN_ATTN_PAIR").as_deref() {
        Ok("0") => Some(false),
        Ok("1") => Some(true),
        _ => None,
    });
    force.unwrap_or(chunk >= PAIRED_MIN_CHUNK)
}

/// Ring stages the decode kernel prefers for a plan with `splits` KV splits and cache `kv`: 3,
/// except bf16 caches in the paired kernel, or with several splits in the per-row one: 2 (bf16's
/// QKᵀ runs two mma per k-step for Q's hi + lo parts). H200, labs/attn_decode (µs, NS 3 vs 2):
/// per-row kernel (round 3) f16 ctx 4096 batch 32 155.6 vs 176.6, batch 1 13.2 vs 14.7; bf16
/// batch 32 162.6 vs 163.7, batch 1 13.5 vs 13.0. Paired (round 4): f16 batch 32 134.8 vs 143.6;
/// bf16 batch 32 139.9 vs 136.3, ctx 16384 batch 1 26.4 vs 25.6.
pub(crate) fn decode_stages(splits: usize, kv: DType, paired: bool) -> usize {
    if kv == DType::BF16 && (paired || splits > 1) {
        2
    } else {
        3
    }
}

/// The decode variant for head_dim `hd`: the one with `stages` ring stages (its paired form when
/// `paired`) if it exists and fits `limit`, else `variant`'s choice.
pub(crate) fn decode_variant(
    hd: usize,
    kv: DType,
    limit: usize,
    stages: usize,
    paired: bool,
) -> Result<Variant> {
    let bf16 = kv == DType::BF16;
    let pick = |v: Variant| Variant {
        name: if paired { paired_name(v.name) } else { v.name },
        ..v
    };
    for &(m, h, ns, bc, f16_name, bf16_name) in &VARIANTS {
        let name = if bf16 { bf16_name } else { f16_name };
        if m != Mode::Decode || h != hd || ns != stages || name.is_empty() {
            continue;
        }
        let smem = smem_bytes(Mode::Decode, hd, kv, ns, bc);
        if smem <= limit && matches!(kv, DType::F32 | DType::F16 | DType::BF16) {
            return Ok(pick(Variant { name, smem }));
        }
    }
    variant(Mode::Decode, hd, kv, limit).map(pick)
}

/// The paired form (`…p`, same shared memory) of a decode kernel of VARIANTS.
fn paired_name(name: &'static str) -> &'static str {
    PAIRED
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |&(_, p)| p)
}

/// Decode kernels and their paired forms (attention.cu `ATTN_DECODE1`).
const PAIRED: [(&str, &str); 10] = [
    ("attn_decode_hd64_f16_s3", "attn_decode_hd64_f16_s3p"),
    ("attn_decode_hd64_bf16_s3", "attn_decode_hd64_bf16_s3p"),
    ("attn_decode_hd128_f16_s2", "attn_decode_hd128_f16_s2p"),
    ("attn_decode_hd128_bf16_s2", "attn_decode_hd128_bf16_s2p"),
    ("attn_decode_hd128_f16_s3", "attn_decode_hd128_f16_s3p"),
    ("attn_decode_hd128_bf16_s3", "attn_decode_hd128_bf16_s3p"),
    ("attn_decode_hd256_f16_s2", "attn_decode_hd256_f16_s2p"),
    ("attn_decode_hd256_bf16_s2", "attn_decode_hd256_bf16_s2p"),
    ("attn_decode_hd256_f16_s1", "attn_decode_hd256_f16_s1p"),
    ("attn_decode_hd256_bf16_s1", "attn_decode_hd256_bf16_s1p"),
];

/// The default (first listed) variant for (mode, head_dim, KV dtype) whose shared memory fits
/// `limit`.
pub(crate) fn variant(mode: Mode, hd: usize, kv: DType, limit: usize) -> Result<Variant> {
    let bf16 = match kv {
        DType::F32 | DType::F16 => false,
        DType::BF16 => true,
        other => {
            return Err(Error::shape(
                OP,
                format!("cache dtype {other} (f32/f16/bf16 only)"),
            ));
        }
    };
    let mut smallest = usize::MAX;
    for &(m, h, ns, bc, f16_name, bf16_name) in &VARIANTS {
        let name = if bf16 { bf16_name } else { f16_name };
        if m != mode || h != hd || name.is_empty() {
            continue;
        }
        let smem = smem_bytes(mode, hd, kv, ns, bc);
        if smem <= limit {
            return Ok(Variant { name, smem });
        }
        smallest = smallest.min(smem);
    }
    if smallest == usize::MAX {
        return Err(Error::shape(
            OP,
            format!("head_dim {hd} has no CUDA kernel (supported: {HEAD_DIMS:?})"),
        ));
    }
    Err(Error::Limit {
        device: "cuda".into(),
        what: format!("{mode:?} attention (head_dim {hd}, {kv} cache) shared memory"),
        requested: smallest as u64,
        limit: limit as u64,
    })
}

fn check_params(p: &AttnParams, kv: &PagedKv<'_>) -> Result<()> {
    if p.n_heads == 0 || p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return Err(Error::shape(
            OP,
            format!(
                "n_heads {} must be a positive multiple of n_kv_heads {}",
                p.n_heads, p.n_kv_heads
            ),
        ));
    }
    check::eq(
        OP,
        "cache kv_heads vs n_kv_heads",
        kv.n_kv_heads(),
        p.n_kv_heads,
    )?;
    check::eq(OP, "cache head_dim vs head_dim", kv.head_dim(), p.head_dim)?;
    if !HEAD_DIMS.contains(&p.head_dim) {
        return Err(Error::shape(
            OP,
            format!(
                "head_dim {} has no CUDA kernel (supported: {HEAD_DIMS:?})",
                p.head_dim
            ),
        ));
    }
    if kv.block_size() == 0 {
        return Err(Error::shape(OP, "cache block_size is 0"));
    }
    if !p.scale.is_finite() {
        return Err(Error::shape(OP, format!("scale {} is not finite", p.scale)));
    }
    if let Some(c) = p.softcap
        && !(c.is_finite() && c > 0.0)
    {
        return Err(Error::shape(
            OP,
            format!("softcap {c} must be finite and > 0"),
        ));
    }
    if p.window == Some(0) {
        return Err(Error::shape(
            OP,
            "window 0 masks every key (use None for no window)",
        ));
    }
    Ok(())
}

impl CudaBackend {
    fn attn_plan(&self, p: &AttnParams, batch: &SeqBatch<'_>) -> AttnPlan {
        plan(
            p,
            batch.n_seqs(),
            batch.max_q_len,
            batch.max_kv_len,
            self.decode_slots(p.head_dim),
        )
    }

    /// Decode CTAs this device keeps resident at once for `hd`: SMs × the smaller occupancy of
    /// the f16 and bf16 decode kernels (registers and shared memory; the scratch size may not
    /// depend on the cache dtype, which `attention_scratch_bytes` does not see), queried once per
    /// (device, hd) and cached so `attention_scratch_bytes` and `attention` always agree (a
    /// failed query uses FALLBACK_CTAS_PER_SM, cached the same way).
    fn decode_slots(&self, hd: usize) -> usize {
        static SLOTS: Mutex<Vec<((u32, usize), usize)>> = Mutex::new(Vec::new());
        let key = (self.info.id.index, hd);
        let mut cache = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(_, v)) = cache.iter().find(|(k, _)| *k == key) {
            return v;
        }
        let sms = (self.info.caps.compute_units as usize).max(1);
        let limit = self.smem_limit();
        let occupancy = |kv: DType| {
            variant(Mode::Decode, hd, kv, limit)
                .and_then(|v| {
                    let f = self.function(&ATTENTION, v.name)?;
                    self.allow_smem(&f, v.smem)?;
                    f.occupancy_max_active_blocks_per_multiprocessor(128, v.smem, None)
                        .map_err(self.drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))
                })
                .map_or(FALLBACK_CTAS_PER_SM, |n| (n as usize).max(1))
        };
        let per_sm = occupancy(DType::F16).min(occupancy(DType::BF16));
        let v = sms * per_sm;
        cache.push((key, v));
        v
    }

    /// Dynamic shared memory a block may opt into; 0 (the probe could not read it) counts as
    /// 99 KiB, the smallest opt-in limit of the sm_80+ devices the backend opens.
    pub(crate) fn smem_limit(&self) -> usize {
        match self.info.caps.shared_memory_bytes {
            0 => 101_376,
            n => n as usize,
        }
    }

    /// Bytes of scratch `attention` needs for this batch (the decode split's partials).
    pub(crate) fn op_attention_scratch_bytes(&self, p: &AttnParams, batch: &SeqBatch<'_>) -> usize {
        let pl = self.attn_plan(p, batch);
        if pl.counters > 0 {
            // Planning happens before capture: create the merge counters now (best effort: a
            // failure here only means `attention` merges with attn_combine).
            let _ = self.attn_counters(pl.counters);
        }
        pl.scratch_bytes()
    }

    /// This backend's split-merge counters copied to the host (empty if none were created).
    #[cfg(test)]
    pub(crate) fn attn_counters_host(&self) -> Result<Vec<i32>> {
        let cur = self.attn_counters.lock().unwrap_or_else(|e| e.into_inner());
        match cur.as_ref() {
            Some(b) => self
                .stream
                .clone_dtoh(b)
                .map_err(self.drv("cuMemcpyDtoH(attention merge counters)")),
            None => Ok(Vec::new()),
        }
    }

    /// Device address of this backend's split-merge counters (`sms · COUNTERS_PER_SM` i32,
    /// zero between calls: every call's merging CTAs set theirs back to 0), created zeroed on
    /// first use; `None` if `n` exceed them, or if they do not exist yet and the stream is
    /// capturing a graph (an allocation must not become part of the graph): the caller then
    /// merges with attn_combine. One buffer per backend (one stream), so backends sharing a
    /// device never share counters; freed with the backend (8 KiB on a 132-SM device).
    fn attn_counters(&self, n: usize) -> Result<Option<u64>> {
        let mut cur = self.attn_counters.lock().unwrap_or_else(|e| e.into_inner());
        let len = (self.info.caps.compute_units as usize).max(1) * COUNTERS_PER_SM;
        if n > len {
            return Ok(None);
        }
        if cur.is_none() {
            let status = self
                .stream
                .capture_status()
                .map_err(self.drv("cuStreamIsCapturing"))?;
            if status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                return Ok(None);
            }
            let buf = self
                .stream
                .alloc_zeros::<i32>(len)
                .map_err(self.drv("cuMemAlloc(attention merge counters)"))?;
            *cur = Some(buf);
        }
        Ok(cur.as_ref().map(|b| {
            let (ptr, _sync) = b.device_ptr(&self.stream);
            ptr
        }))
    }

    pub(crate) fn op_attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        batch: &SeqBatch<'_>,
        p: &AttnParams,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        check::dtype(OP, "q", q.dtype(), &[DType::F32])?;
        check::dtype(OP, "out", out.dtype(), &[DType::F32])?;
        check::dtype(
            OP,
            "cache",
            kv.dtype(),
            &[DType::F32, DType::F16, DType::BF16],
        )?;
        for (what, v) in [
            ("q_starts", &batch.q_starts),
            ("kv_lens", &batch.kv_lens),
            ("block_tables", &batch.block_tables),
        ] {
            check::dtype(OP, what, v.dtype(), &[DType::I32])?;
        }
        check_params(p, kv)?;
        let (nh, hd) = (p.n_heads, p.head_dim);
        let qs = q.shape();
        if qs.rank() != 3 || qs.dim(1) != nh || qs.dim(2) != hd {
            return Err(Error::shape(
                OP,
                format!("q {qs} must be [n_tokens, n_heads {nh}, head_dim {hd}]"),
            ));
        }
        if out.shape() != qs {
            return Err(Error::shape(
                OP,
                format!("out {} must have q's shape {qs}", out.shape()),
            ));
        }
        let n_seqs = batch.n_seqs();
        check::eq(
            OP,
            "q_starts elements vs n_seqs + 1",
            batch.q_starts.numel(),
            n_seqs + 1,
        )?;
        let bt = batch.block_tables.shape();
        if bt.rank() != 2 || bt.dim(0) != n_seqs {
            return Err(Error::shape(
                OP,
                format!("block_tables {bt} must be [n_seqs {n_seqs}, max_blocks]"),
            ));
        }
        for (what, v) in [
            ("q", q),
            ("K cache", kv.k.as_view()),
            ("V cache", kv.v.as_view()),
            ("q_starts", batch.q_starts),
            ("kv_lens", batch.kv_lens),
            ("block_tables", batch.block_tables),
        ] {
            out.check_disjoint(&v)
                .map_err(|e| Error::shape(OP, format!("out vs {what}: {e}")))?;
        }
        // Device checks for every view (ptr() names the op on a foreign buffer).
        let n_tokens = qs.dim(0);
        let (qp, op_) = (self.ptr(OP, &q)?, self.ptr_mut(OP, &out)?);
        let (kp, vp) = (self.ptr_mut(OP, &kv.k)?, self.ptr_mut(OP, &kv.v)?);
        let (qsp, klp, btp) = (
            self.ptr(OP, &batch.q_starts)?,
            self.ptr(OP, &batch.kv_lens)?,
            self.ptr(OP, &batch.block_tables)?,
        );
        if !kp.is_multiple_of(16) || !vp.is_multiple_of(16) {
            return Err(Error::shape(
                OP,
                format!("K/V caches must start at 16-byte aligned addresses ({kp:#x}, {vp:#x})"),
            ));
        }
        let bs = kv.block_size();
        let pl = self.attn_plan(p, batch);
        let need = pl.scratch_bytes();
        let (part_acc, part_ml) = match (need, scratch) {
            (0, _) => (0u64, 0u64),
            (_, Some(s)) if s.bytes() >= need => {
                for (what, v) in [("q", q), ("out", out.as_view())] {
                    s.check_disjoint(&v)
                        .map_err(|e| Error::shape(OP, format!("scratch vs {what}: {e}")))?;
                }
                let sp = self.ptr_mut(OP, &s)?;
                if !sp.is_multiple_of(4) {
                    return Err(Error::shape(OP, "scratch must be 4-byte aligned"));
                }
                (sp, sp + 4 * pl.part_acc_floats as u64)
            }
            (_, s) => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "this batch needs {need} bytes of scratch (attention_scratch_bytes), got {}",
                        s.map_or(0, |s| s.bytes())
                    ),
                ));
            }
        };
        if n_tokens == 0 || n_seqs == 0 {
            return Ok(());
        }
        if n_seqs > 65535 || p.n_kv_heads > 65535 {
            return Err(Error::shape(
                OP,
                format!(
                    "{n_seqs} sequences × {} KV heads exceed the grid limit (65535 each)",
                    p.n_kv_heads
                ),
            ));
        }
        let cap = batch.max_blocks().saturating_mul(bs);
        // The kernels compute max_blocks·block_size in i32.
        arg_i32(OP, "max_blocks·block_size", cap)?;
        let max_kv = batch.max_kv_len.min(cap);
        let args = AttnArgs {
            q: qp,
            kc: kp,
            vc: vp,
            out: op_,
            q_starts: qsp,
            kv_lens: klp,
            tables: btp,
            part_acc,
            part_ml,
            counters: 0,
            n_seqs: arg_i32(OP, "n_seqs", n_seqs)?,
            n_tokens: arg_i32(OP, "n_tokens", n_tokens)?,
            n_heads: arg_i32(OP, "n_heads", nh)?,
            n_kv: arg_i32(OP, "n_kv_heads", p.n_kv_heads)?,
            group: arg_i32(OP, "group", pl.group)?,
            block_size: arg_i32(OP, "block_size", bs)?,
            max_blocks: arg_i32(OP, "max_blocks", batch.max_blocks())?,
            num_blocks: arg_i32(OP, "num_blocks", kv.num_blocks())?,
            max_q_len: arg_i32(OP, "max_q_len", batch.max_q_len.min(n_tokens))?,
            max_kv_len: arg_i32(OP, "max_kv_len", max_kv)?,
            scale: p.scale,
            softcap: p.softcap.unwrap_or(0.0),
            window: arg_i32(OP, "window", p.window.unwrap_or(0))?,
            causal: i32::from(p.causal),
            qd: arg_i32(OP, "qd", pl.qd)?,
            rd: arg_i32(OP, "rd", pl.rd)?,
            splits: arg_i32(OP, "splits", pl.splits)?,
            chunk: arg_i32(OP, "chunk", pl.chunk)?,
            row_tiles: 0,
            kv_f32: i32::from(kv.dtype() == DType::F32),
            bs_shift: if bs.is_power_of_two() {
                bs.trailing_zeros() as i32
            } else {
                -1
            },
            cluster: 0,
        };
        // Element offsets inside the kernels are i64; row and position counts are i32.
        arg_i32(OP, "n_tokens·n_heads", n_tokens * nh)?;
        let limit = self.smem_limit();
        let (nkv, ns) = (p.n_kv_heads as u32, n_seqs as u32);
        if let Some(v) = self.attn_cluster_plan(hd, kv.dtype(), &pl, p.n_kv_heads, n_seqs)? {
            // The splits of each row tile as one cluster, merged in it (attention_launch.rs).
            let a = AttnArgs {
                row_tiles: arg_i32(OP, "row tiles", pl.decode_row_tiles)?,
                cluster: 1,
                ..args
            };
            let gx = arg_i32(OP, "decode grid", pl.decode_row_tiles * pl.splits)? as u32;
            self.launch_attn(v, (gx, nkv, ns), &a, pl.splits as u32)?;
        } else if pl.decode_row_tiles > 0 {
            let paired = decode_paired(pl.chunk);
            let stages = decode_stages(pl.splits, kv.dtype(), paired);
            let v = decode_variant(hd, kv.dtype(), limit, stages, paired)?;
            let counters = if pl.counters > 0 {
                self.attn_counters(pl.counters)?
            } else {
                None
            };
            let a = AttnArgs {
                row_tiles: arg_i32(OP, "row tiles", pl.decode_row_tiles)?,
                counters: counters.unwrap_or(0),
                ..args
            };
            let gx = arg_i32(OP, "decode grid", pl.decode_row_tiles * pl.splits)? as u32;
            self.launch_attn(v, (gx, nkv, ns), &a, 1)?;
            if pl.splits > 1 && counters.is_none() {
                self.launch_combine((pl.decode_row_tiles as u32, nkv, ns), &a, hd)?;
            }
        }
        if pl.prefill_row_tiles > 0 {
            let v = variant(Mode::Prefill, hd, kv.dtype(), limit)?;
            let a = AttnArgs {
                row_tiles: arg_i32(OP, "row tiles", pl.prefill_row_tiles)?,
                ..args
            };
            self.launch_attn(v, (a.row_tiles as u32, nkv, ns), &a, 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "attention_mma_tests.rs"]
mod mma_tests;

#[cfg(test)]
#[path = "attention_gpu_tests.rs"]
mod gpu_tests;
