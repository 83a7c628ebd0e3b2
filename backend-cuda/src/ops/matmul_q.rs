//! matmul for every weight type (kernels/matmul_q.cu + cuBLASLt), and prepare_weight.
//!
//! Dispatch: for m ≤ the measured crossover of (device, dtype, n, k) the fused dequant GEMV /
//! small-GEMM kernel runs; above it the weight is dequantized to bf16 (in tiles of at most
//! `W_TILE_CAP` bytes) and cuBLASLt runs a tensor-core GEMM (bf16 in, f32 accumulate). The
//! crossover comes from the tuner (src/tune.rs), measured on first use and persisted.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_core::backend::check;
use kiln_core::{DType, Error, HostTensor, OpKind, Result, View, ViewMut, Weight};

use super::arg_i32;
use super::embed::{chunks_per_block, runs_per_chunk};
use crate::buffer::{CudaWeight, chunked_ok, float_code, repack, split};
use crate::device::CudaBackend;
use crate::gemm::{Gemm, GemmInput};
use crate::module_cache::MATMUL_Q;

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
}

macro_rules! per_type {
    ($prefix:literal, $($s:literal),*) => {
        [$( [concat!($prefix, $s, "_m1"), concat!($prefix, $s, "_m2"), concat!($prefix, $s, "_m4"), concat!($prefix, $s, "_m8")] ),*]
    };
}
macro_rules! per_type_s {
    ($($s:literal),*) => { [$( [concat!("gemv_", $s, "_m1_s"), concat!("gemv_", $s, "_m2_s")] ),*] };
}
macro_rules! dequant_names {
    ($($s:literal),*) => { [$( concat!("dequant_bf16_", $s) ),*] };
}

/// `gemv_<type>_m<M>`, indexed like `DType::WEIGHT_TYPES`, then by M ∈ {1, 2, 4, 8}.
const GEMV: [[&str; 4]; 15] = per_type!(
    "gemv_", "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k",
    "q5_k", "q6_k", "iq4_nl", "iq4_xs"
);
/// `gemv_<type>_m<M>_s` (x staged in shared memory), M ∈ {1, 2}.
const GEMV_S: [[&str; 2]; 15] = per_type_s!(
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs"
);
const DEQUANT: [&str; 15] = dequant_names!(
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs"
);

/// Whether the shared-memory-x GEMV variant is used for a type. Measured on an H200
/// (BENCHMARKS.md, 2026-11-22): staging x in lane order helps the types with light decode
/// (Q4_0 34→40 %, IQ4_NL 25→38 %, Q8_0 58→62 % of copy bandwidth on 14336×4096) but hurts the
/// k-quants, whose decode needs more than the 128 registers a 512-thread block allows
/// (Q6_K 37→28 %, Q4_K 34→30 %).
fn smem_x_wins(dt: DType) -> bool {
    matches!(
        dt,
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::IQ4_NL | DType::IQ4_XS
    )
}

