//! Paged attention, written from `AttnParams`, `SeqBatch` and `PagedKv` docs.

use kiln_core::AttnParams;

/// One sequence of the batch: its query rows `q_start..q_start+q_len`, its KV length
/// (including this step's tokens) and its block table (`blocks[p / block_size]` holds
/// position p).
#[derive(Clone, Debug)]
pub struct Seq {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub blocks: Vec<usize>,
}

/// q `[n_tokens, n_heads, head_dim]`; k, v: cache values `[num_blocks, n_kv_heads, block_size,
/// head_dim]` as f32 (already rounded to the cache dtype). Returns out `[n_tokens, n_heads,
/// head_dim]`.
///
/// Query j of sequence s sits at position kv_len − q_len + j. Score with key t:
/// scale·q·k, then softcap·tanh(score/softcap) if set; key t is masked if causal and t > pos,
/// or with window W if t ≤ pos − W. Softmax over the unmasked keys, weighted sum of V.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    block_size: usize,
    seqs: &[Seq],
    p: &AttnParams,
) -> Vec<f64> {
    let (nh, nkv, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    let group = nh / nkv;
    let n_tokens = q.len() / (nh * hd);
    let mut out = vec![0f64; n_tokens * nh * hd];
    // Element range of position `pos` of KV head `kvh` in the cache.
    let kv_at = |pos: usize, blocks: &[usize], kvh: usize| -> std::ops::Range<usize> {
        let blk = blocks[pos / block_size];
        let row = pos % block_size;
        let base = ((blk * nkv + kvh) * block_size + row) * hd;
        base..base + hd
    };
    for s in seqs {
        for j in 0..s.q_len {
            let pos = s.kv_len - s.q_len + j;
            let tok = s.q_start + j;
            for h in 0..nh {
                let kvh = h / group;
                let qv = &q[(tok * nh + h) * hd..(tok * nh + h + 1) * hd];
                let mut keys = Vec::new();
                let mut scores = Vec::new();
                for t in 0..s.kv_len {
                    if p.causal && t > pos {
                        continue;
                    }
                    if p.window.is_some_and(|w| t + w <= pos) {
                        continue;
                    }
                    let kr = kv_at(t, &s.blocks, kvh);
                    let dot: f64 = qv
                        .iter()
                        .zip(&k[kr])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    let mut sc = p.scale as f64 * dot;
                    if let Some(c) = p.softcap {
                        let c = c as f64;
                        sc = c * (sc / c).tanh();
                    }
                    keys.push(t);
                    scores.push(sc);
                }
                assert!(
                    !keys.is_empty(),
                    "oracle: query at position {pos} sees no key"
                );
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ws: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let sum: f64 = ws.iter().sum();
                let o = &mut out[(tok * nh + h) * hd..(tok * nh + h + 1) * hd];
                for (&t, &w) in keys.iter().zip(&ws) {
                    let vr = kv_at(t, &s.blocks, kvh);
                    for (od, &vv) in o.iter_mut().zip(&v[vr]) {
                        *od += w / sum * vv as f64;
                    }
                }
            }
        }
    }
    out
}
