//! The int8 tensor-core GEMM of the block types (kernels/matmul_mma.cu): the third matmul path,
//! between the fused GEMV (few rows) and dequantize + cuBLASLt (many rows). x is rounded to int8
//! per 16 elements by the fused path's `quant_x_<type>` (the same rounding, the same scratch
//! layout), then `mma_<type>_b<BM>_w<WT>` multiplies it with the exactly decoded weight bytes on
//! `mma.sync` s8 tensor cores and applies the per-run scales in f32. Small grids split k
//! (`gridDim.z`), writing partial sums that `mma_reduce` adds in a fixed order (deterministic).
//!
//! Test hook: env `KILN_MATMUL_PATH=fused|mma|dense` forces that path for every matmul of the
//! `Auto` dispatch where the path applies (mma: block types only; the conformance suite runs
//! with `mma` on the GPU machine so the new path sees every matmul case at every m).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result};

use super::arg_i32;
use super::matmul_q::{MatmulPath, QUANT_X, block_index, x_units};
use crate::buffer::{CudaWeight, chunked_ok};
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

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
    /// plan as the launch).
    pub(crate) fn mma_scratch_bytes(&self, dt: DType, m: usize, n: usize, k: usize) -> usize {
        let sms = self.info.caps.compute_units.max(1) as usize;
        mma_plan(dt, m, n, k, mma_config(m, self.mma_smem_max()), sms).scratch
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
        self.mma_allow_smem(&f, smem)?;
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

    /// Let `f` take `smem` bytes of dynamic shared memory (above the 48 KiB default).
    fn mma_allow_smem(&self, f: &CudaFunction, smem: usize) -> Result<()> {
        if smem <= 48 << 10 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        f.set_attribute(
            sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(self.drv("cuFuncSetAttribute(max dynamic shared memory)"))
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
        let mut b = self.stream.launch_builder(&f);
        b.arg(&part).arg(&out).arg(&c).arg(&s);
        // SAFETY: part holds splits·count f32 (scratch written by the mma kernel just before on
        // this stream), out count f32 (the matmul's output view, m·n elements).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch mma_reduce"))
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
