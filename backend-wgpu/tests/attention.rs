//! Paged attention and MoE on wgpu:0 against CPU oracles written here.
// Tests may unwrap (project convention); index loops keep the oracles close to the math.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use kiln_core::{
    Activation, AttnParams, Backend, DType, HostTensor, MoeExperts, MoeGating, MoeRouting, PagedKv,
    SeqBatch, Shape,
};
use rand::seq::SliceRandom;

struct Case {
    hd: usize,
    n_heads: usize,
    n_kv: usize,
    bs: usize,
    /// (q_len, kv_len) per sequence
    seqs: Vec<(usize, usize)>,
    window: Option<usize>,
    softcap: Option<f32>,
    kv_dtype: DType,
}

fn run_case(c: &Case, seed: u64) {
    let Some(be) = open() else { return };
    let mut r = rng(seed);
    let max_blocks = c.seqs.iter().map(|s| s.1.div_ceil(c.bs)).max().unwrap();
    let n_blocks = c.seqs.len() * max_blocks + 3;
    let mut ids: Vec<usize> = (0..n_blocks).collect();
    ids.shuffle(&mut r);
    let mut bt = vec![0i32; c.seqs.len() * max_blocks];
    for s in 0..c.seqs.len() {
        for b in 0..max_blocks {
            bt[s * max_blocks + b] = ids[s * max_blocks + b] as i32;
        }
    }
    let csize = n_blocks * c.n_kv * c.bs * c.hd;
    let kc = randn(&mut r, csize, 1.0);
    let vc = randn(&mut r, csize, 1.0);
    // Round the cache to its dtype so the oracle sees what the device holds.
    let kc_b = kiln_core::convert::from_f32(c.kv_dtype, &kc).unwrap();
    let vc_b = kiln_core::convert::from_f32(c.kv_dtype, &vc).unwrap();
    let kc = kiln_core::convert::to_f32(c.kv_dtype, &kc_b).unwrap();
    let vc = kiln_core::convert::to_f32(c.kv_dtype, &vc_b).unwrap();
    let n_tokens: usize = c.seqs.iter().map(|s| s.0).sum();
    let q = randn(&mut r, n_tokens * c.n_heads * c.hd, 1.0);
    let mut q_starts = vec![0i32];
    for s in &c.seqs {
        q_starts.push(q_starts.last().unwrap() + s.0 as i32);
    }
    let kv_lens: Vec<i32> = c.seqs.iter().map(|s| s.1 as i32).collect();
    let scale = 1.0 / (c.hd as f32).sqrt();
    let p = AttnParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
        scale,
        causal: true,
        window: c.window,
        softcap: c.softcap,
    };
    // Oracle
    let mut want = vec![0f32; q.len()];
    let grp = c.n_heads / c.n_kv;
    for (s, &(ql, kl)) in c.seqs.iter().enumerate() {
        for j in 0..ql {
            let tok = q_starts[s] as usize + j;
            let qpos = kl - ql + j;
            for h in 0..c.n_heads {
                let kvh = h / grp;
                let qv = &q[(tok * c.n_heads + h) * c.hd..][..c.hd];
                let lo = c.window.map_or(0, |w| (qpos + 1).saturating_sub(w));
                let mut sc = Vec::new();
                for key in lo..=qpos {
                    let blk = bt[s * max_blocks + key / c.bs] as usize;
                    let base = ((blk * c.n_kv + kvh) * c.bs + key % c.bs) * c.hd;
                    let mut d: f64 = (0..c.hd)
                        .map(|i| f64::from(qv[i]) * f64::from(kc[base + i]))
                        .sum();
                    d *= f64::from(scale);
                    if let Some(cap) = c.softcap {
                        d = f64::from(cap) * (d / f64::from(cap)).tanh();
                    }
                    sc.push((d, base));
                }
                let mx = sc.iter().map(|x| x.0).fold(f64::MIN, f64::max);
                let tot: f64 = sc.iter().map(|x| (x.0 - mx).exp()).sum();
                for i in 0..c.hd {
                    let v: f64 = sc
                        .iter()
                        .map(|x| (x.0 - mx).exp() * f64::from(vc[x.1 + i]))
                        .sum();
                    want[(tok * c.n_heads + h) * c.hd + i] = (v / tot) as f32;
                }
            }
        }
    }
    let cs = Shape::d4(n_blocks, c.n_kv, c.bs, c.hd);
    let kb = upload(&be, &kc_b);
    let vb = upload(&be, &vc_b);
    let kv = PagedKv::new(
        kb.view_mut(0, cs, c.kv_dtype).unwrap(),
        vb.view_mut(0, cs, c.kv_dtype).unwrap(),
    )
    .unwrap();
    let qb = upload(&be, &f32_bytes(&q));
    let qsb = upload(&be, &i32_bytes(&q_starts));
    let klb = upload(&be, &i32_bytes(&kv_lens));
    let btb = upload(&be, &i32_bytes(&bt));
    let batch = SeqBatch {
        q_starts: qsb
            .view(0, Shape::d1(c.seqs.len() + 1), DType::I32)
            .unwrap(),
        kv_lens: klb.view(0, Shape::d1(c.seqs.len()), DType::I32).unwrap(),
        block_tables: btb
            .view(0, Shape::d2(c.seqs.len(), max_blocks), DType::I32)
            .unwrap(),
        max_q_len: c.seqs.iter().map(|s| s.0).max().unwrap(),
        max_kv_len: c.seqs.iter().map(|s| s.1).max().unwrap(),
    };
    let qs = Shape::d3(n_tokens, c.n_heads, c.hd);
    let need = be.attention_scratch_bytes(&p, n_tokens, &batch);
    let scr = be.alloc(need.max(4)).unwrap();
    // Every kernel: attention_keys.wgsl (default for decode batches where the adapter has
    // subgroups), attention_dec.wgsl (`set_attn_keys(false)`; default for prefill tiles) and
    // the per-(token, head) kernel kept behind `set_attn_decode(false)` / `set_attn_prefill(false)`.
    for (keys, dec) in [(true, true), (false, true), (false, false)] {
        be.set_attn_keys(keys);
        be.set_attn_decode(dec);
        be.set_attn_prefill(dec);
        let o = poisoned(&be, q.len());
        let scratch = (need > 0).then(|| scr.view_mut(0, Shape::d1(need / 4), DType::F32).unwrap());
        be.attention(
            qb.view(0, qs, DType::F32).unwrap(),
            &kv,
            &batch,
            &p,
            scratch,
            o.view_mut(0, qs, DType::F32).unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, q.len());
        let e = nmse(&got, &want);
        let kernel = match (keys && be.attention_keys_available(), dec) {
            (true, _) => "keys where it applies, else tiles",
            (false, true) => "tiles",
            (false, false) => "per-(token, head)",
        };
        eprintln!(
            "attention hd {} heads {}/{} bs {} kv {} seqs {:?} window {:?} softcap {:?} \
             scratch {need} kernel {kernel}: nmse {e:e}",
            c.hd, c.n_heads, c.n_kv, c.bs, c.kv_dtype, c.seqs, c.window, c.softcap
        );
        assert!(e < 1e-9, "kernel {kernel}: nmse {e:e}");
    }
    be.set_attn_keys(true);
    be.set_attn_decode(true);
    be.set_attn_prefill(true);
}

