//! `matmul_many` on CUDA (ops/matmul_q/group.rs): the segmented GEMV kernels that run several
//! weights reading the same x (q/k/v, gate/up) as one launch. Every kernel family is forced
//! (tuner bypassed) and checked against the f64 product of the exact weights with the x the
//! kernel rounds (int8 per 16 for the block types, f32 for the float types), with poisoned
//! outputs so an unwritten row fails; segment sizes that are not multiples of the 4-row group
//! test the tails; then the tuned `Backend::matmul_many` is checked the same way; then the
//! GLU-mode kernels of `matmul_glu` (act(x·Gᵀ) ⊙ x·Uᵀ in one launch). Prints "skipped" without a
//! GPU.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{Activation, Backend, Buffer, DType, HostTensor, Shape, ViewMut, Weight};
use kiln_cuda::{CudaBackend, GroupKernel, gemv_pipe_auto, gemv1_auto_on};

/// One segment's weight, its dequantized values and its poisoned output.
struct Seg {
    n: usize,
    w: Weight,
    wd: Vec<f32>,
    y: Buffer,
}

fn segs(be: &dyn Backend, dt: DType, rows: &[usize], k: usize, seed: u64) -> Vec<Seg> {
    rows.iter()
        .enumerate()
        .map(|(i, &n)| {
            let bytes = random_weight(dt, n, k, seed + i as u64);
            let wd = kiln_core::quant::dequantize_vec(dt, &bytes).unwrap();
            let w = be
                .prepare_weight(&HostTensor::new(dt, Shape::d2(n, k), &bytes).unwrap())
                .unwrap();
            Seg {
                n,
                w,
                wd,
                y: poisoned(be, n),
            }
        })
        .collect()
}

fn parts(s: &[Seg]) -> Vec<(&Weight, ViewMut<'_>)> {
    s.iter()
        .map(|g| {
            let y = g.y.view_mut(0, Shape::d2(1, g.n), DType::F32).unwrap();
            (&g.w, y)
        })
        .collect()
}

/// The kernel a `dt` group at k = 4096 runs: the pipelined one (quant_x_q4_k2 + gemvps_/gemvpg_)
/// on sm_90 where the automatic dispatch takes it for `dt` (`gemv_pipe_auto`: a type it takes,
/// `KILN_GEMV_PIPE` not 0; gpu_verify.sh runs this binary both ways) and `KILN_GEMV_PIPE_GROUP`
/// is not 0, else `other`.
fn piped(be: &CudaBackend, dt: DType, other: GroupKernel) -> GroupKernel {
    let sm90 = be.info().caps.compute_capability.is_some_and(|c| c.0 >= 9);
    let group = std::env::var("KILN_GEMV_PIPE_GROUP").map_or(true, |v| v != "0");
    if sm90 && gemv_pipe_auto(dt) && group {
        GroupKernel::Pipe
    } else {
        other
    }
}

/// nmse of every segment's output against x_eff·Wᵀ (f64), as "what: nmse" failures.
fn check(
    be: &dyn Backend,
    s: &[Seg],
    x_eff: &[f64],
    k: usize,
    bound: f64,
    what: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, g) in s.iter().enumerate() {
        let want: Vec<f64> = (0..g.n)
            .map(|c| (0..k).map(|j| x_eff[j] * g.wd[c * k + j] as f64).sum())
            .collect();
        let y = read_f32(be, view(&g.y, &[g.n], DType::F32));
        let e = nmse(&y, &want);
        if e.is_nan() || e > bound {
            bad.push(format!("{what} segment {i} (n={}): nmse {e:e}", g.n));
        }
    }
    bad
}

