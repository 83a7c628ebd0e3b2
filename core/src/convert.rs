//! Host-side conversions between f32 and the f16/bf16 storage types.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Decode f32/f16/bf16 little-endian bytes as f32 values (other dtypes yield nothing).
pub fn to_f32_iter(dtype: DType, bytes: &[u8]) -> Box<dyn Iterator<Item = f32> + '_> {
    match dtype {
        DType::F32 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        _ => Box::new(std::iter::empty()),
    }
}

/// f32/f16/bf16 bytes to a Vec<f32>.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    if !dtype.is_float() {
        return Err(Error::Invalid(format!(
            "cannot convert {dtype} to f32 elementwise"
        )));
    }
    Ok(to_f32_iter(dtype, bytes).collect())
}

/// Encode f32 values as f32/f16/bf16 little-endian bytes (round to nearest even).
pub fn from_f32(dtype: DType, v: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => {
            return Err(Error::Invalid(format!(
                "cannot convert f32 to {dtype} elementwise"
            )));
        }
    })
}

/// i32 values as little-endian bytes.
pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
