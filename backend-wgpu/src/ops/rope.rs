//! Rotary embedding in place (f32), `shaders/rope.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, RopeParams, RopeStyle, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/rope.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_pairs: u32,
    n_heads: u32,
    head_dim: u32,
    half_rot: u32,
    x_off: u32,
    p_off: u32,
    f_off: u32,
    _pad: u32,
}

pub(crate) fn rope(
    be: &WgpuBackend,
    x: ViewMut<'_>,
    positions: View<'_>,
    inv_freq: View<'_>,
    p: &RopeParams,
) -> Result<()> {
    let op = OpKind::Rope;
    check::dtype(op, "x", x.dtype(), &[DType::F32])?;
    check::dtype(op, "positions", positions.dtype(), &[DType::I32])?;
    check::dtype(op, "inv_freq", inv_freq.dtype(), &[DType::F32])?;
    let s = x.shape();
    if s.rank() != 3 {
        return Err(Error::shape(
            op,
            format!("x {s} must be [n_tokens, n_heads, head_dim]"),
        ));
    }
    let (n_tokens, n_heads, head_dim) = (s.dim(0), s.dim(1), s.dim(2));
    if p.n_rot == 0 || !p.n_rot.is_multiple_of(2) || p.n_rot > head_dim {
        return Err(Error::shape(
            op,
            format!(
                "n_rot {} must be even, > 0 and ≤ head_dim {head_dim}",
                p.n_rot
            ),
        ));
    }
    check::eq(op, "positions vs tokens", positions.numel(), n_tokens)?;
    check::eq(op, "inv_freq vs n_rot/2", inv_freq.numel(), p.n_rot / 2)?;
    x.check_disjoint(&positions)?;
    x.check_disjoint(&inv_freq)?;
    let n_pairs = u32_of(op, "pairs", n_tokens * n_heads * (p.n_rot / 2))?;
    let bx = be.bind_out(op, &x, "x")?;
    let bp = be.bind_view(op, &positions, "positions")?;
    let bf = be.bind_view(op, &inv_freq, "inv_freq")?;
    let prm = Params {
        n_pairs,
        n_heads: n_heads as u32,
        head_dim: head_dim as u32,
        half_rot: (p.n_rot / 2) as u32,
        x_off: bx.elem_off(4),
        p_off: bp.elem_off(4),
        f_off: bf.elem_off(4),
        _pad: 0,
    };
    let style = match p.style {
        RopeStyle::Neox => 0.0,
        RopeStyle::Interleaved => 1.0,
    };
    let pipe = be.pipeline(ShaderSpec::new("rope", &[SRC], "main").over("STYLE", style))?;
    let (gx, gy) = be.grid(n_pairs.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&prm),
        &[bx.entry(1), bp.entry(2), bf.entry(3)],
        (gx, gy, 1),
    )
}
