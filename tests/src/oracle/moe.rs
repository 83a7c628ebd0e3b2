//! moe: out[t] = Σ_k w_k · expert_k(x[t]), expert e(x) = down_e · (act(gate_e·x) ⊙ up_e·x);
//! gate, up `[experts, ff, dim]`, down `[experts, dim, ff]`.
//!
//! Routing (from `MoeGating`): SoftmaxTopK: softmax over all experts, the top k, optionally
//! divided by their sum; TopKSoftmax: the top-k logits, softmax over those k.
//!
//! Ties: the contract does not say which of several equal logits wins the last top-k places,
//! so the oracle returns every valid selection ("candidates") and the case accepts the output
//! closest to one of them, token by token.

use kiln_core::{Activation, MoeGating, MoeRouting};

use super::glu::act;
use super::matmul::matvec_f64;

/// Dequantized expert weights.
pub struct Experts<'a> {
    pub gate: &'a [f32],
    pub up: &'a [f32],
    pub down: &'a [f32],
    pub n_experts: usize,
    pub ff: usize,
    pub dim: usize,
    pub act: Activation,
}

impl Experts<'_> {
    /// expert e applied to x `[dim]` → `[dim]`.
    pub fn apply(&self, e: usize, x: &[f32]) -> Vec<f64> {
        let (ff, dim) = (self.ff, self.dim);
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let g = matvec_f64(&xd, &self.gate[e * ff * dim..(e + 1) * ff * dim], ff, dim);
        let u = matvec_f64(&xd, &self.up[e * ff * dim..(e + 1) * ff * dim], ff, dim);
        let h: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| act(self.act, g) * u)
            .collect();
        matvec_f64(&h, &self.down[e * dim * ff..(e + 1) * dim * ff], dim, ff)
    }
}

/// Every valid selection for one token's logits: (expert, weight) pairs.
pub fn routes(logits: &[f32], r: &MoeRouting) -> Vec<Vec<(usize, f64)>> {
    let k = r.top_k;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let edge = logits[order[k - 1]];
    let sure: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&e| logits[e] > edge)
        .collect();
    let tied: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&e| logits[e] == edge)
        .collect();
    let mut picks = Vec::new();
    combinations(&tied, k - sure.len(), &mut Vec::new(), &mut picks);
    assert!(
        picks.len() <= 512,
        "oracle: {} tie selections, make the case smaller",
        picks.len()
    );
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let p_all: Vec<f64> = logits.iter().map(|&l| (l as f64 - mx).exp()).collect();
    let z_all: f64 = p_all.iter().sum();
    picks
        .into_iter()
        .map(|extra| {
            let sel: Vec<usize> = sure.iter().copied().chain(extra).collect();
            match r.gating {
                MoeGating::SoftmaxTopK { renormalize } => {
                    let z = if renormalize {
                        sel.iter().map(|&e| p_all[e]).sum()
                    } else {
                        z_all
                    };
                    sel.iter().map(|&e| (e, p_all[e] / z)).collect()
                }
                MoeGating::TopKSoftmax => {
                    let m = sel
                        .iter()
                        .map(|&e| logits[e] as f64)
                        .fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sel.iter().map(|&e| (logits[e] as f64 - m).exp()).sum();
                    sel.iter()
                        .map(|&e| (e, (logits[e] as f64 - m).exp() / z))
                        .collect()
                }
            }
        })
        .collect()
}

fn combinations(from: &[usize], k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    if k == 0 {
        out.push(cur.clone());
        return;
    }
    for i in 0..from.len() {
        if from.len() - i < k {
            break;
        }
        cur.push(from[i]);
        combinations(&from[i + 1..], k - 1, cur, out);
        cur.pop();
    }
}

/// Per token, the output rows `[dim]` of every valid routing.
pub fn moe(x: &[f32], logits: &[f32], ex: &Experts<'_>, r: &MoeRouting) -> Vec<Vec<Vec<f64>>> {
    let (dim, ne) = (ex.dim, ex.n_experts);
    x.chunks_exact(dim)
        .zip(logits.chunks_exact(ne))
        .map(|(xt, lt)| {
            let mut cache: Vec<Option<Vec<f64>>> = vec![None; ne];
            routes(lt, r)
                .into_iter()
                .map(|sel| {
                    let mut out = vec![0f64; dim];
                    for (e, w) in sel {
                        let y = cache[e].get_or_insert_with(|| ex.apply(e, xt));
                        for (o, v) in out.iter_mut().zip(y.iter()) {
                            *o += w * v;
                        }
                    }
                    out
                })
                .collect()
        })
        .collect()
}

/// Choose, token by token, the candidate closest to the actual output; returns the expected
/// `[n_tokens, dim]` and how many tokens had more than one candidate.
pub fn pick(actual: &[f32], candidates: &[Vec<Vec<f64>>], dim: usize) -> (Vec<f64>, usize) {
    let mut ambiguous = 0;
    let mut out = Vec::with_capacity(actual.len());
    for (t, cands) in candidates.iter().enumerate() {
        let a = &actual[t * dim..(t + 1) * dim];
        let err = |c: &Vec<f64>| -> f64 {
            let e: f64 = c.iter().zip(a).map(|(e, &a)| (a as f64 - e).powi(2)).sum();
            if e.is_nan() { f64::INFINITY } else { e }
        };
        let best = cands
            .iter()
            .min_by(|p, q| err(p).total_cmp(&err(q)))
            .expect("at least one routing");
        if cands.len() > 1 {
            ambiguous += 1;
        }
        out.extend_from_slice(best);
    }
    (out, ambiguous)
}
