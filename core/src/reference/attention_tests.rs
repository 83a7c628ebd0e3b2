//! Hand-computed and naive-f64 checks of the reference `attention`.

use super::*;
use crate::backend::Backend;
use crate::convert::{from_f32, i32_bytes, to_f32};
use crate::shape::Shape;
use crate::tensor::Buffer;

/// One sequence: its queries `[q_len, n_heads, hd]`, its logical keys and values
/// `[kv_len, n_kv, hd]`, and the cache blocks it uses, in order.
struct Seq {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    blocks: Vec<i32>,
}

struct Case {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    bs: usize,
    num_blocks: usize,
    dtype: DType,
    seqs: Vec<Seq>,
}

fn params(c: &Case) -> AttnParams {
    AttnParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
        scale: 1.0,
        causal: true,
        window: None,
        softcap: None,
    }
}

fn buf(b: &ReferenceBackend, bytes: &[u8]) -> Buffer {
    let buf = b.alloc(bytes.len().max(4)).unwrap();
    b.write(&buf, 0, bytes).unwrap();
    buf
}

/// Builds the paged cache and batch for `c` and runs the backend; `edit` may corrupt the
/// batch (q_starts, kv_lens, flat tables) to test validation.
fn run_with(
    c: &Case,
    p: &AttnParams,
    edit: impl FnOnce(&mut Vec<i32>, &mut Vec<i32>, &mut Vec<i32>),
) -> Result<Vec<f32>> {
    run_reps(c, p, edit, 1).map(|(out, _)| out)
}

/// `run_with`, calling `attention` `reps` times; also returns the seconds per call.
fn run_reps(
    c: &Case,
    p: &AttnParams,
    edit: impl FnOnce(&mut Vec<i32>, &mut Vec<i32>, &mut Vec<i32>),
    reps: usize,
) -> Result<(Vec<f32>, f64)> {
    let b = ReferenceBackend::new(0);
    let (n_kv, hd, bs) = (c.n_kv, c.hd, c.bs);
    let mut kc = vec![0f32; c.num_blocks * n_kv * bs * hd];
    let mut vc = kc.clone();
    let max_blocks = c.seqs.iter().map(|s| s.blocks.len()).max().unwrap_or(0);
    let (mut q_starts, mut kv_lens, mut tables, mut q) = (vec![0i32], vec![], vec![], vec![]);
    for s in &c.seqs {
        let kv_len = s.k.len() / (n_kv * hd);
        for pos in 0..kv_len {
            let blk = s.blocks[pos / bs] as usize;
            for h in 0..n_kv {
                let dst = ((blk * n_kv + h) * bs + pos % bs) * hd;
                let src = (pos * n_kv + h) * hd;
                kc[dst..dst + hd].copy_from_slice(&s.k[src..src + hd]);
                vc[dst..dst + hd].copy_from_slice(&s.v[src..src + hd]);
            }
        }
        q.extend_from_slice(&s.q);
        q_starts.push((q.len() / (c.n_heads * hd)) as i32);
        kv_lens.push(kv_len as i32);
        let mut t = s.blocks.clone();
        t.resize(max_blocks, -1);
        tables.extend(t);
    }
    let n_tokens = q.len() / (c.n_heads * hd);
    let n_seqs = c.seqs.len();
    edit(&mut q_starts, &mut kv_lens, &mut tables);
    let cshape = Shape::d4(c.num_blocks, n_kv, bs, hd);
    let kb = buf(&b, &from_f32(c.dtype, &kc).unwrap());
    let vb = buf(&b, &from_f32(c.dtype, &vc).unwrap());
    let kv = PagedKv::new(
        kb.view_mut(0, cshape, c.dtype).unwrap(),
        vb.view_mut(0, cshape, c.dtype).unwrap(),
    )
    .unwrap();
    let qb = buf(&b, &from_f32(DType::F32, &q).unwrap());
    let qshape = Shape::d3(n_tokens, c.n_heads, hd);
    let ob = buf(&b, &from_f32(DType::F32, &vec![f32::NAN; q.len()]).unwrap());
    let (sb, lb, tb) = (
        buf(&b, &i32_bytes(&q_starts)),
        buf(&b, &i32_bytes(&kv_lens)),
        buf(&b, &i32_bytes(&tables)),
    );
    let batch = SeqBatch {
        q_starts: sb.view(0, Shape::d1(n_seqs + 1), DType::I32).unwrap(),
        kv_lens: lb.view(0, Shape::d1(n_seqs), DType::I32).unwrap(),
        block_tables: tb
            .view(0, Shape::d2(n_seqs, max_blocks), DType::I32)
            .unwrap(),
        max_q_len: 1 << 20,
        max_kv_len: 1 << 20,
    };
    let t = std::time::Instant::now();
    for _ in 0..reps {
        b.attention(
            qb.view(0, qshape, DType::F32).unwrap(),
            &kv,
            &batch,
            p,
            None,
            ob.view_mut(0, qshape, DType::F32).unwrap(),
        )?;
    }
    let secs = t.elapsed().as_secs_f64() / reps.max(1) as f64;
    let mut raw = vec![0u8; q.len() * 4];
    b.read(&ob, 0, &mut raw).unwrap();
    Ok((to_f32(DType::F32, &raw).unwrap(), secs))
}

