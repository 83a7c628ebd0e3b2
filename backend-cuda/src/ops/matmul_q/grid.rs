//! Launch grids of the 128-thread fused GEMV kernels (`gemv_<float>_m<M>`, `gemv8_<type>_m<M>`
//! and their segmented/GLU forms, kernels/matmul_q.cu) and the one-row kernel choices:
//! [`fused_grid`] (any M), [`m1_grid`] (one x row, a wave cost model) and the `_u2` forms
//! ([`m1_kernel`]). The switches `KILN_GEMV_GRID=fused` and `KILN_GEMV_U=2` exist for A/B
//! measurements of a decode step (BENCHMARKS.md, stop 15).

use kiln_core::DType;

use crate::buffer::split;

/// Grid of the fused kernels (`gemv_*`, `gemv8_*`) for `groups` row groups: S warps per group
/// so the grid holds ~32 warps per SM, 4 warps per block, at most 8 blocks per SM (warps stride
/// over the groups). Returns (blocks, S).
pub(crate) fn fused_grid(groups: usize, sms: usize) -> (usize, usize) {
    let s_split = if groups >= sms * 32 {
        1
    } else if groups * 2 >= sms * 32 {
        2
    } else {
        4
    };
    ((groups * s_split).div_ceil(4).clamp(1, sms * 8), s_split)
}

/// `KILN_GEMV_U=2`: the one-row f16/bf16/Q4_K kernels load two chunk steps per trip (their
/// `_u2` forms in matmul_q.cu). Off by default: decode on an H200 measured them no faster in a
/// step, although the back-to-back GEMV bench is (BENCHMARKS.md, stop 15).
fn m1_u2_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV_U").is_ok_and(|v| v == "2"))
}

/// Chunk steps per trip of the one-row fused kernel that runs for `dt` (1, or 2 for the `_u2`
/// forms).
pub(crate) fn m1_unroll(dt: DType) -> usize {
    if m1_u2_enabled() && matches!(dt, DType::F16 | DType::BF16 | DType::Q4_K) {
        2
    } else {
        1
    }
}

/// The one-row kernel to launch for `name`: its `_u2` form where [`m1_unroll`] is 2.
pub(crate) fn m1_kernel(dt: DType, name: &'static str) -> &'static str {
    if m1_unroll(dt) == 1 {
        return name;
    }
    match name {
        "gemv_f16_m1" => "gemv_f16_m1_u2",
        "gemv_bf16_m1" => "gemv_bf16_m1_u2",
        "gemvs_f16" => "gemvs_f16_u2",
        "gemvs_bf16" => "gemvs_bf16_u2",
        "gemvg_f16" => "gemvg_f16_u2",
        "gemvg_bf16" => "gemvg_bf16_u2",
        "gemv8_q4_k_m1" => "gemv8_q4_k_m1_u2",
        "gemv8s_q4_k" => "gemv8s_q4_k_u2",
        "gemv8g_q4_k" => "gemv8g_q4_k_u2",
        other => other,
    }
}

/// `KILN_GEMV_GRID=fused`: the one-row fused kernels take [`fused_grid`] instead of
/// [`m1_grid`] (A/B measurements).
fn m1_grid_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV_GRID").map_or(true, |v| v != "fused"))
}

/// Grid of the 128-thread fused kernels at one x row (`gemv_<t>_m1`, `gemv8_<t>_m1` and their
/// segmented/GLU forms; `occ` blocks resident per SM) for `groups` row groups of k-element
/// rows: S warps per group (1, 2 or 4) minimizing ceil(groups·S / resident warps)·
/// ceil(ceil(steps / S) / U), where a step is 32 chunks and U is [`m1_unroll`] (ties to the
/// smaller S); one group per slot. The GEMV lab's "model" plan (backend-cuda/labs/gemv).
/// Returns (blocks, S); [`fused_grid`] under `KILN_GEMV_GRID=fused`.
pub(crate) fn m1_grid(
    dt: DType,
    groups: usize,
    k: usize,
    sms: usize,
    occ: usize,
) -> (usize, usize) {
    if !m1_grid_enabled() {
        return fused_grid(groups, sms);
    }
    let warps = sms.max(1) * occ.max(1) * 4;
    let qk = split(dt).map_or(16, |s| s.qk);
    let steps = ((k / qk) * crate::ops::embed::chunks_per_block(dt))
        .div_ceil(32)
        .max(1);
    let u = m1_unroll(dt);
    let mut best = (usize::MAX, 1);
    for s in [1usize, 2, 4] {
        let cost = (groups * s).div_ceil(warps) * steps.div_ceil(s).div_ceil(u);
        if cost < best.0 {
            best = (cost, s);
        }
    }
    ((groups * best.1).div_ceil(4).max(1), best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m1_grid_matches_the_lab_plan() {
        // H200 (132 SMs), bf16 at 4 resident blocks per SM: the GEMV lab's "model" grids
        // (3072×4096: 384 blocks, S = 2; 14336×4096: 3584, S = 4; 4096×7168 and 4096×2048:
        // 512, S = 2), the same for U = 1 and U = 2 (KILN_GEMV_U unset here).
        assert_eq!(m1_grid(DType::BF16, 768, 4096, 132, 4), (384, 2));
        assert_eq!(m1_grid(DType::BF16, 3584, 4096, 132, 4), (3584, 4));
        assert_eq!(m1_grid(DType::BF16, 1024, 7168, 132, 4), (512, 2));
        assert_eq!(m1_grid(DType::BF16, 1024, 2048, 132, 4), (512, 2));
        // f32 loads one step per trip: 4096² at 4 blocks per SM costs 8 / 4 / 2·2 trips at
        // S = 1 / 2 / 4 → S = 2 (the tie goes to the smaller S); at 1 block per SM, S = 1.
        assert_eq!(m1_grid(DType::F32, 1024, 4096, 132, 4), (512, 2));
        assert_eq!(m1_grid(DType::F32, 1024, 4096, 132, 1), (256, 1));
        // Tiny shapes still launch one block.
        assert_eq!(m1_grid(DType::F16, 1, 16, 1, 1).0, 1);
    }
}
