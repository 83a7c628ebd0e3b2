//! matmul: y = x·Wᵀ for all 15 weight dtypes, GEMV (m = 1, 2) and GEMM (m = 7, 33, 130) rows,
//! k = 4096 and k = 4096 + 3·256, odd n (4099, 259, 67); every m = 1..8 for Q8_0 and Q4_K (a
//! backend's small-batch kernels); `matmul_many` (weights sharing x).

use kiln_core::{Activation, Backend, DType, OpKind};
use kiln_tests::data::{self, HostWeight, WeightSource};
use kiln_tests::{conformance, dev, harness, oracle, require_op, tolerance};

/// Run x `[m, k]` (activations ~N(0,1) with outliers) against `w` for each m.
fn run_matmul(b: &dyn Backend, w: &HostWeight, ms: &[usize], what: &str) {
    let (n, k) = (w.shape.dim(0), w.shape.dim(1));
    let wd = data::dequantize(w);
    let weight = dev::prepare(b, w);
    let mut rng = harness::rng();
    for &m in ms {
        let x = rng.activations(m * k, 1.0);
        let xt = dev::upload_f32(b, &[m, k], &x);
        let out = dev::output(b, DType::F32, &[m, n]);
        dev::ok("matmul", b.matmul(xt.view(), &weight, out.view_mut()));
        let got = dev::read_out(b, &out, "matmul out");
        let exp = oracle::matmul::matmul(&x, &wd, m, n, k);
        let what = format!("matmul {} {what} m={m} n={n} k={k}", w.dtype);
        tolerance::check(b, OpKind::Matmul, w.dtype, &what, &[m, n], &got, &exp);
    }
}

/// Few rows (the fused dequant-GEMV path): m = 1, 2; n = 4099, k = 4864 (19 super-blocks).
fn matmul_gemv_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let w = data::random_weight(
        &mut harness::rng(),
        dt,
        &[4099, 4864],
        0.02,
        WeightSource::RandomBlocks,
    );
    run_matmul(b, &w, &[1, 2], "gemv");
}

/// Every small batch m = 1..=8 (odd ones too) at k = 4096 and 4864 (a multiple of 16 that is
/// not one of 1024), n = 259: the rows a decode step of 2..8 sequences multiplies.
fn matmul_rows_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let mut rng = harness::rng();
    for k in [4096, 4864] {
        let w = data::random_weight(&mut rng, dt, &[259, k], 0.02, WeightSource::RandomBlocks);
        run_matmul(b, &w, &[1, 2, 3, 4, 5, 6, 7, 8], "rows");
    }
}

/// More rows (tiled GEMM paths, partial tiles): m = 7, 33; n = 259, k = 4096.
pub(crate) fn matmul_gemm_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let w = data::random_weight(
        &mut harness::rng(),
        dt,
        &[259, 4096],
        0.02,
        WeightSource::RandomBlocks,
    );
    run_matmul(b, &w, &[7, 33], "gemm");
}

/// Weights made by core's quantizer from random f32 (realistic scales, negative d).
fn matmul_quantized_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let w = data::random_weight(
        &mut harness::rng(),
        dt,
        &[67, 4096],
        0.02,
        WeightSource::Quantized,
    );
    run_matmul(b, &w, &[1, 33], "quantized");
}

/// Big shapes: m = 33 against n = 4099, k = 4864 (a whole projection), and m = 130 rows.
fn matmul_large_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let mut rng = harness::rng();
    let w = data::random_weight(
        &mut rng,
        dt,
        &[4099, 4864],
        0.02,
        WeightSource::RandomBlocks,
    );
    run_matmul(b, &w, &[33], "large");
    let w = data::random_weight(&mut rng, dt, &[259, 4096], 0.02, WeightSource::RandomBlocks);
    run_matmul(b, &w, &[130], "large");
}

