//! The one-shot P2P all-reduce of `CudaComm` (kernels/allreduce.cu) against NCCL and a host sum,
//! on every CUDA device of the machine (at least 2, else "skipped"; KILN_REQUIRE_NCCL=1 makes
//! fewer a failure):
//! - random f32 (mixed magnitudes, so the summation order changes the rounding): the P2P result
//!   equals the host sum in rank order bit for bit, on every rank; NCCL's result is the same on
//!   every rank (and equals the host sum bit for bit on 2 ranks, where a + b is the only order);
//!   sizes from 1 float to the staging size, odd counts and misaligned views (the scalar kernel);
//! - flag reuse: hundreds of calls in a row with no host synchronization, alternating sizes
//!   (1 block and 32 blocks) and data (three sources in turn, so a stale or early read of a
//!   peer's staging buffer changes the accumulated result), checked exactly at the end;
//! - inside CUDA graphs: one graph per device captured nested (as the runtime's
//!   `capture_group`), replayed rank after rank 200 times without synchronization, exact;
//! - timing (`--nocapture`): latency per all-reduce at 4 KiB … 4 MiB for P2P vs NCCL, eager
//!   (host launches included) and inside a captured graph (device time per call), and the
//!   crossover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Instant;

use kiln_core::{Backend, Buffer, Collective, DType, Replay, Shape};
use kiln_cuda::{CudaBackend, CudaComm, P2P_STAGING_BYTES};

fn devices() -> Option<Vec<Arc<CudaBackend>>> {
    common::all_gpus("the P2P all-reduce test")
}

/// xorshift64*: reproducible random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A float in ±[0.5, 1) · 2^e, e in -12..12: sums of these round differently by order.
    fn float(&mut self) -> f32 {
        let r = self.next();
        let m = 0.5 + (r >> 40) as f32 / (1u64 << 25) as f32;
        let e = ((r >> 8) % 25) as i32 - 12;
        let s = if r & 1 == 0 { 1.0 } else { -1.0 };
        s * m * 2f32.powi(e)
    }
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Path {
    P2p,
    Nccl,
    Dispatch,
}

fn reduce(comm: &CudaComm, path: Path, views: &[kiln_core::ViewMut<'_>]) {
    match path {
        Path::P2p => comm.all_reduce_sum_p2p(views).unwrap(),
        Path::Nccl => comm.all_reduce_sum_nccl(views).unwrap(),
        Path::Dispatch => comm.all_reduce_sum(views).unwrap(),
    }
}

/// Random data at byte `offset` of each rank's buffer, one all-reduce, every rank checked.
/// Returns how many elements of the rank-order sum differ from the reverse-order sum (shows
/// the data is order-sensitive; always 0 on 2 ranks).
fn check_random(
    comm: &CudaComm,
    devs: &[Arc<CudaBackend>],
    path: Path,
    count: usize,
    offset: usize,
    seed: u64,
) -> usize {
    let n = devs.len();
    let mut rng = Rng(seed | 1);
    let data: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..count).map(|_| rng.float()).collect())
        .collect();
    let bufs: Vec<Buffer> = devs
        .iter()
        .zip(&data)
        .map(|(d, v)| {
            let b = d.alloc(offset + count * 4).unwrap();
            d.write(&b, offset, &bytes_of(v)).unwrap();
            b
        })
        .collect();
    let views: Vec<_> = bufs
        .iter()
        .map(|b| b.view_mut(offset, Shape::d1(count), DType::F32).unwrap())
        .collect();
    reduce(comm, path, &views);
    let want: Vec<f32> = (0..count)
        .map(|j| (1..n).fold(data[0][j], |s, r| s + data[r][j]))
        .collect();
    let reversed = (0..count)
        .filter(|&j| {
            let rev = (0..n - 1).rev().fold(data[n - 1][j], |s, r| s + data[r][j]);
            rev.to_bits() != want[j].to_bits()
        })
        .count();
    let mut first: Option<Vec<f32>> = None;
    for (r, (d, b)) in devs.iter().zip(&bufs).enumerate() {
        let mut out = vec![0u8; count * 4];
        d.read(b, offset, &mut out).unwrap();
        let got = floats(&out);
        if path != Path::Nccl || n == 2 {
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{path:?} {count} floats at +{offset}: rank {r} element {j}: {g} vs host {w}"
                );
            }
        } else {
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{path:?} rank {r} element {j}: {g} vs {w}"
                );
            }
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert!(
                f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{path:?} {count} floats: rank {r} differs from rank 0"
            ),
        }
    }
    reversed
}

