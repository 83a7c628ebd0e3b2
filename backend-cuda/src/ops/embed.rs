//! embed (kernels/embed.cu).

use cudarc::driver::PushKernelArg;
use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, Result, View, ViewMut, Weight};

use super::arg_i32;
use crate::buffer::{chunked_ok, float_code, suffix};
use crate::device::CudaBackend;
use crate::module_cache::EMBED;

/// Kernel names `embed_<type>` for every weight type.
const EMBED_FNS: [(DType, &str); 15] = [
    (DType::F32, "embed_f32"),
    (DType::F16, "embed_f16"),
    (DType::BF16, "embed_bf16"),
    (DType::Q4_0, "embed_q4_0"),
    (DType::Q4_1, "embed_q4_1"),
    (DType::Q5_0, "embed_q5_0"),
    (DType::Q5_1, "embed_q5_1"),
    (DType::Q8_0, "embed_q8_0"),
    (DType::Q2_K, "embed_q2_k"),
    (DType::Q3_K, "embed_q3_k"),
    (DType::Q4_K, "embed_q4_k"),
    (DType::Q5_K, "embed_q5_k"),
    (DType::Q6_K, "embed_q6_k"),
    (DType::IQ4_NL, "embed_iq4_nl"),
    (DType::IQ4_XS, "embed_iq4_xs"),
];

impl CudaBackend {
    /// out f32 `[n, dim]` = scale · table[ids]: ids i32 `[n]`, table `[vocab, dim]`.
    pub(crate) fn op_embed(
        &self,
        ids: View<'_>,
        table: &Weight,
        scale: f32,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let op = OpKind::Embed;
        let w = self.weight(op, table)?;
        check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
        check::dtype(op, "out", out.dtype(), &[DType::F32])?;
        let s = table.shape();
        if s.rank() != 2 {
            return Err(Error::shape(op, format!("table {s} must be [vocab, dim]")));
        }
        let (vocab, dim) = (s.dim(0), s.dim(1));
        let n = ids.numel();
        check::eq(op, "out elements vs ids·dim", out.numel(), n * dim)?;
        out.check_disjoint(&ids)?;
        if n == 0 || dim == 0 {
            return Ok(());
        }
        let (ip, op_) = (self.ptr(op, &ids)?, self.ptr_mut(op, &out)?);
        let (ni, di, vi) = (
            arg_i32(op, "n", n)?,
            arg_i32(op, "dim", dim)?,
            arg_i32(op, "vocab", vocab)?,
        );
        if chunked_ok(w.dtype, dim) {
            let name = EMBED_FNS
                .iter()
                .find(|(d, _)| *d == w.dtype)
                .map(|(_, f)| *f)
                .ok_or_else(|| check::unsupported(op, w.dtype, &self.info))?;
            let sp = crate::buffer::split(w.dtype)
                .ok_or_else(|| check::unsupported(op, w.dtype, &self.info))?;
            let chunks = n * (dim / sp.qk) * chunks_per_block(w.dtype);
            self.launch_embed(
                name,
                ip,
                w.body_ptr(),
                w.head_ptr(),
                op_,
                ni,
                di,
                scale,
                vi,
                chunks,
            )
        } else {
            let dt = float_code(w.dtype).ok_or_else(|| {
                Error::shape(
                    op,
                    format!(
                        "{} table rows of {dim} are not whole blocks",
                        suffix(w.dtype)
                    ),
                )
            })?;
            self.launch_embed_generic(ip, w.body_ptr(), dt, op_, ni, di, scale, vi)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_embed(
        &self,
        name: &'static str,
        ids: u64,
        body: u64,
        head: u64,
        out: u64,
        n: i32,
        dim: i32,
        scale: f32,
        vocab: i32,
        chunks: usize,
    ) -> Result<()> {
        let f = self.function(&EMBED, name)?;
        let cfg = self.grid_1d(chunks);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ids)
            .arg(&body)
            .arg(&head)
            .arg(&out)
            .arg(&n)
            .arg(&dim)
            .arg(&scale)
            .arg(&vocab);
        // SAFETY: body/head are the repacked table of vocab × dim (whole blocks); ids holds n i32,
        // out n·dim f32 (checked by the caller); ids outside [0, vocab) are skipped.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch embed"))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_embed_generic(
        &self,
        ids: u64,
        table: u64,
        dt: i32,
        out: u64,
        n: i32,
        dim: i32,
        scale: f32,
        vocab: i32,
    ) -> Result<()> {
        let f = self.function(&EMBED, "embed_float_generic")?;
        let cfg = self.grid_1d(n as usize * dim as usize);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&ids)
            .arg(&table)
            .arg(&dt)
            .arg(&out)
            .arg(&n)
            .arg(&dim)
            .arg(&scale)
            .arg(&vocab);
        // SAFETY: the table holds vocab·dim elements of dtype `dt` unrepacked; ids n i32, out
        // n·dim f32 (checked by the caller); ids outside [0, vocab) are skipped.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch embed_float_generic"))
    }
}

/// CHUNKS of quant.cuh per type.
pub(crate) fn chunks_per_block(dtype: DType) -> usize {
    use DType::*;
    match dtype {
        Q8_0 => 2,
        Q2_K | Q3_K | Q6_K => 4,
        Q4_K | Q5_K | IQ4_XS => 8,
        _ => 1,
    }
}

/// RUNS (16-element runs per chunk) of quant.cuh per type.
pub(crate) fn runs_per_chunk(dtype: DType) -> usize {
    use DType::*;
    match dtype {
        F32 | F16 | BF16 | Q8_0 => 1,
        Q2_K | Q3_K | Q6_K => 4,
        _ => 2,
    }
}
