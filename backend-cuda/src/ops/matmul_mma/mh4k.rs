//! The Q4_K f16 tensor-core kernel for 1 ≤ m ≤ 64 (kernels/matmul_mma.cu `mh_quant_x` +
//! `mh4k_*`, issue 6): the sub-block scale folded into the exact f16 weight operand sc·q, x in
//! f16 with a power-of-two scale per (row, 256 elements), d and dmin applied once per 256 k, so
//! no per-output work per sub-block (the int8 `mq4k` spends 3 FFMA per output per 32 k). The
//! tuner measures both kernels per shape and dispatch takes the faster (`Crossover::min_mh_rows`).

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{Error, OpKind, Result};

use super::super::arg_i32;
use super::super::launch::Arg;
use super::super::matmul_q::{GEMV_NS, GemvSegs};
use super::many::{GroupPart, split_outputs, split_scratch};
use super::{Q4kKernel, q4k_dims, q4k_launch};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MH;

/// One configuration of `mh4k_b<BM>_w<WT>_n<NW>_x<WM>_s<ST>_m<MB>`: BM x rows per block, NW
/// warps (WM of them along m), WT 16-row W tiles per warp, so BN = 16·WT·NW/WM W rows per block;
/// ST stages in the cp.async ring (MB is the kernel's min-blocks launch bound, in the name only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MhConfig {
    pub(super) bm: usize,
    wt: usize,
    nw: usize,
    wm: usize,
    st: usize,
    pub(super) name: &'static str,
    /// The grouped form (`mh4kg_*`, several weights of one x: `matmul_mh4k_group`).
    gname: &'static str,
}

/// The configurations by x-row tile BM = 16, 32, 64 (kernels/matmul_mma.cu, same order): each
/// the lab's fastest mean over 4096², 14336×4096 and 4096×14336 at its m range
/// (backend-cuda/labs/mma, BENCHMARKS.md "mma3"). All fit 99 KiB of shared memory (sm_86/89).
pub(super) const MH4K: [MhConfig; 3] = [
    MhConfig {
        bm: 16,
        wt: 2,
        nw: 4,
        wm: 1,
        st: 2,
        name: "mh4k_b16_w2_n4_x1_s2_m1",
        gname: "mh4kg_b16_w2_n4_x1_s2_m1",
    },
    MhConfig {
        bm: 32,
        wt: 2,
        nw: 4,
        wm: 1,
        st: 2,
        name: "mh4k_b32_w2_n4_x1_s2_m2",
        gname: "mh4kg_b32_w2_n4_x1_s2_m2",
    },
    MhConfig {
        bm: 64,
        wt: 1,
        nw: 4,
        wm: 1,
        st: 2,
        name: "mh4k_b64_w1_n4_x1_s2_m2",
        gname: "mh4kg_b64_w1_n4_x1_s2_m2",
    },
];

impl MhConfig {
    /// W rows per block.
    fn bn(&self) -> usize {
        16 * self.wt * self.nw / self.wm
    }

    /// Dynamic shared memory, as kernels/matmul_mma.cu `mh_smem_bytes`: per stage W [BN][160 B],
    /// x̂ [BM][512 B], sub-block sums [BM][32 B], scales [BM] f32.
    pub(super) fn smem(&self) -> usize {
        self.st * (self.bn() * 160 + self.bm * (512 + 32 + 4))
    }
}

/// The configuration (index into `MH4K`) for m rows and `smem_max` bytes of opt-in shared
/// memory: the smallest tile covering m that fits, else the largest that fits.
pub(super) fn mh_config(m: usize, smem_max: usize) -> Option<usize> {
    let fits = |c: &MhConfig| c.smem() <= smem_max;
    MH4K.iter()
        .position(|c| c.bm >= m && fits(c))
        .or_else(|| MH4K.iter().rposition(fits))
}

