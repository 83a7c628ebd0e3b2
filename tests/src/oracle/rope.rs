//! rope, in place on x `[n_tokens, n_heads, head_dim]`: pair i (Neox: dims i and i + n_rot/2;
//! Interleaved: dims 2i and 2i + 1) at position p is rotated by θ = p·inv_freq[i]:
//! x0' = x0·cosθ − x1·sinθ, x1' = x0·sinθ + x1·cosθ. Dims ≥ n_rot are left as they are.

use kiln_core::{RopeParams, RopeStyle};

/// Returns the expected values and, per element, the error an f32 angle may add: the pair's
/// radius × |θ|·2⁻²³ (one f32 ulp of θ; 0 for dims that are not rotated).
pub fn rope(
    x: &[f32],
    positions: &[i32],
    inv_freq: &[f32],
    n_heads: usize,
    head_dim: usize,
    p: &RopeParams,
) -> (Vec<f64>, Vec<f64>) {
    let half = p.n_rot / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut angle_err = vec![0f64; x.len()];
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let base = (t * n_heads + h) * head_dim;
            for (i, &f) in inv_freq.iter().enumerate().take(half) {
                let (a, b) = match p.style {
                    RopeStyle::Neox => (base + i, base + i + half),
                    RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                };
                let theta = pos as f64 * f as f64;
                let (s, c) = theta.sin_cos();
                let (x0, x1) = (x[a] as f64, x[b] as f64);
                out[a] = x0 * c - x1 * s;
                out[b] = x0 * s + x1 * c;
                let e = x0.hypot(x1) * theta.abs() * f32::EPSILON as f64;
                angle_err[a] = e;
                angle_err[b] = e;
            }
        }
    }
    (out, angle_err)
}
