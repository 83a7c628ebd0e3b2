//! The non-linear 4-bit formats IQ4_NL (32 elements) and IQ4_XS (256 elements): block structs
//! and decoders (ggml's `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`). A nibble indexes
//! the 16-entry table `KVALUES_IQ4NL`; nibble order A inside each 32-element (sub-)block.

use bytemuck::{Pod, Zeroable};

use super::{blocks, f16_field};
use crate::dtype::DType;
use crate::error::Result;

/// ggml's `kvalues_iq4nl`.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL, 18 bytes: d f16 @0 | qs[16] @2 (nibble order A); w = d·kvalues[nibble].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockIq4Nl {
    pub(crate) d: [u8; 2],
    pub(crate) qs: [u8; 16],
}

/// IQ4_XS, 136 bytes: d f16 @0 | scales_h u16 @2 | scales_l[4] @4 | qs[128] @8. Sub-block
/// ib < 8: ls = ((scales_l[ib/2] >> 4(ib%2)) & 0xF) | ((scales_h >> 2ib) & 3) << 4, uses
/// qs[16ib..16ib+16] in nibble order A; w = d·(ls − 32)·kvalues[nibble].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockIq4Xs {
    pub(crate) d: [u8; 2],
    pub(crate) scales_h: [u8; 2],
    pub(crate) scales_l: [u8; 4],
    pub(crate) qs: [u8; 128],
}

/// One 32-element group: y[j] = dl·kv[qs[j] & 0xF], y[j + 16] = dl·kv[qs[j] >> 4].
#[inline(always)]
fn decode_group(dl: f32, qs: &[u8; 16], y: &mut [f32; 32]) {
    // the table scaled once per group: 16 multiplies instead of 32
    let mut t = [0.0f32; 16];
    for (t, k) in t.iter_mut().zip(KVALUES_IQ4NL) {
        *t = dl * k as f32;
    }
    for j in 0..16 {
        y[j] = t[(qs[j] & 0xF) as usize];
        y[j + 16] = t[(qs[j] >> 4) as usize];
    }
}

// src: [n_blocks × block bytes], dst: [n_blocks × block elements] f32 (checked by mod.rs).

#[inline(always)]
pub(crate) fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockIq4Nl] = blocks(DType::IQ4_NL, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<32>().0) {
        decode_group(f16_field(b.d), &b.qs, y);
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockIq4Xs] = blocks(DType::IQ4_XS, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let scales_h = u16::from_le_bytes(b.scales_h);
        let qs = b.qs.as_chunks::<16>().0;
        for (ib, yg) in y.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            let lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let hi = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i32 - 32;
            decode_group(d * ls as f32, &qs[ib], yg);
        }
    }
    Ok(())
}