#[test]
fn segmented_gemv_kernels_match_the_oracle() {
    let Some(be) = gpu() else { return };
    let k = 4096;
    let x = Rng(7).vec(k + 4);
    let xb = upload(&*be, &f32_bytes(&x));
    let mut failures = Vec::new();
    // The one-kernel forms run where gemv1's rule is on (`KILN_GEMV1=1`; gpu_verify.sh runs this
    // binary both ways), else quant_x + gemv8s.
    let one = if gemv1_auto_on() {
        GroupKernel::OneKernel
    } else {
        GroupKernel::TwoKernels
    };
    // (type, segment rows, x offset in elements, the kernel the group must run)
    let cases: [(DType, &[usize], usize, Option<GroupKernel>); 16] = [
        (
            DType::Q4_K,
            &[256, 66, 66],
            0,
            Some(piped(&be, DType::Q4_K, one)),
        ),
        // 2 × 9.4 MB > the one-kernel limit (16 MiB): quant_x + gemv8s.
        (
            DType::Q4_K,
            &[4096, 4098],
            0,
            Some(piped(&be, DType::Q4_K, GroupKernel::TwoKernels)),
        ),
        // Unaligned x: the one-kernel path does not apply.
        (
            DType::Q4_K,
            &[256, 66, 66],
            1,
            Some(piped(&be, DType::Q4_K, GroupKernel::TwoKernels)),
        ),
        // Three segments with tails (the pipelined kernel's segment walk).
        (
            DType::Q4_K,
            &[1030, 257, 255],
            0,
            Some(piped(&be, DType::Q4_K, one)),
        ),
        // The other types of the pipelined kernel (their own 64-weight decode).
        (
            DType::Q5_K,
            &[258, 66, 67],
            0,
            Some(piped(&be, DType::Q5_K, one)),
        ),
        (
            DType::IQ4_XS,
            &[1030, 257, 255],
            0,
            Some(piped(&be, DType::IQ4_XS, one)),
        ),
        // 32-element types: 8 blocks per ring block (no gemv1 rule for them).
        (
            DType::Q4_0,
            &[258, 66, 67],
            0,
            Some(piped(&be, DType::Q4_0, GroupKernel::TwoKernels)),
        ),
        (
            DType::Q5_1,
            &[1030, 257, 255],
            0,
            Some(piped(&be, DType::Q5_1, GroupKernel::TwoKernels)),
        ),
        (
            DType::IQ4_NL,
            &[258, 66, 67],
            1,
            Some(piped(&be, DType::IQ4_NL, GroupKernel::TwoKernels)),
        ),
        (
            DType::Q8_0,
            &[258, 64, 65],
            0,
            Some(GroupKernel::TwoKernels),
        ),
        (
            DType::Q6_K,
            &[130, 34],
            0,
            Some(piped(&be, DType::Q6_K, one)),
        ),
        (DType::Q2_K, &[1030, 257, 255], 0, Some(one)),
        (
            DType::Q3_K,
            &[258, 66, 67],
            0,
            Some(piped(&be, DType::Q3_K, one)),
        ),
        (DType::BF16, &[258, 66, 67], 0, Some(GroupKernel::Float)),
        (DType::F32, &[100, 30, 1], 0, Some(GroupKernel::Float)),
        // Float weights need a 16-byte aligned x: no group (one matmul each instead).
        (DType::BF16, &[64, 64], 1, None),
    ];
    for (ci, (dt, rows, off, want_kernel)) in cases.into_iter().enumerate() {
        let s = segs(&*be, dt, rows, k, 100 + 10 * ci as u64);
        let p = parts(&s);
        let xv = xb.view(off * 4, Shape::d2(1, k), DType::F32).unwrap();
        let ran = be.matmul_group(xv, &p, false).unwrap();
        let what = format!("{dt} rows {rows:?} x+{off}");
        if ran != want_kernel {
            failures.push(format!("{what}: ran {ran:?}, expected {want_kernel:?}"));
            continue;
        }
        if ran.is_none() {
            continue;
        }
        let xs = &x[off..off + k];
        let (x_eff, bound) = if dt.is_quantized() {
            (q8_round(xs).0, 1e-9)
        } else {
            (xs.iter().map(|&v| v as f64).collect(), 1e-10)
        };
        failures.extend(check(&*be, &s, &x_eff, k, bound, &what));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The runtime's entry point (tuned dispatch: grouped where every part runs the fused kernel at
/// one row, else one matmul each) at m = 1 and m = 2 (grouped on the pipelined `_m2` kernels on
/// sm_90 where the tuner keeps them, else one matmul per part): every row against
/// the f64 product with x rounded to int8 per 16 (block types) or exact (float types), within
/// the loosest bound of the paths the tuner may pick (the mma path rounds x per 32, the dense
/// path to bf16).
#[test]
fn matmul_many_matches_separate_products() {
    let Some(be) = gpu() else { return };
    let k = 4096;
    let mut failures = Vec::new();
    for (ci, dt) in [DType::Q4_K, DType::Q8_0, DType::BF16]
        .into_iter()
        .enumerate()
    {
        for m in [1usize, 2] {
            let rows = [512usize, 128, 128];
            let s = segs(&*be, dt, &rows, k, 500 + 10 * ci as u64);
            let ys: Vec<Buffer> = rows.iter().map(|&n| poisoned(&*be, m * n)).collect();
            let p: Vec<(&Weight, ViewMut<'_>)> = s
                .iter()
                .zip(&ys)
                .map(|(g, y)| (&g.w, y.view_mut(0, Shape::d2(m, g.n), DType::F32).unwrap()))
                .collect();
            let x = Rng(9 + m as u64).vec(m * k);
            let xb = upload(&*be, &f32_bytes(&x));
            let xv = xb.view(0, Shape::d2(m, k), DType::F32).unwrap();
            be.matmul_many(xv, &p).unwrap();
            for (g, y) in s.iter().zip(&ys) {
                let got = read_f32(&*be, view(y, &[m * g.n], DType::F32));
                for r in 0..m {
                    let xr = &x[r * k..(r + 1) * k];
                    let xe: Vec<f64> = if dt.is_quantized() {
                        q8_round(xr).0
                    } else {
                        xr.iter().map(|&v| v as f64).collect()
                    };
                    let want: Vec<f64> = (0..g.n)
                        .map(|c| (0..k).map(|j| xe[j] * g.wd[c * k + j] as f64).sum())
                        .collect();
                    let e = nmse(&got[r * g.n..(r + 1) * g.n], &want);
                    if e.is_nan() || e > 1e-4 {
                        failures.push(format!("{dt} m={m} row {r} n={}: nmse {e:e}", g.n));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The GLU-mode kernels (`gemv1g_`, `quant_x` + `gemv8g_`, `gemvg_`; forced): out = act(x·Gᵀ) ⊙
/// x·Uᵀ against the f64 oracle with the kernel's x rounding, both activations, n odd (a tail
/// group of one gate/up row pair), the scratch outputs left alone and the out poisoned.
#[test]
fn glu_mode_kernels_match_the_oracle() {
    let Some(be) = gpu() else { return };
    let k = 4096;
    let x = Rng(17).vec(k);
    let xb = upload(&*be, &f32_bytes(&x));
    let mut failures = Vec::new();
    let one = if gemv1_auto_on() {
        GroupKernel::OneKernel
    } else {
        GroupKernel::TwoKernels
    };
    let cases: [(DType, usize, GroupKernel); 11] = [
        (DType::Q4_K, 259, piped(&be, DType::Q4_K, one)),
        (DType::Q5_K, 259, piped(&be, DType::Q5_K, one)),
        (DType::IQ4_XS, 259, piped(&be, DType::IQ4_XS, one)),
        (
            DType::Q5_0,
            259,
            piped(&be, DType::Q5_0, GroupKernel::TwoKernels),
        ),
        (
            DType::Q4_1,
            259,
            piped(&be, DType::Q4_1, GroupKernel::TwoKernels),
        ),
        // 2 × 10.5 MB > 16 MiB: quant_x + gemv8g.
        (
            DType::Q4_K,
            4607,
            piped(&be, DType::Q4_K, GroupKernel::TwoKernels),
        ),
        (DType::Q8_0, 259, GroupKernel::TwoKernels),
        (DType::Q6_K, 259, piped(&be, DType::Q6_K, one)),
        (DType::Q3_K, 259, piped(&be, DType::Q3_K, one)),
        (DType::BF16, 259, GroupKernel::Float),
        (DType::F32, 131, GroupKernel::Float),
    ];
    for (ci, (dt, n, want_kernel)) in cases.into_iter().enumerate() {
        for act in [Activation::Silu, Activation::GeluTanh] {
            let s = segs(&*be, dt, &[n, n], k, 900 + 10 * ci as u64);
            let out = poisoned(&*be, n);
            let xv = xb.view(0, Shape::d2(1, k), DType::F32).unwrap();
            let views = [
                s[0].y.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
                s[1].y.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
                out.view_mut(0, Shape::d2(1, n), DType::F32).unwrap(),
            ];
            let ran = be
                .matmul_glu_group(xv, &s[0].w, &s[1].w, act, views, false)
                .unwrap();
            let what = format!("{dt} n={n} {act:?}");
            if ran != Some(want_kernel) {
                failures.push(format!("{what}: ran {ran:?}, expected {want_kernel:?}"));
                continue;
            }
            let xe: Vec<f64> = if dt.is_quantized() {
                q8_round(&x).0
            } else {
                x.iter().map(|&v| v as f64).collect()
            };
            let dot =
                |w: &[f32], c: usize| (0..k).map(|j| xe[j] * w[c * k + j] as f64).sum::<f64>();
            let want: Vec<f64> = (0..n)
                .map(|c| act_f64(dot(&s[0].wd, c), act) * dot(&s[1].wd, c))
                .collect();
            let got = read_f32(&*be, view(&out, &[n], DType::F32));
            let e = nmse(&got, &want);
            if e.is_nan() || e > 1e-9 {
                failures.push(format!("{what}: nmse {e:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
