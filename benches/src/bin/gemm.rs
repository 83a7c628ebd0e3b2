//! Small and medium GEMM (m = 1 … 512) for Q4_K, Q8_0 and BF16 weights at n×k = 4096×4096 (and
//! 14336×4096 without --quick): time of the backend's dispatched matmul, TFLOP/s, weight GB/s,
//! and, on CUDA, the fused and dense paths separately plus Q4_K-vs-bf16-cuBLAS speedups.
//! The compute ceiling is a dense bf16 matmul at 8192³ measured first.
//! `gemm --backend cuda|wgpu|reference [--quick] [--types ...] [--json FILE]`

use kiln_benches::{Args, Report, Row, open, random_weight, rotation_copies, run_main, time_calls};
use kiln_core::{Backend, DType, HostTensor, Result, Shape, Weight};

const MS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 512];

fn main() {
    run_main(|| {
        let args = Args::parse()?;
        let be = open(&args)?;
        let mut rep = Report::new(&*be, &args);
        rep.header("GEMM");
        let ceiling = dense_ceiling(&*be, &args, &mut rep)?;
        let types = args.types_or(&[DType::Q4_K, DType::Q8_0, DType::BF16]);
        let shapes: &[(usize, usize)] = if args.quick {
            &[(4096, 4096)]
        } else {
            &[(4096, 4096), (14336, 4096)]
        };
        for &(n, k) in shapes {
            let mut bf16_dense = Vec::new();
            let mut q4k_auto = Vec::new();
            for &dt in &types {
                let host = random_weight(dt, n, k, 5);
                let copies = rotation_copies(host.len(), args.rotate_bytes);
                let t = HostTensor::new(dt, Shape::d2(n, k), &host)?;
                let ws = (0..copies)
                    .map(|_| be.prepare_weight(&t))
                    .collect::<Result<Vec<_>>>()?;
                for &m in &MS {
                    let auto = time_matmul(&*be, &args, &ws, m, n, k, Path::Auto)?;
                    let flops = 2.0 * (m * n * k) as f64;
                    rep.push(Row {
                        bench: "gemm".into(),
                        case: format!("{} m={m} {n}x{k}", dt.name()),
                        us: auto * 1e6,
                        gbs: Some(host.len() as f64 / auto / 1e9),
                        tflops: Some(flops / auto / 1e12),
                        pct: ceiling.map(|c| 100.0 * flops / auto / c),
                        note: "dispatched".into(),
                    })?;
                    if dt == DType::Q4_K {
                        q4k_auto.push((m, auto));
                    }
                    #[cfg(feature = "cuda")]
                    if be.info().id.kind == kiln_core::BackendKind::Cuda {
                        for (p, name) in [(Path::Fused, "fused"), (Path::Dense, "dense")] {
                            let s = time_matmul(&*be, &args, &ws, m, n, k, p)?;
                            rep.push(Row {
                                bench: "gemm".into(),
                                case: format!("{} m={m} {n}x{k}", dt.name()),
                                us: s * 1e6,
                                gbs: Some(host.len() as f64 / s / 1e9),
                                tflops: Some(flops / s / 1e12),
                                pct: ceiling.map(|c| 100.0 * flops / s / c),
                                note: name.into(),
                            })?;
                            if dt == DType::BF16 && p == Path::Dense {
                                bf16_dense.push((m, s));
                            }
                        }
                    }
                }
            }
            for (m, q) in &q4k_auto {
                if let Some((_, b)) = bf16_dense.iter().find(|(bm, _)| bm == m) {
                    println!(
                        "speedup Q4_K (dispatched) vs bf16 cuBLAS at m={m} {n}x{k}: {:.2}x",
                        b / q
                    );
                }
            }
        }
        Ok(())
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Auto,
    #[cfg(feature = "cuda")]
    Fused,
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
        Path::Fused | Path::Dense => {
            let cuda = kiln_benches::opened_cuda().ok_or_else(|| {
                kiln_core::Error::Invalid("forced matmul paths need the CUDA backend".into())
            })?;
            let p = if path == Path::Fused {
                kiln_cuda::MatmulPath::Fused
            } else {
                kiln_cuda::MatmulPath::Dense
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