fn run(c: &Case, p: &AttnParams) -> Vec<f32> {
    run_with(c, p, |_, _, _| {}).unwrap()
}

/// Independent naive f64 attention over the logical (unpaged) K/V, rounded like the cache.
fn naive(c: &Case, p: &AttnParams) -> Vec<f32> {
    let hd = c.hd;
    let mut out = vec![];
    for s in &c.seqs {
        let round = |x: &[f32]| to_f32(c.dtype, &from_f32(c.dtype, x).unwrap()).unwrap();
        let (k, v) = (round(&s.k), round(&s.v));
        let kv_len = k.len() / (c.n_kv * hd);
        let q_len = s.q.len() / (c.n_heads * hd);
        for j in 0..q_len {
            let pos = kv_len - q_len + j;
            for h in 0..c.n_heads {
                let kh = h / (c.n_heads / c.n_kv);
                let qr = &s.q[(j * c.n_heads + h) * hd..][..hd];
                let keys: Vec<usize> = (0..kv_len)
                    .filter(|&kp| !p.causal || kp <= pos)
                    .filter(|&kp| p.window.is_none_or(|w| kp as i64 > pos as i64 - w as i64))
                    .collect();
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&kp| {
                        let kr = &k[(kp * c.n_kv + kh) * hd..][..hd];
                        let d: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let s = p.scale as f64 * d;
                        p.softcap
                            .map_or(s, |cap| cap as f64 * (s / cap as f64).tanh())
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let acc: f64 = keys
                        .iter()
                        .zip(&e)
                        .map(|(&kp, w)| w * v[(kp * c.n_kv + kh) * hd + d] as f64)
                        .sum();
                    out.push((acc / z) as f32);
                }
            }
        }
    }
    out
}

fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// A one-head case whose queries are zero (uniform scores) and whose value at position p is
/// `[p, 1]`, so the output's first element is the mean of the attended positions.
fn positions_case(kv_len: usize, q_len: usize) -> Case {
    let k = pseudo(kv_len * 2, 7);
    let v = (0..kv_len).flat_map(|p| [p as f32, 1.0]).collect();
    Case {
        n_heads: 1,
        n_kv: 1,
        hd: 2,
        bs: 4,
        num_blocks: 4,
        dtype: DType::F32,
        seqs: vec![Seq {
            q: vec![0.0; q_len * 2],
            k,
            v,
            blocks: vec![3, 1, 0, 2][..kv_len.div_ceil(4)].to_vec(),
        }],
    }
}

#[test]
fn one_key_returns_v() {
    let c = Case {
        n_heads: 2,
        n_kv: 1,
        hd: 3,
        bs: 2,
        num_blocks: 3,
        dtype: DType::F32,
        seqs: vec![Seq {
            q: vec![5.0, -1.0, 2.0, 0.3, 0.1, 9.0],
            k: vec![1.0, 2.0, 3.0],
            v: vec![0.25, -4.0, 7.5],
            blocks: vec![2],
        }],
    };
    assert_eq!(run(&c, &params(&c)), vec![0.25, -4.0, 7.5, 0.25, -4.0, 7.5]);
}

