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
    b_off: u32,
    s_off: u32,
    _pad: [u32; 3],
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
    out.check_disjoint(&x)?;
    out.check_disjoint(&w)?;
    norm(be, x, None, w, eps, out)
}

/// sum = a + b, out = rms_norm(sum)·w in one pass (the trait's add_rms_norm).
pub(crate) fn add_rms_norm(
    be: &WgpuBackend,
    a: View<'_>,
    b: View<'_>,
    w: View<'_>,
    eps: f32,
    sum: ViewMut<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::RmsNorm;
    let views = [("a", &a), ("b", &b), ("w", &w)];
    for (n, v) in views
        .iter()
        .chain([("sum", &sum.as_view()), ("out", &out.as_view())].iter())
    {
        check::dtype(op, n, v.dtype(), &[DType::F32])?;
    }
    if b.shape() != a.shape() || sum.shape() != a.shape() || out.shape() != a.shape() {
        return Err(Error::shape(
            op,
            format!(
                "add_rms_norm: a {}, b {}, sum {} and out {} must have the same shape",
                a.shape(),
                b.shape(),
                sum.shape(),
                out.shape()
            ),
        ));
    }
    for (name, o) in [("sum", &sum), ("out", &out)] {
        for (_, i) in views {
            o.check_disjoint(i)
                .map_err(|e| Error::shape(op, format!("add_rms_norm {name}: {e}")))?;
        }
    }
    out.check_disjoint(&sum.as_view())?;
    norm(be, a, Some((b, sum)), w, eps, out)
}

/// The one dispatch of both ops: `add` = Some((b, sum)) for the fused residual add.
fn norm(
    be: &WgpuBackend,
    x: View<'_>,
    add: Option<(View<'_>, ViewMut<'_>)>,
    w: View<'_>,
    eps: f32,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::RmsNorm;
    let dim = x.shape().last();
    check::eq(op, "w elements vs row length", w.numel(), dim)?;
    let rows = u32_of(op, "rows", x.shape().rows())?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let bx = be.bind_view(op, &x, "x")?;
    let bw = be.bind_view(op, &w, "w")?;
    let bo = be.bind_out(op, &out, "out")?;
    let extra = match &add {
        Some((b, s)) => Some((be.bind_view(op, b, "b")?, be.bind_out(op, s, "sum")?)),
        None => None,
    };
    let dim = u32_of(op, "dim", dim)?;
    let mut offs = vec![bx.elem_off(4), bw.elem_off(4), bo.elem_off(4)];
    if let Some((bb, bs)) = &extra {
        offs.extend([bb.elem_off(4), bs.elem_off(4)]);
    }
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
        b_off: offs.get(3).map_or(0, |o| o / v),
        s_off: offs.get(4).map_or(0, |o| o / v),
        _pad: [0; 3],
    };
    let mut spec = ShaderSpec::new("rms_norm", &[REDUCE, SRC], "main");
    spec = if v == 4 {
        spec.define("V4").sub("T", "vec4<f32>")
    } else {
        spec.sub("T", "f32")
    };
    let mut entries = vec![bx.entry(1), bw.entry(2), bo.entry(3)];
    if let Some((bb, bs)) = &extra {
        spec = spec.define("ADD");
        entries.extend([bb.entry(4), bs.entry(5)]);
    }
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(rows);
    be.dispatch(&pipe, bytes_of(&p), &entries, (gx, gy, 1))
}
