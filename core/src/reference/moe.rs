//! `moe`: routed expert FFN, out[t] = Σ_k w_k · down_e(act(gate_e·x) ⊙ up_e·x), e = the k-th
//! selected expert of token t.
//!
//! Buffers: x f32 `[n_tokens, dim]`, router_logits f32 `[n_tokens, experts]`, out f32
//! `[n_tokens, dim]`; expert weights gate, up `[experts, ff, dim]`, down `[experts, dim, ff]`
//! (any weight dtypes, possibly different from each other).
//!
//! Routing (backend.rs `MoeGating`), per token, in f64: experts are ranked by logit, ties
//! broken by the lower expert index, and the first top_k kept.
//! - SoftmaxTopK: softmax over all experts, take the top-k probabilities, divide by their sum
//!   if `renormalize`.
//! - TopKSoftmax: softmax over the top-k logits.
//!
//! Compute: experts one after another; the tokens routed to an expert are gathered into one
//! matrix so its gate/up/down rows are dequantized once per call (by `matmul::gemm`, parallel
//! over weight rows); the weighted sum over the k experts of a token is taken in f64 in rank
//! order. Needs no scratch. Cost: 6 · n_tokens · top_k · ff · dim FLOPs.

use super::act::glu_slices;
use super::matmul::gemm;
use super::{HostWeight, ReferenceBackend};
use crate::backend::{MoeExperts, MoeGating, MoeRouting, OpKind, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut, Weight};

fn err(msg: String) -> Error {
    Error::shape(OpKind::Moe, msg)
}

