//! Routed expert FFN, `shaders/moe.wgsl` (+ `matmul.wgsl` gemv with MOE, `glu.wgsl`).
//!
//! Steps, all on the device, no host round trip: `route` writes (expert, weight) per
//! (token, slot); the gemv kernel computes gate and up for every pair reading only the
//! selected expert's rows; glu in place; the down projection per pair; `combine` sums the
//! weighted pairs into out. Every pair reads its expert's weights once (decode-friendly;
//! a prefill of many tokens re-reads an expert once per token routed to it).
//!
//! Scratch (f32/u32 words): ids [T·K] | weights [T·K] | gate [T·K, ff] | up [T·K, ff] |
//! y [T·K, dim].

use kiln_core::backend::check;
use kiln_core::{
    DType, Error, MoeExperts, MoeGating, MoeRouting, OpKind, Result, View, ViewMut, Weight,
};

use crate::buffer::Bound;
use crate::device::WgpuBackend;
use crate::ops::matmul::{DEQUANT, GEMV_RW, Params as MmParams, SRC as MM_SRC, gemv_spec};
use crate::ops::{bytes_of, u32_of};
use crate::pipeline_cache::ShaderSpec;
use crate::weight::WgpuWeight;

const SRC: &str = include_str!("../../shaders/moe.wgsl");
const GLU: &str = include_str!("../../shaders/glu.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    n_experts: u32,
    top_k: u32,
    dim: u32,
    l_off: u32,
    id_off: u32,
    w_off: u32,
    y_off: u32,
    o_off: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GluParams {
    n: u32,
    g_off: u32,
    u_off: u32,
    o_off: u32,
}

fn dims(e: &MoeExperts<'_>) -> (usize, usize, usize) {
    let g = e.gate.shape();
    (g.dim(0), g.dim(1), g.dim(2)) // experts, ff, dim
}

pub(crate) fn scratch_bytes(n_tokens: usize, e: &MoeExperts<'_>, r: &MoeRouting) -> usize {
    let (_, ff, dim) = dims(e);
    n_tokens * r.top_k * (2 + 2 * ff + dim) * 4
}

fn check_weight(op: OpKind, what: &str, w: &Weight, want: [usize; 3]) -> Result<()> {
    let s = w.shape();
    if s.rank() != 3 || s.dims() != want {
        return Err(Error::shape(op, format!("{what} {s} must be {want:?}")));
    }
    Ok(())
}

/// Expert GEMV for every (token, slot) pair: out[pair, :n] = W[ids[pair]] · x[row(pair)].
#[allow(clippy::too_many_arguments)]
fn expert_gemv(
    be: &WgpuBackend,
    w: &WgpuWeight,
    n: usize,
    x: &Bound<'_>,
    x_off: u32,
    out_off: u32,
    sc: &Bound<'_>,
    ids_off: u32,
    pairs: u32,
    top_k: u32,
    x_per_token: bool,
) -> Result<()> {
    let spec = gemv_spec(be, w.dtype, x_off, 1, 1, &[DEQUANT, MM_SRC])
        .define("MOE")
        .over("X_PER_TOKEN", if x_per_token { 1.0 } else { 0.0 });
    let pipe = be.pipeline(spec)?;
    let zmax = be.limits.max_compute_workgroups_per_dimension.max(1);
    let (gx, gy) = be.grid((n as u32).div_ceil(GEMV_RW));
    for c in &w.chunks {
        let bw = be.bind_range(&c.buf, 0, c.buf.size(), "expert weight chunk")?;
        let mut pair0 = 0;
        while pair0 < pairs {
            let np = (pairs - pair0).min(zmax);
            let p = MmParams {
                m: pairs,
                n_c: (c.r1 - c.r0) as u32,
                k: w.k as u32,
                n_out: n as u32,
                r0: c.r0 as u32,
                bpr: w.bpr() as u32,
                d_base: c.d_base,
                x_off,
                o_off: out_off,
                i_off: ids_off,
                top_k,
                pair0,
            };
            be.dispatch(
                &pipe,
                bytes_of(&p),
                &[bw.entry(1), x.entry(2), sc.entry(3), sc.entry(4)],
                (gx, gy, np),
            )?;
            pair0 += np;
        }
    }
    Ok(())
}

pub(crate) fn moe(
    be: &WgpuBackend,
    x: View<'_>,
    logits: View<'_>,
    e: &MoeExperts<'_>,
    r: &MoeRouting,
    scratch: Option<ViewMut<'_>>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Moe;
    let (n_exp, ff, dim) = dims(e);
    check_weight(op, "gate", e.gate, [n_exp, ff, dim])?;
    check_weight(op, "up", e.up, [n_exp, ff, dim])?;
    check_weight(op, "down", e.down, [n_exp, dim, ff])?;
    for w in [e.gate, e.up, e.down] {
        check::device(op, be.info.id, w.device())?;
    }
    check::dtype(op, "x", x.dtype(), &[DType::F32])?;
    check::dtype(op, "router_logits", logits.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    check::eq(op, "x row length vs expert dim", x.shape().last(), dim)?;
    let n_tokens = x.shape().rows();
    check::eq(
        op,
        "router_logits rows vs tokens",
        logits.shape().rows(),
        n_tokens,
    )?;
    check::eq(
        op,
        "router_logits length vs experts",
        logits.shape().last(),
        n_exp,
    )?;
    check::eq(op, "out rows vs tokens", out.shape().rows(), n_tokens)?;
    check::eq(op, "out row length vs dim", out.shape().last(), dim)?;
    if r.top_k == 0 || r.top_k > n_exp {
        return Err(Error::shape(
            op,
            format!("top_k {} with {n_exp} experts", r.top_k),
        ));
    }
    out.check_disjoint(&x)?;
    out.check_disjoint(&logits)?;
    if n_tokens == 0 {
        return Ok(());
    }
    let need = scratch_bytes(n_tokens, e, r);
    let sc = scratch.ok_or_else(|| {
        Error::Invalid(format!(
            "moe on {}: needs {need} bytes of scratch (moe_scratch_bytes)",
            be.info.id
        ))
    })?;
    if sc.bytes() < need || sc.offset() % 4 != 0 {
        return Err(Error::Invalid(format!(
            "moe on {}: scratch of {} bytes at offset {}, needs {need} word-aligned bytes",
            be.info.id,
            sc.bytes(),
            sc.offset()
        )));
    }
    out.check_disjoint(&sc.as_view())?;
    sc.check_disjoint(&x)?;
    sc.check_disjoint(&logits)?;
    let pairs = u32_of(op, "tokens · top_k", n_tokens * r.top_k)?;
    u32_of(op, "scratch words", need / 4)?;
    let (gw, uw, dw) = (
        WgpuWeight::of(e.gate, op)?,
        WgpuWeight::of(e.up, op)?,
        WgpuWeight::of(e.down, op)?,
    );
    let bx = be.bind_view(op, &x, "x")?;
    let bl = be.bind_view(op, &logits, "router_logits")?;
    let bsc = be.bind_out(op, &sc, "moe scratch")?;
    let bo = be.bind_out(op, &out, "out")?;
    let base = bsc.elem_off(4);
    let tk = pairs as usize;
    let id_off = base;
    let w_off = base + tk as u32;
    let g_off = base + 2 * tk as u32;
    let u_off = g_off + (tk * ff) as u32;
    let y_off = u_off + (tk * ff) as u32;
    let p = Params {
        n_tokens: n_tokens as u32,
        n_experts: n_exp as u32,
        top_k: r.top_k as u32,
        dim: dim as u32,
        l_off: bl.elem_off(4),
        id_off,
        w_off,
        y_off,
        o_off: bo.elem_off(4),
        _pad: [0; 3],
    };
    let (gating, renorm) = match r.gating {
        MoeGating::SoftmaxTopK { renormalize } => (0.0, renormalize),
        MoeGating::TopKSoftmax => (1.0, false),
    };
    let route = be.pipeline(
        ShaderSpec::new("moe", &[SRC], "route")
            .over("GATING", gating)
            .over("RENORM", if renorm { 1.0 } else { 0.0 }),
    )?;
    let (gx, gy) = be.grid((n_tokens as u32).div_ceil(64));
    be.dispatch(
        &route,
        bytes_of(&p),
        &[bl.entry(1), bsc.entry(2)],
        (gx, gy, 1),
    )?;
    let top_k = r.top_k as u32;
    expert_gemv(
        be,
        gw,
        ff,
        &bx,
        bx.elem_off(4),
        g_off,
        &bsc,
        id_off,
        pairs,
        top_k,
        true,
    )?;
    expert_gemv(
        be,
        uw,
        ff,
        &bx,
        bx.elem_off(4),
        u_off,
        &bsc,
        id_off,
        pairs,
        top_k,
        true,
    )?;
    let n_h = pairs * ff as u32;
    let glu = be.pipeline(
        ShaderSpec::new("glu", &[super::glu::ACT_SRC, GLU], "main")
            .over("ACT", super::glu::act_code(e.act)),
    )?;
    let gp = GluParams {
        n: n_h,
        g_off,
        u_off,
        o_off: g_off,
    };
    let (hx, hy) = be.grid(n_h.div_ceil(256));
    be.dispatch(
        &glu,
        bytes_of(&gp),
        &[bsc.entry(1), bsc.entry(2), bsc.entry(3)],
        (hx, hy, 1),
    )?;
    expert_gemv(
        be, dw, dim, &bsc, g_off, y_off, &bsc, id_off, pairs, top_k, false,
    )?;
    let comb = be.pipeline(
        ShaderSpec::new("moe", &[SRC], "combine")
            .over("GATING", gating)
            .over("RENORM", if renorm { 1.0 } else { 0.0 }),
    )?;
    let n_out = u32_of(op, "out elements", n_tokens * dim)?;
    let (cx, cy) = be.grid(n_out.div_ceil(256));
    be.dispatch(
        &comb,
        bytes_of(&p),
        &[bsc.entry(2), bo.entry(3)],
        (cx, cy, 1),
    )
}