#[test]
fn p2p_sums_are_exact_and_identical_on_every_rank() {
    let Some(devs) = devices() else { return };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    println!(
        "{} devices; default P2P threshold {} bytes (staging {P2P_STAGING_BYTES})",
        devs.len(),
        comm.p2p_max_bytes()
    );
    // The dispatch checks below take the P2P path up to the staging size.
    comm.set_p2p_max_bytes(P2P_STAGING_BYTES).unwrap();
    let counts = [
        1usize,
        3,
        4,
        1023,
        1024,
        4096,
        4097,
        16384,
        65536,
        262_144,
        P2P_STAGING_BYTES / 4 - 1,
        P2P_STAGING_BYTES / 4,
    ];
    for (i, &count) in counts.iter().enumerate() {
        for offset in [0usize, 4, 256] {
            let rev = check_random(
                &comm,
                &devs,
                Path::P2p,
                count,
                offset,
                17 + i as u64 * 7 + offset as u64,
            );
            if offset == 0 {
                check_random(&comm, &devs, Path::Nccl, count, 0, 91 + i as u64);
                check_random(&comm, &devs, Path::Dispatch, count, 0, 5 + i as u64);
            }
            println!(
                "ok: {count:>7} floats at +{offset:>3}: P2P bit-exact on every rank ({rev} elements order-sensitive)"
            );
        }
    }
    // Above the staging size the dispatch goes to NCCL (checked the same way).
    check_random(
        &comm,
        &devs,
        Path::Dispatch,
        P2P_STAGING_BYTES / 4 + 4,
        0,
        3,
    );
    // The explicit P2P path refuses what it cannot take.
    let b: Vec<Buffer> = devs
        .iter()
        .map(|d| d.alloc(P2P_STAGING_BYTES + 64).unwrap())
        .collect();
    let too_big: Vec<_> = b
        .iter()
        .map(|x| {
            x.view_mut(0, Shape::d1(P2P_STAGING_BYTES / 4 + 1), DType::F32)
                .unwrap()
        })
        .collect();
    assert!(
        comm.all_reduce_sum_p2p(&too_big).is_err(),
        "more than the staging size"
    );
    let halves: Vec<_> = b
        .iter()
        .map(|x| x.view_mut(0, Shape::d1(64), DType::BF16).unwrap())
        .collect();
    assert!(
        comm.all_reduce_sum_p2p(&halves).is_err(),
        "bf16 on the P2P path"
    );
    assert!(comm.set_p2p_max_bytes(P2P_STAGING_BYTES + 1).is_err());
    comm.set_p2p_max_bytes(0).unwrap();
    assert_eq!(comm.p2p_max_bytes(), 0);
}

/// Per rank r: three sources src[k][j] = small integers (distinct per k and r), a zero buffer,
/// a work buffer and two accumulators (all f32 [count]).
struct Chain {
    count: usize,
    src: Vec<[Buffer; 3]>,
    zero: Vec<Buffer>,
    work: Vec<Buffer>,
    acc: Vec<[Buffer; 2]>,
}

fn src_value(k: usize, r: usize, j: usize) -> f32 {
    ((j * 7 + k * 13 + r * 29) % 61) as f32 - 30.0
}

impl Chain {
    fn new(devs: &[Arc<CudaBackend>], count: usize) -> Chain {
        let mk = |d: &Arc<CudaBackend>, f: &dyn Fn(usize) -> f32| {
            let b = d.alloc(count * 4).unwrap();
            d.write(&b, 0, &bytes_of(&(0..count).map(f).collect::<Vec<_>>()))
                .unwrap();
            b
        };
        let mut c = Chain {
            count,
            src: vec![],
            zero: vec![],
            work: vec![],
            acc: vec![],
        };
        for (r, d) in devs.iter().enumerate() {
            c.src
                .push([0, 1, 2].map(|k| mk(d, &|j| src_value(k, r, j))));
            c.zero.push(mk(d, &|_| 0.0));
            c.work.push(mk(d, &|_| 0.0));
            c.acc.push([mk(d, &|_| 0.0), mk(d, &|_| 0.0)]);
        }
        c
    }

