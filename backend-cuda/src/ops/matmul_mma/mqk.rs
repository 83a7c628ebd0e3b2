//! The raw-block int8 tensor-core kernels of Q4_K, Q5_K, Q6_K and Q8_0 for 1 ≤ m ≤ 64, in place
//! of the generic `mma_<type>_*` on the mma path at those rows (the tuner weighs the mma path
//! against the fused GEMV and the dense path as for every type, and for Q4_K `mq4k` against
//! `mh4k` / `mp4k`; a forced generic configuration, `force_mma_config`, still runs the generic
//! kernel):
//! - `mq4k_*` (kernels/matmul_mma.cu): the 144-byte Q4_K blocks in 160-byte shared rows, one
//!   m16n8k32 per 32-element sub-block;
//! - `mq5k_*` (kernels/matmul_mma.cu): mq4k's kernel with the 176-byte Q5_K block and its fifth
//!   bits merged into the A fragments;
//! - `mq6k_*` (kernels/matmul_mqk.cuh): the 208-byte Q6_K bodies (d from the head region), one
//!   `mma.sync` m16n8k16 per 16-element sub-block;
//! - `mq8_0_*` (kernels/matmul_mqk.cuh): a block column's 256 qs bytes and 8 d per row, the qs
//!   bytes as the A operand of one m16n8k32 per Q8_0 block.
//!
//! All stream the raw blocks of a block column through one cp.async ring (kernels/mma_ring.cuh)
//! with the same tiles, k-split rule and PDL, and read x as `mq_quant_x` rounds it (int8 per 32).

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{DType, Error, OpKind, Result};

use super::super::launch::Arg;
use super::super::matmul_q::{GEMV_NS, GemvSegs};
use super::many::{GroupPart, split_outputs, split_scratch};
use super::{FORCED_CONFIG, FORCED_SPLITS, MMA_CONFIGS, q4k_dims, q4k_launch};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

