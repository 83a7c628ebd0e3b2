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
    f();
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
    // Fractions below are of the better of the two.
    let copy_bw = shader_bw.max(api_bw);
    drop((a, b));
    // GEMV m = 1 (and a few rows) at k = 4096 with n chosen so the weight is ~250-300 MB.
    let k = 4096;
    for d in [
        DType::Q4_K,
        DType::Q8_0,
        DType::BF16,
        DType::Q4_0,
        DType::Q6_K,
        DType::F16,
    ] {
        let bytes_per_row = d.bytes_for(k).unwrap();
        let rows = (((280usize << 20) as f64 * s) as usize / bytes_per_row).max(64) / 64 * 64;
        let data: Vec<u8> = (0..rows * bytes_per_row)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] & 0x3b)
            .collect();
        let w = be
            .prepare_weight(&HostTensor::new(d, Shape::d2(rows, k), &data).unwrap())
            .unwrap();
        drop(data);
        let x = be.alloc(16 * k * 4).unwrap();
        let o = be.alloc(16 * rows * 4).unwrap();
        // GEMV lane split at m = 1: try each, keep the best for the rest.
        let mut best = (f64::MAX, (1, 1));
        for lanes in [
            (1u32, 1u32),
            (2, 1),
            (4, 1),
            (8, 1),
            (1, 2),
            (2, 2),
            (4, 2),
            (2, 4),
        ] {
            be.set_gemv_config(Some(lanes)).unwrap();
            let xv = x.view(0, Shape::d2(1, k), DType::F32).unwrap();
            let ov = o.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
            let t = time(
                || be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap(),
                10,
                be.as_ref(),
            );
            let gbs = (rows * bytes_per_row) as f64 / t / 1e9;
            println!(
                "BENCH gemv {d} n={rows} k={k} m=1 (lanes, rows)={lanes:?}: {:.3} ms, {gbs:.1} GB/s weight, {:.0}% of copy",
                t * 1e3,
                100.0 * gbs / copy_bw
            );
            if t < best.0 {
                best = (t, lanes);
            }
        }
        be.set_gemv_config(Some(best.1)).unwrap();
        for m in [1usize, 4, 16] {
            let xv = x.view(0, Shape::d2(m, k), DType::F32).unwrap();
            let ov = o.view_mut(0, Shape::d2(m, rows), DType::F32).unwrap();
            for path in [MatmulPath::Gemv, MatmulPath::Gemm] {
                if m == 1 && path == MatmulPath::Gemm {
                    continue;
                }
                let t = time(
                    || be.matmul_with(xv, &w, ov, path).unwrap(),
                    10,
                    be.as_ref(),
                );
                let gbs = (rows * bytes_per_row) as f64 / t / 1e9;
                println!(
                    "BENCH matmul {d} n={rows} k={k} m={m} {path:?} (lanes, rows)={:?}: {:.3} ms, {gbs:.1} GB/s weight, {:.0}% of copy, {:.2} TFLOP/s",
                    best.1,
                    t * 1e3,
                    100.0 * gbs / copy_bw,
                    2.0 * (m * rows * k) as f64 / t / 1e12
                );
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
