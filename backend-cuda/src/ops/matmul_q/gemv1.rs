//! The one-kernel m = 1 GEMV of the block types (`gemv1_<type>`, kernels/matmul_q.cu).
//!
//! `gemv1_<type>` quantizes x itself (per block, into shared memory) instead of the separate
//! `quant_x` kernel, so a call is one launch; it is launched as a programmatic dependent of the
//! previous kernel on the stream (sm_90+), so its launch and its first weight loads (an L2 bulk
//! prefetch) overlap the previous kernel's tail. Measured on an H200 (backend-cuda/labs/gemv,
//! `gemv` bench, BENCHMARKS.md 2026-11-22 "m = 1 GEMV"): at 4096×4096 it beats the two-kernel
//! path (quant_x + gemv8) for the 256-element k-quants and the IQ4 types (Q4_K 5.96 vs 7.70 µs,
//! Q6_K 7.06 vs 8.64, Q3_K 6.22 vs 7.88, IQ4_NL 8.28 vs 8.57) and loses for Q4_0, Q4_1, Q5_0,
//! Q5_1 (Q4_0 7.13 vs 5.93) and Q8_0 (8.12 vs 7.10); on the 19–62 MB weights it loses for all
//! but Q4_K at 4096×14336 (15.17 vs 17.49): its grid is one resident wave of 256-thread blocks,
//! which keeps fewer bytes in flight than gemv8's many small blocks. Hence the rule: gemv1
//! for [`GEMV1_AUTO`] types up to [`GEMV1_MAX_BYTES`] (a crossover measured on one device, not
//! re-measured per device by the tuner).
//!
//! That rule is now off by default (`KILN_GEMV1=1` turns it on): the measurements above time
//! back-to-back calls, where a call's weight loads overlap the previous call's tail. Inside a
//! decode step every kernel waits for the one before, and there the two-kernel path on the
//! wave-model grid (`m1_grid`) was faster (H200, BENCHMARKS.md stop 15: Llama-3-8B Q4_K batch 1
//! 2.51 → 2.34 ms per step, its TP2-rank shapes 1.68 → 1.65 ms).

use cudarc::driver::LaunchConfig;
use kiln_core::{DType, OpKind, Result};

use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_Q;
use crate::ops::launch::Arg;

/// Threads per block of `gemv1_*` (kernels/matmul_q.cu `GEMV1_THREADS`).
pub(super) const GEMV1_THREADS: u32 = 256;
/// W rows per group of `gemv1_*` (`GEMV1_R`).
const GEMV1_R: usize = 4;
/// Largest weight (bytes) for which m = 1 uses `gemv1_*` by default (measured crossover on an
/// H200, see the module doc; not re-measured per device).
pub(crate) const GEMV1_MAX_BYTES: usize = 16 << 20;
/// Block types (indexed like [`GEMV1`]) for which m = 1 uses `gemv1_*` by default: not the
/// 32-element legacy types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (slower there, module doc).
pub(super) const GEMV1_AUTO: [bool; 12] = [
    false, false, false, false, false, true, true, true, true, true, true, true,
];
/// `KILN_GEMV1=1` lets the automatic dispatch take `gemv1_*` (off by default, see above;
/// forcing it with [`GemvM1::OneKernel`] works either way).
pub fn gemv1_auto_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV1").is_ok_and(|v| v == "1"))
}

/// Largest x shared-memory image (`x_units`·24 bytes) `gemv1_*` takes without an opt-in
/// (48 KiB minus the kernel's static shared memory).
pub(super) const GEMV1_MAX_SMEM: usize = 46 << 10;

/// `gemv1_<type>` of the 12 block types (indexed like `DType::WEIGHT_TYPES[3..]`).
const GEMV1: [&str; 12] = [
    "gemv1_q4_0",
    "gemv1_q4_1",
    "gemv1_q5_0",
    "gemv1_q5_1",
    "gemv1_q8_0",
    "gemv1_q2_k",
    "gemv1_q3_k",
    "gemv1_q4_k",
    "gemv1_q5_k",
    "gemv1_q6_k",
    "gemv1_iq4_nl",
    "gemv1_iq4_xs",
];

/// Which kernel(s) run m = 1 for the block types (`CudaBackend::matmul_fused_m1` forces one;
/// the runtime uses Auto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemvM1 {
    /// `gemv1_*` for [`GEMV1_AUTO`] types up to [`GEMV1_MAX_BYTES`], else the two-kernel path.
    Auto,
    /// Always `gemv1_*` where it applies (x 16-byte aligned, x fits in shared memory).
    OneKernel,
    /// Always quant_x + gemv8.
    TwoKernels,
    /// The pipelined kernel (matmul_q/pipe.rs); an error where it does not apply.
    Pipe,
}

