//! out = act(gate) ⊙ up (f32), `shaders/glu.wgsl`.

use kiln_core::backend::check;
use kiln_core::{Activation, DType, Error, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/glu.wgsl");
/// The activations, shared with the GEMV's fused GLU (`gemv_v::run_glu`).
pub(crate) const ACT_SRC: &str = include_str!("../../shaders/act.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    g_off: u32,
    u_off: u32,
    o_off: u32,
}

pub(crate) fn act_code(act: Activation) -> f64 {
    match act {
        Activation::Silu => 0.0,
        Activation::GeluTanh => 1.0,
    }
}

pub(crate) fn glu(
    be: &WgpuBackend,
    gate: View<'_>,
    up: View<'_>,
    act: Activation,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Glu;
    for (w, v) in [("gate", &gate), ("up", &up), ("out", &out.as_view())] {
        check::dtype(op, w, v.dtype(), &[DType::F32])?;
    }
    if gate.shape() != up.shape() || gate.shape() != out.shape() {
        return Err(Error::shape(
            op,
            format!(
                "gate {} up {} out {} must match",
                gate.shape(),
                up.shape(),
                out.shape()
            ),
        ));
    }
    out.check_disjoint(&gate)?;
    out.check_disjoint(&up)?;
    let n = u32_of(op, "elements", gate.numel())?;
    let bg = be.bind_view(op, &gate, "gate")?;
    let bu = be.bind_view(op, &up, "up")?;
    let bo = be.bind_out(op, &out, "out")?;
    let p = Params {
        n,
        g_off: bg.elem_off(4),
        u_off: bu.elem_off(4),
        o_off: bo.elem_off(4),
    };
    let pipe =
        be.pipeline(ShaderSpec::new("glu", &[ACT_SRC, SRC], "main").over("ACT", act_code(act)))?;
    let (x, y) = be.grid(n.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bg.entry(1), bu.entry(2), bo.entry(3)],
        (x, y, 1),
    )
}
