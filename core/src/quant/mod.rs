//! GGUF block formats on the CPU: dequantization of every kiln weight type and quantization of
//! Q8_0, Q4_0, Q4_K, Q5_K and Q6_K with llama.cpp-compatible rounding.
//!
//! Layouts (all little-endian) are documented next to each block struct; they follow ggml's
//! `dequantize_row_*` and are bit-exact against gguf-py (`core/tests/quant_vectors.rs`). The
//! quantizers transcribe ggml's `quantize_row_*_ref` operation by operation (same f32 evaluation
//! order, same `nearest_int`, same f16 rounding), so they write the same bytes as llama.cpp's
//! reference quantizers (what `llama-quantize` uses without an importance matrix).
//!
//! Files: `legacy.rs` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), `kquants.rs` (Q2_K..Q6_K decoders),
//! `kquant_encode.rs` (Q4_K, Q5_K, Q6_K encoders), `iquants.rs` (IQ4_NL, IQ4_XS).

mod iquants;
mod kquant_encode;
mod kquants;
mod legacy;
#[cfg(test)]
mod tests;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The block types `quantize` can write (besides F32/F16/BF16).
pub const QUANTIZE_BLOCK_TYPES: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Below this many elements (de)quantization runs on the calling thread; above, it is split into
/// chunks over rayon's pool (whole-tensor conversions, `kiln quantize`). A weight row
/// (k < 65536) stays single-threaded, so callers that parallelize over rows are not nested.
const PAR_MIN_ELEMS: usize = 1 << 16;
/// Elements per parallel chunk (a multiple of every block size).
const PAR_CHUNK_ELEMS: usize = 1 << 14;

fn quant_error(dtype: DType, msg: String) -> Error {
    Error::Quant { dtype, msg }
}

/// Whether `dequantize` accepts `dtype` (the float types and the 12 GGUF block formats).
pub fn can_dequantize(dtype: DType) -> bool {
    dtype.is_float() || dtype.is_quantized()
}

/// Whether `quantize` can write `dtype` (F32, F16, BF16 and [`QUANTIZE_BLOCK_TYPES`]).
pub fn can_quantize(dtype: DType) -> bool {
    dtype.is_float() || QUANTIZE_BLOCK_TYPES.contains(&dtype)
}

/// Check that `src` holds whole blocks and `dst` has room for exactly their elements.
fn check_lengths(dtype: DType, src_bytes: usize, dst_elems: usize) -> Result<()> {
    let bb = dtype.block_bytes();
    if !src_bytes.is_multiple_of(bb) {
        return Err(quant_error(
            dtype,
            format!("{src_bytes} bytes is not a whole number of {bb}-byte blocks"),
        ));
    }
    let n = src_bytes / bb * dtype.block_size();
    if n != dst_elems {
        return Err(quant_error(
            dtype,
            format!("{src_bytes} bytes hold {n} elements, output has {dst_elems}"),
        ));
    }
    Ok(())
}

/// Dequantize whole blocks of `dtype` from `src` into `dst` (`dst.len()` = element count).
///
/// Bit-exact with ggml's `dequantize_row_*` (up to the sign of zero, see the test data README).
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !can_dequantize(dtype) {
        return Err(quant_error(
            dtype,
            "not a float or GGUF block type: nothing to dequantize".into(),
        ));
    }
    check_lengths(dtype, src.len(), dst.len())?;
    if dst.len() < PAR_MIN_ELEMS {
        return dequantize_serial(dtype, src, dst);
    }
    let chunk_bytes = PAR_CHUNK_ELEMS / dtype.block_size() * dtype.block_bytes();
    src.par_chunks(chunk_bytes)
        .zip(dst.par_chunks_mut(PAR_CHUNK_ELEMS))
        .try_for_each(|(s, d)| dequantize_serial(dtype, s, d))
}

/// Dequantize into a new vector (`src.len()` must be whole blocks).
pub fn dequantize_vec(dtype: DType, src: &[u8]) -> Result<Vec<f32>> {
    let bb = dtype.block_bytes();
    let n = (src.len() / bb)
        .checked_mul(dtype.block_size())
        .ok_or_else(|| quant_error(dtype, format!("{} bytes overflow", src.len())))?;
    let mut out = vec![0.0f32; n];
    dequantize(dtype, src, &mut out)?;
    Ok(out)
}