/// One configuration of a kernel (`<kind>_b<BM>_w<WT>_n<NW>_s<ST>`): BM x rows per block, WT
/// 16-row W tiles per warp, NW warps (BN = 16·WT·NW W rows per block), ST stages in the cp.async
/// ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MqConfig {
    bm: usize,
    wt: usize,
    nw: usize,
    st: usize,
    name: &'static str,
    /// The grouped form (`<kind>g_*`, `matmul_mqk_group`).
    gname: &'static str,
}

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
                gname: concat!($p, "g", "_b8_w1_n8_s3"),
            },
            MqConfig {
                bm: 16,
                wt: 1,
                nw: 8,
                st: 3,
                name: concat!($p, "_b16_w1_n8_s3"),
                gname: concat!($p, "g", "_b16_w1_n8_s3"),
            },
            MqConfig {
                bm: 32,
                wt: 2,
                nw: 4,
                st: 3,
                name: concat!($p, "_b32_w2_n4_s3"),
                gname: concat!($p, "g", "_b32_w2_n4_s3"),
            },
            MqConfig {
                bm: 64,
                wt: 2,
                nw: 8,
                st: $st64,
                name: concat!($p, $n64),
                gname: concat!($p, "g", $n64),
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

const FAMILIES: [Family; 4] = [
    Family {
        dtype: DType::Q4_K,
        tiles: mq_tiles!("mq4k", 3, "_b64_w2_n8_s3"),
        w_stride: 160,
        x_stride: 288,
        head: false,
    },
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
pub(super) const MQK_MAX_ROWS: usize = 64;

/// The family of `dt` (index into `FAMILIES`).
fn family(dt: DType) -> Option<usize> {
    FAMILIES.iter().position(|f| f.dtype == dt)
}

/// The index in `table` (tiles by growing BM) of the smallest tile covering m that `fits`,
/// else of the largest that fits; None if none fits.
fn tile_for(table: &[MqConfig], m: usize, fits: impl Fn(&MqConfig) -> bool) -> Option<usize> {
    table
        .iter()
        .position(|c| c.bm >= m && fits(c))
        .or_else(|| table.iter().rposition(&fits))
}

/// The configuration of family `fi` for m rows on a device with `smem_max` bytes of opt-in
/// shared memory per block: the smallest tile covering m that fits, else the largest tile that
/// fits; None if none fits.
fn tile_of(fi: usize, m: usize, smem_max: usize) -> Option<usize> {
    let f = &FAMILIES[fi];
    tile_for(&f.tiles, m, |c| f.smem(c) <= smem_max)
}

/// The launch plan of one few-row matmul on these kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MqPlan {
    /// Index into the family's tiles.
    cfg: usize,
    /// x rows padded to whole tiles (the rows of the scratch x image).
    mp: usize,
    /// k splits (gridDim.z) and block columns (256 elements) per split.
    splits: usize,
    blocks_per_split: usize,
    /// Bytes of scratch: xq u8 `[k/256, mp, 256]`, xs float2 `[k/256, mp/2, 8, 2]`, then
    /// (splits > 1) the partial sums f32 `[splits, m, n]`.
    pub(super) scratch: usize,
}

/// Plan configuration `c` (index `cfg` of its table) for x `[m, k]` (1 ≤ m ≤ 64), W `[n, k]` on
/// `sms` SMs with `per_sm` resident blocks per SM (the occupancy of the configuration). The k
/// split S (≤ 16, ≥ 2 block columns per split) minimizes whole waves × (block columns per
/// split, plus 1 for the pipeline fill), ceil(tiles·S / slots) · (ceil(nb / S) + 1), ties to the
/// smaller S: one resident wave of blocks when the tiles allow it, each streaming as many block
/// columns as the split leaves (backend-cuda/labs/mma).
fn mq_plan_of(
    c: &MqConfig,
    cfg: usize,
    [m, n, k]: [usize; 3],
    sms: usize,
    per_sm: usize,
) -> MqPlan {
    mq_plan_capped(c, cfg, [m, n, k], sms, per_sm, 16)
}

/// `mq_plan_of` with the rule's k split at most `max_splits` (≥ 1; a forced split is not
/// capped).
fn mq_plan_capped(
    c: &MqConfig,
    cfg: usize,
    [m, n, k]: [usize; 3],
    sms: usize,
    per_sm: usize,
    max_splits: usize,
) -> MqPlan {
    let mp = m.div_ceil(c.bm).max(1) * c.bm;
    let nb = (k / 256).max(1);
    let tiles = n.div_ceil(16 * c.wt * c.nw) * (mp / c.bm);
    let slots = sms.max(1) * per_sm.max(1);
    let splits = match FORCED_SPLITS.load(Ordering::Relaxed) {
        usize::MAX => (1..=(nb / 2).clamp(1, 16).min(max_splits.max(1)))
            .min_by_key(|&s| ((tiles * s).div_ceil(slots) * (nb.div_ceil(s) + 1), s))
            .unwrap_or(1),
        f => f.clamp(1, nb),
    };
    let blocks_per_split = nb.div_ceil(splits);
    let splits = nb.div_ceil(blocks_per_split);
    let x = mp * k + mp * (k / 32) * 8;
    let part = if splits > 1 { splits * m * n * 4 } else { 0 };
    MqPlan {
        cfg,
        mp,
        splits,
        blocks_per_split,
        scratch: x + part,
    }
}

impl MqConfig {
    /// W rows per block.
    fn bn(&self) -> usize {
        16 * self.wt * self.nw
    }
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
    /// The kernel for a `dt` weight at m rows, if one takes it: Q4_K, Q5_K, Q6_K or Q8_0, 1 ≤ m ≤ 64, no
    /// generic configuration forced (`force_mma_config`), rows of whole 256-element columns (Q8_0
    /// rows may end in a partial one: the generic kernel), a tile that fits the device's shared
    /// memory.
    pub(super) fn mqk_config(&self, dt: DType, m: usize, k: usize) -> Option<MqkChoice> {
        let fi = family(dt)?;
        let ok = (1..=MQK_MAX_ROWS).contains(&m)
            && k.is_multiple_of(256)
            && FORCED_CONFIG.load(Ordering::Relaxed) >= MMA_CONFIGS.len();
        let cfg = ok.then(|| tile_of(fi, m, self.mma_smem_max()))??;
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
        static OCC: [[AtomicUsize; 4]; FAMILIES.len()] =
            [const { [const { AtomicUsize::new(0) }; 4] }; FAMILIES.len()];
        let f = &FAMILIES[fi];
        let c = &f.tiles[cfg];
        let per_sm = self.mq_occupancy(c, f.smem(c), &OCC[fi][cfg]);
        let sms = self.info.caps.compute_units.max(1) as usize;
        mq_plan_of(c, cfg, [m, n, k], sms, per_sm)
    }

    /// Resident blocks per SM of kernel configuration `c` with `smem` bytes of dynamic shared
    /// memory, cached in `cell`; 1 if the driver cannot say.
    fn mq_occupancy(&self, c: &MqConfig, smem: usize, cell: &AtomicUsize) -> usize {
        self.mq_occupancy_of(c.name, c, smem, cell)
    }

    /// `mq_occupancy` of kernel `name` (a configuration's single or grouped form).
    fn mq_occupancy_of(
        &self,
        name: &'static str,
        c: &MqConfig,
        smem: usize,
        cell: &AtomicUsize,
    ) -> usize {
        let cached = cell.load(Ordering::Relaxed);
        if cached > 0 {
            return cached;
        }
        let occ = self
            .function(&MATMUL_MMA, name)
            .and_then(|f| {
                self.allow_smem(&f, smem)?;
                f.occupancy_max_active_blocks_per_multiprocessor((32 * c.nw) as u32, smem, None)
                    .map_err(self.drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))
            })
            .map_or(1, |o| (o as usize).max(1));
        cell.store(occ, Ordering::Relaxed);
        occ
    }

    /// The few-row path of these types: x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`.
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

    /// The `Mq` route of `matmul_many_mma` (many.rs): `parts` (each taking kernel `choice` at
    /// x `[m, k]` on its own; the caller checked) in ONE `mq_quant_x` and ONE grouped grid
    /// `<kind>g_*`, the parts' W tiles one after the other; the split is capped so the scratch
    /// stays within the largest part's own.
    pub(super) fn matmul_mqk_group(
        &self,
        xp: u64,
        parts: &[GroupPart<'_>],
        [m, k]: [usize; 2],
        choice: MqkChoice,
    ) -> Result<()> {
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
        let mut segs = GemvSegs::default();
        let (mut tiles, mut budget) = (0, 0);
        for (i, &(w, outp, n, _)) in parts.iter().enumerate() {
            budget = budget.max(self.mqk_plan([m, n, k], choice).scratch);
            segs.body[i] = w.body_ptr();
            segs.head[i] = w.head_ptr();
            segs.y[i] = outp;
            segs.n[i] = super::arg_i32(op, "n", n)?;
            tiles += n.div_ceil(FAMILIES[choice.0].tiles[choice.1].bn());
        }
        self.matmul_mqk_many(xp, &mut segs, [m, k], choice, tiles, budget)
    }

    /// The grouped launch of `matmul_mqk_group`: `segs` holds the parts' weights, outputs and
    /// rows (its y become the partial-sum regions with a k split), `tiles` their W tiles in all,
    /// `budget` the scratch bytes the split may use.
    fn matmul_mqk_many(
        &self,
        xp: u64,
        segs: &mut GemvSegs,
        [m, k]: [usize; 2],
        (fi, cfg): MqkChoice,
        tiles: usize,
        budget: usize,
    ) -> Result<()> {
        static OCC: [[AtomicUsize; 4]; FAMILIES.len()] =
            [const { [const { AtomicUsize::new(0) }; 4] }; FAMILIES.len()];
        let f = &FAMILIES[fi];
        let c = &f.tiles[cfg];
        let smem = f.smem(c);
        let sms = self.info.caps.compute_units.max(1) as usize;
        let per_sm = self.mq_occupancy_of(c.gname, c, smem, &OCC[fi][cfg]);
        let rows: usize = segs.n.iter().map(|&n| n.max(0) as usize).sum();
        // The whole grid's plan (n = the tiles' rows), its split capped so that the x image
        // and the partial sums fit the budget.
        let n_all = tiles * c.bn();
        let mp = m.div_ceil(c.bm).max(1) * c.bm;
        let x_bytes = mp * k + mp * (k / 32) * 8;
        let cap = budget.saturating_sub(x_bytes) / (m * rows * 4).max(1);
        let plan = mq_plan_capped(c, cfg, [m, n_all, k], sms, per_sm, cap);
        let scratch_bytes = x_bytes + split_scratch(plan.splits, m, rows);
        let func = self.function(&MATMUL_MMA, c.gname)?;
        self.allow_smem(&func, smem)?;
        let dims = q4k_dims([m, n_all, k], plan.mp, plan.blocks_per_split)?;
        let launch = q4k_launch(
            c.gname,
            n_all,
            c.bn(),
            [plan.mp / c.bm, plan.splits],
            32 * c.nw,
            smem,
        )?;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(scratch_bytes)?;
        let xq = scratch;
        let xs = xq + (plan.mp * k) as u64;
        let outs = split_outputs(segs, xs + (plan.mp * (k / 32) * 8) as u64, plan.splits, m);
        self.launch_q4k_quant_x("mq_quant_x", xp, [xq, xs], dims, (k / 256) * plan.mp)?;
        let [_, ki, mi, mpi, spz] = dims;
        let args = [
            Arg::raw(&*segs),
            Arg::U64(&xq),
            Arg::U64(&xs),
            Arg::I32(&ki),
            Arg::I32(&mi),
            Arg::I32(&mpi),
            Arg::I32(&spz),
        ];
        // SAFETY: `<kind>g_*(GemvSegs by value, xq, xs, k, m, mp, spz)`: segment s (n_s > 0)
        // is an n_s × k weight of the kernel's type in kiln's layout with its body (and, for
        // Q6_K / Q8_0, head) pointer as in `launch_mqk`'s note, 16-byte aligned
        // (`mqk_applies`, checked per part); unused segments have n = 0 and own no tiles. The
        // grid's gridDim.y is the sum of the segments' ceil(n_s / BN) tiles, so every block
        // maps to one segment and a tile within it (gemv_seg); rows read are clamped to
        // n_s − 1, block columns < k/256 (every split's range non-empty, `mq_plan_capped`). xq /
        // xs were written by mq_quant_x just before on this stream (mp rows). y_s: the part's
        // f32 output [m, n_s] (disjoint from x and the other parts, `parts_fit`), or with
        // gridDim.z = splits > 1 its [splits, m, n_s] region of the scratch (sized above);
        // writes bounded by n_s and m. Block size within the launch bound (32·NW), dynamic
        // shared memory allowed just before.
        unsafe { self.launch_pdl(&func, "launch mq*g", launch, &args)? };
        self.reduce_split(segs, &outs, m, plan.splits)
    }

    /// `mq4k_*` / `mq5k_*(body, xq, xs, y, n, k, m, mp, blocks per split)` or `mq6k_*` /
    /// `mq8_0_*(body, head, xq, …)` (`head`), a programmatic dependent of the quant_x above (it
    /// issues its first W copies, then waits).
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
        // (Q4_K / Q5_K: the whole 144 / 176-byte block; Q6_K: 208 bytes, then n·k/256 f16 d at head; Q8_0:
        // n·k/32 runs of 32 qs bytes, then n·k/32 f16 d at head, 16-byte aligned as k is a
        // multiple of 256; head passed exactly when the kernel takes it), the body 16-byte
        // aligned (`mqk_applies`); rows read are
        // clamped to n − 1, block columns < k/256 (every split's range non-empty, `mq_plan_of`).
        // xq / xs were written by mq_quant_x just before on this stream (read after
        // griddepcontrol.wait; x rows < mp). y f32: the m·n output, or with gridDim.z = splits
        // > 1 the [splits, m, n] partial sums in the scratch; writes bounded by n and m. Block
        // size within the kernel's launch bound (32·NW), its dynamic shared memory allowed just
        // before.
        unsafe { self.launch_pdl(f, "launch mq4k/mq5k/mq6k/mq8_0", cfg, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile fits an H100/H200 block (227 KiB); on a 99 KiB device (sm_86/89) the choice
    /// is a tile that fits (Q4_K, Q5_K, Q6_K: the smallest does) or none (the generic kernel);
    /// the choice covers m where it fits.
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

    /// The plan of every family: the tile covers m where the H200's shared memory allows, fits
    /// smaller devices, splits cover k with no empty split, and the split costs no more than
    /// none.
    #[test]
    fn plan_covers_k_and_fits_the_device() {
        for (fi, f) in FAMILIES.iter().enumerate() {
            for (n, k) in [(14336, 4096), (4096, 14336), (4096, 4096), (200, 4864)] {
                for m in [1, 2, 3, 8, 9, 16, 24, 33, 64] {
                    for (per_sm, smem) in [(1, 232_448), (2, 232_448), (3, 166_912), (4, 101_376)] {
                        let Some(cfg) = tile_of(fi, m, smem) else {
                            assert!(f.dtype == DType::Q8_0 && smem < 232_448, "{}", f.dtype);
                            continue;
                        };
                        let c = &f.tiles[cfg];
                        let p = mq_plan_of(c, cfg, [m, n, k], 132, per_sm);
                        assert!(f.smem(c) <= smem);
                        assert!(p.mp.is_multiple_of(c.bm) && p.mp >= m && p.mp < m + c.bm);
                        assert!(
                            c.bm >= m || smem < 232_448,
                            "the H200 takes the covering tile"
                        );
                        let nb = k / 256;
                        assert!(p.splits * p.blocks_per_split >= nb, "{n}x{k} m={m}");
                        assert!((p.splits - 1) * p.blocks_per_split < nb, "no empty split");
                        assert!(p.splits <= 16 && (p.splits == 1 || p.blocks_per_split >= 2));
                        // The rule's cost is no worse than not splitting.
                        let tiles = n.div_ceil(16 * c.wt * c.nw) * (p.mp / c.bm);
                        let slots = 132 * per_sm;
                        let cost = |s: usize| (tiles * s).div_ceil(slots) * (nb.div_ceil(s) + 1);
                        assert!(cost(p.splits) <= cost(1), "{n}x{k} m={m}");
                        let part = if p.splits > 1 {
                            p.splits * m * n * 4
                        } else {
                            0
                        };
                        assert_eq!(p.scratch, p.mp * k * 5 / 4 + part);
                    }
                }
            }
        }
    }
}
