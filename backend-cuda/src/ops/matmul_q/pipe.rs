//! The pipelined m = 1 GEMV (`quant_x_q4_k2` + `gemvp_<type>`, kernels/gemv_pipe.cuh) of Q4_K,
//! Q3_K, Q5_K, Q6_K, IQ4_XS and the 32-element Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, and its forms for
//! 2 and 4 x rows (`gemvp_<type>_m2`, `_m4`: one decode of each W step for all rows).
//!
//! Every warp owns a ring of shared-memory stages that the bulk copy engine fills (one
//! `cp.async.bulk` per W row and step, completing on an mbarrier) one stage ahead of the one it
//! decodes, so the bytes in flight no longer depend on registers; and the weights are decoded 64
//! per lane (a whole pair of 32-element sub-blocks: the scale unpack and the block header paid
//! once per 64 weights). Measured on an H200 (backend-cuda/labs/gemv, BENCHMARKS.md "cgemv"):
//! back to back Q4_K 4096² 6.62 → 4.98 µs, 14336×4096 15.90 → 11.10, 4096×14336 16.37 → 12.25
//! (quant_x + gemv8 on the model grid → this path); in a dependent chain 6.79 → 6.44, 16.59 →
//! 13.19, 13.94 → 13.28. The other types take the same pipeline with their own 64-weight decode;
//! each made the Llama-3-8B-shaped batch-1 decode step faster (H200, BENCHMARKS.md stop 23: Q5_K
//! 2.95 → 2.29 ms, Q6_K 2.65 → 2.52, Q3_K 2.40 → 2.18, IQ4_XS 3.11 → 2.72, IQ4_NL 3.07 → 2.65,
//! Q4_0 2.11 → 1.97, Q5_0 2.54 → 2.38, Q5_1 2.49 → 2.38, Q4_1 2.13 → 2.11). Two types were
//! slower through it and stay on gemv8: Q8_0 (8 blocks as one 272-byte unit: one 139 KB block
//! per SM; 2.76 → 3.12 ms) and Q2_K (its GEMV faster back to back, the step 1.887 → 1.914 ms).
//!
//! At 2 ≤ m ≤ 4 the fused path takes `_m2` (m = 2) or `_m4` (m = 3, 4; rows past m read and not
//! stored) up to `KILN_GEMV_PIPE_ROWS` rows (default 4), and the crossover tuner decides per
//! shape between it and the mma kernels. On an H200 `_m2` won at every Q4_K and Q6_K shape of
//! Llama-3-8B (back to back Q4_K 14336×4096 15.85 → 14.14 µs, 4096×14336 17.40 → 14.32; batch-2
//! decode step Q4_K 2.85 → 2.37 ms, Q6_K 3.47 → 2.91); `_m4` lost to mma for Q4_K (the tuner
//! keeps mma) and made the Q6_K batch-3/4 step 4.06 / 4.09 → 3.66 / 3.71 ms (BENCHMARKS.md
//! stop 25).
//!
//! It applies on sm_90+ (the copy engine), for rows of a whole number of 8-block steps (k a
//! multiple of 2048) with a 16-byte aligned weight, on devices outside all-reduce groups
//! (`GROUPED`); `KILN_GEMV_PIPE=0` turns it off (the two-kernel path quant_x + gemv8 then runs,
//! as before).

use cudarc::driver::sys::CUfunction_attribute_enum as FuncAttr;
use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::{DType, OpKind, Result};

use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_Q;

use super::gemv1::{WAVE_S, wave_grid};

/// Threads per block (kernels/gemv_pipe.cuh `GEMVP_THREADS`).
const PIPE_THREADS: u32 = 256;
/// W rows per group (`GEMVP_R`).
const PIPE_R: usize = 4;
/// Shared-memory stages per warp (`GEMVP_D`).
const PIPE_D: usize = 2;
/// Most resident blocks per SM the grid asks for (the lab's best: 2, which leaves L1 room for x).
const PIPE_BLOCKS_PER_SM: usize = 2;
/// Blocks per step and row (32 lanes × 64 weights = 8 blocks of 256).
const PIPE_BPS: usize = 8;