/// One thread; lengths already checked. On x86-64 with AVX2 the same code is compiled a second
/// time with AVX2 enabled and picked at run time: the decoders are plain scalar Rust that LLVM
/// vectorizes (i8/u8 → f32 widening is much shorter with AVX2 than with the SSE2 baseline), and
/// Rust never contracts mul+add into FMA, so both versions give the same bits.
fn dequantize_serial(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of the
        // target_feature function.
        return unsafe { dequantize_serial_avx2(dtype, src, dst) };
    }
    dequantize_body(dtype, src, dst)
}

/// `dequantize_body` compiled with AVX2 (see `dequantize_serial`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_serial_avx2(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_body(dtype, src, dst)
}

#[inline(always)]
fn dequantize_body(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    match dtype {
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
                *d = f32::from_le_bytes(*c);
            }
        }
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(src) {
            // aligned: half's slice conversion (F16C/NEON, dispatched once per call); its
            // length assertion holds: check_lengths made dst.len() == src.len() / 2
            Ok(h) => h.convert_to_f32_slice(dst),
            Err(_) => {
                for (d, c) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                    *d = f16_field(*c);
                }
            }
        },
        DType::BF16 => {
            // ggml's GGML_BF16_TO_FP32: the upper half of an f32 (NaN payloads kept as is)
            for (d, c) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                *d = f32::from_bits((u16::from_le_bytes(*c) as u32) << 16);
            }
        }
        DType::Q4_0 => legacy::dequant_q4_0(src, dst)?,
        DType::Q4_1 => legacy::dequant_q4_1(src, dst)?,
        DType::Q5_0 => legacy::dequant_q5_0(src, dst)?,
        DType::Q5_1 => legacy::dequant_q5_1(src, dst)?,
        DType::Q8_0 => legacy::dequant_q8_0(src, dst)?,
        DType::Q2_K => kquants::dequant_q2_k(src, dst)?,
        DType::Q3_K => kquants::dequant_q3_k(src, dst)?,
        DType::Q4_K => kquants::dequant_q4_k(src, dst)?,
        DType::Q5_K => kquants::dequant_q5_k(src, dst)?,
        DType::Q6_K => kquants::dequant_q6_k(src, dst)?,
        DType::IQ4_NL => iquants::dequant_iq4_nl(src, dst)?,
        DType::IQ4_XS => iquants::dequant_iq4_xs(src, dst)?,
        DType::I32 | DType::U32 | DType::U8 => {
            return Err(quant_error(dtype, "not a weight type".into()));
        }
    }
    Ok(())
}

/// Quantize `src` into whole blocks of `dtype` (`src.len()` a multiple of the block size).
///
/// Block types follow ggml's `quantize_row_*_ref` exactly (same bytes). Block types reject
/// non-finite inputs and blocks whose f16 scale would overflow (|x| ≳ 65504 × the type's
/// quant range); float types convert with round-to-nearest-even, NaN/inf included.
pub fn quantize(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if !can_quantize(dtype) {
        return Err(quant_error(
            dtype,
            format!(
                "quantization to this type is not implemented (supported: F32, F16, BF16, {})",
                QUANTIZE_BLOCK_TYPES.map(|d| d.name()).join(", ")
            ),
        ));
    }
    let want = dtype.bytes_for(src.len())?;
    if dst.len() != want {
        return Err(quant_error(
            dtype,
            format!(
                "{} elements need {want} bytes, output has {}",
                src.len(),
                dst.len()
            ),
        ));
    }
    if dtype.is_quantized()
        && let Some(i) = src.iter().position(|v| !v.is_finite())
    {
        return Err(quant_error(
            dtype,
            format!("input element {i} is {} (not finite)", src[i]),
        ));
    }
    if src.len() < PAR_MIN_ELEMS {
        return quantize_serial(dtype, src, dst, 0);
    }
    let chunk_bytes = PAR_CHUNK_ELEMS / dtype.block_size() * dtype.block_bytes();
    src.par_chunks(PAR_CHUNK_ELEMS)
        .zip(dst.par_chunks_mut(chunk_bytes))
        .enumerate()
        .try_for_each(|(i, (s, d))| {
            quantize_serial(dtype, s, d, i * PAR_CHUNK_ELEMS / dtype.block_size())
        })
}

