//! rms_norm (kernels/norm.cu).

use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_core::backend::check;
use kiln_core::{OpKind, Result, View, ViewMut};

use super::{arg_i32, f32_only};
use crate::device::CudaBackend;
use crate::module_cache::NORM;

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
        f32_only(op, "x", &x)?;
        f32_only(op, "w", &w)?;
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
        out.check_disjoint(&x)?;
        out.check_disjoint(&w)?;
        let rows = x.numel() / dim.max(1);
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let (xp, wp, op_) = (
            self.ptr(op, &x)?,
            self.ptr(op, &w)?,
            self.ptr_mut(op, &out)?,
        );
        self.launch_rms_norm(
            xp,
            wp,
            op_,
            arg_i32(op, "rows", rows)?,
            arg_i32(op, "dim", dim)?,
            eps,
        )
    }

    fn launch_rms_norm(
        &self,
        x: u64,
        w: u64,
        out: u64,
        rows: i32,
        dim: i32,
        eps: f32,
    ) -> Result<()> {
        let f = self.function(&NORM, "rms_norm_f32")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x).arg(&w).arg(&out).arg(&dim).arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: x and out hold rows·dim f32 and w holds dim f32 (checked by the caller);
        // the kernel touches exactly those ranges, one block per row.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch rms_norm_f32"))
    }
}
