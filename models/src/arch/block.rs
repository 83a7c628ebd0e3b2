//! The decoder block as backend ops, for all seven architectures (MODELS.md §1):
//!
//! ```text
//! h = norm(x);  q, k, v = h·Wq (+bq), h·Wk (+bk), h·Wv (+bv)   (one matmul_many without biases)
//! q, k = head_norm(q), head_norm(k)          (qwen3, qwen3moe, gemma3)
//! q, k = rope(q), rope(k);  cache ← k, v
//! o = attention(q, cache)·Wo (+bo);  o = norm(o) (gemma3);  x = x + o
//! h = norm(x);  f = ffn(h) or moe(h);  f = norm(f) (gemma3);  x = x + f
//! ```
//!
//! [`Fwd`] holds one step's shape (n rows, the attention batch) and the plan's buffers; its
//! helpers narrow every buffer to the step's rows, so a step enqueues ops and allocates nothing.

use kiln_core::{
    Backend, MoeExperts, MoeRouting, PagedKv, ResidualNorm, RopeParams, SeqBatch, Shape, Tensor,
    View, ViewMut, Weight,
};

use crate::arch::{LayerSpec, ModelConfig};
use crate::error::{ModelError, Result};
use crate::runtime::plan::{Plan, attn_params};
use crate::runtime::weights::{Ffn, LayerWeights, Param, Weights};

/// The residual step after a sub-block: sum = res + post_norm(part), then h = norm(sum)
/// when `norm` is set.
pub(crate) struct Residual<'a> {
    res: &'a Tensor,
    sum: &'a Tensor,
    post: Option<Param>,
    norm: Option<Param>,
}

/// One step's forward context.
pub(crate) struct Fwd<'a> {
    pub b: &'a dyn Backend,
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
    pub p: &'a Plan,
    /// Rows (tokens) of this step.
    pub n: usize,
    pub batch: SeqBatch<'a>,
}

fn op(what: &'static str) -> impl Fn(kiln_core::Error) -> ModelError {
    move |e| ModelError::backend(what, e)
}

