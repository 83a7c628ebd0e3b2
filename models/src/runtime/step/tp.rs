//! The layers of a tensor-parallel step: every rank enqueues its share of a sub-block, the
//! partial sums meet in the group's all-reduce, and the residual add and the next norm follow.
//! Where the group fuses them (`Collective::all_reduce_add_rms_norm`: CUDA's peer-to-peer
//! all-reduce) the all-reduce, the add and the norm are one kernel per rank.

use kiln_core::{Collective, ResidualNorm, Tensor};

use super::{Runtime, at_layer, collect};
use crate::arch::block::{Fwd, Residual};
use crate::error::{ModelError, Result};

impl Runtime {
    /// Every layer of a tensor-parallel step (after the embedding).
    pub(super) fn tensor_layers(&self, group: &dyn Collective, fwds: &[Fwd<'_>]) -> Result<()> {
        let n_layers = self.cfg.n_layers;
        for (s, f) in self.stages.iter().zip(fwds) {
            let (lw, _) = self.layer(s, 0)?;
            f.attn_norm(lw).map_err(|e| at_layer(e, 0))?;
        }
        for l in 0..n_layers {
            let at = |e| at_layer(e, l);
            let mut outs = Vec::with_capacity(fwds.len());
            for (r, (s, f)) in self.stages.iter().zip(fwds).enumerate() {
                let (lw, spec) = self.layer(s, l)?;
                outs.push(f.attn_out(lw, spec, &self.kv.layer_on(l, r)?))
            }
            let outs = collect(outs).map_err(at)?;
            let res = self.residuals(fwds, |s, f| Ok(f.attn_residual(self.layer(s, l)?.0)))?;
            reduce_residual(group, fwds, &outs, &res).map_err(at)?;
            // MoE: rank 0's router logits on every rank (the others' are zeros).
            let mut routes = Vec::with_capacity(fwds.len());
            for (s, f) in self.stages.iter().zip(fwds) {
                routes.push(f.ffn_route(self.layer(s, l)?.0));
            }
            let routes = collect(routes).map_err(at)?;
            if let Some(r) = routes.into_iter().collect::<Option<Vec<_>>>() {
                reduce(group, fwds, &r).map_err(at)?;
            }
            let mut ffn = Vec::with_capacity(fwds.len());
            for (s, f) in self.stages.iter().zip(fwds) {
                ffn.push(f.ffn_experts(self.layer(s, l)?.0));
            }
            let ffn = collect(ffn).map_err(at)?;
            let res = self.residuals(fwds, |s, f| {
                let next = if l + 1 < n_layers {
                    Some(self.layer(s, l + 1)?.0)
                } else {
                    None
                };
                Ok(f.ffn_residual(self.layer(s, l)?.0, next))
            })?;
            reduce_residual(group, fwds, &ffn, &res).map_err(at)?;
        }
        Ok(())
    }

    /// One residual step per rank.
    fn residuals<'a>(
        &'a self,
        fwds: &[Fwd<'a>],
        f: impl Fn(&'a super::Stage, &Fwd<'a>) -> Result<Residual<'a>>,
    ) -> Result<Vec<Residual<'a>>> {
        self.stages
            .iter()
            .zip(fwds)
            .map(|(s, fw)| f(s, fw))
            .collect()
    }
}

/// All-reduce every rank's partial sum `parts[r]`, then apply its residual step: fused into one
/// collective call where the group can, else the all-reduce then each rank's add (+ norm).
fn reduce_residual<'a>(
    group: &dyn Collective,
    fwds: &[Fwd<'a>],
    parts: &[&'a Tensor],
    res: &[Residual<'a>],
) -> Result<()> {
    let views = fwds
        .iter()
        .zip(parts)
        .zip(res)
        .map(|((f, p), r)| f.residual_views(r, p))
        .collect::<Result<Option<Vec<ResidualNorm<'_>>>>>()?;
    if let (Some(views), Some(f)) = (views, fwds.first()) {
        let fused = group
            .all_reduce_add_rms_norm(&views, f.cfg.eps)
            .map_err(|e| ModelError::backend("tensor-parallel all-reduce + residual + norm", e))?;
        if fused {
            return Ok(());
        }
    }
    reduce(group, fwds, parts)?;
    for ((f, p), r) in fwds.iter().zip(parts).zip(res) {
        f.residual(r, p)?;
    }
    Ok(())
}

/// All-reduce the step's rows of every rank's partial sum.
fn reduce(group: &dyn Collective, fwds: &[Fwd<'_>], parts: &[&Tensor]) -> Result<()> {
    let views = fwds
        .iter()
        .zip(parts)
        .map(|(f, t)| f.step_rows(t))
        .collect::<Result<Vec<_>>>()?;
    group
        .all_reduce_sum(&views)
        .map_err(|e| ModelError::backend("tensor-parallel all-reduce", e))
}
