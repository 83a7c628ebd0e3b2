//! The P2P all-reduce fused with the residual add and the RMS norm
//! (`Collective::all_reduce_add_rms_norm` of `CudaComm`, kernels/allreduce.cu
//! `allreduce_add_rms_norm_f32`) on every CUDA device of the machine (at least 2, else
//! "skipped"; KILN_REQUIRE_P2P=1 makes a missing P2P path a failure):
//! - sum = res + Σ parts equals the host's rank-order sum plus the residual bit for bit on every
//!   rank, out = rms_norm(sum)·w within 2e-6 relative of an f64 host norm, every rank identical,
//!   the parts left as they were, rows 1 … 70 (more rows than blocks: grid-stride) of dim 4096,
//!   2048 and 5120, with random mixed-magnitude values;
//! - interleaved with plain all-reduces of other sizes, hundreds of calls without host
//!   synchronization (the staging halves alternate by call: a call that reused the half a peer
//!   still reads would change the accumulated result), checked exactly at the end;
//! - with the P2P threshold at 0 the group declines (Ok(false)) and touches nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kiln_core::{Backend, Buffer, Collective, DType, ResidualNorm, Shape};
use kiln_cuda::CudaBackend;

/// Reproducible floats ±[0.5, 1)·2^e, e in −8..8 (sums round differently by order).
struct Rng(u64);
impl Rng {
    fn float(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let m = 0.5 + (r >> 40) as f32 / (1u64 << 25) as f32;
        let e = ((r >> 8) % 17) as i32 - 8;
        if r & 1 == 0 {
            m * 2f32.powi(e)
        } else {
            -m * 2f32.powi(e)
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.float()).collect()
    }
}

fn upload(d: &CudaBackend, v: &[f32]) -> Buffer {
    let b = d.alloc(v.len() * 4).unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    d.write(&b, 0, &bytes).unwrap();
    b
}

fn download(d: &CudaBackend, b: &Buffer, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 4];
    d.read(b, 0, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One rank's buffers: part, res, w, sum, out.
struct RankBufs([Buffer; 5]);

impl RankBufs {
    fn new(d: &CudaBackend, part: &[f32], res: &[f32], w: &[f32]) -> RankBufs {
        let poison = vec![f32::NAN; part.len()];
        RankBufs([
            upload(d, part),
            upload(d, res),
            upload(d, w),
            upload(d, &poison),
            upload(d, &poison),
        ])
    }
    fn views(&self, rows: usize, dim: usize) -> ResidualNorm<'_> {
        let s = Shape::d2(rows, dim);
        let f = DType::F32;
        ResidualNorm {
            part: self.0[0].view(0, s, f).unwrap(),
            res: self.0[1].view(0, s, f).unwrap(),
            w: self.0[2].view(0, Shape::d1(dim), f).unwrap(),
            sum: self.0[3].view_mut(0, s, f).unwrap(),
            out: self.0[4].view_mut(0, s, f).unwrap(),
        }
    }
}

/// Host expectation: (sum in rank order then + res, exactly as the device must; out in f64).
fn expect(
    parts: &[Vec<f32>],
    res: &[f32],
    w: &[f32],
    dim: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f64>) {
    let sum: Vec<f32> = (0..res.len())
        .map(|j| res[j] + parts[1..].iter().fold(parts[0][j], |s, p| s + p[j]))
        .collect();
    let mut out = vec![0f64; sum.len()];
    for (row, o) in sum.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (k, (x, y)) in row.iter().zip(o.iter_mut()).enumerate() {
            *y = *x as f64 * inv * w[k] as f64;
        }
    }
    (sum, out)
}

#[test]
fn fused_all_reduce_add_rms_norm_matches_the_host() {
    let Some(devs) = common::all_gpus("the fused P2P all-reduce + rms_norm test") else {
        return;
    };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    let n = devs.len();
    let eps = 1e-5;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &(rows, dim) in &[(1, 4096), (7, 4096), (33, 2048), (70, 5120), (2, 4096)] {
        let count = rows * dim;
        let parts: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(count)).collect();
        let res = rng.vec(count);
        let w: Vec<f32> = (0..dim)
            .map(|_| 1.0 + 0.25 * rng.float().clamp(-1.0, 1.0))
            .collect();
        let bufs: Vec<RankBufs> = devs
            .iter()
            .zip(&parts)
            .map(|(d, p)| RankBufs::new(d, p, &res, &w))
            .collect();
        let views: Vec<_> = bufs.iter().map(|b| b.views(rows, dim)).collect();
        assert!(
            comm.all_reduce_add_rms_norm(&views, eps).unwrap(),
            "{rows}×{dim}: the P2P group declined the fused call"
        );
        let (want_sum, want_out) = expect(&parts, &res, &w, dim, eps);
        let mut first: Option<Vec<f32>> = None;
        for (r, (d, b)) in devs.iter().zip(&bufs).enumerate() {
            let sum = download(d, &b.0[3], count);
            let out = download(d, &b.0[4], count);
            let part = download(d, &b.0[0], count);
            assert_eq!(part, parts[r], "{rows}×{dim}: rank {r}'s part was modified");
            for (j, (g, e)) in sum.iter().zip(&want_sum).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{rows}×{dim} rank {r} sum[{j}]: {g} vs host {e}"
                );
            }
            for (j, (g, e)) in out.iter().zip(&want_out).enumerate() {
                let err = (*g as f64 - e).abs();
                assert!(
                    err <= 2e-6 * e.abs().max(1e-3),
                    "{rows}×{dim} rank {r} out[{j}]: {g} vs {e}"
                );
            }
            match &first {
                None => first = Some(out),
                Some(f) => assert!(
                    f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{rows}×{dim}: rank {r}'s norm differs from rank 0's"
                ),
            }
        }
        println!("fused all-reduce + rms_norm {rows}×{dim} on {n} ranks: exact sum, norm ok");
    }
}

