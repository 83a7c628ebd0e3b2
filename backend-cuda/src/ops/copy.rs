//! copy with conversion, gather and the benches' read probe (kernels/copy.cu).

use cudarc::driver::PushKernelArg;
use kiln_core::backend::check;
use kiln_core::{Buffer, DType, Error, OpKind, Result, Shape, View, ViewMut};

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

impl CudaBackend {
    /// The read probe (`read_probe` in kernels/copy.cu): loads the first `bytes` of `src` once,
    /// 16 bytes per load and four loads in flight per thread, and stores nothing that matters:
    /// what a kernel that streams that many weight bytes cannot beat under the same launch
    /// (the benches' "read floor" rows). `bytes` must be a multiple of 16 inside `src`; `dst`
    /// needs 4 bytes per 16 KiB block of the grid and is in practice never written.
    pub fn read_probe(&self, src: &Buffer, dst: &Buffer, bytes: usize) -> Result<()> {
        let op = OpKind::Copy;
        let blocks = bytes.div_ceil(16 * 1024);
        if !bytes.is_multiple_of(16) || bytes > src.len() || dst.len() < 4 * blocks || bytes == 0 {
            return Err(Error::View(format!(
                "read_probe of {bytes} bytes: needs a non-zero multiple of 16 inside the source ({} bytes) and {} bytes of destination ({})",
                src.len(),
                4 * blocks,
                dst.len()
            )));
        }
        let sp = self.ptr(op, &src.view(0, Shape::d1(bytes / 4), DType::F32)?)?;
        let dp = self.ptr(op, &dst.view(0, Shape::d1(blocks), DType::F32)?)?;
        let n16 = (bytes / 16) as i64;
        let grid = u32::try_from(blocks)
            .map_err(|_| Error::Invalid(format!("read_probe: {blocks} blocks")))?;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.function(&COPY, "read_probe")?;
        let args = [Arg::U64(&sp), Arg::I64(&n16), Arg::U64(&dp)];
        // SAFETY: src holds `bytes` (checked) = n16 uint4s, which the kernel reads no further
        // than (i < n16); dst holds one u32 per block (checked), the most the kernel writes; the
        // arguments match read_probe's parameters; the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch read_probe", cfg, &args) }
    }
}
