//! GPU test of the raw-block int8 tensor-core kernels `mq5k` (Q5_K; kernels/matmul_mma.cu),
//! `mq6k` (Q6_K) and `mq8_0` (Q8_0; kernels/matmul_mqk.cuh), the mma path of their type at
//! 1 ≤ m ≤ 64, and of the grouped launch of these and mq4k (`matmul_many_mma`, the last two
//! tests). The first test: every tile
//! (m = 1, 2, 3, 5, 8 on BM 8; 9, 16 on 16; 17, 32 on 32; 33, 64 on 64), the built-in k split
//! and forced ones (1: none; 3; 19: one block column each), n = 200 (partial last W tiles of
//! 128 and 256 rows), k = 4864 (19 block columns: uneven splits) and k = 4096, x at element
//! offsets 0 and 1 (the kernels read mq_quant_x's copy, any alignment of x works). They round x
//! per 32 elements (the group 16 of the generic kernel would miss this oracle by ~1e-5), so each
//! must match the f64 product of the exact weights and that x (nmse ≤ 1e-9) and the exact-x
//! product within the int8 bound. Output poisoned (NaN) before each call. m = 65, and Q8_0 rows
//! of k = 4896 (a partial 256-element column), must leave them (the generic kernel's rounding).
//! Prints "skipped" without a GPU.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};
use kiln_cuda::{MatmulPath, MmaXRounding};

