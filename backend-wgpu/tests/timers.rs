//! One-pass recording and the GPU timers (device.rs `Pending`): a chain of dependent ops
//! recorded into one open compute pass gives the CPU result (each op reads what the one before
//! it wrote, so a missing barrier shows), and the op profile, span timer and pass timer count
//! and time what was recorded (or say why not). On lavapipe in CI and through Vulkan on the GPU
//! machine.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::{Backend, DType, Shape};

/// `steps` dependent adds: buf[i+1] = buf[i] + b, all in one arena (`a` at slot 0).
fn chain(
    be: &kiln_wgpu::WgpuBackend,
    arena: &kiln_core::Buffer,
    b: &kiln_core::Buffer,
    n: usize,
    steps: usize,
) {
    let s = Shape::d1(n);
    for i in 0..steps {
        let x = arena.view(i * n * 4, s, DType::F32).unwrap();
        let y = arena.view_mut((i + 1) * n * 4, s, DType::F32).unwrap();
        be.add(x, b.view(0, s, DType::F32).unwrap(), y).unwrap();
    }
}

#[test]
fn dependent_chain_in_one_pass() {
    let Some(be) = open() else { return };
    let (n, steps) = (4099, 40);
    let mut r = rng(7);
    let a = randn(&mut r, n, 1.0);
    let bv = randn(&mut r, n, 1.0);
    let arena = poisoned(&be, (steps + 1) * n);
    be.write(&arena, 0, &f32_bytes(&a)).unwrap();
    let b = upload(&be, &f32_bytes(&bv));
    chain(&be, &arena, &b, n, steps);
    // A read in the middle of recording ends the pass; recording goes on after it.
    let mid = read_f32(&be, &arena, steps * n * 4, n);
    chain(&be, &arena, &b, n, 3);
    let mut want = a.clone();
    for _ in 0..steps {
        for (w, y) in want.iter_mut().zip(&bv) {
            *w += y;
        }
    }
    assert_close("chain", &mid, &want, 0.0, 0.0);
    let first3 = read_f32(&be, &arena, 3 * n * 4, n);
    let mut w3 = a.clone();
    for _ in 0..3 {
        for (w, y) in w3.iter_mut().zip(&bv) {
            *w += y;
        }
    }
    assert_close("chain again", &first3, &w3, 0.0, 0.0);
}

#[test]
fn profile_and_span_timers() {
    let Some(be) = open() else { return };
    let n = 1000;
    let arena = poisoned(&be, 6 * n);
    be.write(&arena, 0, &f32_bytes(&vec![1.0; n])).unwrap();
    let b = upload(&be, &f32_bytes(&vec![0.5; n]));
    if !be.gpu_profile_start().unwrap() {
        eprintln!("SKIPPED: the adapter has no TIMESTAMP_QUERY");
        return;
    }
    chain(&be, &arena, &b, n, 5);
    let prof = be.gpu_profile_stop().unwrap().unwrap();
    assert_eq!(prof.len(), 5, "one profile entry per op");
    for (i, p) in prof.iter().enumerate() {
        assert!(p.name.contains("add"), "entry {i} named {}", p.name);
        assert!(p.end >= p.start, "entry {i}: end before start");
        if i > 0 {
            assert!(
                p.start >= prof[i - 1].start,
                "entry {i} starts before entry {}",
                i - 1
            );
        }
    }
    assert_eq!(read_f32(&be, &arena, 5 * n * 4, n), vec![3.5; n]);

    // The span timer: exactly the announced number of passes, in one submission.
    assert!(be.gpu_span_start(4).unwrap());
    chain(&be, &arena, &b, n, 4);
    let s = be.gpu_span_stop().unwrap().unwrap();
    assert!(s > 0.0 && s < 1.0, "span of 4 adds: {s} s");
    assert!(be.gpu_span_start(4).unwrap());
    chain(&be, &arena, &b, n, 3);
    assert!(be.gpu_span_stop().is_err(), "3 passes against a span of 4");
    // A read inside a span breaks it (the pass ends, the submission goes out).
    assert!(be.gpu_span_start(2).unwrap());
    chain(&be, &arena, &b, n, 1);
    let _ = read_f32(&be, &arena, 0, 4);
    chain(&be, &arena, &b, n, 1);
    assert!(be.gpu_span_stop().is_err(), "a span broken by a read");

    // The pass timer: one duration per op.
    assert!(be.gpu_timer_start().unwrap());
    chain(&be, &arena, &b, n, 3);
    let t = be.gpu_timer_stop().unwrap().unwrap();
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|d| *d >= 0.0));
    assert_eq!(read_f32(&be, &arena, 3 * n * 4, n), vec![2.5; n]);
}
