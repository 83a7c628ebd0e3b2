//! add (kernels/add.cu).

use kiln_core::backend::check;
use kiln_core::{OpKind, Result, View, ViewMut};

use super::f32_only;
use crate::device::CudaBackend;
use crate::module_cache::ADD;
use crate::ops::launch::Arg;

impl CudaBackend {
    /// out = a + b, f32, same shape.
    pub(crate) fn op_add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        let op = OpKind::Add;
        f32_only(op, "a", &a)?;
        f32_only(op, "b", &b)?;
        f32_only(op, "out", &out.as_view())?;
        if b.shape() != a.shape() || out.shape() != a.shape() {
            return Err(kiln_core::Error::shape(
                op,
                format!(
                    "a {}, b {} and out {} must have the same shape",
                    a.shape(),
                    b.shape(),
                    out.shape()
                ),
            ));
        }
        out.check_disjoint(&a)?;
        out.check_disjoint(&b)?;
        let count = a.numel() as i64;
        if count == 0 {
            return Ok(());
        }
        let (ap, bp, op_) = (
            self.ptr(op, &a)?,
            self.ptr(op, &b)?,
            self.ptr_mut(op, &out)?,
        );
        let f = self.function(&ADD, "add_f32")?;
        let cfg = self.grid_1d(a.numel());
        let args = [
            Arg::U64(&ap),
            Arg::U64(&bp),
            Arg::U64(&op_),
            Arg::I64(&count),
        ];
        // SAFETY: a, b and out hold `count` f32 each (checked above), out disjoint; the
        // arguments match add_f32's parameters; the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch add_f32", cfg, &args) }
    }
}

impl CudaBackend {
    /// out = x + bias broadcast over rows: x, out f32 `[rows, n]`, bias f32 `[n]`.
    pub(crate) fn op_add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        let op = OpKind::AddBias;
        f32_only(op, "x", &x)?;
        f32_only(op, "bias", &bias)?;
        f32_only(op, "out", &out.as_view())?;
        let n = x.shape().last();
        check::eq(op, "bias elements vs x row length", bias.numel(), n)?;
        if out.shape() != x.shape() {
            return Err(kiln_core::Error::shape(
                op,
                format!("out {} must have the shape of x {}", out.shape(), x.shape()),
            ));
        }
        out.check_disjoint(&x)?;
        out.check_disjoint(&bias)?;
        let count = x.numel() as i64;
        if count == 0 {
            return Ok(());
        }
        let ni = super::arg_i32(op, "n", n)?;
        let (xp, bp, op_) = (
            self.ptr(op, &x)?,
            self.ptr(op, &bias)?,
            self.ptr_mut(op, &out)?,
        );
        let f = self.function(&ADD, "add_bias_f32")?;
        let cfg = self.grid_1d(x.numel());
        let args = [
            Arg::U64(&xp),
            Arg::U64(&bp),
            Arg::U64(&op_),
            Arg::I64(&count),
            Arg::I32(&ni),
        ];
        // SAFETY: x and out hold `count` f32 (= rows·n), bias n f32 (checked above); the
        // arguments match add_bias_f32's parameters; the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch add_bias_f32", cfg, &args) }
    }
}
