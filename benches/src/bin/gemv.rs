//! GEMV (m = 1) for every weight type at n×k = 4096×4096, 14336×4096, 4096×14336: GB/s of
//! weight + activation bytes and the fraction of the measured copy bandwidth. On CUDA, block
//! types also get a row for each m = 1 kernel forced (`gemv1`: one kernel; `quant_x+gemv8`: two;
//! `gemvp`: the pipelined kernel, for its types), beside the dispatched one.
//! A "chained" row times each call followed by a dependent rms_norm of its output (a decode
//! step's order: back-to-back calls overlap one call's weight loads with the previous tail,
//! which a step does not).
//! On wgpu, which has no graph capture, the plain and chained rows time recording + execution
//! on the host clock; the "b2b" rows are the CUDA rows' method on the GPU clock: `calls`
//! calls (each on the next weight copy) recorded into ONE submission, GPU timestamps at the
//! first pass's start and the last pass's end, median of 7 such windows.
//! `gemv --backend cuda|wgpu|reference [--quick] [--types q4_k,bf16] [--json FILE]`
//! Env `KILN_BENCH_MS=1,2,4,8`: also m x rows per product (small-batch decode); rows with
//! m > 1 are "m=M" cases with the plain and b2b timings only (bytes: weight + m·(k + n)·4).
//! Each case first gets a "read floor" row: the backend's read probe streaming as many bytes
//! as the weight, timed the same way (`kiln_benches::read_floor`), i.e. what this size can
//! reach at all; rows on the same clock note their time as a fraction of it.

use kiln_benches::{
    Args, Report, Row, copy_bandwidth, open, random_weight, rotation_copies, run_main, time_calls,
};
use kiln_core::{DType, HostTensor, Result, Shape};

const SHAPES: [(usize, usize); 3] = [(4096, 4096), (14336, 4096), (4096, 14336)];