#[test]
fn two_keys_hand_computed_with_scale_and_softcap() {
    // q = [1, 0], k0 = [2, 0], k1 = [0, 1], scale 0.5: scores 1 and 0.
    let c = Case {
        n_heads: 1,
        n_kv: 1,
        hd: 2,
        bs: 1,
        num_blocks: 2,
        dtype: DType::F32,
        seqs: vec![Seq {
            q: vec![1.0, 0.0],
            k: vec![2.0, 0.0, 0.0, 1.0],
            v: vec![1.0, 0.0, 0.0, 1.0],
            blocks: vec![1, 0],
        }],
    };
    let mut p = params(&c);
    p.scale = 0.5;
    let w0 = 1f64.exp() / (1f64.exp() + 1.0);
    let o = run(&c, &p);
    assert!((o[0] as f64 - w0).abs() < 1e-6 && (o[1] as f64 - (1.0 - w0)).abs() < 1e-6);
    // softcap 0.5: scores 0.5·tanh(2) and 0
    p.softcap = Some(0.5);
    let s0 = 0.5 * 2f64.tanh();
    let w0 = s0.exp() / (s0.exp() + 1.0);
    let o = run(&c, &p);
    assert!((o[0] as f64 - w0).abs() < 1e-6, "{} vs {w0}", o[0]);
}

#[test]
fn causal_and_window_edges() {
    // kv_len 6, one query: it sits at position 5.
    let c = positions_case(6, 1);
    let mut p = params(&c);
    assert_eq!(run(&c, &p)[0], 2.5); // keys 0..=5
    p.window = Some(3);
    assert_eq!(run(&c, &p)[0], 4.0); // keys 3, 4, 5: p − W < k ≤ p
    p.window = Some(1);
    assert_eq!(run(&c, &p)[0], 5.0); // only itself
    // non-causal: every key of the sequence, window still bounds from below
    let c = positions_case(8, 3); // queries at 5, 6, 7
    let mut p = params(&c);
    p.causal = false;
    let o = run(&c, &p);
    assert_eq!([o[0], o[2], o[4]], [3.5, 3.5, 3.5]);
    p.window = Some(3);
    let o = run(&c, &p);
    assert_eq!([o[0], o[2], o[4]], [5.0, 5.5, 6.0]); // keys 3..8, 4..8, 5..8
    p.causal = true;
    let o = run(&c, &p);
    assert_eq!([o[0], o[2], o[4]], [4.0, 5.0, 6.0]);
}

#[test]
fn gqa_head_mapping() {
    // 4 query heads, 2 KV heads: heads 0, 1 read KV head 0; heads 2, 3 read KV head 1.
    let c = Case {
        n_heads: 4,
        n_kv: 2,
        hd: 1,
        bs: 2,
        num_blocks: 1,
        dtype: DType::F32,
        seqs: vec![Seq {
            q: vec![0.0; 4],
            k: vec![0.0, 0.0],
            v: vec![10.0, 20.0],
            blocks: vec![0],
        }],
    };
    assert_eq!(run(&c, &params(&c)), vec![10.0, 10.0, 20.0, 20.0]);
}

