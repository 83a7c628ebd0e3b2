//! The 256-element k-quant super-block formats Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: block structs and
//! decoders (ggml's `dequantize_row_q*_K`). The encoders are in `kquant_encode.rs`.
//!
//! Each decoder turns one super-block into a `[f32; 256]` with fixed-size loops: scales first
//! (16 or 8 small integers), then straight-line quant unpacking the compiler can vectorize.
//! Every product d·sc·q is exact in f32, so the result does not depend on evaluation order.

// Index loops mirror ggml's C loops (and the layout comments), which is the point here.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};

use super::{blocks, f16_field};
use crate::dtype::DType;
use crate::error::Result;

/// Q2_K, 84 bytes: scales u8[16] @0 (low nibble scale, high nibble min, one per 16 elements) |
/// qs[64] @16 | d f16 @80 | dmin f16 @82. Element e = 128h + 32s + l (h < 2, s < 4, l < 32):
/// q = (qs[32h + l] >> 2s) & 3; w = d·(sc & 0xF)·q − dmin·(sc >> 4), sc = scales[e / 16].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ2K {
    pub(crate) scales: [u8; 16],
    pub(crate) qs: [u8; 64],
    pub(crate) d: [u8; 2],
    pub(crate) dmin: [u8; 2],
}

/// Q3_K, 110 bytes: hmask[32] @0 | qs[64] @32 | scales[12] @96 (16 six-bit scales, biased by
/// 32) | d f16 @108. Low 2 bits as Q2_K; a *clear* hmask bit (hmask[e % 32] >> (e / 32)) means
/// q − 4; w = d·sc_{e/16}·q.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ3K {
    pub(crate) hmask: [u8; 32],
    pub(crate) qs: [u8; 64],
    pub(crate) scales: [u8; 12],
    pub(crate) d: [u8; 2],
}

/// Q4_K, 144 bytes: d f16 @0 | dmin f16 @2 | scales[12] @4 (8 six-bit (scale, min) pairs) |
/// qs[128] @16. Chunk c < 4: element 64c + l = low nibble of qs[32c + l], 64c + 32 + l = high
/// nibble; w = d·sc_{e/32}·q − dmin·m_{e/32}.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4K {
    pub(crate) d: [u8; 2],
    pub(crate) dmin: [u8; 2],
    pub(crate) scales: [u8; 12],
    pub(crate) qs: [u8; 128],
}

/// Q5_K, 176 bytes: d f16 @0 | dmin f16 @2 | scales[12] @4 (as Q4_K) | qh[32] @16 |
/// qs[128] @48 (nibbles as Q4_K); q = nibble | ((qh[e % 32] >> (e / 32)) & 1) << 4.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5K {
    pub(crate) d: [u8; 2],
    pub(crate) dmin: [u8; 2],
    pub(crate) scales: [u8; 12],
    pub(crate) qh: [u8; 32],
    pub(crate) qs: [u8; 128],
}

/// Q6_K, 210 bytes: ql[128] @0 | qh[64] @128 | scales i8[16] @192 | d f16 @208. Half h < 2,
/// l < 32, L = ql + 64h, H = qh + 32h, e0 = 128h + l: e0 ← L[l] low | (H[l] & 3) << 4;
/// e0+32 ← L[l+32] low | (H[l] >> 2 & 3) << 4; e0+64 ← L[l] high | (H[l] >> 4 & 3) << 4;
/// e0+96 ← L[l+32] high | (H[l] >> 6) << 4; w = d·scales[e/16]·(q − 32).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ6K {
    pub(crate) ql: [u8; 128],
    pub(crate) qh: [u8; 64],
    pub(crate) scales: [i8; 16],
    pub(crate) d: [u8; 2],
}

/// Q4_K/Q5_K scale and min of sub-block j < 8 (ggml `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The 16 signed Q3_K sub-block scales (6-bit, minus 32).
#[inline(always)]
fn q3k_scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo4 = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let hi2 = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (lo4 | (hi2 << 4)) as i32 - 32;
    }
    out
}

// src: [n_blocks × block bytes], dst: [n_blocks × 256] f32 (lengths checked by mod.rs).

