//! Small and medium GEMM (m = 1 … 512) for Q4_K, Q8_0 and BF16 weights at n×k = 4096×4096 (and
//! 14336×4096, 4096×14336 without --quick): time of the backend's dispatched matmul, TFLOP/s, weight GB/s
//! and % of the measured copy bandwidth (weight bytes read / time ÷ copy GB/s), and, on CUDA,
//! the fused, mma (int8 tensor cores, block types; for Q4_K at m ≤ 64 also each of its
//! kernels forced: "mma int8", "mma f16" and, at 2 ≤ m ≤ 8 on sm_90, "mma pipe" / "mma pipe tma";
//! for Q5_K / Q6_K / Q8_0 at m ≤ 64, where mq5k / mq6k / mq8_0 is the mma path, the generic
//! kernel as "mma generic") and dense
//! paths separately, then per m the
//! Q4_K-vs-bf16-cuBLAS speed-ups (dispatched and best path). The compute ceiling (dense bf16
//! at 8192³) is measured first and each row's note gives its % of it.
//! With env `KILN_GEMM_MMA_SWEEP=1` (CUDA) it instead times the mma path in every kernel
//! configuration for Q4_K and Q8_0 at 14336×4096 and 4096×14336, m = 8 … 512; with
//! `KILN_GEMM_MMA_SPLITS=1,2,4,…` also at each forced k split.
//! `gemm --backend cuda|wgpu|reference [--quick] [--types ...] [--json FILE]`

use kiln_benches::{
    Args, Report, Row, copy_bandwidth, open, random_weight, rotation_copies, run_main, time_calls,
};
use kiln_core::{Backend, DType, HostTensor, Result, Shape, Weight};

const MS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

