//! GPU tests of the pipelined GEMV at several x rows (`gemvp_<type>_m2` / `_m4`, `gemvps_…`,
//! `gemvpg_…`; kernels/gemv_pipe.cuh with M = 2, 4: one decode of each W step serves all rows).
//! Every type the pipelined kernel takes (`gemv_pipe_types`), forced at m = 2, 3 (the M = 4
//! kernel with a row past m) and 4, k = 4096 and 14336 (a row split over several warps), n = 202
//! (a partial last group of 4 rows), x at element offsets 0 and 1 (16-byte and 4-byte aligned):
//! each x row must match the f64 product of the exact weights and that row rounded to int8 per
//! 16 (nmse ≤ 1e-9; the rows differ, so a kernel that mixed them up fails) and the exact-x
//! product within the int8 bound; forcing it at m = 5 is an error, not a panic. Then the
//! segmented and GLU kernels at m = 2, 3, 4 (`matmul_group`, `matmul_glu_group`) against the
//! same oracle, segment tails included, where the automatic dispatch gives them that many rows
//! (`pipe_max_rows`). Outputs poisoned (NaN) before each call. Prints "skipped" without a GPU,
//! and without sm_90.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Activation, Backend, Buffer, DType, HostTensor, Shape, ViewMut, Weight};
use kiln_cuda::{CudaBackend, GroupKernel};

/// cuda:0 if it is sm_90 (the copy engine the pipelined kernels need), else prints "skipped".
fn sm90_gpu() -> Option<std::sync::Arc<CudaBackend>> {
    let be = gpu()?;
    if be.info().caps.compute_capability.is_none_or(|c| c.0 < 9) {
        println!("skipped: the pipelined GEMV needs sm_90");
        return None;
    }
    Some(be)
}

/// A prepared weight with its dequantized values.
fn weight(be: &dyn Backend, dt: DType, n: usize, k: usize, seed: u64) -> (Weight, Vec<f32>) {
    let bytes = random_weight(dt, n, k, seed);
    let wd = kiln_core::quant::dequantize_vec(dt, &bytes).unwrap();
    let w = be
        .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &bytes).unwrap())
        .unwrap();
    (w, wd)
}

/// x_row · Wᵀ in f64 for the n rows of `wd` ([n, k]).
fn product(xe: &[f64], wd: &[f32], n: usize, k: usize) -> Vec<f64> {
    (0..n)
        .map(|c| (0..k).map(|j| xe[j] * wd[c * k + j] as f64).sum())
        .collect()
}

