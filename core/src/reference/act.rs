//! Elementwise ops: `glu` (out = act(gate) ⊙ up, act = SiLU or GELU-tanh), `add`
//! (out = a + b) and `add_bias` (out = x + bias, bias `[n]` broadcast over the rows of x
//! `[rows, n]`), all f32 and computed in f32. Parallel over chunks of about `CHUNK` elements.
//! Move 3 floats per element (2 for `add_bias`).

use rayon::prelude::*;

use super::ReferenceBackend;
use crate::backend::{Activation, OpKind, check};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{View, ViewMut};

const CHUNK: usize = 1 << 14;

/// x·sigmoid(x) = x / (1 + e^−x), in f32.
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in f32.
pub(super) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// out = act(gate) ⊙ up over slices of equal length.
pub(super) fn glu_slices(gate: &[f32], up: &[f32], act: Activation, out: &mut [f32]) {
    let f = match act {
        Activation::Silu => silu,
        Activation::GeluTanh => gelu_tanh,
    };
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = f(*g) * u;
            }
        });
}

/// Checks shared by the binary elementwise ops: devices, f32, same element count and last dim.
fn check_binary(
    b: &ReferenceBackend,
    op: OpKind,
    (an, a): (&str, &View<'_>),
    (bn, bv): (&str, &View<'_>),
    out: &ViewMut<'_>,
) -> Result<()> {
    for d in [a.device(), bv.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    check::dtype(op, an, a.dtype(), &[DType::F32])?;
    check::dtype(op, bn, bv.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    check::eq(op, &format!("{an} vs {bn} elements"), a.numel(), bv.numel())?;
    check::eq(op, &format!("{an} vs out elements"), a.numel(), out.numel())?;
    check::eq(
        op,
        &format!("{an} vs {bn} last dim"),
        a.shape().last(),
        bv.shape().last(),
    )?;
    check::eq(
        op,
        &format!("{an} vs out last dim"),
        a.shape().last(),
        out.shape().last(),
    )
}

/// The `glu` op.
pub(super) fn glu(
    b: &ReferenceBackend,
    gate: View<'_>,
    up: View<'_>,
    act: Activation,
    out: ViewMut<'_>,
) -> Result<()> {
    check_binary(b, OpKind::Glu, ("gate", &gate), ("up", &up), &out)?;
    let a = b.access();
    let (g, u) = (a.f32s(&gate)?, a.f32s(&up)?);
    glu_slices(g, u, act, a.f32s_mut(&out)?);
    Ok(())
}

/// The `add` op.
pub(super) fn add(b: &ReferenceBackend, x: View<'_>, y: View<'_>, out: ViewMut<'_>) -> Result<()> {
    check_binary(b, OpKind::Add, ("a", &x), ("b", &y), &out)?;
    let a = b.access();
    let (xs, ys) = (a.f32s(&x)?, a.f32s(&y)?);
    a.f32s_mut(&out)?
        .par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
        .for_each(|(o, (p, q))| {
            for ((o, p), q) in o.iter_mut().zip(p).zip(q) {
                *o = p + q;
            }
        });
    Ok(())
}

/// The `add_bias` op.
pub(super) fn add_bias(
    b: &ReferenceBackend,
    x: View<'_>,
    bias: View<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::AddBias;
    for d in [x.device(), bias.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    for (what, dt) in [
        ("x", x.dtype()),
        ("bias", bias.dtype()),
        ("out", out.dtype()),
    ] {
        check::dtype(op, what, dt, &[DType::F32])?;
    }
    let n = x.shape().last();
    check::eq(op, "bias elements vs x last dim", bias.numel(), n)?;
    check::eq(op, "out elements vs x elements", out.numel(), x.numel())?;
    check::eq(op, "out last dim vs x last dim", out.shape().last(), n)?;
    if n == 0 {
        return Ok(());
    }
    let a = b.access();
    let (xs, bs) = (a.f32s(&x)?, a.f32s(&bias)?);
    // Chunks of whole rows.
    let rows_per_chunk = (CHUNK / n).max(1);
    a.f32s_mut(&out)?
        .par_chunks_mut(rows_per_chunk * n)
        .zip(xs.par_chunks(rows_per_chunk * n))
        .for_each(|(o, xc)| {
            for (orow, xrow) in o.chunks_exact_mut(n).zip(xc.chunks_exact(n)) {
                for ((o, x), c) in orow.iter_mut().zip(xrow).zip(bs) {
                    *o = x + c;
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_hand_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-2.0) - -0.238_405_84).abs() < 1e-6);
        assert_eq!(silu(-100.0), -0.0); // e^100 overflows to inf; no NaN
        assert_eq!(gelu_tanh(0.0), 0.0);
        // torch.nn.functional.gelu(torch.tensor(1.0), approximate="tanh") = 0.8411920
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_tanh(-3.0) - -0.003_637_392).abs() < 1e-6);
        let mut out = [0f32; 2];
        glu_slices(&[1.0, 0.0], &[2.0, 5.0], Activation::Silu, &mut out);
        assert_eq!(out, [silu(1.0) * 2.0, 0.0]);
    }
}