fn main() {
    run_main(|| {
        let args = Args::parse()?;
        let be = open(&args)?;
        let mut rep = Report::new(&*be, &args);
        let copy = copy_bandwidth(&*be, if args.quick { 64 } else { 256 })?;
        rep.header("GEMV m=1");
        rep.push(Row {
            bench: "copy".into(),
            case: "d2d f32 copy (ceiling)".into(),
            us: 0.0,
            gbs: Some(copy / 1e9),
            tflops: None,
            pct: Some(100.0),
            note: "read+write bytes".into(),
        })?;
        // wgpu: the vec4 copy probe is the ceiling (kiln_benches::wgpu_ceiling)
        let copy = kiln_benches::wgpu_ceiling(&mut rep, copy, args.quick)?;
        let types = args.types_or(&DType::WEIGHT_TYPES);
        let shapes: &[(usize, usize)] = if args.quick { &SHAPES[..1] } else { &SHAPES };
        let ms: Vec<usize> = std::env::var("KILN_BENCH_MS")
            .ok()
            .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
            .filter(|v: &Vec<usize>| !v.is_empty() && v.iter().all(|&m| m > 0))
            .unwrap_or_else(|| vec![1]);
        for dt in types {
            if !be.supports(kiln_core::OpKind::Matmul, dt) {
                println!("{dt}: not supported on {}", be.info().id);
                continue;
            }
            for &(n, k) in shapes {
                for &m in &ms {
                    bench_one(&*be, &args, &mut rep, dt, n, k, m, copy)?;
                }
            }
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn bench_one(
    be: &dyn kiln_core::Backend,
    args: &Args,
    rep: &mut Report,
    dt: DType,
    n: usize,
    k: usize,
    m: usize,
    copy: f64,
) -> Result<()> {
    let host = random_weight(dt, n, k, (n * 31 + k) as u64);
    let wbytes = host.len();
    let copies = rotation_copies(wbytes, args.rotate_bytes);
    let t = HostTensor::new(dt, Shape::d2(n, k), &host)?;
    let weights = (0..copies)
        .map(|_| be.prepare_weight(&t))
        .collect::<Result<Vec<_>>>()?;
    drop(host);
    let x = be.alloc(m * k * 4)?;
    be.write(&x, 0, &vec![0u8; m * k * 4])?;
    let y = be.alloc(m * n * 4)?;
    let xv = x.view(0, Shape::d2(m, k), DType::F32)?;
    let yv = y.view_mut(0, Shape::d2(m, n), DType::F32)?;
    let calls = copies.max(if args.quick { 8 } else { 32 });
    let reps = if args.quick { 3 } else { 7 };
    let bytes = (wbytes + m * (4 * k + 4 * n)) as f64;
    let mname = if m > 1 {
        format!(" m={m}")
    } else {
        String::new()
    };
    // The read floor of this size (module docs): pushed as its own row, and each row timed on
    // the same clock says how close it comes to it.
    let floor = kiln_benches::read_floor(be, wbytes, copies, calls, reps)?;
    if let Some(f) = floor {
        let case = format!("read floor {n}x{k}{mname} ({})", dt.name());
        rep.push(kiln_benches::floor_row(
            "gemv", case, f, wbytes, copy, copies,
        ))?;
    }
    let cuda = be.info().id.kind == kiln_core::BackendKind::Cuda;
    let mut row = |case: String, secs: f64| {
        let gbs = bytes / secs;
        let same_clock = cuda || case.ends_with("b2b");
        let of_floor = match floor {
            Some(f) if same_clock => format!(", {:.1} % of the read floor", 100.0 * f / secs),
            _ => String::new(),
        };
        rep.push(Row {
            bench: "gemv".into(),
            case,
            us: secs * 1e6,
            gbs: Some(gbs / 1e9),
            tflops: Some(2.0 * (m * n * k) as f64 / secs / 1e12),
            pct: Some(100.0 * gbs / copy),
            note: format!(
                "{:.1} MB weight, {copies} copies rotated{of_floor}",
                wbytes as f64 / 1e6
            ),
        })
    };
    let secs = time_calls(be, calls, reps, &mut |i| {
        be.matmul(xv, &weights[i % copies], yv)
    })?;
    row(format!("{} {n}x{k}{mname}", dt.name()), secs)?;
    #[cfg(feature = "wgpu")]
    if m > 1
        && let Some(w) = kiln_benches::opened_wgpu()
    {
        let mut plain = |i: usize| be.matmul(xv, &weights[i % copies], yv);
        if let Some(secs) = kiln_benches::gpu_b2b(&w, calls, reps, 1, &mut plain)? {
            row(format!("{} {n}x{k}{mname} b2b", dt.name()), secs)?;
        }
    }
    if m > 1 {
        return Ok(());
    }
    // Chained: each call followed by an rms_norm of its output row, as in a decode step, where
    // the next matmul cannot overlap the previous one's tail with its own weight loads. GB/s
    // and % count the matmul's bytes over the pair's time (the norm moves 3·n floats).
    let nw = be.alloc(n * 4)?;
    be.write(&nw, 0, &f32_ones(n))?;
    let z = be.alloc(n * 4)?;
    let (yr, nwv) = (
        y.view(0, Shape::d2(1, n), DType::F32)?,
        nw.view(0, Shape::d1(n), DType::F32)?,
    );
    let zv = z.view_mut(0, Shape::d2(1, n), DType::F32)?;
    let secs = time_calls(be, calls, reps, &mut |i| {
        be.matmul(xv, &weights[i % copies], yv)?;
        be.rms_norm(yr, nwv, 1e-6, zv)
    })?;
    row(format!("{} {n}x{k} chained", dt.name()), secs)?;
    // wgpu has no graph capture: the row above records `calls` ops and then runs them, so it
    // times recording + execution back to back. Streaming 480 calls (submitted in batches of
    // 48) overlaps the recording of one batch with the execution of the previous one.
    if be.info().id.kind == kiln_core::BackendKind::Wgpu {
        let secs = time_calls(be, 480, reps, &mut |i| {
            be.matmul(xv, &weights[i % copies], yv)
        })?;
        row(format!("{} {n}x{k} streamed", dt.name()), secs)?;
    }
    #[cfg(feature = "wgpu")]
    if let Some(w) = kiln_benches::opened_wgpu() {
        let mut plain = |i: usize| be.matmul(xv, &weights[i % copies], yv);
        if let Some(secs) = kiln_benches::gpu_b2b(&w, calls, reps, 1, &mut plain)? {
            row(format!("{} {n}x{k} b2b", dt.name()), secs)?;
        }
        let mut chain = |i: usize| {
            be.matmul(xv, &weights[i % copies], yv)?;
            be.rms_norm(yr, nwv, 1e-6, zv)
        };
        if let Some(secs) = kiln_benches::gpu_b2b(&w, calls, reps, 2, &mut chain)? {
            row(format!("{} {n}x{k} chained b2b", dt.name()), secs)?;
        }
    }
    #[cfg(feature = "cuda")]
    if let (Some(cuda), true) = (kiln_benches::opened_cuda(), dt.is_quantized()) {
        for (one, name) in [(true, "gemv1"), (false, "quant_x+gemv8")] {
            let secs = time_calls(be, calls, reps, &mut |i| {
                cuda.matmul_fused_m1(xv, &weights[i % copies], yv, one)
            })?;
            row(format!("{} {n}x{k} {name}", dt.name()), secs)?;
        }
        // The pipelined kernel's types: it forced (`gemvp`, sm_90+; the dispatched row takes
        // it unless KILN_GEMV_PIPE=0).
        let sm90 = be.info().caps.compute_capability.is_some_and(|c| c.0 >= 9);
        if kiln_cuda::gemv_pipe_types().contains(&dt) && k.is_multiple_of(2048) && sm90 {
            let secs = time_calls(be, calls, reps, &mut |i| {
                cuda.matmul_fused_m1_pipe(xv, &weights[i % copies], yv)
            })?;
            row(format!("{} {n}x{k} gemvp", dt.name()), secs)?;
        }
    }
    Ok(())
}

fn f32_ones(n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| 1f32.to_le_bytes()).collect()
}