impl<'a> Fwd<'a> {
    /// The first `rows` rows of `t`.
    fn rows(&self, t: &'a Tensor, rows: usize) -> Result<View<'a>> {
        t.view().narrow(0, rows).map_err(op("view"))
    }
    fn rows_mut(&self, t: &'a Tensor, rows: usize) -> Result<ViewMut<'a>> {
        t.view_mut().narrow(0, rows).map_err(op("view"))
    }
    fn x(&self, t: &'a Tensor) -> Result<View<'a>> {
        self.rows(t, self.n)
    }
    fn out(&self, t: &'a Tensor) -> Result<ViewMut<'a>> {
        self.rows_mut(t, self.n)
    }
    fn param(&self, p: Param) -> Result<View<'a>> {
        self.w
            .params
            .view(p.offset, Shape::d1(p.len), kiln_core::DType::F32)
            .map_err(op("parameter view"))
    }

    /// out = norm(x)·w over `rows` rows.
    fn norm_rows(&self, x: &'a Tensor, w: Param, out: &'a Tensor, rows: usize) -> Result<()> {
        let (x, o) = (self.rows(x, rows)?, self.rows_mut(out, rows)?);
        self.b
            .rms_norm(x, self.param(w)?, self.cfg.eps, o)
            .map_err(op("rms_norm"))
    }
    fn norm(&self, x: &'a Tensor, w: Param, out: &'a Tensor) -> Result<()> {
        self.norm_rows(x, w, out, self.n)
    }

    /// x·Wᵀ (+ bias) into `pair[0]` (through `pair[1]` when there is a bias).
    fn linear(
        &self,
        x: &'a Tensor,
        w: &Weight,
        bias: Option<Param>,
        pair: &'a [Tensor; 2],
    ) -> Result<&'a Tensor> {
        match bias {
            None => self.b.matmul(self.x(x)?, w, self.out(&pair[0])?),
            Some(bias) => {
                self.b
                    .matmul(self.x(x)?, w, self.out(&pair[1])?)
                    .map_err(op("matmul"))?;
                self.b
                    .add_bias(self.x(&pair[1])?, self.param(bias)?, self.out(&pair[0])?)
            }
        }
        .map_err(op("linear"))?;
        Ok(&pair[0])
    }

    /// Per-head RMSNorm of `pair[0]` (`heads` heads) into `pair[1]`, when `w` is given.
    fn head_norm(
        &self,
        t: &'a Tensor,
        w: Option<Param>,
        pair: &'a [Tensor; 2],
        heads: usize,
    ) -> Result<&'a Tensor> {
        let Some(w) = w else { return Ok(t) };
        let hd = self.cfg.head_dim;
        let shape = Shape::d2(self.n * heads, hd);
        let x = self.x(t)?.reshape(shape).map_err(op("view"))?;
        let o = self.out(&pair[1])?.reshape(shape).map_err(op("view"))?;
        self.b
            .rms_norm(x, self.param(w)?, self.cfg.eps, o)
            .map_err(op("q/k norm"))?;
        Ok(&pair[1])
    }

    /// out = a + b.
    fn add(&self, a: &'a Tensor, b: &'a Tensor, out: &'a Tensor) -> Result<()> {
        self.b
            .add(self.x(a)?, self.x(b)?, self.out(out)?)
            .map_err(op("add"))
    }

    /// x[0] = scale · embed[ids].
    pub fn embed(&self) -> Result<()> {
        let ids = self.p.staging.view(self.p.staging.ids, self.n)?;
        let table =
            self.w.embed.as_ref().ok_or_else(|| {
                ModelError::Runtime(format!("{} holds no embedding", self.b.id()))
            })?;
        self.b
            .embed(ids, table, self.cfg.embed_scale, self.out(&self.p.x[0])?)
            .map_err(op("embed"))
    }

    /// One decoder layer: x[0] → x[1] → x[0]. On entry h holds this layer's norm(x[0])
    /// ([`Self::attn_norm`] for the first layer of a device, else the previous layer's
    /// residual); `next` (the following layer, when this device runs it) gets its attention
    /// norm fused into this layer's last residual add.
    pub fn layer(
        &self,
        l: &LayerWeights,
        spec: &LayerSpec,
        kv: &PagedKv<'_>,
        next: Option<&LayerWeights>,
    ) -> Result<()> {
        let o = self.attn_out(l, spec, kv)?;
        self.residual(&self.attn_residual(l), o)?;
        let f = self.ffn_out(l)?;
        self.residual(&self.ffn_residual(l, next), f)
    }

    /// h = norm(x[0]) with the layer's attention norm (the first layer on a device).
    pub fn attn_norm(&self, l: &LayerWeights) -> Result<()> {
        self.norm(&self.p.x[0], l.attn_norm, &self.p.h)
    }

    /// The layer's attention output projection of h = norm(x[0]) (a tensor-parallel rank's
    /// partial sum, all-reduced before the residual).
    pub fn attn_out(
        &self,
        l: &LayerWeights,
        spec: &LayerSpec,
        kv: &PagedKv<'_>,
    ) -> Result<&'a Tensor> {
        let (p, c) = (self.p, self.cfg);
        let (q, k, v) = if l.q_bias.is_none() && l.k_bias.is_none() && l.v_bias.is_none() {
            // One op for the three projections of the same h (one launch where the backend can).
            let parts = [
                (&l.q, self.out(&p.q[0])?),
                (&l.k, self.out(&p.k[0])?),
                (&l.v, self.out(&p.v[0])?),
            ];
            self.b
                .matmul_many(self.x(&p.h)?, &parts)
                .map_err(op("q/k/v"))?;
            (&p.q[0], &p.k[0], &p.v[0])
        } else {
            (
                self.linear(&p.h, &l.q, l.q_bias, &p.q)?,
                self.linear(&p.h, &l.k, l.k_bias, &p.k)?,
                self.linear(&p.h, &l.v, l.v_bias, &p.v)?,
            )
        };
        let q = self.head_norm(q, l.q_norm, &p.q, c.n_heads)?;
        let k = self.head_norm(k, l.k_norm, &p.k, c.n_kv_heads)?;
        self.attention(q, k, v, kv, spec)?;
        self.linear(&p.attn, &l.o, l.o_bias, &p.o)
    }