/// Decode batches (one query per sequence) of `n_heads / n_kv` = `g` at the given shapes:
/// the decode kernel's head groups (G = 1, 4, 6 of 12, 8), row widths (32..256 words: V
/// phases 4..1, two columns per invocation at 256), block sizes 15/24, window and softcap,
/// and splits whose last share is tiny or empty.
fn decode_case(hd: usize, n_heads: usize, n_kv: usize, bs: usize, kv_dtype: DType, seed: u64) {
    run_case(
        &Case {
            hd,
            n_heads,
            n_kv,
            bs,
            seqs: vec![(1, 1), (1, 2), (1, 33), (1, 129), (1, 700), (1, 2049)],
            window: None,
            softcap: None,
            kv_dtype,
        },
        seed,
    );
}

#[test]
fn attention_prefill_and_decode_gqa() {
    run_case(
        &Case {
            hd: 128,
            n_heads: 8,
            n_kv: 2,
            bs: 16,
            seqs: vec![(37, 37), (1, 200), (5, 90)],
            window: None,
            softcap: None,
            kv_dtype: DType::F32,
        },
        31,
    );
}

#[test]
fn attention_window_softcap_f16_hd256() {
    run_case(
        &Case {
            hd: 256,
            n_heads: 4,
            n_kv: 1,
            bs: 8,
            seqs: vec![(20, 50), (1, 33)],
            window: Some(16),
            softcap: Some(30.0),
            kv_dtype: DType::F16,
        },
        32,
    );
}

#[test]
fn attention_bf16_hd64() {
    run_case(
        &Case {
            hd: 64,
            n_heads: 4,
            n_kv: 4,
            bs: 32,
            seqs: vec![(3, 130), (2, 2)],
            window: None,
            softcap: None,
            kv_dtype: DType::BF16,
        },
        33,
    );
}

#[test]
fn attention_long_decode_split() {
    run_case(
        &Case {
            hd: 128,
            n_heads: 4,
            n_kv: 2,
            bs: 16,
            seqs: vec![(1, 3000), (1, 700)],
            window: None,
            softcap: None,
            kv_dtype: DType::F16,
        },
        34,
    );
}