/// The launch plan of one f16 Q4_K matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MhPlan {
    cfg: usize,
    /// x rows padded to whole tiles.
    mp: usize,
    /// k splits (gridDim.z) and block columns (256 k) per split.
    splits: usize,
    blocks_per_split: usize,
    /// Bytes of scratch: x̂ u16 `[k/256, mp, 256]`, sums u32 `[k/256, mp, 8]`, scales f32
    /// `[k/256, mp]`, then (splits > 1) the partial sums f32 `[splits, m, n]`.
    pub(super) scratch: usize,
}

/// Plan x `[m, k]` × W `[n, k]` on configuration `cfg`, `sms` SMs with `per_sm` resident blocks
/// each: the k split minimizes whole waves × (block columns per split + 1), as mqk.rs's
/// `mq_plan_of`.
pub(super) fn mh_plan(
    m: usize,
    n: usize,
    k: usize,
    cfg: usize,
    sms: usize,
    per_sm: usize,
    forced_splits: usize,
) -> MhPlan {
    mh_plan_capped([m, n, k], cfg, sms, per_sm, forced_splits, 16)
}

/// `mh_plan` with the rule's k split at most `max_splits` (≥ 1; a forced split is not capped).
fn mh_plan_capped(
    [m, n, k]: [usize; 3],
    cfg: usize,
    sms: usize,
    per_sm: usize,
    forced_splits: usize,
    max_splits: usize,
) -> MhPlan {
    let c = &MH4K[cfg];
    let mp = m.div_ceil(c.bm).max(1) * c.bm;
    let nb = (k / 256).max(1);
    let tiles = n.div_ceil(c.bn()) * (mp / c.bm);
    let slots = sms.max(1) * per_sm.max(1);
    let splits = match forced_splits {
        usize::MAX => (1..=(nb / 2).clamp(1, 16).min(max_splits.max(1)))
            .min_by_key(|&s| ((tiles * s).div_ceil(slots) * (nb.div_ceil(s) + 1), s))
            .unwrap_or(1),
        f => f.clamp(1, nb),
    };
    let blocks_per_split = nb.div_ceil(splits);
    let splits = nb.div_ceil(blocks_per_split);
    let x = mp * k * 2 + mp * (k / 256) * 36;
    let part = if splits > 1 { splits * m * n * 4 } else { 0 };
    MhPlan {
        cfg,
        mp,
        splits,
        blocks_per_split,
        scratch: x + part,
    }
}

impl CudaBackend {
    /// Resident blocks per SM of f16 configuration `cfg` (the driver's occupancy, cached).
    pub(super) fn mh_per_sm(&self, cfg: usize) -> usize {
        static OCC: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
        self.mh_occupancy(MH4K[cfg].name, cfg, &OCC[cfg])
    }