    /// The residual after attention: x[1] = x[0] + post_norm(o), h = ffn_norm(x[1]).
    pub fn attn_residual(&self, l: &LayerWeights) -> Residual<'a> {
        Residual {
            res: &self.p.x[0],
            sum: &self.p.x[1],
            post: l.post_attn_norm,
            norm: Some(l.ffn_norm),
        }
    }

    /// The residual after the FFN: x[0] = x[1] + post_norm(f), and h = the next layer's
    /// attention norm of x[0] when `next` is given.
    pub fn ffn_residual(&self, l: &LayerWeights, next: Option<&LayerWeights>) -> Residual<'a> {
        Residual {
            res: &self.p.x[1],
            sum: &self.p.x[0],
            post: l.post_ffn_norm,
            norm: next.map(|n| n.attn_norm),
        }
    }

    /// Apply `r` to a sub-block's (all-reduced) output `part`: one fused add + norm when a
    /// norm follows, else an add.
    pub fn residual(&self, r: &Residual<'a>, part: &'a Tensor) -> Result<()> {
        let p = self.p;
        let part = self.post_norm(part, r.post)?;
        let Some(w) = r.norm else {
            return self.add(r.res, part, r.sum);
        };
        self.b
            .add_rms_norm(
                self.x(r.res)?,
                self.x(part)?,
                self.param(w)?,
                self.cfg.eps,
                self.out(r.sum)?,
                self.out(&p.h)?,
            )
            .map_err(op("add_rms_norm"))
    }

    /// The views of a fused all-reduce + residual + norm on this rank (`r` without a post
    /// norm and with a norm): (partial sum, residual, norm weight, sum out, norm out).
    pub fn residual_views(
        &self,
        r: &Residual<'a>,
        part: &'a Tensor,
    ) -> Result<Option<ResidualNorm<'a>>> {
        let (None, Some(w)) = (r.post, r.norm) else {
            return Ok(None);
        };
        Ok(Some(ResidualNorm {
            part: self.x(part)?,
            res: self.x(r.res)?,
            w: self.param(w)?,
            sum: self.out(r.sum)?,
            out: self.out(&self.p.h)?,
        }))
    }

    /// The FFN of h = norm(x[1]) (a partial sum under tensor parallelism).
    pub fn ffn_out(&self, l: &LayerWeights) -> Result<&'a Tensor> {
        self.ffn_route(l)?;
        self.ffn(&l.ffn)
    }

    /// For a MoE layer, the router logits of h (returned: under tensor parallelism they are
    /// all-reduced so that every rank routes alike, see weights.rs) before
    /// [`Self::ffn_experts`].
    pub fn ffn_route(&self, l: &LayerWeights) -> Result<Option<&'a Tensor>> {
        let p = self.p;
        let Ffn::Moe { router, .. } = &l.ffn else {
            return Ok(None);
        };
        let r = p
            .router
            .as_ref()
            .ok_or_else(|| ModelError::Runtime("MoE layer without a router buffer".into()))?;
        self.b
            .matmul(self.x(&p.h)?, router, self.out(r)?)
            .map_err(op("router"))?;
        Ok(Some(r))
    }

    /// The FFN of h after [`Self::ffn_route`] (a partial sum under tensor parallelism).
    pub fn ffn_experts(&self, l: &LayerWeights) -> Result<&'a Tensor> {
        self.ffn(&l.ffn)
    }

    /// `t`'s rows of this step, for the all-reduce of a partial sum.
    pub fn step_rows(&self, t: &'a Tensor) -> Result<ViewMut<'a>> {
        self.out(t)
    }

    /// Rotate q and k, append k and v to the cache (one op), then attend.
    fn attention(
        &self,
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
        kv: &PagedKv<'_>,
        spec: &LayerSpec,
    ) -> Result<()> {
        let c = self.cfg;
        let (n, hd) = (self.n, c.head_dim);
        let kv_shape = Shape::d3(n, c.n_kv_heads, hd);
        let q_shape = Shape::d3(n, c.n_heads, hd);
        let slots = self.p.staging.view(self.p.staging.slots, n)?;
        let pos = self.p.staging.view(self.p.staging.pos, n)?;
        let table = if spec.local_rope {
            &self.p.rope_local
        } else {
            &self.p.rope_global
        };
        let rp = RopeParams {
            style: c.rope_style,
            n_rot: c.n_rot,
        };
        let view = |t: &'a Tensor, s: Shape| self.out(t)?.reshape(s).map_err(op("view"));
        let (qm, km) = (view(q, q_shape)?, view(k, kv_shape)?);
        let vx = self.x(v)?.reshape(kv_shape).map_err(op("view"))?;
        self.b
            .rope_kv_append(qm, km, vx, pos, table.view(), &rp, kv, slots)
            .map_err(op("rope + kv_append"))?;
        let qx = self.x(q)?.reshape(q_shape).map_err(op("view"))?;
        let out = self
            .out(&self.p.attn)?
            .reshape(q_shape)
            .map_err(op("view"))?;
        let scratch = self.p.attn_scratch.as_ref().map(Tensor::view_mut);
        let ap = attn_params(c, spec.window);
        self.b
            .attention(qx, kv, &self.batch, &ap, scratch, out)
            .map_err(op("attention"))
    }

    /// gemma3's norm of a sub-block output (`o[0]`, into `o[1]`).
    fn post_norm(&self, t: &'a Tensor, w: Option<Param>) -> Result<&'a Tensor> {
        match w {
            None => Ok(t),
            Some(w) => {
                self.norm(t, w, &self.p.o[1])?;
                Ok(&self.p.o[1])
            }
        }
    }

    /// FFN of h into o[0] (MoE: routed by the logits already in p.router).
    fn ffn(&self, f: &Ffn) -> Result<&'a Tensor> {
        let p = self.p;
        let out = &p.o[0];
        match f {
            Ffn::Dense { gate, up, down } => {
                let (Some(g), Some(u), Some(a)) = (&p.gate, &p.up, &p.act) else {
                    return Err(ModelError::Runtime(
                        "dense FFN without planned buffers".into(),
                    ));
                };
                let (g, u) = (self.out(g)?, self.out(u)?);
                self.b
                    .matmul_glu(self.x(&p.h)?, gate, up, self.cfg.act, g, u, self.out(a)?)
                    .map_err(op("ffn gate/up + glu"))?;
                self.b
                    .matmul(self.x(a)?, down, self.out(out)?)
                    .map_err(op("ffn down"))?;
            }
            Ffn::Moe { gate, up, down, .. } => {
                // The router logits are in p.router (Self::ffn_route).
                let (Some(r), Some(m)) = (&p.router, &self.cfg.moe) else {
                    return Err(ModelError::Runtime(
                        "MoE layer without a router buffer".into(),
                    ));
                };
                let ex = MoeExperts {
                    gate,
                    up,
                    down,
                    act: self.cfg.act,
                };
                let routing = MoeRouting {
                    top_k: m.top_k,
                    gating: m.gating,
                };
                let scratch = p.moe_scratch.as_ref().map(Tensor::view_mut);
                self.b
                    .moe(
                        self.x(&p.h)?,
                        self.x(r)?,
                        &ex,
                        &routing,
                        scratch,
                        self.out(out)?,
                    )
                    .map_err(op("moe"))?;
            }
        }
        Ok(out)
    }

    /// Final norm and LM head: on the last row of each of `n_seqs` sequences (gathered), or on
    /// every row when `all` is set. Logits land in `plan.logits`.
    pub fn head(&self, n_seqs: usize, all: bool) -> Result<()> {
        let p = self.p;
        let rows = if all {
            self.norm_rows(&p.x[0], self.w.output_norm, &p.normed, self.n)?;
            self.n
        } else {
            let ids = p.staging.view(p.staging.last, n_seqs)?;
            self.b
                .gather(self.x(&p.x[0])?, ids, self.rows_mut(&p.last, n_seqs)?)
                .map_err(op("gather"))?;
            self.norm_rows(&p.last, self.w.output_norm, &p.normed, n_seqs)?;
            n_seqs
        };
        let output = self.w.output.as_ref().ok_or_else(|| {
            ModelError::Runtime(format!("{} holds no output matrix", self.b.id()))
        })?;
        self.b
            .matmul(
                self.rows(&p.normed, rows)?,
                output,
                self.rows_mut(&p.logits, rows)?,
            )
            .map_err(op("lm head"))
    }
}
