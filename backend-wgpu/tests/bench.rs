//! GEMV / attention / copy benchmarks for wgpu:0 (ignored by default: run with
//! `--ignored --nocapture`). Prints one line per measurement with achieved GB/s and the
//! fraction of the measured copy bandwidth (read + write counted, like DEVICE.md's ceilings).
//! Timing is wall clock over a batch of calls followed by `synchronize`, with weights large
//! enough (≥ ~250 MB) that the GPU, not the CPU recording, bounds the loop. Shapes are sized
//! down by KILN_BENCH_SCALE (default 1.0; use e.g. 0.02 on a CPU adapter).
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use std::time::Instant;

use common::*;
use kiln_core::{AttnParams, Backend, DType, HostTensor, PagedKv, SeqBatch, Shape};
use kiln_wgpu::MatmulPath;

fn scale() -> f64 {
    std::env::var("KILN_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn time<F: FnMut()>(mut f: F, reps: usize, be: &dyn Backend) -> f64 {
    // warm-up: one batch (compiles the pipeline, brings the clocks up)
    for _ in 0..reps {
        f();
    }
    be.synchronize().unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        be.synchronize().unwrap();
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// GPU time of one call of `f` (one compute pass: the weights here fit one binding), from
/// the pass's start and end timestamps: the median over `reps` calls recorded back to back.
/// `None` without timestamp queries.
fn kernel_time<F: FnMut()>(mut f: F, reps: usize, be: &kiln_wgpu::WgpuBackend) -> Option<f64> {
    if !be.gpu_timer_start().unwrap() {
        return None;
    }
    for _ in 0..reps {
        f();
    }
    let mut v = be.gpu_timer_stop().unwrap()?;
    assert_eq!(v.len(), reps, "one pass per call");
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

#[test]
#[ignore]
fn bench_wgpu() {
    let Some(be) = open() else { return };
    let i = be.info();
    println!(
        "BENCH device: {} | {} | {}",
        i.name,
        i.driver,
        i.caps_summary()
    );
    let s = scale();
    // Copy bandwidth: f32 → f32 copy op over 512 MiB (scaled).
    let n = ((128usize << 20) as f64 * s) as usize / 256 * 256;
    let a = be.alloc(n * 4).unwrap();
    let b = be.alloc(n * 4).unwrap();
    let av = a.view(0, Shape::d1(n), DType::F32).unwrap();
    let bv = b.view_mut(0, Shape::d1(n), DType::F32).unwrap();
    let t = time(|| be.copy(av, bv).unwrap(), 20, be.as_ref());
    let shader_bw = (n * 8) as f64 / t / 1e9;
    println!(
        "BENCH copy (shader, f32) {} MiB: {:.3} ms, {shader_bw:.1} GB/s (read+write)",
        (n * 4) >> 20,
        t * 1e3
    );
    let t = time(
        || be.copy_buffer(&a, 0, &b, 0, n * 4).unwrap(),
        20,
        be.as_ref(),
    );
    let api_bw = (n * 8) as f64 / t / 1e9;
    println!(
        "BENCH copy (copy_buffer_to_buffer) {} MiB: {:.3} ms, {api_bw:.1} GB/s (read+write)",
        (n * 4) >> 20,
        t * 1e3
    );
    // The honest streaming ceiling: copy_v4.wgsl, 16-byte loads, U in flight per invocation.
    let mut probe_bw: f64 = 0.0;
    for u in [1u32, 2, 4, 8] {
        let t = time(|| be.copy_probe(&a, &b, n * 4, u).unwrap(), 20, be.as_ref());
        let bw = (n * 8) as f64 / t / 1e9;
        println!(
            "BENCH copy (vec4 shader, {u} per invocation) {} MiB: {:.3} ms, {bw:.1} GB/s (read+write)",
            (n * 4) >> 20,
            t * 1e3
        );
        probe_bw = probe_bw.max(bw);
        if let Some(k) = kernel_time(|| be.copy_probe(&a, &b, n * 4, u).unwrap(), 20, &be) {
            let kb = (n * 8) as f64 / k / 1e9;
            println!("BENCH copy (vec4 shader, {u} per invocation) kernel: {kb:.1} GB/s");
            probe_bw = probe_bw.max(kb);
        }
    }
    // Fractions below are of the best shader/API copy; the CUDA copy (4200 GB/s on an H200,
    // BENCHMARKS.md) is printed beside.
    let copy_bw = shader_bw.max(api_bw).max(probe_bw);
    println!("BENCH ceiling: {copy_bw:.1} GB/s (best copy above)");
    drop((a, b));
    let k = 4096;
    let vcfgs = [
        (2u32, 2u32),
        (2, 4),
        (2, 8),
        (4, 1),
        (4, 2),
        (4, 4),
        (8, 1),
        (8, 2),
    ];
    // GEMV m = 1 at k = 4096: ~280 MB weights (n large), then the benches-crate shapes.
    for d in [
        DType::Q4_K,
        DType::Q8_0,
        DType::BF16,
        DType::Q4_0,
        DType::Q6_K,
        DType::F16,
    ] {
        let bytes_per_row = d.bytes_for(k).unwrap();
        let big = (((280usize << 20) as f64 * s) as usize / bytes_per_row).max(64) / 64 * 64;
        for (rows, kk) in [(big, k), (4096, 4096), (14336, 4096), (4096, 14336)] {
            if s < 1.0 && rows != big {
                continue;
            }
            let row_bytes = d.bytes_for(kk).unwrap();
            let data: Vec<u8> = (0..rows * row_bytes)
                .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] & 0x3b)
                .collect();
            let w = be
                .prepare_weight(&HostTensor::new(d, Shape::d2(rows, kk), &data).unwrap())
                .unwrap();
            drop(data);
            let x = be.alloc(16 * kk * 4).unwrap();
            let o = be.alloc(16 * rows * 4).unwrap();
            let xv = x.view(0, Shape::d2(1, kk), DType::F32).unwrap();
            let ov = o.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
            let wbytes = (rows * row_bytes) as f64;
            // Small weights: enough calls that recording overlaps execution (batches of 48).
            let reps = if rows == big { 10 } else { 240 };
            // Wall clock per call in a stream of calls, then the GPU time of the kernel alone.
            let line = |what: String, t: f64| {
                let gbs = wbytes / t / 1e9;
                let kt = kernel_time(
                    || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                    50,
                    &be,
                );
                let kern = kt.map_or("no timestamps".to_string(), |k| {
                    let g = wbytes / k / 1e9;
                    format!(
                        "kernel {:.2} us, {g:.1} GB/s, {:.1}% of ceiling, {:.1}% of 4200",
                        k * 1e6,
                        100.0 * g / copy_bw,
                        100.0 * g / 4200.0
                    )
                });
                println!(
                    "BENCH gemv {d} n={rows} k={kk} m=1 {what}: wall {:.2} us, {gbs:.1} GB/s weight, {:.1}% of ceiling, {:.1}% of 4200 | {kern}",
                    t * 1e6,
                    100.0 * gbs / copy_bw,
                    100.0 * gbs / 4200.0
                );
            };
            // The general kernel (as before this kernel existed), its untuned shape.
            be.set_vgemv_config(Some((0, 0))).unwrap();
            let t = time(
                || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                reps,
                be.as_ref(),
            );
            line("general gemv".into(), t);
            be.set_vgemv_config(None).unwrap();
            let t = time(
                || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                reps,
                be.as_ref(),
            );
            line("dispatched".into(), t);
            if matches!(d, DType::Q4_K | DType::Q8_0 | DType::BF16) {
                for c in vcfgs {
                    be.set_vgemv_config(Some(c)).unwrap();
                    let t = time(
                        || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                        reps,
                        be.as_ref(),
                    );
                    line(format!("vgemv (teams, rows)={c:?}"), t);
                }
                be.set_vgemv_config(Some((2, 4))).unwrap();
                be.set_vgemv_prefetch(false);
                let t = time(
                    || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                    reps,
                    be.as_ref(),
                );
                line("vgemv (teams, rows)=(2, 4) no prefetch".into(), t);
                be.set_vgemv_prefetch(true);
                be.set_vgemv_config(None).unwrap();
                // the dispatched shape again (drift check)
                let t = time(
                    || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                    reps,
                    be.as_ref(),
                );
                line("dispatched (again)".into(), t);
            }
        }
    }
    // Crossover on a llama-8B-like shape.
    for d in [DType::Q4_K, DType::Q8_0, DType::BF16] {
        let (n, k) = ((4096.0 * s.sqrt()) as usize / 64 * 64, 4096);
        let r = be.tune(d, n.max(64), k).unwrap();
        println!(
            "BENCH tune {d} n={} k={k}: max_gemv_rows = {} {:?}",
            r.n, r.max_gemv_rows, r.timings
        );
    }
    // Decode attention: 16 sequences × 4096 context, 32 heads, 8 KV heads, hd 128, f16 KV.
    let (nseq, ctx, nh, nkv, hd, bs) = (
        16usize,
        ((4096.0 * s) as usize).max(64),
        32usize,
        8usize,
        128usize,
        16usize,
    );
    let mb = ctx.div_ceil(bs);
    let nblocks = nseq * mb;
    let cache = nblocks * nkv * bs * hd;
    let kc = be.alloc(cache * 2).unwrap();
    let vc = be.alloc(cache * 2).unwrap();
    be.write(&kc, 0, &vec![0x11; cache * 2]).unwrap();
    be.write(&vc, 0, &vec![0x11; cache * 2]).unwrap();
    let cs = Shape::d4(nblocks, nkv, bs, hd);
    let kv = PagedKv::new(
        kc.view_mut(0, cs, DType::F16).unwrap(),
        vc.view_mut(0, cs, DType::F16).unwrap(),
    )
    .unwrap();
    let bt: Vec<i32> = (0..nblocks as i32).collect();
    let qst: Vec<i32> = (0..=nseq as i32).collect();
    let kl = vec![ctx as i32; nseq];
    let (btb, qsb, klb) = (
        upload(&be, &i32_bytes(&bt)),
        upload(&be, &i32_bytes(&qst)),
        upload(&be, &i32_bytes(&kl)),
    );
    let batch = SeqBatch {
        q_starts: qsb.view(0, Shape::d1(nseq + 1), DType::I32).unwrap(),
        kv_lens: klb.view(0, Shape::d1(nseq), DType::I32).unwrap(),
        block_tables: btb.view(0, Shape::d2(nseq, mb), DType::I32).unwrap(),
        max_q_len: 1,
        max_kv_len: ctx,
    };
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 0.088,
        causal: true,
        window: None,
        softcap: None,
    };
    let q = be.alloc(nseq * nh * hd * 4).unwrap();
    let o = be.alloc(nseq * nh * hd * 4).unwrap();
    let qs = Shape::d3(nseq, nh, hd);
    let need = be.attention_scratch_bytes(&p, nseq, &batch);
    let scr = be.alloc(need.max(4)).unwrap();
    let t = time(
        || {
            let sv = (need > 0).then(|| scr.view_mut(0, Shape::d1(need / 4), DType::F32).unwrap());
            be.attention(
                q.view(0, qs, DType::F32).unwrap(),
                &kv,
                &batch,
                &p,
                sv,
                o.view_mut(0, qs, DType::F32).unwrap(),
            )
            .unwrap()
        },
        10,
        be.as_ref(),
    );
    let kv_bytes = (2 * nseq * ctx * nkv * hd * 2) as f64;
    println!(
        "BENCH attention decode {nseq}x{ctx} heads {nh}/{nkv} hd {hd} f16: {:.3} ms, {:.1} GB/s of KV, {:.0}% of copy",
        t * 1e3,
        kv_bytes / t / 1e9,
        100.0 * kv_bytes / t / 1e9 / copy_bw
    );
}