/// `matmul_many`: three weights reading the same x (q/k/v-like: n = 259, 67, 67, row counts
/// that leave partial groups) at m = 1, 2, 3, 8, 17, 40 (where a backend may run one kernel:
/// CUDA's segmented GEMV, its shared-x mp4k / mh4k and its grouped mq kernels); every output
/// against the oracle; an output of the wrong shape is an error.
fn matmul_many_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let k = 4864;
    let mut rng = harness::rng();
    let ws: Vec<HostWeight> = [259, 67, 67]
        .iter()
        .map(|&n| data::random_weight(&mut rng, dt, &[n, k], 0.02, WeightSource::RandomBlocks))
        .collect();
    let wd: Vec<Vec<f32>> = ws.iter().map(data::dequantize).collect();
    let prepared: Vec<_> = ws.iter().map(|w| dev::prepare(b, w)).collect();
    for m in [1usize, 2, 3, 8, 17, 40] {
        let x = rng.activations(m * k, 1.0);
        let xt = dev::upload_f32(b, &[m, k], &x);
        let outs: Vec<_> = ws
            .iter()
            .map(|w| dev::output(b, DType::F32, &[m, w.shape.dim(0)]))
            .collect();
        let parts: Vec<_> = prepared
            .iter()
            .zip(&outs)
            .map(|(w, o)| (w, o.view_mut()))
            .collect();
        dev::ok("matmul_many", b.matmul_many(xt.view(), &parts));
        for (i, (w, o)) in ws.iter().zip(&outs).enumerate() {
            let n = w.shape.dim(0);
            let got = dev::read_out(b, o, "matmul_many out");
            let exp = oracle::matmul::matmul(&x, &wd[i], m, n, k);
            let what = format!("matmul_many {dt} part {i} m={m} n={n} k={k}");
            tolerance::check(b, OpKind::Matmul, dt, &what, &[m, n], &got, &exp);
        }
    }
    let x = dev::upload_f32(b, &[1, k], &rng.activations(k, 1.0));
    let good = dev::output(b, DType::F32, &[1, 259]);
    let bad = dev::output(b, DType::F32, &[1, 68]);
    dev::expect_err("matmul_many with an out of [1,68] for W [67,k]", || {
        b.matmul_many(
            x.view(),
            &[
                (&prepared[0], good.view_mut()),
                (&prepared[1], bad.view_mut()),
            ],
        )
    });
}

/// `matmul_glu`: act(x·Gᵀ) ⊙ x·Uᵀ for SiLU and GELU-tanh, n = 259 (odd), m = 1, 2, 5, 8 (where
/// a backend may fuse the GLU into the GEMV), against glu of the oracle's products.
fn matmul_glu_case(b: &dyn Backend, dt: DType) {
    if !require_op(b, OpKind::Matmul, dt) {
        return;
    }
    let (n, k) = (259, 4864);
    let mut rng = harness::rng();
    let ws: Vec<HostWeight> = (0..2)
        .map(|_| data::random_weight(&mut rng, dt, &[n, k], 0.02, WeightSource::RandomBlocks))
        .collect();
    let wd: Vec<Vec<f32>> = ws.iter().map(data::dequantize).collect();
    let (g, u) = (dev::prepare(b, &ws[0]), dev::prepare(b, &ws[1]));
    for act in [Activation::Silu, Activation::GeluTanh] {
        for m in [1usize, 2, 5, 8] {
            let x = rng.activations(m * k, 1.0);
            let xt = dev::upload_f32(b, &[m, k], &x);
            let (gs, us) = (
                dev::output(b, DType::F32, &[m, n]),
                dev::output(b, DType::F32, &[m, n]),
            );
            let out = dev::output(b, DType::F32, &[m, n]);
            dev::ok(
                "matmul_glu",
                b.matmul_glu(
                    xt.view(),
                    &g,
                    &u,
                    act,
                    gs.view_mut(),
                    us.view_mut(),
                    out.view_mut(),
                ),
            );
            let got = dev::read_out(b, &out, "matmul_glu out");
            let eg = oracle::matmul::matmul(&x, &wd[0], m, n, k);
            let eu = oracle::matmul::matmul(&x, &wd[1], m, n, k);
            let exp: Vec<f64> = eg
                .iter()
                .zip(&eu)
                .map(|(&a, &b)| oracle::glu::act(act, a) * b)
                .collect();
            // What the matmul rule allows g and u (max_rel·rms of each product), carried
            // through act(g)·u to first order: |act'(g)·u|·δg + |act(g)|·δu per element. An
            // output is the product of two rounded dots, so one element may be off by more
            // than max_rel·rms(out) even where g and u are each within the matmul bound (seen
            // with int8-rounded x at m = 8: 9.4e-2·rms against 8e-2).
            let rel = match tolerance::rule_for(b.id().kind, OpKind::Matmul, dt).tol {
                tolerance::Tol::Nmse { max_rel, .. } => max_rel,
                tolerance::Tol::Elem { rtol, .. } => rtol,
            };
            let rms = |v: &[f64]| (v.iter().map(|e| e * e).sum::<f64>() / v.len() as f64).sqrt();
            let (dg, du) = (rel * rms(&eg), rel * rms(&eu));
            let extra: Vec<f64> = eg
                .iter()
                .zip(&eu)
                .map(|(&g, &u)| {
                    let h = 1e-4 * g.abs().max(1.0);
                    let d =
                        (oracle::glu::act(act, g + h) - oracle::glu::act(act, g - h)) / (2.0 * h);
                    (d * u).abs() * dg + oracle::glu::act(act, g).abs() * du
                })
                .collect();
            let what = format!("matmul_glu {dt} {act:?} m={m} n={n} k={k}");
            tolerance::check_with_atol(b, OpKind::Matmul, dt, &what, &[m, n], &got, &exp, &extra);
        }
    }
}