#[inline(always)]
pub(crate) fn dequant_q2_k(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ2K] = blocks(DType::Q2_K, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let dmin = f16_field(b.dmin);
        // 16 groups of 16 elements; group g = 8h + 2s + half has scales[g]
        let mut dl = [0.0f32; 16];
        let mut ml = [0.0f32; 16];
        for g in 0..16 {
            dl[g] = d * (b.scales[g] & 0xF) as f32;
            ml[g] = dmin * (b.scales[g] >> 4) as f32;
        }
        let ys = y.as_chunks_mut::<16>().0;
        // one qs byte holds the 2-bit quants of elements 128h + 32s + 16half + l, s = 0..4:
        // iterate over bytes and write the four outputs with constant shifts (vectorizes)
        for h in 0..2 {
            for half in 0..2 {
                let g = 8 * h + half;
                let qs = &b.qs[32 * h + 16 * half..32 * h + 16 * half + 16];
                for (l, &q) in qs.iter().enumerate() {
                    ys[g][l] = dl[g] * (q & 3) as f32 - ml[g];
                    ys[g + 2][l] = dl[g + 2] * ((q >> 2) & 3) as f32 - ml[g + 2];
                    ys[g + 4][l] = dl[g + 4] * ((q >> 4) & 3) as f32 - ml[g + 4];
                    ys[g + 6][l] = dl[g + 6] * (q >> 6) as f32 - ml[g + 6];
                }
            }
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q3_k(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ3K] = blocks(DType::Q3_K, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let sc = q3k_scales(&b.scales);
        let mut dl = [0.0f32; 16];
        for g in 0..16 {
            dl[g] = d * sc[g] as f32;
        }
        let ys = y.as_chunks_mut::<16>().0;
        // as Q2_K; the high bit of element 128h + 32s + l is bit 4h + s of hmask[l], and a
        // clear bit subtracts 4: q = q2 − 4 + 4·bit
        for h in 0..2 {
            for half in 0..2 {
                let g = 8 * h + half;
                let o = 16 * half;
                for l in 0..16 {
                    let q = b.qs[32 * h + o + l] as i32;
                    let m = (b.hmask[o + l] >> (4 * h)) as i32;
                    ys[g][l] = dl[g] * ((q & 3) - 4 + 4 * (m & 1)) as f32;
                    ys[g + 2][l] = dl[g + 2] * (((q >> 2) & 3) - 4 + 2 * (m & 2)) as f32;
                    ys[g + 4][l] = dl[g + 4] * (((q >> 4) & 3) - 4 + (m & 4)) as f32;
                    ys[g + 6][l] = dl[g + 6] * ((q >> 6) - 4 + ((m & 8) >> 1)) as f32;
                }
            }
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ4K] = blocks(DType::Q4_K, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let dmin = f16_field(b.dmin);
        let ys = y.as_chunks_mut::<32>().0;
        let qs = b.qs.as_chunks::<32>().0;
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[c];
            let ylo = &mut ys[2 * c];
            for l in 0..32 {
                ylo[l] = d1 * (q[l] & 0xF) as f32 - mm1;
            }
            let yhi = &mut ys[2 * c + 1];
            for l in 0..32 {
                yhi[l] = d2 * (q[l] >> 4) as f32 - mm2;
            }
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ5K] = blocks(DType::Q5_K, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let dmin = f16_field(b.dmin);
        let ys = y.as_chunks_mut::<32>().0;
        let qs = b.qs.as_chunks::<32>().0;
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
            // high bits of this chunk: bit 2c (low nibbles) and 2c + 1 (high nibbles) of qh[l]
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let q = &qs[c];
            let ylo = &mut ys[2 * c];
            for l in 0..32 {
                let hi = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                ylo[l] = d1 * ((q[l] & 0xF) + hi) as f32 - mm1;
            }
            let yhi = &mut ys[2 * c + 1];
            for l in 0..32 {
                let hi = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                yhi[l] = d2 * ((q[l] >> 4) + hi) as f32 - mm2;
            }
        }
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) -> Result<()> {
    let bs: &[BlockQ6K] = blocks(DType::Q6_K, src)?;
    for (b, y) in bs.iter().zip(dst.as_chunks_mut::<256>().0) {
        let d = f16_field(b.d);
        let mut dl = [0.0f32; 16];
        for g in 0..16 {
            dl[g] = d * b.scales[g] as f32;
        }
        // y as 16 groups of 16: element 128h + 32r + 16half + l is in group 8h + 2r + half
        let ys = y.as_chunks_mut::<16>().0;
        let ql = b.ql.as_chunks::<64>().0;
        let qh = b.qh.as_chunks::<32>().0;
        for h in 0..2 {
            let (lq, hq) = (&ql[h], &qh[h]);
            for half in 0..2 {
                let g = 8 * h + half;
                for l in 0..16 {
                    let k = 16 * half + l;
                    let (a, c, hb) = (lq[k] as i32, lq[k + 32] as i32, hq[k] as i32);
                    let q1 = ((a & 0xF) | ((hb & 3) << 4)) - 32;
                    let q2 = ((c & 0xF) | (((hb >> 2) & 3) << 4)) - 32;
                    let q3 = ((a >> 4) | (((hb >> 4) & 3) << 4)) - 32;
                    let q4 = ((c >> 4) | ((hb >> 6) << 4)) - 32;
                    ys[g][l] = dl[g] * q1 as f32;
                    ys[g + 2][l] = dl[g + 2] * q2 as f32;
                    ys[g + 4][l] = dl[g + 4] * q3 as f32;
                    ys[g + 6][l] = dl[g + 6] * q4 as f32;
                }
            }
        }
    }
    Ok(())
}
