//! `rope`: rotary position embedding, in place.
//!
//! x f32 `[n_tokens, n_heads, head_dim]`, positions i32 `[n_tokens]`, inv_freq f32
//! `[n_rot / 2]`. For pair i < n_rot/2 of each head, with angle θ = (pos as f32) · inv_freq[i]
//! and cos θ, sin θ computed in f32 (as HF and llama.cpp do):
//!   x0' = x0·cos θ − x1·sin θ,  x1' = x0·sin θ + x1·cos θ   (f32 arithmetic),
//! where (x0, x1) = (x[i], x[i + n_rot/2]) for Neox and (x[2i], x[2i+1]) for Interleaved.
//! Dims ≥ n_rot pass through. Parallel over tokens; cos/sin are computed once per token.
//! Moves 2 · n_tokens · n_heads · n_rot floats; 6 FLOPs per pair.

use rayon::prelude::*;

use super::ReferenceBackend;
use crate::backend::{OpKind, RopeParams, RopeStyle, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

/// Rotate one token's heads (`x`: `[n_heads, head_dim]`) by `cos`, `sin` (`[n_rot / 2]`).
fn rotate_token(x: &mut [f32], head_dim: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = match style {
                RopeStyle::Neox => (i, i + half),
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// Rotate `x` (`[n_tokens, n_heads, head_dim]`) over slices.
pub(super) fn rope_slices(
    x: &mut [f32],
    head_dim: usize,
    positions: &[i32],
    inv_freq: &[f32],
    style: RopeStyle,
) {
    let tok = x.len() / positions.len().max(1);
    if tok == 0 {
        return;
    }
    x.par_chunks_mut(tok)
        .zip(positions.par_iter())
        .for_each_init(
            || (vec![0f32; inv_freq.len()], vec![0f32; inv_freq.len()]),
            |(cos, sin), (xt, &pos)| {
                for ((c, s), f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
                    let theta = (pos as f32) * f;
                    (*c, *s) = (theta.cos(), theta.sin());
                }
                rotate_token(xt, head_dim, style, cos, sin);
            },
        );
}

/// The `rope` op.
pub(super) fn rope(
    b: &ReferenceBackend,
    x: ViewMut<'_>,
    positions: View<'_>,
    inv_freq: View<'_>,
    p: &RopeParams,
) -> Result<()> {
    let op = OpKind::Rope;
    for d in [x.device(), positions.device(), inv_freq.device()] {
        b.check_dev(op, d)?;
    }
    check::dtype(op, "x", x.dtype(), &[DType::F32])?;
    check::dtype(op, "positions", positions.dtype(), &[DType::I32])?;
    check::dtype(op, "inv_freq", inv_freq.dtype(), &[DType::F32])?;
    let xs = x.shape();
    if xs.rank() != 3 {
        return Err(Error::shape(
            op,
            format!("x {xs} must be [n_tokens, n_heads, head_dim]"),
        ));
    }
    let head_dim = xs.dim(2);
    if p.n_rot == 0 || !p.n_rot.is_multiple_of(2) || p.n_rot > head_dim {
        return Err(Error::shape(
            op,
            format!(
                "n_rot {} must be even, > 0 and ≤ head_dim {head_dim}",
                p.n_rot
            ),
        ));
    }
    check::eq(op, "positions vs n_tokens", positions.numel(), xs.dim(0))?;
    check::eq(
        op,
        "inv_freq elements vs n_rot / 2",
        inv_freq.numel(),
        p.n_rot / 2,
    )?;
    let a = b.access();
    let pos = a.i32s(&positions)?;
    let freq = a.f32s(&inv_freq)?;
    let xv = a.f32s_mut(&x)?;
    rope_slices(xv, head_dim, pos, freq, p.style);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_tail_dims_pass_through() {
        let x0: Vec<f32> = (0..12).map(|i| i as f32 - 3.5).collect();
        for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
            let mut x = x0.clone();
            // 1 token, 2 heads, head_dim 6, n_rot 4
            rope_slices(&mut x, 6, &[0], &[1.0, 0.01], style);
            assert_eq!(x, x0);
        }
    }

    #[test]
    fn quarter_turn_pairs() {
        // inv_freq[0] = π/2 at position 1: (x0, x1) → (−x1, x0) up to cos(π/2) ≈ −4.4e-8.
        let f = [std::f32::consts::FRAC_PI_2, 0.0];
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 9.0];
        rope_slices(&mut x, 5, &[1], &f, RopeStyle::Neox); // pairs (0, 2), (1, 3)
        let want = [-3.0, 2.0, 1.0, 4.0, 9.0];
        assert!(
            x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{x:?}"
        );
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 9.0];
        rope_slices(&mut x, 5, &[1], &f, RopeStyle::Interleaved); // pairs (0, 1), (2, 3)
        let want = [-2.0, 1.0, 3.0, 4.0, 9.0];
        assert!(
            x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{x:?}"
        );
    }

    #[test]
    fn angle_is_f32_product_of_position_and_frequency() {
        // A large position: θ must be (pos as f32) · f in f32, not computed in f64.
        let (pos, f) = (123_457i32, 0.731_f32);
        let theta = (pos as f32) * f;
        let mut x = vec![1.0, 0.0];
        rope_slices(&mut x, 2, &[pos], &[f], RopeStyle::Neox);
        assert_eq!(x, vec![theta.cos(), theta.sin()]);
    }
}