/// CPU cost of recording one small op (what bounds decode-sized ops with eager submission).
#[test]
#[ignore]
fn bench_op_overhead() {
    let Some(be) = open() else { return };
    let n = 1024;
    let a = upload(&be, &f32_bytes(&vec![1.0; n]));
    let o = be.alloc(n * 4).unwrap();
    let s = Shape::d1(n);
    let (av, ov) = (
        a.view(0, s, DType::F32).unwrap(),
        o.view_mut(0, s, DType::F32).unwrap(),
    );
    be.add(av, av, ov).unwrap();
    be.synchronize().unwrap();
    let reps = 2000;
    let t = Instant::now();
    for _ in 0..reps {
        be.add(av, av, ov).unwrap();
    }
    let rec = t.elapsed().as_secs_f64() / reps as f64;
    be.synchronize().unwrap();
    let all = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "BENCH op overhead: {:.1} µs recording per add, {:.1} µs per add incl. execution",
        rec * 1e6,
        all * 1e6
    );
}

/// CPU cost of recording alone: 40 adds per batch (below the 48-op submit threshold), timed
/// before the batch is submitted; median over 50 batches.
#[test]
#[ignore]
fn bench_record_only() {
    let Some(be) = open() else { return };
    let n = 1024;
    let a = upload(&be, &f32_bytes(&vec![1.0; n]));
    let o = be.alloc(n * 4).unwrap();
    let s = Shape::d1(n);
    let (av, ov) = (
        a.view(0, s, DType::F32).unwrap(),
        o.view_mut(0, s, DType::F32).unwrap(),
    );
    be.add(av, av, ov).unwrap();
    be.synchronize().unwrap();
    let mut v = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        for _ in 0..40 {
            be.add(av, av, ov).unwrap();
        }
        v.push(t.elapsed().as_secs_f64() / 40.0);
        be.synchronize().unwrap();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "BENCH record only: {:.1} µs per add (median of 50 batches of 40, no submit inside)",
        v[25] * 1e6
    );
}
