//! The small ops through the `Backend` API: results equal the slice functions, outputs are
//! fully written (poisoned with NaN first), and bad arguments are errors, never panics.

use super::*;
use crate::convert::{from_f32, i32_bytes, to_f32};
use crate::shape::Shape;

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(2_654_435_761);
            (h >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// A buffer holding `v` as f32, plus NaN padding after it.
fn f32_buf(b: &ReferenceBackend, v: &[f32]) -> Buffer {
    let buf = b.alloc(v.len() * 4 + 64).unwrap();
    let mut all = v.to_vec();
    all.extend([f32::NAN; 16]);
    b.write(&buf, 0, &from_f32(DType::F32, &all).unwrap())
        .unwrap();
    buf
}

fn read_f32(b: &ReferenceBackend, buf: &Buffer, n: usize) -> Vec<f32> {
    let mut raw = vec![0u8; n * 4];
    b.read(buf, 0, &mut raw).unwrap();
    to_f32(DType::F32, &raw).unwrap()
}

fn is_shape_err<T>(r: Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

#[test]
fn rms_norm_through_backend() {
    let b = ReferenceBackend::new(0);
    let (rows, dim) = (3, 5);
    let x = pseudo(rows * dim, 1);
    let w = pseudo(dim, 2);
    let (xb, wb, ob) = (
        f32_buf(&b, &x),
        f32_buf(&b, &w),
        f32_buf(&b, &[f32::NAN; 15]),
    );
    let xv = xb.view(0, Shape::d2(rows, dim), DType::F32).unwrap();
    let wv = wb.view(0, Shape::d1(dim), DType::F32).unwrap();
    let ov = ob.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap();
    b.rms_norm(xv, wv, 1e-6, ov).unwrap();
    let got = read_f32(&b, &ob, rows * dim);
    let mut want = vec![0f32; rows * dim];
    for r in 0..rows {
        norm::rms_norm_row(&x[r * dim..][..dim], &w, 1e-6, &mut want[r * dim..][..dim]);
    }
    assert_eq!(got, want);
    let w4 = wb.view(0, Shape::d1(4), DType::F32).unwrap();
    assert!(is_shape_err(b.rms_norm(xv, w4, 1e-6, ov)));
    assert!(is_shape_err(b.rms_norm(xv, wv, -1.0, ov)));
    // in place is refused (the op reads x while writing out)
    let same = xb.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap();
    assert!(matches!(
        b.rms_norm(xv, wv, 1e-6, same),
        Err(Error::View(_))
    ));
}

#[test]
fn rope_through_backend() {
    let b = ReferenceBackend::new(0);
    let (t, h, hd) = (2, 3, 8);
    let x = pseudo(t * h * hd, 3);
    let freq = [1.0f32, 0.1];
    let xb = f32_buf(&b, &x);
    let pb = b.alloc(8).unwrap();
    b.write(&pb, 0, &i32_bytes(&[7, 1000])).unwrap();
    let fb = f32_buf(&b, &freq);
    let xv = xb.view_mut(0, Shape::d3(t, h, hd), DType::F32).unwrap();
    let pv = pb.view(0, Shape::d1(t), DType::I32).unwrap();
    let fv = fb.view(0, Shape::d1(2), DType::F32).unwrap();
    for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
        b.write(&xb, 0, &from_f32(DType::F32, &x).unwrap()).unwrap();
        b.rope(xv, pv, fv, &RopeParams { style, n_rot: 4 }).unwrap();
        let mut want = x.clone();
        rope::rope_slices(&mut want, hd, &[7, 1000], &freq, style);
        assert_eq!(read_f32(&b, &xb, x.len()), want);
    }
    let p = |n_rot| RopeParams {
        style: RopeStyle::Neox,
        n_rot,
    };
    assert!(is_shape_err(b.rope(xv, pv, fv, &p(3))));
    assert!(is_shape_err(b.rope(xv, pv, fv, &p(10))));
    assert!(is_shape_err(b.rope(xv, pv, fv, &p(6)))); // inv_freq has 2, not 3
    let p1 = pb.view(0, Shape::d1(1), DType::I32).unwrap();
    assert!(is_shape_err(b.rope(xv, p1, fv, &p(4))));
}

#[test]
fn glu_add_copy_through_backend() {
    let b = ReferenceBackend::new(0);
    let n = 20_000; // more than one parallel chunk
    let (g, u) = (pseudo(n, 4), pseudo(n, 5));
    let (gb, ub, ob) = (
        f32_buf(&b, &g),
        f32_buf(&b, &u),
        f32_buf(&b, &vec![f32::NAN; n]),
    );
    let shape = Shape::d2(n / 100, 100);
    let gv = gb.view(0, shape, DType::F32).unwrap();
    let uv = ub.view(0, shape, DType::F32).unwrap();
    let ov = ob.view_mut(0, shape, DType::F32).unwrap();
    b.glu(gv, uv, Activation::GeluTanh, ov).unwrap();
    let got = read_f32(&b, &ob, n);
    assert!(
        got.iter()
            .zip(g.iter().zip(&u))
            .all(|(o, (g, u))| *o == act::gelu_tanh(*g) * u)
    );
    b.add(gv, uv, ov).unwrap();
    let got = read_f32(&b, &ob, n);
    assert!(
        got.iter()
            .zip(g.iter().zip(&u))
            .all(|(o, (g, u))| *o == g + u)
    );
    let short = ub.view(0, Shape::d2(n / 100 - 1, 100), DType::F32).unwrap();
    assert!(is_shape_err(b.add(gv, short, ov)));
    assert!(is_shape_err(b.glu(gv, short, Activation::Silu, ov)));

    // copy f32 → bf16 → f32
    let hb = b.alloc(n * 2).unwrap();
    let hv = hb.view_mut(0, shape, DType::BF16).unwrap();
    b.copy(gv, hv).unwrap();
    b.copy(hv.as_view(), ov).unwrap();
    let got = read_f32(&b, &ob, n);
    assert!(
        got.iter()
            .zip(&g)
            .all(|(a, x)| *a == half::bf16::from_f32(*x).to_f32())
    );
    let iv = hb.view_mut(0, Shape::d1(n / 2), DType::I32).unwrap();
    assert!(is_shape_err(b.copy(gv, iv)));
    assert!(is_shape_err(b.copy(short, hv)));
}

#[test]
fn add_bias_and_gather_through_backend() {
    let b = ReferenceBackend::new(0);
    let (rows, n) = (300, 70); // several parallel chunks of whole rows
    let x = pseudo(rows * n, 6);
    let bias = pseudo(n, 7);
    let (xb, bb, ob) = (
        f32_buf(&b, &x),
        f32_buf(&b, &bias),
        f32_buf(&b, &vec![f32::NAN; rows * n]),
    );
    let xv = xb.view(0, Shape::d2(rows, n), DType::F32).unwrap();
    let bv = bb.view(0, Shape::d1(n), DType::F32).unwrap();
    let ov = ob.view_mut(0, Shape::d2(rows, n), DType::F32).unwrap();
    b.add_bias(xv, bv, ov).unwrap();
    let got = read_f32(&b, &ob, rows * n);
    assert!((0..rows * n).all(|i| got[i] == x[i] + bias[i % n]));
    let b5 = bb.view(0, Shape::d1(5), DType::F32).unwrap();
    assert!(is_shape_err(b.add_bias(xv, b5, ov)));

    // gather rows 299, 0, 5 of x (f32) and of a bf16 copy
    let ib = b.alloc(12).unwrap();
    b.write(&ib, 0, &i32_bytes(&[299, 0, 5])).unwrap();
    let iv = ib.view(0, Shape::d1(3), DType::I32).unwrap();
    let gv = ob.view_mut(0, Shape::d2(3, n), DType::F32).unwrap();
    b.gather(xv, iv, gv).unwrap();
    let got = read_f32(&b, &ob, 3 * n);
    for (i, r) in [299, 0, 5].into_iter().enumerate() {
        assert_eq!(&got[i * n..(i + 1) * n], &x[r * n..(r + 1) * n]);
    }
    let hb = b.alloc(rows * n * 2).unwrap();
    let hv = hb.view_mut(0, Shape::d2(rows, n), DType::BF16).unwrap();
    b.copy(xv, hv).unwrap();
    let hg = b.alloc(3 * n * 2).unwrap();
    b.gather(
        hv.as_view(),
        iv,
        hg.view_mut(0, Shape::d2(3, n), DType::BF16).unwrap(),
    )
    .unwrap();
    let mut raw = vec![0u8; 3 * n * 2];
    b.read(&hg, 0, &mut raw).unwrap();
    let got = to_f32(DType::BF16, &raw).unwrap();
    assert_eq!(got[0], half::bf16::from_f32(x[299 * n]).to_f32());
    // id out of range, dtype mismatch
    b.write(&ib, 0, &i32_bytes(&[300, 0, 5])).unwrap();
    let e = b.gather(xv, iv, gv).unwrap_err().to_string();
    assert!(e.contains("ids[0] = 300"), "{e}");
    let wrong = hg.view_mut(0, Shape::d2(3, n), DType::BF16).unwrap();
    assert!(is_shape_err(b.gather(xv, iv, wrong)));
}

#[test]
fn buffers_of_another_device_are_refused() {
    let b = ReferenceBackend::new(0);
    let other = ReferenceBackend::new(1);
    let mine = f32_buf(&b, &[1.0; 8]);
    let theirs = f32_buf(&other, &[1.0; 8]);
    fn v(buf: &Buffer) -> View<'_> {
        buf.view(0, Shape::d1(8), DType::F32).unwrap()
    }
    let ob = b.alloc(32).unwrap();
    let ov = ob.view_mut(0, Shape::d1(8), DType::F32).unwrap();
    let wrong = |r: Result<()>| matches!(r, Err(Error::WrongDevice { .. }));
    assert!(wrong(b.add(v(&mine), v(&theirs), ov)));
    assert!(wrong(b.glu(v(&theirs), v(&mine), Activation::Silu, ov)));
    assert!(wrong(b.copy(v(&theirs), ov)));
    assert!(wrong(b.rms_norm(v(&mine), v(&theirs), 1e-5, ov)));
}

#[test]
fn supports_matches_the_implemented_set() {
    let b = ReferenceBackend::new(0);
    for dt in DType::WEIGHT_TYPES {
        for op in [OpKind::Matmul, OpKind::Embed, OpKind::Moe] {
            assert!(b.supports(op, dt), "{op:?} {dt}");
        }
    }
    for dt in [DType::F32, DType::F16, DType::BF16] {
        assert!(b.supports(OpKind::Attention, dt) && b.supports(OpKind::KvAppend, dt));
        assert!(b.supports(OpKind::Copy, dt));
    }
    for op in [
        OpKind::RmsNorm,
        OpKind::Rope,
        OpKind::Glu,
        OpKind::Add,
        OpKind::AddBias,
    ] {
        assert!(
            b.supports(op, DType::F32) && !b.supports(op, DType::F16),
            "{op:?}"
        );
    }
    for dt in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::U8,
    ] {
        assert!(b.supports(OpKind::Gather, dt));
    }
    assert!(!b.supports(OpKind::Gather, DType::Q4_K));
    assert!(!b.supports(OpKind::Matmul, DType::I32));
    assert!(!b.supports(OpKind::Attention, DType::Q8_0));
}
