//! Unit tests for edge cases; the bit-exact checks against gguf-py / ggml are in
//! `core/tests/quant_vectors.rs`.

use half::f16;

use super::*;

fn roundtrip(dt: DType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; dt.bytes_for(x.len()).unwrap()];
    quantize(dt, x, &mut q).unwrap();
    let y = dequantize_vec(dt, &q).unwrap();
    (q, y)
}

/// A small deterministic generator (xorshift) so the tests need no data files.
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // uniform in [-1, 1)
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0, |a, v| a.max(v.abs()))
}

#[test]
fn all_zero_blocks_give_zeros_without_nan() {
    let x = vec![0.0f32; 512];
    for dt in QUANTIZE_BLOCK_TYPES {
        let (q, y) = roundtrip(dt, &x);
        assert!(y.iter().all(|v| *v == 0.0), "{dt}: {y:?}");
        // no NaN or inf in any f16 field: every byte pattern below is the ggml one
        match dt {
            // d = 0 / −8 = −0.0 (f16 0x8000), every quant 8 (nibbles 0x88), as ggml and gguf-py
            DType::Q4_0 => {
                for b in q.chunks_exact(18) {
                    assert_eq!(&b[..2], &[0x00, 0x80]);
                    assert!(b[2..].iter().all(|v| *v == 0x88));
                }
            }
            // Q6_K memsets the block; Q8_0 has d = 0 and q = 0; Q4_K/Q5_K d = dmin = 0, q = 0
            _ => assert!(q.iter().all(|v| *v == 0), "{dt}: {q:?}"),
        }
    }
}

#[test]
fn zero_sub_blocks_inside_nonzero_blocks() {
    // first half of every 256-block zero, second half noise: zero sub-blocks must stay 0
    let mut x = noise(1024, 3, 0.05);
    for blk in x.chunks_exact_mut(256) {
        blk[..128].fill(0.0);
    }
    for dt in QUANTIZE_BLOCK_TYPES {
        let (_, y) = roundtrip(dt, &x);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert!(b.is_finite(), "{dt}[{i}] = {b}");
            if *a == 0.0 && i % 256 < 128 {
                assert_eq!(*b, 0.0, "{dt}[{i}]");
            }
        }
    }
}

#[test]
fn round_trip_error_is_bounded_by_the_scale() {
    let x = noise(4096, 11, 0.04);
    // worst-case |error| / max|x| per block, per type
    let limits = [
        // Q8_0: half a step plus the f16 rounding of d (127·d·2^-11)
        (DType::Q8_0, 0.6 / 127.0),
        // Q4_0/Q6_K: the side opposite the max magnitude clamps at one step less
        (DType::Q4_0, 0.126),
        (DType::Q4_K, 0.12),
        (DType::Q5_K, 0.06),
        (DType::Q6_K, 0.04),
    ];
    for (dt, lim) in limits {
        let (_, y) = roundtrip(dt, &x);
        let bs = dt.block_size();
        for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
            let amax = max_abs(xb);
            let err = xb
                .iter()
                .zip(yb)
                .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err <= lim * amax, "{dt}: err {err:e} > {lim} × {amax:e}");
        }
    }
}

#[test]
fn tiny_values_keep_subnormal_f16_scales() {
    // amax ≈ 1e-5: Q8_0's d = amax/127 ≈ 8e-8 is an f16 subnormal (< 6.1e-5)
    let x = noise(256, 5, 1e-5);
    let (q, y) = roundtrip(DType::Q8_0, &x);
    let d = f16::from_le_bytes([q[0], q[1]]);
    assert!(
        d != f16::ZERO && !d.is_normal(),
        "d = {d} should be an f16 subnormal"
    );
    assert!(y.iter().any(|v| *v != 0.0));
    // the decoded value is exactly q·d with the subnormal d
    assert_eq!(y[0], q[2] as i8 as f32 * d.to_f32());
    for dt in QUANTIZE_BLOCK_TYPES {
        let (_, y) = roundtrip(dt, &x);
        assert!(y.iter().all(|v| v.is_finite()), "{dt}");
        // subnormal scales are coarse, but the values stay within the input's range
        assert!(max_abs(&y) <= 2.0 * max_abs(&x), "{dt}");
    }
    // values so small that every f16 scale underflows to 0 decode to 0, never NaN
    let x = noise(256, 6, 1e-12);
    for dt in QUANTIZE_BLOCK_TYPES {
        let (_, y) = roundtrip(dt, &x);
        assert!(y.iter().all(|v| *v == 0.0), "{dt}: {y:?}");
    }
}

