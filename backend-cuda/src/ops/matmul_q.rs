//! matmul for every weight type (kernels/matmul_q.cu + cuBLASLt), and prepare_weight.
//!
//! Dispatch: for m ≤ the measured crossover of (device, dtype, n, k) the fused dequant GEMV /
//! small-GEMM kernel runs (block types: x is first rounded to int8 per 16 elements by
//! `quant_x_<type>` into the GEMM scratch, then `gemv8_<type>_m<M>` does integer dot products
//! against the exactly decoded weights; at m = 1 the one-kernel `gemv1_<type>` (matmul_q/gemv1.rs)
//! where it was measured faster; float types: `gemv_<type>_m<M>` on f32 x); above it
//! the int8 tensor-core GEMM (ops/matmul_mma.rs) runs up to the second crossover (block types);
//! above that the weight is dequantized to bf16 (in tiles of at most `W_TILE_CAP` bytes) and
//! cuBLASLt runs a tensor-core GEMM (bf16 in, f32 accumulate). Both crossovers come from the
//! tuner (src/tune.rs), measured on first use and persisted.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use kiln_core::backend::check;
use kiln_core::{DType, Error, HostTensor, OpKind, Result, View, ViewMut, Weight};

use super::arg_i32;
use super::embed::{chunks_per_block, runs_per_chunk};
use crate::buffer::{CudaWeight, chunked_ok, float_code, repack, split};
use crate::device::CudaBackend;
use crate::gemm::{Gemm, GemmInput};
use crate::module_cache::MATMUL_Q;

mod gemv1;
mod grid;
mod group;
mod pipe;
use crate::ops::launch::Arg;
use gemv1::GemvM1;
pub use gemv1::gemv1_auto_on;
pub(crate) use grid::{fused_grid, m1_grid, m1_kernel};
pub use group::GroupKernel;
pub(crate) use group::{GEMV_NS, GemvSegs};
pub(crate) use pipe::note_grouped;
pub use pipe::{gemv_pipe_auto, gemv_pipe_types, pipe_max_rows};

/// Largest dequantized weight tile of the GEMM path (bytes of bf16).
pub const W_TILE_CAP: usize = 256 << 20;
/// Largest converted activation tile of the GEMM path (bytes of bf16/f16).
pub const X_TILE_CAP: usize = 64 << 20;

/// Which matmul implementation to run (benches and the tuner force one; the runtime uses Auto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// The tuned crossover decides.
    Auto,
    /// The fused dequant GEMV / small-GEMM kernel.
    Fused,
    /// Dequantize to bf16 + cuBLASLt.
    Dense,
    /// The int8 tensor-core GEMM of the block types (ops/matmul_mma.rs); float weights, which
    /// it does not take, run the tuned dispatch instead.
    Mma,
}

macro_rules! per_type {
    ($prefix:literal, $($s:literal),*) => {
        [$( [concat!($prefix, $s, "_m1"), concat!($prefix, $s, "_m2"), concat!($prefix, $s, "_m4"), concat!($prefix, $s, "_m8")] ),*]
    };
}
macro_rules! per_type_q8 {
    ($($s:literal),*) => {
        [$( [concat!("gemv8_", $s, "_m1"), concat!("gemv8_", $s, "_m2"), concat!("gemv8_", $s, "_m4"),
             concat!("gemv8_", $s, "_m8"), concat!("gemv8_", $s, "_m16")] ),*]
    };
}
macro_rules! names {
    ($prefix:literal, $($s:literal),*) => { [$( concat!($prefix, $s) ),*] };
}

/// `gemv_<type>_m<M>` of the float types (f32, f16, bf16), M ∈ {1, 2, 4, 8}.
const GEMV_F: [[&str; 4]; 3] = per_type!("gemv_", "f32", "f16", "bf16");
/// `gemv8_<type>_m<M>` of the 12 block types (indexed like `DType::WEIGHT_TYPES[3..]`),
/// M ∈ {1, 2, 4, 8, 16}: int8 activations.
const GEMV8: [[&str; 5]; 12] = per_type_q8!(
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl",
    "iq4_xs"
);
/// `quant_x_<type>`: x f32 → the int8 units of gemv8 in that type's lane order.
pub(crate) const QUANT_X: [&str; 12] = names!(
    "quant_x_", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_nl", "iq4_xs"
);
const DEQUANT: [&str; 15] = names!(
    "dequant_bf16_",
    "f32",
    "f16",
    "bf16",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q8_0",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "iq4_xs"
);