    /// Resident blocks per SM of function `name` at configuration `cfg`'s block and shared
    /// memory, cached in `cell`; 1 if the driver cannot say.
    fn mh_occupancy(&self, name: &'static str, cfg: usize, cell: &AtomicUsize) -> usize {
        let cached = cell.load(Ordering::Relaxed);
        if cached > 0 {
            return cached;
        }
        let c = &MH4K[cfg];
        let occ = self
            .function(&MATMUL_MH, name)
            .and_then(|f| {
                self.allow_smem(&f, c.smem())?;
                f.occupancy_max_active_blocks_per_multiprocessor((32 * c.nw) as u32, c.smem(), None)
                    .map_err(self.drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))
            })
            .map_or(1, |o| (o as usize).max(1));
        cell.store(occ, Ordering::Relaxed);
        occ
    }

    /// The f16 Q4_K path (1 ≤ m ≤ 64): x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`.
    /// `mh_quant_x` rounds x into the scratch, `mh4k_*` multiplies, `mma_reduce` (a programmatic
    /// dependent) adds the k splits' partial sums in order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_mh4k(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        cfg: usize,
        forced_splits: usize,
    ) -> Result<()> {
        self.matmul_mh4k_many(
            xp,
            &[(w, outp, n, Q4kKernel::F16)],
            [m, k],
            cfg,
            forced_splits,
        )
    }

    /// Several f16 Q4_K products of one x (`parts`: weight, out pointer, n; the kernel field is
    /// F16): x rounded once, then each part's own mh4k (+ mma_reduce) launch, as its single
    /// matmul runs it. The x image depends on (m, k, configuration) only; the partial sums
    /// follow it in the scratch, reused part after part (stream order). No allocation.
    pub(crate) fn matmul_mh4k_many(
        &self,
        xp: u64,
        parts: &[GroupPart<'_>],
        [m, k]: [usize; 2],
        cfg: usize,
        forced_splits: usize,
    ) -> Result<()> {
        let sms = self.info.caps.compute_units.max(1) as usize;
        let per_sm = self.mh_per_sm(cfg);
        let plan = |n| mh_plan(m, n, k, cfg, sms, per_sm, forced_splits);
        let Some(&(_, _, n0, _)) = parts.first() else {
            return Ok(());
        };
        let first = plan(n0);
        let c = &MH4K[first.cfg];
        let f = self.function(&MATMUL_MH, c.name)?;
        self.allow_smem(&f, c.smem())?;
        let scratch_bytes = parts.iter().map(|p| plan(p.2).scratch).max().unwrap_or(0);
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(scratch_bytes)?;
        let nb = k / 256;
        let xh = scratch;
        let xx = xh + (first.mp * k * 2) as u64;
        let xsx = xx + (first.mp * nb * 32) as u64;
        let part = xsx + (first.mp * nb * 4) as u64;
        let dims0 = q4k_dims([m, n0, k], first.mp, first.blocks_per_split)?;
        self.launch_mh_quant_x(xp, [xh, xx, xsx], dims0, nb * first.mp)?;
        for &(w, outp, n, _) in parts {
            let plan = plan(n);
            let dims = q4k_dims([m, n, k], plan.mp, plan.blocks_per_split)?;
            let tiles = [plan.mp / c.bm, plan.splits];
            let launch = q4k_launch("mh4k", n, c.bn(), tiles, 32 * c.nw, c.smem())?;
            let y = if plan.splits > 1 { part } else { outp };
            self.launch_mh4k(&f, launch, w, [xh, xx, xsx], y, dims)?;
            if plan.splits > 1 {
                self.launch_mma_reduce(part, outp, m * n, plan.splits)?;
            }
        }
        Ok(())
    }

    /// Several f16 Q4_K products of one x in ONE grid (`parts` as `matmul_mh4k_many`, at most
    /// `GEMV_NS`): x rounded once, then `mh4kg_*`, whose gridDim.y numbers the parts' W tiles
    /// one after the other (the 1024-row k/v matrices share the grid with q), and with a k split
    /// one `mma_reduce` per part. The split is chosen for the whole grid, capped so that the x
    /// image and the partial sums stay within the largest part's own scratch, so a part's split
    /// sums may be added in another order than its own matmul adds them (in the same order at a
    /// forced split). No allocation beyond the matmul scratch.
    pub(crate) fn matmul_mh4k_group(
        &self,
        xp: u64,
        parts: &[GroupPart<'_>],
        [m, k]: [usize; 2],
        cfg: usize,
        forced_splits: usize,
    ) -> Result<()> {
        static OCC: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
        let op = OpKind::Matmul;
        if parts.len() > GEMV_NS {
            return Err(Error::shape(
                op,
                format!(
                    "{} parts exceed the grouped launch's {GEMV_NS}",
                    parts.len()
                ),
            ));
        }
        let c = &MH4K[cfg];
        let sms = self.info.caps.compute_units.max(1) as usize;
        let own_per_sm = self.mh_per_sm(cfg);
        let mut segs = GemvSegs::default();
        let (mut tiles, mut rows, mut budget) = (0, 0, 0);
        for (i, &(w, outp, n, _)) in parts.iter().enumerate() {
            segs.body[i] = w.body_ptr();
            segs.head[i] = w.head_ptr();
            segs.y[i] = outp;
            segs.n[i] = arg_i32(op, "n", n)?;
            tiles += n.div_ceil(c.bn());
            rows += n;
            let own = mh_plan(m, n, k, cfg, sms, own_per_sm, forced_splits);
            budget = budget.max(own.scratch);
        }
        let per_sm = self.mh_occupancy(c.gname, cfg, &OCC[cfg]);
        let n_all = tiles * c.bn();
        let (mp, nb) = (m.div_ceil(c.bm).max(1) * c.bm, k / 256);
        let x_bytes = mp * k * 2 + mp * nb * 36;
        let cap = budget.saturating_sub(x_bytes) / (m * rows * 4).max(1);
        let plan = mh_plan_capped([m, n_all, k], cfg, sms, per_sm, forced_splits, cap);
        let scratch_bytes = x_bytes + split_scratch(plan.splits, m, rows);
        let f = self.function(&MATMUL_MH, c.gname)?;
        self.allow_smem(&f, c.smem())?;
        let dims = q4k_dims([m, n_all, k], plan.mp, plan.blocks_per_split)?;
        let tiles2 = [plan.mp / c.bm, plan.splits];
        let launch = q4k_launch(c.gname, n_all, c.bn(), tiles2, 32 * c.nw, c.smem())?;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(scratch_bytes)?;
        let xh = scratch;
        let xx = xh + (plan.mp * k * 2) as u64;
        let xsx = xx + (plan.mp * nb * 32) as u64;
        let outs = split_outputs(&mut segs, xsx + (plan.mp * nb * 4) as u64, plan.splits, m);
        self.launch_mh_quant_x(xp, [xh, xx, xsx], dims, nb * plan.mp)?;
        let [_, ki, mi, mpi, spz] = dims;
        let args = [
            Arg::raw(&segs),
            Arg::U64(&xh),
            Arg::U64(&xx),
            Arg::U64(&xsx),
            Arg::I32(&ki),
            Arg::I32(&mi),
            Arg::I32(&mpi),
            Arg::I32(&spz),
        ];
        // SAFETY: `mh4kg_*(GemvSegs by value, xh, xx, xsx, k, m, mp, blocks per split)`:
        // segment s (n_s > 0) is an n_s × k Q4_K weight body (n_s·k/256 blocks of 144 bytes,
        // rows clamped to n_s − 1); unused segments have n = 0 and own no tiles. gridDim.y is
        // the sum of the segments' ceil(n_s / BN) tiles, so every block maps to one segment and
        // a tile within it (gemv_seg). xh u16 [k/256, mp, 256], xx u32 [k/256, mp, 8], xsx f32
        // [k/256, mp] were written by mh_quant_x just before on this stream (read after
        // griddepcontrol.wait; x rows < mp = gridDim.x·BM). y_s: the part's f32 output [m, n_s]
        // (disjoint from x and the other parts: the caller's `parts_fit`), or with gridDim.z =
        // splits > 1 its [splits, m, n_s] region of the scratch (sized above; no empty split);
        // writes bounded by n_s and m. Dynamic shared memory (MhConfig::smem) allowed above.
        unsafe { self.launch_pdl(&f, "launch mh4kg", launch, &args)? };
        self.reduce_split(&segs, &outs, m, plan.splits)
    }

    /// `mh_quant_x(x, xh, xx, xsx, k, m, mp)`: one warp per (block column, padded x row),
    /// `warps` of them, 8 per 256-thread block, grid-stride.
    fn launch_mh_quant_x(&self, x: u64, out: [u64; 3], dims: [i32; 5], warps: usize) -> Result<()> {
        let f = self.function(&MATMUL_MH, "mh_quant_x")?;
        let cfg = super::warp_items_launch(warps, self.info.caps.compute_units.max(1) as usize);
        let [_, k, m, mp, _] = dims;
        let args = [
            Arg::U64(&x),
            Arg::U64(&out[0]),
            Arg::U64(&out[1]),
            Arg::U64(&out[2]),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
        ];
        // SAFETY: mh_quant_x(x, xh, xx, xsx, k, m, mp): x holds m·k f32 (k a multiple of 256);
        // xh is scratch of mp·k u16, xx of mp·(k/256)·8 u32, xsx of mp·(k/256) f32 (the plan's
        // sizes, mp ≥ m). A programmatic dependent: it waits (griddepcontrol.wait) before reading
        // x or writing the scratch.
        unsafe { self.launch_pdl(&f, "launch mh_quant_x", cfg, &args) }
    }

    /// `mh4k_*(w, xh, xx, xsx, y, n, k, m, mp, blocks per split)`, a programmatic dependent of
    /// mh_quant_x (it issues its first W copies, then waits).
    fn launch_mh4k(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 3],
        y: u64,
        dims: [i32; 5],
    ) -> Result<()> {
        let body = w.body_ptr();
        let [n, k, m, mp, spz] = dims;
        let args = [
            Arg::U64(&body),
            Arg::U64(&x[0]),
            Arg::U64(&x[1]),
            Arg::U64(&x[2]),
            Arg::U64(&y),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
            Arg::I32(&spz),
        ];
        // SAFETY: w's body is the n × k Q4_K weight (n·k/256 blocks of 144 bytes, rows clamped
        // to n − 1); xh u16 [k/256, mp, 256], xx u32 [k/256, mp, 8], xsx f32 [k/256, mp]
        // written by mh_quant_x just before on this stream (read after griddepcontrol.wait; x
        // rows read < mp = gridDim.x·BM); y f32: the m·n output or the [splits, m, n] partial
        // sums (splits = gridDim.z, no empty split); writes bounded by n and m. Dynamic shared
        // memory (MhConfig::smem) was allowed just before.
        unsafe { self.launch_pdl(f, "launch mh4k", cfg, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f16 plan: the covering tile on the H200, a fitting tile on smaller devices, splits
    /// cover k with no empty split, and the scratch holds x̂, the sums, the scales and partials.
    #[test]
    fn mh_plan_covers_k_and_fits_the_device() {
        for (n, k) in [(14336, 4096), (4096, 14336), (4096, 4096), (200, 4864)] {
            for m in [1, 2, 8, 16, 17, 24, 33, 64] {
                for (per_sm, smem) in [(1, 232_448), (2, 232_448), (2, 101_376)] {
                    let Some(cfg) = mh_config(m, smem) else {
                        panic!("no f16 Q4_K tile fits {smem} bytes");
                    };
                    let p = mh_plan(m, n, k, cfg, 132, per_sm, usize::MAX);
                    let c = &MH4K[p.cfg];
                    assert!(c.smem() <= smem);
                    assert!(c.bm >= m.min(64), "the covering tile fits everywhere");
                    assert!(p.mp.is_multiple_of(c.bm) && p.mp >= m && p.mp < m + c.bm);
                    let nb = k / 256;
                    assert!(p.splits * p.blocks_per_split >= nb, "{n}x{k} m={m}");
                    assert!((p.splits - 1) * p.blocks_per_split < nb, "no empty split");
                    assert!(p.splits <= 16 && (p.splits == 1 || p.blocks_per_split >= 2));
                    let part = if p.splits > 1 {
                        p.splits * m * n * 4
                    } else {
                        0
                    };
                    assert_eq!(p.scratch, p.mp * k * 2 + p.mp * nb * 36 + part);
                }
            }
        }
        // A forced split is clamped to the block columns.
        let p = mh_plan(64, 4096, 4096, 2, 132, 1, 100);
        assert_eq!((p.splits, p.blocks_per_split), (16, 1));
    }
}
