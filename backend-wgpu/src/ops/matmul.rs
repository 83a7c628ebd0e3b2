//! y = x·Wᵀ for every weight dtype, `shaders/matmul.wgsl` (+ `dequant.wgsl`).
//!
//! Two kernels: `gemv` (fused dequant + dot, memory-bound, for few x rows) and the GEMM
//! (tiled, dequantizing into workgroup memory, for many rows: `ops/gemm_coop.rs` on
//! cooperative matrices where the adapter has them, else `ops/gemm.rs`'s f32 FMAs,
//! `set_gemm_coop(false)` / `KILN_WGPU_GEMM=f32` to compare; matmul.wgsl's older `gemm` stays
//! as a comparison, `set_gemm_legacy`). Which one runs for m x rows is decided
//! by the crossover measured by `tune` for (adapter, dtype, n, k) and persisted in the tuning
//! cache (see `tune.rs`).

use kiln_core::backend::check;
use kiln_core::{Activation, DType, Error, OpKind, Result, View, ViewMut, Weight};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, gemm, gemm_coop, gemv_v, u32_of};
use crate::pipeline_cache::ShaderSpec;
use crate::weight::WgpuWeight;

pub(crate) const SRC: &str = include_str!("../../shaders/matmul.wgsl");
pub(crate) const DEQUANT: &str = include_str!("../../shaders/dequant.wgsl");

/// GEMV shape: invocations per workgroup, weight rows per workgroup (so 32 invocations per
/// row), x rows per pass (the lanes of a vec4 accumulator).
pub(crate) const GEMV_WG: u32 = 128;
pub(crate) const GEMV_RW: u32 = 4;
pub(crate) const GEMV_MT: u32 = 4;

/// The specialisation of matmul.wgsl's `gemv` for this device and x offset.
pub(crate) fn gemv_spec<'a>(
    be: &WgpuBackend,
    d: DType,
    x_off: u32,
    mt: u32,
    nr: u32,
    srcs: &'a [&'static str],
) -> ShaderSpec<'a> {
    let (lanes, _) = be.gemv_config(d);
    let mut spec = ShaderSpec::new("matmul", srcs, "gemv")
        .define(wdefine(d))
        .sub("WT", tile_type(be, d))
        .over("WG", f64::from(GEMV_WG))
        .over("RW", f64::from(GEMV_RW))
        .over("MT", f64::from(mt))
        .over("SUBL", f64::from(lanes))
        .over("NR", f64::from(nr));
    if x_off.is_multiple_of(4) {
        spec = spec.define("X_VEC4");
    }
    if be.subgroup_reduce_ok(GEMV_WG / GEMV_RW) {
        spec = spec.define("SG_RED");
    }
    spec
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub(crate) m: u32,
    pub(crate) n_c: u32,
    pub(crate) k: u32,
    pub(crate) n_out: u32,
    pub(crate) r0: u32,
    pub(crate) bpr: u32,
    pub(crate) d_base: u32,
    pub(crate) x_off: u32,
    pub(crate) o_off: u32,
    pub(crate) i_off: u32,
    pub(crate) top_k: u32,
    pub(crate) pair0: u32,
}

/// Which kernel a matmul runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    Gemv,
    Gemm,
}

/// The define that selects the dequantizer of `d` in dequant.wgsl.
pub(crate) fn wdefine(d: DType) -> String {
    format!("W_{}", d.name())
}

/// Workgroup tile type of the GEMM: f16 where the device has it, for the types whose values
/// f16 holds without overflow (block formats and F16); f32 otherwise.
fn tile_type(be: &WgpuBackend, d: DType) -> &'static str {
    if be.has_f16() && !matches!(d, DType::F32 | DType::BF16) {
        "f16"
    } else {
        "f32"
    }
}

