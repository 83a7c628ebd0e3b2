//! Write new K/V rows into the paged cache, `shaders/kv_append.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, PagedKv, Result, View};

use crate::device::WgpuBackend;
use crate::ops::{bits_fn, bytes_of, elem_bytes, epw, float_only, load_fn, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/kv_append.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_words: u32,
    words_per_row: u32,
    n_kv: u32,
    block_size: u32,
    head_dim: u32,
    k_off: u32,
    v_off: u32,
    kc_off: u32,
    vc_off: u32,
    s_off: u32,
    _pad: [u32; 2],
}

/// WGSL `pack_word(which, src, wr)`: output word `wr` of a head row from k (0) or v (1).
fn pack_fn(cache: DType) -> String {
    let e = epw(cache);
    let mut s = format!("const EPW: u32 = {e}u;\n{}\n", bits_fn("to_bits", cache));
    s.push_str("fn ld(which: u32, i: u32) -> f32 {\n    if which == 0u { return load_k(P.k_off + i); }\n    return load_v(P.v_off + i);\n}\n");
    if e == 1 {
        s.push_str("fn pack_word(which: u32, src: u32, wr: u32) -> u32 { return to_bits(ld(which, src + wr)); }\n");
    } else {
        s.push_str("fn pack_word(which: u32, src: u32, wr: u32) -> u32 {\n    return to_bits(ld(which, src + 2u * wr)) | (to_bits(ld(which, src + 2u * wr + 1u)) << 16u);\n}\n");
    }
    s
}

pub(crate) fn kv_append(
    be: &WgpuBackend,
    k: View<'_>,
    v: View<'_>,
    kv: &PagedKv<'_>,
    slots: View<'_>,
) -> Result<()> {
    let op = OpKind::KvAppend;
    float_only(op, "k", k.dtype())?;
    float_only(op, "v", v.dtype())?;
    float_only(op, "cache", kv.dtype())?;
    check::dtype(op, "slots", slots.dtype(), &[DType::I32])?;
    let (n_kv, hd) = (kv.n_kv_heads(), kv.head_dim());
    for (name, t) in [("k", &k), ("v", &v)] {
        let s = t.shape();
        if s.rank() != 3 || s.dim(1) != n_kv || s.dim(2) != hd {
            return Err(Error::shape(
                op,
                format!("{name} {s} must be [n_tokens, {n_kv}, {hd}]"),
            ));
        }
    }
    check::eq(op, "k vs v tokens", k.shape().dim(0), v.shape().dim(0))?;
    let n_tokens = k.shape().dim(0);
    check::eq(op, "slots vs tokens", slots.numel(), n_tokens)?;
    let cd = kv.dtype();
    let e = epw(cd) as usize;
    if !hd.is_multiple_of(e) || !kv.k.offset().is_multiple_of(4) || !kv.v.offset().is_multiple_of(4)
    {
        return Err(Error::shape(
            op,
            format!("{cd} cache needs an even head_dim ({hd}) and word-aligned K/V views"),
        ));
    }
    for inp in [&k, &v, &slots] {
        kv.k.check_disjoint(inp)?;
        kv.v.check_disjoint(inp)?;
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let words_per_row = (hd / e) as u32;
    let n_words = u32_of(op, "words", n_tokens * n_kv * hd / e)?;
    let bk = be.bind_view(op, &k, "k")?;
    let bv = be.bind_view(op, &v, "v")?;
    let bkc = be.bind_out(op, &kv.k, "K cache")?;
    let bvc = be.bind_out(op, &kv.v, "V cache")?;
    let bs = be.bind_view(op, &slots, "slots")?;
    let p = Params {
        n_words,
        words_per_row,
        n_kv: n_kv as u32,
        block_size: u32_of(op, "block_size", kv.block_size())?,
        head_dim: hd as u32,
        k_off: bk.elem_off(elem_bytes(k.dtype())),
        v_off: bv.elem_off(elem_bytes(v.dtype())),
        kc_off: bkc.elem_off(elem_bytes(cd)),
        vc_off: bvc.elem_off(elem_bytes(cd)),
        s_off: bs.elem_off(4),
        _pad: [0; 2],
    };
    let spec = ShaderSpec::new("kv_append", &[SRC], "main")
        .sub("LOAD_K", load_fn("load_k", "K", k.dtype()))
        .sub("LOAD_V", load_fn("load_v", "V", v.dtype()))
        .sub("PACK", pack_fn(cd));
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(n_words.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[
            bk.entry(1),
            bv.entry(2),
            bkc.entry(3),
            bvc.entry(4),
            bs.entry(5),
        ],
        (gx, gy, 1),
    )
}
