//! copy with conversion (kernels/copy.cu).

use cudarc::driver::PushKernelArg;
use kiln_core::backend::check;
use kiln_core::{DType, OpKind, Result, View, ViewMut};

use crate::buffer::float_code;
use crate::device::CudaBackend;
use crate::module_cache::COPY;
use crate::ops::launch::Arg;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

impl CudaBackend {
    /// dst = convert(src), f32/f16/bf16, same element count.
    pub(crate) fn op_copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        let op = OpKind::Copy;
        check::dtype(op, "src", src.dtype(), &FLOATS)?;
        check::dtype(op, "dst", dst.dtype(), &FLOATS)?;
        check::eq(op, "dst elements vs src elements", dst.numel(), src.numel())?;
        dst.check_disjoint(&src)?;
        let (sp, dp) = (self.ptr(op, &src)?, self.ptr_mut(op, &dst)?);
        if src.dtype() == dst.dtype() {
            return self.copy_dtod(dp, sp, src.bytes());
        }
        let count = src.numel() as i64;
        if count == 0 {
            return Ok(());
        }
        let (sc, dc) = (
            float_code(src.dtype()).unwrap_or(0),
            float_code(dst.dtype()).unwrap_or(0),
        );
        self.launch_convert(sp, sc, dp, dc, count)
    }

    /// Convert `count` elements between float dtypes (DT_* codes).
    pub(crate) fn launch_convert(
        &self,
        src: u64,
        sdt: i32,
        dst: u64,
        ddt: i32,
        count: i64,
    ) -> Result<()> {
        let f = self.function(&COPY, "convert")?;
        let cfg = self.grid_1d(count as usize);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&src).arg(&sdt).arg(&dst).arg(&ddt).arg(&count);
        // SAFETY: callers pass ranges holding `count` elements of the named dtypes, disjoint.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch convert"))
    }
}

impl CudaBackend {
    /// out[i] = x[ids[i]]: x `[rows, d]`, ids i32 `[n]`, out `[n, d]` (f32/f16/bf16, same dtype).
    pub(crate) fn op_gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        let op = OpKind::Gather;
        check::dtype(op, "x", x.dtype(), &FLOATS)?;
        check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
        check::dtype(op, "out", out.dtype(), &[x.dtype()])?;
        let d = x.shape().last();
        let rows = x.numel() / d.max(1);
        check::eq(op, "out row length vs x row length", out.shape().last(), d)?;
        check::eq(op, "out rows vs ids", out.numel() / d.max(1), ids.numel())?;
        out.check_disjoint(&x)?;
        out.check_disjoint(&ids)?;
        let n = ids.numel();
        if n == 0 || d == 0 {
            return Ok(());
        }
        let (xp, ip, op_) = (
            self.ptr(op, &x)?,
            self.ptr(op, &ids)?,
            self.ptr_mut(op, &out)?,
        );
        let (ni, di, ri) = (
            super::arg_i32(op, "n", n)?,
            super::arg_i32(op, "d", d)?,
            super::arg_i32(op, "rows", rows)?,
        );
        let esize = x.dtype().block_bytes() as i32;
        let f = self.function(&COPY, "gather")?;
        let cfg = self.grid_1d(n * d);
        let args = [
            Arg::U64(&xp),
            Arg::U64(&ip),
            Arg::U64(&op_),
            Arg::I32(&ni),
            Arg::I32(&di),
            Arg::I32(&ri),
            Arg::I32(&esize),
        ];
        // SAFETY: x holds rows·d elements, ids n i32, out n·d elements of `esize` bytes (checked);
        // the kernel skips ids outside [0, rows); the arguments match gather's parameters; the
        // kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch gather", cfg, &args) }
    }
}
