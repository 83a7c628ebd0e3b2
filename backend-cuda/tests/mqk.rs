//! GPU test of the raw-block int8 tensor-core kernels `mq5k` (Q5_K; kernels/matmul_mma.cu),
//! `mq6k` (Q6_K) and `mq8_0` (Q8_0; kernels/matmul_mqk.cuh), the mma path of their type at
//! 1 ≤ m ≤ 64: every tile
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