#[test]
fn fused_and_plain_calls_interleave_without_synchronization() {
    let Some(devs) = common::all_gpus("the fused P2P all-reduce interleave test") else {
        return;
    };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    let n = devs.len();
    let (rows, dim, eps) = (1, 4096, 1e-5);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Fused: res ← res + Σ parts each round (sum written back into res by swapping roles).
    let parts: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(rows * dim)).collect();
    let res0 = rng.vec(rows * dim);
    let w = vec![1.0f32; dim];
    let a: Vec<RankBufs> = devs
        .iter()
        .zip(&parts)
        .map(|(d, p)| RankBufs::new(d, p, &res0, &w))
        .collect();
    // Plain all-reduces of a large (many-block) message between the fused calls.
    let big = 300_000;
    let big_data: Vec<Vec<f32>> = (0..n).map(|_| rng.vec(big)).collect();
    let big_bufs: Vec<Buffer> = devs
        .iter()
        .zip(&big_data)
        .map(|(d, v)| upload(d, v))
        .collect();
    let rounds = 200;
    let mut want_res = res0.clone();
    let mut want_big = big_data[0].clone();
    for k in 0..rounds {
        // Round k: sum_k = res_k + Σ parts → written to buffer 3 (k even) or 1 (k odd).
        let (src, dst) = if k % 2 == 0 { (1, 3) } else { (3, 1) };
        let views: Vec<ResidualNorm<'_>> = a
            .iter()
            .map(|b| {
                let s = Shape::d2(rows, dim);
                ResidualNorm {
                    part: b.0[0].view(0, s, DType::F32).unwrap(),
                    res: b.0[src].view(0, s, DType::F32).unwrap(),
                    w: b.0[2].view(0, Shape::d1(dim), DType::F32).unwrap(),
                    sum: b.0[dst].view_mut(0, s, DType::F32).unwrap(),
                    out: b.0[4].view_mut(0, s, DType::F32).unwrap(),
                }
            })
            .collect();
        assert!(comm.all_reduce_add_rms_norm(&views, eps).unwrap());
        want_res = (0..rows * dim)
            .map(|j| want_res[j] + parts[1..].iter().fold(parts[0][j], |s, p| s + p[j]))
            .collect();
        let bv: Vec<_> = big_bufs
            .iter()
            .map(|b| b.view_mut(0, Shape::d1(big), DType::F32).unwrap())
            .collect();
        comm.all_reduce_sum_p2p(&bv).unwrap();
        // After the first call every rank holds the same sum S; each later call multiplies by n.
        if k == 0 {
            want_big = (0..big)
                .map(|j| big_data[1..].iter().fold(big_data[0][j], |s, v| s + v[j]))
                .collect();
        } else {
            want_big = want_big
                .iter()
                .map(|&x| (1..n).fold(x, |s, _| s + x))
                .collect();
        }
    }
    let last = if rounds % 2 == 0 { 1 } else { 3 };
    for (r, (d, b)) in devs.iter().zip(&a).enumerate() {
        let got = download(d, &b.0[last], rows * dim);
        for (j, (g, e)) in got.iter().zip(&want_res).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "rank {r} residual[{j}] after {rounds} rounds: {g} vs {e}"
            );
        }
        let got = download(d, &big_bufs[r], big);
        for (j, (g, e)) in got.iter().zip(&want_big).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "rank {r} big[{j}] after {rounds} rounds: {g} vs {e}"
            );
        }
    }
    println!("{rounds} fused + {rounds} plain P2P calls interleaved on {n} ranks: exact");
}

#[test]
fn a_group_without_the_p2p_path_declines() {
    let Some(devs) = common::all_gpus("the fused P2P all-reduce fallback test") else {
        return;
    };
    let Some(comm) = common::p2p_group(&devs) else {
        return;
    };
    let before = comm.p2p_max_bytes();
    comm.set_p2p_max_bytes(0).unwrap();
    let (rows, dim) = (1, 64);
    let bufs: Vec<RankBufs> = devs
        .iter()
        .map(|d| RankBufs::new(d, &[1.0; 64], &[2.0; 64], &[1.0; 64]))
        .collect();
    let views: Vec<_> = bufs.iter().map(|b| b.views(rows, dim)).collect();
    let fused = comm.all_reduce_add_rms_norm(&views, 1e-5).unwrap();
    comm.set_p2p_max_bytes(before).unwrap();
    assert!(!fused, "threshold 0: the group must decline");
    for (d, b) in devs.iter().zip(&bufs) {
        assert!(
            download(d, &b.0[3], 64).iter().all(|x| x.is_nan()),
            "declined but wrote sum"
        );
    }
}