#[test]
fn gemvp_rows_forced_match_the_int8_x_oracle_per_row() {
    let Some(be) = sm90_gpu() else { return };
    let n = 202;
    let mut failures = Vec::new();
    for (k, m) in [(4096usize, 2usize), (14336, 2), (4096, 3), (14336, 4)] {
        for (ti, dt) in kiln_cuda::gemv_pipe_types().into_iter().enumerate() {
            let (w, wd) = weight(&*be, dt, n, k, 700 + ti as u64 + k as u64);
            let x = Rng(23 + k as u64).vec(m * k + 1);
            let xb = upload(&*be, &f32_bytes(&x));
            for off in [0usize, 1] {
                let yb = poisoned(&*be, m * n);
                let xv = xb.view(off * 4, Shape::d2(m, k), DType::F32).unwrap();
                let yv = yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap();
                be.matmul_fused_m1_pipe(xv, &w, yv).unwrap();
                let y = read_f32(&*be, view(&yb, &[m * n], DType::F32));
                for r in 0..m {
                    let xr = &x[off + r * k..off + (r + 1) * k];
                    let want_q8 = product(&q8_round(xr).0, &wd, n, k);
                    let xe: Vec<f64> = xr.iter().map(|&v| v as f64).collect();
                    let want = product(&xe, &wd, n, k);
                    let got = &y[r * n..(r + 1) * n];
                    let (eq, e) = (nmse(got, &want_q8), nmse(got, &want));
                    if eq.is_nan() || eq > 1e-9 || e > Q8_X_NMSE {
                        failures.push(format!(
                            "{dt} k={k} m={m} x+{off} row {r}: nmse vs int8-x {eq:e}, vs f64 {e:e}"
                        ));
                    }
                }
            }
        }
    }
    // Five rows: the pipelined kernels stop at four, so forcing them is an error.
    let (w, _) = weight(&*be, DType::Q4_K, 64, 4096, 5);
    let xb = upload(&*be, &f32_bytes(&Rng(3).vec(5 * 4096)));
    let yb = poisoned(&*be, 5 * 64);
    let r = be.matmul_fused_m1_pipe(
        xb.view(0, Shape::d2(5, 4096), DType::F32).unwrap(),
        &w,
        yb.view_mut(0, Shape::d2(5, 64), DType::F32).unwrap(),
    );
    if r.is_ok() {
        failures.push("m = 5 forced on the pipelined kernel did not fail".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The group kernel expected at m rows: the pipelined one where the automatic dispatch takes the
/// type (`gemv_pipe_auto`), `KILN_GEMV_PIPE_GROUP` is not 0 and m ≤ `pipe_max_rows`; else no
/// group (one matmul per part).
fn expected(dt: DType, m: usize) -> Option<GroupKernel> {
    let group = std::env::var("KILN_GEMV_PIPE_GROUP").map_or(true, |v| v != "0");
    (kiln_cuda::gemv_pipe_auto(dt) && group && m <= kiln_cuda::pipe_max_rows())
        .then_some(GroupKernel::Pipe)
}

/// Whether the group ran the expected kernel (else a failure) and produced outputs to check.
fn ran_as_expected(
    ran: Option<GroupKernel>,
    dt: DType,
    m: usize,
    what: &str,
    failures: &mut Vec<String>,
) -> bool {
    let want = expected(dt, m);
    if ran != want {
        failures.push(format!("{dt} m={m} {what}: ran {ran:?}, expected {want:?}"));
        return false;
    }
    ran.is_some()
}

#[test]
fn segmented_and_glu_kernels_at_several_rows_match_the_oracle() {
    let Some(be) = sm90_gpu() else { return };
    let k = 4096;
    let mut failures = Vec::new();
    for m in [2usize, 3, 4] {
        group_cases(&be, k, m, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The segmented and GLU cases at m x rows (see the module doc).
fn group_cases(be: &CudaBackend, k: usize, m: usize, failures: &mut Vec<String>) {
    let x = Rng(31 + m as u64).vec(m * k);
    let xb = upload(be, &f32_bytes(&x));
    let xv = xb.view(0, Shape::d2(m, k), DType::F32).unwrap();
    let xe: Vec<Vec<f64>> = (0..m).map(|r| q8_round(&x[r * k..(r + 1) * k]).0).collect();
    // Segments with tails (rows not multiples of the 4-row group).
    for (ci, dt) in [DType::Q4_K, DType::Q6_K, DType::Q5_0]
        .into_iter()
        .enumerate()
    {
        let rows = [258usize, 66, 67];
        let ws: Vec<(Weight, Vec<f32>)> = rows
            .iter()
            .enumerate()
            .map(|(i, &n)| weight(be, dt, n, k, 40 + 10 * ci as u64 + i as u64))
            .collect();
        let ys: Vec<Buffer> = rows.iter().map(|&n| poisoned(be, m * n)).collect();
        let parts: Vec<(&Weight, ViewMut<'_>)> = ws
            .iter()
            .zip(&ys)
            .zip(rows)
            .map(|(((w, _), y), n)| (w, y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap()))
            .collect();
        let ran = be.matmul_group(xv, &parts, false).unwrap();
        if !ran_as_expected(ran, dt, m, "segments", failures) {
            continue;
        }
        for (((_, wd), y), n) in ws.iter().zip(&ys).zip(rows) {
            let got = read_f32(be, view(y, &[m * n], DType::F32));
            for (r, xr) in xe.iter().enumerate() {
                let e = nmse(&got[r * n..(r + 1) * n], &product(xr, wd, n, k));
                if e.is_nan() || e > 1e-9 {
                    failures.push(format!("{dt} m={m} segment n={n} row {r}: nmse {e:e}"));
                }
            }
        }
    }
    // GLU mode, n odd (a tail group of one gate/up row pair), both activations.
    for (ci, dt) in [DType::Q4_K, DType::Q6_K].into_iter().enumerate() {
        let n = 259;
        let (g, gd) = weight(be, dt, n, k, 80 + 10 * ci as u64);
        let (u, ud) = weight(be, dt, n, k, 81 + 10 * ci as u64);
        for act in [Activation::Silu, Activation::GeluTanh] {
            let (gs, us, out) = (
                poisoned(be, m * n),
                poisoned(be, m * n),
                poisoned(be, m * n),
            );
            let views =
                [&gs, &us, &out].map(|b| b.view_mut(0, Shape::d2(m, n), DType::F32).unwrap());
            let ran = be.matmul_glu_group(xv, &g, &u, act, views, false).unwrap();
            if !ran_as_expected(ran, dt, m, &format!("GLU {act:?}"), failures) {
                continue;
            }
            let got = read_f32(be, view(&out, &[m * n], DType::F32));
            for (r, xr) in xe.iter().enumerate() {
                let (pg, pu) = (product(xr, &gd, n, k), product(xr, &ud, n, k));
                let want: Vec<f64> = pg
                    .iter()
                    .zip(&pu)
                    .map(|(&a, &b)| act_f64(a, act) * b)
                    .collect();
                let e = nmse(&got[r * n..(r + 1) * n], &want);
                if e.is_nan() || e > 1e-9 {
                    failures.push(format!("{dt} m={m} GLU {act:?} row {r}: nmse {e:e}"));
                }
            }
        }
    }
}
