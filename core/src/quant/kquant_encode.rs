//! Q4_K, Q5_K and Q6_K encoders, transcribed from ggml's `quantize_row_q4_K_ref`,
//! `quantize_row_q5_K_ref` and `quantize_row_q6_K_ref` with their helpers `nearest_int`,
//! `make_qkx2_quants` (Q4_K/Q5_K: weighted scale+min search) and `make_qx_quants` (Q6_K:
//! symmetric scale search, rmse_type 1).
//!
//! Bytes equal to llama.cpp's only if every f32 operation happens in the same order with the
//! same rounding: each expression below mirrors the C one (left-to-right, no FMA; Rust never
//! contracts `a*b + c`), integer→float conversions sit where C's usual conversions put them,
//! and reductions are sequential loops. Do not "simplify" the arithmetic here.

// Index loops mirror ggml's C loops (and the layout comments), which is the point here.
#![allow(clippy::needless_range_loop)]

use super::kquants::{BlockQ4K, BlockQ5K, BlockQ6K, scale_min_k4};
use super::{blocks_mut, f16_field, f16_overflowed, to_f16_field};
use crate::dtype::DType;
use crate::error::Result;

/// ggml `GROUP_MAX_EPS`: a group with max |x| below this is treated as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `nearest_int`: round to nearest, ties to even, by adding 1.5·2^23 and reading the
/// mantissa. Exact for |x| ≤ 2^22; outside that range it returns what the C code returns
/// (the same bits), never panics.
#[inline(always)]
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// ggml `make_qkx2_quants` for n = 32, use_mad = false: find (scale, min) minimizing the
/// weighted squared error of x ≈ scale·L + min, L in 0..=nmax, min ≤ 0, trying
/// iscale = (rmin + rdelta·is + nmax)/(max − min) for is = 0..=nstep. Returns (scale, −min)
/// and leaves the chosen quants in `l`.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    weights: &[f32; 32],
    l: &mut [u8; 32],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let li = nearest_int(iscale * (x[i] - min));
        l[i] = li.clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        let diff = diff * diff;
        best_error += weights[i] * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let w = weights[i];
            let lf = li as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                *l = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qx_quants(16, 32, x, L, rmse_type = 1, qw = NULL)`: symmetric 6-bit quants with
/// weights x², trying iscale = −(32 + 0.1·is)/max for is = −9..=9. Leaves L + 32 in `l` and
/// returns the scale.
fn make_qx_quants_q6(x: &[f32; 16], l: &mut [i8; 16]) -> f32 {
    const NMAX: i32 = 32;
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let mut iscale = -NMAX as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..16 {
        let li = quant(iscale, x[i]);
        l[i] = (li + NMAX) as i8;
        let w = x[i] * x[i];
        let lf = li as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..16 {
            let lf = quant(iscale, x[i]) as f32;
            let w = x[i] * x[i];
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..16 {
                l[i] = (quant(iscale, x[i]) + NMAX) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The shared first half of Q4_K/Q5_K: per 32-element sub-block (scale, min) by
/// `make_qkx2_quants` with weights av_x + |x|, then 6-bit scales/mins packed into `packed`,
/// the f16 super-scales d and dmin, and the final quants in `l` (re-quantized with the
/// rounded scales). Returns (d, dmin) as f16 fields.
fn qkx2_super_block(
    x: &[f32; 256],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    packed: &mut [u8; 12],
    l: &mut [u8; 256],
) -> ([u8; 2], [u8; 2]) {
    let xs = x.as_chunks::<32>().0;
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, lj) in l.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let xj = &xs[j];
        let mut sum_x2 = 0.0f32;
        for v in xj {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, v) in weights.iter_mut().zip(xj) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xj, &weights, lj, rmin, 0.1, nstep);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    *packed = [0u8; 12];
    for j in 0..8 {
        // C: uint8_t ls = nearest_int(...) (modular conversion), then MIN(63, ls)
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = to_f16_field(max_scale / 63.0);
    let dmin = to_f16_field(max_min / 63.0);
    let (df, dminf) = (f16_field(d), f16_field(dmin));
    for (j, lj) in l.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let (sc, m) = scale_min_k4(j, packed);
        let dj = df * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dminf * m as f32;
        for (li, v) in lj.iter_mut().zip(&xs[j]) {
            *li = nearest_int((v + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin)
}

// src: [n_blocks × 256] f32 (finite), dst: [n_blocks × block bytes]. Each returns the index of
// the first block whose f16 scale overflowed, if any.

/// ggml `quantize_row_q4_K_ref`.
pub(crate) fn quant_q4_k(src: &[f32], dst: &mut [u8]) -> Result<Option<usize>> {
    let ys: &mut [BlockQ4K] = blocks_mut(DType::Q4_K, dst)?;
    let mut overflow = None;
    for (i, (x, y)) in src.as_chunks::<256>().0.iter().zip(ys).enumerate() {
        let mut l = [0u8; 256];
        let (d, dmin) = qkx2_super_block(x, 15, -1.0, 20, &mut y.scales, &mut l);
        y.d = d;
        y.dmin = dmin;
        let ls = l.as_chunks::<32>().0;
        for (c, q) in y.qs.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            for k in 0..32 {
                q[k] = ls[2 * c][k] | (ls[2 * c + 1][k] << 4);
            }
        }
        if overflow.is_none() && (f16_overflowed(d) || f16_overflowed(dmin)) {
            overflow = Some(i);
        }
    }
    Ok(overflow)
}

/// ggml `quantize_row_q5_K_ref`.
pub(crate) fn quant_q5_k(src: &[f32], dst: &mut [u8]) -> Result<Option<usize>> {
    let ys: &mut [BlockQ5K] = blocks_mut(DType::Q5_K, dst)?;
    let mut overflow = None;
    for (i, (x, y)) in src.as_chunks::<256>().0.iter().zip(ys).enumerate() {
        let mut l = [0u8; 256];
        let (d, dmin) = qkx2_super_block(x, 31, -0.5, 15, &mut y.scales, &mut l);
        y.d = d;
        y.dmin = dmin;
        y.qh = [0u8; 32];
        let ls = l.as_chunks::<32>().0;
        for (c, q) in y.qs.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for k in 0..32 {
                let mut l1 = ls[2 * c][k];
                if l1 > 15 {
                    l1 -= 16;
                    y.qh[k] |= m1;
                }
                let mut l2 = ls[2 * c + 1][k];
                if l2 > 15 {
                    l2 -= 16;
                    y.qh[k] |= m2;
                }
                q[k] = l1 | (l2 << 4);
            }
        }
        if overflow.is_none() && (f16_overflowed(d) || f16_overflowed(dmin)) {
            overflow = Some(i);
        }
    }
    Ok(overflow)
}

/// ggml `quantize_row_q6_K_ref`.
pub(crate) fn quant_q6_k(src: &[f32], dst: &mut [u8]) -> Result<Option<usize>> {
    let ys: &mut [BlockQ6K] = blocks_mut(DType::Q6_K, dst)?;
    let mut overflow = None;
    for (i, (x, y)) in src.as_chunks::<256>().0.iter().zip(ys).enumerate() {
        let xs = x.as_chunks::<16>().0;
        let mut l = [[0i8; 16]; 16];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let s = make_qx_quants_q6(&xs[ib], &mut l[ib]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            // all-zero block: every byte 0 (d = +0.0)
            *y = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        y.d = to_f16_field(1.0 / iscale);
        for ib in 0..16 {
            // C: int8_t = MIN(127, nearest_int(...)) (modular conversion)
            y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        let df = f16_field(y.d);
        for j in 0..16 {
            let d = df * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let li = nearest_int(xs[j][ii] / d).clamp(-32, 31);
                l[j][ii] = (li + 32) as i8;
            }
        }
        // flat view of the 256 quants (0..=63)
        let lf = |e: usize| l[e / 16][e % 16] as u8;
        let ql = y.ql.as_chunks_mut::<64>().0;
        let qh = y.qh.as_chunks_mut::<32>().0;
        for h in 0..2 {
            let base = 128 * h;
            for k in 0..32 {
                let (q1, q2) = (lf(base + k), lf(base + k + 32));
                let (q3, q4) = (lf(base + k + 64), lf(base + k + 96));
                ql[h][k] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                ql[h][k + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                qh[h][k] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
        if overflow.is_none() && f16_overflowed(y.d) {
            overflow = Some(i);
        }
    }
    Ok(overflow)
}
