//! out = x / sqrt(mean(x²) + eps) · w per row (f32), `shaders/rms_norm.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/rms_norm.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    x_off: u32,
    w_off: u32,
    o_off: u32,
    eps: f32,
    _pad: [u32; 2],
}

pub(crate) fn rms_norm(
    be: &WgpuBackend,
    x: View<'_>,
    w: View<'_>,
    eps: f32,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::RmsNorm;
    for (n, v) in [("x", &x), ("w", &w), ("out", &out.as_view())] {
        check::dtype(op, n, v.dtype(), &[DType::F32])?;
    }
    if x.shape() != out.shape() {
        return Err(Error::shape(
            op,
            format!("x {} vs out {}", x.shape(), out.shape()),
        ));
    }
    let dim = x.shape().last();
    check::eq(op, "w elements vs row length", w.numel(), dim)?;
    out.check_disjoint(&x)?;
    out.check_disjoint(&w)?;
    let rows = u32_of(op, "rows", x.shape().rows())?;
    let bx = be.bind_view(op, &x, "x")?;
    let bw = be.bind_view(op, &w, "w")?;
    let bo = be.bind_out(op, &out, "out")?;
    let p = Params {
        rows,
        dim: u32_of(op, "dim", dim)?,
        x_off: bx.elem_off(4),
        w_off: bw.elem_off(4),
        o_off: bo.elem_off(4),
        eps,
        _pad: [0; 2],
    };
    let pipe = be.pipeline(ShaderSpec::new("rms_norm", &[REDUCE, SRC], "main"))?;
    let (gx, gy) = be.grid(rows);
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bx.entry(1), bw.entry(2), bo.entry(3)],
        (gx, gy, 1),
    )
}