fn check_args(be: &WgpuBackend, x: &View<'_>, w: &Weight, out: &ViewMut<'_>) -> Result<usize> {
    let op = OpKind::Matmul;
    check::device(op, be.info.id, w.device())?;
    check::dtype(op, "x", x.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    let ws = w.shape();
    if ws.rank() != 2 {
        return Err(Error::shape(op, format!("weight {ws} must be [n, k]")));
    }
    let (n, k) = (ws.dim(0), ws.dim(1));
    check::eq(op, "x row length vs weight k", x.shape().last(), k)?;
    let m = x.shape().rows();
    check::eq(op, "out rows vs x rows", out.shape().rows(), m)?;
    check::eq(op, "out row length vs weight n", out.shape().last(), n)?;
    out.check_disjoint(x)?;
    u32_of(op, "x elements", m * k)?;
    u32_of(op, "out elements", m * n)?;
    Ok(m)
}

pub(crate) fn matmul(be: &WgpuBackend, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
    let m = check_args(be, &x, w, &out)?;
    let ww = WgpuWeight::of(w, OpKind::Matmul)?;
    let path = be.choose_path(ww.dtype, ww.rows, ww.k, m);
    run(be, x, ww, out, m, path)
}

/// The trait's matmul_many: products of 2–3 weights at m ≤ 8 rows that the tuned path sends to
/// the vec4 GEMV (m = 1) or gemv_x8m (2 ≤ m ≤ 8, Q8_0/Q4_K) go as ONE dispatch
/// (`gemv_v::run_many`); anything else, one matmul each.
pub(crate) fn matmul_many(
    be: &WgpuBackend,
    x: View<'_>,
    parts: &[(&Weight, ViewMut<'_>)],
) -> Result<()> {
    let mut ws = Vec::with_capacity(parts.len());
    let mut one = x.offset().is_multiple_of(16) && be.vgemv_enabled();
    for (i, (w, out)) in parts.iter().enumerate() {
        let m = check_args(be, &x, w, out)?;
        let ww = WgpuWeight::of(w, OpKind::Matmul)?;
        one &= (m == 1 || (m <= gemv_v::MX_MAX && gemv_v::x8m_ok(be, ww.dtype, ww.k)))
            && gemv_v::supports(ww.dtype)
            && be.choose_path(ww.dtype, ww.rows, ww.k, m) == MatmulPath::Gemv
            && parts[..i]
                .iter()
                .all(|(_, o)| out.check_disjoint(&o.as_view()).is_ok());
        ws.push((ww, *out));
    }
    let m = x.shape().rows();
    if one && gemv_v::run_many(be, x, &ws, m)? {
        return Ok(());
    }
    for (w, out) in parts {
        matmul(be, x, w, *out)?;
    }
    Ok(())
}

/// The trait's matmul_glu: at one row on the vec4 GEMV path (or 2..=8 rows on gemv_x8m's),
/// gate, up and the GLU as ONE dispatch (`gemv_v::run_glu`); otherwise matmul_many then glu
/// (the trait's default).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_glu(
    be: &WgpuBackend,
    x: View<'_>,
    gate: &Weight,
    up: &Weight,
    act: Activation,
    g_out: ViewMut<'_>,
    u_out: ViewMut<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let m = check_args(be, &x, gate, &out)?;
    check_args(be, &x, up, &out)?;
    let (gw, uw) = (
        WgpuWeight::of(gate, OpKind::Matmul)?,
        WgpuWeight::of(up, OpKind::Matmul)?,
    );
    let gemv = |w: &WgpuWeight| {
        gemv_v::supports(w.dtype) && be.choose_path(w.dtype, w.rows, w.k, m) == MatmulPath::Gemv
    };
    if m <= gemv_v::MX_MAX
        && x.offset().is_multiple_of(16)
        && be.vgemv_enabled()
        && gemv(gw)
        && gemv(uw)
        && gemv_v::run_glu(be, x, gw, uw, crate::ops::glu::act_code(act), out, m)?
    {
        return Ok(());
    }
    matmul_many(be, x, &[(gate, g_out), (up, u_out)])?;
    crate::ops::glu::glu(be, g_out.as_view(), u_out.as_view(), act, out)
}

/// Run one path explicitly (tests and the tuner).
pub(crate) fn matmul_with(
    be: &WgpuBackend,
    x: View<'_>,
    w: &Weight,
    out: ViewMut<'_>,
    path: MatmulPath,
) -> Result<()> {
    let m = check_args(be, &x, w, &out)?;
    let ww = WgpuWeight::of(w, OpKind::Matmul)?;
    run(be, x, ww, out, m, path)
}

fn run(
    be: &WgpuBackend,
    x: View<'_>,
    ww: &WgpuWeight,
    out: ViewMut<'_>,
    m: usize,
    path: MatmulPath,
) -> Result<()> {
    let op = OpKind::Matmul;
    if m == 0 || ww.rows == 0 {
        return Ok(());
    }
    if path == MatmulPath::Gemv
        && m == 1
        && gemv_v::supports(ww.dtype)
        && be.vgemv_enabled()
        && x.offset().is_multiple_of(16)
    {
        return gemv_v::run(be, x, ww, out);
    }
    // 2 ≤ m rows of Q8_0/Q4_K: gemv_x8m (int8 x, each weight byte read once per 8 rows)
    if path == MatmulPath::Gemv
        && m > 1
        && be.vgemv_enabled()
        && x.offset().is_multiple_of(16)
        && gemv_v::run_m(be, x, ww, out, m)?
    {
        return Ok(());
    }
    if path == MatmulPath::Gemm && be.gemm_coop() {
        return gemm_coop::run(be, x, ww, out, m);
    }
    if path == MatmulPath::Gemm && !be.gemm_legacy() {
        return gemm::run(be, x, ww, out, m);
    }
    let bx = be.bind_view(op, &x, "x")?;
    let bo = be.bind_out(op, &out, "out")?;
    let m32 = m as u32;
    let x_off = bx.elem_off(4);
    let (tiles_m, wg_rows, spec) = match path {
        MatmulPath::Gemv => {
            let mt = GEMV_MT.min(m32);
            let (_, nr) = be.gemv_config(ww.dtype);
            let spec = gemv_spec(be, ww.dtype, x_off, mt, nr, &[DEQUANT, SRC]);
            (m32.div_ceil(mt), GEMV_RW * nr, spec)
        }
        MatmulPath::Gemm => {
            let mut spec = ShaderSpec::new("matmul", &[DEQUANT, SRC], "gemm")
                .define(wdefine(ww.dtype))
                .sub("WT", tile_type(be, ww.dtype));
            if x_off.is_multiple_of(4) {
                spec = spec.define("X_VEC4");
            }
            (m32.div_ceil(64), 64, spec)
        }
    };
    let zmax = be.limits.max_compute_workgroups_per_dimension;
    if tiles_m > zmax {
        return Err(be.limit_error(
            "matmul: x-row tiles (workgroups in z)",
            u64::from(tiles_m),
            u64::from(zmax),
        ));
    }
    let pipe = be.pipeline(spec)?;
    for c in &ww.chunks {
        let n_c = (c.r1 - c.r0) as u32;
        let bw = be.bind_range(&c.buf, 0, c.buf.size(), "weight chunk")?;
        let p = Params {
            m: m32,
            n_c,
            k: ww.k as u32,
            n_out: ww.rows as u32,
            r0: c.r0 as u32,
            bpr: ww.bpr() as u32,
            d_base: c.d_base,
            x_off,
            o_off: bo.elem_off(4),
            ..Params::default()
        };
        let (gx, gy) = be.grid(n_c.div_ceil(wg_rows));
        be.dispatch(
            &pipe,
            bytes_of(&p),
            &[bw.entry(1), bx.entry(2), bo.entry(3)],
            (gx, gy, tiles_m),
        )?;
    }
    Ok(())
}
