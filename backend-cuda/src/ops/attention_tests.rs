//! CPU emulation of attention.cu's control flow and softmax math (no GPU needed): the launch
//! geometry of `plan`, `seq_ok`, `key_range`, the split/direct decision, the tile ring's key
//! ranges and zero-filled loads, the per-warp online softmax (log2 domain), the warp merge of
//! the decode configuration and the split merge (fused: the last CTA of a row tile to arrive,
//! counted as the kernel counts, merges and sets its counter back to 0; `attn_combine_hd*`
//! does the same merge), checked against a naive f64 softmax on caches whose unused rows are NaN. The mma fragments are not emulated (f32 dot products instead);
//! they are checked on the GPU by the conformance suite.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use super::*;

const NEG: f32 = f32::NEG_INFINITY;
const LOG2E: f32 = std::f32::consts::LOG2_E;

struct Case {
    seqs: Vec<(usize, usize)>,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    bs: usize,
    causal: bool,
    window: usize,
    softcap: f32,
    loose: usize,
    sms: usize,
}

/// The kernels' view of the batch (AttnArgs fields the control flow uses).
struct Emu<'a> {
    c: &'a Case,
    q_starts: Vec<i32>,
    kv_lens: Vec<i32>,
    tables: Vec<i32>,
    max_blocks: usize,
    num_blocks: usize,
    n_tokens: usize,
    max_q_len: usize,
    max_kv_len: usize,
    pl: AttnPlan,
}

struct Seq {
    q0: usize,
    q_len: usize,
    kv_len: usize,
}

impl Emu<'_> {
    fn seq_ok(&self, s: usize) -> Option<Seq> {
        let (q0, q1, kv) = (self.q_starts[s], self.q_starts[s + 1], self.kv_lens[s]);
        let q_len = q1 - q0;
        let ok = q0 >= 0
            && q1 as usize <= self.n_tokens
            && q_len >= 1
            && q_len as usize <= self.max_q_len
            && kv >= q_len
            && kv as usize <= self.max_kv_len
            && kv as usize <= self.max_blocks * self.c.bs;
        ok.then_some(Seq {
            q0: q0 as usize,
            q_len: q_len as usize,
            kv_len: kv as usize,
        })
    }
    fn key_range(&self, sq: &Seq, r0: usize, r_end: usize) -> (usize, usize) {
        let g = self.pl.group;
        let first = sq.kv_len - sq.q_len;
        let (p_lo, p_hi) = (first + r0 / g, first + (r_end - 1) / g);
        let klo = if self.c.window > 0 {
            (p_lo + 1).saturating_sub(self.c.window)
        } else {
            0
        };
        let khi = if self.c.causal { p_hi + 1 } else { sq.kv_len };
        (klo, khi)
    }
}

