//! Many-row matmul benchmark for wgpu:0 (ignored by default: `--ignored --nocapture`): the
//! GEMV kernel, the GEMM (`gemm.wgsl`, built-in k-split rule and forced splits) and the older
//! `matmul.wgsl` GEMM (`set_gemm_legacy`), for Q4_K, Q8_0 and BF16 at 4096×4096, 14336×4096
//! and 4096×14336, m = 8 … 512, in TFLOP/s (2·m·n·k / time).
//! Method: GPU timestamps around every compute pass (a split GEMM is two passes per call).
//! Windows of back-to-back calls sized to ≥ 20 ms of GPU work (3..500 calls) run until two
//! consecutive windows agree within 3 % (at least 2, at most 8), then one more window is the
//! measurement: "stream" = (last pass end − first pass start) / calls, gaps included, and
//! "kernel" = Σ pass times / calls. Weights rotate over copies ≥ 128 MiB (L2 holds none).
//! KILN_BENCH_SCALE (default 1) scales n and k down on a CPU adapter; KILN_BENCH_GEMM_M
//! (comma list) replaces the m ladder; KILN_BENCH_GEMM_LEGACY=all|some|none times the older
//! GEMM at every m, at m = 64 and 512 (default) or not; KILN_BENCH_GEMM_SPLITS (comma list,
//! default 1,2,4,8,16; empty: none) the forced k splits at m ≤ 128; KILN_BENCH_GEMM_TYPES
//! (comma list of dtype names) the weight types. "gemm" is gemm.wgsl (f32 FMAs, forced with
//! `set_gemm_coop(false)`), "coop" the cooperative-matrix kernel (`gemm_coop.wgsl`, where the
//! adapter has it); "gemm nopf" (KILN_BENCH_GEMM_NOPF=1) is gemm.wgsl without the k-loop
//! prefetch (`set_gemm_kk_prefetch(false)`). KILN_BENCH_GEMM_KERNELS (comma list of gemm,
//! coop, gemv; default all) keeps only those rows (forced splits follow gemm and coop).
// Tests may unwrap (project convention).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, HostTensor, Shape, Weight};
use kiln_wgpu::{MatmulPath, WgpuBackend};

