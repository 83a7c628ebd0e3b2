//! out[i] = scale · table[ids[i]] for every weight dtype, `shaders/embed.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, View, ViewMut, Weight};

use crate::device::WgpuBackend;
use crate::ops::matmul::{DEQUANT, wdefine};
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;
use crate::weight::WgpuWeight;

const SRC: &str = include_str!("../../shaders/embed.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_items: u32,
    groups: u32,
    k: u32,
    bpr: u32,
    d_base: u32,
    r0: u32,
    r1: u32,
    ids_off: u32,
    o_off: u32,
    scale: f32,
    _pad: [u32; 2],
}

pub(crate) fn embed(
    be: &WgpuBackend,
    ids: View<'_>,
    table: &Weight,
    scale: f32,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Embed;
    check::device(op, be.info.id, table.device())?;
    check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    let tw = WgpuWeight::of(table, op)?;
    if table.shape().rank() != 2 {
        return Err(Error::shape(
            op,
            format!("table {} must be [vocab, dim]", table.shape()),
        ));
    }
    let n = ids.numel();
    let dim = tw.k;
    check::eq(op, "out rows vs ids", out.shape().rows(), n)?;
    check::eq(op, "out row length vs table dim", out.shape().last(), dim)?;
    out.check_disjoint(&ids)?;
    if n == 0 {
        return Ok(());
    }
    let groups = (dim / 32) as u32;
    let n_items = u32_of(op, "ids · dim/32", n * dim / 32)?;
    u32_of(op, "out elements", n * dim)?;
    let bi = be.bind_view(op, &ids, "ids")?;
    let bo = be.bind_out(op, &out, "out")?;
    let spec = ShaderSpec::new("embed", &[DEQUANT, SRC], "main").define(wdefine(tw.dtype));
    let pipe = be.pipeline(spec)?;
    for c in &tw.chunks {
        let bw = be.bind_range(&c.buf, 0, c.buf.size(), "table chunk")?;
        let p = Params {
            n_items,
            groups,
            k: dim as u32,
            bpr: tw.bpr() as u32,
            d_base: c.d_base,
            r0: c.r0 as u32,
            r1: c.r1 as u32,
            ids_off: bi.elem_off(4),
            o_off: bo.elem_off(4),
            scale,
            _pad: [0; 2],
        };
        let (gx, gy) = be.grid(n_items.div_ceil(64));
        be.dispatch(
            &pipe,
            bytes_of(&p),
            &[bw.entry(1), bi.entry(2), bo.entry(3)],
            (gx, gy, 1),
        )?;
    }
    Ok(())
}
