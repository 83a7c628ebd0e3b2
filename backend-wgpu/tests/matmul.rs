//! matmul and embed for all 15 weight dtypes on wgpu:0, checked against the gguf-py vectors
//! (core/tests/data/quant, the repository copy of shared/testdata/quant, or $KILN_QUANT_DATA):
//! bit-exact dequantization via embed, GEMV with the README's tolerance; and against a CPU
//! product of the dequantized weights for the GEMM path.
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};
use kiln_wgpu::MatmulPath;

#[test]
fn embed_dequantizes_bit_exactly() {
    let Some(be) = open() else { return };
    for d in DType::WEIGHT_TYPES {
        let Some(c) = quant_case(d) else {
            eprintln!("SKIPPED {d}: no test vectors");
            continue;
        };
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(8, 512), &c.bin).unwrap())
            .unwrap();
        let ids = [7, 0, 3, 7, 1, 2, 4, 5, 6];
        let idb = upload(&be, &i32_bytes(&ids));
        let o = poisoned(&be, ids.len() * 512);
        be.embed(
            idb.view(0, Shape::d1(ids.len()), DType::I32).unwrap(),
            &w,
            1.0,
            o.view_mut(0, Shape::d2(ids.len(), 512), DType::F32)
                .unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, ids.len() * 512);
        for (i, &r) in ids.iter().enumerate() {
            for j in 0..512 {
                let (g, e) = (got[i * 512 + j], c.deq[r as usize * 512 + j]);
                assert!(g == e, "{d}: row {r} col {j}: got {g:e}, want {e:e}");
            }
        }
        // scale is applied
        let o2 = poisoned(&be, 512);
        be.embed(
            idb.view(0, Shape::d1(1), DType::I32).unwrap(),
            &w,
            0.5,
            o2.view_mut(0, Shape::d2(1, 512), DType::F32).unwrap(),
        )
        .unwrap();
        let got2 = read_f32(&be, &o2, 0, 512);
        assert!(
            got2.iter()
                .zip(&c.deq[7 * 512..8 * 512])
                .all(|(g, e)| *g == 0.5 * e),
            "{d}: scale"
        );
    }
}

#[test]
fn gemv_matches_gguf_vectors() {
    let Some(be) = open() else { return };
    for d in DType::WEIGHT_TYPES {
        let Some(c) = quant_case(d) else { continue };
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(8, 512), &c.bin).unwrap())
            .unwrap();
        let xb = upload(&be, &f32_bytes(&c.x));
        // exact x (the float kernels; Q8_0/Q4_K's int8-x kernel is checked below)
        be.set_vgemv_x8(false);
        for lanes in [(1, 1), (4, 2), (8, 4)] {
            be.set_gemv_config(Some(lanes)).unwrap();
            let o = poisoned(&be, 8);
            be.matmul_with(
                xb.view(0, Shape::d2(1, 512), DType::F32).unwrap(),
                &w,
                o.view_mut(0, Shape::d2(1, 8), DType::F32).unwrap(),
                MatmulPath::Gemv,
            )
            .unwrap();
            let got = read_f32(&be, &o, 0, 8);
            for r in 0..8 {
                let tol = 1e-4 * c.y[r].abs() as f64 + 1e-6 * c.row_abs_dot[r];
                let err = (got[r] as f64 - c.y[r] as f64).abs();
                assert!(
                    err <= tol,
                    "{d} gemv config {lanes:?}: y[{r}] = {} want {} (err {err:e} > {tol:e})",
                    got[r],
                    c.y[r]
                );
            }
        }
        be.set_gemv_config(None).unwrap();
        be.set_vgemv_x8(true);
        if matches!(d, DType::Q8_0 | DType::Q4_K) {
            // int8 x: |y − ŷ| ≤ Σ_t |w_t|·d_g(t)/2 (+ f32 accumulation)
            let o = poisoned(&be, 8);
            be.matmul_with(
                xb.view(0, Shape::d2(1, 512), DType::F32).unwrap(),
                &w,
                o.view_mut(0, Shape::d2(1, 8), DType::F32).unwrap(),
                MatmulPath::Gemv,
            )
            .unwrap();
            let got = read_f32(&be, &o, 0, 8);
            let (_, dq) = round_x8(&c.x);
            for r in 0..8 {
                let bound: f64 = (0..512)
                    .map(|t| f64::from(c.deq[r * 512 + t]).abs() * dq[t / 16] / 2.0)
                    .sum();
                let tol = bound + 1e-4 * c.y[r].abs() as f64 + 1e-6 * c.row_abs_dot[r];
                let err = (got[r] as f64 - c.y[r] as f64).abs();
                assert!(
                    err <= tol,
                    "{d} gemv_x8: y[{r}] = {} want {} (err {err:e} > {tol:e})",
                    got[r],
                    c.y[r]
                );
            }
        }
    }
}