/// A weight type the pipelined kernel takes (kernels/gemv_pipe.cuh `GEMVP_TYPE`) and its kernels
/// for one weight, for weight segments and for a gate/up pair with the GLU, one per x-row count
/// M of [`PIPE_M`] (`gemvp_<type>`, `_m2`, `_m4`: one decode of W serves all M rows).
#[derive(Debug)]
pub(crate) struct PipeType {
    pub(crate) dtype: DType,
    pub(crate) one: [&'static str; 3],
    pub(crate) segs: [&'static str; 3],
    pub(crate) glu: [&'static str; 3],
}

/// The x rows per group of the pipelined kernels (their `M`).
const PIPE_M: [usize; 3] = [1, 2, 4];

/// Index into [`PipeType`]'s kernels for `m` x rows: the smallest M ≥ m, if 1 ≤ m ≤ the most
/// rows allowed (`KILN_GEMV_PIPE_ROWS`, or when `forced` the largest M).
pub(crate) fn pipe_m_index(m: usize, forced: bool) -> Option<usize> {
    let max = if forced {
        PIPE_M[PIPE_M.len() - 1]
    } else {
        pipe_max_rows()
    };
    PIPE_M
        .iter()
        .position(|&mm| mm >= m)
        .filter(|_| m >= 1 && m <= max)
}

/// Most x rows the automatic dispatch gives the pipelined kernels: `KILN_GEMV_PIPE_ROWS` (1, 2
/// or 4), default 4. Above it the fused path runs gemv8; at every rung the tuner weighs the
/// fused path against the mma kernels (on an H200 it keeps mma for Q4_K at m = 4 and takes the
/// M = 4 kernel for Q6_K: batch-3/4 decode step 4.06 / 4.09 → 3.66 / 3.71 ms, BENCHMARKS.md
/// stop 25).
pub fn pipe_max_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("KILN_GEMV_PIPE_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|r| PIPE_M.contains(r))
            .unwrap_or(4)
    })
}

impl PipeType {
    /// Bytes of one ring "block" of 256 weights (body + head): a 256-element block, or 8 blocks
    /// of a 32-element type (`X8` in the kernel).
    const fn block(&self) -> usize {
        256 / self.dtype.block_size() * self.dtype.block_bytes()
    }
}

macro_rules! pipe_types {
    ($($dt:ident $s:literal),*) => {
        [$(PipeType {
            dtype: DType::$dt,
            one: [concat!("gemvp_", $s), concat!("gemvp_", $s, "_m2"), concat!("gemvp_", $s, "_m4")],
            segs: [concat!("gemvps_", $s), concat!("gemvps_", $s, "_m2"), concat!("gemvps_", $s, "_m4")],
            glu: [concat!("gemvpg_", $s), concat!("gemvpg_", $s, "_m2"), concat!("gemvpg_", $s, "_m4")],
        }),*]
    };
}

// The 32-element types run 8 blocks per ring block (kernels/gemv_pipe.cuh `X8`).
const PIPE_TYPES: [PipeType; 10] = pipe_types!(
    Q4_K "q4_k", Q5_K "q5_k", IQ4_XS "iq4_xs", Q4_0 "q4_0", Q4_1 "q4_1", Q5_0 "q5_0",
    Q5_1 "q5_1", Q6_K "q6_k", Q3_K "q3_k", IQ4_NL "iq4_nl"
);

/// The pipelined kernel's entry for `dt`, if it takes that type.
pub(crate) fn pipe_type(dt: DType) -> Option<&'static PipeType> {
    PIPE_TYPES.iter().find(|p| p.dtype == dt)
}

/// The weight types the pipelined m = 1 kernel takes (on sm_90+, k a multiple of 2048).
pub fn gemv_pipe_types() -> [DType; 10] {
    PIPE_TYPES.map(|p| p.dtype)
}