#[test]
fn mq5k_mq6k_mq8_0_match_the_int8_x_oracle_at_every_tile_and_split() {
    let Some(be) = gpu() else { return };
    let n = 200;
    let r32 = MmaXRounding::Int8 { group: 32 };
    let mut failures = Vec::new();
    for (dt, k) in [DType::Q5_K, DType::Q6_K, DType::Q8_0]
        .into_iter()
        .flat_map(|d| [(d, 4864usize), (d, 4096)])
    {
        let wbytes = random_weight(dt, n, k, 600 + k as u64);
        let wdeq = kiln_core::quant::dequantize_vec(dt, &wbytes).unwrap();
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &wbytes).unwrap())
            .unwrap();
        let partial = be.mma_x_rounding(DType::Q8_0, n, 4896, 8);
        if partial != (MmaXRounding::Int8 { group: 16 }) {
            failures.push(format!(
                "Q8_0 k=4896 m=8: rounding {partial:?}, not the generic kernel's"
            ));
        }
        let beyond = be.mma_x_rounding(dt, n, k, 65);
        if beyond != (MmaXRounding::Int8 { group: 16 }) {
            failures.push(format!(
                "k={k} m=65: rounding {beyond:?}, not the generic kernel's"
            ));
        }
        for m in [1usize, 2, 3, 5, 8, 9, 16, 17, 32, 33, 64] {
            let rounding = be.mma_x_rounding(dt, n, k, m);
            if rounding != r32 {
                failures.push(format!(
                    "{dt} k={k} m={m}: rounding {rounding:?}, not mq5k/mq6k/mq8_0's"
                ));
                continue;
            }
            let x = Rng(41 + m as u64 + k as u64).vec(m * k + 1);
            let xb = upload(&*be, &f32_bytes(&x));
            for off in [0usize, 1] {
                let xs = &x[off..off + m * k];
                let prod = |xr: &[f64]| matmul_f64(xr, &wdeq, m, n, k);
                let want_q8 = prod(&mma_round(xs, r32));
                let want = prod(&xs.iter().map(|v| *v as f64).collect::<Vec<_>>());
                for splits in [None, Some(1), Some(3), Some(19)] {
                    be.force_mma_splits(splits);
                    let yb = poisoned(&*be, m * n);
                    let res = be.matmul_with(
                        xb.view(off * 4, Shape::d2(m, k), DType::F32).unwrap(),
                        &w,
                        yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                        MatmulPath::Mma,
                    );
                    be.force_mma_splits(None);
                    res.unwrap();
                    let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
                    let (eq, e) = (nmse(&y, &want_q8), nmse(&y, &want));
                    if off == 0 && splits.is_none() {
                        println!("{dt} m={m} k={k}: nmse vs int8-x {eq:.2e}, vs f64 {e:.2e}");
                    }
                    if eq.is_nan() || eq > 1e-9 || e > mma_x_nmse(r32) {
                        failures.push(format!(
                            "{dt} m={m} k={k} x+{off} splits {splits:?}: nmse vs int8-x {eq:e}, vs f64 {e:e}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The grouped launch (`matmul_many_mma`: one mq_quant_x and one `<kind>g_*` grid for up to 3
/// weights): for Q4_K (mq4k forced), Q5_K, Q6_K and Q8_0, parts of n = 200, 64 and 1000 rows
/// (partial and whole W tiles; a part smaller than one tile), m on every tile, the built-in k
/// split and forced ones (1, 3): every part must match its f64 int8-x oracle as its own matmul
/// does (nmse ≤ 1e-9) and, at a forced split, its own matmul bit for bit; outputs poisoned. Mixed types and m = 65 must be declined (false,
/// outputs untouched).
#[test]
fn grouped_launch_matches_each_part() {
    let Some(be) = gpu() else { return };
    let k = 4096;
    let ns = [200usize, 64, 1000];
    let r32 = MmaXRounding::Int8 { group: 32 };
    let mut failures = Vec::new();
    for dt in [DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0] {
        let mut ws = Vec::new();
        let mut deq = Vec::new();
        for (i, &n) in ns.iter().enumerate() {
            let bytes = random_weight(dt, n, k, 900 + i as u64);
            deq.push(kiln_core::quant::dequantize_vec(dt, &bytes).unwrap());
            ws.push(
                be.prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &bytes).unwrap())
                    .unwrap(),
            );
        }
        be.force_q4k_kernel((dt == DType::Q4_K).then_some(kiln_cuda::Q4kKernel::Int8));
        for m in [1usize, 2, 5, 8, 9, 16, 17, 33, 64, 65] {
            let x = Rng(77 + m as u64).vec(m * k);
            let xb = upload(&*be, &f32_bytes(&x));
            let xv = || xb.view(0, Shape::d2(m, k), DType::F32).unwrap();
            let want: Vec<Vec<f64>> = (0..3)
                .map(|i| matmul_f64(&mma_round(&x, r32), &deq[i], m, ns[i], k))
                .collect();
            for splits in [None, Some(1), Some(3)] {
                let ys: Vec<_> = ns.iter().map(|&n| poisoned(&*be, m * n)).collect();
                let parts: Vec<_> = (0..3)
                    .map(|i| {
                        let out = ys[i].view_mut(0, Shape::d2(m, ns[i]), DType::F32).unwrap();
                        (&ws[i], out)
                    })
                    .collect();
                be.force_mma_splits(splits);
                let ran = be.matmul_many_mma(xv(), &parts, false);
                be.force_mma_splits(None);
                let ran = ran.unwrap();
                if m > 64 {
                    let y = read_f32(&*be, view(&ys[0], &[m, ns[0]], DType::F32));
                    if ran || !y.iter().all(|v| v.is_nan()) {
                        failures.push(format!("{dt} m={m}: the group ran ({ran})"));
                    }
                    continue;
                }
                if !ran {
                    failures.push(format!("{dt} m={m} splits {splits:?}: declined"));
                    continue;
                }
                for i in 0..3 {
                    let y = read_f32(&*be, view(&ys[i], &[m, ns[i]], DType::F32));
                    let e = nmse(&y, &want[i]);
                    if e.is_nan() || e > 1e-9 {
                        failures.push(format!(
                            "{dt} m={m} splits {splits:?} part {i} (n={}): nmse {e:e}",
                            ns[i]
                        ));
                    }
                    // At a forced split the part's own matmul adds the same partial sums in
                    // the same order: bit for bit.
                    if splits.is_some() {
                        let own = single(&be, xv(), &ws[i], [m, ns[i]], splits);
                        if own.iter().zip(&y).any(|(a, b)| a.to_bits() != b.to_bits()) {
                            failures.push(format!(
                                "{dt} m={m} splits {splits:?} part {i}: differs from its own matmul"
                            ));
                        }
                    }
                }
            }
        }
        be.force_q4k_kernel(None);
    }
    // A group of two types is declined.
    let other = random_weight(DType::Q8_0, 64, k, 5);
    let w8 = be
        .prepare_weight(&HostTensor::new(DType::Q8_0, Shape::d2(64, k), &other).unwrap())
        .unwrap();
    let q6 = random_weight(DType::Q6_K, 64, k, 6);
    let w6 = be
        .prepare_weight(&HostTensor::new(DType::Q6_K, Shape::d2(64, k), &q6).unwrap())
        .unwrap();
    let m = 8;
    let xb = upload(&*be, &f32_bytes(&Rng(3).vec(m * k)));
    let (y0, y1) = (poisoned(&*be, m * 64), poisoned(&*be, m * 64));
    let parts = [
        (&w8, y0.view_mut(0, Shape::d2(m, 64), DType::F32).unwrap()),
        (&w6, y1.view_mut(0, Shape::d2(m, 64), DType::F32).unwrap()),
    ];
    let xv = xb.view(0, Shape::d2(m, k), DType::F32).unwrap();
    if be.matmul_many_mma(xv, &parts, false).unwrap() {
        failures.push("Q8_0 + Q6_K: the group ran".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `x [m, k] · wᵀ` through `matmul_with(Mma)` at k split `splits` (the part's own matmul).
fn single(
    be: &kiln_cuda::CudaBackend,
    x: kiln_core::View<'_>,
    w: &kiln_core::Weight,
    [m, n]: [usize; 2],
    splits: Option<usize>,
) -> Vec<f32> {
    let y = poisoned(be, m * n);
    be.force_mma_splits(splits);
    let r = be.matmul_with(
        x,
        w,
        y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
        MatmulPath::Mma,
    );
    be.force_mma_splits(None);
    r.unwrap();
    read_f32(be, view(&y, &[m, n], DType::F32))
}

/// The grouped launch at the Llama-3-8B shapes (q/k/v 4096 + 1024 + 1024 rows, gate/up 2 ×
/// 14336; k = 4096) for Q6_K and Q8_0 at m = 8 and 16: at forced k splits 1 and 4 every part
/// equals its own matmul bit for bit (many W tiles per segment; the test above covers the
/// tiles and the oracle).
#[test]
fn grouped_launch_equals_each_own_matmul_at_model_shapes() {
    let Some(be) = gpu() else { return };
    let k = 4096;
    let mut failures = Vec::new();
    for dt in [DType::Q6_K, DType::Q8_0] {
        for ns in [vec![4096usize, 1024, 1024], vec![14336, 14336]] {
            let ws: Vec<_> = ns
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let bytes = random_weight(dt, n, k, 40 + i as u64);
                    be.prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &bytes).unwrap())
                        .unwrap()
                })
                .collect();
            for m in [8usize, 16] {
                let xb = upload(&*be, &f32_bytes(&Rng(5 + m as u64).vec(m * k)));
                let xv = || xb.view(0, Shape::d2(m, k), DType::F32).unwrap();
                for splits in [Some(1), Some(4)] {
                    let ys: Vec<_> = ns.iter().map(|&n| poisoned(&*be, m * n)).collect();
                    let parts: Vec<_> = ws
                        .iter()
                        .zip(&ys)
                        .zip(&ns)
                        .map(|((w, y), &n)| {
                            (w, y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap())
                        })
                        .collect();
                    be.force_mma_splits(splits);
                    let ran = be.matmul_many_mma(xv(), &parts, false);
                    be.force_mma_splits(None);
                    if !ran.unwrap() {
                        failures.push(format!("{dt} {ns:?} m={m}: declined"));
                        continue;
                    }
                    for (i, (&n, w)) in ns.iter().zip(&ws).enumerate() {
                        let got = read_f32(&*be, view(&ys[i], &[m, n], DType::F32));
                        let own = single(&be, xv(), w, [m, n], splits);
                        let diff = own
                            .iter()
                            .zip(&got)
                            .filter(|(a, b)| a.to_bits() != b.to_bits())
                            .count();
                        if diff > 0 {
                            failures.push(format!(
                                "{dt} {ns:?} m={m} splits {splits:?} part {i}: {diff} values differ"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
