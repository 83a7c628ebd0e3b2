//! Rotary embedding in place (f32), `shaders/rope.wgsl`; rope + kv_append in one pass,
//! `shaders/rope_kv.wgsl`.

use kiln_core::backend::{check, rope_kv_append_unfused};
use kiln_core::{DType, Error, OpKind, PagedKv, Result, RopeParams, RopeStyle, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bits_fn, bytes_of, elem_bytes, epw, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/rope.wgsl");
const SINCOS: &str = include_str!("../../shaders/sincos.wgsl");
const SRC_KV: &str = include_str!("../../shaders/rope_kv.wgsl");

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
    let style = style_code(p);
    let pipe = be.pipeline(ShaderSpec::new("rope", &[SINCOS, SRC], "main").over("STYLE", style))?;
    let (gx, gy) = be.grid(n_pairs.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&prm),
        &[bx.entry(1), bp.entry(2), bf.entry(3)],
        (gx, gy, 1),
    )
}

/// The shaders' STYLE override.
fn style_code(p: &RopeParams) -> f64 {
    match p.style {
        RopeStyle::Neox => 0.0,
        RopeStyle::Interleaved => 1.0,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KvParams {
    n_q: u32,
    n_items: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    half_rot: u32,
    tail_words: u32,
    per_head: u32,
    block_size: u32,
    total_slots: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    kc_off: u32,
    vc_off: u32,
    p_off: u32,
    f_off: u32,
    s_off: u32,
    _pad: [u32; 2],
}

/// WGSL for rope_kv.wgsl's `{{PACK}}`: `EPW`, `to_bits`, `put2(e, a, b)` (cache elements e, e + 1
/// of KC; e even for 16-bit caches) and `pack_word(which, src)` (the cache word of k (0) or v (1)
/// elements from src), packed exactly as kv_append.wgsl packs.
fn pack_kv(cache: DType) -> String {
    let mut s = format!(
        "const EPW: u32 = {}u;\n{}\n",
        epw(cache),
        bits_fn("to_bits", cache)
    );
    s.push_str("fn ld(which: u32, i: u32) -> f32 {\n    if which == 0u { return K[P.k_off + i]; }\n    return V[P.v_off + i];\n}\n");
    if epw(cache) == 1 {
        s.push_str("fn put2(e: u32, a: f32, b: f32) {\n    KC[P.kc_off + e] = to_bits(a);\n    KC[P.kc_off + e + 1u] = to_bits(b);\n}\n");
        s.push_str(
            "fn pack_word(which: u32, src: u32) -> u32 { return to_bits(ld(which, src)); }\n",
        );
    } else {
        s.push_str("fn put2(e: u32, a: f32, b: f32) {\n    KC[(P.kc_off + e) / 2u] = to_bits(a) | (to_bits(b) << 16u);\n}\n");
        s.push_str("fn pack_word(which: u32, src: u32) -> u32 {\n    return to_bits(ld(which, src)) | (to_bits(ld(which, src + 1u)) << 16u);\n}\n");
    }
    s
}

/// rope(q), rope(k), kv_append(k, v) as one pass (rope_kv.wgsl), bit for bit the three ops.
/// Shapes the shader does not take (v not f32, an odd number of rotary pairs, a cache view not
/// word-aligned, token counts that differ) go to the three ops, which also report bad input.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kv_append(
    be: &WgpuBackend,
    q: ViewMut<'_>,
    k: ViewMut<'_>,
    v: View<'_>,
    positions: View<'_>,
    inv_freq: View<'_>,
    p: &RopeParams,
    kv: &PagedKv<'_>,
    slots: View<'_>,
) -> Result<()> {
    let op = OpKind::Rope;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (n_kv, hd, cd) = (kv.n_kv_heads(), kv.head_dim(), kv.dtype());
    let e = epw(cd) as usize;
    let f32s = [q.dtype(), k.dtype(), v.dtype(), inv_freq.dtype()]
        .iter()
        .all(|&d| d == DType::F32);
    let fits = f32s
        && positions.dtype() == DType::I32
        && slots.dtype() == DType::I32
        && matches!(cd, DType::F32 | DType::F16 | DType::BF16)
        && qs.rank() == 3
        && ks.rank() == 3
        && vs == ks
        && ks.dim(1) == n_kv
        && ks.dim(2) == hd
        && qs.dim(2) == hd
        && qs.dim(0) == ks.dim(0)
        && positions.numel() == qs.dim(0)
        && slots.numel() == qs.dim(0)
        && p.n_rot > 0
        && p.n_rot.is_multiple_of(4)
        && p.n_rot <= hd
        && inv_freq.numel() == p.n_rot / 2
        && hd.is_multiple_of(e)
        && kv.k.offset().is_multiple_of(4)
        && kv.v.offset().is_multiple_of(4);
    if !fits {
        return rope_kv_append_unfused(be, q, k, v, positions, inv_freq, p, kv, slots);
    }
    let (qv, kv_) = (q.as_view(), k.as_view());
    q.check_disjoint(&kv_)?;
    q.check_disjoint(&v)?;
    k.check_disjoint(&v)?;
    for c in [&kv.k, &kv.v] {
        for i in [&qv, &kv_, &v, &slots, &positions, &inv_freq] {
            c.check_disjoint(i)?;
        }
    }
    for t in [&q, &k] {
        t.check_disjoint(&positions)?;
        t.check_disjoint(&inv_freq)?;
    }
    let (n_tokens, n_heads) = (qs.dim(0), qs.dim(1));
    if n_tokens == 0 {
        return Ok(());
    }
    let half = p.n_rot / 2;
    let tail_words = (hd - p.n_rot) / e;
    let per_head = half / 2 + tail_words + hd / e;
    let n_q = n_tokens * n_heads * half;
    let n_items = u32_of(op, "items", n_q + n_tokens * n_kv * per_head)?;
    let (bq, bk, bv) = (
        be.bind_out(op, &q, "q")?,
        be.bind_out(op, &k, "k")?,
        be.bind_view(op, &v, "v")?,
    );
    let (bkc, bvc) = (
        be.bind_out(op, &kv.k, "K cache")?,
        be.bind_out(op, &kv.v, "V cache")?,
    );
    let (bp, bf, bs) = (
        be.bind_view(op, &positions, "positions")?,
        be.bind_view(op, &inv_freq, "inv_freq")?,
        be.bind_view(op, &slots, "slots")?,
    );
    let prm = KvParams {
        n_q: u32_of(op, "q pairs", n_q)?,
        n_items,
        n_heads: u32_of(op, "n_heads", n_heads)?,
        n_kv: u32_of(op, "n_kv_heads", n_kv)?,
        head_dim: u32_of(op, "head_dim", hd)?,
        half_rot: u32_of(op, "n_rot / 2", half)?,
        tail_words: u32_of(op, "tail words", tail_words)?,
        per_head: u32_of(op, "items per head", per_head)?,
        block_size: u32_of(op, "block_size", kv.block_size())?,
        total_slots: u32_of(op, "cache slots", kv.num_blocks() * kv.block_size())?,
        q_off: bq.elem_off(4),
        k_off: bk.elem_off(4),
        v_off: bv.elem_off(4),
        kc_off: bkc.elem_off(elem_bytes(cd)),
        vc_off: bvc.elem_off(elem_bytes(cd)),
        p_off: bp.elem_off(4),
        f_off: bf.elem_off(4),
        s_off: bs.elem_off(4),
        _pad: [0; 2],
    };
    let spec = ShaderSpec::new("rope_kv", &[SINCOS, SRC_KV], "main")
        .over("STYLE", style_code(p))
        .sub("PACK", pack_kv(cd));
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(n_items.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&prm),
        &[
            bq.entry(1),
            bk.entry(2),
            bv.entry(3),
            bkc.entry(4),
            bvc.entry(5),
            bp.entry(6),
            bf.entry(7),
            bs.entry(8),
        ],
        (gx, gy, 1),
    )
}