/// One thread; lengths already checked. `first_block` numbers blocks in error messages.
fn quantize_serial(dtype: DType, src: &[f32], dst: &mut [u8], first_block: usize) -> Result<()> {
    let overflow = match dtype {
        DType::F32 => {
            for (c, v) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
                *c = v.to_le_bytes();
            }
            None
        }
        DType::F16 => {
            for (c, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *c = f16::from_f32(*v).to_le_bytes();
            }
            None
        }
        DType::BF16 => {
            for (c, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *c = bf16::from_f32(*v).to_le_bytes();
            }
            None
        }
        DType::Q8_0 => legacy::quant_q8_0(src, dst)?,
        DType::Q4_0 => legacy::quant_q4_0(src, dst)?,
        DType::Q4_K => kquant_encode::quant_q4_k(src, dst)?,
        DType::Q5_K => kquant_encode::quant_q5_k(src, dst)?,
        DType::Q6_K => kquant_encode::quant_q6_k(src, dst)?,
        _ => return Err(quant_error(dtype, "quantization not implemented".into())),
    };
    match overflow {
        None => Ok(()),
        Some(b) => {
            let bs = dtype.block_size();
            let blk = &src[b * bs..(b + 1) * bs];
            let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            Err(quant_error(
                dtype,
                format!(
                    "block {} (max |x| = {amax:e}): its f16 scale overflows (limit 65504)",
                    first_block + b
                ),
            ))
        }
    }
}

/// Bytes → typed blocks (alignment 1, so only the length can fail; callers checked it).
fn blocks<B: bytemuck::Pod>(dtype: DType, src: &[u8]) -> Result<&[B]> {
    bytemuck::try_cast_slice(src).map_err(|e| quant_error(dtype, format!("block view: {e}")))
}

/// Mutable bytes → typed blocks.
fn blocks_mut<B: bytemuck::Pod>(dtype: DType, dst: &mut [u8]) -> Result<&mut [B]> {
    bytemuck::try_cast_slice_mut(dst).map_err(|e| quant_error(dtype, format!("block view: {e}")))
}

/// A little-endian f16 field as f32 (subnormals kept).
#[inline(always)]
fn f16_field(h: [u8; 2]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes(h))
}

/// Exact f16 → f32 without branches or CPU-feature dispatch, so it inlines into the block
/// decoders and vectorizes (`half::f16::to_f32` checks for F16C on every call: ~10 ns).
/// The algorithm of Maratyszcza's FP16 library (ggml's `ggml_compute_fp16_to_fp32`): normal
/// values by rebiasing the exponent with one exact multiply by 2^-112, subnormals by writing
/// the mantissa into the low bits of 0.5 and subtracting 0.5 (exact); inf/NaN stay inf/NaN.
/// Checked against `half` for all 65536 bit patterns in the unit tests.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    // exponent += 224 (so 15 → 239), then × 2^-112: net rebias 127 − 15 = 112
    let normalized = f32::from_bits((two_w >> 4) + (0xE0 << 23)) * f32::from_bits(0x0780_0000);
    // subnormal m·2^-24: write m into the mantissa of 0.5 and subtract 0.5
    let denormalized = f32::from_bits((two_w >> 17) | (126 << 23)) - 0.5;
    let bits = if two_w < (1 << 27) {
        denormalized.to_bits()
    } else {
        normalized.to_bits()
    };
    f32::from_bits(sign | bits)
}

/// f32 → little-endian f16 field, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
#[inline(always)]
fn to_f16_field(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// Whether an f16 field is inf or NaN (a scale that overflowed).
#[inline(always)]
fn f16_overflowed(h: [u8; 2]) -> bool {
    !f16::from_le_bytes(h).is_finite()
}