#[test]
fn huge_values_quantize_or_fail_clearly() {
    // large but representable: relative error like any other scale
    let x = noise(256, 7, 3000.0);
    for dt in QUANTIZE_BLOCK_TYPES {
        let (_, y) = roundtrip(dt, &x);
        let err = x
            .iter()
            .zip(&y)
            .fold(0.0f32, |a, (p, q)| a.max((p - q).abs()));
        assert!(err <= 0.13 * max_abs(&x), "{dt}: err {err}");
    }
    // scales beyond f16's 65504: an error naming the type and block, not inf/NaN weights
    let mut x = noise(512, 8, 1.0);
    x[300] = 1e12;
    for dt in QUANTIZE_BLOCK_TYPES {
        let mut q = vec![0u8; dt.bytes_for(512).unwrap()];
        let err = quantize(dt, &x, &mut q).unwrap_err().to_string();
        let blk = 300 / dt.block_size();
        assert!(
            err.contains(dt.name()) && err.contains(&format!("block {blk}")),
            "{dt}: {err}"
        );
    }
    // non-finite input is rejected with its index
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = vec![0.5f32; 256];
        x[17] = bad;
        for dt in QUANTIZE_BLOCK_TYPES {
            let mut q = vec![0u8; dt.bytes_for(256).unwrap()];
            let err = quantize(dt, &x, &mut q).unwrap_err().to_string();
            assert!(err.contains("element 17"), "{dt}: {err}");
        }
    }
}

#[test]
fn q4_0_negative_scales() {
    // max magnitude positive → d = max / −8 < 0; the first element of max magnitude wins
    let mut x = vec![0.0f32; 32];
    x[0] = 0.1;
    x[3] = 0.8;
    x[9] = -0.8;
    x[20] = -0.3;
    let (q, y) = roundtrip(DType::Q4_0, &x);
    let d = f16::from_le_bytes([q[0], q[1]]).to_f32();
    assert_eq!(d, f16::from_f32(-0.1).to_f32());
    assert_eq!(q[2 + 3] & 0xF, 0, "x = max maps to q = 0 (−8·d)");
    assert_eq!(y[3], -8.0 * d);
    // −0.8 would need q = 16: clamped to 15, i.e. −0.7
    assert_eq!(y[9], 7.0 * d);
    // a zero quant (q = 8) times the negative d decodes as −0.0, which equals 0.0
    assert_eq!(y[1], 0.0);
    assert!(y[1].is_sign_negative());

    // hand-made block with d = −0.5: w = −0.5·(q − 8)
    let mut b = [0u8; 18];
    b[..2].copy_from_slice(&f16::from_f32(-0.5).to_le_bytes());
    for (j, v) in b[2..].iter_mut().enumerate() {
        *v = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = dequantize_vec(DType::Q4_0, &b).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], -0.5 * (j as f32 - 8.0));
        assert_eq!(y[j + 16], -0.5 * (7.0 - j as f32));
    }
}