    fn v<'a>(&self, b: &'a Buffer) -> kiln_core::ViewMut<'a> {
        b.view_mut(0, Shape::d1(self.count), DType::F32).unwrap()
    }

    /// Enqueue one step k on every rank: work = src[k % 3]; all-reduce(work);
    /// acc[1] = acc[0] + work; acc[0] = acc[1] + 0. No synchronization.
    fn step(&self, devs: &[Arc<CudaBackend>], comm: &CudaComm, path: Path, k: usize) {
        for (r, d) in devs.iter().enumerate() {
            d.add(
                self.v(&self.src[r][k % 3]).as_view(),
                self.v(&self.zero[r]).as_view(),
                self.v(&self.work[r]),
            )
            .unwrap();
        }
        let views: Vec<_> = self.work.iter().map(|b| self.v(b)).collect();
        reduce(comm, path, &views);
        for (r, d) in devs.iter().enumerate() {
            d.add(
                self.v(&self.acc[r][0]).as_view(),
                self.v(&self.work[r]).as_view(),
                self.v(&self.acc[r][1]),
            )
            .unwrap();
            d.add(
                self.v(&self.acc[r][1]).as_view(),
                self.v(&self.zero[r]).as_view(),
                self.v(&self.acc[r][0]),
            )
            .unwrap();
        }
    }

    /// acc[0] on every rank == the sum over `steps` of the group sum of src[k % 3].
    fn check(&self, devs: &[Arc<CudaBackend>], steps: &[usize], what: &str) {
        let n = devs.len();
        for (r, d) in devs.iter().enumerate() {
            let mut out = vec![0u8; self.count * 4];
            d.read(&self.acc[r][0], 0, &mut out).unwrap();
            for (j, g) in floats(&out).iter().enumerate() {
                let want: f32 = steps
                    .iter()
                    .map(|&k| (0..n).map(|q| src_value(k % 3, q, j)).sum::<f32>())
                    .sum();
                assert_eq!(*g, want, "{what}: rank {r} element {j}");
            }
        }
    }
}

#[test]
fn p2p_flags_are_reused_call_after_call_and_inside_graphs() {
    let Some(devs) = devices() else { return };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    // 600 steps of two sizes interleaved (1 block and 32 blocks per grid), no host sync.
    let small = Chain::new(&devs, 1024);
    let big = Chain::new(&devs, 262_144 + 4);
    let t = Instant::now();
    for k in 0..600 {
        small.step(&devs, &comm, Path::P2p, k);
        big.step(&devs, &comm, Path::P2p, k + 1);
    }
    devs.iter().for_each(|d| d.synchronize().unwrap());
    let steps: Vec<usize> = (0..600).collect();
    small.check(&devs, &steps, "eager small");
    big.check(
        &devs,
        &steps.iter().map(|k| k + 1).collect::<Vec<_>>(),
        "eager big",
    );
    println!(
        "ok: 1200 P2P all-reduces in a row (2 sizes, 3 data sets), exact ({:.2} s)",
        t.elapsed().as_secs_f64()
    );

    // Inside graphs: one graph per device, nested captures; each replay does 3 steps of each
    // size; replayed 200 times rank after rank without synchronization.
    for path in [Path::P2p, Path::Nccl] {
        let small = Chain::new(&devs, 4096);
        let odd = Chain::new(&devs, 1023);
        let graph = capture_all(&devs, &mut || {
            for k in 0..3 {
                small.step(&devs, &comm, path, k);
                odd.step(&devs, &comm, path, k + 1);
            }
            Ok(())
        });
        for _ in 0..200 {
            graph.iter().for_each(|g| g.replay().unwrap());
        }
        devs.iter().for_each(|d| d.synchronize().unwrap());
        let steps: Vec<usize> = (0..200).flat_map(|_| 0..3).collect();
        small.check(&devs, &steps, &format!("{path:?} graph small"));
        odd.check(
            &devs,
            &steps.iter().map(|k| k + 1).collect::<Vec<_>>(),
            &format!("{path:?} graph odd"),
        );
        println!("ok: {path:?} all-reduces captured in graphs, 200 replays × 6 calls, exact");
    }
}

