//! rms_norm and add_rms_norm (kernels/norm.cu).

use cudarc::driver::LaunchConfig;
use kiln_core::backend::check;
use kiln_core::{OpKind, Result, View, ViewMut};

use super::{arg_i32, f32_only};
use crate::device::CudaBackend;
use crate::module_cache::NORM;
use crate::ops::launch::Arg;

/// Threads per block (one block per row) of both kernels.
const NORM_THREADS: u32 = 256;

impl CudaBackend {
    /// x, out f32 `[rows, dim]`, w f32 `[dim]`.
    pub(crate) fn op_rms_norm(
        &self,
        x: View<'_>,
        w: View<'_>,
        eps: f32,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let op = OpKind::RmsNorm;
        let (rows, dim) = norm_rows(op, &x, &w, &out)?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let (xp, wp, op_) = (
            self.ptr(op, &x)?,
            self.ptr(op, &w)?,
            self.ptr_mut(op, &out)?,
        );
        let f = self.function(&NORM, "rms_norm_f32")?;
        let (rows, dim) = (arg_i32(op, "rows", rows)?, arg_i32(op, "dim", dim)?);
        let args = [
            Arg::U64(&xp),
            Arg::U64(&wp),
            Arg::U64(&op_),
            Arg::I32(&dim),
            Arg::F32(&eps),
        ];
        // SAFETY: x and out hold rows·dim f32 and w holds dim f32 (checked above); the kernel
        // touches exactly those ranges, one block per row; the arguments match rms_norm_f32's
        // parameters; it waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch rms_norm_f32", row_grid(rows), &args) }
    }

    /// sum = a + b, out = rms_norm(sum)·w: a, b, sum, out f32 `[rows, dim]`, w f32 `[dim]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_add_rms_norm(
        &self,
        a: View<'_>,
        b: View<'_>,
        w: View<'_>,
        eps: f32,
        sum: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let op = OpKind::RmsNorm;
        let (rows, dim) = norm_rows(op, &a, &w, &out)?;
        f32_only(op, "b", &b)?;
        f32_only(op, "sum", &sum.as_view())?;
        if b.shape() != a.shape() || sum.shape() != a.shape() || out.shape() != a.shape() {
            return Err(kiln_core::Error::shape(
                op,
                format!(
                    "add_rms_norm: a {}, b {}, sum {} and out {} must have the same shape",
                    a.shape(),
                    b.shape(),
                    sum.shape(),
                    out.shape()
                ),
            ));
        }
        for (name, o) in [("sum", &sum), ("out", &out)] {
            for i in [&a, &b, &w] {
                o.check_disjoint(i).map_err(|e| {
                    kiln_core::Error::shape(op, format!("add_rms_norm {name}: {e}"))
                })?;
            }
        }
        out.check_disjoint(&sum.as_view())?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let (ap, bp, wp) = (self.ptr(op, &a)?, self.ptr(op, &b)?, self.ptr(op, &w)?);
        let (sp, op_) = (self.ptr_mut(op, &sum)?, self.ptr_mut(op, &out)?);
        let f = self.function(&NORM, "add_rms_norm_f32")?;
        let (rows, dim) = (arg_i32(op, "rows", rows)?, arg_i32(op, "dim", dim)?);
        let args = [
            Arg::U64(&ap),
            Arg::U64(&bp),
            Arg::U64(&wp),
            Arg::U64(&sp),
            Arg::U64(&op_),
            Arg::I32(&dim),
            Arg::F32(&eps),
        ];
        // SAFETY: a, b, sum and out hold rows·dim f32 and w dim f32 (checked above), sum and
        // out disjoint from the inputs and each other; one block per row touches only its row;
        // the arguments match add_rms_norm_f32's parameters; it waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch add_rms_norm_f32", row_grid(rows), &args) }
    }
}

/// (rows, dim) of a norm after the dtype and shape checks shared by both ops.
fn norm_rows(op: OpKind, x: &View<'_>, w: &View<'_>, out: &ViewMut<'_>) -> Result<(usize, usize)> {
    f32_only(op, "x", x)?;
    f32_only(op, "w", w)?;
    f32_only(op, "out", &out.as_view())?;
    let dim = x.shape().last();
    check::eq(op, "w elements vs x row length", w.numel(), dim)?;
    check::eq(op, "out elements vs x elements", out.numel(), x.numel())?;
    check::eq(
        op,
        "out row length vs x row length",
        out.shape().last(),
        dim,
    )?;
    out.check_disjoint(x)?;
    out.check_disjoint(w)?;
    Ok((x.numel() / dim.max(1), dim))
}

fn row_grid(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
