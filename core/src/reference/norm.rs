//! `rms_norm`: out = x / sqrt(mean(x²) + eps) · w, per row.
//!
//! x, out f32 `[rows, dim]` (any rank: the last dim is `dim`, e.g. per-head q/k norms over
//! `[n_tokens, n_heads, head_dim]`), w f32 `[dim]`. mean(x²) is summed in f64 and the scale
//! 1/sqrt(mean + eps) is computed in f64; each output is (x · scale) · w rounded once to f32.
//! Parallel over rows. Moves 2 · rows · dim floats; 4 FLOPs per element.

use rayon::prelude::*;

use super::ReferenceBackend;
use crate::backend::{OpKind, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

/// One row.
pub(super) fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|v| *v as f64 * *v as f64).sum();
    let scale = 1.0 / (ss / x.len() as f64 + eps as f64).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = (*v as f64 * scale * *g as f64) as f32;
    }
}

/// The `rms_norm` op.
pub(super) fn rms_norm(
    b: &ReferenceBackend,
    x: View<'_>,
    w: View<'_>,
    eps: f32,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::RmsNorm;
    for d in [x.device(), w.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    for (what, dt) in [("x", x.dtype()), ("w", w.dtype()), ("out", out.dtype())] {
        check::dtype(op, what, dt, &[DType::F32])?;
    }
    let dim = x.shape().last();
    if dim == 0 {
        return Err(Error::shape(
            op,
            format!("x {} has rows of 0 elements", x.shape()),
        ));
    }
    check::eq(op, "w elements vs x last dim", w.numel(), dim)?;
    check::eq(op, "out last dim vs x last dim", out.shape().last(), dim)?;
    check::eq(op, "out elements vs x elements", out.numel(), x.numel())?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::shape(
            op,
            format!("eps {eps} must be finite and ≥ 0"),
        ));
    }
    let a = b.access();
    let (xs, ws) = (a.f32s(&x)?, a.f32s(&w)?);
    let o = a.f32s_mut(&out)?;
    o.par_chunks_mut(dim)
        .zip(xs.par_chunks(dim))
        .for_each(|(orow, xrow)| rms_norm_row(xrow, ws, eps, orow));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_row() {
        // x = [3, 4]: mean(x²) = 12.5, eps 0.5 → scale 1/sqrt(13)
        let mut out = [0f32; 2];
        rms_norm_row(&[3.0, 4.0], &[1.0, 2.0], 0.5, &mut out);
        let s = 1.0 / 13f64.sqrt();
        assert_eq!(out, [(3.0 * s) as f32, (8.0 * s) as f32]);
        // a zero row stays zero (eps > 0)
        rms_norm_row(&[0.0, 0.0], &[1.0, 1.0], 1e-6, &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }
}
