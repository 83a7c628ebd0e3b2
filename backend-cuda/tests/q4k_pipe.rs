//! GPU test of the pipelined Q4_K kernel `mp4k` (kernels/matmul_mp.cuh; 2 ≤ m ≤ 8, sm_90) in
//! both copy flavours (one bulk copy per W row, `Pipe`; one 2-D tensor copy, `PipeTensor`),
//! each forced on the mma path at m = 2, 3, 8 (partial and whole n8 tiles; at m = 9 and 16 it
//! must not run: forcing it there leaves the tuned kernel), n = 200
//! (a partial last group of 16 W rows), k = 4864 (19 block columns: an odd count, so the last
//! stage of 2 block columns is half full, and uneven k splits over the warps) and k = 4096, x at
//! element offsets 0, 4 and 1 (16-byte aligned, 16-byte aligned at 16, 4-byte aligned). It
//! rounds x as mq4k does (int8 per 32), so it must match the f64 product of the exact weights
//! and that x (nmse ≤ 1e-9) and the exact-x product within the int8 bound. Output poisoned
//! (NaN) before each call. Prints "skipped" without a GPU, and without sm_90.
//! Also `matmul_many_mma` (x rounded once for several mp4k or mh4k products, m = 2 … 33),
//! as one grid for the group and as one launch per part: at a forced k split (1, 2) each part
//! equals its own single matmul bit for bit; at the default split (each launch picks its own)
//! within f32 summation order (nmse ≤ 1e-10).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, Buffer, DType, HostTensor, Shape, ViewMut, Weight};
use kiln_cuda::{MatmulPath, MmaXRounding, Q4kKernel};

