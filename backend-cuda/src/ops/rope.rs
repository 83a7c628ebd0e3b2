//! rope (kernels/rope.cu).

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, RopeParams, RopeStyle, View, ViewMut};

use super::{arg_i32, f32_only};
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
        f32_only(op, "x", &x.as_view())?;
        check::dtype(op, "positions", positions.dtype(), &[DType::I32])?;
        f32_only(op, "inv_freq", &inv_freq)?;
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
        x.check_disjoint(&positions)?;
        x.check_disjoint(&inv_freq)?;
        if x.numel() == 0 {
            return Ok(());
        }
        let style = match p.style {
            RopeStyle::Neox => 0i32,
            RopeStyle::Interleaved => 1i32,
        };
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