#[test]
fn ragged_paged_batch_matches_naive_for_every_kv_dtype() {
    let (n_heads, n_kv, hd, bs) = (8, 2, 40, 4);
    let mk = |q_len: usize, kv_len: usize, blocks: Vec<i32>, seed: u64| Seq {
        q: pseudo(q_len * n_heads * hd, seed),
        k: pseudo(kv_len * n_kv * hd, seed + 1),
        v: pseudo(kv_len * n_kv * hd, seed + 2),
        blocks,
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let c = Case {
            n_heads,
            n_kv,
            hd,
            bs,
            num_blocks: 12,
            dtype,
            seqs: vec![
                mk(5, 11, vec![7, 2, 9], 1), // prefill continuing a cached prefix
                mk(1, 6, vec![0, 11], 10),   // decode
                mk(0, 3, vec![5], 20),       // nothing to do this step
                mk(4, 4, vec![4], 30),       // fresh prefill, exactly one block
            ],
        };
        for (causal, window, softcap) in [
            (true, None, None),
            (true, Some(3), None),
            (false, Some(5), Some(0.7)),
            (true, None, Some(2.0)),
        ] {
            let p = AttnParams {
                scale: 0.3,
                causal,
                window,
                softcap,
                ..params(&c)
            };
            let got = run(&c, &p);
            let want = naive(&c, &p);
            assert_eq!(got.len(), want.len());
            for (a, e) in got.iter().zip(&want) {
                assert!(
                    (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{dtype}: {a} vs {e}"
                );
            }
        }
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let c = positions_case(6, 2);
    let p = params(&c);
    let shape_err = |r: Result<Vec<f32>>| matches!(r, Err(Error::Shape { .. }));
    // block id out of range / negative
    assert!(shape_err(run_with(&c, &p, |_, _, t| t[1] = 4)));
    assert!(shape_err(run_with(&c, &p, |_, _, t| t[0] = -1)));
    // kv_len beyond the table, q_len > kv_len, negative kv_len
    assert!(shape_err(run_with(&c, &p, |_, l, _| l[0] = 9)));
    assert!(shape_err(run_with(&c, &p, |_, l, _| l[0] = 1)));
    assert!(shape_err(run_with(&c, &p, |_, l, _| l[0] = -3)));
    // q_starts not covering the rows, decreasing, or not starting at 0
    assert!(shape_err(run_with(&c, &p, |s, _, _| s[1] = 1)));
    assert!(shape_err(run_with(&c, &p, |s, _, _| s[1] = 3)));
    assert!(shape_err(run_with(&c, &p, |s, _, _| s[0] = 1)));
    // a sliding window may leave the blocks before it unset
    let mut pw = p;
    pw.window = Some(2);
    let mut c2 = positions_case(8, 1);
    c2.seqs[0].blocks = vec![3, 1];
    let o = run_with(&c2, &pw, |_, _, t| t[0] = -1).unwrap();
    assert_eq!(o[0], 6.5);
    // bad params
    let mut bad = p;
    bad.window = Some(0);
    assert!(shape_err(run_with(&c, &bad, |_, _, _| {})));
    bad = p;
    bad.n_kv_heads = 2;
    assert!(shape_err(run_with(&c, &bad, |_, _, _| {})));
}

/// Time at Qwen2.5-0.5B's shape (14 heads, 2 KV heads, head_dim 64, f16 cache): a 512-token
/// prefill and a decode step over 4096 cached tokens. Run with
/// `cargo test -p kiln-core --lib attention_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_timing() {
    let (n_heads, n_kv, hd, bs) = (14, 2, 64, 16);
    for (q_len, kv_len) in [(512usize, 512usize), (1, 4096)] {
        let blocks: Vec<i32> = (0..kv_len.div_ceil(bs) as i32).rev().collect();
        let c = Case {
            n_heads,
            n_kv,
            hd,
            bs,
            num_blocks: blocks.len(),
            dtype: DType::F16,
            seqs: vec![Seq {
                q: pseudo(q_len * n_heads * hd, 1),
                k: pseudo(kv_len * n_kv * hd, 2),
                v: pseudo(kv_len * n_kv * hd, 3),
                blocks,
            }],
        };
        let p = AttnParams {
            scale: 0.125,
            ..params(&c)
        };
        let (_, per) = run_reps(&c, &p, |_, _, _| {}, 5).unwrap();
        let keys: usize = (0..q_len).map(|j| kv_len - q_len + j + 1).sum();
        let flops = 4.0 * (keys * n_heads * hd) as f64;
        println!(
            "attention q_len {q_len} kv_len {kv_len}: {:.2} ms per call, {:.2} GFLOP/s",
            per * 1e3,
            flops / per / 1e9
        );
    }
}
