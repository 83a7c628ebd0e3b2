//! The raw-block int8 tensor-core kernels of Q5_K, Q6_K and Q8_0 for 1 ≤ m ≤ 64, in place of the
//! generic `mma_<type>_*` on the mma path at those rows (the tuner weighs the mma path against
//! the fused GEMV and the dense path as for every type; a forced generic configuration,
//! `force_mma_config`, still runs the generic kernel):
//! - `mq5k_*` (kernels/matmul_mma.cu): mq4k's kernel with the 176-byte Q5_K block and its fifth
//!   bits merged into the A fragments;
//! - `mq6k_*` (kernels/matmul_mqk.cuh): the 208-byte Q6_K bodies (d from the head region), one
//!   `mma.sync` m16n8k16 per 16-element sub-block;
//! - `mq8_0_*` (kernels/matmul_mqk.cuh): a block column's 256 qs bytes and 8 d per row, the qs
//!   bytes as the A operand of one m16n8k32 per Q8_0 block.
//!
//! Both stream the raw blocks of a block column through mq4k's cp.async ring with its tiles,
//! k-split rule and PDL, and read x as mq4k's `mq_quant_x` rounds it (int8 per 32).

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{DType, Result};

use super::super::launch::Arg;
use super::{FORCED_CONFIG, MMA_CONFIGS, MqConfig, MqPlan, q4k_dims, q4k_launch, tile_for};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

/// The tiles of every kind, by x-row tile BM = 8, 16, 32, 64: mq4k's shapes (BENCHMARKS.md
/// "mma2"), the 64-row one with `$st64` stages (where 3 would not fit 227 KB). A device whose
/// shared memory cannot hold the tile for m runs the largest that fits, over several m tiles
/// (none: the generic kernel).
macro_rules! mq_tiles {
    ($p:literal, $st64:literal, $n64:literal) => {
        [
            MqConfig {
                bm: 8,
                wt: 1,
                nw: 8,
                st: 3,
                name: concat!($p, "_b8_w1_n8_s3"),
            },
            MqConfig {
                bm: 16,
                wt: 1,
                nw: 8,
                st: 3,
                name: concat!($p, "_b16_w1_n8_s3"),
            },
            MqConfig {
                bm: 32,
                wt: 2,
                nw: 4,
                st: 3,
                name: concat!($p, "_b32_w2_n4_s3"),
            },
            MqConfig {
                bm: 64,
                wt: 2,
                nw: 8,
                st: $st64,
                name: concat!($p, $n64),
            },
        ]
    };
}

/// One kernel family: its type, configurations (kernels/matmul_mma.cu, same order), shared bytes
/// per W row and per x row of a stage, and whether it reads the head region (d).
struct Family {
    dtype: DType,
    tiles: [MqConfig; 4],
    w_stride: usize,
    x_stride: usize,
    head: bool,
}

const FAMILIES: [Family; 3] = [
    Family {
        dtype: DType::Q5_K,
        tiles: mq_tiles!("mq5k", 2, "_b64_w2_n8_s2"),
        w_stride: 224,
        x_stride: 288,
        head: false,
    },
    Family {
        dtype: DType::Q6_K,
        tiles: mq_tiles!("mq6k", 3, "_b64_w2_n8_s3"),
        w_stride: 208,
        x_stride: 272,
        head: true,
    },
    Family {
        dtype: DType::Q8_0,
        tiles: mq_tiles!("mq8_0", 2, "_b64_w2_n8_s2"),
        w_stride: 288,
        x_stride: 288,
        head: true,
    },
];

/// The most x rows these kernels take (their largest tile).
const MQK_MAX_ROWS: usize = 64;

/// The family of `dt` (index into `FAMILIES`).
fn family(dt: DType) -> Option<usize> {
    FAMILIES.iter().position(|f| f.dtype == dt)
}

impl Family {
    /// Dynamic shared memory of a configuration, the kernels' ST·STAGE (mq4k_body, mq6k_body,
    /// mq8_0_body): per stage W [BN][w_stride], Xq [BM][x_stride], Xs [BM/2][144].
    fn smem(&self, c: &MqConfig) -> usize {
        c.st * (16 * c.wt * c.nw * self.w_stride + c.bm * self.x_stride + c.bm / 2 * 144)
    }
}

/// The chosen kernel of one matmul: (family, configuration).
pub(super) type MqkChoice = (usize, usize);

impl CudaBackend {
    /// The kernel for a `dt` weight at m rows, if one takes it: Q5_K, Q6_K or Q8_0, 1 ≤ m ≤ 64, no
    /// generic configuration forced (`force_mma_config`), rows of whole 256-element columns (Q8_0
    /// rows may end in a partial one: the generic kernel), a tile that fits the device's shared
    /// memory.
    pub(super) fn mqk_config(&self, dt: DType, m: usize, k: usize) -> Option<MqkChoice> {
        let fi = family(dt)?;
        let f = &FAMILIES[fi];
        let smem_max = self.mma_smem_max();
        let ok = (1..=MQK_MAX_ROWS).contains(&m)
            && k.is_multiple_of(256)
            && FORCED_CONFIG.load(Ordering::Relaxed) >= MMA_CONFIGS.len();
        let cfg = ok.then(|| tile_for(&f.tiles, m, |c| f.smem(c) <= smem_max))??;
        Some((fi, cfg))
    }