/// The top_k (expert, weight) pairs of one token's router logits, best first.
pub(super) fn route(logits: &[f32], r: &MoeRouting) -> Result<Vec<(usize, f64)>> {
    if let Some(e) = logits.iter().position(|l| !l.is_finite()) {
        return Err(err(format!("router logit of expert {e} is {}", logits[e])));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Descending logit, ascending index on ties (a stable sort keeps index order).
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(r.top_k);
    let l = |e: usize| logits[e] as f64;
    let weights: Vec<f64> = match r.gating {
        MoeGating::SoftmaxTopK { renormalize } => {
            let max = logits
                .iter()
                .map(|&x| x as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
            let p: Vec<f64> = order.iter().map(|&e| (l(e) - max).exp() / z).collect();
            let s: f64 = p.iter().sum();
            if renormalize {
                p.iter().map(|x| x / s).collect()
            } else {
                p
            }
        }
        MoeGating::TopKSoftmax => {
            let max = order.first().map_or(0.0, |&e| l(e));
            let e: Vec<f64> = order.iter().map(|&x| (l(x) - max).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        }
    };
    Ok(order.into_iter().zip(weights).collect())
}

/// One expert's rows of a 3-D weight `[experts, rows, cols]`.
fn expert_bytes<'a>(w: &Weight, data: &'a [u8], e: usize) -> Result<&'a [u8]> {
    let s = w.shape();
    let per = w.dtype().bytes_for(s.dim(1) * s.dim(2))?;
    data.get(e * per..(e + 1) * per)
        .ok_or_else(|| err(format!("expert {e} lies outside the weight {w:?}")))
}

/// Validate the expert weights; returns (experts, ff, dim).
fn check_experts(b: &ReferenceBackend, ex: &MoeExperts<'_>) -> Result<(usize, usize, usize)> {
    for w in [ex.gate, ex.up, ex.down] {
        b.check_dev(OpKind::Moe, w.device())?;
        if w.shape().rank() != 3 {
            return Err(err(format!(
                "expert weight {w:?} must be 3-D [experts, rows, cols]"
            )));
        }
    }
    let g = ex.gate.shape();
    let (e, ff, dim) = (g.dim(0), g.dim(1), g.dim(2));
    if ex.up.shape() != g {
        return Err(err(format!("up {:?} must have gate's shape {g}", ex.up)));
    }
    let d = ex.down.shape();
    if d.dims() != [e, dim, ff] {
        return Err(err(format!(
            "down {:?} must be [experts {e}, dim {dim}, ff {ff}]",
            ex.down
        )));
    }
    if e == 0 || ff == 0 || dim == 0 {
        return Err(err(format!("expert weights {g} are empty")));
    }
    Ok((e, ff, dim))
}

/// The `moe` op.
pub(super) fn moe(
    b: &ReferenceBackend,
    x: View<'_>,
    router_logits: View<'_>,
    ex: &MoeExperts<'_>,
    r: &MoeRouting,
    scratch: Option<ViewMut<'_>>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Moe;
    for d in [x.device(), router_logits.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    if let Some(s) = scratch {
        b.check_dev(op, s.device())?;
    }
    for (what, dt) in [
        ("x", x.dtype()),
        ("router_logits", router_logits.dtype()),
        ("out", out.dtype()),
    ] {
        check::dtype(op, what, dt, &[DType::F32])?;
    }
    let (n_exp, ff, dim) = check_experts(b, ex)?;
    if r.top_k == 0 || r.top_k > n_exp {
        return Err(err(format!("top_k {} must be in 1..={n_exp}", r.top_k)));
    }
    check::eq(op, "x last dim vs expert dim", x.shape().last(), dim)?;
    let n_tokens = x.shape().rows();
    check::eq(
        op,
        "router_logits last dim vs experts",
        router_logits.shape().last(),
        n_exp,
    )?;
    check::eq(
        op,
        "router_logits rows vs tokens",
        router_logits.shape().rows(),
        n_tokens,
    )?;
    check::eq(op, "out last dim vs dim", out.shape().last(), dim)?;
    check::eq(op, "out elements vs x elements", out.numel(), x.numel())?;
    let (gw, uw, dw) = (
        HostWeight::of(ex.gate)?,
        HostWeight::of(ex.up)?,
        HostWeight::of(ex.down)?,
    );

    let a = b.access();
    let xs = a.f32s(&x)?;
    let logits = a.f32s(&router_logits)?;
    let o = a.f32s_mut(&out)?;
    let k = r.top_k;
    let routes = logits
        .chunks_exact(n_exp)
        .map(|l| route(l, r))
        .collect::<Result<Vec<_>>>()?;
    // Which (token, rank) pairs each expert serves, in token order.
    let mut served: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_exp];
    for (t, rt) in routes.iter().enumerate() {
        for (rank, &(e, _)) in rt.iter().enumerate() {
            served[e].push((t, rank));
        }
    }
    // ys `[n_tokens, top_k, dim]`: expert outputs before weighting.
    let mut ys = vec![0f32; n_tokens * k * dim];
    let (mut xe, mut g, mut u, mut h, mut y) = (vec![], vec![], vec![], vec![], vec![]);
    for (e, list) in served.iter().enumerate() {
        let ne = list.len();
        if ne == 0 {
            continue;
        }
        // xe `[ne, dim]`, g, u, h `[ne, ff]`, y `[ne, dim]`
        xe.clear();
        for &(t, _) in list {
            xe.extend_from_slice(&xs[t * dim..(t + 1) * dim]);
        }
        for v in [&mut g, &mut u, &mut h] {
            v.resize(ne * ff, 0f32);
        }
        y.resize(ne * dim, 0f32);
        gemm(
            &xe,
            ne,
            dim,
            expert_bytes(ex.gate, &gw.data, e)?,
            ex.gate.dtype(),
            ff,
            &mut g,
        )?;
        gemm(
            &xe,
            ne,
            dim,
            expert_bytes(ex.up, &uw.data, e)?,
            ex.up.dtype(),
            ff,
            &mut u,
        )?;
        glu_slices(&g, &u, ex.act, &mut h);
        gemm(
            &h,
            ne,
            ff,
            expert_bytes(ex.down, &dw.data, e)?,
            ex.down.dtype(),
            dim,
            &mut y,
        )?;
        for (i, &(t, rank)) in list.iter().enumerate() {
            ys[(t * k + rank) * dim..][..dim].copy_from_slice(&y[i * dim..(i + 1) * dim]);
        }
    }
    for (t, rt) in routes.iter().enumerate() {
        for d in 0..dim {
            let s: f64 = rt
                .iter()
                .enumerate()
                .map(|(rank, &(_, w))| w * ys[(t * k + rank) * dim + d] as f64)
                .sum();
            o[t * dim + d] = s as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "moe_tests.rs"]
mod tests;