fn type_index(dt: DType) -> Option<usize> {
    DType::WEIGHT_TYPES.iter().position(|d| *d == dt)
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
        let fused = match path {
            MatmulPath::Fused => true,
            MatmulPath::Dense => false,
            MatmulPath::Auto => m <= self.crossover_or_tune(w, cw)?,
        };
        if fused {
            self.matmul_fused(xp, cw, op_, m, n, k)
        } else {
            self.matmul_dense(xp, cw, op_, m, n, k)
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
        let op = OpKind::Matmul;
        let (mi, ni, ki) = (
            arg_i32(op, "m", m)?,
            arg_i32(op, "n", n)?,
            arg_i32(op, "k", k)?,
        );
        if !chunked_ok(w.dtype, k) || !xp.is_multiple_of(16) {
            // Float weights are stored unrepacked, so the generic kernel reads them for any k and
            // any x alignment; block types need the 16-byte aligned x of the chunked kernels.
            let Some(dt) = float_code(w.dtype) else {
                return Err(Error::shape(
                    op,
                    format!(
                        "x must start at a 16-byte aligned address for {} weights (got {xp:#x})",
                        w.dtype
                    ),
                ));
            };
            return self.launch_gemv_generic(w.body_ptr(), dt, xp, outp, mi, ni, ki);
        }
        let ti = type_index(w.dtype).ok_or_else(|| check::unsupported(op, w.dtype, &self.info))?;
        let (mt, mi_idx) = match m {
            1 => (1, 0),
            2 => (2, 1),
            3 | 4 => (4, 2),
            _ => (8, 3),
        };
        let r = if mt <= 2 { 4 } else { 2 };
        let groups = n.div_ceil(r);
        let sms = self.info.caps.compute_units.max(1) as usize;
        let split_for = |warps: usize| -> usize {
            if groups >= warps {
                1
            } else if groups * 2 >= warps {
                2
            } else {
                4
            }
        };
        // M ≤ 2 with x fitting in shared memory: persistent blocks of 16 warps, x staged once per
        // block in lane order (kernels/matmul_q.cu gemv_smem_body).
        let qk = split(w.dtype).map_or(16, |s| s.qk);
        let nchunks = (k / qk) * chunks_per_block(w.dtype);
        let runs = runs_per_chunk(w.dtype);
        let smem = mt * nchunks.div_ceil(32) * runs * 4 * 32 * 16;
        let smem_cap = (self.info.caps.shared_memory_bytes as usize).saturating_sub(2048);
        if mt <= 2 && smem_x_wins(w.dtype) && smem <= smem_cap && m.div_ceil(mt) <= 65535 {
            let s_split = split_for(sms * 16);
            let cfg = LaunchConfig {
                grid_dim: (sms as u32, m.div_ceil(mt) as u32, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let name = GEMV_S[ti][mi_idx];
            let f = self.function(&MATMUL_Q, name)?;
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(self.drv("cuFuncSetAttribute"))?;
            return self.launch_gemv(name, cfg, w, xp, outp, mi, ni, ki, s_split as i32);
        }
        // Otherwise x is read from global memory: R W rows per group, S warps per group so the
        // grid holds ~32 warps per SM, 4 warps per block, at most 8 blocks per SM.
        let s_split = split_for(sms * 32);
        let blocks = (groups * s_split).div_ceil(4).clamp(1, sms * 8);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, m.div_ceil(mt) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        if m.div_ceil(mt) > 65535 {
            return Err(Error::shape(
                op,
                format!("m = {m} exceeds the fused kernel's grid limit"),
            ));
        }
        self.launch_gemv(
            GEMV[ti][mi_idx],
            cfg,
            w,
            xp,
            outp,
            mi,
            ni,
            ki,
            s_split as i32,
        )
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
        let mut b = self.stream.launch_builder(&f);
        b.arg(&body)
            .arg(&head)
            .arg(&x)
            .arg(&out)
            .arg(&n)
            .arg(&k)
            .arg(&m)
            .arg(&s_split);
        // SAFETY: body/head are the repacked n × k weight (rows are whole blocks); x holds m·k
        // f32 at a 16-byte aligned address, out m·n f32 (checked by the callers); warps stride
        // over the row groups (block-uniform trip counts around the barriers), every read row is
        // clamped to n − 1 and writes are bounded by n and m.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch gemv"))
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
        let row_bytes = k * 2;
        let nt = if dequant {
            n.min((W_TILE_CAP / row_bytes).max(1))
        } else {
            n
        };
        let mt = if input == GemmInput::F32 {
            m
        } else {
            m.min((X_TILE_CAP / row_bytes).max(1))
        };
        let w_scratch = if dequant {
            (nt * row_bytes).div_ceil(256) * 256
        } else {
            0
        };
        let x_scratch = if input == GemmInput::F32 {
            0
        } else {
            mt * row_bytes
        };
        let mut guard = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let ws_bytes = if self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9) {
                32 << 20
            } else {
                4 << 20
            };
            let ws = self.alloc_mem(ws_bytes)?;
            *guard = Some(Gemm::new(self.name(), ws)?);
        }
        let Some(gemm) = guard.as_mut() else {
            return Err(Error::backend(self.name(), "cuBLASLt state missing"));
        };
        let need = w_scratch + x_scratch;
        let scratch = match gemm.scratch(need) {
            Some(p) => p,
            None => {
                let mem = self.alloc_mem(need.max(1 << 20))?;
                gemm.push_scratch(mem)
            }
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
    /// activations converted to bf16 (m·k·2 bytes). For the memory planner.
    pub fn dequant_scratch_bytes(&self) -> usize {
        let big = *self
            .largest_weight_bf16
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        big.min(W_TILE_CAP)
    }
}
