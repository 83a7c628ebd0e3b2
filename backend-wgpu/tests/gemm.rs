//! The many-row GEMMs (`shaders/gemm.wgsl`, and `gemm_coop.wgsl` where the adapter has
//! cooperative matrices) forced at m ∈ {9, 17, 33, 64, 65} for the weight
//! types `kiln_core::quant::quantize` writes, with a partial last 64-row weight tile, every
//! k split (none, the built-in rule, 2, 3, 8), x at an offset that is and one that is not a
//! multiple of 4 elements, outputs poisoned (NaN) before each run: against an f64 CPU product
//! of the dequantized weight.
// Tests may unwrap (project convention).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape};
use kiln_wgpu::MatmulPath;

/// CPU y = x·Wᵀ in f64 from the dequantized weights.
fn cpu_mm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = x[i * k..(i + 1) * k]
                .iter()
                .zip(&w[j * k..(j + 1) * k])
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// A random n × k weight of type `d`, prepared on `be`, and its dequantized values.
fn quantized_weight(
    be: &kiln_wgpu::WgpuBackend,
    r: &mut rand::rngs::StdRng,
    d: DType,
    n: usize,
    k: usize,
) -> (kiln_core::Weight, Vec<f32>) {
    let wf = randn(r, n * k, 0.5);
    let mut bytes = vec![0u8; d.bytes_for(n * k).unwrap()];
    kiln_core::quant::quantize(d, &wf, &mut bytes).unwrap();
    let deq = kiln_core::quant::dequantize_vec(d, &bytes).unwrap();
    let w = be
        .prepare_weight(&HostTensor::new(d, Shape::d2(n, k), &bytes).unwrap())
        .unwrap();
    (w, deq)
}

/// The forced-GEMM cases on one kernel: `coop` false = gemm.wgsl (f32 FMAs), true =
/// gemm_coop.wgsl (f16 inputs); nmse bound `tol`.
fn forced_rows_splits_types(be: &kiln_wgpu::WgpuBackend, coop: bool, tol: f64) {
    be.set_gemm_coop(coop);
    assert_eq!(be.gemm_coop(), coop, "coop kernel selection");
    let mut r = rng(5);
    let (n, k) = (200, 1024); // one full and one partial 128-row weight tile; 32 groups
    let types = [
        DType::Q4_K,
        DType::Q8_0,
        DType::Q6_K,
        DType::Q4_0,
        DType::BF16,
        DType::F16,
        DType::F32,
    ];
    let mut checked = 0;
    for d in types {
        if !kiln_core::quant::can_quantize(d) {
            eprintln!("SKIPPED {d}: no quantizer");
            continue;
        }
        let (w, deq) = quantized_weight(be, &mut r, d, n, k);
        // m = 1030: the prefill tile (TM = 128 on gemm_coop)
        for m in [9, 17, 33, 64, 65, 1030] {
            let x = randn(&mut r, m * k, 1.0);
            let want = cpu_mm(&x, &deq, m, n, k);
            for x_el in [4usize, 3] {
                // x at element x_el, out right after it, in one buffer
                let buf = poisoned(be, x_el + m * k + m * n);
                be.write(&buf, x_el * 4, &f32_bytes(&x)).unwrap();
                let off_o = (x_el + m * k) * 4;
                for sp in [Some(1), None, Some(2), Some(3), Some(8)] {
                    be.set_gemm_splits(sp).unwrap();
                    be.write(&buf, off_o, &f32_bytes(&vec![f32::NAN; m * n]))
                        .unwrap();
                    let run = be.matmul_with(
                        buf.view(x_el * 4, Shape::d2(m, k), DType::F32).unwrap(),
                        &w,
                        buf.view_mut(off_o, Shape::d2(m, n), DType::F32).unwrap(),
                        MatmulPath::Gemm,
                    );
                    be.set_gemm_splits(None).unwrap();
                    run.unwrap();
                    let got = read_f32(be, &buf, off_o, m * n);
                    assert!(
                        got.iter().all(|v| v.is_finite()),
                        "coop {coop} {d} m={m} x at {x_el} splits {sp:?}: unwritten (NaN) outputs"
                    );
                    let e = nmse(&got, &want);
                    assert!(
                        e < tol,
                        "coop {coop} {d} m={m} x at {x_el} splits {sp:?}: nmse {e:e}"
                    );
                    checked += 1;
                }
            }
        }
    }
    be.set_gemm_coop(true);
    assert!(checked >= 5 * 2 * 5 * 4, "too few cases ran: {checked}");
}

#[test]
fn gemm_forced_rows_splits_types() {
    let Some(be) = open() else { return };
    // f32 FMAs over k = 1024: ~1e-13; a wrong index or group is ≫ 1e-3
    forced_rows_splits_types(&be, false, 1e-10);
}

/// The same cases on the cooperative-matrix kernel where the adapter has one; skipped by name
/// otherwise, a failure with `KILN_REQUIRE_COOP=1` (set on the GPU machine).
#[test]
fn gemm_coop_forced_rows_splits_types() {
    let Some(be) = open() else { return };
    if !be.has_coop_matrix() {
        assert!(
            std::env::var("KILN_REQUIRE_COOP").map_or(true, |v| v != "1"),
            "KILN_REQUIRE_COOP=1 but {} has no usable cooperative matrix (configs: {:?})",
            be.info().name,
            be.coop_matrix_configs()
        );
        eprintln!(
            "gemm_coop: skipped: no cooperative matrix on {}",
            be.info().name
        );
        return;
    }
    // x and the weights rounded to f16 (11-bit significands, ~2⁻¹² relative each): nmse
    // ~1e-7 over k = 1024 with f32 accumulation; a wrong index or group is ≫ 1e-3.
    forced_rows_splits_types(&be, true, 1e-5);
}

/// Short k (2 and 3 groups: forced splits are capped, the rule does not split) and n that
/// leaves most of the last tile empty.
#[test]
fn gemm_split_short_k() {
    let Some(be) = open() else { return };
    let mut r = rng(9);
    for (coop, tol) in [(false, 1e-10), (true, 1e-5)] {
        if coop && !be.has_coop_matrix() {
            eprintln!("gemm_split_short_k coop: skipped: no cooperative matrix");
            continue;
        }
        be.set_gemm_coop(coop);
        for (n, k) in [(70, 64), (130, 96)] {
            let d = DType::Q8_0;
            let (w, deq) = quantized_weight(&be, &mut r, d, n, k);
            let m = 40;
            let x = randn(&mut r, m * k, 1.0);
            let want = cpu_mm(&x, &deq, m, n, k);
            let xb = upload(&be, &f32_bytes(&x));
            for sp in [None, Some(2), Some(8)] {
                be.set_gemm_splits(sp).unwrap();
                let o = poisoned(&be, m * n);
                let run = be.matmul_with(
                    xb.view(0, Shape::d2(m, k), DType::F32).unwrap(),
                    &w,
                    o.view_mut(0, Shape::d2(m, n), DType::F32).unwrap(),
                    MatmulPath::Gemm,
                );
                be.set_gemm_splits(None).unwrap();
                run.unwrap();
                let got = read_f32(&be, &o, 0, m * n);
                let e = nmse(&got, &want);
                assert!(e < tol, "coop {coop} {n}x{k} splits {sp:?}: nmse {e:e}");
            }
        }
    }
    assert!(be.set_gemm_splits(Some(0)).is_err());
    be.set_gemm_coop(true);
}