/// Bad arguments return Err, never panic; views of another device give WrongDevice.
fn matmul_errors_case(b: &dyn Backend) {
    let op = OpKind::Matmul;
    let mut rng = harness::rng();
    let w = data::random_weight(
        &mut rng,
        DType::F32,
        &[17, 64],
        0.02,
        WeightSource::RandomBlocks,
    );
    let weight = match b.prepare_weight(&w.host_tensor()) {
        Ok(w) => w,
        Err(e) => panic!("prepare_weight f32 [17, 64]: {e} ({})", harness::context()),
    };
    let x = dev::upload_f32(b, &[3, 64], &rng.normals(3 * 64, 1.0));
    let out = dev::output(b, DType::F32, &[3, 17]);
    let x_k = dev::upload_f32(b, &[3, 32], &rng.normals(3 * 32, 1.0));
    dev::expect_err("matmul x [3,32] vs W [17,64]", || {
        b.matmul(x_k.view(), &weight, out.view_mut())
    });
    let out_n = dev::output(b, DType::F32, &[3, 18]);
    dev::expect_err("matmul out [3,18] for W [17,64]", || {
        b.matmul(x.view(), &weight, out_n.view_mut())
    });
    let out_m = dev::output(b, DType::F32, &[4, 17]);
    dev::expect_err("matmul out [4,17] for x [3,64]", || {
        b.matmul(x.view(), &weight, out_m.view_mut())
    });
    let x_i = dev::upload_i32(b, &[3, 64], &[1; 192]);
    dev::expect_err("matmul x i32", || {
        b.matmul(x_i.view(), &weight, out.view_mut())
    });
    let i32w = data::HostWeight {
        dtype: DType::I32,
        shape: w.shape,
        bytes: vec![0; 17 * 64 * 4],
    };
    dev::expect_err("prepare_weight i32", || {
        b.prepare_weight(&i32w.host_tensor()).map(|_| ())
    });
    let xf = dev::upload_f32(dev::foreign(), &[3, 64], &rng.normals(3 * 64, 1.0));
    dev::expect_wrong_device(b, op, DType::F32, "matmul x on another device", || {
        b.matmul(xf.view(), &weight, out.view_mut())
    });
    let of = dev::output(dev::foreign(), DType::F32, &[3, 17]);
    dev::expect_wrong_device(b, op, DType::F32, "matmul out on another device", || {
        b.matmul(x.view(), &weight, of.view_mut())
    });
    let wf = dev::prepare(dev::foreign(), &w);
    dev::expect_wrong_device(b, op, DType::F32, "matmul weight of another device", || {
        b.matmul(x.view(), &wf, out.view_mut())
    });
}

