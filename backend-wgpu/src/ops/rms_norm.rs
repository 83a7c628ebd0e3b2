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
    units: u32,
    x_off: u32,
    w_off: u32,
    o_off: u32,
    eps: f32,
    dim: u32,
    _pad: u32,
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
    let dim = u32_of(op, "dim", dim)?;
    let offs = [bx.elem_off(4), bw.elem_off(4), bo.elem_off(4)];
    // vec4 units where the row and every offset allow them (the shader header says why).
    let v = if dim % 4 == 0 && offs.iter().all(|o| o % 4 == 0) {
        4
    } else {
        1
    };
    let p = Params {
        rows,
        units: dim / v,
        x_off: offs[0] / v,
        w_off: offs[1] / v,
        o_off: offs[2] / v,
        eps,
        dim,
        _pad: 0,
    };
    let spec = ShaderSpec::new("rms_norm", &[REDUCE, SRC], "main");
    let spec = if v == 4 {
        spec.define("V4").sub("T", "vec4<f32>")
    } else {
        spec.sub("T", "f32")
    };
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(rows);
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bx.entry(1), bw.entry(2), bo.entry(3)],
        (gx, gy, 1),
    )
}
