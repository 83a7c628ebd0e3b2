//! dst = convert(src) among f32/f16/bf16, `shaders/copy.wgsl`.

use kiln_core::backend::check;
use kiln_core::{DType, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bits_fn, bytes_of, elem_bytes, epw, float_only, load_fn, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/copy.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    s_off: u32,
    d_off: u32,
    n_words: u32,
}

/// WGSL `store_d_word(w)`: writes output word w (relative to the first word the view
/// touches), converting the elements it holds and keeping halves outside the view.
fn store_fn(d: DType) -> String {
    let bits = bits_fn("to_bits", d);
    if epw(d) == 1 {
        return format!(
            "{bits}\nfn store_d_word(w: u32) {{ D[P.d_off + w] = to_bits(load_s(P.s_off + w)); }}"
        );
    }
    format!(
        "{bits}
fn store_d_word(w: u32) {{
    let word = P.d_off / 2u + w;
    var v = D[word];
    for (var j = 0u; j < 2u; j++) {{
        let e = word * 2u + j;
        if e >= P.d_off && e < P.d_off + P.n {{
            let h = to_bits(load_s(P.s_off + e - P.d_off));
            v = (v & ~(0xffffu << (16u * j))) | (h << (16u * j));
        }}
    }}
    D[word] = v;
}}"
    )
}

pub(crate) fn copy(be: &WgpuBackend, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
    let op = OpKind::Copy;
    float_only(op, "src", src.dtype())?;
    float_only(op, "dst", dst.dtype())?;
    check::eq(op, "src vs dst elements", src.numel(), dst.numel())?;
    dst.check_disjoint(&src)?;
    if src.numel() == 0 {
        return Ok(());
    }
    let n = u32_of(op, "elements", src.numel())?;
    let bs = be.bind_view(op, &src, "src")?;
    let bd = be.bind_out(op, &dst, "dst")?;
    let d_off = bd.elem_off(elem_bytes(dst.dtype()));
    let e = epw(dst.dtype());
    let n_words = (d_off + n).div_ceil(e) - d_off / e;
    let p = Params {
        n,
        s_off: bs.elem_off(elem_bytes(src.dtype())),
        d_off,
        n_words,
    };
    let spec = ShaderSpec::new("copy", &[SRC], "main")
        .sub("LOAD_S", load_fn("load_s", "S", src.dtype()))
        .sub("STORE_D", store_fn(dst.dtype()));
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(n_words.div_ceil(256));
    be.dispatch(
        &pipe,
        bytes_of(&p),
        &[bs.entry(1), bd.entry(2)],
        (gx, gy, 1),
    )
}

const SRC_V4: &str = include_str!("../../shaders/copy_v4.wgsl");

/// The bandwidth probe (copy_v4.wgsl): `dst[..n4] = src[..n4]` in 16-byte units, `u` vec4s in
/// flight per invocation (1, 2, 4 or 8); `read`: the same loads and no store (the read probe).
pub(crate) fn copy_v4(
    be: &WgpuBackend,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    n4: u32,
    u: u32,
    read: bool,
) -> Result<()> {
    if n4 == 0 {
        return Ok(());
    }
    let bytes = u64::from(n4) * 16;
    let bs = be.bind_range(src, 0, bytes, "probe src")?;
    let bd = be.bind_range(dst, 0, if read { 16 } else { bytes }, "probe dst")?;
    let p = [n4, 0, 0, 0];
    let mut spec = ShaderSpec::new("copy_v4", &[SRC_V4], "main").over("U", f64::from(u));
    if read {
        spec = spec.define("READ");
    }
    let pipe = be.pipeline(spec)?;
    let (gx, gy) = be.grid(n4.div_ceil(256 * u));
    be.dispatch(
        &pipe,
        bytemuck::cast_slice(&p),
        &[bs.entry(1), bd.entry(2)],
        (gx, gy, 1),
    )
}
