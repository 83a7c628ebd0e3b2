//! Elementwise ops on wgpu:0 against small CPU oracles written here.
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use half::{bf16, f16};
use kiln_core::{Activation, Backend, DType, PagedKv, RopeParams, RopeStyle, Shape};

#[test]
fn probe_and_info() {
    let Some(be) = open() else { return };
    let i = be.info();
    eprintln!(
        "wgpu:0 = {} ({}) [{}] {}",
        i.name,
        i.vendor,
        i.driver,
        i.caps_summary()
    );
    assert!(i.caps.max_binding_bytes > 0 && i.caps.max_buffer_bytes >= i.caps.max_binding_bytes);
    assert!(i.caps.shared_memory_bytes >= 16384);
}

#[test]
fn write_read_unaligned() {
    let Some(be) = open() else { return };
    let b = be.alloc(37).unwrap();
    let data: Vec<u8> = (0..37u8).collect();
    be.write(&b, 0, &data).unwrap();
    be.write(&b, 5, &[200, 201, 202]).unwrap();
    let mut out = vec![0u8; 37];
    be.read(&b, 0, &mut out).unwrap();
    let mut want = data.clone();
    want[5..8].copy_from_slice(&[200, 201, 202]);
    assert_eq!(out, want);
    let mut part = vec![0u8; 6];
    be.read(&b, 3, &mut part).unwrap();
    assert_eq!(part, want[3..9]);
    assert!(be.write(&b, 36, &[1, 2]).is_err());
}

#[test]
fn add_and_bias() {
    let Some(be) = open() else { return };
    let mut r = rng(1);
    let (rows, n) = (7, 333);
    let a = randn(&mut r, rows * n, 2.0);
    let b = randn(&mut r, rows * n, 2.0);
    let bias = randn(&mut r, n, 1.0);
    // a and the output share one buffer at different offsets (as a planner arena would).
    let arena = poisoned(&be, 3 * rows * n + 1);
    be.write(&arena, 4, &f32_bytes(&a)).unwrap();
    let bb = upload(&be, &f32_bytes(&b));
    let bias_b = upload(&be, &f32_bytes(&bias));
    let s = Shape::d2(rows, n);
    let av = arena.view(4, s, DType::F32).unwrap();
    let ov = arena.view_mut(4 + rows * n * 4, s, DType::F32).unwrap();
    be.add(av, bb.view(0, s, DType::F32).unwrap(), ov).unwrap();
    let got = read_f32(&be, &arena, 4 + rows * n * 4, rows * n);
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close("add", &got, &want, 0.0, 0.0);
    let ov2 = arena.view_mut(4 + 2 * rows * n * 4, s, DType::F32).unwrap();
    be.add_bias(av, bias_b.view(0, Shape::d1(n), DType::F32).unwrap(), ov2)
        .unwrap();
    let got = read_f32(&be, &arena, 4 + 2 * rows * n * 4, rows * n);
    let want: Vec<f32> = a.iter().enumerate().map(|(i, x)| x + bias[i % n]).collect();
    assert_close("add_bias", &got, &want, 0.0, 0.0);
    // Overlapping output is refused.
    let bad = arena.view_mut(8, s, DType::F32).unwrap();
    assert!(be.add(av, bb.view(0, s, DType::F32).unwrap(), bad).is_err());
}