#[test]
fn lengths_that_are_not_whole_blocks_are_errors() {
    for dt in DType::WEIGHT_TYPES.into_iter().filter(|d| d.is_quantized()) {
        let bb = dt.block_bytes();
        let bs = dt.block_size();
        // partial block
        let mut out = vec![0.0f32; bs];
        let e = dequantize(dt, &vec![0u8; bb + 1], &mut out).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(dt.name()) && msg.contains(&format!("{}", bb + 1)),
            "{msg}"
        );
        // output of the wrong size
        let e = dequantize(dt, &vec![0u8; 2 * bb], &mut out).unwrap_err();
        assert!(e.to_string().contains(&format!("{}", 2 * bs)), "{e}");
        // whole blocks work (zeros decode to zeros)
        let mut out2 = vec![f32::NAN; 2 * bs];
        dequantize(dt, &vec![0u8; 2 * bb], &mut out2).unwrap();
        assert!(out2.iter().all(|v| *v == 0.0), "{dt}");
    }
    for dt in QUANTIZE_BLOCK_TYPES {
        let bs = dt.block_size();
        let x = vec![0.0f32; bs + 1];
        let mut q = vec![0u8; dt.block_bytes() * 2];
        let msg = quantize(dt, &x, &mut q).unwrap_err().to_string();
        assert!(
            msg.contains(dt.name()) && msg.contains(&format!("{}", bs + 1)),
            "{msg}"
        );
        let x = vec![0.0f32; bs];
        let msg = quantize(dt, &x, &mut q).unwrap_err().to_string();
        assert!(msg.contains("output has"), "{msg}");
    }
    // types that are not weights / not quantizable
    let mut out = vec![0.0f32; 4];
    assert!(dequantize(DType::I32, &[0u8; 16], &mut out).is_err());
    let mut q = vec![0u8; 84];
    assert!(quantize(DType::Q2_K, &[0.0; 256], &mut q).is_err());
    assert!(!can_quantize(DType::IQ4_XS) && can_quantize(DType::Q6_K));
    assert!(can_dequantize(DType::IQ4_XS) && !can_dequantize(DType::U8));
}

#[test]
fn parallel_path_equals_serial_path() {
    // above PAR_MIN_ELEMS the work is split into chunks; results must not change
    let n = PAR_MIN_ELEMS * 2 + PAR_CHUNK_ELEMS / 2;
    let x = noise(n, 9, 0.02);
    for dt in QUANTIZE_BLOCK_TYPES {
        let mut par = vec![0u8; dt.bytes_for(n).unwrap()];
        quantize(dt, &x, &mut par).unwrap();
        let mut ser = vec![0u8; par.len()];
        quantize_serial(dt, &x, &mut ser, 0).unwrap();
        assert!(par == ser, "{dt}");
        let mut y_par = vec![0.0f32; n];
        dequantize(dt, &par, &mut y_par).unwrap();
        let mut y_ser = vec![0.0f32; n];
        dequantize_serial(dt, &ser, &mut y_ser).unwrap();
        assert!(y_par == y_ser, "{dt}");
    }
    // the error names the block in the whole tensor, not in its chunk
    let mut x = x;
    let i = PAR_MIN_ELEMS + 1000;
    x[i] = 1e12;
    let mut q = vec![0u8; DType::Q8_0.bytes_for(n).unwrap()];
    let msg = quantize(DType::Q8_0, &x, &mut q).unwrap_err().to_string();
    assert!(msg.contains(&format!("block {}", i / 32)), "{msg}");
}

#[test]
fn nearest_int_is_ggml_rounding() {
    // ties to even, like ggml's magic-number rounding (and unlike f32::round)
    let v = [0.5f32, 1.5, 2.5, -0.5, -1.5, 2.4999998, 7.0, -31.5];
    let want = [0, 2, 2, 0, -2, 2, 7, -32];
    for (x, w) in v.iter().zip(want) {
        assert_eq!(kquant_encode::nearest_int(*x), w, "{x}");
    }
}

#[test]
fn f16_conversion_is_exact_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32();
        let got = f16_bits_to_f32(h);
        if want.is_nan() {
            assert!(got.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn f16_dequantize_aligned_and_unaligned_agree() {
    // every bit pattern, once from an aligned and once from an odd byte offset
    let bits: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let mut buf = vec![0u8; bits.len() + 1];
    buf[1..].copy_from_slice(&bits);
    let mut a = vec![0.0f32; 65536];
    let mut b = vec![0.0f32; 65536];
    let (src_a, src_b) = match bits.as_ptr() as usize % 2 {
        0 => (&bits[..], &buf[1..]),
        _ => (&buf[1..], &bits[..]),
    };
    dequantize(DType::F16, src_a, &mut a).unwrap();
    dequantize(DType::F16, src_b, &mut b).unwrap();
    for h in 0..65536 {
        assert!(
            a[h].to_bits() == b[h].to_bits() || (a[h].is_nan() && b[h].is_nan()),
            "{h:#06x}"
        );
    }
}
