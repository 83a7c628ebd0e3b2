//! The Q6_K int8 tensor-core kernel for 1 ≤ m ≤ 64 (kernels/matmul_mq6k.cuh `mq6k_*`): the
//! raw 208-byte block bodies through a cp.async ring, fragments decoded straight from them, one
//! `mma.sync` m16n8k16 per 16-element sub-block, x rounded by mq4k's `mq_quant_x` (int8 per
//! 32). It replaces the generic `mma_q6_k_*` on the mma path at those rows (the tuner weighs the
//! mma path against the fused GEMV and the dense path as for every type); a forced generic
//! configuration (`force_mma_config`) still runs the generic kernel.

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{DType, Result};

use super::super::launch::Arg;
use super::{FORCED_CONFIG, MMA_CONFIGS, MqConfig, MqPlan, q4k_dims, q4k_launch, tile_for};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

/// The configurations (kernels/matmul_mma.cu, same order), by x-row tile BM = 8, 16, 32, 64: the
/// shapes of mq4k's (BENCHMARKS.md "mma2"). A device whose shared memory cannot hold the tile for
/// m runs the largest that fits, over several m tiles.
const MQ6K: [MqConfig; 4] = [
    MqConfig {
        bm: 8,
        wt: 1,
        nw: 8,
        st: 3,
        name: "mq6k_b8_w1_n8_s3",
    },
    MqConfig {
        bm: 16,
        wt: 1,
        nw: 8,
        st: 3,
        name: "mq6k_b16_w1_n8_s3",
    },
    MqConfig {
        bm: 32,
        wt: 2,
        nw: 4,
        st: 3,
        name: "mq6k_b32_w2_n4_s3",
    },
    MqConfig {
        bm: 64,
        wt: 2,
        nw: 8,
        st: 3,
        name: "mq6k_b64_w2_n8_s3",
    },
];

/// The most x rows mq6k takes (its largest tile).
const MQ6_MAX_ROWS: usize = 64;

/// Dynamic shared memory of a configuration, as kernels/matmul_mq6k.cuh `mq6_smem_bytes`: per
/// stage W [BN][208 B], Xq [BM][272 B], Xs [BM/2][144 B].
fn mq6_smem(c: &MqConfig) -> usize {
    c.st * (16 * c.wt * c.nw * 208 + c.bm * 272 + c.bm / 2 * 144)
}

impl CudaBackend {
    /// The mq6k configuration (index into `MQ6K`) for a `dt` weight at m rows, if it takes it:
    /// Q6_K, 1 ≤ m ≤ 64, no generic configuration forced (`force_mma_config`), a tile that fits
    /// the device's shared memory.
    pub(super) fn mq6k_config(&self, dt: DType, m: usize) -> Option<usize> {
        let smem_max = self.mma_smem_max();
        (dt == DType::Q6_K
            && (1..=MQ6_MAX_ROWS).contains(&m)
            && FORCED_CONFIG.load(Ordering::Relaxed) >= MMA_CONFIGS.len())
        .then(|| tile_for(&MQ6K, m, |c| mq6_smem(c) <= smem_max))?
    }

    /// Whether mq6k runs this weight at m rows: a configuration applies and the body is 16-byte
    /// aligned (the cp.async copies; prepare_weight's buffers are).
    pub(super) fn mq6k_applies(&self, w: &CudaWeight, m: usize) -> Option<usize> {
        self.mq6k_config(w.dtype, m)
            .filter(|_| w.body_ptr().is_multiple_of(16))
    }

    /// The plan of mq6k configuration `cfg` for x `[m, k]`, W `[n, k]`.
    pub(super) fn mq6k_plan(&self, [m, n, k]: [usize; 3], cfg: usize) -> MqPlan {
        static OCC: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
        let c = &MQ6K[cfg];
        let per_sm = self.mq_occupancy(c, mq6_smem(c), &OCC[cfg]);
        let sms = self.info.caps.compute_units.max(1) as usize;
        super::mq_plan_of(c, cfg, [m, n, k], sms, per_sm)
    }

