//! The int8 tensor-core GEMM of the block types (kernels/matmul_mma.cu): the third matmul path,
//! between the fused GEMV (few rows) and dequantize + cuBLASLt (many rows). x is rounded to int8
//! per 16 elements by the fused path's `quant_x_<type>` (the same rounding, the same scratch
//! layout), then `mma_<type>_b<BM>_w<WT>` multiplies it with the exactly decoded weight bytes on
//! `mma.sync` s8 tensor cores and applies the per-run scales in f32. Small grids split k
//! (`gridDim.z`), writing partial sums that `mma_reduce` adds in a fixed order (deterministic).
//!
//! Q4_K at 1 ≤ m ≤ 64 has two kernels of its own: `mq4k` (int8, below) and `mh4k` (f16 weight
//! operand sc·q, mh4k.rs), and at 2 ≤ m ≤ 8 on sm_90 a third, `mp4k` (int8 with the weight
//! streamed through per-warp bulk-copy rings, mp4k.rs); the tuner measures them per shape and
//! dispatch takes the fastest (`Crossover::min_mh_rows`, `Crossover::max_mp_rows`). Q5_K, Q6_K
//! and Q8_0 at 1 ≤ m ≤ 64 have one each, `mq5k` / `mq6k` / `mq8_0` (mqk.rs), in place of the
//! generic kernel.
//!
//! Test hook: env `KILN_MATMUL_PATH=fused|mma|dense` forces that path for every matmul of the
//! `Auto` dispatch where the path applies (mma: block types only; the conformance suite runs
//! with `mma` on the GPU machine so the new path sees every matmul case at every m).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result};

use super::arg_i32;
use super::launch::Arg;
use super::matmul_q::{MatmulPath, QUANT_X, block_index, x_units};
use crate::buffer::{CudaWeight, chunked_ok};
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

mod launch_x8;
mod many;
mod mh4k;
mod mp4k;
mod mqk;
use mh4k::{mh_config, mh_plan};

/// The Q4_K few-row kernels (1 ≤ m ≤ 64; `Pipe`, `PipeTensor` 2 ≤ m ≤ 8 on sm_90).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q4kKernel {
    /// `mq_quant_x` + `mq4k_*`: x int8 per 32, int8 tensor cores, f32 scales per sub-block.
    Int8,
    /// `mh_quant_x` + `mh4k_*`: x f16 with a power-of-two scale per (row, 256), f16 tensor
    /// cores on the exact sc·q, d and dmin per 256.
    F16,
    /// `mp_quant_x` + `mp4k_*`: x int8 per 32 (rounded as `Int8` rounds it), W through
    /// per-warp bulk-copy rings (one copy per W row and stage), int8 tensor cores.
    Pipe,
    /// `mp_quant_x` + `mpt4k_*`: `Pipe` with one 2-D tensor copy per warp and stage.
    PipeTensor,
}

/// How the mma path rounds x (tests build their oracle with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaXRounding {
    /// int8 per `group` elements, d = max|x| / 127 kept to 22 significant bits.
    Int8 { group: usize },
    /// Per (row, 256 elements): s = 2^(e − 14), e = ⌊log2 max|x|⌋ (at least −112), x̂ =
    /// s·f16_rn(x / s).
    F16Block,
}

macro_rules! mma_names {
    ($($s:literal),*) => {
        [$( [concat!("mma_", $s, "_b16_w1"), concat!("mma_", $s, "_b32_w1"),
             concat!("mma_", $s, "_b64_w1"), concat!("mma_", $s, "_b64_w2")] ),*]
    };
}

/// `mma_<type>_b<BM>_w<WT>` of the 12 block types (indexed like `DType::WEIGHT_TYPES[3..]`),
/// one per entry of `MMA_CONFIGS`.
const MMA: [[&str; 4]; 12] = mma_names!(
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl",
    "iq4_xs"
);

/// (BM x rows, WT 16-row W tiles per warp) of each compiled configuration (kernels/matmul_mma.cu
/// MMA_ALL_CONFIGS, same order). A block covers BM x rows × 64·WT W rows.
const MMA_CONFIGS: [(usize, usize); 4] = [(16, 1), (32, 1), (64, 1), (64, 2)];