/// Whether the automatic m = 1 dispatch takes the pipelined kernel for `dt`: every type it takes
/// (each measured faster in a decode step, BENCHMARKS.md stop 23) unless `KILN_GEMV_PIPE=0`.
pub fn gemv_pipe_auto(dt: DType) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    pipe_type(dt).is_some()
        && *ON.get_or_init(|| std::env::var("KILN_GEMV_PIPE").map_or(true, |v| v != "0"))
}

/// Device ordinals that belong to an all-reduce group (`CudaComm`): their automatic m = 1 Q4_K
/// GEMV stays on quant_x + gemv8. Measured on 2× H200 (BENCHMARKS.md, stop 17): Llama-3-8B
/// Q4_K batch 1, TP1 2.44 → 2.02 ms per step with this kernel, but TP2 2.02 → 2.10 ms (two
/// runs each, same binary, `KILN_GEMV_PIPE=0` vs on); why it loses next to the collectives is
/// not established.
/// One bit per ordinal (ordinals ≥ 63 share the top bit: such devices are treated as grouped
/// if any of them is); read lock-free on every m = 1 matmul.
static GROUPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ordinal_bit(ordinal: usize) -> u64 {
    1u64 << ordinal.min(63)
}

/// Mark `ordinals` as members of an all-reduce group (see GROUPED).
pub(crate) fn note_grouped(ordinals: &[usize]) {
    for &o in ordinals {
        GROUPED.fetch_or(ordinal_bit(o), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether device `ordinal` belongs to an all-reduce group (always false with
/// `KILN_GEMV_PIPE_GROUPED=1`: the pipelined kernels on grouped devices too, for the A/B of
/// tests/scripts/gpu_multi.sh `PIPE_AB=1`).
pub(crate) fn grouped(ordinal: usize) -> bool {
    static ALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*ALL.get_or_init(|| std::env::var("KILN_GEMV_PIPE_GROUPED").is_ok_and(|v| v == "1"))
        && GROUPED.load(std::sync::atomic::Ordering::Relaxed) & ordinal_bit(ordinal) != 0
}

/// `KILN_GEMV_PIPE_CARVE` (A/B of the shared-memory carveout: unset, `off` or `both`).
fn carve_mode() -> &'static str {
    static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MODE.get_or_init(|| std::env::var("KILN_GEMV_PIPE_CARVE").unwrap_or_default())
}

/// Dynamic shared memory of `gemvp_<type>` with `block`-byte blocks (kernels/gemv_pipe.cuh
/// `GP_SMEM`): per warp D stages of R rows × one step, plus D mbarriers rounded to 16 bytes.
fn pipe_smem(block: usize) -> usize {
    let warps = (PIPE_THREADS / 32) as usize;
    warps * (PIPE_D * PIPE_R * PIPE_BPS * block + (8 * PIPE_D).div_ceil(16) * 16)
}

/// Grid of `gemvp_<type>`: at most `occ` blocks per SM; S warps per group (1, 2, 4 or 8)
/// minimizing ceil(groups·S / warps)·ceil(steps / S), ties to the smaller S. Returns (blocks, S).
fn pipe_grid(n: usize, k: usize, sms: usize, occ: usize) -> (usize, usize) {
    let wpb = (PIPE_THREADS / 32) as usize;
    let warps = sms * occ * wpb;
    let groups = n.div_ceil(PIPE_R);
    let steps = (k / 256) / PIPE_BPS;
    let forced = forced_s();
    let choices = forced.as_ref().map_or(&WAVE_S[..], std::slice::from_ref);
    wave_grid(groups, steps, warps, wpb, sms * occ, choices)
}

/// `KILN_GEMV_PIPE_S` = 1, 2, 4 or 8: warps per group forced (an A/B knob for the lab and the
/// benches; unset or any other value: the wave rule of `pipe_grid`).
fn forced_s() -> Option<usize> {
    static S: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *S.get_or_init(|| {
        std::env::var("KILN_GEMV_PIPE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s| WAVE_S.contains(s))
    })
}

impl CudaBackend {
    /// Whether `gemvp_<type>` can take this m = 1 product (see the module doc; the automatic
    /// dispatch also asks [`gemv_pipe_on`]).
    pub(crate) fn gemv_pipe_applies(&self, w: &CudaWeight, k: usize) -> bool {
        pipe_type(w.dtype).is_some()
            && self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9)
            && k.is_multiple_of(256 * PIPE_BPS)
            && w.body_ptr().is_multiple_of(16)
    }

    /// Function `name` (one of `pt`'s kernels) ready to launch over `groups` row groups of k =
    /// `k`: its dynamic shared memory allowed, its carveout set; returns the function, the
    /// launch configuration and S (warps per group).
    pub(crate) fn gemv_pipe_prepare(
        &self,
        pt: &PipeType,
        name: &'static str,
        groups: usize,
        k: usize,
    ) -> Result<(CudaFunction, LaunchConfig, i32)> {
        let f = self.function(&MATMUL_Q, name)?;
        let smem = pipe_smem(pt.block());
        self.allow_smem(&f, smem)?;
        let sms = self.info.caps.compute_units.max(1) as usize;
        let occ = self
            .occupancy(name, PIPE_THREADS, smem)?
            .min(PIPE_BLOCKS_PER_SM);
        // Shared memory for `occ` blocks (+2 KiB each for the static part), the rest L1 (x is
        // read from L1): percent of the 228 KiB maximum, as the lab ran it.
        // `KILN_GEMV_PIPE_CARVE=off` leaves the driver's choice, `=both` also sets it on
        // quant_x_q4_k2 (A/B: a carveout that differs between neighbouring kernels keeps their
        // blocks off the same SM).
        let carve = (occ * (smem + 2048) * 100).div_ceil(228 << 10).min(100);
        let mode = carve_mode();
        if mode != "off" {
            f.set_attribute(
                FuncAttr::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                carve as i32,
            )
            .map_err(self.drv("cuFuncSetAttribute(shared memory carveout)"))?;
        }
        if mode == "both" {
            self.function(&MATMUL_Q, "quant_x_q4_k2")?
                .set_attribute(
                    FuncAttr::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                    carve as i32,
                )
                .map_err(self.drv("cuFuncSetAttribute(shared memory carveout)"))?;
        }
        let (blocks, s) = pipe_grid(groups * PIPE_R, k, sms, occ);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (PIPE_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        Ok((f, cfg, s as i32))
    }

    /// quant_x_q4_k2 of `m` x rows (`xp`, `[m, k]`) into the matmul scratch; returns the scratch
    /// lock (hold it until the kernel reading xq/xs is enqueued) and [xq, xs].
    pub(crate) fn gemv_pipe_quant_x(
        &self,
        xp: u64,
        m: usize,
        k: usize,
    ) -> Result<(
        std::sync::MutexGuard<'_, Option<crate::gemm::Gemm>>,
        [u64; 2],
    )> {
        let op = OpKind::Matmul;
        let (mi, ki) = (
            super::super::arg_i32(op, "m", m)?,
            super::super::arg_i32(op, "k", k)?,
        );
        let units = super::x_units(DType::Q4_K, k);
        let xq_bytes = m * units * 16;
        let (guard, scratch) =
            self.matmul_scratch(super::fused_scratch_bytes(DType::Q4_K, m, k))?;
        let (xq, xs) = (scratch, scratch + xq_bytes as u64);
        // quant_x_q4_k2 writes the same units (x_units of Q4_K = of TQ4_K2 for k a multiple of
        // 2048) in the 64-weight lane order every gemvp_<type> reads, x row r at unit r·units.
        self.launch_quant_x("quant_x_q4_k2", xp, xq, xs, ki, mi, m * units)?;
        Ok((guard, [xq, xs]))
    }

    /// y f32 `[m, n]` = x f32 `[m, k]` · Wᵀ (m ≤ 4) by quant_x_q4_k2 + gemvp_<type>[_m2|_m4].
    /// The caller checked [`Self::gemv_pipe_applies`] and that rows are whole blocks.
    pub(crate) fn gemv_pipe(
        &self,
        w: &CudaWeight,
        [xp, outp]: [u64; 2],
        [m, n, k]: [usize; 3],
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let (mi, ni, ki) = (
            super::super::arg_i32(op, "m", m)?,
            super::super::arg_i32(op, "n", n)?,
            super::super::arg_i32(op, "k", k)?,
        );
        let (pt, mx) = pipe_type(w.dtype)
            .zip(pipe_m_index(m, true))
            .ok_or_else(|| {
                kiln_core::Error::shape(
                    op,
                    format!("the pipelined kernel does not take {} at m = {m}", w.dtype),
                )
            })?;
        let name = pt.one[mx];
        let (f, cfg, s) = self.gemv_pipe_prepare(pt, name, n.div_ceil(PIPE_R), k)?;
        // The scratch is shared: hold the lock until both kernels are enqueued.
        let (_guard, x) = self.gemv_pipe_quant_x(xp, m, k)?;
        self.launch_after_quant_x(&f, "gemvp", cfg, w, x, outp, [mi, ni, ki, s])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pick_the_smallest_kernel_that_holds_them() {
        // Forced: up to the largest M; m = 3 runs the M = 4 kernel (one row read, not stored).
        let forced: Vec<Option<usize>> = (0..=5).map(|m| pipe_m_index(m, true)).collect();
        assert_eq!(forced, [None, Some(0), Some(1), Some(2), Some(2), None]);
        // Automatic: never more rows than forced allows, and one row always.
        assert_eq!(pipe_m_index(1, false), Some(0));
        assert!(pipe_m_index(5, false).is_none());
        assert_eq!(
            PIPE_TYPES[0].one,
            ["gemvp_q4_k", "gemvp_q4_k_m2", "gemvp_q4_k_m4"]
        );
    }

    #[test]
    fn pipe_grid_and_smem_match_the_lab() {
        // The kernel's GP_SMEM(TQ4_K2, TQ4_K, 4, 2, 256, 1) = 8 warps × (2·4·8·144 + 16);
        // Q5_K 8 × (2·4·8·176 + 16), IQ4_XS 8 × (2·4·8·(128 + 8) + 16).
        assert_eq!(pipe_smem(pipe_type(DType::Q4_K).unwrap().block()), 73856);
        assert_eq!(pipe_smem(pipe_type(DType::Q5_K).unwrap().block()), 90240);
        assert_eq!(pipe_smem(pipe_type(DType::IQ4_XS).unwrap().block()), 69760);
        // Q5_0: 8 blocks of 16 + 6 bytes.
        assert_eq!(
            pipe_smem(pipe_type(DType::Q5_0).unwrap().block()),
            8 * (2 * 4 * 8 * 176 + 16)
        );
        assert_eq!(
            pipe_smem(pipe_type(DType::Q6_K).unwrap().block()),
            8 * (2 * 4 * 8 * 210 + 16)
        );
        assert!(pipe_type(DType::Q8_0).is_none() && pipe_type(DType::Q2_K).is_none());
        // H200, 132 SMs, 2 blocks per SM (lab "p k2 r4d2n256u1 b2"): 4096² grid 256 S = 2,
        // 14336×4096 grid 264 S = 1, 4096×14336 grid 256 S = 2.
        assert_eq!(pipe_grid(4096, 4096, 132, 2), (256, 2));
        assert_eq!(pipe_grid(14336, 4096, 132, 2), (264, 1));
        assert_eq!(pipe_grid(4096, 14336, 132, 2), (256, 2));
    }

    #[test]
    fn grouped_devices_are_marked_one_by_one() {
        // Ordinals no GPU test uses (a real group marks 0, 1, ...).
        assert!(!grouped(40) && !grouped(41));
        note_grouped(&[40]);
        assert!(grouped(40) && !grouped(41) && !grouped(39));
        // Ordinals past 63 share the top bit.
        note_grouped(&[70]);
        assert!(grouped(63) && grouped(100));
    }
}
