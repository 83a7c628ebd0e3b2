//! NCCL all-reduce (`CudaComm`) across every CUDA device of the machine (at least 2, else the test
//! prints "skipped"; with KILN_REQUIRE_NCCL=1 fewer than 2 devices is a failure):
//! - sums are exact for f32 from 4 KiB to 256 MiB (every power of two), and for f16/bf16 at a few
//!   sizes (small integers, so every partial sum is exact in 16 bits), through `all_reduce_sum`
//!   (the P2P kernel up to its threshold, NCCL above: tests/p2p.rs checks both paths apart);
//! - the group built from `dyn Backend`s (`CudaComm::new`) works like the one from concrete
//!   backends;
//! - prints the latency of a 16 KiB all-reduce and the bus bandwidth of a 256 MiB one
//!   (busbw = 2·(n−1)/n · bytes / time, NCCL's convention).
//!
//! Run with `--nocapture` to see the numbers. NCCL_NVLS_ENABLE=0 is set by `CudaComm` if unset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use half::{bf16, f16};
use kiln_core::{Backend, Buffer, Collective, DType, Shape};
use kiln_cuda::{CudaBackend, CudaComm};

fn devices() -> Option<Vec<Arc<CudaBackend>>> {
    common::all_gpus("the NCCL test")
}

/// Element j on rank r: small integers (and halves for f32), so sums are exact.
fn value(dt: DType, r: usize, j: usize) -> f32 {
    match dt {
        DType::F32 => (j % 1021) as f32 * 0.5 + r as f32,
        _ => (j % 7) as f32 + r as f32,
    }
}

fn encode(dt: DType, v: &[f32]) -> Vec<u8> {
    match dt {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

fn decode(dt: DType, b: &[u8]) -> Vec<f32> {
    match dt {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// Fill, all-reduce, and check every element on every device.
fn check_sum(comm: &dyn Collective, devs: &[Arc<dyn Backend>], dt: DType, bytes: usize) {
    let n = bytes / dt.block_bytes();
    let bufs: Vec<Buffer> = devs
        .iter()
        .enumerate()
        .map(|(r, d)| {
            let b = d.alloc(bytes).unwrap();
            let v: Vec<f32> = (0..n).map(|j| value(dt, r, j)).collect();
            d.write(&b, 0, &encode(dt, &v)).unwrap();
            b
        })
        .collect();
    let views: Vec<_> = bufs
        .iter()
        .map(|b| b.view_mut(0, Shape::d1(n), dt).unwrap())
        .collect();
    comm.all_reduce_sum(&views).unwrap();
    for (r, (d, b)) in devs.iter().zip(&bufs).enumerate() {
        let mut out = vec![0u8; bytes];
        d.read(b, 0, &mut out).unwrap();
        let got = decode(dt, &out);
        for (j, g) in got.iter().enumerate() {
            let want: f32 = (0..devs.len()).map(|q| value(dt, q, j)).sum();
            assert_eq!(*g, want, "{dt} {bytes} bytes: device {r} element {j}");
        }
    }
}

/// Seconds per NCCL all-reduce of `bytes` f32 zeros (zeros stay zeros over repeats); NCCL
/// whatever the size (`all_reduce_sum` would take the P2P path for small messages: tests/p2p.rs
/// times both).
fn time_all_reduce(comm: &CudaComm, devs: &[Arc<CudaBackend>], bytes: usize, iters: usize) -> f64 {
    let n = bytes / 4;
    let bufs: Vec<Buffer> = devs
        .iter()
        .map(|d| {
            let b = d.alloc(bytes).unwrap();
            d.write(&b, 0, &vec![0u8; bytes]).unwrap();
            b
        })
        .collect();
    let views: Vec<_> = bufs
        .iter()
        .map(|b| b.view_mut(0, Shape::d1(n), DType::F32).unwrap())
        .collect();
    for _ in 0..5 {
        comm.all_reduce_sum_nccl(&views).unwrap();
    }
    devs.iter().for_each(|d| d.synchronize().unwrap());
    let t = Instant::now();
    for _ in 0..iters {
        comm.all_reduce_sum_nccl(&views).unwrap();
    }
    devs.iter().for_each(|d| d.synchronize().unwrap());
    t.elapsed().as_secs_f64() / iters as f64
}

#[test]
fn nccl_all_reduce_sums_from_4k_to_256m_and_reports_latency_and_busbw() {
    let Some(devs) = devices() else { return };
    let n = devs.len();
    println!(
        "NCCL {} on {n} devices: {}",
        CudaComm::nccl_version().unwrap(),
        devs.iter()
            .map(|d| d.info().name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let comm = CudaComm::from_cuda(&devs).unwrap();
    assert_eq!(
        comm.devices(),
        devs.iter().map(|d| d.id()).collect::<Vec<_>>()
    );
    let dyns: Vec<Arc<dyn Backend>> = devs.iter().map(|d| d.clone() as Arc<dyn Backend>).collect();
    let mut bytes = 4 << 10;
    while bytes <= 256 << 20 {
        let t = Instant::now();
        check_sum(&comm, &dyns, DType::F32, bytes);
        println!(
            "ok: f32 sum of {bytes:>10} bytes on {n} devices ({:.2} s with host checks)",
            t.elapsed().as_secs_f64()
        );
        bytes *= 2;
    }
    for dt in [DType::F16, DType::BF16] {
        for bytes in [4 << 10, 1 << 20, 64 << 20] {
            check_sum(&comm, &dyns, dt, bytes);
            println!("ok: {dt} sum of {bytes} bytes");
        }
    }
    // The same through the dyn-Backend constructor (the runtime's and the conformance hook's path).
    let comm2 = CudaComm::new(dyns.clone()).unwrap();
    check_sum(&comm2, &dyns, DType::F32, 1 << 20);
    drop(comm2);

    let lat = time_all_reduce(&comm, &devs, 16 << 10, 500);
    let big = 256usize << 20;
    let t = time_all_reduce(&comm, &devs, big, 20);
    let busbw = 2.0 * (n as f64 - 1.0) / n as f64 * big as f64 / t;
    println!(
        "NCCL all-reduce f32 on {n} devices: 16 KiB latency {:.2} us; 256 MiB {:.3} ms, algbw {:.1} GB/s, busbw {:.1} GB/s",
        lat * 1e6,
        t * 1e3,
        big as f64 / t / 1e9,
        busbw / 1e9
    );
}

#[test]
fn nccl_rejects_bad_groups_and_buffers() {
    let Some(devs) = devices() else { return };
    let twice = vec![devs[0].clone(), devs[0].clone()];
    assert!(
        CudaComm::from_cuda(&twice).is_err(),
        "a device twice in a group"
    );
    assert!(CudaComm::from_cuda(&[]).is_err(), "an empty group");
    let comm = CudaComm::from_cuda(&devs).unwrap();
    let bufs: Vec<Buffer> = devs.iter().map(|d| d.alloc(256).unwrap()).collect();
    let views: Vec<_> = bufs
        .iter()
        .map(|b| b.view_mut(0, Shape::d1(64), DType::F32).unwrap())
        .collect();
    assert!(
        comm.all_reduce_sum(&views[1..]).is_err(),
        "one buffer too few"
    );
    let mut swapped = views.clone();
    swapped.swap(0, 1);
    assert!(
        comm.all_reduce_sum(&swapped).is_err(),
        "buffers in the wrong device order"
    );
    let ints: Vec<_> = bufs
        .iter()
        .map(|b| b.view_mut(0, Shape::d1(64), DType::I32).unwrap())
        .collect();
    assert!(comm.all_reduce_sum(&ints).is_err(), "i32");
}
