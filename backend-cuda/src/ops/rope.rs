//! rope and rope_kv_append (kernels/rope.cu).

use kiln_core::backend::{check, rope_kv_append_unfused};
use kiln_core::{DType, Error, OpKind, PagedKv, Result, RopeParams, RopeStyle, View, ViewMut};

use super::{arg_i32, f32_only};
use crate::buffer::float_code;
use crate::device::CudaBackend;
use crate::module_cache::ROPE;
use crate::ops::launch::Arg;

impl CudaBackend {
    /// In place: x f32 `[n_tokens, n_heads, head_dim]`, positions i32 `[n_tokens]`,
    /// inv_freq f32 `[n_rot / 2]`.
    pub(crate) fn op_rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()> {
        let op = OpKind::Rope;
        let Some([n_tokens, n_heads, head_dim]) = rope_dims(&x, &positions, &inv_freq, p)? else {
            return Ok(());
        };
        let style = style_code(p);
        let f = self.function(&ROPE, "rope_f32")?;
        let (xp, pp, fp) = (
            self.ptr_mut(op, &x)?,
            self.ptr(op, &positions)?,
            self.ptr(op, &inv_freq)?,
        );
        let (nt, nh, hd, nr) = (
            arg_i32(op, "n_tokens", n_tokens)?,
            arg_i32(op, "n_heads", n_heads)?,
            arg_i32(op, "head_dim", head_dim)?,
            arg_i32(op, "n_rot", p.n_rot)?,
        );
        let cfg = self.grid_1d(n_tokens * n_heads * p.n_rot / 2);
        let args = [
            Arg::U64(&xp),
            Arg::U64(&pp),
            Arg::U64(&fp),
            Arg::I32(&nt),
            Arg::I32(&nh),
            Arg::I32(&hd),
            Arg::I32(&nr),
            Arg::I32(&style),
        ];
        // SAFETY: x holds n_tokens·n_heads·head_dim f32, positions n_tokens i32, inv_freq
        // n_rot/2 f32 (checked above); each thread rotates one pair inside its own head; the
        // arguments match rope_f32's parameters; the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch rope_f32", cfg, &args) }
    }
}

