//! rms_norm and add_rms_norm (kernels/norm.cu).

use cudarc::driver::LaunchConfig;
use kiln_core::backend::check;
use kiln_core::{OpKind, Result, View, ViewMut};

use super::{arg_i32, f32_only};
use crate::device::CudaBackend;
use crate::module_cache::NORM;
use crate::ops::launch::Arg;

/// Threads per block (one block per row) of the scalar kernels.
const NORM_THREADS: u32 = 256;
/// float4 per thread the `_v4` kernels hold in registers (`NORM_V4_MAX` of norm.cu).
const NORM_V4_MAX: usize = 4;

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
        let v4 = v4_threads(dim, &[xp, wp, op_]);
        let name = if v4.is_some() {
            "rms_norm_f32_v4"
        } else {
            "rms_norm_f32"
        };
        let f = self.function(&NORM, name)?;
        // The _v4 kernel takes the row length in float4.
        let len = if v4.is_some() { dim / 4 } else { dim };
        let (rows, len) = (arg_i32(op, "rows", rows)?, arg_i32(op, "dim", len)?);
        let args = [
            Arg::U64(&xp),
            Arg::U64(&wp),
            Arg::U64(&op_),
            Arg::I32(&len),
            Arg::F32(&eps),
        ];
        // SAFETY: x and out hold rows·dim f32 and w holds dim f32 (checked above; the _v4
        // kernel only when dim % 4 == 0, every address 16-byte aligned and dim fits its
        // threads × NORM_V4_MAX float4); the kernel touches exactly those ranges, one block per
        // row; the arguments match the kernel's parameters; it waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch rms_norm", row_grid(rows, v4), &args) }
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
        let v4 = v4_threads(dim, &[ap, bp, wp, sp, op_]);
        let name = if v4.is_some() {
            "add_rms_norm_f32_v4"
        } else {
            "add_rms_norm_f32"
        };
        let f = self.function(&NORM, name)?;
        let len = if v4.is_some() { dim / 4 } else { dim };
        let (rows, len) = (arg_i32(op, "rows", rows)?, arg_i32(op, "dim", len)?);
        let args = [
            Arg::U64(&ap),
            Arg::U64(&bp),
            Arg::U64(&wp),
            Arg::U64(&sp),
            Arg::U64(&op_),
            Arg::I32(&len),
            Arg::F32(&eps),
        ];
        // SAFETY: a, b, sum and out hold rows·dim f32 and w dim f32 (checked above), sum and
        // out disjoint from the inputs and each other (the kernels' __restrict__); the _v4
        // kernel only as for rms_norm; one block per row touches only its row; the arguments
        // match the kernel's parameters; it waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch add_rms_norm", row_grid(rows, v4), &args) }
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

/// Threads per row for the `_v4` kernels, or `None` when they do not apply (dim not a
/// multiple of 4, an address not 16-byte aligned, or a row longer than 1024 threads ×
/// NORM_V4_MAX float4). About one float4 per thread, in whole warps.
fn v4_threads(dim: usize, ptrs: &[u64]) -> Option<u32> {
    let d4 = dim / 4;
    let ok = dim.is_multiple_of(4)
        && d4 <= 1024 * NORM_V4_MAX
        && ptrs.iter().all(|p| p.is_multiple_of(16));
    ok.then(|| d4.div_ceil(32).clamp(1, 32) as u32 * 32)
}

fn row_grid(rows: i32, v4: Option<u32>) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (v4.unwrap_or(NORM_THREADS), 1, 1),
        shared_mem_bytes: 0,
    }
}