fn scale() -> f64 {
    std::env::var("KILN_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// (stream, kernel) seconds per call over one window of `calls` calls.
fn window(f: &mut dyn FnMut(usize), calls: usize, be: &WgpuBackend) -> Option<(f64, f64)> {
    if !be.gpu_timer_start().unwrap() {
        return None;
    }
    for i in 0..calls {
        f(i);
    }
    let v = be.gpu_timer_stop_spans().unwrap()?;
    let span = v.last().map_or(0.0, |l| l.1);
    let ksum: f64 = v.iter().map(|(a, b)| (b - a).max(0.0)).sum();
    Some((span / calls as f64, ksum / calls as f64))
}

fn steady(f: &mut dyn FnMut(usize), be: &WgpuBackend) -> Option<(f64, f64)> {
    let (one, _) = window(f, 3, be)?;
    let calls = ((0.02 / one.max(1e-7)) as usize).clamp(3, 500);
    let mut prev = one;
    for w in 0..8 {
        let (s, _) = window(f, calls, be)?;
        let settled = (s - prev).abs() <= 0.03 * prev;
        prev = s;
        if w >= 1 && settled {
            break;
        }
    }
    window(f, calls, be)
}

fn random_weight(d: DType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let wf = randn(&mut r, n * k, 0.5);
    let mut b = vec![0u8; d.bytes_for(n * k).unwrap()];
    kiln_core::quant::quantize(d, &wf, &mut b).unwrap();
    b
}

#[test]
#[ignore]
fn bench_gemm() {
    let Some(be) = open() else { return };
    let i = be.info();
    println!(
        "BENCH device: {} | {} | {} | coop {} {:?}",
        i.name,
        i.driver,
        i.caps_summary(),
        be.has_coop_matrix(),
        be.coop_matrix_configs()
    );
    let sc = scale();
    let ms: Vec<usize> = std::env::var("KILN_BENCH_GEMM_M")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 16, 32, 64, 128, 512]);
    // the older GEMM at every m, at m = 64 and 512 (default), or not at all
    let legacy = std::env::var("KILN_BENCH_GEMM_LEGACY").unwrap_or_else(|_| "some".into());
    let forced: Vec<u32> = std::env::var("KILN_BENCH_GEMM_SPLITS")
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 2, 4, 8, 16]);
    let kernels = std::env::var("KILN_BENCH_GEMM_KERNELS").unwrap_or_else(|_| "all".into());
    let want = |k: &str| kernels == "all" || kernels.split(',').any(|x| x.trim() == k);
    let nopf = std::env::var("KILN_BENCH_GEMM_NOPF").is_ok_and(|v| v == "1");
    let types: Vec<DType> = std::env::var("KILN_BENCH_GEMM_TYPES")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| DType::parse(x.trim()))
                .collect()
        })
        .unwrap_or_else(|| vec![DType::Q4_K, DType::Q8_0, DType::BF16]);
    let dim = |v: usize| (((v as f64 * sc) as usize).max(256) / 256) * 256;
    let shapes = [(4096, 4096), (14336, 4096), (4096, 14336)];
    for &d in &types {
        for &(n0, k0) in &shapes {
            let (n, k) = (dim(n0), dim(k0));
            let host = random_weight(d, n, k, 3);
            let copies = (128usize << 20).div_ceil(host.len()).clamp(1, 32);
            let t = HostTensor::new(d, Shape::d2(n, k), &host).unwrap();
            let ws: Vec<Weight> = (0..copies)
                .map(|_| be.prepare_weight(&t).unwrap())
                .collect();
            let mmax = *ms.iter().max().unwrap();
            let x = upload(&be, &f32_bytes(&randn(&mut rng(1), mmax * k, 1.0)));
            let y = be.alloc(mmax * n * 4).unwrap();
            // warm the clocks under this weight (an idle GPU drops its SM clock)
            let t0 = std::time::Instant::now();
            while t0.elapsed().as_secs_f64() < 0.5 {
                for w in &ws {
                    be.matmul_with(
                        x.view(0, Shape::d2(64, k), DType::F32).unwrap(),
                        w,
                        y.view_mut(0, Shape::d2(64, n), DType::F32).unwrap(),
                        MatmulPath::Gemm,
                    )
                    .unwrap();
                }
                be.synchronize().unwrap();
            }
            for &m in &ms {
                let flops = 2.0 * (m * n * k) as f64;
                let xv = x.view(0, Shape::d2(m, k), DType::F32).unwrap();
                let yv = y.view_mut(0, Shape::d2(m, n), DType::F32).unwrap();
                // (name, path, forced splits, legacy kernel, k-loop prefetch)
                // (name, path, forced splits, legacy kernel, k-loop prefetch, coop kernel)
                let mut variants: Vec<(String, MatmulPath, Option<u32>, bool, bool, bool)> =
                    Vec::new();
                if want("gemm") {
                    variants.push(("gemm".into(), MatmulPath::Gemm, None, false, true, false));
                }
                if be.has_coop_matrix() && want("coop") {
                    variants.push(("coop".into(), MatmulPath::Gemm, None, false, true, true));
                }
                if nopf {
                    variants.push((
                        "gemm nopf".into(),
                        MatmulPath::Gemm,
                        None,
                        false,
                        false,
                        false,
                    ));
                }
                if legacy == "all" || (legacy == "some" && (m == 64 || m == 512)) {
                    variants.push(("legacy".into(), MatmulPath::Gemm, None, true, true, false));
                }
                if m <= 128 {
                    if want("gemv") {
                        variants.push(("gemv".into(), MatmulPath::Gemv, None, false, true, false));
                    }
                    for &s in &forced {
                        if want("gemm") {
                            variants.push((
                                format!("gemm s{s}"),
                                MatmulPath::Gemm,
                                Some(s),
                                false,
                                true,
                                false,
                            ));
                        }
                        if be.has_coop_matrix() && want("coop") {
                            variants.push((
                                format!("coop s{s}"),
                                MatmulPath::Gemm,
                                Some(s),
                                false,
                                true,
                                true,
                            ));
                        }
                    }
                }
                let mut cells = Vec::new();
                for (name, path, sp, old, pf, coop) in variants {
                    be.set_gemm_splits(sp).unwrap();
                    be.set_gemm_legacy(old);
                    be.set_gemm_kk_prefetch(pf);
                    be.set_gemm_coop(coop);
                    let mut f = |c: usize| {
                        be.matmul_with(xv, &ws[c % ws.len()], yv, path).unwrap();
                    };
                    let r = steady(&mut f, &be);
                    be.set_gemm_splits(None).unwrap();
                    be.set_gemm_legacy(false);
                    be.set_gemm_kk_prefetch(true);
                    be.set_gemm_coop(true);
                    let Some((stream, kern)) = r else {
                        println!("BENCH gemm: no TIMESTAMP_QUERY on this adapter");
                        return;
                    };
                    cells.push(format!(
                        "{name} {:.1} us {:.2} TF/s (kernel {:.1} us)",
                        stream * 1e6,
                        flops / stream / 1e12,
                        kern * 1e6
                    ));
                }
                println!(
                    "BENCH gemm {} m={m} {n}x{k} | {}",
                    d.name(),
                    cells.join(" | ")
                );
            }
        }
    }
}