#[test]
fn glu_both_activations() {
    let Some(be) = open() else { return };
    let mut r = rng(2);
    let n = 3 * 1000;
    let g = randn(&mut r, n, 12.0);
    let u = randn(&mut r, n, 3.0);
    let (gb, ub) = (upload(&be, &f32_bytes(&g)), upload(&be, &f32_bytes(&u)));
    let s = Shape::d2(3, 1000);
    for act in [Activation::Silu, Activation::GeluTanh] {
        let o = poisoned(&be, n);
        be.glu(
            gb.view(0, s, DType::F32).unwrap(),
            ub.view(0, s, DType::F32).unwrap(),
            act,
            o.view_mut(0, s, DType::F32).unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, n);
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&x, &y)| {
                let x = f64::from(x);
                let a = match act {
                    Activation::Silu => x / (1.0 + (-x).exp()),
                    Activation::GeluTanh => {
                        0.5 * x
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt()
                                    * (x + 0.044715 * x * x * x))
                                    .tanh())
                    }
                };
                (a * f64::from(y)) as f32
            })
            .collect();
        assert_close(&format!("{act:?}"), &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn rms_norm_rows() {
    let Some(be) = open() else { return };
    let mut r = rng(3);
    for (rows, dim) in [(5, 4096), (3, 1000), (1, 64)] {
        let x = randn(&mut r, rows * dim, 3.0);
        let w = randn(&mut r, dim, 1.5);
        let xb = upload(&be, &f32_bytes(&x));
        let wb = upload(&be, &f32_bytes(&w));
        let o = poisoned(&be, rows * dim);
        let s = Shape::d2(rows, dim);
        be.rms_norm(
            xb.view(0, s, DType::F32).unwrap(),
            wb.view(0, Shape::d1(dim), DType::F32).unwrap(),
            1e-6,
            o.view_mut(0, s, DType::F32).unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, rows * dim);
        let mut want = vec![0f32; rows * dim];
        for i in 0..rows {
            let row = &x[i * dim..(i + 1) * dim];
            let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for j in 0..dim {
                want[i * dim + j] = (f64::from(row[j]) * inv * f64::from(w[j])) as f32;
            }
        }
        assert_close("rms_norm", &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn rope_styles_and_large_positions() {
    let Some(be) = open() else { return };
    let mut r = rng(4);
    let (nt, nh, hd, n_rot) = (6, 3, 128, 96);
    let x = randn(&mut r, nt * nh * hd, 1.0);
    let pos: Vec<i32> = vec![0, 1, 17, 4095, 32767, 131071];
    let inv: Vec<f32> = (0..n_rot / 2)
        .map(|i| 10000f64.powf(-(2.0 * i as f64) / n_rot as f64) as f32)
        .collect();
    let pb = upload(&be, &i32_bytes(&pos));
    let fb = upload(&be, &f32_bytes(&inv));
    for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
        let xb = upload(&be, &f32_bytes(&x));
        let s = Shape::d3(nt, nh, hd);
        be.rope(
            xb.view_mut(0, s, DType::F32).unwrap(),
            pb.view(0, Shape::d1(nt), DType::I32).unwrap(),
            fb.view(0, Shape::d1(n_rot / 2), DType::F32).unwrap(),
            &RopeParams { style, n_rot },
        )
        .unwrap();
        let got = read_f32(&be, &xb, 0, x.len());
        let mut want = x.clone();
        for t in 0..nt {
            for h in 0..nh {
                let b = (t * nh + h) * hd;
                for i in 0..n_rot / 2 {
                    // The angle as an f32 host computes it, the rotation in f64.
                    let ang = f64::from(pos[t] as f32 * inv[i]);
                    let (sn, cs) = ang.sin_cos();
                    let (a, c) = match style {
                        RopeStyle::Neox => (b + i, b + i + n_rot / 2),
                        RopeStyle::Interleaved => (b + 2 * i, b + 2 * i + 1),
                    };
                    let (x0, x1) = (f64::from(x[a]), f64::from(x[c]));
                    want[a] = (x0 * cs - x1 * sn) as f32;
                    want[c] = (x0 * sn + x1 * cs) as f32;
                }
            }
        }
        assert_close(&format!("rope {style:?}"), &got, &want, 2e-6, 1e-5);
    }
}

#[test]
fn copy_conversions_with_odd_offsets() {
    let Some(be) = open() else { return };
    let mut r = rng(5);
    let n = 301;
    let mut v = randn(&mut r, n, 100.0);
    v[0] = 1e-6; // f16 subnormal
    v[1] = -0.0;
    v[2] = 70000.0; // f16 overflow → inf
    for (sd, dd) in [
        (DType::F32, DType::F16),
        (DType::F32, DType::BF16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F32),
        (DType::F16, DType::BF16),
        (DType::F32, DType::F32),
    ] {
        let src_bytes = kiln_core::convert::from_f32(sd, &v).unwrap();
        let src = upload(&be, &src_bytes);
        // Destination at an odd element offset inside a poisoned buffer.
        let eb = dd.block_bytes();
        let dst = upload(&be, &vec![0xAB; (n + 3) * eb]);
        be.copy(
            src.view(0, Shape::d1(n), sd).unwrap(),
            dst.view_mut(eb, Shape::d1(n), dd).unwrap(),
        )
        .unwrap();
        let mut bytes = vec![0u8; (n + 3) * eb];
        be.read(&dst, 0, &mut bytes).unwrap();
        assert!(
            bytes[..eb].iter().all(|&b| b == 0xAB),
            "{sd}->{dd}: clobbered the element before"
        );
        assert!(
            bytes[(n + 1) * eb..].iter().all(|&b| b == 0xAB),
            "{sd}->{dd}: clobbered after"
        );
        let src_f = kiln_core::convert::to_f32(sd, &src_bytes).unwrap();
        let want = kiln_core::convert::from_f32(dd, &src_f).unwrap();
        assert_eq!(
            &bytes[eb..(n + 1) * eb],
            &want[..],
            "{sd}->{dd} (round to nearest even)"
        );
    }
    let _ = (f16::ONE, bf16::ONE);
}

#[test]
fn gather_rows() {
    let Some(be) = open() else { return };
    let x: Vec<f32> = (0..50).map(|i| i as f32).collect();
    let xb = upload(&be, &f32_bytes(&x));
    let ids = upload(&be, &i32_bytes(&[4, 0, 9]));
    let o = poisoned(&be, 15);
    be.gather(
        xb.view(0, Shape::d2(10, 5), DType::F32).unwrap(),
        ids.view(0, Shape::d1(3), DType::I32).unwrap(),
        o.view_mut(0, Shape::d2(3, 5), DType::F32).unwrap(),
    )
    .unwrap();
    let got = read_f32(&be, &o, 0, 15);
    let want: Vec<f32> = [4, 0, 9]
        .iter()
        .flat_map(|&r| (0..5).map(move |j| (r * 5 + j) as f32))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn kv_append_all_cache_dtypes() {
    let Some(be) = open() else { return };
    let mut r = rng(6);
    let (blocks, nkv, bs, hd, nt) = (5, 2, 4, 64, 6);
    let k = randn(&mut r, nt * nkv * hd, 1.0);
    let v = randn(&mut r, nt * nkv * hd, 1.0);
    let slots: Vec<i32> = vec![7, 0, -1, 19, 8, 13];
    for cd in [DType::F32, DType::F16, DType::BF16] {
        let eb = cd.block_bytes();
        let csize = blocks * nkv * bs * hd;
        let kc = upload(&be, &vec![0u8; csize * eb]);
        let vc = upload(&be, &vec![0u8; csize * eb]);
        let cs = Shape::d4(blocks, nkv, bs, hd);
        let kv = PagedKv::new(
            kc.view_mut(0, cs, cd).unwrap(),
            vc.view_mut(0, cs, cd).unwrap(),
        )
        .unwrap();
        let kb = upload(&be, &f32_bytes(&k));
        let vb = upload(&be, &f32_bytes(&v));
        let sb = upload(&be, &i32_bytes(&slots));
        let ts = Shape::d3(nt, nkv, hd);
        be.kv_append(
            kb.view(0, ts, DType::F32).unwrap(),
            vb.view(0, ts, DType::F32).unwrap(),
            &kv,
            sb.view(0, Shape::d1(nt), DType::I32).unwrap(),
        )
        .unwrap();
        for (src, cache) in [(&k, &kc), (&v, &vc)] {
            let mut bytes = vec![0u8; csize * eb];
            be.read(cache, 0, &mut bytes).unwrap();
            let got = kiln_core::convert::to_f32(cd, &bytes).unwrap();
            let mut want = vec![0f32; csize];
            for (t, &s) in slots.iter().enumerate() {
                if s < 0 {
                    continue;
                }
                let (b, row) = (s as usize / bs, s as usize % bs);
                for h in 0..nkv {
                    for d in 0..hd {
                        let x = src[(t * nkv + h) * hd + d];
                        let x = kiln_core::convert::to_f32(
                            cd,
                            &kiln_core::convert::from_f32(cd, &[x]).unwrap(),
                        )
                        .unwrap()[0];
                        want[((b * nkv + h) * bs + row) * hd + d] = x;
                    }
                }
            }
            assert_eq!(got, want, "kv_append into {cd}");
        }
    }
}

/// The bandwidth probe really copies (every U, a length that leaves a partial workgroup), the
/// bytes past the length are untouched, bad lengths are errors (the read probe: writes nothing);
/// the kernel timer gives one duration per compute pass.
#[test]
fn copy_probe_and_kernel_timer() {
    let Some(be) = open() else { return };
    let n = 16 * 2600; // 2600 vec4s: not a multiple of 256 · U
    let src: Vec<u8> = (0..n + 64).map(|i| (i * 7 + 3) as u8).collect();
    let a = upload(&be, &src);
    for u in [1u32, 2, 4, 8] {
        let b = upload(&be, &vec![0xee; n + 64]);
        be.copy_probe(&a, &b, n, u).unwrap();
        let mut got = vec![0u8; n + 64];
        be.read(&b, 0, &mut got).unwrap();
        assert_eq!(&got[..n], &src[..n], "U = {u}");
        assert!(
            got[n..].iter().all(|&x| x == 0xee),
            "U = {u}: wrote past the length"
        );
    }
    let b = be.alloc(n + 64).unwrap();
    assert!(be.copy_probe(&a, &b, n + 4, 4).is_err());
    assert!(be.copy_probe(&a, &b, n, 3).is_err());
    assert!(be.copy_probe(&a, &b, n + 128, 4).is_err());
    // the read probe stores nothing, and checks its length too
    let sink = upload(&be, &[0xee; 16]);
    be.read_probe(&a, &sink, n).unwrap();
    let mut got = [0u8; 16];
    be.read(&sink, 0, &mut got).unwrap();
    assert!(got.iter().all(|&x| x == 0xee), "the read probe wrote");
    assert!(be.read_probe(&a, &sink, n + 4).is_err());
    assert!(be.read_probe(&a, &sink, n + 128).is_err());
    if be.gpu_timer_start().unwrap() {
        for _ in 0..3 {
            be.copy_probe(&a, &b, n, 4).unwrap();
        }
        let t = be.gpu_timer_stop().unwrap().unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|s| (0.0..1.0).contains(s)), "{t:?}");
    }
    assert!(be.gpu_timer_stop().unwrap().is_none());
}

/// Bind groups reused across batches (the same op at the same params slot with the same
/// buffers) still see each op's own params and buffers: 150 adds (over three 48-op batches)
/// into rotating outputs with changing inputs, and a freed and reallocated output in between.
#[test]
fn repeated_ops_reuse_bind_groups_correctly() {
    let Some(be) = open() else { return };
    let n = 300;
    let ins: Vec<_> = (0..3)
        .map(|j| upload(&be, &f32_bytes(&vec![j as f32 + 1.0; n])))
        .collect();
    let mut outs: Vec<_> = (0..4).map(|_| be.alloc(n * 4).unwrap()).collect();
    for round in 0..2 {
        let mut want = [0f32; 4];
        for i in 0..150 {
            let (a, b) = (&ins[i % 3], &ins[(i / 5) % 3]);
            let o = &outs[i % 4];
            // a sub-range of the output too: the same buffer bound at another offset
            let len = if i % 2 == 0 { n } else { n - 4 };
            be.add(
                a.view(0, Shape::d1(len), DType::F32).unwrap(),
                b.view(0, Shape::d1(len), DType::F32).unwrap(),
                o.view_mut(0, Shape::d1(len), DType::F32).unwrap(),
            )
            .unwrap();
            want[i % 4] = (i % 3) as f32 + 1.0 + ((i / 5) % 3) as f32 + 1.0;
        }
        for (j, o) in outs.iter().enumerate() {
            let got = read_f32(&be, o, 0, n - 4);
            assert!(
                got.iter().all(|&g| g == want[j]),
                "round {round} out {j}: {:?}",
                &got[..4]
            );
        }
        // free one output and allocate another in its place
        outs[1] = be.alloc(n * 4).unwrap();
    }
}
