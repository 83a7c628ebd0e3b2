//! out = a + b and out = x + bias (broadcast over rows), f32, `shaders/add.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/add.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    a_off: u32,
    b_off: u32,
    o_off: u32,
    b_len: u32,
    _pad: [u32; 3],
}

pub(crate) fn add(be: &WgpuBackend, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
    let op = OpKind::Add;
    for (w, v) in [("a", &a), ("b", &b), ("out", &out.as_view())] {
        check::dtype(op, w, v.dtype(), &[DType::F32])?;
    }
    check::eq(op, "a vs b elements", a.numel(), b.numel())?;
    check::eq(op, "a vs out elements", a.numel(), out.numel())?;
    if a.shape() != out.shape() || b.shape() != out.shape() {
        return Err(Error::shape(
            op,
            format!("shapes {} + {} -> {}", a.shape(), b.shape(), out.shape()),
        ));
    }
    out.check_disjoint(&a)?;
    out.check_disjoint(&b)?;
    let n = u32_of(op, "elements", a.numel())?;
    let ba = be.bind_view(op, &a, "a")?;
    let bb = be.bind_view(op, &b, "b")?;
    let bo = be.bind_out(op, &out, "out")?;
    let p = Params {
        n,
        a_off: ba.elem_off(4),
        b_off: bb.elem_off(4),
        o_off: bo.elem_off(4),
        b_len: 1,
        _pad: [0; 3],
    };
    let pipe = be.pipeline(ShaderSpec::new("add", &[SRC], "main"))?;
    let (x, y) = be.grid(n.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[ba.entry(1), bb.entry(2), bo.entry(3)],
        (x, y, 1),
    )
}

pub(crate) fn add_bias(
    be: &WgpuBackend,
    x: View<'_>,
    bias: View<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::AddBias;
    for (w, v) in [("x", &x), ("bias", &bias), ("out", &out.as_view())] {
        check::dtype(op, w, v.dtype(), &[DType::F32])?;
    }
    if x.shape() != out.shape() {
        return Err(Error::shape(
            op,
            format!("x {} vs out {}", x.shape(), out.shape()),
        ));
    }
    let len = x.shape().last();
    check::eq(op, "bias elements vs row length", bias.numel(), len)?;
    out.check_disjoint(&x)?;
    out.check_disjoint(&bias)?;
    let n = u32_of(op, "elements", x.numel())?;
    if n == 0 {
        return Ok(());
    }
    let bx = be.bind_view(op, &x, "x")?;
    let bb = be.bind_view(op, &bias, "bias")?;
    let bo = be.bind_out(op, &out, "out")?;
    let p = Params {
        n,
        a_off: bx.elem_off(4),
        b_off: bb.elem_off(4),
        o_off: bo.elem_off(4),
        b_len: u32_of(op, "bias length", len)?,
        _pad: [0; 3],
    };
    let pipe = be.pipeline(ShaderSpec::new("add", &[SRC], "add_bias"))?;
    let (gx, gy) = be.grid(n.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bx.entry(1), bb.entry(2), bo.entry(3)],
        (gx, gy, 1),
    )
}
