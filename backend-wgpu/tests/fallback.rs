//! The shaders without subgroups and without f16 (workgroup-memory reductions, f32 GEMM
//! tiles), forced with KILN_WGPU_NO_SUBGROUPS / KILN_WGPU_NO_F16. Its own process, one test.
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};
use kiln_wgpu::MatmulPath;

#[test]
fn fallback_paths_match() {
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("KILN_WGPU_NO_SUBGROUPS", "1");
        std::env::set_var("KILN_WGPU_NO_F16", "1");
    }
    let Some(be) = open() else { return };
    assert!(!be.has_subgroups() && !be.has_f16());
    for d in [DType::Q4_K, DType::Q8_0, DType::Q6_K, DType::BF16] {
        let c = quant_case(d).expect("shared quant data");
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(8, 512), &c.bin).unwrap())
            .unwrap();
        let xb = upload(&be, &f32_bytes(&c.x));
        // Gemv twice for Q8_0/Q4_K: gemv_v (exact x) and gemv_x8 (x rounded to int8, its
        // workgroup-tree reduction here)
        for (path, x8) in [
            (MatmulPath::Gemv, false),
            (MatmulPath::Gemv, true),
            (MatmulPath::Gemm, true),
        ] {
            be.set_vgemv_x8(x8);
            let int8 = x8 && path == MatmulPath::Gemv && matches!(d, DType::Q4_K | DType::Q8_0);
            let (_, dq) = round_x8(&c.x);
            let o = poisoned(&be, 8);
            be.matmul_with(
                xb.view(0, Shape::d2(1, 512), DType::F32).unwrap(),
                &w,
                o.view_mut(0, Shape::d2(1, 8), DType::F32).unwrap(),
                path,
            )
            .unwrap();
            let got = read_f32(&be, &o, 0, 8);
            for r in 0..8 {
                // int8 x: + Σ_t |w_t|·d_g(t)/2
                let bound: f64 = if int8 {
                    (0..512)
                        .map(|t| f64::from(c.deq[r * 512 + t]).abs() * dq[t / 16] / 2.0)
                        .sum()
                } else {
                    0.0
                };
                let tol = bound + 1e-4 * c.y[r].abs() as f64 + 1e-6 * c.row_abs_dot[r];
                let err = (got[r] as f64 - c.y[r] as f64).abs();
                assert!(
                    err <= tol,
                    "{d} {path:?} x8 {x8}: y[{r}] = {} want {}",
                    got[r],
                    c.y[r]
                );
            }
        }
    }
    // rms_norm through the workgroup-memory tree
    let mut r = rng(9);
    let dim = 777;
    let x = randn(&mut r, 2 * dim, 2.0);
    let w = randn(&mut r, dim, 1.0);
    let (xb, wb, o) = (
        upload(&be, &f32_bytes(&x)),
        upload(&be, &f32_bytes(&w)),
        poisoned(&be, 2 * dim),
    );
    be.rms_norm(
        xb.view(0, Shape::d2(2, dim), DType::F32).unwrap(),
        wb.view(0, Shape::d1(dim), DType::F32).unwrap(),
        1e-5,
        o.view_mut(0, Shape::d2(2, dim), DType::F32).unwrap(),
    )
    .unwrap();
    let got = read_f32(&be, &o, 0, 2 * dim);
    for i in 0..2 {
        let row = &x[i * dim..(i + 1) * dim];
        let inv = 1.0
            / (row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / dim as f64 + 1e-5).sqrt();
        let want: Vec<f32> = (0..dim)
            .map(|j| (f64::from(row[j]) * inv * f64::from(w[j])) as f32)
            .collect();
        assert_close("rms_norm", &got[i * dim..(i + 1) * dim], &want, 1e-5, 1e-5);
    }
}