conformance! {
    matmul_f32_gemv => matmul_gemv_case(DType::F32);
    matmul_f16_gemv => matmul_gemv_case(DType::F16);
    matmul_bf16_gemv => matmul_gemv_case(DType::BF16);
    matmul_q4_0_gemv => matmul_gemv_case(DType::Q4_0);
    matmul_q4_1_gemv => matmul_gemv_case(DType::Q4_1);
    matmul_q5_0_gemv => matmul_gemv_case(DType::Q5_0);
    matmul_q5_1_gemv => matmul_gemv_case(DType::Q5_1);
    matmul_q8_0_gemv => matmul_gemv_case(DType::Q8_0);
    matmul_q2_k_gemv => matmul_gemv_case(DType::Q2_K);
    matmul_q3_k_gemv => matmul_gemv_case(DType::Q3_K);
    matmul_q4_k_gemv => matmul_gemv_case(DType::Q4_K);
    matmul_q5_k_gemv => matmul_gemv_case(DType::Q5_K);
    matmul_q6_k_gemv => matmul_gemv_case(DType::Q6_K);
    matmul_iq4_nl_gemv => matmul_gemv_case(DType::IQ4_NL);
    matmul_iq4_xs_gemv => matmul_gemv_case(DType::IQ4_XS);

    matmul_f32_gemm => matmul_gemm_case(DType::F32);
    matmul_f16_gemm => matmul_gemm_case(DType::F16);
    matmul_bf16_gemm => matmul_gemm_case(DType::BF16);
    matmul_q4_0_gemm => matmul_gemm_case(DType::Q4_0);
    matmul_q4_1_gemm => matmul_gemm_case(DType::Q4_1);
    matmul_q5_0_gemm => matmul_gemm_case(DType::Q5_0);
    matmul_q5_1_gemm => matmul_gemm_case(DType::Q5_1);
    matmul_q8_0_gemm => matmul_gemm_case(DType::Q8_0);
    matmul_q2_k_gemm => matmul_gemm_case(DType::Q2_K);
    matmul_q3_k_gemm => matmul_gemm_case(DType::Q3_K);
    matmul_q4_k_gemm => matmul_gemm_case(DType::Q4_K);
    matmul_q5_k_gemm => matmul_gemm_case(DType::Q5_K);
    matmul_q6_k_gemm => matmul_gemm_case(DType::Q6_K);
    matmul_iq4_nl_gemm => matmul_gemm_case(DType::IQ4_NL);
    matmul_iq4_xs_gemm => matmul_gemm_case(DType::IQ4_XS);

    matmul_q8_0_rows => matmul_rows_case(DType::Q8_0);
    matmul_q4_k_rows => matmul_rows_case(DType::Q4_K);

    matmul_q8_0_quantized => matmul_quantized_case(DType::Q8_0);
    matmul_q4_0_quantized => matmul_quantized_case(DType::Q4_0);
    matmul_q4_k_quantized => matmul_quantized_case(DType::Q4_K);
    matmul_q5_k_quantized => matmul_quantized_case(DType::Q5_K);
    matmul_q6_k_quantized => matmul_quantized_case(DType::Q6_K);

    matmul_bf16_large => matmul_large_case(DType::BF16);
    matmul_q4_k_large => matmul_large_case(DType::Q4_K);
    matmul_q8_0_large => matmul_large_case(DType::Q8_0);

    matmul_q4_k_many => matmul_many_case(DType::Q4_K);
    matmul_q8_0_many => matmul_many_case(DType::Q8_0);
    matmul_q5_k_many => matmul_many_case(DType::Q5_K);
    matmul_q6_k_many => matmul_many_case(DType::Q6_K);
    matmul_bf16_many => matmul_many_case(DType::BF16);
    matmul_f32_many => matmul_many_case(DType::F32);

    matmul_q4_k_glu => matmul_glu_case(DType::Q4_K);
    matmul_q8_0_glu => matmul_glu_case(DType::Q8_0);
    matmul_bf16_glu => matmul_glu_case(DType::BF16);

    matmul_errors => matmul_errors_case();
}