impl CudaBackend {
    /// Runs y `[1, n]` = x `[1, k]`·Wᵀ with `gemv1_<type>` (`qi`: index among the 12 block
    /// types; x at `xp`, y at `outp`) if it applies (x 16-byte aligned, x's shared-memory image
    /// fits, `mode` allows it): Ok(true) when launched, Ok(false) when the caller should run
    /// the two-kernel path.
    pub(crate) fn try_gemv1(
        &self,
        qi: usize,
        w: &CudaWeight,
        [xp, outp]: [u64; 2],
        [n, k]: [usize; 2],
        mode: GemvM1,
    ) -> Result<bool> {
        let op = OpKind::Matmul;
        let smem = super::x_units(w.dtype, k) * 24;
        let wbytes = w.mem.slice.len();
        if matches!(mode, GemvM1::TwoKernels | GemvM1::Pipe)
            || !xp.is_multiple_of(16)
            || smem > GEMV1_MAX_SMEM
            || (mode == GemvM1::Auto
                && (wbytes > GEMV1_MAX_BYTES
                    || !gemv1_auto_on()
                    || !GEMV1_AUTO.get(qi).copied().unwrap_or(false)))
        {
            return Ok(false);
        }
        let Some(name) = GEMV1.get(qi) else {
            return Ok(false);
        };
        let f = self.function(&MATMUL_Q, name)?;
        let sms = self.info.caps.compute_units.max(1) as usize;
        let occ = self.occupancy(name, GEMV1_THREADS, smem)?;
        let (blocks, s) = gemv1_grid(w.dtype, n, k, sms, occ);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (GEMV1_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let (ni, ki, si) = (
            super::super::arg_i32(op, "n", n)?,
            super::super::arg_i32(op, "k", k)?,
            s as i32,
        );
        let args = [
            Arg::U64(&body),
            Arg::U64(&head),
            Arg::U64(&xp),
            Arg::U64(&outp),
            Arg::I32(&ni),
            Arg::I32(&ki),
            Arg::I32(&si),
        ];
        // SAFETY: gemv1_<type>(body, head, x, y, n, k, S): body/head are the repacked n × k
        // weight (rows whole blocks, checked by the caller); x holds k f32 at a 16-byte aligned
        // address, y n f32; the dynamic shared memory is x_units·24 bytes (the kernel's xq/xs);
        // W rows and chunks are clamped to the weight, writes bounded by n; x is read and y
        // written only after griddepcontrol.wait.
        unsafe { self.launch_pdl(&f, "launch gemv1", cfg, &args) }?;
        Ok(true)
    }
}

/// Grid of `gemv1_*`: at most one resident wave (`occ` blocks per SM); S warps per group (1, 2,
/// 4 or 8) minimizing ceil(groups·S / warps)·ceil(steps / S) (ties to the smaller S), where a
/// step is 32 chunks of a row. Returns (blocks, S).
pub(super) fn gemv1_grid(dt: DType, n: usize, k: usize, sms: usize, occ: usize) -> (usize, usize) {
    let wpb = (GEMV1_THREADS / 32) as usize;
    let warps = sms * occ * wpb;
    let groups = n.div_ceil(GEMV1_R);
    let qk = crate::buffer::split(dt).map_or(16, |s| s.qk);
    let steps = ((k / qk) * super::super::embed::chunks_per_block(dt)).div_ceil(32);
    wave_grid(groups, steps, warps, wpb, sms * occ, &WAVE_S)
}

/// The warps-per-group choices of the one-row kernels' grids.
pub(super) const WAVE_S: [usize; 4] = [1, 2, 4, 8];

/// The one-wave grid rule of the one-row kernels (gemv1, gemvp): S warps per group (one of
/// `choices`, normally [`WAVE_S`]) minimizing ceil(groups·S / warps)·ceil(steps / S), ties to the
/// smaller S; blocks of `wpb` warps, at most `max_blocks`. Returns (blocks, S).
pub(super) fn wave_grid(
    groups: usize,
    steps: usize,
    warps: usize,
    wpb: usize,
    max_blocks: usize,
    choices: &[usize],
) -> (usize, usize) {
    let mut best = (usize::MAX, 1);
    for &s in choices {
        let cost = (groups * s).div_ceil(warps) * steps.div_ceil(s);
        if cost < best.0 {
            best = (cost, s);
        }
    }
    let s = best.1;
    ((groups * s).div_ceil(wpb).clamp(1, max_blocks), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv1_grid_matches_the_lab_plan() {
        // H200: 132 SMs, 2 resident 256-thread blocks (lab: Q4_K 4096² grid 256, S = 2;
        // 14336×4096 grid 264, S = 4).
        assert_eq!(gemv1_grid(DType::Q4_K, 4096, 4096, 132, 2), (256, 2));
        assert_eq!(gemv1_grid(DType::Q4_K, 14336, 4096, 132, 2), (264, 4));
        // Q8_0 4096² with 4 blocks per SM: 512 blocks, S = 4 (lab v1); ties go to the smaller S.
        assert_eq!(gemv1_grid(DType::Q8_0, 4096, 4096, 132, 4), (512, 4));
    }
}