/// CPU y = x·Wᵀ in f64 from the dequantized weights.
fn cpu_mm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

#[test]
fn both_paths_many_rows_all_dtypes() {
    let Some(be) = open() else { return };
    let mut r = rng(11);
    for d in DType::WEIGHT_TYPES {
        let Some(c) = quant_case(d) else { continue };
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(8, 512), &c.bin).unwrap())
            .unwrap();
        let m = 70; // more than one 64-row GEMM tile and a partial GEMV tile
        // exact x: Q8_0/Q4_K's int8-x kernels (gemv_x8m at m ≥ 2) are checked in x8m_gemv_rows
        be.set_vgemv_x8(false);
        let x = randn(&mut r, m * 512, 1.0);
        let want = cpu_mm(&x, &c.deq, m, 8, 512);
        // x and out at offsets in one shared buffer
        let buf = poisoned(&be, 16 + m * 512 + m * 8);
        be.write(&buf, 64, &f32_bytes(&x)).unwrap();
        for path in [MatmulPath::Gemv, MatmulPath::Gemm] {
            let off_o = 64 + m * 512 * 4;
            be.write(&buf, off_o, &f32_bytes(&vec![f32::NAN; m * 8]))
                .unwrap();
            be.matmul_with(
                buf.view(64, Shape::d2(m, 512), DType::F32).unwrap(),
                &w,
                buf.view_mut(off_o, Shape::d2(m, 8), DType::F32).unwrap(),
                path,
            )
            .unwrap();
            let got = read_f32(&be, &buf, off_o, m * 8);
            let e = nmse(&got, &want);
            // The GEMM keeps f32 tiles; the bound still allows the older kernel's f16 tiles
            // (~1e-7, `set_gemm_legacy`).
            let tol = if path == MatmulPath::Gemv {
                1e-10
            } else {
                2e-6
            };
            assert!(e < tol, "{d} {path:?}: nmse {e:e}");
        }
        // The dispatching entry point agrees with the explicit paths.
        be.matmul(
            buf.view(64, Shape::d2(3, 512), DType::F32).unwrap(),
            &w,
            buf.view_mut(64 + m * 512 * 4, Shape::d2(3, 8), DType::F32)
                .unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &buf, 64 + m * 512 * 4, 24);
        assert!(nmse(&got, &want[..24]) < 2e-6, "{d}: matmul dispatch");
        be.set_vgemv_x8(true);
    }
}

