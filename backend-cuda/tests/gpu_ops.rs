//! GPU tests of kiln-cuda's own kernels (the conformance suite in tests/ is the full check):
//! decoding against the gguf-py vectors of shared/testdata/quant (bit-exact), GEMV against their
//! exactly rounded dot products, both matmul paths for all 15 weight types against f64 on the
//! host, the elementwise ops, and graph capture. Each test prints "skipped" without a GPU.
//! The vectors are read from env KILN_QUANT_DATA, else the repository copy core/tests/data/quant.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{Activation, Backend, DType, HostTensor, PagedKv, RopeParams, RopeStyle, Shape};
use kiln_cuda::MatmulPath;

fn quant_dir() -> std::path::PathBuf {
    std::env::var_os("KILN_QUANT_DATA")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/quant")
        })
}

fn read_f32_file(p: &std::path::Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const VECTOR_TYPES: [DType; 14] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::BF16,
    DType::F16,
];

#[test]
fn embed_decodes_gguf_vectors_bit_exactly_and_gemv_meets_their_bound() {
    let Some(be) = gpu() else { return };
    let dir = quant_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for dt in VECTOR_TYPES {
        let name = dt.name();
        let entry = manifest["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == name)
            .unwrap();
        let bin = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let want = read_f32_file(&dir.join(format!("{name}.f32")));
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(8, 512), &bin).unwrap())
            .unwrap();
        // Decode: embed every row with scale 1.
        let ids = upload(
            &*be,
            &kiln_core::convert::i32_bytes(&(0..8).collect::<Vec<i32>>()),
        );
        let out = poisoned(&*be, 8 * 512);
        be.embed(
            view(&ids, &[8], DType::I32),
            &w,
            1.0,
            out.view_mut(0, Shape::d2(8, 512), DType::F32).unwrap(),
        )
        .unwrap();
        let got = read_f32(&*be, view(&out, &[8, 512], DType::F32));
        let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        if bad > 0 {
            failures.push(format!("{name}: {bad} of 4096 decoded values differ"));
        }
        // GEMV, both paths, against the exactly rounded y.
        let x = read_f32_file(&dir.join(format!("{name}.gemv_x.f32")));
        let y_ref: Vec<f64> = entry["gemv_y_f64"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let abs_dot: Vec<f64> = entry["gemv_row_abs_dot"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // Fused on block types: int8 x (q8_round); the worst-case error of row r is
        // Σ|w|·d/2 over its elements.
        let (_, half) = q8_round(&x);
        let q8_err: Vec<f64> = (0..8)
            .map(|r| {
                (0..512)
                    .map(|j| (want[r * 512 + j] as f64).abs() * half[j])
                    .sum()
            })
            .collect();
        let xb = upload(&*be, &f32_bytes(&x));
        for path in [MatmulPath::Fused, MatmulPath::Dense] {
            let yb = poisoned(&*be, 8);
            be.matmul_with(
                view(&xb, &[1, 512], DType::F32),
                &w,
                yb.view_mut(0, Shape::d2(1, 8), DType::F32).unwrap(),
                path,
            )
            .unwrap();
            let y = read_f32(&*be, view(&yb, &[1, 8], DType::F32));
            for r in 0..8 {
                // Fused: f32 activations (README bound) for float weights, int8 activations
                // (their worst case) for block types. Dense: bf16 activations and weights.
                let tol = match path {
                    MatmulPath::Dense => 8e-3 * abs_dot[r],
                    _ if dt.is_quantized() => {
                        q8_err[r] * (1.0 + 1e-5) + 1e-4 * y_ref[r].abs() + 1e-6 * abs_dot[r]
                    }
                    _ => 1e-4 * y_ref[r].abs() + 1e-6 * abs_dot[r],
                };
                if ((y[r] as f64) - y_ref[r]).abs() > tol || y[r].is_nan() {
                    failures.push(format!(
                        "{name} {path:?} row {r}: {} vs {} (tol {tol:e})",
                        y[r], y_ref[r]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn matmul_all_types_both_paths_match_f64() {
    let Some(be) = gpu() else { return };
    let (n, k) = (96, 4096);
    let mut failures = Vec::new();
    for (ti, dt) in DType::WEIGHT_TYPES.into_iter().enumerate() {
        let wbytes = random_weight(dt, n, k, 100 + ti as u64);
        let wdeq = kiln_core::quant::dequantize_vec(dt, &wbytes).unwrap();
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &wbytes).unwrap())
            .unwrap();
        for m in [1usize, 2, 3, 8, 12, 17, 40] {
            let mut x = Rng(7 + m as u64).vec(m * k);
            if m == 12 {
                // Activations with outlier channels (as in LLM hidden states): every 97th ×20.
                for (i, v) in x.iter_mut().enumerate() {
                    if (i % k) % 97 == 3 {
                        *v *= 20.0;
                    }
                }
            }
            let oracle = |xv: &dyn Fn(usize) -> f64| -> Vec<f64> {
                (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        (0..k).map(|j| xv(r * k + j) * wdeq[c * k + j] as f64).sum()
                    })
                    .collect()
            };
            let want = oracle(&|i| x[i] as f64);
            // The same product with x rounded as the int8 path rounds it.
            let (xh, _) = q8_round(&x);
            let want_q8 = oracle(&|i| xh[i]);
            let xb = upload(&*be, &f32_bytes(&x));
            for path in [
                MatmulPath::Fused,
                MatmulPath::Mma,
                MatmulPath::Dense,
                MatmulPath::Auto,
            ] {
                // The mma path's x rounding (int8 per 16; per 32 or f16 per 256 where a Q4_K
                // kernel runs), asked right before the call (the Auto path may tune the shape).
                let mma_x = be.mma_x_rounding(dt, n, k, m);
                let yb = poisoned(&*be, m * n);
                be.matmul_with(
                    view(&xb, &[m, k], DType::F32),
                    &w,
                    yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                    path,
                )
                .unwrap();
                let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
                let e = nmse(&y, &want);
                let q8 = dt.is_quantized();
                let bound = match (path, dt) {
                    // The error bound grows with the group (q8_round's derivation, per group).
                    (MatmulPath::Mma, _) if q8 => mma_x_nmse(mma_x),
                    (MatmulPath::Fused, _) if q8 => Q8_X_NMSE,
                    // Mma on float weights runs the tuned dispatch.
                    (MatmulPath::Mma, DType::F16 | DType::BF16) => 1e-4,
                    (MatmulPath::Fused, _) | (_, DType::F32) => 1e-9,
                    (_, DType::F16) => 1e-5,
                    (MatmulPath::Auto, _) if q8 => mma_x_nmse(mma_x).max(Q8_X_NMSE).max(1e-4),
                    _ => 1e-4, // bf16 rounding of x (and of f16/quant weights)
                };
                if e.is_nan() || e > bound {
                    failures.push(format!("{dt} m={m} {path:?}: nmse {e:e} > {bound:e}"));
                }
                if matches!(path, MatmulPath::Fused | MatmulPath::Mma) && q8 {
                    // The integer path itself is exact up to f32 accumulation: against the
                    // oracle on the rounded x it must agree as the f32 kernels do.
                    let want_mma;
                    let oracle_q8 = if path == MatmulPath::Mma {
                        let xr = mma_round(&x, mma_x);
                        want_mma = oracle(&|i| xr[i]);
                        &want_mma
                    } else {
                        &want_q8
                    };
                    let eq = nmse(&y, oracle_q8);
                    if eq.is_nan() || eq > 1e-9 {
                        failures.push(format!("{dt} m={m} {path:?} vs int8-x oracle: nmse {eq:e}"));
                    }
                    println!(
                        "int8-x error {dt} m={m} {path:?}: nmse vs f64 {e:.3e} (bound {bound:.3e})"
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The int8 tensor-core path at its built-in tile choice and with every configuration forced
/// (m = 8 … 260: BM 16, 32, 64 and the 64 × 128 tile), k splits (small m), W tails (n = 200 is not a multiple of 64 or 128) and, for
/// the 32-element types, a partial last k stage (k = 4896 = 19.125 stages): exact integer
/// products, so it must match the f64 product of the exact weights and the int8-rounded x as
/// the f32 kernels do (nmse ≤ 1e-9), for all 12 block types. x is rounded per 16 elements,
/// or as the Q4_K kernel of the built-in choice rounds it (`mma_x_rounding`); for Q4_K at m ≤ 64
/// both Q4_K kernels are also forced (int8 per 32, f16 per 256).
#[test]
fn matmul_mma_all_block_types_match_the_int8_x_oracle() {
    let Some(be) = gpu() else { return };
    let n = 200;
    let mut failures = Vec::new();
    for (ti, dt) in DType::WEIGHT_TYPES.into_iter().enumerate() {
        if !dt.is_quantized() {
            continue;
        }
        let k = if dt.block_size() == 32 { 4896 } else { 4864 };
        let wbytes = random_weight(dt, n, k, 300 + ti as u64);
        let wdeq = kiln_core::quant::dequantize_vec(dt, &wbytes).unwrap();
        let w = be
            .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &wbytes).unwrap())
            .unwrap();
        for m in [8usize, 16, 24, 33, 64, 130, 260] {
            let x = Rng(11 + m as u64).vec(m * k);
            // The built-in choice rounds x per mma_x_rounding; a forced configuration runs the
            // generic kernel (groups of 16).
            let oracle = |r: kiln_cuda::MmaXRounding| -> Vec<f64> {
                let xh = mma_round(&x, r);
                (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        let (xr, wr) = (&xh[r * k..(r + 1) * k], &wdeq[c * k..(c + 1) * k]);
                        xr.iter().zip(wr).map(|(a, b)| a * *b as f64).sum()
                    })
                    .collect()
            };
            let int8_16 = kiln_cuda::MmaXRounding::Int8 { group: 16 };
            let want16 = oracle(int8_16);
            let builtin = be.mma_x_rounding(dt, n, k, m);
            let want_builtin = if builtin == int8_16 {
                want16.clone()
            } else {
                oracle(builtin)
            };
            let xb = upload(&*be, &f32_bytes(&x));
            // Q4_K's two kernels forced (where m ≤ 64), with their own rounding of x.
            if dt == DType::Q4_K && m <= 64 {
                for (kern, r) in [
                    (
                        kiln_cuda::Q4kKernel::Int8,
                        kiln_cuda::MmaXRounding::Int8 { group: 32 },
                    ),
                    (kiln_cuda::Q4kKernel::F16, kiln_cuda::MmaXRounding::F16Block),
                ] {
                    be.force_q4k_kernel(Some(kern));
                    assert_eq!(be.mma_x_rounding(dt, n, k, m), r);
                    let yb = poisoned(&*be, m * n);
                    be.matmul_with(
                        view(&xb, &[m, k], DType::F32),
                        &w,
                        yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                        MatmulPath::Mma,
                    )
                    .unwrap();
                    be.force_q4k_kernel(None);
                    let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
                    let e = nmse(&y, &oracle(r));
                    if e.is_nan() || e > 1e-9 {
                        failures.push(format!("Q4_K m={m} {kern:?} vs its x oracle: nmse {e:e}"));
                    }
                }
            }
            // The built-in choice, then every configuration forced.
            let cfgs = kiln_cuda::CudaBackend::mma_configs();
            for c in std::iter::once(None).chain((0..cfgs.len()).map(Some)) {
                be.force_mma_config(c);
                let yb = poisoned(&*be, m * n);
                be.matmul_with(
                    view(&xb, &[m, k], DType::F32),
                    &w,
                    yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                    MatmulPath::Mma,
                )
                .unwrap();
                let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
                let want = if c.is_none() { &want_builtin } else { &want16 };
                let e = nmse(&y, want);
                if e.is_nan() || e > 1e-9 {
                    let cfg = c.map(|c| cfgs[c]);
                    failures.push(format!(
                        "{dt} m={m} n={n} k={k} mma {cfg:?} vs int8-x oracle: nmse {e:e}"
                    ));
                }
            }
            be.force_mma_config(None);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// m = 1 of the 12 block types on both of its kernels, forced: the one-kernel `gemv1_*` (x
/// quantized by every block into shared memory) and quant_x + `gemv8_*`, at k = 4096 and
/// k = 14336 (the x image of 21 KiB in shared memory, a row split over several warps), n = 202
/// (a partial last group of 4 rows), x at a 16-byte aligned offset and at a 4-byte one (where
/// gemv1 does not apply and the two-kernel path runs). Both round x the same way, so each must
/// match the f64 product of the exact weights and the int8-rounded x (nmse ≤ 1e-9), and the
/// exact-x product within the int8 bound. The pipelined kernel's types (`gemv_pipe_types`: Q3_K,
/// Q4_K, Q5_K, Q6_K, IQ4_XS, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) also through `gemvp_<type>` (quant_x_q4_k2's lane
/// order; sm_90+), which must meet the same bounds.
#[test]
fn gemv_m1_one_and_two_kernel_paths_match_the_int8_x_oracle() {
    let Some(be) = gpu() else { return };
    let n = 202;
    let mut failures = Vec::new();
    for k in [4096usize, 14336] {
        for (ti, dt) in DType::WEIGHT_TYPES.into_iter().enumerate() {
            if !dt.is_quantized() {
                continue;
            }
            let wbytes = random_weight(dt, n, k, 300 + ti as u64 + k as u64);
            let wdeq = kiln_core::quant::dequantize_vec(dt, &wbytes).unwrap();
            let w = be
                .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &wbytes).unwrap())
                .unwrap();
            let x = Rng(11 + k as u64).vec(k + 4);
            for off in [0usize, 4, 1] {
                // x elements off .. off + k: byte offsets 0 and 16 (aligned), 4 (not).
                let xs = &x[off..off + k];
                let (xh, _) = q8_round(xs);
                let want_q8: Vec<f64> = (0..n)
                    .map(|c| (0..k).map(|j| xh[j] * wdeq[c * k + j] as f64).sum())
                    .collect();
                let want: Vec<f64> = (0..n)
                    .map(|c| (0..k).map(|j| xs[j] as f64 * wdeq[c * k + j] as f64).sum())
                    .collect();
                let xb = upload(&*be, &f32_bytes(&x));
                // gemv1, quant_x + gemv8, and for the pipelined kernel's types that kernel
                // (sm_90+).
                let pipe = kiln_cuda::gemv_pipe_types().contains(&dt)
                    && be.info().caps.compute_capability.is_some_and(|c| c.0 >= 9);
                for path in ["gemv1", "gemv8", "gemvp"] {
                    if path == "gemvp" && !pipe {
                        continue;
                    }
                    let yb = poisoned(&*be, n);
                    let (xv, yv) = (
                        xb.view(off * 4, Shape::d2(1, k), DType::F32).unwrap(),
                        yb.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
                    );
                    if path == "gemvp" {
                        be.matmul_fused_m1_pipe(xv, &w, yv).unwrap();
                    } else {
                        be.matmul_fused_m1(xv, &w, yv, path == "gemv1").unwrap();
                    }
                    let y = read_f32(&*be, view(&yb, &[1, n], DType::F32));
                    let (eq, e) = (nmse(&y, &want_q8), nmse(&y, &want));
                    if eq.is_nan() || eq > 1e-9 || e > Q8_X_NMSE {
                        failures.push(format!(
                            "{dt} k={k} x+{off} {path}: nmse vs int8-x {eq:e}, vs f64 {e:e}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn float_weights_with_odd_k_and_unaligned_x_use_the_generic_kernel() {
    let Some(be) = gpu() else { return };
    let (m, n, k) = (3, 5, 100);
    let w = Rng(1).vec(n * k);
    let x = Rng(2).vec(m * k + 1);
    let wt = be
        .prepare_weight(&HostTensor::new(DType::F32, Shape::d2(n, k), &f32_bytes(&w)).unwrap())
        .unwrap();
    let xb = upload(&*be, &f32_bytes(&x));
    let yb = poisoned(&*be, m * n);
    // x starts one element in: 4-byte aligned only.
    let xv = xb.view(4, Shape::d2(m, k), DType::F32).unwrap();
    be.matmul(
        xv,
        &wt,
        yb.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
    )
    .unwrap();
    let y = read_f32(&*be, view(&yb, &[m, n], DType::F32));
    let want: Vec<f64> = (0..m * n)
        .map(|i| {
            (0..k)
                .map(|j| x[1 + (i / n) * k + j] as f64 * w[(i % n) * k + j] as f64)
                .sum()
        })
        .collect();
    assert!(nmse(&y, &want) < 1e-10, "{:e}", nmse(&y, &want));
}

#[test]
fn elementwise_ops_match_host() {
    let Some(be) = gpu() else { return };
    let be: &dyn Backend = &*be;
    let (rows, dim) = (5, 1000);
    let x = Rng(3).vec(rows * dim);
    let g = Rng(4)
        .vec(rows * dim)
        .iter()
        .map(|v| v * 6.0)
        .collect::<Vec<_>>();
    let xb = upload(be, &f32_bytes(&x));
    let gb = upload(be, &f32_bytes(&g));
    let close = |a: &[f32], e: &[f64], what: &str| {
        for (i, (a, e)) in a.iter().zip(e).enumerate() {
            assert!(
                (*a as f64 - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                "{what}[{i}]: {a} vs {e}"
            );
        }
    };
    // rms_norm
    let w: Vec<f32> = Rng(5).vec(dim);
    let wb = upload(be, &f32_bytes(&w));
    let out = poisoned(be, rows * dim);
    be.rms_norm(
        view(&xb, &[rows, dim], DType::F32),
        view(&wb, &[dim], DType::F32),
        1e-6,
        out.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap(),
    )
    .unwrap();
    let mut e = vec![0f64; rows * dim];
    for r in 0..rows {
        let ms: f64 = x[r * dim..(r + 1) * dim]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            / dim as f64;
        for j in 0..dim {
            e[r * dim + j] = x[r * dim + j] as f64 / (ms + 1e-6).sqrt() * w[j] as f64;
        }
    }
    close(
        &read_f32(be, view(&out, &[rows, dim], DType::F32)),
        &e,
        "rms_norm",
    );
    // glu, both activations
    for act in [Activation::Silu, Activation::GeluTanh] {
        be.glu(
            view(&gb, &[rows, dim], DType::F32),
            view(&xb, &[rows, dim], DType::F32),
            act,
            out.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap(),
        )
        .unwrap();
        let e: Vec<f64> = g
            .iter()
            .zip(&x)
            .map(|(g, u)| {
                let g = *g as f64;
                let a = match act {
                    Activation::Silu => g / (1.0 + (-g).exp()),
                    Activation::GeluTanh => {
                        0.5 * g
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt()
                                    * (g + 0.044715 * g * g * g))
                                    .tanh())
                    }
                };
                a * *u as f64
            })
            .collect();
        close(
            &read_f32(be, view(&out, &[rows, dim], DType::F32)),
            &e,
            &format!("glu {act:?}"),
        );
    }
    // add, add_bias
    be.add(
        view(&xb, &[rows, dim], DType::F32),
        view(&gb, &[rows, dim], DType::F32),
        out.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap(),
    )
    .unwrap();
    let e: Vec<f64> = x.iter().zip(&g).map(|(a, b)| (*a + *b) as f64).collect();
    close(
        &read_f32(be, view(&out, &[rows, dim], DType::F32)),
        &e,
        "add",
    );
    be.add_bias(
        view(&xb, &[rows, dim], DType::F32),
        view(&wb, &[dim], DType::F32),
        out.view_mut(0, Shape::d2(rows, dim), DType::F32).unwrap(),
    )
    .unwrap();
    let e: Vec<f64> = (0..rows * dim)
        .map(|i| (x[i] + w[i % dim]) as f64)
        .collect();
    close(
        &read_f32(be, view(&out, &[rows, dim], DType::F32)),
        &e,
        "add_bias",
    );
    // gather rows 4, 0, 4
    let ids = upload(be, &kiln_core::convert::i32_bytes(&[4, 0, 4]));
    let gout = poisoned(be, 3 * dim);
    be.gather(
        view(&xb, &[rows, dim], DType::F32),
        view(&ids, &[3], DType::I32),
        gout.view_mut(0, Shape::d2(3, dim), DType::F32).unwrap(),
    )
    .unwrap();
    let e: Vec<f64> = [4, 0, 4]
        .iter()
        .flat_map(|r| x[r * dim..(r + 1) * dim].iter().map(|v| *v as f64))
        .collect();
    close(
        &read_f32(be, view(&gout, &[3, dim], DType::F32)),
        &e,
        "gather",
    );
    // copy f32 → bf16 → f32 equals host bf16 rounding
    let mid = be.alloc(rows * dim * 2).unwrap();
    be.copy(
        view(&xb, &[rows * dim], DType::F32),
        mid.view_mut(0, Shape::d1(rows * dim), DType::BF16).unwrap(),
    )
    .unwrap();
    be.copy(
        view(&mid, &[rows * dim], DType::BF16),
        out.view_mut(0, Shape::d1(rows * dim), DType::F32).unwrap(),
    )
    .unwrap();
    let got = read_f32(be, view(&out, &[rows * dim], DType::F32));
    for (a, v) in got.iter().zip(&x) {
        assert_eq!(*a, half::bf16::from_f32(*v).to_f32());
    }
}

#[test]
fn rope_both_styles_match_host() {
    let Some(be) = gpu() else { return };
    let be: &dyn Backend = &*be;
    let (nt, nh, hd, n_rot) = (4, 3, 128, 64);
    let pos = [0i32, 1, 4095, 131071];
    let inv: Vec<f32> = kiln_core::RopeFreqs {
        base: 500000.0,
        scaling: kiln_core::RopeScaling::None,
    }
    .inv_freq(n_rot)
    .unwrap();
    let x = Rng(9).vec(nt * nh * hd);
    let pb = upload(be, &kiln_core::convert::i32_bytes(&pos));
    let fb = upload(be, &f32_bytes(&inv));
    for style in [RopeStyle::Neox, RopeStyle::Interleaved] {
        let xb = upload(be, &f32_bytes(&x));
        be.rope(
            xb.view_mut(0, Shape::d3(nt, nh, hd), DType::F32).unwrap(),
            view(&pb, &[nt], DType::I32),
            view(&fb, &[n_rot / 2], DType::F32),
            &RopeParams { style, n_rot },
        )
        .unwrap();
        let got = read_f32(be, view(&xb, &[nt * nh * hd], DType::F32));
        let mut e: Vec<f64> = x.iter().map(|v| *v as f64).collect();
        for t in 0..nt {
            for h in 0..nh {
                let base = (t * nh + h) * hd;
                for i in 0..n_rot / 2 {
                    let (a, b) = match style {
                        RopeStyle::Neox => (i, i + n_rot / 2),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let ang = pos[t] as f64 * inv[i] as f64;
                    let (x0, x1) = (x[base + a] as f64, x[base + b] as f64);
                    e[base + a] = x0 * ang.cos() - x1 * ang.sin();
                    e[base + b] = x0 * ang.sin() + x1 * ang.cos();
                }
            }
        }
        for (i, (a, e)) in got.iter().zip(&e).enumerate() {
            assert!(
                (*a as f64 - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                "rope {style:?}[{i}]: {a} vs {e}"
            );
        }
    }
}

#[test]
fn kv_append_writes_slots_and_skips_negative() {
    let Some(be) = gpu() else { return };
    let be: &dyn Backend = &*be;
    let (blocks, nkv, bs, hd) = (4, 2, 16, 64);
    let n_tok = 3;
    let k = Rng(11).vec(n_tok * nkv * hd);
    let v = Rng(12).vec(n_tok * nkv * hd);
    for kv_dt in [DType::F32, DType::F16, DType::BF16] {
        let cache_elems = blocks * nkv * bs * hd;
        let esz = kv_dt.block_bytes();
        let zeros = vec![0u8; cache_elems * esz];
        let kc = upload(be, &zeros);
        let vc = upload(be, &zeros);
        let kb = upload(be, &f32_bytes(&k));
        let vb = upload(be, &f32_bytes(&v));
        let slots = upload(be, &kiln_core::convert::i32_bytes(&[17, -1, 63]));
        let shape = Shape::d4(blocks, nkv, bs, hd);
        let kv = PagedKv::new(
            kc.view_mut(0, shape, kv_dt).unwrap(),
            vc.view_mut(0, shape, kv_dt).unwrap(),
        )
        .unwrap();
        be.kv_append(
            view(&kb, &[n_tok, nkv, hd], DType::F32),
            view(&vb, &[n_tok, nkv, hd], DType::F32),
            &kv,
            view(&slots, &[n_tok], DType::I32),
        )
        .unwrap();
        let mut raw = vec![0u8; cache_elems * esz];
        be.read(&kc, 0, &mut raw).unwrap();
        let got = kiln_core::convert::to_f32(kv_dt, &raw).unwrap();
        let round = |x: f32| {
            kiln_core::convert::to_f32(kv_dt, &kiln_core::convert::from_f32(kv_dt, &[x]).unwrap())
                .unwrap()[0]
        };
        let mut want = vec![0f32; cache_elems];
        for (t, slot) in [(0usize, 17usize), (2, 63)] {
            let (blk, row) = (slot / bs, slot % bs);
            for h in 0..nkv {
                for d in 0..hd {
                    want[((blk * nkv + h) * bs + row) * hd + d] = round(k[(t * nkv + h) * hd + d]);
                }
            }
        }
        assert_eq!(got, want, "{kv_dt}");
    }
}

#[test]
fn graph_capture_replays_on_new_inputs() {
    let Some(be) = gpu() else { return };
    let (n, k) = (64, 512);
    let wbytes = random_weight(DType::Q4_K, n, k, 3);
    let w = be
        .prepare_weight(&HostTensor::new(DType::Q4_K, Shape::d2(n, k), &wbytes).unwrap())
        .unwrap();
    let xb = upload(&*be, &f32_bytes(&Rng(1).vec(k)));
    let yb = poisoned(&*be, n);
    let y2 = poisoned(&*be, n);
    // First eager call tunes the shape, so capture records only kernels.
    be.matmul(
        view(&xb, &[1, k], DType::F32),
        &w,
        yb.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
    )
    .unwrap();
    let g = be
        .capture(&mut || {
            be.matmul(
                view(&xb, &[1, k], DType::F32),
                &w,
                yb.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
            )?;
            be.add(
                view(&yb, &[n], DType::F32),
                view(&yb, &[n], DType::F32).narrow(0, n).unwrap(),
                y2.view_mut(0, Shape::d1(n), DType::F32).unwrap(),
            )
        })
        .unwrap()
        .expect("CUDA captures graphs");
    let x2 = Rng(2).vec(k);
    be.write(&xb, 0, &f32_bytes(&x2)).unwrap();
    g.replay().unwrap();
    let got = read_f32(&*be, view(&y2, &[n], DType::F32));
    let wdeq = kiln_core::quant::dequantize_vec(DType::Q4_K, &wbytes).unwrap();
    // The fused Q4_K kernel multiplies int8-rounded x (q8_round): against that oracle the
    // replay must agree to f32 accumulation.
    let (x2h, _) = q8_round(&x2);
    let want: Vec<f64> = (0..n)
        .map(|c| 2.0 * (0..k).map(|j| x2h[j] * wdeq[c * k + j] as f64).sum::<f64>())
        .collect();
    assert!(nmse(&got, &want) < 1e-10, "{:e}", nmse(&got, &want));
}

#[test]
fn errors_not_panics_on_bad_arguments() {
    let Some(be) = gpu() else { return };
    let xb = upload(&*be, &f32_bytes(&[0.0; 64]));
    let ob = poisoned(&*be, 64);
    // Mismatched lengths.
    assert!(
        be.add(
            view(&xb, &[64], DType::F32),
            view(&xb, &[32], DType::F32),
            ob.view_mut(0, Shape::d1(64), DType::F32).unwrap()
        )
        .is_err()
    );
    // Wrong dtype.
    assert!(
        be.rms_norm(
            view(&xb, &[2, 32], DType::I32),
            view(&xb, &[32], DType::F32),
            1e-5,
            ob.view_mut(0, Shape::d2(2, 32), DType::F32).unwrap()
        )
        .is_err()
    );
    // A weight with rows that are not whole blocks.
    assert!(
        be.prepare_weight(&HostTensor::new(DType::Q4_K, Shape::d2(1, 256), &[0u8; 144]).unwrap())
            .is_ok()
    );
    assert!(
        HostTensor::new(DType::Q4_K, Shape::d2(2, 128), &[0u8; 144]).is_err()
            || be
                .prepare_weight(
                    &HostTensor::new(DType::Q4_K, Shape::d2(2, 128), &[0u8; 144]).unwrap()
                )
                .is_err()
    );
}
