//! `copy`: conversion among f32/f16/bf16 (round to nearest even), and the float-slice helpers
//! the other reference ops use to read and write f32/f16/bf16 buffers (the KV cache).
//!
//! f16/bf16 → f32 is exact; f32 → f16/bf16 rounds to nearest even (the `half` crate's
//! conversions, which use F16C where the CPU has it and give the same bits either way); f16 ↔
//! bf16 goes through f32, so it is rounded once.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::ReferenceBackend;
use crate::backend::{OpKind, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

/// Elements converted per parallel task.
const CHUNK: usize = 1 << 14;

/// A read-only f32/f16/bf16 slice.
#[derive(Clone, Copy)]
pub(super) enum Floats<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// A writable f32/f16/bf16 slice.
pub(super) enum FloatsMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

fn cast_err(op: OpKind, what: &str, e: bytemuck::PodCastError) -> Error {
    Error::shape(
        op,
        format!("{what}: cannot view the bytes as elements ({e})"),
    )
}

fn not_float(op: OpKind, what: &str, dtype: DType) -> Error {
    Error::shape(
        op,
        format!("{what} has dtype {dtype}, expected F32, F16 or BF16"),
    )
}

impl<'a> Floats<'a> {
    /// View `bytes` (aligned: views and host buffers are) as `dtype` elements.
    pub(super) fn new(op: OpKind, what: &str, dtype: DType, bytes: &'a [u8]) -> Result<Self> {
        let e = |err| cast_err(op, what, err);
        Ok(match dtype {
            DType::F32 => Floats::F32(bytemuck::try_cast_slice(bytes).map_err(e)?),
            DType::F16 => Floats::F16(bytemuck::try_cast_slice(bytes).map_err(e)?),
            DType::BF16 => Floats::BF16(bytemuck::try_cast_slice(bytes).map_err(e)?),
            _ => return Err(not_float(op, what, dtype)),
        })
    }

    /// Decode elements `start .. start + dst.len()` into `dst`. The caller has checked the range
    /// (it lies inside a validated view).
    pub(super) fn read(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Floats::F32(s) => dst.copy_from_slice(&s[start..end]),
            Floats::F16(s) => s[start..end].convert_to_f32_slice(dst),
            Floats::BF16(s) => s[start..end].convert_to_f32_slice(dst),
        }
    }
}

impl<'a> FloatsMut<'a> {
    pub(super) fn new(op: OpKind, what: &str, dtype: DType, bytes: &'a mut [u8]) -> Result<Self> {
        let e = |err| cast_err(op, what, err);
        Ok(match dtype {
            DType::F32 => FloatsMut::F32(bytemuck::try_cast_slice_mut(bytes).map_err(e)?),
            DType::F16 => FloatsMut::F16(bytemuck::try_cast_slice_mut(bytes).map_err(e)?),
            DType::BF16 => FloatsMut::BF16(bytemuck::try_cast_slice_mut(bytes).map_err(e)?),
            _ => return Err(not_float(op, what, dtype)),
        })
    }

    /// Encode `src` into elements `start .. start + src.len()` (round to nearest even). The
    /// caller has checked the range.
    pub(super) fn write(&mut self, start: usize, src: &[f32]) {
        let end = start + src.len();
        match self {
            FloatsMut::F32(d) => d[start..end].copy_from_slice(src),
            FloatsMut::F16(d) => d[start..end].convert_from_f32_slice(src),
            FloatsMut::BF16(d) => d[start..end].convert_from_f32_slice(src),
        }
    }
}

/// dst = src converted: any of f32/f16/bf16 to any, same element count. Parallel over chunks
/// of `CHUNK` elements; each element is converted on its own, so the result does not depend
/// on the thread count.
pub(super) fn convert(src: Floats<'_>, dst: FloatsMut<'_>) {
    match dst {
        FloatsMut::F32(d) => d
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, dc)| src.read(i * CHUNK, dc)),
        FloatsMut::F16(d) => d.par_chunks_mut(CHUNK).enumerate().for_each_init(
            Vec::new,
            |buf: &mut Vec<f32>, (i, dc)| {
                buf.resize(dc.len(), 0.0);
                src.read(i * CHUNK, buf);
                dc.convert_from_f32_slice(buf);
            },
        ),
        FloatsMut::BF16(d) => d.par_chunks_mut(CHUNK).enumerate().for_each_init(
            Vec::new,
            |buf: &mut Vec<f32>, (i, dc)| {
                buf.resize(dc.len(), 0.0);
                src.read(i * CHUNK, buf);
                dc.convert_from_f32_slice(buf);
            },
        ),
    }
}

/// The `copy` op: validate, then convert.
pub(super) fn copy(b: &ReferenceBackend, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
    let op = OpKind::Copy;
    b.check_dev(op, src.device())?;
    b.check_dev(op, dst.device())?;
    let floats = [DType::F32, DType::F16, DType::BF16];
    check::dtype(op, "src", src.dtype(), &floats)?;
    check::dtype(op, "dst", dst.dtype(), &floats)?;
    check::eq(op, "element count of src vs dst", src.numel(), dst.numel())?;
    let a = b.access();
    let s = Floats::new(op, "src", src.dtype(), a.input(&src)?)?;
    let d = FloatsMut::new(op, "dst", dst.dtype(), a.output(&dst)?)?;
    convert(s, d);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_f16_and_bf16_round_to_nearest_even() {
        // 1 + 2^-11 is exactly halfway between two f16 values: ties go to the even one (1.0);
        // 1 + 3·2^-11 ties to 1 + 2^-9 (even mantissa).
        let src = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            65520.0,
            -0.0,
        ];
        let mut h = [f16::ZERO; 4];
        convert(Floats::F32(&src), FloatsMut::F16(&mut h));
        assert_eq!(h[0].to_f32(), 1.0);
        assert_eq!(h[1].to_f32(), 1.0 + 2f32.powi(-9));
        assert!(h[2].to_f32().is_infinite()); // 65520 rounds up past f16::MAX
        assert!(h[3].is_sign_negative());

        // bf16 has 8 mantissa bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        let src = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        let mut bh = [bf16::ZERO; 2];
        convert(Floats::F32(&src), FloatsMut::BF16(&mut bh));
        assert_eq!(bh[0].to_f32(), 1.0);
        assert_eq!(bh[1].to_f32(), 1.0 + 2f32.powi(-6));
    }

    #[test]
    fn f16_to_bf16_goes_through_f32_and_chunks_cover_everything() {
        let n = CHUNK * 2 + 3;
        let src: Vec<f16> = (0..n)
            .map(|i| f16::from_f32(i as f32 * 0.37 - 50.0))
            .collect();
        let mut dst = vec![bf16::from_f32(f32::NAN); n];
        convert(Floats::F16(&src), FloatsMut::BF16(&mut dst));
        for (s, d) in src.iter().zip(&dst) {
            assert_eq!(*d, bf16::from_f32(s.to_f32()));
        }
        let mut back = vec![f32::NAN; n];
        convert(Floats::BF16(&dst), FloatsMut::F32(&mut back));
        for (d, b) in dst.iter().zip(&back) {
            assert_eq!(d.to_f32(), *b);
        }
    }
}