/// gemv_x8m (Q8_0/Q4_K at m ≥ 2 on the GEMV path: MX = 2..8 x rows per dispatch, more rows
/// in passes of 8) against a CPU product of x rounded to int8 per 16 elements and the
/// dequantized weight, each output within 1e-5 of its Σ|x̂·w| plus the rounding ties (as
/// `x8_gemv_check`), at every (teams, rows) shape, k with and without a partial 1024-chunk,
/// n leaving partial row groups; the exact-x product differs from that oracle by more than
/// the tolerance somewhere, so the test sees that the int8 kernel ran (and a wrong row, x row
/// or output stride fails; outputs are NaN-poisoned).
#[test]
fn x8m_gemv_rows() {
    let Some(be) = open() else { return };
    let mut r = rng(21);
    let cfgs = [
        None,
        Some((1, 1)),
        Some((2, 4)),
        Some((8, 1)),
        Some((16, 2)),
    ];
    for d in [DType::Q8_0, DType::Q4_K] {
        for (n, k) in [(37usize, 1280usize), (19, 4096), (5, 256)] {
            let host = random_weight(&mut r, d, n, k);
            let deq = kiln_core::quant::dequantize_vec(d, &host).unwrap();
            let w = be
                .prepare_weight(&HostTensor::new(d, Shape::d2(n, k), &host).unwrap())
                .unwrap();
            for m in [2usize, 3, 5, 7, 8, 11, 17] {
                let mut x = randn(&mut r, m * k, 1.0);
                for t in (0..m * k).step_by(97) {
                    x[t] *= 20.0;
                }
                let (xr, ds) = round_x8(&x);
                let want = cpu_mm(&xr, &deq, m, n, k);
                let exact = cpu_mm(&x, &deq, m, n, k);
                let tol = |i: usize, j: usize| {
                    (0..k)
                        .map(|t| {
                            let (xv, wv) = (x[i * k + t], f64::from(deq[j * k + t]));
                            let v = f64::from(xv) / ds[(i * k + t) / 16];
                            let tie = (v.abs().fract() - 0.5).abs() < 1e-4;
                            1e-5 * (f64::from(xr[i * k + t]) * wv).abs()
                                + if tie {
                                    ds[(i * k + t) / 16] * wv.abs()
                                } else {
                                    0.0
                                }
                        })
                        .sum::<f64>()
                        + 1e-30
                };
                let tols: Vec<f64> = (0..m * n).map(|e| tol(e / n, e % n)).collect();
                assert!(
                    (0..m * n).any(|e| (f64::from(exact[e]) - f64::from(want[e])).abs() > tols[e]),
                    "{d} {n}x{k} m={m}: the rounded-x oracle does not tell the kernels apart"
                );
                let buf = poisoned(&be, 4 + m * k + m * n);
                be.write(&buf, 16, &f32_bytes(&x)).unwrap();
                let xv = buf.view(16, Shape::d2(m, k), DType::F32).unwrap();
                let o = 16 + 4 * m * k;
                let ov = buf.view_mut(o, Shape::d2(m, n), DType::F32).unwrap();
                for cfg in cfgs {
                    be.set_vgemv_x8m_config(cfg).unwrap();
                    be.write(&buf, o, &f32_bytes(&vec![f32::NAN; m * n]))
                        .unwrap();
                    be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap();
                    let got = read_f32(&be, &buf, o, m * n);
                    for e in 0..m * n {
                        let err = (f64::from(got[e]) - f64::from(want[e])).abs();
                        assert!(
                            err <= tols[e],
                            "{d} {n}x{k} m={m} gemv_x8m {cfg:?}: y[{}, {}] = {} want {} (err {err:e} > {:e}; exact-x value {})",
                            e / n,
                            e % n,
                            got[e],
                            want[e],
                            tols[e],
                            exact[e]
                        );
                    }
                }
                be.set_vgemv_x8m_config(None).unwrap();
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let Some(be) = open() else { return };
    let data = vec![0u8; 8 * 40 * 4];
    assert!(
        be.prepare_weight(&HostTensor::new(DType::F32, Shape::d2(8, 40), &data).unwrap())
            .is_err()
    );
    let w = be
        .prepare_weight(
            &HostTensor::new(DType::F32, Shape::d2(8, 32), &data[..8 * 32 * 4]).unwrap(),
        )
        .unwrap();
    let x = be.alloc(4 * 64).unwrap();
    let o = be.alloc(4 * 16).unwrap();
    assert!(
        be.matmul(
            x.view(0, Shape::d2(2, 32), DType::F32).unwrap(),
            &w,
            o.view_mut(0, Shape::d2(2, 7), DType::F32).unwrap()
        )
        .is_err()
    );
}

/// Random bytes that are a valid weight of `d`: every 16-bit float field that could be inf or
/// NaN is made small and finite (bf16 values: top bits cleared; block d/dmin: f16 < 1).
fn random_weight(r: &mut impl rand::Rng, d: DType, n: usize, k: usize) -> Vec<u8> {
    let bytes = d.bytes_for(n * k).unwrap();
    let mut v: Vec<u8> = (0..bytes).map(|_| r.random::<u8>()).collect();
    match d {
        DType::BF16 => v.chunks_exact_mut(2).for_each(|c| c[1] &= 0x3f),
        DType::Q8_0 => v.chunks_exact_mut(34).for_each(|c| c[1] &= 0x2b),
        DType::Q4_K => v.chunks_exact_mut(144).for_each(|c| {
            c[1] &= 0x2b;
            c[3] &= 0x2b;
        }),
        _ => unreachable!(),
    }
    v
}

/// The m = 1 vec4 kernel (gemv_v: BF16, Q8_0, Q4_K) at every (teams, rows per team) shape,
/// k with a partial last 1024-element chunk, n not a multiple of the rows per workgroup, x at
/// a 16-byte offset: against an f64 CPU product of the dequantized weight and against the
/// general GEMV kernel.
#[test]
fn vec4_gemv_all_shapes() {
    let Some(be) = open() else { return };
    let mut r = rng(5);
    for d in [DType::BF16, DType::Q8_0, DType::Q4_K] {
        for (n, k) in [(37usize, 1280usize), (64, 3072), (5, 256)] {
            let host = random_weight(&mut r, d, n, k);
            let deq = kiln_core::quant::dequantize_vec(d, &host).unwrap();
            let w = be
                .prepare_weight(&HostTensor::new(d, Shape::d2(n, k), &host).unwrap())
                .unwrap();
            let x = randn(&mut r, k, 1.0);
            let want = cpu_mm(&x, &deq, 1, n, k);
            let buf = poisoned(&be, 4 + k + n);
            be.write(&buf, 16, &f32_bytes(&x)).unwrap();
            let xv = buf.view(16, Shape::d2(1, k), DType::F32).unwrap();
            let ov = buf
                .view_mut(16 + 4 * k, Shape::d2(1, n), DType::F32)
                .unwrap();
            // (0, 0): the general kernel; without prefetch only for 2 teams (lavapipe time).
            let mut cfgs = vec![((0u32, 0u32), true)];
            for t in [1, 2, 8] {
                for nr in [1, 2, 4, 8] {
                    cfgs.push(((t, nr), true));
                    if t == 2 {
                        cfgs.push(((t, nr), false));
                    }
                }
            }
            // gemv_v with exact x (Q8_0/Q4_K: the fallback of the int8-x kernel)
            be.set_vgemv_x8(false);
            for (cfg, prefetch) in cfgs {
                be.set_vgemv_prefetch(prefetch);
                be.set_vgemv_config(Some(cfg)).unwrap();
                be.write(&buf, 16 + 4 * k, &f32_bytes(&vec![f32::NAN; n]))
                    .unwrap();
                be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap();
                let got = read_f32(&be, &buf, 16 + 4 * k, n);
                for j in 0..n {
                    let abs: f64 = (0..k)
                        .map(|t| (f64::from(x[t]) * f64::from(deq[j * k + t])).abs())
                        .sum();
                    let err = (f64::from(got[j]) - f64::from(want[j])).abs();
                    assert!(
                        err <= 1e-5 * abs + 1e-30,
                        "{d} {n}x{k} vgemv {cfg:?} prefetch {prefetch}: y[{j}] = {} want {} (err {err:e}, sum|xw| {abs:e})",
                        got[j],
                        want[j]
                    );
                }
            }
            be.set_vgemv_config(None).unwrap();
            be.set_vgemv_prefetch(true);
            be.set_vgemv_x8(true);
        }
    }
}

/// The int8-x m = 1 kernel (gemv_x8: Q8_0, Q4_K) at every (teams, rows per team) shape, k
/// with and without a partial last chunk (and several chunks), n not a multiple of the rows
/// per workgroup, x at a 16-byte offset: against an f64 CPU product of the int8-rounded x and
/// the dequantized weight (the kernel's exact arithmetic up to f32 accumulation and a rare
/// tie rounded the other way). The same inputs with exact x differ from that oracle by more
/// than the tolerance in some row, so the test sees which kernel ran.
#[test]
fn x8_gemv_all_shapes() {
    let Some(be) = open() else { return };
    // ((teams, rows), depth, x rounded by a pre-pass, k split over teams)
    let mut cfgs = vec![(None, None, None, None)];
    for t in [1, 2, 4, 8] {
        for nr in [1, 2, 4, 8] {
            for depth in [1, 2] {
                cfgs.push((Some((t, nr)), Some(depth), Some(false), Some(1)));
            }
        }
    }
    x8_gemv_check(&be, &cfgs, &[DType::Q8_0, DType::Q4_K]);
}

/// As `x8_gemv_all_shapes` for gemv_x8's x pre-pass (quant_x8 + XQG) and its split-k (KS
/// teams per row group, with either x), at shapes that cover every KS and a KS-team tail, and
/// 16 teams per workgroup.
#[test]
fn x8_gemv_prepass_split() {
    let Some(be) = open() else { return };
    let mut cfgs = vec![(None, None, Some(true), None)];
    for (t, nr, depth, ks) in [
        (1, 1, 1, 1),
        (8, 2, 1, 1),
        (8, 2, 1, 2),
        (8, 2, 2, 4),
        (4, 8, 1, 4),
        (8, 1, 2, 8),
        (8, 4, 1, 8),
        (2, 4, 2, 2),
    ] {
        cfgs.push((Some((t, nr)), Some(depth), Some(true), Some(ks)));
    }
    for (t, nr, depth, ks) in [
        (8, 2, 1, 2),
        (4, 4, 2, 4),
        (8, 1, 1, 8),
        (16, 1, 2, 1),
        (16, 2, 1, 1),
        (16, 1, 1, 4),
    ] {
        cfgs.push((Some((t, nr)), Some(depth), Some(false), Some(ks)));
    }
    // 16 teams (512 invocations) with the pre-pass too
    cfgs.push((Some((16, 1)), Some(2), Some(true), Some(2)));
    x8_gemv_check(&be, &cfgs, &[DType::Q8_0, DType::Q4_K]);
}

type X8Cfg = (Option<(u32, u32)>, Option<u32>, Option<bool>, Option<u32>);

/// gemv_x8 at each configuration of `cfgs` (Q4_K: both lane mappings and both decodes).
fn x8_gemv_check(be: &std::sync::Arc<kiln_wgpu::WgpuBackend>, cfgs: &[X8Cfg], dtypes: &[DType]) {
    let mut r = rng(9);
    for &d in dtypes {
        for (n, k) in [(37usize, 1280usize), (64, 3072), (5, 256), (19, 4096)] {
            let host = random_weight(&mut r, d, n, k);
            let deq = kiln_core::quant::dequantize_vec(d, &host).unwrap();
            let w = be
                .prepare_weight(&HostTensor::new(d, Shape::d2(n, k), &host).unwrap())
                .unwrap();
            // a few outlier channels, as real activations have
            let mut x = randn(&mut r, k, 1.0);
            for t in (0..k).step_by(97) {
                x[t] *= 20.0;
            }
            let (xr, ds) = round_x8(&x);
            let want = cpu_mm(&xr, &deq, 1, n, k);
            let exact = cpu_mm(&x, &deq, 1, n, k);
            // x·(1/d) within 1e-4 of a rounding tie may round the other way on the GPU
            // (its 1/d is not exactly rounded): one step d·|w| each
            let near_tie: Vec<usize> = (0..k)
                .filter(|&t| {
                    let v = f64::from(x[t]) / ds[t / 16];
                    (v.abs().fract() - 0.5).abs() < 1e-4
                })
                .collect();
            let tols: Vec<f64> = (0..n)
                .map(|j| {
                    let abs: f64 = (0..k)
                        .map(|t| (f64::from(xr[t]) * f64::from(deq[j * k + t])).abs())
                        .sum();
                    let ties: f64 = near_tie
                        .iter()
                        .map(|&t| ds[t / 16] * f64::from(deq[j * k + t]).abs())
                        .sum();
                    1e-5 * abs + ties + 1e-30
                })
                .collect();
            assert!(
                (0..n).any(|j| (f64::from(exact[j]) - f64::from(want[j])).abs() > tols[j]),
                "{d} {n}x{k}: the rounded-x oracle does not tell the kernels apart"
            );
            let buf = poisoned(be, 4 + k + n);
            be.write(&buf, 16, &f32_bytes(&x)).unwrap();
            let xv = buf.view(16, Shape::d2(1, k), DType::F32).unwrap();
            let ov = buf
                .view_mut(16 + 4 * k, Shape::d2(1, n), DType::F32)
                .unwrap();
            // Q4_K: both lane mappings (64 and 32 weights per lane and row per chunk), the
            // 32-weight one with both scale/min decodes (select form, packed form)
            let maps: Vec<(bool, Option<bool>)> = if d == DType::Q4_K {
                vec![(true, None), (false, Some(false)), (false, Some(true))]
            } else {
                vec![(true, None)]
            };
            for (&(wide, pack), (cfg, depth, xq, ks)) in
                maps.iter().flat_map(|w| cfgs.iter().map(move |c| (w, *c)))
            {
                be.set_vgemv_q4k_wide(wide);
                be.set_vgemv_q4k_pack(pack);
                be.set_vgemv_config(cfg).unwrap();
                be.set_vgemv_depth(depth).unwrap();
                be.set_vgemv_xq(xq);
                be.set_vgemv_ksplit(ks).unwrap();
                be.write(&buf, 16 + 4 * k, &f32_bytes(&vec![f32::NAN; n]))
                    .unwrap();
                be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap();
                let got = read_f32(be, &buf, 16 + 4 * k, n);
                for j in 0..n {
                    let err = (f64::from(got[j]) - f64::from(want[j])).abs();
                    assert!(
                        err <= tols[j],
                        "{d} {n}x{k} gemv_x8 {cfg:?} depth {depth:?} xq {xq:?} ks {ks:?} wide {wide} pack {pack:?}: y[{j}] = {} want {} (err {err:e} > {:e}; exact-x value {})",
                        got[j],
                        want[j],
                        tols[j],
                        exact[j]
                    );
                }
            }
            be.set_vgemv_config(None).unwrap();
            be.set_vgemv_depth(None).unwrap();
            be.set_vgemv_q4k_wide(false);
            be.set_vgemv_q4k_pack(None);
            be.set_vgemv_xq(None);
            be.set_vgemv_ksplit(None).unwrap();
        }
    }
}

/// A non-finite x makes the int8-x kernel's output NaN (its group's scale is NaN), not a
/// silently finite number.
#[test]
fn x8_gemv_non_finite_x_shows() {
    let Some(be) = open() else { return };
    let mut r = rng(4);
    let (n, k) = (8usize, 512usize);
    for d in [DType::Q8_0, DType::Q4_K] {
        let host = random_weight(&mut r, d, n, k);
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(n, k), &host).unwrap())
            .unwrap();
        for (bad, xq) in [f32::INFINITY, f32::NAN]
            .into_iter()
            .flat_map(|b| [(b, false), (b, true)])
        {
            be.set_vgemv_xq(Some(xq));
            let mut x = randn(&mut r, k, 1.0);
            x[100] = bad;
            let xb = upload(&be, &f32_bytes(&x));
            let o = be.alloc(n * 4).unwrap();
            be.matmul_with(
                xb.view(0, Shape::d2(1, k), DType::F32).unwrap(),
                &w,
                o.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
                MatmulPath::Gemv,
            )
            .unwrap();
            let got = read_f32(&be, &o, 0, n);
            assert!(
                got.iter().all(|v| v.is_nan()),
                "{d} x[100] = {bad} (x rounded by a pre-pass: {xq}): {got:?}"
            );
        }
        be.set_vgemv_xq(None);
    }
}
