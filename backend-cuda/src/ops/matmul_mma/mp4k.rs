//! The Q4_K int8 tensor-core kernel for 2 ≤ m ≤ 8 with the weight streamed through per-warp
//! bulk-copy rings (kernels/matmul_mp.cuh `mp_quant_x` + `mp4k_*`, issue 3): gemvp's pipeline
//! (one `cp.async.bulk` per W row and stage, an mbarrier per stage, no block-wide barrier) with
//! mq4k's decode, and x in a fragment-ordered layout (one coalesced 16-byte load per lane and
//! sub-block pair). sm_90 only (the copy engine); the tuner measures it against `mq4k` / `mh4k`
//! per shape and dispatch takes it for 2 ≤ m ≤ `Crossover::max_mp_rows`. Two flavours of the
//! copy (tuned: `Crossover::mp_tensor`): one `cp.async.bulk` per W row and stage (`mp4k_*`), or
//! one 2-D tensor copy of the stage (`mpt4k_*`, W described by a CUtensorMap encoded per launch).

use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{DType, Error, OpKind, Result};

use super::super::launch::Arg;
use super::super::matmul_q::{GEMV_NS, GemvSegs};
use super::many::GroupPart;
use super::{Q4kKernel, q4k_dims};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

/// One configuration of `mp4k_w<WT>_t<NT>_d<D>_u<U>`: WT 16-row W tiles per warp (a block's
/// group of W rows), NT n8 tiles (x rows ≤ 8·NT), D ring stages per warp of U block columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MpConfig {
    wt: usize,
    nt: usize,
    d: usize,
    u: usize,
    name: &'static str,
    /// The tensor-copy flavour.
    tname: &'static str,
    /// The grouped forms (`mp4kg_*`, `mpt4kg_*`: several weights of one x, `matmul_mp4k_group`).
    gname: &'static str,
    tgname: &'static str,
}

/// The configuration (kernels/matmul_mma.cu): the lab's fastest over 4096², 14336×4096 and
/// 4096×14336 at m ≤ 8 (backend-cuda/labs/mma, BENCHMARKS.md "cmq").
const MP4K: [MpConfig; 1] = [MpConfig {
    wt: 1,
    nt: 1,
    d: 2,
    u: 2,
    name: "mp4k_w1_t1_d2_u2",
    tname: "mpt4k_w1_t1_d2_u2",
    gname: "mp4kg_w1_t1_d2_u2",
    tgname: "mpt4kg_w1_t1_d2_u2",
}];

/// A CUtensorMap (kernels/matmul_mp.cuh `MpTmap`: 128 opaque bytes, 64-byte aligned), passed
/// by value.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tmap(cudarc::driver::sys::CUtensorMap);

/// The grouped tensor flavour's maps, one per segment (kernels/matmul_mp.cuh `MpTmaps`).
#[repr(C, align(64))]
struct Tmaps([Tmap; GEMV_NS]);

/// One prepared mp4k product (`mp4k_prepare`).
struct Mp4kLaunch {
    f: CudaFunction,
    launch: LaunchConfig,
    /// [n, k, m, mp, 0] (`q4k_dims`).
    dims: [i32; 5],
    tmap: Option<Tmap>,
    scratch: usize,
}

/// Most warps per block (the kernels' launch bound is 512 threads).
const MP_MAX_WARPS: usize = 16;

impl MpConfig {
    /// W rows per block.
    fn rows(&self) -> usize {
        16 * self.wt
    }

    /// Dynamic shared memory at `s` warps per block, as kernels/matmul_mp.cuh `MP_SMEM`: per
    /// warp D stages of R rows × RS bytes and D mbarriers (rounded to 16 bytes), then (s > 1)
    /// the k-split sums, WT·NT·4 f32 per lane and warp.
    fn smem(&self, s: usize) -> usize {
        let rs = self.u * 144 + if self.u.is_multiple_of(4) { 16 } else { 0 };
        let ring = self.d * self.rows() * rs + (8 * self.d).div_ceil(16) * 16;
        s * ring
            + if s > 1 {
                s * self.wt * self.nt * 512
            } else {
                0
            }
    }
}

/// The configuration (index into `MP4K`) for m rows: the x tile covering m (2 ≤ m ≤ 8). Two n8
/// tiles (m ≤ 16) lost to mq4k / mh4k at every shape in the lab and the gemm bench (twice the
/// epilogue and x loads per W byte: BENCHMARKS.md "cmq"), so kiln builds one tile only.
pub(super) fn mp_config(m: usize) -> Option<usize> {
    MP4K.iter().position(|c| (2..=8 * c.nt).contains(&m))
}