fn main() {
    run_main(|| {
        let args = Args::parse()?;
        let be = open(&args)?;
        #[cfg(feature = "cuda")]
        if std::env::var("KILN_GEMM_MMA_SWEEP").is_ok_and(|v| v == "1") {
            return mma_sweep(&*be, &args);
        }
        let mut rep = Report::new(&*be, &args);
        rep.header("GEMM");
        let copy = copy_bandwidth(&*be, if args.quick { 64 } else { 256 })?;
        println!("copy bandwidth: {:.1} GB/s (read + write)", copy / 1e9);
        let ceiling = dense_ceiling(&*be, &args, &mut rep)?;
        let types = args.types_or(&[DType::Q4_K, DType::Q8_0, DType::BF16]);
        let shapes: &[(usize, usize)] = if args.quick {
            &[(4096, 4096)]
        } else {
            &[(4096, 4096), (14336, 4096), (4096, 14336)]
        };
        for &(n, k) in shapes {
            // (m, path name) → seconds, for the speed-up lines.
            let mut times: Vec<(DType, usize, &str, f64)> = Vec::new();
            for &dt in &types {
                let host = random_weight(dt, n, k, 5);
                let copies = rotation_copies(host.len(), args.rotate_bytes);
                let t = HostTensor::new(dt, Shape::d2(n, k), &host)?;
                let ws = (0..copies)
                    .map(|_| be.prepare_weight(&t))
                    .collect::<Result<Vec<_>>>()?;
                for &m in &MS {
                    let flops = 2.0 * (m * n * k) as f64;
                    let mut row = |secs: f64, name: &str| -> Result<()> {
                        let note = match ceiling {
                            Some(c) => {
                                format!("{name}, {:.1}% of bf16 peak", 100.0 * flops / secs / c)
                            }
                            None => name.to_string(),
                        };
                        rep.push(Row {
                            bench: "gemm".into(),
                            case: format!("{} m={m} {n}x{k}", dt.name()),
                            us: secs * 1e6,
                            gbs: Some(host.len() as f64 / secs / 1e9),
                            tflops: Some(flops / secs / 1e12),
                            pct: Some(100.0 * host.len() as f64 / secs / copy),
                            note,
                        })
                    };
                    let auto = time_matmul(&*be, &args, &ws, m, n, k, Path::Auto)?;
                    row(auto, "dispatched")?;
                    times.push((dt, m, "dispatched", auto));
                    #[cfg(feature = "cuda")]
                    if be.info().id.kind == kiln_core::BackendKind::Cuda {
                        for (p, name) in [
                            (Path::Fused, "fused"),
                            (Path::Mma, "mma"),
                            (Path::Dense, "dense"),
                        ] {
                            if p == Path::Mma && dt.is_float() {
                                continue;
                            }
                            let s = time_matmul(&*be, &args, &ws, m, n, k, p)?;
                            row(s, name)?;
                            times.push((dt, m, name, s));
                        }
                        // Q4_K's few-row kernels, each forced on the mma path.
                        if dt == DType::Q4_K && m <= 64 {
                            let cuda = kiln_benches::opened_cuda().ok_or_else(|| {
                                kiln_core::Error::Invalid("no CUDA backend".into())
                            })?;
                            for (kern, name) in [
                                (kiln_cuda::Q4kKernel::Int8, "mma int8"),
                                (kiln_cuda::Q4kKernel::F16, "mma f16"),
                                (kiln_cuda::Q4kKernel::Pipe, "mma pipe"),
                                (kiln_cuda::Q4kKernel::PipeTensor, "mma pipe tma"),
                            ] {
                                // The pipelined kernel: 2 ≤ m ≤ 8 on sm_90 (else the forced
                                // kernel is not the one that would run).
                                cuda.force_q4k_kernel(Some(kern));
                                if cuda.mma_q4k_kernel(dt, n, k, m) != Some(kern) {
                                    cuda.force_q4k_kernel(None);
                                    continue;
                                }
                                let s = time_matmul(&*be, &args, &ws, m, n, k, Path::Mma);
                                cuda.force_q4k_kernel(None);
                                let s = s?;
                                row(s, name)?;
                                times.push((dt, m, name, s));
                            }
                        }
                        // Q5_K / Q6_K / Q8_0 at m ≤ 64: the generic kernel forced (mq5k / mq6k /
                        // mq8_0 is the mma path's kernel there), in the configuration it would
                        // pick for m.
                        if matches!(dt, DType::Q5_K | DType::Q6_K | DType::Q8_0) && m <= 64 {
                            let cuda = kiln_benches::opened_cuda().ok_or_else(|| {
                                kiln_core::Error::Invalid("no CUDA backend".into())
                            })?;
                            cuda.force_mma_config(Some(match m {
                                0..=16 => 0,
                                17..=32 => 1,
                                _ => 2,
                            }));
                            let s = time_matmul(&*be, &args, &ws, m, n, k, Path::Mma);
                            cuda.force_mma_config(None);
                            let s = s?;
                            row(s, "mma generic")?;
                            times.push((dt, m, "mma generic", s));
                        }
                    }
                }
            }
            let get = |dt: DType, m: usize, name: &str| {
                times
                    .iter()
                    .find(|t| t.0 == dt && t.1 == m && t.2 == name)
                    .map(|t| t.3)
            };
            let best = |dt: DType, m: usize| {
                times
                    .iter()
                    .filter(|t| t.0 == dt && t.1 == m && t.2 != "dispatched")
                    .min_by(|a, b| a.3.total_cmp(&b.3))
                    .map(|t| (t.2, t.3))
            };
            for &m in &MS {
                let Some(b) = get(DType::BF16, m, "dense") else {
                    continue;
                };
                if let (Some(q), Some((bp, bt))) =
                    (get(DType::Q4_K, m, "dispatched"), best(DType::Q4_K, m))
                {
                    println!(
                        "speedup Q4_K vs bf16 cuBLAS at m={m} {n}x{k}: dispatched {:.2}x, best path ({bp}) {:.2}x",
                        b / q,
                        b / bt
                    );
                }
            }
        }
        Ok(())
    })
}