/// Number of float types at the head of `DType::WEIGHT_TYPES` (f32, f16, bf16).
const FLOAT_TYPES: usize = 3;

/// 16-element units of quantized x per row for a block type (kernels/matmul_q.cu `x_units`):
/// ceil(chunks / 32)·runs·32.
pub(crate) fn x_units(dt: DType, k: usize) -> usize {
    let qk = split(dt).map_or(16, |s| s.qk);
    let nchunks = (k / qk) * chunks_per_block(dt);
    nchunks.div_ceil(32) * runs_per_chunk(dt) * 32
}

/// Scratch of the fused path of a block type at m rows: int8 x (xq uint4 `[m, units]`) and
/// its scales (xs float2 `[m, units]`).
pub(crate) fn fused_scratch_bytes(dt: DType, m: usize, k: usize) -> usize {
    m * x_units(dt, k) * 24
}

/// Tiles and scratch of the dense path for x `[m, k]` and a `dt` weight `[n, k]`.
pub(crate) struct DenseTiles {
    /// Weight rows dequantized per tile (all n for float weights, which are not copied).
    pub(crate) nt: usize,
    /// x rows converted per tile (all m for f32 weights: f32 x goes to cuBLASLt as is).
    pub(crate) mt: usize,
    /// bf16 weight tile `[nt, k]`, rounded to 256 bytes (0 for float weights).
    pub(crate) w_scratch: usize,
    /// bf16/f16 x tile `[mt, k]` (0 for f32 weights).
    pub(crate) x_scratch: usize,
}

pub(crate) fn dense_tiles(dt: DType, m: usize, n: usize, k: usize) -> DenseTiles {
    let dequant = !dt.is_float();
    let f32_in = dt == DType::F32;
    let row_bytes = (k * 2).max(1);
    let nt = if dequant {
        n.min((W_TILE_CAP / row_bytes).max(1))
    } else {
        n
    };
    let mt = if f32_in {
        m
    } else {
        m.min((X_TILE_CAP / row_bytes).max(1))
    };
    DenseTiles {
        nt,
        mt,
        w_scratch: if dequant {
            (nt * row_bytes).div_ceil(256) * 256
        } else {
            0
        },
        x_scratch: if f32_in { 0 } else { mt * row_bytes },
    }
}

fn type_index(dt: DType) -> Option<usize> {
    DType::WEIGHT_TYPES.iter().position(|d| *d == dt)
}

/// Index of a block type among the 12 (`DType::WEIGHT_TYPES[3..]`); None for float types.
pub(crate) fn block_index(dt: DType) -> Option<usize> {
    type_index(dt).and_then(|i| i.checked_sub(FLOAT_TYPES))
}