#[test]
fn moe_routes_and_combines() {
    let Some(be) = open() else { return };
    let mut r = rng(41);
    let (ne, ff, dim, nt, top_k) = (6, 64, 96, 5, 2);
    let gate = randn(&mut r, ne * ff * dim, 0.2);
    let up = randn(&mut r, ne * ff * dim, 0.2);
    let down = randn(&mut r, ne * dim * ff, 0.2);
    let x = randn(&mut r, nt * dim, 1.0);
    let logits = randn(&mut r, nt * ne, 2.0);
    let prep = |v: &[f32], s: Shape| {
        be.prepare_weight(&HostTensor::new(DType::F32, s, &f32_bytes(v)).unwrap())
            .unwrap()
    };
    let (gw, uw, dw) = (
        prep(&gate, Shape::d3(ne, ff, dim)),
        prep(&up, Shape::d3(ne, ff, dim)),
        prep(&down, Shape::d3(ne, dim, ff)),
    );
    for gating in [
        MoeGating::SoftmaxTopK { renormalize: true },
        MoeGating::SoftmaxTopK { renormalize: false },
        MoeGating::TopKSoftmax,
    ] {
        let e = MoeExperts {
            gate: &gw,
            up: &uw,
            down: &dw,
            act: Activation::Silu,
        };
        let rt = MoeRouting { top_k, gating };
        let xb = upload(&be, &f32_bytes(&x));
        let lb = upload(&be, &f32_bytes(&logits));
        let need = be.moe_scratch_bytes(nt, &e, &rt);
        let scr = be.alloc(need).unwrap();
        let o = poisoned(&be, nt * dim);
        be.moe(
            xb.view(0, Shape::d2(nt, dim), DType::F32).unwrap(),
            lb.view(0, Shape::d2(nt, ne), DType::F32).unwrap(),
            &e,
            &rt,
            Some(scr.view_mut(0, Shape::d1(need / 4), DType::F32).unwrap()),
            o.view_mut(0, Shape::d2(nt, dim), DType::F32).unwrap(),
        )
        .unwrap();
        let got = read_f32(&be, &o, 0, nt * dim);
        let mut want = vec![0f32; nt * dim];
        for t in 0..nt {
            let l: Vec<f64> = logits[t * ne..(t + 1) * ne]
                .iter()
                .map(|v| f64::from(*v))
                .collect();
            let mut idx: Vec<usize> = (0..ne).collect();
            idx.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
            let sel = &idx[..top_k];
            let mx = l.iter().cloned().fold(f64::MIN, f64::max);
            let tot: f64 = l.iter().map(|v| (v - mx).exp()).sum();
            let mut w: Vec<f64> = match gating {
                MoeGating::SoftmaxTopK { .. } => {
                    sel.iter().map(|&i| (l[i] - mx).exp() / tot).collect()
                }
                MoeGating::TopKSoftmax => sel.iter().map(|&i| (l[i] - l[sel[0]]).exp()).collect(),
            };
            if matches!(
                gating,
                MoeGating::TopKSoftmax | MoeGating::SoftmaxTopK { renormalize: true }
            ) {
                let s: f64 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= s);
            }
            for (j, &ex) in sel.iter().enumerate() {
                let xr = &x[t * dim..(t + 1) * dim];
                let mut h = vec![0f64; ff];
                for f in 0..ff {
                    let g: f64 = (0..dim)
                        .map(|i| f64::from(gate[(ex * ff + f) * dim + i]) * f64::from(xr[i]))
                        .sum();
                    let u: f64 = (0..dim)
                        .map(|i| f64::from(up[(ex * ff + f) * dim + i]) * f64::from(xr[i]))
                        .sum();
                    h[f] = g / (1.0 + (-g).exp()) * u;
                }
                for d in 0..dim {
                    let y: f64 = (0..ff)
                        .map(|f| f64::from(down[(ex * dim + d) * ff + f]) * h[f])
                        .sum();
                    want[t * dim + d] += (w[j] * y) as f32;
                }
            }
        }
        let e = nmse(&got, &want);
        assert!(e < 1e-9, "{gating:?}: nmse {e:e}");
    }
}

#[test]
fn attention_decode_groups() {
    decode_case(128, 8, 8, 16, DType::F16, 51); // G = 1
    decode_case(128, 32, 8, 16, DType::BF16, 52); // G = 4 (Llama-3-8B)
    decode_case(128, 8, 1, 15, DType::F16, 53); // G = 8, odd block size
    decode_case(64, 24, 2, 24, DType::F32, 54); // G = 12: two groups of 6
}

#[test]
fn attention_decode_widths() {
    decode_case(64, 8, 2, 16, DType::F16, 55); // 32 words: 4 V phases
    decode_case(64, 4, 2, 16, DType::F32, 56); // 64 words
    decode_case(256, 8, 2, 16, DType::BF16, 57); // 128 words
    decode_case(256, 4, 1, 8, DType::F32, 58); // 256 words: 2 columns per invocation
}

#[test]
fn attention_decode_window_softcap_ragged() {
    run_case(
        &Case {
            hd: 128,
            n_heads: 16,
            n_kv: 2,
            bs: 24,
            seqs: vec![(1, 1), (1, 37), (1, 38), (1, 1000), (1, 65)],
            window: Some(37),
            softcap: Some(5.0),
            kv_dtype: DType::F16,
        },
        59,
    );
    // n_tokens = n_seqs with q_len 2 and 0 in the batch: still the decode kernel (queries of
    // one sequence one after the other), causal within the sequence.
    run_case(
        &Case {
            hd: 128,
            n_heads: 8,
            n_kv: 2,
            bs: 16,
            seqs: vec![(2, 50), (0, 10), (1, 300)],
            window: None,
            softcap: None,
            kv_dtype: DType::BF16,
        },
        60,
    );
}