#[test]
fn mp4k_forced_matches_the_int8_x_oracle() {
    let Some(be) = gpu() else { return };
    if be.info().caps.compute_capability.is_none_or(|c| c.0 < 9) {
        println!("skipped: mp4k needs sm_90");
        return;
    }
    let (dt, n) = (DType::Q4_K, 200);
    let r = MmaXRounding::Int8 { group: 32 };
    let mut failures = Vec::new();
    for k in [4864usize, 4096] {
        let wbytes = random_weight(dt, n, k, 900 + k as u64);
        let wdeq = kiln_core::quant::dequantize_vec(dt, &wbytes).unwrap();
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &wbytes).unwrap())
            .unwrap();
        for m in [9usize, 16] {
            be.force_q4k_kernel(Some(Q4kKernel::Pipe));
            let kern = be.mma_q4k_kernel(dt, n, k, m);
            be.force_q4k_kernel(None);
            if matches!(kern, Some(Q4kKernel::Pipe | Q4kKernel::PipeTensor)) {
                failures.push(format!(
                    "m={m}: Pipe forced where it does not apply ran {kern:?}"
                ));
            }
        }
        for m in [2usize, 3, 8] {
            let x = Rng(31 + m as u64 + k as u64).vec(m * k + 4);
            let xb = upload(&*be, &f32_bytes(&x));
            for off in [0usize, 4, 1] {
                let xs = &x[off..off + m * k];
                let prod = |xr: &[f64]| matmul_f64(xr, &wdeq, m, n, k);
                let want_q8 = prod(&mma_round(xs, r));
                let want = prod(&xs.iter().map(|v| *v as f64).collect::<Vec<_>>());
                for forced in [Q4kKernel::Pipe, Q4kKernel::PipeTensor] {
                    be.force_q4k_kernel(Some(forced));
                    // The forced kernel is the one dispatch runs (it fell back to nothing else).
                    let kern = be.mma_q4k_kernel(dt, n, k, m);
                    let rounding = be.mma_x_rounding(dt, n, k, m);
                    let yb = poisoned(&*be, m * n);
                    let res = be.matmul_with(
                        xb.view(off * 4, Shape::d2(m, k), DType::F32).unwrap(),
                        &w,
                        yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                        MatmulPath::Mma,
                    );
                    be.force_q4k_kernel(None);
                    res.unwrap();
                    if kern != Some(forced) || rounding != r {
                        failures.push(format!(
                            "m={m} k={k}: forced {forced:?} ran {kern:?} rounding {rounding:?}"
                        ));
                        continue;
                    }
                    let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
                    let (eq, e) = (nmse(&y, &want_q8), nmse(&y, &want));
                    println!(
                        "{forced:?} m={m} k={k} x+{off}: nmse vs int8-x {eq:.2e}, vs f64 {e:.2e}"
                    );
                    if eq.is_nan() || eq > 1e-9 || e > mma_x_nmse(r) {
                        failures.push(format!(
                            "{forced:?} m={m} k={k} x+{off}: nmse vs int8-x {eq:e}, vs f64 {e:e}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn many_rounds_x_once_and_matches_single_products() {
    let Some(be) = gpu() else { return };
    if be.info().caps.compute_capability.is_none_or(|c| c.0 < 9) {
        println!("skipped: mp4k needs sm_90");
        return;
    }
    let (dt, k) = (DType::Q4_K, 4096);
    // q/k/v-like parts with partial last groups of 16 rows.
    let rows = [200usize, 64, 37];
    let ws: Vec<Weight> = rows
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let b = random_weight(dt, n, k, 700 + i as u64);
            be.prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &b).unwrap())
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for m in [2usize, 3, 8, 16, 33] {
        let x = Rng(77 + m as u64).vec(m * k + 1);
        let xb = upload(&*be, &f32_bytes(&x));
        for off in [0usize, 1] {
            let xv = xb.view(off * 4, Shape::d2(m, k), DType::F32).unwrap();
            let kernels: &[Q4kKernel] = if m <= 8 {
                &[Q4kKernel::Pipe, Q4kKernel::PipeTensor, Q4kKernel::F16]
            } else {
                &[Q4kKernel::F16]
            };
            // Forced k splits (mh4k: grid z; mp4k: warps per block): the grouped launch
            // sums in the single launch's order, so bitwise equal. The default: each launch
            // picks its own split, so equal up to f32 summation order.
            // Both launch forms: one grid for the group and one launch per part.
            let runs = kernels.iter().flat_map(|f| {
                [Some(1usize), Some(2), None]
                    .into_iter()
                    .flat_map(move |s| [true, false].map(|g| (*f, s, g)))
            });
            for (forced, splits, grouped) in runs {
                be.force_q4k_kernel(Some(forced));
                be.force_mma_splits(splits);
                be.force_many_grouped(Some(grouped));
                let many: Vec<Buffer> = rows.iter().map(|&n| poisoned(&*be, m * n)).collect();
                let parts: Vec<(&Weight, ViewMut<'_>)> = ws
                    .iter()
                    .zip(&many)
                    .zip(rows)
                    .map(|((w, y), n)| (w, y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap()))
                    .collect();
                let ran = be.matmul_many_mma(xv, &parts, false);
                let singles: Vec<Buffer> = rows.iter().map(|&n| poisoned(&*be, m * n)).collect();
                let single = ws
                    .iter()
                    .zip(&singles)
                    .zip(rows)
                    .try_for_each(|((w, y), n)| {
                        be.matmul_with(
                            xv,
                            w,
                            y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                            MatmulPath::Mma,
                        )
                    });
                be.force_q4k_kernel(None);
                be.force_mma_splits(None);
                be.force_many_grouped(None);
                single.unwrap();
                let what = format!("{forced:?} m={m} x+{off} splits {splits:?} grouped {grouped}");
                if !ran.unwrap() {
                    failures.push(format!("{what}: the shared-x path did not run"));
                    continue;
                }
                for (i, n) in rows.iter().enumerate() {
                    let a = read_f32(&*be, view(&many[i], &[m * n], DType::F32));
                    let b = read_f32(&*be, view(&singles[i], &[m * n], DType::F32));
                    let finite = a.iter().all(|v| v.is_finite());
                    let ok = if splits.is_some() {
                        a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits())
                    } else {
                        let e = nmse(&a, &b.iter().map(|&v| v as f64).collect::<Vec<_>>());
                        e <= 1e-10
                    };
                    if !ok || !finite {
                        failures.push(format!("{what} part {i} (n={n}): differs from its matmul"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