    /// Whether one of these kernels runs this weight `[n, k]` at m rows: a configuration
    /// applies and what it copies with cp.async is 16-byte aligned (the body; Q8_0's head too;
    /// prepare_weight's buffers are).
    pub(super) fn mqk_applies(&self, w: &CudaWeight, m: usize, k: usize) -> Option<MqkChoice> {
        let aligned = w.body_ptr().is_multiple_of(16)
            && (w.dtype != DType::Q8_0 || w.head_ptr().is_multiple_of(16));
        self.mqk_config(w.dtype, m, k).filter(|_| aligned)
    }

    /// The plan of kernel `(fi, cfg)` for x `[m, k]`, W `[n, k]`.
    pub(super) fn mqk_plan(&self, [m, n, k]: [usize; 3], (fi, cfg): MqkChoice) -> MqPlan {
        static OCC: [[AtomicUsize; 4]; 3] = [const { [const { AtomicUsize::new(0) }; 4] }; 3];
        let f = &FAMILIES[fi];
        let c = &f.tiles[cfg];
        let per_sm = self.mq_occupancy(c, f.smem(c), &OCC[fi][cfg]);
        let sms = self.info.caps.compute_units.max(1) as usize;
        super::mq_plan_of(c, cfg, [m, n, k], sms, per_sm)
    }

    /// The Q5_K / Q6_K few-row path: x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`.
    /// `mq_quant_x` rounds x per 32 elements into the scratch, the kernel multiplies it with the
    /// raw blocks, `mma_reduce` (a programmatic dependent) adds the k splits' partial sums in
    /// order.
    pub(super) fn matmul_mqk(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        choice: MqkChoice,
    ) -> Result<()> {
        let plan = self.mqk_plan([m, n, k], choice);
        let f = &FAMILIES[choice.0];
        let c = &f.tiles[plan.cfg];
        let smem = f.smem(c);
        let func = self.function(&MATMUL_MMA, c.name)?;
        self.allow_smem(&func, smem)?;
        let dims = q4k_dims([m, n, k], plan.mp, plan.blocks_per_split)?;
        let tiles = [plan.mp / c.bm, plan.splits];
        let launch = q4k_launch(c.name, n, 16 * c.wt * c.nw, tiles, 32 * c.nw, smem)?;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(plan.scratch)?;
        let xq = scratch;
        let xs = xq + (plan.mp * k) as u64;
        let part = xs + (plan.mp * (k / 32) * 8) as u64;
        self.launch_q4k_quant_x("mq_quant_x", xp, [xq, xs], dims, (k / 256) * plan.mp)?;
        let y = if plan.splits > 1 { part } else { outp };
        self.launch_mqk(&func, launch, f.head, w, [xq, xs], y, dims)?;
        if plan.splits > 1 {
            self.launch_mma_reduce(part, outp, m * n, plan.splits)?;
        }
        Ok(())
    }

    /// `mq5k_*(body, xq, xs, y, n, k, m, mp, blocks per split)` or `mq6k_*` / `mq8_0_*(body,
    /// head, xq, …)` (`head`), a programmatic dependent of the quant_x above (it issues its first W copies,
    /// then waits).
    #[allow(clippy::too_many_arguments)]
    fn launch_mqk(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        head: bool,
        w: &CudaWeight,
        x: [u64; 2],
        y: u64,
        dims: [i32; 5],
    ) -> Result<()> {
        let (body, hd) = (w.body_ptr(), w.head_ptr());
        let [n, k, m, mp, spz] = dims;
        let mut args = vec![Arg::U64(&body)];
        if head {
            args.push(Arg::U64(&hd));
        }
        args.extend([
            Arg::U64(&x[0]),
            Arg::U64(&x[1]),
            Arg::U64(&y),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
            Arg::I32(&spz),
        ]);
        // SAFETY: w is the n × k weight of the kernel's type in kiln's layout: n·k/256 bodies
        // (Q5_K: the whole 176-byte block; Q6_K: 208 bytes, then n·k/256 f16 d at head; Q8_0:
        // n·k/32 runs of 32 qs bytes, then n·k/32 f16 d at head, 16-byte aligned as k is a
        // multiple of 256; head passed exactly when the kernel takes it), the body 16-byte
        // aligned (`mqk_applies`); rows read are
        // clamped to n − 1, block columns < k/256 (every split's range non-empty, `mq_plan_of`).
        // xq / xs were written by mq_quant_x just before on this stream (read after
        // griddepcontrol.wait; x rows < mp). y f32: the m·n output, or with gridDim.z = splits
        // > 1 the [splits, m, n] partial sums in the scratch; writes bounded by n and m. Block
        // size within the kernel's launch bound (32·NW), its dynamic shared memory allowed just
        // before.
        unsafe { self.launch_pdl(f, "launch mq5k/mq6k/mq8_0", cfg, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile fits an H100/H200 block (227 KiB); on a 99 KiB device (sm_86/89) the choice
    /// is a tile that fits (Q5_K, Q6_K: the smallest does) or none (the generic kernel); the
    /// choice covers m where it fits.
    #[test]
    fn tiles_fit_and_cover_m() {
        for f in &FAMILIES {
            for c in &f.tiles {
                assert!(f.smem(c) <= 232_448, "{}", c.name);
            }
            if f.dtype != DType::Q8_0 {
                assert!(f.smem(&f.tiles[0]) <= 101_376, "{}", f.tiles[0].name);
            }
            for m in 1..=64 {
                let i = tile_for(&f.tiles, m, |c| f.smem(c) <= 232_448).unwrap();
                assert!(
                    f.tiles[i].bm >= m && (i == 0 || f.tiles[i - 1].bm < m),
                    "m={m}"
                );
                if let Some(j) = tile_for(&f.tiles, m, |c| f.smem(c) <= 101_376) {
                    assert!(f.smem(&f.tiles[j]) <= 101_376);
                }
            }
        }
    }
}