/// One graph per device, captured nested (device 0's capture encloses device 1's, ...), as
/// models/src/runtime/step.rs `capture_group` does; returned in device order.
fn capture_all(
    devs: &[Arc<CudaBackend>],
    f: &mut dyn FnMut() -> kiln_core::Result<()>,
) -> Vec<Box<dyn Replay>> {
    fn nest(
        devs: &[Arc<CudaBackend>],
        f: &mut dyn FnMut() -> kiln_core::Result<()>,
        out: &mut Vec<Box<dyn Replay>>,
    ) {
        let Some((first, rest)) = devs.split_first() else {
            f().unwrap();
            return;
        };
        let g = first.capture(&mut || {
            nest(rest, f, out);
            Ok(())
        });
        out.push(g.unwrap().expect("CUDA captures a graph"));
    }
    let mut out = Vec::new();
    nest(devs, f, &mut out);
    out.reverse();
    out
}

/// Seconds per all-reduce of `bytes`: eager (host launches included) and replayed from a graph
/// of `per_graph` calls (device time). Zeros stay zeros over repeats.
fn time_path(comm: &CudaComm, devs: &[Arc<CudaBackend>], path: Path, bytes: usize) -> (f64, f64) {
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
    let sync = || devs.iter().for_each(|d| d.synchronize().unwrap());
    let iters = if bytes <= 256 << 10 { 400 } else { 100 };
    for _ in 0..10 {
        reduce(comm, path, &views);
    }
    sync();
    let t = Instant::now();
    for _ in 0..iters {
        reduce(comm, path, &views);
    }
    sync();
    let eager = t.elapsed().as_secs_f64() / iters as f64;
    let per_graph = 50;
    let graph = capture_all(devs, &mut || {
        for _ in 0..per_graph {
            match path {
                Path::P2p => comm.all_reduce_sum_p2p(&views)?,
                _ => comm.all_reduce_sum_nccl(&views)?,
            }
        }
        Ok(())
    });
    graph.iter().for_each(|g| g.replay().unwrap());
    sync();
    let reps = iters / per_graph * 2;
    let t = Instant::now();
    for _ in 0..reps {
        graph.iter().for_each(|g| g.replay().unwrap());
    }
    sync();
    let graphed = t.elapsed().as_secs_f64() / (reps * per_graph) as f64;
    (eager, graphed)
}

#[test]
fn p2p_vs_nccl_latency_4k_to_4m() {
    let Some(devs) = devices() else { return };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    let n = devs.len();
    println!(
        "all-reduce f32 on {n} devices ({}), NCCL {}; µs per call",
        devs[0].info().name,
        CudaComm::nccl_version().unwrap()
    );
    println!("| bytes | P2P eager | NCCL eager | P2P graph | NCCL graph | graph NCCL/P2P |");
    println!("|---|---|---|---|---|---|");
    let mut crossover = None;
    for kib in [4usize, 16, 64, 256, 512, 1024, 2048, 4096] {
        let bytes = kib << 10;
        if bytes > P2P_STAGING_BYTES {
            break;
        }
        let (pe, pg) = time_path(&comm, &devs, Path::P2p, bytes);
        let (ne, ng) = time_path(&comm, &devs, Path::Nccl, bytes);
        println!(
            "| {kib} KiB | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× |",
            pe * 1e6,
            ne * 1e6,
            pg * 1e6,
            ng * 1e6,
            ng / pg
        );
        if crossover.is_none() && pg >= ng {
            crossover = Some(bytes);
        }
    }
    match crossover {
        Some(b) => println!("crossover (graph): NCCL at least as fast from {b} bytes"),
        None => {
            println!("crossover (graph): P2P faster at every size up to {P2P_STAGING_BYTES} bytes")
        }
    }
}
