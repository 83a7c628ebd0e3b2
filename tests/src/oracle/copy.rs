//! copy (f32/f16/bf16 conversion, same element count) and gather (out[i] = x[ids[i]]).

use kiln_core::DType;

use crate::data::round_to;

/// The source values rounded to the destination type (round to nearest even).
pub fn copy(src: &[f32], dst: DType) -> Vec<f64> {
    round_to(dst, src).into_iter().map(|v| v as f64).collect()
}

/// x `[rows, d]`, ids `[n]` → `[n, d]`.
pub fn gather(x: &[f32], ids: &[i32], d: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| {
            x[i as usize * d..(i as usize + 1) * d]
                .iter()
                .map(|&v| v as f64)
        })
        .collect()
}