/// A configuration forced for every mma matmul of this process (benches sweep them), or
/// `usize::MAX` for the built-in choice.
static FORCED_CONFIG: AtomicUsize = AtomicUsize::new(usize::MAX);
/// A k split forced for every mma matmul of this process (benches sweep it), or `usize::MAX`
/// for the built-in rule.
static FORCED_SPLITS: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The Q4_K kernel forced for every mma matmul of this process at 1 ≤ m ≤ 64: 0 the tuned
/// choice, 1 Int8, 2 F16, 3 Pipe, 4 PipeTensor.
static FORCED_Q4K: AtomicUsize = AtomicUsize::new(0);

impl CudaBackend {
    /// Force configuration `c` (an index into `mma_configs()`) for every later mma matmul of
    /// this process, or restore the built-in choice with None. For benchmarks; a configuration
    /// that does not fit the device's shared memory is ignored (the built-in choice runs).
    pub fn force_mma_config(&self, c: Option<usize>) {
        FORCED_CONFIG.store(c.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Force `s` k splits (clamped to 1 ..= the k stages) for every later mma matmul of this
    /// process, or restore the built-in rule with None. For benchmarks.
    pub fn force_mma_splits(&self, s: Option<usize>) {
        FORCED_SPLITS.store(s.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// The mma kernel configurations: (x rows, 16-row W tiles per warp) of a block.
    pub fn mma_configs() -> &'static [(usize, usize)] {
        &MMA_CONFIGS
    }

    /// Force kernel `k` for every later Q4_K mma matmul at 1 ≤ m ≤ 64 of this process (where
    /// its tile fits the device), or restore the tuned choice with None. For tests and benches.
    pub fn force_q4k_kernel(&self, k: Option<Q4kKernel>) {
        let v = match k {
            None => 0,
            Some(Q4kKernel::Int8) => 1,
            Some(Q4kKernel::F16) => 2,
            Some(Q4kKernel::Pipe) => 3,
            Some(Q4kKernel::PipeTensor) => 4,
        };
        FORCED_Q4K.store(v, Ordering::Relaxed);
    }
}

/// Threads per block of the mma kernels.
const THREADS: usize = 128;
/// 16-element units per k stage (256 elements).
const STAGE_UNITS: usize = 16;

/// Dynamic shared memory of configuration (bm, wt), as kernels/matmul_mma.cu `mma_smem_bytes`:
/// Wq [64·wt][68 words], Ws [16][64·wt] float2, Xq [2][bm][68 words], Xs [2][bm][18] float2.
fn smem_bytes(c: usize) -> usize {
    let (bm, wt) = MMA_CONFIGS[c];
    64 * wt * 68 * 4 + STAGE_UNITS * 64 * wt * 8 + 2 * bm * 68 * 4 + 2 * bm * 18 * 8
}

/// The launch plan of one mma matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmaPlan {
    /// Index into `MMA_CONFIGS`.
    pub(crate) config: usize,
    /// k splits (gridDim.z) and k stages per split.
    pub(crate) splits: usize,
    pub(crate) stages_per_split: usize,
    /// Bytes of scratch: xq uint4 `[m, units]`, xs float2 `[m, units]`, then (splits > 1)
    /// partial sums f32 `[splits, m, n]`.
    pub(crate) scratch: usize,
}

/// The configuration (index into `MMA_CONFIGS`) for m rows: the largest up to the m-tile
/// that covers m which fits the device's opt-in shared memory (sm_86/89 allow ~99 KiB: (64, 2)
/// needs 102 KiB).
fn mma_config(m: usize, smem_max: usize) -> usize {
    let forced = FORCED_CONFIG.load(Ordering::Relaxed);
    if forced < MMA_CONFIGS.len() && smem_bytes(forced) <= smem_max {
        return forced;
    }
    let want = match m {
        0..=16 => 0,
        17..=32 => 1,
        33..=64 => 2,
        _ => 3,
    };
    (0..=want)
        .rev()
        .find(|&c| smem_bytes(c) <= smem_max)
        .unwrap_or(0)
}

/// Plan the mma path for x `[m, k]`, a `dt` weight `[n, k]` with configuration `config` on a
/// device with `sms` SMs.
pub(crate) fn mma_plan(
    dt: DType,
    m: usize,
    n: usize,
    k: usize,
    config: usize,
    sms: usize,
) -> MmaPlan {
    let (bm, wt) = MMA_CONFIGS[config];
    let runs = super::embed::runs_per_chunk(dt).max(1);
    let qk = crate::buffer::split(dt).map_or(16, |s| s.qk);
    let nchunks = (k / qk) * super::embed::chunks_per_block(dt);
    let stages = nchunks.div_ceil(STAGE_UNITS / runs).max(1);
    let blocks = n.div_ceil(64 * wt) * m.div_ceil(bm);
    // Split k while the grid is under ~4 blocks per SM (each block has one stage of W loads in
    // flight: more blocks, more bytes in flight), keeping ≥ 2 stages per split. The kernel is
    // bound by each block's serial load → decode → mma chain, not by bytes, so the partial
    // sums' traffic (2·4·m·n bytes per split) is not capped: an H200 sweep of forced splits
    // (BENCHMARKS.md, "mma k-split sweep") put this rule within 14 % of the best (configuration,
    // split) at every measured (type, shape, m); the former cap (partials ≤ 1/4 of W) cost up
    // to 3.7× (Q4_K 4096×14336 m = 64: 127 µs at 3 splits, 97 at 8; m = 128: 608 at 1, 166).
    let want_splits = (4 * sms.max(1)).div_ceil(blocks.max(1));
    let splits = match FORCED_SPLITS.load(Ordering::Relaxed) {
        usize::MAX => want_splits.min(stages / 2).clamp(1, 16),
        f => f.clamp(1, stages),
    };
    let stages_per_split = stages.div_ceil(splits);
    let splits = stages.div_ceil(stages_per_split);
    let units = x_units(dt, k);
    let xq = m * units * 24;
    let part = if splits > 1 { splits * m * n * 4 } else { 0 };
    MmaPlan {
        config,
        splits,
        stages_per_split,
        scratch: xq + part,
    }
}

/// Whether a Q4_K kernel may take a `dt` matmul at m rows: Q4_K, 1 ≤ m ≤ 64, no generic
/// configuration forced (`force_mma_config`).
fn q4k_rows(dt: DType, m: usize) -> bool {
    dt == DType::Q4_K
        && (1..=mqk::MQK_MAX_ROWS).contains(&m)
        && FORCED_CONFIG.load(Ordering::Relaxed) >= MMA_CONFIGS.len()
}

/// The i32 dims of a Q4_K few-row kernel (mq4k, mh4k, mp4k) and its x rounding: [n, k, m,
/// padded m, blocks per split].
fn q4k_dims([m, n, k]: [usize; 3], mp: usize, blocks_per_split: usize) -> Result<[i32; 5]> {
    let op = OpKind::Matmul;
    Ok([
        arg_i32(op, "n", n)?,
        arg_i32(op, "k", k)?,
        arg_i32(op, "m", m)?,
        arg_i32(op, "padded m", mp)?,
        arg_i32(op, "blocks per split", blocks_per_split)?,
    ])
}

/// Launch shape of a Q4_K few-row kernel (`what` names it in errors): m tiles fastest (the
/// blocks sharing a W tile run together: W read once from HBM), then W tiles of `bn` rows, then
/// k splits; `threads` per block, `smem` bytes of dynamic shared memory.
fn q4k_launch(
    what: &str,
    n: usize,
    bn: usize,
    [m_tiles, splits]: [usize; 2],
    threads: usize,
    smem: usize,
) -> Result<LaunchConfig> {
    if n.div_ceil(bn) > 65535 {
        return Err(Error::shape(
            OpKind::Matmul,
            format!("n = {n} exceeds the {what} kernel's grid limit (65535·{bn} rows)"),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (m_tiles as u32, n.div_ceil(bn) as u32, splits as u32),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

/// The x rounding of the Q4_K few-row kernels (mq_quant_x, mh_quant_x): one warp per (block
/// column, padded x row), `warps` of them, 8 per 256-thread block, grid-stride.
fn warp_items_launch(warps: usize, sms: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (warps.div_ceil(8).clamp(1, sms * 8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `KILN_MATMUL_PATH` (read once): a path forced for the Auto dispatch, for tests.
pub(crate) fn forced_path() -> Option<MatmulPath> {
    static P: OnceLock<Option<MatmulPath>> = OnceLock::new();
    *P.get_or_init(|| match std::env::var("KILN_MATMUL_PATH").ok().as_deref() {
        Some("fused") => Some(MatmulPath::Fused),
        Some("mma") => Some(MatmulPath::Mma),
        Some("dense") => Some(MatmulPath::Dense),
        _ => None,
    })
}

/// Whether the mma path can run a `dt` weight with rows of k (block types, whole chunks).
pub(crate) fn mma_supported(dt: DType, k: usize) -> bool {
    block_index(dt).is_some() && chunked_ok(dt, k)
}

impl CudaBackend {
    /// Opt-in shared memory per block (the device attribute; 99 KiB if unknown).
    fn mma_smem_max(&self) -> usize {
        match self.info.caps.shared_memory_bytes {
            0 => 101_376,
            n => n as usize,
        }
    }

    /// The scratch `matmul_mma` asks for at x `[m, k]` and a `dt` weight `[n, k]` (the same
    /// plan as the launch; for Q4_K at 1 ≤ m ≤ 64 the larger of its two kernels', which the
    /// tuner both runs).
    pub(crate) fn mma_scratch_bytes(&self, dt: DType, m: usize, n: usize, k: usize) -> usize {
        let sms = self.info.caps.compute_units.max(1) as usize;
        let splits = FORCED_SPLITS.load(Ordering::Relaxed);
        // mq4k / mq5k / mq6k / mq8_0 (mqk.rs).
        let mq = self
            .mqk_config(dt, m, k)
            .map_or(0, |c| self.mqk_plan([m, n, k], c).scratch);
        let mut q4k = 0;
        if let Some(cfg) = self.mh4k_config(dt, m) {
            let p = mh_plan(m, n, k, cfg, sms, self.mh_per_sm(cfg), splits);
            q4k = q4k.max(p.scratch);
        }
        if self.mp4k_config(dt, m).is_some() {
            q4k = q4k.max(self.mp4k_scratch(m, n, k));
        }
        if dt == DType::Q4_K && mq.max(q4k) > 0 {
            return mq.max(q4k);
        }
        // Q5_K / Q6_K / Q8_0: mq5k's / mq6k's / mq8_0's, or the generic kernel's for a weight
        // they cannot take.
        let generic = mma_plan(dt, m, n, k, mma_config(m, self.mma_smem_max()), sms).scratch;
        generic.max(mq)
    }

    /// The f16 Q4_K configuration (index into `MH4K`) for m rows, under the same conditions.
    fn mh4k_config(&self, dt: DType, m: usize) -> Option<usize> {
        q4k_rows(dt, m).then(|| mh_config(m, self.mma_smem_max()))?
    }

    /// The Q4_K kernel that runs an mma matmul of a `dt` weight `[n, k]` at m rows (None: the
    /// generic kernel): the forced one (`force_q4k_kernel`) where it fits, else Pipe (its tuned
    /// flavour) up to the tuned `max_mp_rows` of (Q4_K, n, k), else F16 from the tuned
    /// `min_mh_rows` on, else Int8 (also while the shape is not tuned).
    fn q4k_kernel(&self, dt: DType, m: usize, n: usize, k: usize) -> Option<Q4kKernel> {
        let mq = q4k_rows(dt, m) && self.mqk_config(dt, m, k).is_some();
        let mh = self.mh4k_config(dt, m).is_some();
        let mp = self.mp4k_config(dt, m).is_some();
        let tuned = || self.crossovers_of(dt, n, k);
        match FORCED_Q4K.load(Ordering::Relaxed) {
            1 if mq => Some(Q4kKernel::Int8),
            2 if mh => Some(Q4kKernel::F16),
            3 if mp => Some(Q4kKernel::Pipe),
            4 if mp => Some(Q4kKernel::PipeTensor),
            _ if mp && tuned().is_some_and(|c| m <= c.max_mp_rows) => match tuned() {
                Some(c) if c.mp_tensor => Some(Q4kKernel::PipeTensor),
                _ => Some(Q4kKernel::Pipe),
            },
            _ if mh && (!mq || tuned().is_some_and(|c| m >= c.min_mh_rows)) => Some(Q4kKernel::F16),
            _ if mq => Some(Q4kKernel::Int8),
            _ => None,
        }
    }

    /// How the mma path rounds x for a `dt` weight `[n, k]` at m rows: f16 per 256 where the
    /// Q4_K f16 kernel runs, int8 per 32 where `mq4k`, `mp4k`, `mq5k`, `mq6k` or `mq8_0` does (for a 16-byte
    /// aligned weight, as prepare_weight makes), else int8 per 16 (`quant_x_<type>`).
    pub fn mma_x_rounding(&self, dt: DType, n: usize, k: usize, m: usize) -> MmaXRounding {
        match self.q4k_kernel(dt, m, n, k) {
            Some(Q4kKernel::F16) => MmaXRounding::F16Block,
            Some(Q4kKernel::Int8 | Q4kKernel::Pipe | Q4kKernel::PipeTensor) => {
                MmaXRounding::Int8 { group: 32 }
            }
            None if self.mqk_config(dt, m, k).is_some() => MmaXRounding::Int8 { group: 32 },
            None => MmaXRounding::Int8 { group: 16 },
        }
    }

    /// The mma path: x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`.
    pub(crate) fn matmul_mma(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        self.matmul_mma_with(xp, w, outp, [m, n, k], None)
    }

    /// The mma path with the Q4_K kernel given (the tuner times both); None, or a kernel whose
    /// tile does not fit the device, runs the dispatch's choice.
    pub(crate) fn matmul_mma_with(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        kernel: Option<Q4kKernel>,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let Some(qi) = block_index(w.dtype) else {
            return Err(check::unsupported(op, w.dtype, &self.info));
        };
        if !chunked_ok(w.dtype, k) {
            return Err(Error::shape(
                op,
                format!("{} rows of {k} are not whole blocks", w.dtype),
            ));
        }
        let mh = self.mh4k_config(w.dtype, m);
        // The cp.async and bulk copies need a 16-byte aligned weight (`mqk_applies`,
        // `mp4k_applies`; else the generic kernel).
        let mq = self.mqk_applies(w, m, k).filter(|_| w.dtype == DType::Q4_K);
        let mp = mp4k::mp_config(m).filter(|_| self.mp4k_applies(w, m));
        let kernel = match kernel {
            Some(Q4kKernel::F16) if mh.is_some() => kernel,
            Some(Q4kKernel::Int8) if mq.is_some() => kernel,
            Some(Q4kKernel::Pipe | Q4kKernel::PipeTensor) if mp.is_some() => kernel,
            _ => self.q4k_kernel(w.dtype, m, n, k),
        };
        if let (Some(q @ (Q4kKernel::Pipe | Q4kKernel::PipeTensor)), Some(cfg)) = (kernel, mp) {
            let tensor = q == Q4kKernel::PipeTensor;
            return self.matmul_mp4k(xp, w, outp, [m, n, k], cfg, tensor);
        }
        // A Pipe choice this weight cannot take (alignment): mq4k, which rounds x alike.
        let kernel = kernel.map(|q| match q {
            Q4kKernel::Pipe | Q4kKernel::PipeTensor => Q4kKernel::Int8,
            q => q,
        });
        if let (Some(Q4kKernel::F16), Some(cfg)) = (kernel, mh) {
            let splits = FORCED_SPLITS.load(Ordering::Relaxed);
            return self.matmul_mh4k(xp, w, outp, [m, n, k], cfg, splits);
        }
        // Q4_K: mq4k where chosen (Int8); Q5_K / Q6_K / Q8_0: theirs wherever it applies.
        let mq = match w.dtype {
            DType::Q4_K => mq.filter(|_| kernel == Some(Q4kKernel::Int8)),
            _ => self.mqk_applies(w, m, k),
        };
        if let Some(c) = mq {
            return self.matmul_mqk(xp, w, outp, [m, n, k], c);
        }
        let (mi, ni, ki) = (
            arg_i32(op, "m", m)?,
            arg_i32(op, "n", n)?,
            arg_i32(op, "k", k)?,
        );
        let sms = self.info.caps.compute_units.max(1) as usize;
        let config = mma_config(m, self.mma_smem_max());
        let (bm, wt) = MMA_CONFIGS[config];
        let smem = smem_bytes(config);
        let f = self.function(&MATMUL_MMA, MMA[qi][config])?;
        self.allow_smem(&f, smem)?;
        let plan = mma_plan(w.dtype, m, n, k, config, sms);
        if m.div_ceil(bm) > 65535 {
            return Err(Error::shape(
                op,
                format!("m = {m} exceeds the mma kernel's grid limit (65535·{bm} rows)"),
            ));
        }
        let units = x_units(w.dtype, k);
        let xq_bytes = m * units * 16;
        let xs_bytes = m * units * 8;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(plan.scratch)?;
        let (xq, xs) = (scratch, scratch + xq_bytes as u64);
        let part = scratch + (xq_bytes + xs_bytes) as u64;
        self.launch_quant_x(QUANT_X[qi], xp, xq, xs, ki, mi, m * units)?;
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(64 * wt) as u32,
                m.div_ceil(bm) as u32,
                plan.splits as u32,
            ),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let y = if plan.splits > 1 { part } else { outp };
        let spz = arg_i32(op, "stages per split", plan.stages_per_split)?;
        self.launch_mma(&f, cfg, w, [xq, xs], y, [mi, ni, ki, spz])?;
        if plan.splits > 1 {
            self.launch_mma_reduce(part, outp, m * n, plan.splits)?;
        }
        Ok(())
    }

    /// `mma_*`: body/head, x = [xq, xs], y (out, or the partial sums with a split),
    /// dims = [m, n, k, stages per split]; launched like the GEMV, as a programmatic dependent
    /// of quant_x (`launch_after_quant_x`).
    fn launch_mma(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 2],
        y: u64,
        dims: [i32; 4],
    ) -> Result<()> {
        self.launch_after_quant_x(f, "launch mma", cfg, w, x, y, dims)
    }

    /// out f32 `[count]` = Σ_z part f32 `[splits, count]`, z in order.
    fn launch_mma_reduce(&self, part: u64, out: u64, count: usize, splits: usize) -> Result<()> {
        let f = self.function(&MATMUL_MMA, "mma_reduce")?;
        let cfg = self.grid_1d(count);
        let (c, s) = (count as i64, arg_i32(OpKind::Matmul, "splits", splits)?);
        let args = [Arg::U64(&part), Arg::U64(&out), Arg::I64(&c), Arg::I32(&s)];
        // SAFETY: part holds splits·count f32 (scratch written by the mma kernel just before on
        // this stream), out count f32 (the matmul's output view, m·n elements). A programmatic
        // dependent: it reads part only after griddepcontrol.wait (kernels/matmul_mma.cu).
        unsafe { self.launch_pdl(&f, "launch mma_reduce", cfg, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split rule on a 132-SM device: the grid is filled up to ~4 blocks per SM, every
    /// split keeps ≥ 2 k stages, the splits cover k, and the scratch holds the partials.
    #[test]
    fn split_rule_fills_the_grid_and_covers_k() {
        let sms = 132;
        for (dt, n, k) in [
            (DType::Q4_K, 14336, 4096),
            (DType::Q4_K, 4096, 14336),
            (DType::Q8_0, 4096, 4096),
        ] {
            for m in [8, 16, 32, 64, 128, 256, 512] {
                let c = mma_config(m, 232_448);
                let p = mma_plan(dt, m, n, k, c, sms);
                let stages = k / 256;
                let (bm, wt) = MMA_CONFIGS[c];
                let blocks = n.div_ceil(64 * wt) * m.div_ceil(bm);
                assert!(
                    p.splits * p.stages_per_split >= stages,
                    "{dt} {n}x{k} m={m}"
                );
                assert!(
                    (p.splits - 1) * p.stages_per_split < stages,
                    "no empty split"
                );
                assert!(p.splits == 1 || p.stages_per_split >= 2);
                assert!(p.splits <= 16 && p.splits <= (4 * sms).div_ceil(blocks).max(1));
                let xq = m * x_units(dt, k) * 24;
                let part = if p.splits > 1 {
                    p.splits * m * n * 4
                } else {
                    0
                };
                assert_eq!(p.scratch, xq + part);
            }
        }
        // Q4_K 4096×14336 at m = 64 (64 blocks): 8 splits, as the sweep's best.
        let p = mma_plan(DType::Q4_K, 64, 4096, 14336, mma_config(64, 232_448), sms);
        assert_eq!((p.splits, p.stages_per_split), (8, 7));
    }
}
