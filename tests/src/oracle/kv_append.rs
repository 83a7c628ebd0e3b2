//! kv_append: write k, v `[n_tokens, n_kv_heads, head_dim]` into the paged cache at `slots`
//! (slot = block·block_size + row; a negative slot skips the token).

use kiln_core::DType;

use crate::data::round_to;

/// The cache after the append: `cache` `[num_blocks, n_kv_heads, block_size, head_dim]` as
/// values, `new` `[n_tokens, n_kv_heads, head_dim]`, each written value rounded to `dtype`.
pub fn kv_append(
    cache: &[f32],
    new: &[f32],
    slots: &[i32],
    n_kv: usize,
    block_size: usize,
    head_dim: usize,
    dtype: DType,
) -> Vec<f64> {
    let mut out: Vec<f64> = cache.iter().map(|&x| x as f64).collect();
    for (t, &slot) in slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let slot = slot as usize;
        let (blk, row) = (slot / block_size, slot % block_size);
        for h in 0..n_kv {
            let src = &new[(t * n_kv + h) * head_dim..(t * n_kv + h + 1) * head_dim];
            let dst = ((blk * n_kv + h) * block_size + row) * head_dim;
            for (d, v) in round_to(dtype, src).into_iter().enumerate() {
                out[dst + d] = v as f64;
            }
        }
    }
    out
}
