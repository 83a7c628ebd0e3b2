//! `prepare_weight`: upload + repack, split into row chunks that each fit one storage binding.
//!
//! Repack choice — *aligned repack*, not byte extraction: GGUF blocks of 18, 22, 34, 110 and
//! 210 bytes (Q4_0, IQ4_NL, Q5_0, Q8_0, Q3_K, Q6_K) start mid-word in an `array<u32>`, which
//! would make every field read a two-word shift-and-mask whose shape depends on the block's
//! parity. Those types carry exactly one field that breaks alignment, the f16 super-scale `d`;
//! we move it out into a packed f16 array after the blocks of the chunk. The remaining block
//! is a multiple of 4 bytes, so every block starts on a word, each byte array is word-aligned
//! and the shader reads whole words. The cost is zero extra bytes (≤ 2 bytes of padding per
//! chunk), the layout stays GGUF's otherwise (easy to check against the file), and GEMV reads
//! exactly the bytes of the file. All other types (4-byte-multiple blocks) are kept as they
//! are.
//!
//! Chunks: rows `[r0, r1)` of the (flattened `[e·n, k]`) weight per buffer, each at most
//! `max_storage_buffer_binding_size` (and `max_buffer_size`) bytes; ops dispatch once per
//! chunk. A single row that does not fit is an error naming the limit.

use std::sync::Arc;

use kiln_core::backend::check;
use kiln_core::{DType, Error, HostTensor, OpKind, Result, Weight};

use crate::device::WgpuBackend;

/// One row chunk of a prepared weight: rows `r0..r1` in `buf`.
pub(crate) struct Chunk {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) r0: usize,
    pub(crate) r1: usize,
    /// Word index where the moved-out d array starts (0 when the type has none).
    pub(crate) d_base: u32,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        crate::buffer::FREES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A weight as this backend keeps it.
pub(crate) struct WgpuWeight {
    pub(crate) dtype: DType,
    /// Rows of the flattened `[rows, k]` matrix.
    pub(crate) rows: usize,
    pub(crate) k: usize,
    pub(crate) chunks: Vec<Chunk>,
}

impl WgpuWeight {
    pub(crate) fn of(w: &Weight, op: OpKind) -> Result<&WgpuWeight> {
        w.downcast::<WgpuWeight>()
            .ok_or_else(|| Error::shape(op, format!("{w:?} was not prepared by a wgpu backend")))
    }
    /// Blocks per row.
    pub(crate) fn bpr(&self) -> usize {
        self.k / self.dtype.block_size()
    }
}

/// For split types: (byte range of d inside the GGUF block, bytes kept in the block).
pub(crate) fn split_d(d: DType) -> Option<(usize, usize)> {
    match d {
        DType::Q4_0 | DType::IQ4_NL | DType::Q5_0 | DType::Q8_0 => Some((0, d.block_bytes() - 2)),
        DType::Q3_K => Some((108, 108)),
        DType::Q6_K => Some((208, 208)),
        _ => None,
    }
}

/// Repack `rows` whole rows of GGUF bytes into the chunk layout described above.
pub(crate) fn repack(d: DType, src: &[u8]) -> Vec<u8> {
    let Some((d_at, keep)) = split_d(d) else {
        let mut v = src.to_vec();
        v.resize(src.len().div_ceil(4) * 4, 0);
        return v;
    };
    let bb = d.block_bytes();
    let nb = src.len() / bb;
    let main = nb * keep;
    let mut out = vec![0u8; main + (nb * 2).div_ceil(4) * 4];
    for (b, blk) in src.chunks_exact(bb).enumerate() {
        let dst = &mut out[b * keep..(b + 1) * keep];
        if d_at == 0 {
            dst.copy_from_slice(&blk[2..]);
        } else {
            dst.copy_from_slice(&blk[..keep]);
        }
        out[main + 2 * b..main + 2 * b + 2].copy_from_slice(&blk[d_at..d_at + 2]);
    }
    out
}

impl WgpuBackend {
    /// The binding cap used for chunking (`KILN_WGPU_MAX_BINDING` may lower it, for tests).
    pub(crate) fn max_binding(&self) -> u64 {
        let hw = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        match std::env::var("KILN_WGPU_MAX_BINDING")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(v) if v >= 4 => v.min(hw),
            _ => hw,
        }
    }

    pub(crate) fn prepare(&self, w: &HostTensor<'_>) -> Result<Weight> {
        let w = HostTensor::new(w.dtype, w.shape, w.data)?;
        let op = OpKind::Matmul;
        if !DType::WEIGHT_TYPES.contains(&w.dtype) {
            return Err(check::unsupported(op, w.dtype, &self.info));
        }
        if !(2..=3).contains(&w.shape.rank()) {
            return Err(Error::shape(
                op,
                format!("weight {} must be [n, k] or [experts, n, k]", w.shape),
            ));
        }
        let k = w.shape.last();
        if k % 32 != 0 {
            return Err(Error::Quant {
                dtype: w.dtype,
                msg: format!("rows of {k} elements: the wgpu backend needs k % 32 == 0"),
            });
        }
        let rows = w.shape.rows();
        let row_bytes = w.dtype.bytes_for(k)?;
        let cap = self.max_binding();
        // +2 bytes per block for the moved-out d and 4 of padding are within row_bytes + 4.
        let per_row = row_bytes as u64;
        if per_row + 4 > cap {
            return Err(self.limit_error(
                format!("one row of a {} {} weight", w.shape, w.dtype),
                per_row + 4,
                cap,
            ));
        }
        let rows_per_chunk = (((cap - 4) / per_row) as usize).max(1);
        let mut chunks = Vec::new();
        let mut total = 0usize;
        let mut r0 = 0usize;
        while r0 < rows.max(1) {
            let r1 = (r0 + rows_per_chunk).min(rows);
            let bytes = &w.data[r0 * row_bytes..r1 * row_bytes];
            let packed = repack(w.dtype, bytes);
            let buf = self.alloc_mem(packed.len(), "kiln weight")?;
            self.flush();
            self.queue.write_buffer(&buf, 0, &packed);
            let d_base = match split_d(w.dtype) {
                Some((_, keep)) => ((r1 - r0) * (k / w.dtype.block_size()) * keep / 4) as u32,
                None => 0,
            };
            total += packed.len();
            chunks.push(Chunk {
                buf,
                r0,
                r1,
                d_base,
            });
            if r1 == rows {
                break;
            }
            r0 = r1;
        }
        let ww = WgpuWeight {
            dtype: w.dtype,
            rows,
            k,
            chunks,
        };
        Ok(Weight::new(
            Arc::new(ww),
            w.shape,
            w.dtype,
            self.info.id,
            total,
        ))
    }
}
