//! out[i] = x[ids[i]] (rows by index), `shaders/gather.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/gather.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    x_off: u32,
    i_off: u32,
    o_off: u32,
    _pad: [u32; 3],
}

pub(crate) fn gather(be: &WgpuBackend, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
    let op = OpKind::Gather;
    let four = [DType::F32, DType::I32, DType::U32];
    check::dtype(op, "x", x.dtype(), &four)?;
    check::dtype(op, "out", out.dtype(), &[x.dtype()])?;
    check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
    let d = x.shape().last();
    check::eq(op, "out row length vs x row length", out.shape().last(), d)?;
    check::eq(op, "out rows vs ids", out.shape().rows(), ids.numel())?;
    out.check_disjoint(&x)?;
    out.check_disjoint(&ids)?;
    let n = u32_of(op, "out elements", out.numel())?;
    if n == 0 {
        return Ok(());
    }
    let bx = be.bind_view(op, &x, "x")?;
    let bi = be.bind_view(op, &ids, "ids")?;
    let bo = be.bind_out(op, &out, "out")?;
    let p = Params {
        n,
        d: u32_of(op, "row length", d)?,
        x_off: bx.elem_off(4),
        i_off: bi.elem_off(4),
        o_off: bo.elem_off(4),
        _pad: [0; 3],
    };
    let pipe = be.pipeline(ShaderSpec::new("gather", &[SRC], "main"))?;
    let (gx, gy) = be.grid(n.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bx.entry(1), bi.entry(2), bo.entry(3)],
        (gx, gy, 1),
    )
}
