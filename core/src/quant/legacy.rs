//! The 32-element "legacy" block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (decoders), and the
//! Q8_0 / Q4_0 encoders (ggml's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`).
//!
//! Each decoder reads one block into a `[f32; 32]` with fixed-size loops (no bounds checks,
//! vectorizable). "Nibble order A": element j < 16 is `qs[j] & 0xF`, element j + 16 is
//! `qs[j] >> 4`.

// Index loops mirror ggml's C loops (and the layout comments), which is the point here.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};

use super::{blocks, blocks_mut, f16_field, f16_overflowed, to_f16_field};
use crate::dtype::DType;
use crate::error::Result;

/// Q4_0, 18 bytes: d f16 @0 | qs[16] @2 (nibble order A); w = d·(q − 8).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4_0 {
    pub(crate) d: [u8; 2],
    pub(crate) qs: [u8; 16],
}

/// Q4_1, 20 bytes: d f16 @0 | m f16 @2 | qs[16] @4 (nibble order A); w = d·q + m.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4_1 {
    pub(crate) d: [u8; 2],
    pub(crate) m: [u8; 2],
    pub(crate) qs: [u8; 16],
}

/// Q5_0, 22 bytes: d f16 @0 | qh u32 @2 (bit e = bit 4 of element e) | qs[16] @6;
/// w = d·(q − 16).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5_0 {
    pub(crate) d: [u8; 2],
    pub(crate) qh: [u8; 4],
    pub(crate) qs: [u8; 16],
}

/// Q5_1, 24 bytes: d f16 @0 | m f16 @2 | qh u32 @4 | qs[16] @8; w = d·q + m.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5_1 {
    pub(crate) d: [u8; 2],
    pub(crate) m: [u8; 2],
    pub(crate) qh: [u8; 4],
    pub(crate) qs: [u8; 16],
}

/// Q8_0, 34 bytes: d f16 @0 | qs i8[32] @2; w = d·qs[e].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ8_0 {
    pub(crate) d: [u8; 2],
    pub(crate) qs: [i8; 32],
}

// ---------------------------------------------------------------------------------------------
// Decoders. src: [n_blocks × block bytes], dst: [n_blocks × 32] f32 (lengths checked by mod.rs).
// ---------------------------------------------------------------------------------------------

#[inline(always)]
pub(crate) fn dequant_q4_0(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ4_0] = blocks(DType::Q4_0, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        let d = f16_field(b.d);
        for j in 0..16 {
            let q = b.qs[j];
            y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q4_1(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ4_1] = blocks(DType::Q4_1, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        let d = f16_field(b.d);
        let m = f16_field(b.m);
        for j in 0..16 {
            let q = b.qs[j];
            y[j] = (q & 0xF) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
    Ok(())
}

/// The 5-bit quants of a Q5 block: low nibbles from `qs`, bit 4 of element e from bit e of
/// `qh` (tested with a constant mask per element, which vectorizes, unlike variable shifts).
#[inline(always)]
fn q5_quants(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        let h0 = if qh & (1 << j) != 0 { 0x10 } else { 0 };
        let h1 = if qh & (1 << (j + 16)) != 0 { 0x10 } else { 0 };
        q[j] = (qs[j] & 0xF) | h0;
        q[j + 16] = (qs[j] >> 4) | h1;
    }
    q
}

#[inline(always)]
pub(crate) fn dequant_q5_0(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ5_0] = blocks(DType::Q5_0, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        let d = f16_field(b.d);
        let q = q5_quants(b.qh, &b.qs);
        for j in 0..32 {
            y[j] = (q[j] as i32 - 16) as f32 * d;
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q5_1(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ5_1] = blocks(DType::Q5_1, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        let d = f16_field(b.d);
        let m = f16_field(b.m);
        let q = q5_quants(b.qh, &b.qs);
        for j in 0..32 {
            y[j] = q[j] as f32 * d + m;
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q8_0(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ8_0] = blocks(DType::Q8_0, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        let d = f16_field(b.d);
        for j in 0..32 {
            y[j] = b.qs[j] as f32 * d;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoders: src [n_blocks × 32] f32 (finite), dst [n_blocks × block bytes]. They return the
// index of the first block whose f16 scale overflowed, if any (mod.rs turns it into an error).
// ---------------------------------------------------------------------------------------------

/// ggml `quantize_row_q8_0_ref`: d = amax/127, q = roundf(x/d) (half away from zero).
pub(crate) fn quant_q8_0(src: &[f32], dst: &mut [u8]) -> Result<Option<usize>> {
    let ys: &mut [BlockQ8_0] = blocks_mut(DType::Q8_0, dst)?;
    let mut overflow = None;
    for (i, (x, y)) in src.as_chunks::<32>().0.iter().zip(ys).enumerate() {
        let mut amax = 0.0f32;
        for v in x {
            // ggml: amax = MAX(amax, fabsf(v)), MAX(a, b) = a > b ? a : b
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = to_f16_field(d);
        for j in 0..32 {
            // f32::round rounds half away from zero, like roundf; |x·id| ≤ 127 here.
            y.qs[j] = (x[j] * id).round() as i8;
        }
        if overflow.is_none() && f16_overflowed(y.d) {
            overflow = Some(i);
        }
    }
    Ok(overflow)
}

/// ggml `quantize_row_q4_0_ref`: d = (the signed value of max |x|, first one wins) / −8,
/// q = min(15, (int8)(x/d + 8.5)) (truncation toward zero).
pub(crate) fn quant_q4_0(src: &[f32], dst: &mut [u8]) -> Result<Option<usize>> {
    let ys: &mut [BlockQ4_0] = blocks_mut(DType::Q4_0, dst)?;
    let mut overflow = None;
    for (i, (x, y)) in src.as_chunks::<32>().0.iter().zip(ys).enumerate() {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        // An all-zero block gives d = 0 / −8 = −0.0, as in ggml and gguf-py.
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = to_f16_field(d);
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[j + 16] * id;
            // C: MIN(15, (int8_t)(x + 8.5f)); the value is in [0.5, 16.5] for finite input.
            let xi0 = (((x0 + 8.5) as i32) as i8).min(15) as u8;
            let xi1 = (((x1 + 8.5) as i32) as i8).min(15) as u8;
            y.qs[j] = xi0 | (xi1 << 4);
        }
        if overflow.is_none() && f16_overflowed(y.d) {
            overflow = Some(i);
        }
    }
    Ok(overflow)
}