impl CudaBackend {
    pub(crate) fn op_prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        let w = HostTensor::new(w.dtype, w.shape, w.data)?;
        if !DType::WEIGHT_TYPES.contains(&w.dtype) {
            return Err(check::unsupported(OpKind::Matmul, w.dtype, &self.info));
        }
        let s = w.shape;
        if !(s.rank() == 2 || s.rank() == 3) {
            return Err(Error::shape(
                OpKind::Matmul,
                format!("weight {s} must be [n, k] or [experts, n, k]"),
            ));
        }
        let k = s.last();
        if k % w.dtype.block_size() != 0 {
            return Err(Error::Quant {
                dtype: w.dtype,
                msg: format!(
                    "rows of {k} elements are not whole blocks of {}",
                    w.dtype.block_size()
                ),
            });
        }
        let rows = s.numel() / k.max(1);
        let (bytes, head_offset) = repack(w.dtype, rows, k, w.data)?;
        let mem = self.upload(&bytes)?;
        // The GEMM scratch is sized by the largest matrix (one expert of a 3-D weight).
        let per_matrix = if s.rank() == 3 { s.dim(1) } else { s.dim(0) };
        {
            let mut big = self
                .largest_weight_bf16
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *big = (*big).max(per_matrix * k * 2);
        }
        let n_bytes = mem.slice.len();
        Ok(Weight::new(
            Arc::new(CudaWeight {
                mem,
                dtype: w.dtype,
                head_offset,
            }),
            s,
            w.dtype,
            self.info.id,
            n_bytes,
        ))
    }

    pub(crate) fn op_matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        self.matmul_with(x, w, out, MatmulPath::Auto)
    }

    /// `matmul` with a forced implementation (benches, tuner) or `Auto` (the tuned dispatch).
    pub fn matmul_with(
        &self,
        x: View<'_>,
        w: &Weight,
        out: ViewMut<'_>,
        path: MatmulPath,
    ) -> Result<()> {
        self.matmul_impl(x, w, out, path, GemvM1::Auto)
    }

    /// The fused path with the m = 1 kernel of the block types forced (tests, benches): the
    /// one-kernel `gemv1_*` wherever it applies (x 16-byte aligned, x's int8 image ≤ 46 KiB,
    /// whatever the weight size) if `one_kernel`, else quant_x + `gemv8_*`. Other m and float
    /// weights run the fused path as usual.
    pub fn matmul_fused_m1(
        &self,
        x: View<'_>,
        w: &Weight,
        out: ViewMut<'_>,
        one_kernel: bool,
    ) -> Result<()> {
        let m1 = if one_kernel {
            GemvM1::OneKernel
        } else {
            GemvM1::TwoKernels
        };
        self.matmul_impl(x, w, out, MatmulPath::Fused, m1)
    }

    /// The fused path with the pipelined kernel forced (tests, benches): an error where it does
    /// not apply (matmul_q/pipe.rs: its types, m ≤ 4, k a multiple of 2048, sm_90+).
    pub fn matmul_fused_m1_pipe(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        self.matmul_impl(x, w, out, MatmulPath::Fused, GemvM1::Pipe)
    }

    fn matmul_impl(
        &self,
        x: View<'_>,
        w: &Weight,
        out: ViewMut<'_>,
        path: MatmulPath,
        m1: GemvM1,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let cw = self.weight(op, w)?;
        check::dtype(op, "x", x.dtype(), &[DType::F32])?;
        check::dtype(op, "out", out.dtype(), &[DType::F32])?;
        let s = w.shape();
        if s.rank() != 2 {
            return Err(Error::shape(
                op,
                format!("weight {s} must be [n, k] for matmul"),
            ));
        }
        let (n, k) = (s.dim(0), s.dim(1));
        check::eq(op, "x row length vs weight k", x.shape().last(), k)?;
        let m = x.numel() / k.max(1);
        check::eq(op, "out elements vs m·n", out.numel(), m * n)?;
        check::eq(op, "out row length vs weight n", out.shape().last(), n)?;
        out.check_disjoint(&x)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (xp, op_) = (self.ptr(op, &x)?, self.ptr_mut(op, &out)?);
        let mma_ok = super::matmul_mma::mma_supported(cw.dtype, k);
        let path = match path {
            MatmulPath::Auto => match super::matmul_mma::forced_path() {
                Some(MatmulPath::Mma) if !mma_ok => MatmulPath::Auto,
                Some(p) => p,
                None => MatmulPath::Auto,
            },
            MatmulPath::Mma if !mma_ok => MatmulPath::Auto,
            p => p,
        };
        let path = match path {
            MatmulPath::Auto => {
                let c = self.crossover_or_tune(w, cw)?;
                if m <= c.max_fused_rows {
                    MatmulPath::Fused
                } else if mma_ok && m <= c.max_mma_rows {
                    MatmulPath::Mma
                } else {
                    MatmulPath::Dense
                }
            }
            p => p,
        };
        match path {
            MatmulPath::Mma => self.matmul_mma(xp, cw, op_, m, n, k),
            MatmulPath::Dense => self.matmul_dense(xp, cw, op_, m, n, k),
            _ => self.matmul_fused_with(xp, cw, op_, [m, n, k], m1),
        }
    }

    /// The fused kernel: x `[m, k]` f32 at `xp`, out `[m, n]` f32 at `outp`.
    pub(crate) fn matmul_fused(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        self.matmul_fused_with(xp, w, outp, [m, n, k], GemvM1::Auto)
    }

    /// [`Self::matmul_fused`] with the m = 1 kernel choice of the block types (`m1`).
    fn matmul_fused_with(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        [m, n, k]: [usize; 3],
        m1: GemvM1,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let (mi, ni, ki) = (
            arg_i32(op, "m", m)?,
            arg_i32(op, "n", n)?,
            arg_i32(op, "k", k)?,
        );
        let float_code = float_code(w.dtype);
        if !chunked_ok(w.dtype, k) || (float_code.is_some() && !xp.is_multiple_of(16)) {
            // Float weights are stored unrepacked, so the generic kernel reads them for any k and
            // any x alignment; block types (x read by quant_x, any alignment) need whole blocks.
            let Some(dt) = float_code else {
                return Err(Error::shape(
                    op,
                    format!("{} rows of {k} are not whole blocks", w.dtype),
                ));
            };
            return self.launch_gemv_generic(w.body_ptr(), dt, xp, outp, mi, ni, ki);
        }
        let ti = type_index(w.dtype).ok_or_else(|| check::unsupported(op, w.dtype, &self.info))?;
        let sms = self.info.caps.compute_units.max(1) as usize;
        // x rows per block (M of the kernel) and R W rows per group.
        let (mt, mi_idx) = match m {
            1 => (1, 0),
            2 => (2, 1),
            3 | 4 => (4, 2),
            5..=8 => (8, 3),
            _ => (16, 4),
        };
        let float_w = ti < FLOAT_TYPES;
        let mt = if float_w { mt.min(8) } else { mt };
        let mi_idx = if float_w { mi_idx.min(3) } else { mi_idx };
        // R W rows per group: 4 (the int8 kernels at every M; float kernels at M ≤ 2), else 2.
        let r = if mt <= 2 || !float_w { 4 } else { 2 };
        let name = if float_w {
            GEMV_F[ti][mi_idx]
        } else {
            GEMV8[ti - FLOAT_TYPES][mi_idx]
        };
        let name = if mt == 1 {
            m1_kernel(w.dtype, name)
        } else {
            name
        };
        let (blocks, s_split) = if mt == 1 {
            m1_grid(
                w.dtype,
                n.div_ceil(r),
                k,
                sms,
                self.occupancy(name, 128, 0)?,
            )
        } else {
            fused_grid(n.div_ceil(r), sms)
        };
        if m.div_ceil(mt) > 65535 {
            return Err(Error::shape(
                op,
                format!("m = {m} exceeds the fused kernel's grid limit"),
            ));
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, m.div_ceil(mt) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        if float_w {
            // Float weights: f32 x read directly (16-byte loads; alignment checked above).
            return self.launch_gemv(name, cfg, w, xp, outp, mi, ni, ki, s_split as i32);
        }
        // Block types: x → int8 units (xq uint4 [m, units], xs float2 [m, units]) in scratch,
        // then the integer-dot kernel.
        let qi = ti - FLOAT_TYPES;
        let pipe = m1 == GemvM1::Pipe
            || (m1 == GemvM1::Auto
                && gemv_pipe_auto(w.dtype)
                && !pipe::grouped(self.ctx.ordinal()));
        // Up to 4 x rows on the pipe when forced, else up to KILN_GEMV_PIPE_ROWS (default 4).
        let rows = pipe::pipe_m_index(m, m1 == GemvM1::Pipe).is_some();
        if rows && pipe && self.gemv_pipe_applies(w, k) {
            return self.gemv_pipe(w, [xp, outp], [m, n, k]);
        }
        if m1 == GemvM1::Pipe {
            return Err(Error::shape(
                op,
                format!(
                    "the pipelined kernel does not take {} [{n}, {k}] at m = {m}",
                    w.dtype
                ),
            ));
        }
        if m == 1 && self.try_gemv1(qi, w, [xp, outp], [n, k], m1)? {
            return Ok(());
        }
        let units = x_units(w.dtype, k);
        let xq_bytes = m * units * 16;
        // The scratch is shared: hold the lock until both kernels are enqueued (stream order
        // then keeps other callers' uses after ours).
        let (_guard, scratch) = self.matmul_scratch(fused_scratch_bytes(w.dtype, m, k))?;
        let (xq, xs) = (scratch, scratch + xq_bytes as u64);
        self.launch_quant_x(QUANT_X[qi], xp, xq, xs, ki, mi, m * units)?;
        self.launch_gemv8(name, cfg, w, [xq, xs], outp, [mi, ni, ki, s_split as i32])
    }

    /// Device scratch of at least `bytes` (the cuBLASLt state's scratch, shared by the dense
    /// and fused paths) with the lock that guards it: hold it until every kernel using the
    /// scratch is enqueued. A graph being captured keeps the scratch it used alive.
    pub(crate) fn matmul_scratch(
        &self,
        bytes: usize,
    ) -> Result<(std::sync::MutexGuard<'_, Option<Gemm>>, u64)> {
        let mut guard = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let ws = self.alloc_mem(self.cublaslt_workspace_bytes())?;
            *guard = Some(Gemm::new(self.name(), ws)?);
        }
        let Some(gemm) = guard.as_mut() else {
            return Err(Error::backend(self.name(), "cuBLASLt state missing"));
        };
        if gemm.scratch(bytes).is_none() {
            let mem = self.alloc_mem(bytes.max(crate::device::MIN_MATMUL_SCRATCH))?;
            gemm.push_scratch(mem, false);
        }
        let Some(mem) = gemm.scratch(bytes) else {
            return Err(Error::backend(
                self.name(),
                "GEMM scratch missing after growth",
            ));
        };
        let p = mem.ptr;
        self.keep_for_capture(mem);
        Ok((guard, p))
    }

    /// x f32 `[m, k]` → xq uint4 `[m, units]`, xs float2 `[m, units]` (`total` = m·units).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_quant_x(
        &self,
        name: &'static str,
        x: u64,
        xq: u64,
        xs: u64,
        k: i32,
        m: i32,
        total: usize,
    ) -> Result<()> {
        let f = self.function(&MATMUL_Q, name)?;
        let sms = self.info.caps.compute_units.max(1) as usize;
        let cfg = LaunchConfig {
            // Four threads per unit (kernels/matmul_q.cu quant_x_body).
            grid_dim: ((total * 4).div_ceil(256).clamp(1, sms * 8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = [
            Arg::U64(&x),
            Arg::U64(&xq),
            Arg::U64(&xs),
            Arg::I32(&k),
            Arg::I32(&m),
        ];
        // SAFETY: quant_x_<type>(x, xq, xs, k, m): x holds m·k f32 (k whole blocks of the
        // type); xq/xs are scratch of m·units uint4 / float2 (`total` = m·units, sized by the
        // caller with the kernel's x_units). A programmatic dependent of the previous kernel: it
        // waits (griddepcontrol.wait) before reading x or writing the scratch.
        unsafe { self.launch_pdl(&f, "launch quant_x", cfg, &args) }
    }

    /// Resident blocks per SM of `name` (matmul_q.cu) at `threads` threads and `smem` bytes of
    /// dynamic shared memory (at least 1; asked of the driver once per kernel and shape).
    pub(crate) fn occupancy(&self, name: &'static str, threads: u32, smem: usize) -> Result<usize> {
        Ok(self.modules.occupancy(&MATMUL_Q, name, threads, smem)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_gemv(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: u64,
        out: u64,
        m: i32,
        n: i32,
        k: i32,
        s_split: i32,
    ) -> Result<()> {
        let f = self.function(&MATMUL_Q, name)?;
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let args = [
            Arg::U64(&body),
            Arg::U64(&head),
            Arg::U64(&x),
            Arg::U64(&out),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&s_split),
        ];
        // SAFETY: gemv_<float>_m<M>(body, head, x, y, n, k, m, S): body/head are the repacked
        // n × k weight (rows are whole blocks); x holds m·k f32 at a 16-byte aligned address,
        // out m·n f32 (checked by the callers); warps stride over the row groups (block-uniform
        // trip counts around the barriers), every read row is clamped to n − 1 and writes are
        // bounded by n and m. A programmatic dependent: x is read and y written only after
        // griddepcontrol.wait.
        unsafe { self.launch_pdl(&f, "launch gemv", cfg, &args) }
    }

    /// `gemv8_*`: body/head, x = [xq, xs], out, dims = [m, n, k, S] (see
    /// [`Self::launch_after_quant_x`]).
    fn launch_gemv8(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 2],
        out: u64,
        dims: [i32; 4],
    ) -> Result<()> {
        let f = self.function(&MATMUL_Q, name)?;
        self.launch_after_quant_x(&f, "gemv8", cfg, w, x, out, dims)
    }

    /// A kernel reading quant_x's int8 x (`gemv8_*`, `gemvp_*`, `mma_*`: one signature: body,
    /// head, xq, xs, y, n, k, m, s). On sm_90+ launched as a programmatic dependent of quant_x
    /// (cuLaunchKernelEx): its grid starts while quant_x runs, loads its first weights, then
    /// waits in the kernel (`griddepcontrol.wait`) for x. Before sm_90 a plain launch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_after_quant_x(
        &self,
        f: &CudaFunction,
        what: &'static str,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 2],
        y: u64,
        dims: [i32; 4],
    ) -> Result<()> {
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let [m, n, k, s] = dims;
        let args = [
            Arg::U64(&body),
            Arg::U64(&head),
            Arg::U64(&x[0]),
            Arg::U64(&x[1]),
            Arg::U64(&y),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&s),
        ];
        // SAFETY: args match both kernels' signature (body, head: the repacked n × k weight,
        // rows whole blocks; xq uint4 / xs float2 [m, units] written by quant_x just before on
        // this stream, read only after griddepcontrol.wait; y f32: the m·n output, or for a split
        // mma the [splits, m, n] partial sums (splits = gridDim.z); n, k, m i32 and s = S warps
        // per group (gemv8, gemvp) or stages per split (mma)). W rows are clamped to n − 1, x
        // rows to m − 1; writes are bounded by n and m. An mma or gemvp kernel's dynamic shared
        // memory was allowed just before (gemvp: every copy lies inside the weight, whole steps).
        unsafe { self.launch_pdl(f, what, cfg, &args) }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_gemv_generic(
        &self,
        w: u64,
        dt: i32,
        x: u64,
        out: u64,
        m: i32,
        n: i32,
        k: i32,
    ) -> Result<()> {
        let f = self.function(&MATMUL_Q, "gemv_float_generic")?;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(4), m as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&w).arg(&dt).arg(&x).arg(&out).arg(&n).arg(&k).arg(&m);
        // SAFETY: w holds n·k elements of float dtype `dt` (unrepacked), x m·k f32, out m·n f32;
        // each warp handles one (row, x row) pair inside those bounds.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch gemv_float_generic"))
    }

    /// The dense path: dequantize W to bf16 in row tiles, convert x, cuBLASLt.
    pub(crate) fn matmul_dense(
        &self,
        xp: u64,
        w: &CudaWeight,
        outp: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let input = match w.dtype {
            DType::F32 => GemmInput::F32,
            DType::F16 => GemmInput::F16,
            _ => GemmInput::Bf16,
        };
        let dequant = !matches!(w.dtype, DType::F32 | DType::F16 | DType::BF16);
        if dequant && !chunked_ok(w.dtype, k) {
            return Err(Error::shape(
                op,
                format!("{} rows of {k} are not whole blocks", w.dtype),
            ));
        }
        let DenseTiles {
            nt,
            mt,
            w_scratch,
            x_scratch,
        } = dense_tiles(w.dtype, m, n, k);
        let (mut guard, scratch) = self.matmul_scratch(w_scratch + x_scratch)?;
        let Some(gemm) = guard.as_mut() else {
            return Err(Error::backend(self.name(), "cuBLASLt state missing"));
        };
        let (ws_ptr, xs_ptr) = (scratch, scratch + w_scratch as u64);
        let esize: u64 = if input == GemmInput::F32 { 4 } else { 2 };
        let x_tiles = m.div_ceil(mt);
        let convert_x = |m0: usize, rows: usize| -> Result<()> {
            let code = if input == GemmInput::F16 {
                "x_to_f16"
            } else {
                "x_to_bf16"
            };
            self.launch_x_convert(code, xp + (m0 * k * 4) as u64, xs_ptr, (rows * k) as i64)
        };
        if input != GemmInput::F32 && x_tiles == 1 {
            convert_x(0, m)?;
        }
        for n0 in (0..n).step_by(nt) {
            let nn = nt.min(n - n0);
            let wp = if dequant {
                let ti = type_index(w.dtype)
                    .ok_or_else(|| check::unsupported(op, w.dtype, &self.info))?;
                self.launch_dequant(DEQUANT[ti], w, ws_ptr, n0, nn, k)?;
                ws_ptr
            } else {
                w.body_ptr() + (n0 * k) as u64 * esize
            };
            for m0 in (0..m).step_by(mt) {
                let mm = mt.min(m - m0);
                let xq = if input == GemmInput::F32 {
                    xp + (m0 * k * 4) as u64
                } else {
                    if x_tiles > 1 {
                        convert_x(m0, mm)?;
                    }
                    xs_ptr
                };
                let o = outp + ((m0 * n + n0) * 4) as u64;
                gemm.run(&self.stream, input, mm, nn, k, wp, xq, o, n)
                    .map_err(Error::from)?;
            }
        }
        Ok(())
    }

    fn launch_dequant(
        &self,
        name: &'static str,
        w: &CudaWeight,
        out: u64,
        row0: usize,
        rows: usize,
        k: usize,
    ) -> Result<()> {
        let op = OpKind::Matmul;
        let f = self.function(&MATMUL_Q, name)?;
        let qk = split(w.dtype).map_or(1, |s| s.qk);
        let chunks = rows * (k / qk) * chunks_per_block(w.dtype);
        let sms = self.info.caps.compute_units.max(1) as usize;
        let cfg = LaunchConfig {
            grid_dim: (chunks.div_ceil(256 * 4).clamp(1, sms * 8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let (r0, ri, ki) = (
            row0 as i64,
            arg_i32(op, "rows", rows)?,
            arg_i32(op, "k", k)?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&body).arg(&head).arg(&out).arg(&r0).arg(&ri).arg(&ki);
        // SAFETY: rows row0..row0+rows lie inside the weight; `out` is scratch of rows·k bf16.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch dequant_bf16"))
    }

    fn launch_x_convert(&self, name: &'static str, x: u64, out: u64, count: i64) -> Result<()> {
        let f = self.function(&MATMUL_Q, name)?;
        let cfg = self.grid_1d(count as usize);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x).arg(&out).arg(&count);
        // SAFETY: x holds `count` f32, out is scratch of `count` 16-bit elements.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch x convert"))
    }

    /// Bytes of the dense path's dequantize scratch for the weights prepared so far: the largest
    /// weight's bf16 image, capped at `W_TILE_CAP` (tiles beyond), plus up to `X_TILE_CAP` for
    /// activations converted to bf16 (m·k·2 bytes); the fused path of block types
    /// shares this scratch for its int8 x (about m·k·1.5 bytes). For the memory planner.
    pub fn dequant_scratch_bytes(&self) -> usize {
        let big = *self
            .largest_weight_bf16
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        big.min(W_TILE_CAP)
    }
}