impl CudaBackend {
    /// rope(q), rope(k), kv_append(k, v) as one kernel (`rope_kv_append_f32`) when q, k, v are
    /// f32 with the same tokens and k matches the cache; otherwise (or for a check that fails)
    /// the three ops one after another, which also give the errors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_rope_kv_append(
        &self,
        q: ViewMut<'_>,
        k: ViewMut<'_>,
        v: View<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<()> {
        let op = OpKind::Rope;
        let dims = (
            rope_dims(&q, &positions, &inv_freq, p),
            rope_dims(&k, &positions, &inv_freq, p),
            self.kv_append_tokens(k.as_view(), v, kv, slots),
        );
        let (Ok(Some([n_tokens, n_heads, hd])), Ok(Some([nt_k, n_kv, _])), Ok(nt_c)) = dims else {
            return rope_kv_append_unfused(self, q, k, v, positions, inv_freq, p, kv, slots);
        };
        if v.dtype() != DType::F32 || nt_k != n_tokens || nt_c != n_tokens {
            return rope_kv_append_unfused(self, q, k, v, positions, inv_freq, p, kv, slots);
        }
        q.check_disjoint(&k.as_view())?;
        q.check_disjoint(&v)?;
        k.check_disjoint(&v)?;
        for c in [&kv.k, &kv.v] {
            c.check_disjoint(&q.as_view())?;
        }
        let (qp, kp, vp) = (
            self.ptr_mut(op, &q)?,
            self.ptr_mut(op, &k)?,
            self.ptr(op, &v)?,
        );
        let (pp, fp, sp) = (
            self.ptr(op, &positions)?,
            self.ptr(op, &inv_freq)?,
            self.ptr(op, &slots)?,
        );
        let (kc, vc) = (self.ptr_mut(op, &kv.k)?, self.ptr_mut(op, &kv.v)?);
        let kv_dt = float_code(kv.dtype()).unwrap_or(0);
        let (nt, nh, nkv, hdi, nr, bs) = (
            arg_i32(op, "n_tokens", n_tokens)?,
            arg_i32(op, "n_heads", n_heads)?,
            arg_i32(op, "n_kv_heads", n_kv)?,
            arg_i32(op, "head_dim", hd)?,
            arg_i32(op, "n_rot", p.n_rot)?,
            arg_i32(op, "block_size", kv.block_size())?,
        );
        let style = style_code(p);
        let total_slots = (kv.num_blocks() * kv.block_size()) as i64;
        let half = p.n_rot / 2;
        let items = n_tokens * (n_heads * half + n_kv * (half + (hd - p.n_rot) + hd));
        let f = self.function(&ROPE, "rope_kv_append_f32")?;
        let args = [
            Arg::U64(&qp),
            Arg::U64(&kp),
            Arg::U64(&vp),
            Arg::U64(&pp),
            Arg::U64(&fp),
            Arg::U64(&kc),
            Arg::U64(&vc),
            Arg::I32(&kv_dt),
            Arg::U64(&sp),
            Arg::I32(&nt),
            Arg::I32(&nh),
            Arg::I32(&nkv),
            Arg::I32(&hdi),
            Arg::I32(&nr),
            Arg::I32(&style),
            Arg::I32(&bs),
            Arg::I64(&total_slots),
        ];
        // SAFETY: q holds n_tokens·n_heads·head_dim f32, k and v n_tokens·n_kv·head_dim f32,
        // positions and slots n_tokens i32, inv_freq n_rot/2 f32 (rope_dims and
        // kv_append_tokens checked them, and that k matches the cache's heads and head_dim);
        // q, k, v and the caches are pairwise disjoint; cache writes are skipped for slots
        // outside [0, blocks·block_size); the arguments match rope_kv_append_f32's parameters;
        // the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch rope_kv_append_f32", self.grid_1d(items), &args) }
    }
}

/// `[n_tokens, n_heads, head_dim]` of a valid rope call (None when there is nothing to do), or the
/// error naming what is wrong.
fn rope_dims(
    x: &ViewMut<'_>,
    positions: &View<'_>,
    inv_freq: &View<'_>,
    p: &RopeParams,
) -> Result<Option<[usize; 3]>> {
    let op = OpKind::Rope;
    f32_only(op, "x", &x.as_view())?;
    check::dtype(op, "positions", positions.dtype(), &[DType::I32])?;
    f32_only(op, "inv_freq", inv_freq)?;
    let s = x.shape();
    if s.rank() != 3 {
        return Err(Error::shape(
            op,
            format!("x {s} must be [n_tokens, n_heads, head_dim]"),
        ));
    }
    let (n_tokens, n_heads, head_dim) = (s.dim(0), s.dim(1), s.dim(2));
    if p.n_rot == 0 || !p.n_rot.is_multiple_of(2) || p.n_rot > head_dim {
        return Err(Error::shape(
            op,
            format!(
                "n_rot {} must be even, > 0 and ≤ head_dim {head_dim}",
                p.n_rot
            ),
        ));
    }
    check::eq(op, "positions vs n_tokens", positions.numel(), n_tokens)?;
    check::eq(op, "inv_freq vs n_rot/2", inv_freq.numel(), p.n_rot / 2)?;
    x.check_disjoint(positions)?;
    x.check_disjoint(inv_freq)?;
    if x.numel() == 0 {
        return Ok(None);
    }
    Ok(Some([n_tokens, n_heads, head_dim]))
}

fn style_code(p: &RopeParams) -> i32 {
    match p.style {
        RopeStyle::Neox => 0,
        RopeStyle::Interleaved => 1,
    }
}
