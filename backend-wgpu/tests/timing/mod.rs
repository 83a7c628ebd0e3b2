//! Timing for the kiln-wgpu benchmarks (tests/bench.rs): host-clock streams, the settled
//! single-dispatch kernel timing, and back-to-back windows in one submission (B2B).
#![allow(dead_code)]

use std::time::Instant;

use kiln_core::Backend;

/// Wall clock per call (`f(i)`, i = call index): best of 3 streams of `reps` calls, after
/// one warm-up stream.
pub fn time<F: FnMut(usize)>(mut f: F, reps: usize, be: &dyn Backend) -> f64 {
    // warm-up: one batch (compiles the pipeline, brings the clocks up)
    for i in 0..reps {
        f(i);
    }
    be.synchronize().unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..reps {
            f(i);
        }
        be.synchronize().unwrap();
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// Unix time in ms (printed on every measurement line, to line up with an `nvidia-smi
/// --query-gpu=timestamp,clocks.sm ... -lms 100` log taken beside the run).
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Steady GPU time of one call (`f(i)`, i = call index for rotating weights; one compute pass
/// per call).
pub struct KStat {
    /// Median / best of the per-pass kernel times (pass start → end timestamps).
    pub median: f64,
    pub best: f64,
    /// GPU time per call of the stream: (last pass end − first pass start) / calls, gaps
    /// between passes included.
    pub stream: f64,
    /// Calls per window and windows run before the timed one (the warm-up).
    pub calls: usize,
    pub warm: usize,
    pub t0: u128,
}

/// One window: `calls` calls recorded back to back (submitted in batches of 48 as the CPU
/// records them), each pass timed by GPU timestamps.
pub fn window<F: FnMut(usize)>(
    f: &mut F,
    calls: usize,
    be: &kiln_wgpu::WgpuBackend,
) -> Option<(f64, f64, f64)> {
    if !be.gpu_timer_start().unwrap() {
        return None;
    }
    for i in 0..calls {
        f(i);
    }
    let v = be.gpu_timer_stop_spans().unwrap()?;
    assert_eq!(v.len(), calls, "one pass per call");
    let mut d: Vec<f64> = v.iter().map(|(a, b)| b - a).collect();
    d.sort_by(|a, b| a.total_cmp(b));
    let span = v.last().map_or(0.0, |l| l.1);
    Some((d[d.len() / 2], d[0], span / calls as f64))
}

/// How the GEMV lines measure (printed by `bench_wgpu` and `bench_wgemv`).
pub const METHOD: &str = "BENCH method: kernel = GPU timestamps at the start and end of each call's \
    compute pass (ONE dispatch per timed pass: launch, clock ramp and tail included); windows \
    of back-to-back calls (>= 20 ms of GPU work, 20..2000 calls) are repeated until the GPU was \
    busy >= 150 ms and two consecutive windows' medians agree within 2 %, then one more window \
    is the measurement: median and best pass, and stream = GPU span of the window / calls (gaps \
    between passes included). Weights under 256 MiB are rotated over copies (>= 256 MiB in all) \
    so the 50 MB L2 holds none between calls. wall = host clock per call over a stream of calls. \
    B2B = the CUDA gemv bench's method: 32 calls, each on the next weight copy, recorded into ONE \
    submission, GPU time from the first pass's start to the last pass's end / 32 (no timestamps \
    in between), median (best) of 21 such windows after 5; B2B chained = each call followed by \
    an rms_norm of its output (a decode step's dependency), the pair's time. GB/s and % count \
    the GGUF weight bytes only. t = unix ms at the measured window's start.";

/// Calls per back-to-back window (the CUDA bench's ≥ 32 calls per graph).
pub const B2B_CALLS: usize = 32;
/// Back-to-back windows measured (after `B2B_WARM` more).
pub const B2B_WINDOWS: usize = 21;
pub const B2B_WARM: usize = 5;

/// Back to back, the CUDA bench's method (benches/src/bin/gemv.rs: ≥ 32 calls in one graph,
/// each on another weight copy, time per call): `B2B_CALLS` calls `f(i)` recorded into ONE
/// submission, GPU time from the first pass's start timestamp to the last pass's end
/// timestamp / calls (no timestamps in between; the barriers between dependent passes
/// included, no CPU recording gaps). Median and best of `B2B_WINDOWS` windows after
/// `B2B_WARM`; the call index runs on across windows (weight rotation). Passes per call are
/// counted first (1 for a matmul, 2 for matmul + rms_norm).
pub fn b2b<F: FnMut(usize)>(f: &mut F, be: &kiln_wgpu::WgpuBackend) -> Option<(f64, f64)> {
    if !be.gpu_timer_start().unwrap() {
        return None;
    }
    f(0);
    let ppc = be.gpu_timer_stop_spans().unwrap()?.len();
    let mut v = Vec::new();
    for w in 0..B2B_WARM + B2B_WINDOWS {
        assert!(be.gpu_span_start((B2B_CALLS * ppc) as u32).unwrap());
        for i in 0..B2B_CALLS {
            f(1 + w * B2B_CALLS + i);
        }
        let t = be.gpu_span_stop().unwrap()?;
        if w >= B2B_WARM {
            v.push(t / B2B_CALLS as f64);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[v.len() / 2], v[0]))
}

/// The measurement method (printed by `bench_wgpu`): windows of back-to-back calls sized to
/// ≥ 20 ms of GPU work (20..2000 calls) are run until the GPU has been busy ≥ 150 ms and two
/// consecutive windows' medians agree within 2 % (at most 40 windows), so the clocks have
/// settled under this very load; then one more window is the measurement.
pub fn kernel_stat<F: FnMut(usize)>(mut f: F, be: &kiln_wgpu::WgpuBackend) -> Option<KStat> {
    let (m0, _, _) = window(&mut f, 20, be)?;
    let calls = ((0.02 / m0.max(1e-7)) as usize).clamp(20, 2000);
    let mut prev = m0;
    let mut busy = 0.0;
    let mut warm = 1;
    loop {
        let (m, _, st) = window(&mut f, calls, be)?;
        busy += st * calls as f64;
        warm += 1;
        let settled = (m - prev).abs() <= 0.02 * prev;
        prev = m;
        if (busy >= 0.15 && settled) || warm >= 40 {
            break;
        }
    }
    let t0 = unix_ms();
    let (median, best, stream) = window(&mut f, calls, be)?;
    Some(KStat {
        median,
        best,
        stream,
        calls,
        warm,
        t0,
    })
}
