//! GEMV / attention / copy benchmarks for wgpu:0 (ignored by default: run with
//! `--ignored --nocapture`). Prints one line per measurement with achieved GB/s and the
//! fraction of the measured copy bandwidth (read + write counted, like DEVICE.md's ceilings).
//! Timing is wall clock over a batch of calls followed by `synchronize`, with weights large
//! enough (≥ ~250 MB) that the GPU, not the CPU recording, bounds the loop. Shapes are sized
//! down by KILN_BENCH_SCALE (default 1.0; use e.g. 0.02 on a CPU adapter).
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;
mod timing;

use std::time::Instant;

use common::*;
use kiln_core::{AttnParams, Backend, DType, HostTensor, PagedKv, SeqBatch, Shape};
use kiln_wgpu::MatmulPath;
use timing::*;

fn scale() -> f64 {
    std::env::var("KILN_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// wgpu:0 (None: skipped), after printing the device line every bench log starts with.
fn open_with_header() -> Option<std::sync::Arc<kiln_wgpu::WgpuBackend>> {
    let be = open()?;
    let i = be.info();
    println!(
        "BENCH device: {} | {} | {}",
        i.name,
        i.driver,
        i.caps_summary()
    );
    Some(be)
}

#[test]
#[ignore]
fn bench_wgpu() {
    let Some(be) = open_with_header() else { return };
    let s = scale();
    // Copy bandwidth: f32 → f32 copy op over 512 MiB (scaled).
    let n = ((128usize << 20) as f64 * s) as usize / 256 * 256;
    let a = be.alloc(n * 4).unwrap();
    let b = be.alloc(n * 4).unwrap();
    let av = a.view(0, Shape::d1(n), DType::F32).unwrap();
    let bv = b.view_mut(0, Shape::d1(n), DType::F32).unwrap();
    let t = time(|_| be.copy(av, bv).unwrap(), 20, be.as_ref());
    let shader_bw = (n * 8) as f64 / t / 1e9;
    println!(
        "BENCH copy (shader, f32) {} MiB: {:.3} ms, {shader_bw:.1} GB/s (read+write)",
        (n * 4) >> 20,
        t * 1e3
    );
    let t = time(
        |_| be.copy_buffer(&a, 0, &b, 0, n * 4).unwrap(),
        20,
        be.as_ref(),
    );
    let api_bw = (n * 8) as f64 / t / 1e9;
    println!(
        "BENCH copy (copy_buffer_to_buffer) {} MiB: {:.3} ms, {api_bw:.1} GB/s (read+write)",
        (n * 4) >> 20,
        t * 1e3
    );
    println!("{METHOD}");
    // The honest streaming ceiling: copy_v4.wgsl, 16-byte loads, U in flight per invocation.
    let mut probe_bw: f64 = 0.0;
    for u in [1u32, 2, 4, 8] {
        let t = time(
            |_| be.copy_probe(&a, &b, n * 4, u).unwrap(),
            20,
            be.as_ref(),
        );
        let bw = (n * 8) as f64 / t / 1e9;
        probe_bw = probe_bw.max(bw);
        let ks = kernel_stat(|_| be.copy_probe(&a, &b, n * 4, u).unwrap(), &be);
        let kern = ks.map_or("no timestamps".to_string(), |k| {
            let g = |t: f64| (n * 8) as f64 / t / 1e9;
            probe_bw = probe_bw.max(g(k.median));
            format!(
                "kernel median {:.1} GB/s, best {:.1}, stream {:.1} ({} calls, {} warm-up windows, t={})",
                g(k.median),
                g(k.best),
                g(k.stream),
                k.calls,
                k.warm,
                k.t0
            )
        });
        println!(
            "BENCH copy (vec4 shader, {u} per invocation) {} MiB: wall {bw:.1} GB/s (read+write) | {kern}",
            (n * 4) >> 20
        );
    }
    // Fractions below are of the best shader/API copy; the CUDA copy (4200 GB/s on an H200,
    // BENCHMARKS.md) is printed beside.
    let copy_bw = shader_bw.max(api_bw).max(probe_bw);
    println!("BENCH ceiling: {copy_bw:.1} GB/s (best copy above)");
    // The same probe moving as many bytes as the GEMV shapes read (a copy of half the weight
    // bytes reads and writes them): the ceiling a kernel of that size reaches on this adapter
    // with the same timing (launch, ramp-up and tail included).
    for mb in [9.4f64, 17.8, 33.0, 62.4, 117.4] {
        let bytes = ((mb * 1e6 / 2.0 * s) as usize / 16 * 16).min(n * 4);
        if let Some(k) = kernel_stat(|_| be.copy_probe(&a, &b, bytes, 4).unwrap(), &be) {
            let g = |t: f64| (2 * bytes) as f64 / t / 1e9;
            println!(
                "BENCH copy (vec4 shader, 4 per invocation) moving {:.1} MB: kernel median {:.2} us, {:.1} GB/s ({:.1}% of ceiling), best {:.1}, stream {:.1} (t={})",
                (2 * bytes) as f64 / 1e6,
                k.median * 1e6,
                g(k.median),
                100.0 * g(k.median) / copy_bw,
                g(k.best),
                g(k.stream),
                k.t0
            );
        }
    }
    drop((a, b));
    clock_ramp(&be, s);
    let k = 4096;
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
            if rows != big && !matches!(d, DType::Q4_K | DType::Q8_0 | DType::BF16) {
                continue;
            }
            let sweep = if rows == big {
                Sweep::Big
            } else {
                Sweep::Bench
            };
            gemv_shape(&be, d, rows, kk, sweep, copy_bw, s);
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
        |_| {
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

/// Which rows `gemv_shape` measures: `bench_wgpu`'s sweep at its large n (fewer calls per
/// wall-clock stream) or at a benches shape, or the wgemv lab's variants.
#[derive(Clone, Copy, PartialEq)]
enum Sweep {
    Big,
    Bench,
    Lab,
}

/// One GEMV shape: the general kernel, the dispatched one, every gemv_v / gemv_x8 shape for
/// the types that have them, the float-x kernel beside the int8-x one, and the dispatched
/// shape again (drift check). Lines: kernel median / best / stream and wall, GB/s of weight.
fn gemv_shape(
    be: &kiln_wgpu::WgpuBackend,
    d: DType,
    rows: usize,
    kk: usize,
    sweep: Sweep,
    copy_bw: f64,
    s: f64,
) {
    let row_bytes = d.bytes_for(kk).unwrap();
    let data: Vec<u8> = (0..rows * row_bytes)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] & 0x3b)
        .collect();
    let wbytes = (rows * row_bytes) as f64;
    let floor = ((256usize << 20) as f64 * s) as usize;
    let copies = floor.div_ceil(rows * row_bytes).clamp(1, 32);
    let ht = HostTensor::new(d, Shape::d2(rows, kk), &data).unwrap();
    let ws: Vec<_> = (0..copies)
        .map(|_| be.prepare_weight(&ht).unwrap())
        .collect();
    drop(data);
    let x = upload(be, &f32_bytes(&randn(&mut rng(3), kk, 1.0)));
    let o = be.alloc(rows * 4).unwrap();
    let xv = x.view(0, Shape::d2(1, kk), DType::F32).unwrap();
    let ov = o.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
    // Small weights: enough calls that recording overlaps execution (batches of 48).
    let reps = if sweep == Sweep::Big { 20 } else { 240 };
    let call = |i: usize| {
        be.matmul_with(xv, &ws[i % copies], ov, MatmulPath::Gemv)
            .unwrap()
    };
    // Chained (the CUDA bench's row): each call followed by an rms_norm of its output.
    let nw = upload(be, &f32_bytes(&vec![1.0; rows]));
    let z = be.alloc(rows * 4).unwrap();
    let (yr, nwv) = (
        o.view(0, Shape::d2(1, rows), DType::F32).unwrap(),
        nw.view(0, Shape::d1(rows), DType::F32).unwrap(),
    );
    let zv = z.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
    // (x, y) per call for the no-dependency diagnostic: activations bind read_write, so only
    // calls that share no activation buffer record without a barrier between them
    let xbytes = f32_bytes(&randn(&mut rng(3), kk, 1.0));
    let outs: Vec<_> = (0..B2B_CALLS)
        .map(|_| (upload(be, &xbytes), be.alloc(rows * 4).unwrap()))
        .collect();
    let chain = |i: usize| {
        call(i);
        be.rms_norm(yr, nwv, 1e-6, zv).unwrap();
    };
    // The weights were prepared with the GPU idle (CPU work): after ~1-2 s idle the SM clock
    // can fall to ~345-405 MHz and climb back in steps over ~1 s of load (nvidia-smi in the
    // 2026-11-22 gemv_x8 entry, run 1), so keep the GPU busy 1.5 s before measuring.
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < 1.5 {
        for i in 0..64 {
            call(i);
        }
        be.synchronize().unwrap();
    }
    let line = |what: String| {
        let t = time(call, reps, be);
        let g = |t: f64| wbytes / t / 1e9;
        let kern = kernel_stat(call, be).map_or("no timestamps".to_string(), |k| {
            format!(
                "kernel median {:.2} us, {:.1} GB/s, {:.1}% of ceiling, {:.1}% of 4200 | best {:.1} GB/s ({:.1}%) | stream {:.1} GB/s ({:.1}%) | {} calls, {} warm-up windows, t={}",
                k.median * 1e6,
                g(k.median),
                100.0 * g(k.median) / copy_bw,
                100.0 * g(k.median) / 4200.0,
                g(k.best),
                100.0 * g(k.best) / copy_bw,
                g(k.stream),
                100.0 * g(k.stream) / copy_bw,
                k.calls,
                k.warm,
                k.t0
            )
        });
        let bb = |r: Option<(f64, f64)>| {
            r.map_or("no timestamps".to_string(), |(m, b)| {
                format!(
                    "{:.2} us, {:.1} GB/s, {:.1}% (best {:.2} us)",
                    m * 1e6,
                    g(m),
                    100.0 * g(m) / copy_bw,
                    b * 1e6
                )
            })
        };
        let plain = bb(b2b(&mut { call }, be));
        let chained = bb(b2b(&mut { chain }, be));
        // Diagnostics on the dispatched lines: the rms_norm alone, and the GEMV with a
        // different output per call (no write-after-write between calls, so no barrier).
        let diag = if what.starts_with("dispatched") {
            let norm = b2b(&mut |_| be.rms_norm(yr, nwv, 1e-6, zv).unwrap(), be);
            let free = b2b(
                &mut |i: usize| {
                    let (xb, ob) = &outs[i % B2B_CALLS];
                    let xv = xb.view(0, Shape::d2(1, kk), DType::F32).unwrap();
                    let ov = ob.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
                    be.matmul_with(xv, &ws[i % copies], ov, MatmulPath::Gemv)
                        .unwrap()
                },
                be,
            );
            format!(
                " | B2B rms_norm alone: {:.2} us | B2B {B2B_CALLS} (x, y) pairs (no dependency): {}",
                norm.map_or(0.0, |n| n.0 * 1e6),
                bb(free)
            )
        } else {
            String::new()
        };
        println!(
            "BENCH gemv {d} n={rows} k={kk} m=1 {what}: {kern} | wall {:.2} us, {:.1} GB/s ({copies} copies) | B2B {B2B_CALLS} calls/submission: {plain} | B2B chained (+rms_norm): {chained}{diag}",
            t * 1e6,
            g(t)
        );
    };
    if sweep == Sweep::Lab {
        gemv_lab(be, d, kk, &line);
        return;
    }
    // The general kernel (as before gemv_v existed), its untuned shape.
    be.set_vgemv_config(Some((0, 0))).unwrap();
    line("general gemv".into());
    be.set_vgemv_config(None).unwrap();
    line("dispatched".into());
    let x8 = matches!(d, DType::Q4_K | DType::Q8_0);
    if x8 {
        be.set_vgemv_x8(false);
        line("gemv_v float x (previous kernel, its default shape)".into());
        be.set_vgemv_x8(true);
    }
    if x8 {
        // (teams, rows, prefetch depth)
        for (t, r, dd) in [
            (2, 4, 1),
            (4, 2, 1),
            (4, 4, 1),
            (8, 1, 1),
            (8, 2, 1),
            (8, 4, 1),
            (8, 1, 2),
            (8, 2, 2),
        ] {
            be.set_vgemv_config(Some((t, r))).unwrap();
            be.set_vgemv_depth(Some(dd)).unwrap();
            line(format!("gemv_x8 (teams, rows)=({t}, {r}) depth {dd}"));
        }
        be.set_vgemv_depth(None).unwrap();
        if d == DType::Q4_K {
            // the pair mapping (64 weights per lane and row per 2048-element chunk)
            be.set_vgemv_q4k_wide(true);
            for c in [(8, 1), (8, 2)] {
                be.set_vgemv_config(Some(c)).unwrap();
                line(format!("gemv_x8 wide Q4_K (teams, rows)={c:?} depth 1"));
            }
            be.set_vgemv_q4k_wide(false);
        }
    } else if d == DType::BF16 {
        for c in [(2, 4), (4, 2), (8, 1), (8, 2)] {
            be.set_vgemv_config(Some(c)).unwrap();
            line(format!("gemv_v (teams, rows)={c:?}"));
        }
    }
    if matches!(d, DType::Q4_K | DType::Q8_0 | DType::BF16) {
        be.set_vgemv_config(None).unwrap();
        line("dispatched (again)".into());
    }
}

/// Clock ramp: the same large GEMV after 2 s of idle GPU, 40 windows of 10 calls back to back
/// (no warm-up), each window's median kernel time and its start time after the first.
fn clock_ramp(be: &kiln_wgpu::WgpuBackend, s: f64) {
    let (d, k) = (DType::Q8_0, 4096);
    let rows = (((280usize << 20) as f64 * s) as usize / d.bytes_for(k).unwrap()).max(64) / 64 * 64;
    let data: Vec<u8> = (0..d.bytes_for(rows * k).unwrap())
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] & 0x3b)
        .collect();
    let w = be
        .prepare_weight(&HostTensor::new(d, Shape::d2(rows, k), &data).unwrap())
        .unwrap();
    let x = upload(be, &f32_bytes(&randn(&mut rng(3), k, 1.0)));
    let o = be.alloc(rows * 4).unwrap();
    let xv = x.view(0, Shape::d2(1, k), DType::F32).unwrap();
    let ov = o.view_mut(0, Shape::d2(1, rows), DType::F32).unwrap();
    be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap();
    be.synchronize().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let t0 = Instant::now();
    let mut line = String::new();
    for _ in 0..40 {
        let at = t0.elapsed().as_secs_f64() * 1e3;
        let mut f = |_| be.matmul_with(xv, &w, ov, MatmulPath::Gemv).unwrap();
        if let Some((m, _, _)) = window(&mut f, 10, be) {
            line.push_str(&format!(" {at:.0}ms:{:.0}", data.len() as f64 / m / 1e9));
        }
    }
    println!(
        "BENCH clock ramp {d} n={rows} k={k} after 2 s idle (window start: GB/s of the window's median pass; t={}):{line}",
        unix_ms()
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

/// The wgemv lab: the three benches-crate shapes × Q4_K/Q8_0/BF16, gemv_x8's x pre-pass (XQG)
/// and split-k variants A/B'd against the shipped gemv_x8 in one run (same weights, same
/// timing as `bench_wgpu`), after the size-matched copy probes.
#[test]
#[ignore]
fn bench_wgemv() {
    let Some(be) = open_with_header() else { return };
    println!("{METHOD}");
    let s = scale();
    let n = ((128usize << 20) as f64 * s) as usize / 256 * 256;
    let a = be.alloc(n * 4).unwrap();
    let b = be.alloc(n * 4).unwrap();
    let g = |bytes: usize, t: f64| (2 * bytes) as f64 / t / 1e9;
    let mut ceiling: f64 = 0.0;
    if let Some(k) = kernel_stat(|_| be.copy_probe(&a, &b, n * 4, 4).unwrap(), &be) {
        ceiling = g(n * 4, k.median);
        println!(
            "BENCH copy (vec4 shader, 4 per invocation) {} MiB: kernel median {ceiling:.1} GB/s, best {:.1} (t={})",
            (n * 4) >> 20,
            g(n * 4, k.best),
            k.t0
        );
    }
    if let Some((m, b)) = b2b(&mut |_| be.copy_probe(&a, &b, n * 4, 4).unwrap(), &be) {
        println!(
            "BENCH copy (vec4 shader, 4 per invocation) {} MiB B2B: {:.1} GB/s ({:.1}% of ceiling), best {:.1}",
            (n * 4) >> 20,
            g(n * 4, m),
            100.0 * g(n * 4, m) / ceiling.max(1.0),
            g(n * 4, b)
        );
    }
    drop((a, b));
    for mb in [9.4f64, 17.8, 33.0, 62.4] {
        let bytes = ((mb * 1e6 / 2.0 * s) as usize / 16 * 16).max(16);
        // (source, destination) pairs rotated over >= 256 MiB, as the GEMV's weight copies
        let pairs = ((256usize << 20) as f64 * s / (2 * bytes) as f64).ceil() as usize;
        let bufs: Vec<_> = (0..pairs.clamp(1, 64))
            .map(|_| (be.alloc(bytes).unwrap(), be.alloc(bytes).unwrap()))
            .collect();
        let mut cp = |i: usize| {
            let (x, y) = &bufs[i % bufs.len()];
            be.copy_probe(x, y, bytes, 4).unwrap()
        };
        let pct = |t: f64| 100.0 * g(bytes, t) / ceiling.max(1.0);
        if let Some(k) = kernel_stat(&mut cp, &be) {
            println!(
                "BENCH copy (vec4 shader, 4 per invocation) moving {:.1} MB: kernel median {:.2} us, {:.1} GB/s ({:.1}% of ceiling), best {:.1} (t={}; {} pairs rotated)",
                (2 * bytes) as f64 / 1e6,
                k.median * 1e6,
                g(bytes, k.median),
                pct(k.median),
                g(bytes, k.best),
                k.t0,
                bufs.len()
            );
        }
        if let Some((m, b)) = b2b(&mut cp, &be) {
            println!(
                "BENCH copy (vec4 shader, 4 per invocation) moving {:.1} MB B2B: {:.2} us, {:.1} GB/s ({:.1}% of ceiling), best {:.2} us",
                (2 * bytes) as f64 / 1e6,
                m * 1e6,
                g(bytes, m),
                pct(m),
                b * 1e6
            );
        }
    }
    // The read probe (copy_probe's loads, no store) at the GEMV weights' sizes: Q4_K 4096²
    // (9.4 MB), Q4_K 14336×4096 / 4096×14336 and BF16 4096² (33.0–33.6 MB), BF16 14336×4096
    // (117.4 MB): what a kernel reading that many bytes cannot beat on this adapter.
    let sink = be.alloc(16).unwrap();
    for mb in [9.4f64, 33.0, 117.4] {
        let bytes = ((mb * 1e6 * s) as usize / 16 * 16).max(16);
        let n = ((256usize << 20) as f64 * s / bytes as f64).ceil() as usize;
        let bufs: Vec<_> = (0..n.clamp(1, 64))
            .map(|_| be.alloc(bytes).unwrap())
            .collect();
        let mut rd = |i: usize| be.read_probe(&bufs[i % bufs.len()], &sink, bytes).unwrap();
        let gr = |t: f64| bytes as f64 / t / 1e9;
        if let (Some(k), Some((m, b))) = (kernel_stat(&mut rd, &be), b2b(&mut rd, &be)) {
            println!(
                "BENCH read probe (vec4, 4 per invocation, no store) {:.1} MB: kernel median {:.2} us, {:.1} GB/s ({:.1}% of ceiling) | B2B {:.2} us, {:.1} GB/s ({:.1}% of ceiling), best {:.2} us ({} buffers rotated)",
                bytes as f64 / 1e6,
                k.median * 1e6,
                gr(k.median),
                100.0 * gr(k.median) / ceiling.max(1.0),
                m * 1e6,
                gr(m),
                100.0 * gr(m) / ceiling.max(1.0),
                b * 1e6,
                bufs.len()
            );
        }
    }
    for d in [DType::Q4_K, DType::Q8_0, DType::BF16] {
        for (rows, kk) in [(4096, 4096), (14336, 4096), (4096, 14336)] {
            let (rows, kk) = if s < 1.0 { (256, 1024) } else { (rows, kk) };
            gemv_shape(&be, d, rows, kk, Sweep::Lab, ceiling.max(1.0), s);
        }
    }
}

/// The lab's variants of one shape (`line` measures the current setting and prints it).
/// `KILN_WGEMV_LAB`: unset = the Q4_K scale/min decode A/B (vgemv), `xq` = the x pre-pass
/// and split-k sweep (wgemv run 1), `depth` = its run 2, `final` = its run 3, `pack` = the
/// previous default (Q4_K select decode) beside the dispatched one.
fn gemv_lab(be: &kiln_wgpu::WgpuBackend, d: DType, kk: usize, line: &dyn Fn(String)) {
    line("dispatched".into());
    if !matches!(d, DType::Q4_K | DType::Q8_0) {
        return;
    }
    // ((teams, rows), depth, x pre-pass, k split, Q4_K wide, Q4_K packed decode)
    let lab = std::env::var("KILN_WGEMV_LAB").unwrap_or_default();
    if lab == "rw16" {
        // 16 teams per workgroup: half the workgroups round x (k/16 groups) for the same rows
        for (c, depth) in [
            ((8, 2), 1),
            ((8, 2), 2),
            ((8, 1), 2),
            ((16, 2), 1),
            ((16, 2), 2),
            ((16, 1), 1),
            ((16, 1), 2),
            ((16, 4), 1),
        ] {
            be.set_vgemv_config(Some(c)).unwrap();
            be.set_vgemv_depth(Some(depth)).unwrap();
            line(format!("lab (teams, rows)={c:?} depth {depth}"));
        }
        be.set_vgemv_config(None).unwrap();
        be.set_vgemv_depth(None).unwrap();
        line("dispatched (again)".into());
        return;
    }
    let mut v = match lab.as_str() {
        "xq" => vec![
            ((8, 2), 1, false, 1, false, None),
            ((8, 2), 1, true, 1, false, None),
            ((8, 1), 1, true, 1, false, None),
            ((8, 2), 1, true, 2, false, None),
            ((8, 2), 1, true, 4, false, None),
            ((8, 2), 1, true, 8, false, None),
            ((8, 4), 1, true, 2, false, None),
            ((8, 4), 1, true, 4, false, None),
            ((8, 4), 1, true, 8, false, None),
            ((8, 1), 1, true, 2, false, None),
            ((4, 2), 1, true, 2, false, None),
            ((8, 2), 2, true, 2, false, None),
            ((8, 2), 2, true, 1, false, None),
            ((8, 2), 1, false, 2, false, None),
            ((8, 4), 1, false, 4, false, None),
        ],
        "pack" if d == DType::Q4_K => {
            let dd = if kk > 8192 { 2 } else { 1 };
            vec![((8, 2), dd, false, 1, false, Some(false))]
        }
        "pack" => vec![],
        "final" => vec![
            ((8, 2), 1, false, 1, false, None),
            ((8, 1), 2, false, 1, false, None),
            ((8, 2), 2, false, 1, false, None),
        ],
        "depth" => {
            let mut v = vec![((8, 2), 1, false, 1, false, None)];
            for c in [(8, 2), (8, 1), (4, 2), (4, 4), (2, 4)] {
                v.push((c, 2, false, 1, false, None));
            }
            v.push(((8, 1), 1, false, 1, false, None));
            v.push(((4, 2), 1, false, 1, false, None));
            v
        }
        _ if d == DType::Q4_K => {
            // the select decode (the wgemv default) against the packed one, at the shapes
            // near the best; the packed decode frees issue slots, which may move the best
            let mut v = Vec::new();
            for (c, dd) in [((8, 2), 1), ((8, 2), 2)] {
                v.push((c, dd, false, 1, false, Some(false)));
            }
            for (c, dd) in [
                ((8, 2), 1),
                ((8, 2), 2),
                ((8, 1), 1),
                ((8, 1), 2),
                ((4, 2), 1),
                ((8, 4), 1),
                ((4, 4), 1),
            ] {
                v.push((c, dd, false, 1, false, Some(true)));
            }
            v.push(((8, 2), 1, true, 1, false, Some(true)));
            v
        }
        _ => vec![
            ((8, 2), 1, false, 1, false, None),
            ((8, 1), 2, false, 1, false, None),
            ((8, 2), 2, false, 1, false, None),
        ],
    };
    if lab == "xq" && d == DType::Q4_K {
        v.push(((8, 2), 1, true, 2, true, None));
        v.push(((8, 4), 1, true, 4, true, None));
    }
    for (c, depth, xq, ks, wide, pack) in v {
        be.set_vgemv_config(Some(c)).unwrap();
        be.set_vgemv_depth(Some(depth)).unwrap();
        be.set_vgemv_xq(Some(xq));
        be.set_vgemv_ksplit(Some(ks)).unwrap();
        be.set_vgemv_q4k_wide(wide);
        be.set_vgemv_q4k_pack(pack);
        line(format!(
            "lab (teams, rows)={c:?} depth {depth} xq {} ks {ks}{}{}",
            u8::from(xq),
            if wide { " wide" } else { "" },
            match pack {
                Some(true) => " pack",
                Some(false) => " select",
                None => "",
            }
        ));
    }
    be.set_vgemv_config(None).unwrap();
    be.set_vgemv_depth(None).unwrap();
    be.set_vgemv_xq(None);
    be.set_vgemv_ksplit(None).unwrap();
    be.set_vgemv_q4k_wide(false);
    be.set_vgemv_q4k_pack(None);
    line("dispatched (again)".into());
}