/// The launch plan of one mp4k matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MpPlan {
    cfg: usize,
    /// x rows padded to whole n8 tiles.
    mp: usize,
    /// Warps per block (the k split inside a block).
    warps: usize,
    /// Bytes of scratch: xq u8 `[k/256, mp/8, 4, 32, 16]`, xs float2 `[k/256, mp/8, 4, 4, 2, 2]`.
    pub(super) scratch: usize,
}

/// Plan x `[m, k]` × W `[n, k]` on configuration `cfg`, `sms` SMs with `warps_per_sm` resident
/// warps each (the occupancy of one-warp blocks) and `smem_max` bytes of opt-in shared memory:
/// S warps per block share a group of 16·WT W rows, S the largest ≤ min(16, k/256) with
/// groups·S ≤ the resident warps and S·ring within `smem_max` (one wave of warps, each
/// streaming ≥ 1 block column; lab: S = 2 at 14336×4096, 8 at 4096² and 4096×14336).
/// `forced` (not usize::MAX: `force_mma_splits`) sets S instead, within 1..=min(16, k/256) and
/// shared memory.
#[allow(clippy::too_many_arguments)]
pub(super) fn mp_plan(
    m: usize,
    n: usize,
    k: usize,
    cfg: usize,
    sms: usize,
    warps_per_sm: usize,
    smem_max: usize,
    forced: usize,
) -> MpPlan {
    let c = &MP4K[cfg];
    let mp = m.div_ceil(8 * c.nt).max(1) * 8 * c.nt;
    let nb = (k / 256).max(1);
    let groups = n.div_ceil(c.rows()).max(1);
    let slots = sms.max(1) * warps_per_sm.max(1);
    let rule = if forced == usize::MAX {
        slots / groups
    } else {
        forced
    };
    let mut warps = rule.clamp(1, MP_MAX_WARPS.min(nb));
    while warps > 1 && c.smem(warps) > smem_max {
        warps -= 1;
    }
    MpPlan {
        cfg,
        mp,
        warps,
        scratch: mp * k + mp * (k / 32) * 8,
    }
}