    /// The Q6_K few-row path: x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`. `mq_quant_x`
    /// rounds x per 32 elements into the scratch, `mq6k_*` multiplies it with the raw Q6_K
    /// blocks, `mma_reduce` (a programmatic dependent) adds the k splits' partial sums in order.
    pub(super) fn matmul_mq6k(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        cfg: usize,
    ) -> Result<()> {
        let plan = self.mq6k_plan([m, n, k], cfg);
        let c = &MQ6K[plan.cfg];
        let smem = mq6_smem(c);
        let f = self.function(&MATMUL_MMA, c.name)?;
        self.allow_smem(&f, smem)?;
        let dims = q4k_dims([m, n, k], plan.mp, plan.blocks_per_split)?;
        let tiles = [plan.mp / c.bm, plan.splits];
        let launch = q4k_launch("mq6k", n, 16 * c.wt * c.nw, tiles, 32 * c.nw, smem)?;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(plan.scratch)?;
        let xq = scratch;
        let xs = xq + (plan.mp * k) as u64;
        let part = xs + (plan.mp * (k / 32) * 8) as u64;
        self.launch_q4k_quant_x("mq_quant_x", xp, [xq, xs], dims, (k / 256) * plan.mp)?;
        let y = if plan.splits > 1 { part } else { outp };
        self.launch_mq6k(&f, launch, w, [xq, xs], y, dims)?;
        if plan.splits > 1 {
            self.launch_mma_reduce(part, outp, m * n, plan.splits)?;
        }
        Ok(())
    }

    /// `mq6k_*(body, head, xq, xs, y, n, k, m, mp, blocks per split)`, a programmatic dependent
    /// of the quant_x above (it issues its first W copies, then waits).
    fn launch_mq6k(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 2],
        y: u64,
        dims: [i32; 5],
    ) -> Result<()> {
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let [n, k, m, mp, spz] = dims;
        let args = [
            Arg::U64(&body),
            Arg::U64(&head),
            Arg::U64(&x[0]),
            Arg::U64(&x[1]),
            Arg::U64(&y),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
            Arg::I32(&spz),
        ];
        // SAFETY: w is the n × k Q6_K weight in kiln's layout: n·k/256 bodies of 208 bytes (16-byte
        // aligned: `mq6k_applies`) then n·k/256 f16 d at head; rows read are clamped to n − 1,
        // block columns < k/256 (every split's range non-empty, `mq_plan_of`). xq / xs were
        // written by mq_quant_x just before on this stream (read after griddepcontrol.wait; x
        // rows < mp). y f32: the m·n output, or with gridDim.z = splits > 1 the [splits, m, n]
        // partial sums in the scratch; writes bounded by n and m. Block size within the
        // kernel's launch bound (32·NW) and its dynamic shared memory allowed just before.
        unsafe { self.launch_pdl(f, "launch mq6k", cfg, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mq6k tile fits an H100/H200 block (227 KiB), the two smallest fit sm_86/89
    /// (99 KiB), and the tile choice covers m where it fits.
    #[test]
    fn tiles_fit_and_cover_m() {
        for c in &MQ6K {
            assert!(mq6_smem(c) <= 232_448, "{}", c.name);
        }
        for c in &MQ6K[..2] {
            assert!(mq6_smem(c) <= 101_376, "{}", c.name);
        }
        for m in 1..=64 {
            let i = tile_for(&MQ6K, m, |c| mq6_smem(c) <= 232_448).unwrap();
            assert!(MQ6K[i].bm >= m && (i == 0 || MQ6K[i - 1].bm < m), "m={m}");
            let j = tile_for(&MQ6K, m, |c| mq6_smem(c) <= 101_376).unwrap();
            assert!(mq6_smem(&MQ6K[j]) <= 101_376);
        }
    }
}