/// Online softmax state of one row over one warp's keys (log2 domain, as the kernel).
#[derive(Clone)]
struct State {
    m: f32,
    l: f32,
    acc: Vec<f32>,
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

struct Out {
    out: Vec<f32>,
    writes: Vec<u32>,
    part_acc: Vec<f32>,
    part_ml: Vec<f32>,
    part_written: Vec<bool>,
    /// Split-merge arrivals per (sequence, KV head, decode row tile), as the kernel's counters.
    counters: Vec<usize>,
}

fn rng(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// One CTA of either configuration (the body of `attn_body` without the mma details).
#[allow(clippy::too_many_arguments)]
fn cta(
    e: &Emu<'_>,
    d: &Data,
    o: &mut Out,
    decode: bool,
    row_tiles: usize,
    bx: usize,
    g: usize,
    s: usize,
) {
    let c = e.c;
    let (hd, grp) = (c.hd, e.pl.group);
    let (rows, bc, wn) = if decode {
        (16, 64, 4)
    } else {
        (64, if hd == 256 { 32 } else { 64 }, 1)
    };
    let kw = bc / wn;
    let (z, rt0) = (bx / row_tiles, bx % row_tiles);
    let Some(sq) = e.seq_ok(s) else { return };
    if decode == (sq.q_len > e.pl.qd) {
        return;
    }
    let nrows = sq.q_len * grp;
    let r0 = if decode { rt0 } else { row_tiles - 1 - rt0 } * rows;
    if r0 >= nrows {
        return;
    }
    let r_end = (r0 + rows).min(nrows);
    let (mut klo, mut khi) = e.key_range(&sq, r0, r_end);
    let mut direct = true;
    if decode {
        let (z0, z1) = (klo / e.pl.chunk, (khi - 1) / e.pl.chunk);
        if z < z0 || z > z1 {
            return;
        }
        direct = z0 == z1;
        klo = klo.max(z * e.pl.chunk);
        khi = khi.min((z + 1) * e.pl.chunk);
    }
    let first = sq.kv_len - sq.q_len;
    let bounds = |r: usize| -> (usize, usize) {
        let pos = first + r / grp;
        let lo = if c.window > 0 {
            (pos + 1).saturating_sub(c.window)
        } else {
            0
        };
        let hi = if c.causal { pos + 1 } else { sq.kv_len };
        (lo.max(klo), hi.min(khi))
    };
    let qrow = |r: usize| -> &[f32] {
        let (j, hh) = (r / grp, r % grp);
        let at = ((sq.q0 + j) * c.n_heads + g * grp + hh) * hd;
        &d.q[at..at + hd]
    };
    // [row][warp slice] states.
    let mut st = vec![
        vec![
            State {
                m: NEG,
                l: 0.0,
                acc: vec![0.0; hd]
            };
            wn
        ];
        rows
    ];
    let (t_begin, t_end) = (klo / bc, khi.div_ceil(bc));
    assert!(t_begin < t_end, "a CTA with rows always has keys");
    let scale = 1.0 / (hd as f32).sqrt();
    for t in t_begin..t_end {
        // The loader: zero rows outside [klo, khi) or outside the cache.
        let mut kt = vec![0f32; bc * hd];
        let mut vt = vec![0f32; bc * hd];
        let mut loaded = vec![false; bc];
        for kk in 0..bc {
            let pos = t * bc + kk;
            if pos < klo || pos >= khi {
                continue;
            }
            let blk = e.tables[s * e.max_blocks + pos / c.bs];
            if blk < 0 || blk as usize >= e.num_blocks {
                continue;
            }
            let off = ((blk as usize * c.n_kv + g) * c.bs + pos % c.bs) * hd;
            kt[kk * hd..][..hd].copy_from_slice(&d.k[off..off + hd]);
            vt[kk * hd..][..hd].copy_from_slice(&d.v[off..off + hd]);
            loaded[kk] = true;
        }
        for rr in 0..rows {
            let r = r0 + rr;
            let (lo, hi) = if r < r_end { bounds(r) } else { (1, 0) };
            for w in 0..wn {
                let keys = w * kw..(w + 1) * kw;
                let mut sc = vec![NEG; kw];
                let mut mx = NEG;
                for (i, kk) in keys.clone().enumerate() {
                    let key = t * bc + kk;
                    let dot: f32 = if r < r_end {
                        qrow(r)
                            .iter()
                            .zip(&kt[kk * hd..][..hd])
                            .map(|(a, b)| a * scale * b)
                            .sum()
                    } else {
                        0.0
                    };
                    let mut v = dot;
                    if c.softcap > 0.0 {
                        v = c.softcap * (v / c.softcap).tanh();
                    }
                    let keep = key >= lo && key < hi;
                    if keep {
                        assert!(loaded[kk], "row {r} keeps key {key}, which was not loaded");
                    }
                    sc[i] = if keep { v * LOG2E } else { NEG };
                    mx = mx.max(sc[i]);
                }
                let stt = &mut st[rr][w];
                let m_new = stt.m.max(mx);
                let rf = if m_new == NEG { 0.0 } else { m_new };
                let corr = (stt.m - rf).exp2();
                stt.m = m_new;
                stt.l *= corr;
                stt.acc.iter_mut().for_each(|a| *a *= corr);
                for (i, kk) in keys.enumerate() {
                    let p = (sc[i] - rf).exp2();
                    stt.l += p;
                    for (a, vv) in stt.acc.iter_mut().zip(&vt[kk * hd..][..hd]) {
                        *a += p * vv;
                    }
                }
            }
        }
    }
    for rr in 0..(r_end - r0) {
        let r = r0 + rr;
        let big_m = st[rr].iter().map(|x| x.m).fold(NEG, f32::max);
        let mref = if big_m == NEG { 0.0 } else { big_m };
        let mut l = 0f32;
        let mut acc = vec![0f32; hd];
        for x in &st[rr] {
            let f = (x.m - mref).exp2();
            l += x.l * f;
            acc.iter_mut().zip(&x.acc).for_each(|(a, b)| *a += b * f);
        }
        if direct {
            let (j, hh) = (r / grp, r % grp);
            let at = ((sq.q0 + j) * c.n_heads + g * grp + hh) * hd;
            for dd in 0..hd {
                o.out[at + dd] = if l > 0.0 { acc[dd] / l } else { 0.0 };
                o.writes[at + dd] += 1;
            }
        } else {
            let slot = ((s * c.n_kv + g) * e.pl.rd + r) * e.pl.splits + z;
            assert!(
                slot * 2 + 1 < e.pl.part_ml_floats,
                "partial slot {slot} outside the scratch"
            );
            assert!(!o.part_written[slot], "partial slot {slot} written twice");
            o.part_written[slot] = true;
            o.part_acc[slot * hd..][..hd].copy_from_slice(&acc);
            o.part_ml[slot * 2] = big_m;
            o.part_ml[slot * 2 + 1] = l;
        }
    }
    if decode && !direct {
        // The kernel's arrival count: splits of the row tile's whole key range.
        let (k0, k1) = e.key_range(&sq, r0, r_end);
        let nz = (k1 - 1) / e.pl.chunk - k0 / e.pl.chunk + 1;
        let at = (s * c.n_kv + g) * row_tiles + rt0;
        assert!(at < e.pl.counters, "counter {at} outside plan.counters");
        o.counters[at] += 1;
        assert!(o.counters[at] <= nz, "more arrivals than splits at {at}");
        if o.counters[at] == nz {
            // Last arrival: merge every row of the tile (combine asserts all partials exist).
            for r in r0..r_end {
                combine(e, o, r, g, s);
            }
            o.counters[at] = 0;
        }
    }
}

fn combine(e: &Emu<'_>, o: &mut Out, r: usize, g: usize, s: usize) {
    let c = e.c;
    let hd = c.hd;
    let Some(sq) = e.seq_ok(s) else { return };
    if sq.q_len > e.pl.qd {
        return;
    }
    let nrows = sq.q_len * e.pl.group;
    if r >= nrows {
        return;
    }
    let r0 = r / 16 * 16;
    let (klo, khi) = e.key_range(&sq, r0, (r0 + 16).min(nrows));
    let (z0, z1) = (klo / e.pl.chunk, (khi - 1) / e.pl.chunk);
    if z0 == z1 {
        return;
    }
    let base = ((s * c.n_kv + g) * e.pl.rd + r) * e.pl.splits;
    let slots: Vec<usize> = (z0..=z1).map(|z| base + z).collect();
    for &sl in &slots {
        assert!(
            o.part_written[sl],
            "combine reads partial slot {sl}, never written"
        );
    }
    let m = slots
        .iter()
        .map(|&sl| o.part_ml[sl * 2])
        .fold(NEG, f32::max);
    let mref = if m == NEG { 0.0 } else { m };
    let l: f32 = slots
        .iter()
        .map(|&sl| o.part_ml[sl * 2 + 1] * (o.part_ml[sl * 2] - mref).exp2())
        .sum();
    let (j, hh) = (r / e.pl.group, r % e.pl.group);
    let at = ((sq.q0 + j) * c.n_heads + g * e.pl.group + hh) * hd;
    for dd in 0..hd {
        let acc: f32 = slots
            .iter()
            .map(|&sl| o.part_acc[sl * hd + dd] * (o.part_ml[sl * 2] - mref).exp2())
            .sum();
        o.out[at + dd] = if l > 0.0 { acc / l } else { 0.0 };
        o.writes[at + dd] += 1;
    }
}

fn run_case(c: Case) {
    let mut seed = 0x5eed ^ (c.hd as u64) ^ ((c.n_heads as u64) << 8);
    let (nkv, hd, bs) = (c.n_kv, c.hd, c.bs);
    let need: Vec<usize> = c.seqs.iter().map(|&(_, kv)| kv.div_ceil(bs)).collect();
    let total: usize = need.iter().sum();
    let num_blocks = total + 2;
    // Blocks handed out in a scrambled order; table entries past the end point at a NaN block.
    let pool: Vec<usize> = (0..num_blocks).map(|i| (i * 7 + 3) % num_blocks).collect();
    let max_blocks = need.iter().max().unwrap() + 1;
    let mut tables = vec![pool[total] as i32; c.seqs.len() * max_blocks];
    let mut k = vec![f32::NAN; num_blocks * nkv * bs * hd];
    let mut v = k.clone();
    let (mut used, mut q_starts, mut kv_lens) = (0, vec![0i32], vec![]);
    for (si, &(q_len, kv_len)) in c.seqs.iter().enumerate() {
        for b in 0..need[si] {
            tables[si * max_blocks + b] = pool[used + b] as i32;
        }
        for pos in 0..kv_len {
            let blk = pool[used + pos / bs];
            for h in 0..nkv {
                let at = ((blk * nkv + h) * bs + pos % bs) * hd;
                for dd in 0..hd {
                    k[at + dd] = rng(&mut seed);
                    v[at + dd] = rng(&mut seed);
                }
            }
        }
        used += need[si];
        q_starts.push(q_starts[si] + q_len as i32);
        kv_lens.push(kv_len as i32);
    }
    let n_tokens = *q_starts.last().unwrap() as usize;
    let q: Vec<f32> = (0..n_tokens * c.n_heads * hd)
        .map(|_| rng(&mut seed))
        .collect();
    let p = AttnParams {
        n_heads: c.n_heads,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        causal: c.causal,
        window: (c.window > 0).then_some(c.window),
        softcap: (c.softcap > 0.0).then_some(c.softcap),
    };
    let max_q_len = c.seqs.iter().map(|x| x.0).max().unwrap() * c.loose;
    let bound_kv = c.seqs.iter().map(|x| x.1).max().unwrap() * c.loose;
    let pl = plan(&p, c.seqs.len(), max_q_len, bound_kv, c.sms);
    assert!(
        pl.splits * pl.chunk >= bound_kv && pl.chunk.is_multiple_of(64),
        "{pl:?}"
    );
    // The kernels' bound: also capped by the block tables' capacity.
    let max_kv_len = bound_kv.min(max_blocks * bs);
    let e = Emu {
        c: &c,
        q_starts,
        kv_lens,
        tables,
        max_blocks,
        num_blocks,
        n_tokens,
        max_q_len: max_q_len.min(n_tokens),
        max_kv_len,
        pl,
    };
    let d = Data { q, k, v };
    let n_out = n_tokens * c.n_heads * hd;
    let mut o = Out {
        out: vec![f32::NAN; n_out],
        writes: vec![0; n_out],
        part_acc: vec![f32::NAN; pl.part_acc_floats],
        part_ml: vec![f32::NAN; pl.part_ml_floats],
        part_written: vec![false; pl.part_ml_floats / 2],
        counters: vec![0; pl.counters],
    };
    let n_seqs = c.seqs.len();
    for s in 0..n_seqs {
        for g in 0..nkv {
            for bx in 0..pl.decode_row_tiles * pl.splits {
                cta(&e, &d, &mut o, true, pl.decode_row_tiles, bx, g, s);
            }
        }
    }
    // Every counter is back at 0 for the next call (graph replays need no memset).
    assert!(o.counters.iter().all(|&x| x == 0), "{:?}", o.counters);
    for s in 0..n_seqs {
        for g in 0..nkv {
            for bx in 0..pl.prefill_row_tiles {
                cta(&e, &d, &mut o, false, pl.prefill_row_tiles, bx, g, s);
            }
        }
    }
    // Every output element written exactly once, and equal to the naive softmax.
    let grp = c.n_heads / nkv;
    let mut worst = 0f64;
    for (si, &(q_len, kv_len)) in c.seqs.iter().enumerate() {
        for j in 0..q_len {
            let t = e.q_starts[si] as usize + j;
            let pos = kv_len - q_len + j;
            let lo = if c.window > 0 {
                (pos + 1).saturating_sub(c.window)
            } else {
                0
            };
            let hi = if c.causal { pos + 1 } else { kv_len };
            for h in 0..c.n_heads {
                let qv = &d.q[(t * c.n_heads + h) * hd..][..hd];
                let row = |key: usize| {
                    let blk = e.tables[si * max_blocks + key / bs] as usize;
                    ((blk * nkv + h / grp) * bs + key % bs) * hd
                };
                let sc: Vec<f64> = (lo..hi)
                    .map(|key| {
                        let dot: f64 = qv
                            .iter()
                            .zip(&d.k[row(key)..][..hd])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        let s = dot * p.scale as f64;
                        if c.softcap > 0.0 {
                            c.softcap as f64 * (s / c.softcap as f64).tanh()
                        } else {
                            s
                        }
                    })
                    .collect();
                let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = w.iter().sum();
                for dd in 0..hd {
                    let at = (t * c.n_heads + h) * hd + dd;
                    assert_eq!(
                        o.writes[at], 1,
                        "token {t} head {h} dim {dd} written {} times",
                        o.writes[at]
                    );
                    let exp: f64 = (lo..hi)
                        .zip(&w)
                        .map(|(key, wi)| wi * d.v[row(key) + dd] as f64)
                        .sum::<f64>()
                        / z;
                    worst = worst.max((o.out[at] as f64 - exp).abs());
                }
            }
        }
    }
    assert!(worst < 2e-5, "max |emulated − naive| = {worst:e} ({pl:?})");
    println!("ok: {:?} max err {worst:.2e}", pl);
}

const MIXED: [(usize, usize); 8] = [
    (1, 1),
    (1, 2900),
    (37, 37),
    (70, 1500),
    (1, 17),
    (19, 119),
    (16, 16),
    (1, 33),
];

fn base() -> Case {
    Case {
        seqs: MIXED.to_vec(),
        n_heads: 16,
        n_kv: 2,
        hd: 64,
        bs: 16,
        causal: true,
        window: 0,
        softcap: 0.0,
        loose: 1,
        sms: 132,
    }
}

#[test]
fn emulated_kernels_cover_every_row_once_and_match_softmax() {
    run_case(base());
    run_case(Case {
        window: 100,
        sms: 1000,
        ..base()
    });
    run_case(Case {
        softcap: 5.0,
        loose: 2,
        sms: 4,
        ..base()
    });
    run_case(Case {
        seqs: vec![
            (1, 1),
            (1, 31),
            (1, 32),
            (1, 33),
            (1, 517),
            (1, 1024),
            (1, 2048),
            (1, 3999),
        ],
        n_heads: 8,
        n_kv: 1,
        bs: 32,
        loose: 2,
        ..base()
    });
    run_case(Case {
        seqs: vec![(200, 200), (65, 130), (1, 64)],
        n_heads: 8,
        n_kv: 1,
        bs: 64,
        ..base()
    });
    run_case(Case {
        seqs: vec![(70, 70), (33, 200), (1, 300), (1, 64), (1, 65)],
        n_heads: 8,
        n_kv: 4,
        hd: 256,
        window: 64,
        softcap: 20.0,
        ..base()
    });
    run_case(Case {
        seqs: vec![(10, 10), (5, 40), (1, 7)],
        n_heads: 4,
        n_kv: 4,
        causal: false,
        ..base()
    });
    // MQA with 32 query heads: the decode rows of one token span two 16-row tiles.
    run_case(Case {
        seqs: vec![(1, 700), (2, 300), (1, 5)],
        n_heads: 32,
        n_kv: 1,
        window: 200,
        ..base()
    });
}

#[test]
fn every_variant_fits_its_merge_buffer_and_hopper_smem() {
    for &(mode, hd, ns, bc, _, _) in &VARIANTS {
        for kv in [DType::F32, DType::F16, DType::BF16] {
            let smem = smem_bytes(mode, hd, kv, ns, bc);
            if mode == Mode::Decode {
                // The warp merge reuses the K/V stages: [4][16][hd] acc + [4][16][2] (m, l).
                let stages = 2 * (hd + 8) * ns * 2 * bc;
                assert!(
                    4 * 16 * hd * 4 + 4 * 16 * 2 * 4 <= stages,
                    "{mode:?} {hd} {ns}"
                );
            }
            // Every (mode, hd, dtype) has a variant on H100/H200 (227 KB) and on sm_86/89 (99 KB).
            assert!(variant(mode, hd, kv, 232448).is_ok());
            assert!(variant(mode, hd, kv, 101376).is_ok(), "{mode:?} {hd} {kv}");
            assert!(smem <= 232448, "{mode:?} {hd} {ns} {kv}: {smem}");
        }
    }
    assert!(variant(Mode::Decode, 96, DType::F16, 232448).is_err());
    assert!(matches!(
        variant(Mode::Prefill, 256, DType::BF16, 48 << 10),
        Err(Error::Limit { .. })
    ));
    assert_eq!(std::mem::size_of::<AttnArgs>(), 168);
}

/// Causal attention of `n_heads` query heads over `n_kv` KV heads of `hd`, no window or cap.
fn causal_params(n_heads: usize, n_kv: usize, hd: usize) -> AttnParams {
    AttnParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.1,
        causal: true,
        window: None,
        softcap: None,
    }
}

#[test]
fn plan_splits_long_decode_and_skips_scratch_for_big_batches() {
    let p = causal_params(32, 8, 128);
    let one = plan(&p, 1, 1, 4096, 132);
    assert_eq!(
        (one.group, one.qd, one.rd, one.decode_row_tiles),
        (4, 4, 16, 1)
    );
    assert!(one.splits > 1 && one.scratch_bytes() > 0 && one.prefill_row_tiles == 0);
    // 132 SMs × 3 resident CTAs: batch 1 fills the slots with 8 KV heads × 32 chunks of 128
    // keys; batch 32 (256 CTAs) is one wave without splitting; at 1k, 64-key chunks.
    let h100 = plan(&p, 1, 1, 4096, 396);
    assert_eq!((h100.splits, h100.chunk), (32, 128));
    assert_eq!(
        (
            plan(&p, 1, 1, 1024, 264).splits,
            plan(&p, 1, 1, 1024, 264).chunk
        ),
        (16, 64)
    );
    let many = plan(&p, 32, 1, 4096, 396);
    assert_eq!((many.splits, many.scratch_bytes()), (1, 0));
    let prefill = plan(&p, 1, 4096, 4096, 132);
    assert_eq!(prefill.prefill_row_tiles, 4096 * 4 / 64);
}

#[test]
fn plan_scratch_at_a_bound_covers_every_shorter_context() {
    // The planner sizes attention scratch once, at the longest context, for each batch-size
    // bucket; every step with fewer keys must fit in it. The split count itself is not monotone
    // (264 slots, one sequence: 17 splits at 2128 keys, 33 at 2112).
    let p = causal_params(32, 8, 128);
    assert_eq!(
        (
            plan(&p, 1, 1, 2128, 264).splits,
            plan(&p, 1, 1, 2112, 264).splits
        ),
        (17, 33)
    );
    for slots in [132, 228, 264, 396] {
        for n_seqs in [1, 2, 3, 4, 8] {
            for bound in (64..=8192).step_by(48) {
                let at_bound = plan(&p, n_seqs, 1, bound, slots).scratch_bytes();
                for kv in (1..=bound).step_by(13) {
                    let need = plan(&p, n_seqs, 1, kv, slots).scratch_bytes();
                    assert!(
                        need <= at_bound,
                        "slots {slots}, {n_seqs} seqs: {kv} keys need {need} B, the plan at \
                         {bound} keys has {at_bound} B"
                    );
                }
            }
        }
    }
}

#[test]
fn merge_counters_fit_the_backend_buffer() {
    // A split needs at least two resident slots per row tile, so plan.counters ≤ slots / 2 and
    // the per-backend buffer (COUNTERS_PER_SM per SM, ≥ the resident CTAs per SM) holds them.
    for (n_heads, n_kv, hd) in [(32, 8, 128), (32, 1, 64), (8, 8, 256), (64, 4, 128)] {
        let p = causal_params(n_heads, n_kv, hd);
        for sms in [1, 46, 132] {
            for per_sm in 1..=COUNTERS_PER_SM {
                let slots = sms * per_sm;
                for n_seqs in [1, 2, 3, 7, 32, 200] {
                    for (q, kv) in [(1, 1), (1, 4096), (3, 100_000), (16, 20_000)] {
                        let pl = plan(&p, n_seqs, q, kv, slots);
                        let need = n_seqs * n_kv * pl.decode_row_tiles;
                        if pl.splits > 1 && pl.decode_row_tiles > 0 {
                            assert_eq!(pl.counters, need);
                            assert!(2 * pl.counters <= slots, "{pl:?} slots {slots}");
                            assert!(pl.counters <= sms * COUNTERS_PER_SM);
                        } else {
                            assert_eq!(pl.counters, 0, "{pl:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn decode_stages_paired_forms_and_only_where_it_fits() {
    for kv in [DType::F32, DType::F16] {
        for paired in [false, true] {
            assert_eq!(
                (decode_stages(1, kv, paired), decode_stages(32, kv, paired)),
                (3, 3)
            );
        }
    }
    assert_eq!(
        (
            decode_stages(1, DType::BF16, false),
            decode_stages(2, DType::BF16, false)
        ),
        (3, 2)
    );
    assert_eq!(
        (
            decode_stages(1, DType::BF16, true),
            decode_stages(2, DType::BF16, true)
        ),
        (2, 2)
    );
    if std::env::var_os("KILN_ATTN_PAIR").is_none() {
        assert!(!decode_paired(64) && !decode_paired(192));
        assert!(decode_paired(256) && decode_paired(4096));
    }
    for kv in [DType::F32, DType::F16, DType::BF16] {
        let (f16, bf16) = (kv != DType::BF16, kv == DType::BF16);
        for paired in [false, true] {
            let sfx = if paired { "p" } else { "" };
            // H100/H200 (227 KB opt-in): hd128 has both rings.
            let three = decode_variant(128, kv, 232448, 3, paired).unwrap();
            let two = decode_variant(128, kv, 232448, 2, paired).unwrap();
            assert!(three.name.ends_with(&format!("_s3{sfx}")), "{three:?}");
            assert!(two.name.ends_with(&format!("_s2{sfx}")), "{two:?}");
            assert_eq!(three.name.contains("_bf16_"), bf16);
            assert_eq!(two.name.contains("_f16_"), f16);
            assert_eq!(three.smem, smem_bytes(Mode::Decode, 128, kv, 3, 64));
            // A 99 KB device cannot hold NS = 3 (113 KB for bf16, 109 KB for f16): NS = 2.
            assert!(
                decode_variant(128, kv, 101376, 3, paired)
                    .unwrap()
                    .name
                    .ends_with(&format!("_s2{sfx}"))
            );
        }
        // Head sizes without an NS = 3 kernel fall back to `variant`'s choice.
        assert_eq!(
            decode_variant(256, kv, 232448, 3, false).unwrap(),
            variant(Mode::Decode, 256, kv, 232448).unwrap()
        );
    }
    assert!(decode_variant(96, DType::F16, 232448, 3, true).is_err());
    assert!(decode_variant(128, DType::Q8_0, 232448, 3, false).is_err());
}

/// Every decode kernel of VARIANTS has its paired form (the same name + `p`), and attention.cu
/// instantiates both (ATTN_DECODE(hd, ns) emits the pair).
#[test]
fn every_decode_kernel_has_a_paired_form() {
    let src = ATTENTION.source;
    for &(m, hd, ns, _, f16_name, bf16_name) in &VARIANTS {
        if m != Mode::Decode {
            continue;
        }
        assert!(
            src.contains(&format!("ATTN_DECODE({hd}, {ns})")),
            "attention.cu lacks ATTN_DECODE({hd}, {ns})"
        );
        for name in [f16_name, bf16_name] {
            assert_eq!(paired_name(name), format!("{name}p"), "{name}");
        }
    }
}