impl CudaBackend {
    /// The mp4k configuration for a `dt` matmul at m rows, if it applies here: Q4_K, 2 ≤ m ≤
    /// 16, no generic configuration forced, sm_90 (the copy engine), one warp's ring fits (the
    /// launch also needs the weight 16-byte aligned: `matmul_mma_with` checks).
    pub(super) fn mp4k_config(&self, dt: DType, m: usize) -> Option<usize> {
        let cfg = mp_config(m)?;
        (super::q4k_rows(dt, m)
            && self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9)
            && MP4K[cfg].smem(1) <= self.mma_smem_max())
        .then_some(cfg)
    }

    /// The Q4_K few-row kernel the mma path runs for a `dt` weight `[n, k]` at m rows (None:
    /// the generic kernel), as dispatch chooses it now (forced, tuned or default). For tests.
    pub fn mma_q4k_kernel(&self, dt: DType, n: usize, k: usize, m: usize) -> Option<Q4kKernel> {
        self.q4k_kernel(dt, m, n, k)
    }

    /// Whether `mp4k` can take this matmul of `w` at m rows (`mp4k_config` and a 16-byte
    /// aligned weight); the tuner times it where it can.
    pub(crate) fn mp4k_applies(&self, w: &CudaWeight, m: usize) -> bool {
        self.mp4k_config(w.dtype, m).is_some() && w.body_ptr().is_multiple_of(16)
    }

    /// Resident one-warp blocks per SM of configuration `cfg` (the driver's occupancy: the
    /// register bound), cached; 16 if it cannot say.
    fn mp_warps_per_sm(&self, cfg: usize) -> usize {
        static OCC: [AtomicUsize; 1] = [const { AtomicUsize::new(0) }; 1];
        let cached = OCC[cfg].load(Ordering::Relaxed);
        if cached > 0 {
            return cached;
        }
        let c = &MP4K[cfg];
        let occ = self
            .function(&MATMUL_MMA, c.name)
            .and_then(|f| {
                f.occupancy_max_active_blocks_per_multiprocessor(32, c.smem(1), None)
                    .map_err(self.drv("cuOccupancyMaxActiveBlocksPerMultiprocessor"))
            })
            .map_or(MP_MAX_WARPS, |o| (o as usize).max(1));
        OCC[cfg].store(occ, Ordering::Relaxed);
        occ
    }

    /// The scratch of the mp4k matmul at (m, n, k), 0 where it does not apply.
    pub(super) fn mp4k_scratch(&self, m: usize, n: usize, k: usize) -> usize {
        let sms = self.info.caps.compute_units.max(1) as usize;
        mp_config(m).map_or(0, |cfg| {
            mp_plan(
                m,
                n,
                k,
                cfg,
                sms,
                MP_MAX_WARPS,
                self.mma_smem_max(),
                usize::MAX,
            )
            .scratch
        })
    }

    /// The pipelined Q4_K path (2 ≤ m ≤ 8, `mp4k_config`): x `[m, k]` f32 at `xp`, out
    /// `[m, n]` f32 at `outp`. `mp_quant_x` rounds x per 32 elements into the scratch (as
    /// mq_quant_x rounds it), `mp4k_*` (or with `tensor` `mpt4k_*`) multiplies and stores y.
    pub(super) fn matmul_mp4k(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        cfg: usize,
        tensor: bool,
    ) -> Result<()> {
        let l = self.mp4k_prepare(w, [m, n, k], cfg, tensor)?;
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(l.scratch)?;
        let x = self.mp4k_quant_x(xp, scratch, l.dims)?;
        self.mp4k_launch(&l, w, x, outp)
    }

    /// Several mp4k products of one x (`Backend::matmul_many` at 2 ≤ m ≤ 8): x rounded once,
    /// then one mp4k launch per part — not one mp_quant_x per part (q/k/v: 3 → 1, gate/up: 2
    /// → 1). `parts`: Q4_K `[n_i, k]` weights taking mp4k at this m, kernel Pipe or
    /// PipeTensor (the caller checked, `matmul_many_mma`). No allocation.
    pub(crate) fn matmul_mp4k_many(
        &self,
        xp: u64,
        parts: &[GroupPart<'_>],
        [m, k]: [usize; 2],
        cfg: usize,
    ) -> Result<()> {
        let Some(&(w0, out0, n0, q0)) = parts.first() else {
            return Ok(());
        };
        let first = self.mp4k_prepare(w0, [m, n0, k], cfg, q0 == Q4kKernel::PipeTensor)?;
        // Hold the scratch lock until every kernel using it is enqueued. The x image (all of
        // the scratch) depends on (m, k) only (mp = m padded to 8): the same for every part.
        let (_guard, scratch) = self.matmul_scratch(first.scratch)?;
        let x = self.mp4k_quant_x(xp, scratch, first.dims)?;
        self.mp4k_launch(&first, w0, x, out0)?;
        for &(w, outp, n, q) in &parts[1..] {
            let l = self.mp4k_prepare(w, [m, n, k], cfg, q == Q4kKernel::PipeTensor)?;
            self.mp4k_launch(&l, w, x, outp)?;
        }
        Ok(())
    }

    /// Several mp4k products of one x in ONE grid (`parts` as `matmul_mp4k_many`, at most
    /// `GEMV_NS`, all of one copy flavour): x rounded once, then `mp4kg_*` / `mpt4kg_*`, whose
    /// blockIdx.x numbers the parts' groups of 16 W rows one after the other (the 1024-row
    /// k/v matrices share the grid with q). The warps per block (the in-block k split) are
    /// planned for the whole grid, so a part's sums may be added in another order than its own
    /// matmul adds them (in the same order at a forced split). No allocation.
    pub(crate) fn matmul_mp4k_group(
        &self,
        xp: u64,
        parts: &[GroupPart<'_>],
        [m, k]: [usize; 2],
        cfg: usize,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let Some(&(_, _, _, q0)) = parts.first() else {
            return Ok(());
        };
        let tensor = q0 == Q4kKernel::PipeTensor;
        if parts.len() > GEMV_NS || parts.iter().any(|p| p.3 != q0) {
            return Err(Error::shape(
                op,
                format!("the grouped mp4k launch takes up to {GEMV_NS} parts of one copy flavour"),
            ));
        }
        let c = &MP4K[cfg];
        let mut segs = GemvSegs::default();
        let mut tmaps =
            Tmaps([Tmap(cudarc::driver::sys::CUtensorMap { opaque: [0; 16] }); GEMV_NS]);
        let mut groups = 0;
        for (i, &(w, outp, n, _)) in parts.iter().enumerate() {
            segs.body[i] = w.body_ptr();
            segs.head[i] = w.head_ptr();
            segs.y[i] = outp;
            segs.n[i] = super::super::arg_i32(op, "n", n)?;
            groups += n.div_ceil(c.rows());
            if tensor {
                tmaps.0[i] = self.mp_tmap(w, [n, k], c)?;
            }
        }
        let sms = self.info.caps.compute_units.max(1) as usize;
        let n_all = groups * c.rows();
        let plan = mp_plan(
            m,
            n_all,
            k,
            cfg,
            sms,
            self.mp_warps_per_sm(cfg),
            self.mma_smem_max(),
            super::FORCED_SPLITS.load(Ordering::Relaxed),
        );
        let f = self.function(&MATMUL_MMA, if tensor { c.tgname } else { c.gname })?;
        let warps = plan.warps.min(self.max_warps(&f)?);
        let smem = c.smem(warps);
        self.allow_smem(&f, smem)?;
        let dims = q4k_dims([m, n_all, k], plan.mp, 0)?;
        let launch = LaunchConfig {
            grid_dim: (super::super::arg_i32(op, "groups", groups)? as u32, 1, 1),
            block_dim: ((32 * warps) as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // Hold the scratch lock until every kernel using it is enqueued.
        let (_guard, scratch) = self.matmul_scratch(plan.scratch)?;
        let [xq, xs] = self.mp4k_quant_x(xp, scratch, dims)?;
        let [_, ki, mi, mpi, _] = dims;
        let all = [
            Arg::raw(&segs),
            Arg::U64(&xq),
            Arg::U64(&xs),
            Arg::I32(&ki),
            Arg::I32(&mi),
            Arg::I32(&mpi),
            Arg::raw(&tmaps),
        ];
        // The tensor maps are the tensor flavour's last parameter only.
        let args = if tensor { &all[..] } else { &all[..6] };
        // SAFETY: `mp4kg_*(GemvSegs by value, xq, xs, k, m, mp)` (+ `mpt4kg_*`'s MpTmaps by
        // value, map s encoded for segment s's weight, n_s, k and the box): segment s (n_s > 0)
        // is an n_s × k Q4_K weight body (n_s·k/256 blocks of 144 bytes, 16-byte aligned: the
        // caller's `mp4k_applies`; rows read clamped to n_s − 1); unused segments have n = 0
        // and own no groups. gridDim.x is the sum of the segments' ceil(n_s / 16) groups, so
        // every block maps to one segment and a group within it (gemv_seg). xq / xs were written
        // by mp_quant_x just before on this stream (read after griddepcontrol.wait; mp rows).
        // y_s: the part's f32 output [m, n_s], disjoint from x and the other parts (the
        // caller's `parts_fit`); writes bounded by n_s and m. Block size within the function's
        // limit, its dynamic shared memory allowed just before.
        unsafe { self.launch_pdl(&f, "launch mp4kg", launch, args) }
    }

    /// The most warps per block of function `f` (its register use bounds the block).
    fn max_warps(&self, f: &CudaFunction) -> Result<usize> {
        let max_threads = f
            .get_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
            )
            .map_err(self.drv("cuFuncGetAttribute(max threads per block)"))?;
        Ok((max_threads.max(32) / 32) as usize)
    }

    /// Function, grid, dims and tensor map of one mp4k product (no launch).
    fn mp4k_prepare(
        &self,
        w: &CudaWeight,
        [m, n, k]: [usize; 3],
        cfg: usize,
        tensor: bool,
    ) -> Result<Mp4kLaunch> {
        let sms = self.info.caps.compute_units.max(1) as usize;
        let plan = mp_plan(
            m,
            n,
            k,
            cfg,
            sms,
            self.mp_warps_per_sm(cfg),
            self.mma_smem_max(),
            super::FORCED_SPLITS.load(Ordering::Relaxed),
        );
        let c = &MP4K[plan.cfg];
        let f = self.function(&MATMUL_MMA, if tensor { c.tname } else { c.name })?;
        // The plan's warps come from the bulk flavour's occupancy; the block must also fit the
        // launched function's own register use (the tensor flavour may use more: a 512-thread
        // block of it failed with CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES).
        let warps = plan.warps.min(self.max_warps(&f)?);
        let smem = c.smem(warps);
        self.allow_smem(&f, smem)?;
        let dims = q4k_dims([m, n, k], plan.mp, 0)?;
        let tmap = if tensor {
            Some(self.mp_tmap(w, [n, k], c)?)
        } else {
            None
        };
        let groups = n.div_ceil(c.rows());
        if groups > i32::MAX as usize {
            return Err(Error::shape(
                OpKind::Matmul,
                format!("n = {n} exceeds the mp4k grid"),
            ));
        }
        let launch = LaunchConfig {
            grid_dim: (groups as u32, 1, 1),
            block_dim: ((32 * warps) as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        Ok(Mp4kLaunch {
            f,
            launch,
            dims,
            tmap,
            scratch: plan.scratch,
        })
    }

    /// mp_quant_x of x into `scratch` (held by the caller); returns [xq, xs].
    fn mp4k_quant_x(&self, xp: u64, scratch: u64, dims: [i32; 5]) -> Result<[u64; 2]> {
        let [_, k, _, mp, _] = dims;
        let (k, mp) = (k as usize, mp as usize);
        let xq = scratch;
        let xs = xq + (mp * k) as u64;
        self.launch_q4k_quant_x("mp_quant_x", xp, [xq, xs], dims, (k / 256) * mp)?;
        Ok([xq, xs])
    }

    fn mp4k_launch(&self, l: &Mp4kLaunch, w: &CudaWeight, x: [u64; 2], outp: u64) -> Result<()> {
        let tail: Vec<Arg<'_>> = l.tmap.iter().map(Arg::raw).collect();
        self.launch_q4k_x8(&l.f, "launch mp4k", l.launch, w, x, outp, l.dims, &tail)
    }

    /// W `[n, k]` as a 2-D tensor of u64 `[n][k/256·18]` (dim 0 the row's 8-byte words), box
    /// {18·U, 16·WT} (one stage of a warp), rows past n read as zeros.
    fn mp_tmap(&self, w: &CudaWeight, [n, k]: [usize; 2], c: &MpConfig) -> Result<Tmap> {
        use cudarc::driver::sys;
        let nb = (k / 256) as u64;
        let dims = [nb * 18, n as u64];
        let strides = [nb * 144];
        let bx = [(18 * c.u) as u32, c.rows() as u32];
        let es = [1u32, 1];
        let mut t = Tmap(sys::CUtensorMap { opaque: [0; 16] });
        // SAFETY: cuTensorMapEncodeTiled only writes the 128-byte map and reads the arrays
        // given (rank 2: two dims, one stride, two box dims, two element strides, all live
        // locals); the address is w's body (16-byte aligned: mp4k_applies), the stride a
        // multiple of 16, the box 144·U bytes wide (≤ 256 elements), as the API requires.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut t.0,
                sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT64,
                2,
                w.body_ptr() as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                bx.as_ptr(),
                es.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(self.drv("cuTensorMapEncodeTiled"))?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan: one covering tile per m, S within 1..=16 and k/256, groups·S within the
    /// resident warps (S ≥ 1), the ring within shared memory, the scratch holds the x image.
    #[test]
    fn mp_plan_fills_the_warps_and_fits() {
        assert_eq!(mp_config(1), None);
        assert_eq!(mp_config(9), None);
        for (n, k) in [(14336, 4096), (4096, 14336), (4096, 4096), (200, 512)] {
            for m in [2, 3, 5, 8] {
                let Some(cfg) = mp_config(m) else {
                    panic!("no mp4k tile for m = {m}");
                };
                assert!(8 * MP4K[cfg].nt >= m);
                for smem_max in [232_448, 101_376] {
                    let p = mp_plan(m, n, k, cfg, 132, 16, smem_max, usize::MAX);
                    let groups = n.div_ceil(16);
                    assert!(p.warps >= 1 && p.warps <= 16 && p.warps <= k / 256);
                    assert!(p.warps == 1 || groups * p.warps <= 132 * 16);
                    assert!(MP4K[cfg].smem(p.warps) <= smem_max);
                    assert!(p.mp >= m && p.mp.is_multiple_of(8));
                    assert_eq!(p.scratch, p.mp * k + p.mp * (k / 32) * 8);
                }
            }
        }
        // The lab's best splits on the H200 (132 SMs, 16 warps each).
        assert_eq!(
            mp_plan(8, 14336, 4096, 0, 132, 16, 232_448, usize::MAX).warps,
            2
        );
        assert_eq!(
            mp_plan(8, 4096, 4096, 0, 132, 16, 232_448, usize::MAX).warps,
            8
        );
        assert_eq!(
            mp_plan(8, 4096, 14336, 0, 132, 16, 232_448, usize::MAX).warps,
            8
        );
    }
}
