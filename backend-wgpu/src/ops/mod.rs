//! The ops, one file per op family (same names as `shaders/<op>.wgsl`), and the small WGSL
//! snippets they generate for dtype-specific element access.

pub(crate) mod add;
pub(crate) mod attention;
pub(crate) mod copy;
pub(crate) mod embed;
pub(crate) mod gather;
pub(crate) mod gemm;
pub(crate) mod gemm_coop;
pub(crate) mod gemv_v;
pub(crate) mod glu;
pub(crate) mod kv_append;
pub(crate) mod matmul;
pub(crate) mod moe;
pub(crate) mod rms_norm;
pub(crate) mod rope;

use kiln_core::{DType, Error, OpKind, Result};

/// Bytes of one element of a float dtype.
pub(crate) fn elem_bytes(d: DType) -> u64 {
    d.block_bytes() as u64
}

/// Elements per u32 word for a float dtype (1 for f32, 2 for f16/bf16).
pub(crate) fn epw(d: DType) -> u32 {
    if d == DType::F32 { 1 } else { 2 }
}

/// WGSL: `fn NAME(i: u32) -> f32` reading element i of `BUF: array<u32>` as `d`.
pub(crate) fn load_fn(name: &str, buf: &str, d: DType) -> String {
    match d {
        DType::F16 => {
            format!("fn {name}(i: u32) -> f32 {{ return f16_half({buf}[i >> 1u], i & 1u); }}")
        }
        DType::BF16 => format!(
            "fn {name}(i: u32) -> f32 {{ return bf16_bits(({buf}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu); }}"
        ),
        _ => format!("fn {name}(i: u32) -> f32 {{ return bitcast<f32>({buf}[i]); }}"),
    }
}

/// WGSL: `fn NAME(i: u32) -> vec2<f32>` reading elements i, i+1 (i even for 16-bit types,
/// which then come from one word).
pub(crate) fn load2_fn(name: &str, buf: &str, d: DType) -> String {
    match d {
        DType::F16 => format!(
            "fn {name}(i: u32) -> vec2<f32> {{ let w = {buf}[i >> 1u]; return vec2<f32>(f16_half(w, 0u), f16_half(w, 1u)); }}"
        ),
        DType::BF16 => format!(
            "fn {name}(i: u32) -> vec2<f32> {{ let w = {buf}[i >> 1u]; return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)); }}"
        ),
        _ => format!(
            "fn {name}(i: u32) -> vec2<f32> {{ return vec2<f32>(bitcast<f32>({buf}[i]), bitcast<f32>({buf}[i + 1u])); }}"
        ),
    }
}

/// WGSL: `fn NAME(v: f32) -> u32` giving the bits of v in `d` (16 bits for f16/bf16).
pub(crate) fn bits_fn(name: &str, d: DType) -> String {
    match d {
        DType::F16 => format!("fn {name}(v: f32) -> u32 {{ return f32_to_f16_bits(v); }}"),
        DType::BF16 => format!("fn {name}(v: f32) -> u32 {{ return f32_to_bf16_bits(v); }}"),
        _ => format!("fn {name}(v: f32) -> u32 {{ return bitcast<u32>(v); }}"),
    }
}

/// A float dtype for activations/KV, or an error naming the op and the operand.
pub(crate) fn float_only(op: OpKind, what: &str, d: DType) -> Result<()> {
    kiln_core::backend::check::dtype(op, what, d, &[DType::F32, DType::F16, DType::BF16])
}

/// u32 fits, or an error naming the op and the quantity.
pub(crate) fn u32_of(op: OpKind, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(op, format!("{what} = {v} exceeds 2^32")))
}

/// View the bytes of a plain-old-data params struct.
pub(crate) fn bytes_of<T: bytemuck::Pod>(p: &T) -> &[u8] {
    bytemuck::bytes_of(p)
}