/// µs of the mma path per kernel configuration (kiln_cuda::CudaBackend::mma_configs).
#[cfg(feature = "cuda")]
fn mma_sweep(be: &dyn Backend, args: &Args) -> Result<()> {
    let cuda = kiln_benches::opened_cuda()
        .ok_or_else(|| kiln_core::Error::Invalid("the mma sweep needs --backend cuda".into()))?;
    let cfgs = kiln_cuda::CudaBackend::mma_configs();
    // KILN_GEMM_MMA_SPLITS=1,2,4 also sweeps forced k splits (default: the built-in rule).
    let splits: Vec<Option<usize>> = match std::env::var("KILN_GEMM_MMA_SPLITS") {
        Ok(v) => v
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .map(Some)
            .collect(),
        Err(_) => vec![None],
    };
    println!("mma sweep: µs per configuration (x rows, 16-row W tiles per warp[/k splits])");
    for dt in args.types_or(&[DType::Q4_K, DType::Q8_0]) {
        for (n, k) in [(14336, 4096), (4096, 14336)] {
            let host = random_weight(dt, n, k, 5);
            let copies = rotation_copies(host.len(), args.rotate_bytes);
            let t = HostTensor::new(dt, Shape::d2(n, k), &host)?;
            let ws = (0..copies)
                .map(|_| be.prepare_weight(&t))
                .collect::<Result<Vec<_>>>()?;
            for m in [8, 16, 32, 64, 128, 256, 512] {
                let mut cells = Vec::new();
                for (c, cfg) in cfgs.iter().enumerate() {
                    cuda.force_mma_config(Some(c));
                    for &sp in &splits {
                        cuda.force_mma_splits(sp);
                        let s = time_matmul(be, args, &ws, m, n, k, Path::Mma)?;
                        match sp {
                            None => cells.push(format!("{cfg:?}:{:.1}", s * 1e6)),
                            Some(sp) => cells.push(format!("{cfg:?}/s{sp}:{:.1}", s * 1e6)),
                        }
                    }
                }
                cuda.force_mma_config(None);
                cuda.force_mma_splits(None);
                let d = time_matmul(be, args, &ws, m, n, k, Path::Dense)?;
                let f = time_matmul(be, args, &ws, m, n, k, Path::Fused)?;
                println!(
                    "sweep {} m={m} {n}x{k}: fused {:.1} dense {:.1} | {}",
                    dt.name(),
                    f * 1e6,
                    d * 1e6,
                    cells.join(" ")
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Auto,
    #[cfg(feature = "cuda")]
    Fused,
    #[cfg(feature = "cuda")]
    Mma,
    #[cfg(feature = "cuda")]
    Dense,
}

#[allow(clippy::too_many_arguments)]
fn time_matmul(
    be: &dyn Backend,
    args: &Args,
    ws: &[Weight],
    m: usize,
    n: usize,
    k: usize,
    path: Path,
) -> Result<f64> {
    let x = be.alloc(m * k * 4)?;
    be.write(&x, 0, &vec![0u8; m * k * 4])?;
    let y = be.alloc(m * n * 4)?;
    let xv = x.view(0, Shape::d2(m, k), DType::F32)?;
    let yv = y.view_mut(0, Shape::d2(m, n), DType::F32)?;
    let calls = ws.len().max(if args.quick { 4 } else { 16 });
    let reps = if args.quick { 3 } else { 5 };
    match path {
        Path::Auto => time_calls(be, calls, reps, &mut |i| {
            be.matmul(xv, &ws[i % ws.len()], yv)
        }),
        #[cfg(feature = "cuda")]
        Path::Fused | Path::Mma | Path::Dense => {
            let cuda = kiln_benches::opened_cuda().ok_or_else(|| {
                kiln_core::Error::Invalid("forced matmul paths need the CUDA backend".into())
            })?;
            let p = match path {
                Path::Fused => kiln_cuda::MatmulPath::Fused,
                Path::Mma => kiln_cuda::MatmulPath::Mma,
                _ => kiln_cuda::MatmulPath::Dense,
            };
            time_calls(be, calls, reps, &mut |i| {
                cuda.matmul_with(xv, &ws[i % ws.len()], yv, p)
            })
        }
    }
}

/// Dense bf16 matmul at 8192³ (4096³ with --quick): the compute ceiling.
fn dense_ceiling(be: &dyn Backend, args: &Args, rep: &mut Report) -> Result<Option<f64>> {
    let s = if args.quick { 4096 } else { 8192 };
    let host = random_weight(DType::BF16, s, s, 9);
    let w = be.prepare_weight(&HostTensor::new(DType::BF16, Shape::d2(s, s), &host)?)?;
    let secs = match time_matmul(be, args, std::slice::from_ref(&w), s, s, s, Path::Auto) {
        Ok(t) => t,
        Err(e) => {
            println!("dense ceiling not measured: {e}");
            return Ok(None);
        }
    };
    let tf = 2.0 * (s as f64).powi(3) / secs;
    rep.push(Row {
        bench: "gemm".into(),
        case: format!("BF16 dense {s}^3 (ceiling)"),
        us: secs * 1e6,
        gbs: None,
        tflops: Some(tf / 1e12),
        pct: Some(100.0),
        note: "f32 x converted to bf16 inside".into(),
    })?;
    Ok(Some(tf))
}
