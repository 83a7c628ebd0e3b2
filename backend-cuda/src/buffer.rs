//! Device memory objects behind `kiln_core::Buffer` / `Weight`, and the weight repacking done by
//! `prepare_weight`.
//!
//! Weights are stored in the layout of kernels/quant.cuh: the 16-byte-aligned part of every block
//! (BODY bytes) for all blocks, then the small unaligned header fields (HEAD bytes) of all blocks,
//! so every kernel reads quants with 16-byte loads whatever the GGUF block size (18, 22, 34, 110,
//! 210 bytes). The repacked weight has exactly the bytes of the GGUF data (plus alignment padding
//! between the two regions).

use cudarc::driver::CudaSlice;
use kiln_core::{DType, Error, Result};

/// A device allocation; `ptr` is its base address (event tracking is off, so the address is
/// stable and free of side effects to use).
pub struct CudaMem {
    pub(crate) slice: CudaSlice<u8>,
    pub(crate) ptr: u64,
}

/// A prepared weight (all experts together for 3-D weights), repacked.
pub struct CudaWeight {
    pub(crate) mem: CudaMem,
    pub(crate) dtype: DType,
    /// Byte offset of the HEAD region (0 when the type has none).
    pub(crate) head_offset: usize,
}

impl CudaWeight {
    pub(crate) fn body_ptr(&self) -> u64 {
        self.mem.ptr
    }
    pub(crate) fn head_ptr(&self) -> u64 {
        self.mem.ptr + self.head_offset as u64
    }
}

/// How a dtype's blocks split into the aligned body and the small head (see quant.cuh):
/// (elements per block, body byte ranges in GGUF block order, head byte ranges).
pub(crate) struct Split {
    pub qk: usize,
    pub body: &'static [(usize, usize)],
    pub head: &'static [(usize, usize)],
}

impl Split {
    pub fn body_bytes(&self) -> usize {
        self.body.iter().map(|(a, b)| b - a).sum()
    }
    pub fn head_bytes(&self) -> usize {
        self.head.iter().map(|(a, b)| b - a).sum()
    }
}

/// The split of each weight type. Float types use 16-element groups with no head.
pub(crate) fn split(dtype: DType) -> Option<Split> {
    use DType::*;
    let s = |qk, body, head| Some(Split { qk, body, head });
    match dtype {
        F32 => s(16, &[(0, 64)], &[]),
        F16 | BF16 => s(16, &[(0, 32)], &[]),
        Q4_0 | IQ4_NL => s(32, &[(2, 18)], &[(0, 2)]),
        Q4_1 => s(32, &[(4, 20)], &[(0, 4)]),
        Q5_0 => s(32, &[(6, 22)], &[(0, 6)]),
        Q5_1 => s(32, &[(8, 24)], &[(0, 8)]),
        Q8_0 => s(32, &[(2, 34)], &[(0, 2)]),
        Q2_K => s(256, &[(0, 80)], &[(80, 84)]),
        Q3_K => s(256, &[(0, 96)], &[(96, 110)]),
        Q4_K => s(256, &[(0, 144)], &[]),
        Q5_K => s(256, &[(0, 176)], &[]),
        Q6_K => s(256, &[(0, 208)], &[(208, 210)]),
        IQ4_XS => s(256, &[(8, 136)], &[(0, 8)]),
        I32 | U32 | U8 => None,
    }
}

/// Whether the chunked kernels can take rows of `k` elements of `dtype` (whole 16-element
/// groups for float types; quantized rows are whole blocks by construction).
pub(crate) fn chunked_ok(dtype: DType, k: usize) -> bool {
    split(dtype).is_some_and(|s| k.is_multiple_of(s.qk))
}

/// Repack GGUF bytes (`rows` × `k` of `dtype`) into body + head regions. Returns the bytes and
/// the head region's offset. Float weights whose rows are not whole 16-element groups stay as is
/// (the generic kernels read them).
pub(crate) fn repack(dtype: DType, rows: usize, k: usize, data: &[u8]) -> Result<(Vec<u8>, usize)> {
    let sp = split(dtype).ok_or_else(|| Error::Quant {
        dtype,
        msg: "not a weight type".into(),
    })?;
    if dtype.is_float() && !k.is_multiple_of(sp.qk) {
        return Ok((data.to_vec(), 0));
    }
    let block_bytes = sp.body_bytes() + sp.head_bytes();
    let nblocks = rows * (k / sp.qk);
    if nblocks * block_bytes != data.len() {
        return Err(Error::Quant {
            dtype,
            msg: format!(
                "{rows}×{k} weight needs {} bytes, got {}",
                nblocks * block_bytes,
                data.len()
            ),
        });
    }
    let (bb, hb) = (sp.body_bytes(), sp.head_bytes());
    let head_offset = (nblocks * bb).div_ceil(16) * 16;
    let mut out = Vec::new();
    out.try_reserve_exact(head_offset + nblocks * hb)
        .map_err(|_| Error::Invalid(format!("{dtype} weight: host out of memory repacking")))?;
    if hb == 0 {
        out.extend_from_slice(data);
        return Ok((out, 0));
    }
    out.resize(head_offset + nblocks * hb, 0);
    let (body, head) = out.split_at_mut(head_offset);
    for (i, blk) in data.chunks_exact(block_bytes).enumerate() {
        let mut o = i * bb;
        for &(a, b) in sp.body {
            body[o..o + (b - a)].copy_from_slice(&blk[a..b]);
            o += b - a;
        }
        let mut o = i * hb;
        for &(a, b) in sp.head {
            head[o..o + (b - a)].copy_from_slice(&blk[a..b]);
            o += b - a;
        }
    }
    if dtype == DType::Q8_0 {
        // Offset binary (q + 128) so the kernels decode an unsigned byte (quant.cuh).
        body.iter_mut().for_each(|b| *b ^= 0x80);
    }
    Ok((out, head_offset))
}

/// The kernel-name suffix of a weight type (`q4_k`, `bf16`, ...).
pub(crate) fn suffix(dtype: DType) -> &'static str {
    use DType::*;
    match dtype {
        F32 => "f32",
        F16 => "f16",
        BF16 => "bf16",
        Q4_0 => "q4_0",
        Q4_1 => "q4_1",
        Q5_0 => "q5_0",
        Q5_1 => "q5_1",
        Q8_0 => "q8_0",
        Q2_K => "q2_k",
        Q3_K => "q3_k",
        Q4_K => "q4_k",
        Q5_K => "q5_k",
        Q6_K => "q6_k",
        IQ4_NL => "iq4_nl",
        IQ4_XS => "iq4_xs",
        I32 => "i32",
        U32 => "u32",
        U8 => "u8",
    }
}

/// The DT_* code of a float dtype in the kernels (common.cuh).
pub(crate) fn float_code(dtype: DType) -> Option<i32> {
    match dtype {
        DType::F32 => Some(0),
        DType::F16 => Some(1),
        DType::BF16 => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_every_block_byte_once() {
        for dt in DType::WEIGHT_TYPES {
            let sp = split(dt).unwrap();
            let per_block = if dt.is_float() {
                sp.qk * dt.block_bytes()
            } else {
                dt.block_bytes()
            };
            assert_eq!(sp.body_bytes() + sp.head_bytes(), per_block, "{dt}");
            assert_eq!(sp.body_bytes() % 16, 0, "{dt} body must be 16-byte aligned");
            let mut seen = vec![0u8; per_block];
            for &(a, b) in sp.body.iter().chain(sp.head) {
                seen[a..b].iter_mut().for_each(|s| *s += 1);
            }
            assert!(seen.iter().all(|&s| s == 1), "{dt}");
        }
    }

    #[test]
    fn repack_moves_heads_after_bodies() {
        // Two Q8_0 blocks: d = [1,2] / [3,4], qs = 32 bytes of 10+i / 50+i.
        let mut data = vec![1u8, 2];
        data.extend((0..32).map(|i| 10 + i));
        data.extend([3u8, 4]);
        data.extend((0..32).map(|i| 50 + i));
        let (out, head) = repack(DType::Q8_0, 1, 64, &data).unwrap();
        assert_eq!(head, 64);
        // Q8_0 quants are stored in offset binary (XOR 0x80).
        let flip = |s: &[u8]| s.iter().map(|b| b ^ 0x80).collect::<Vec<u8>>();
        assert_eq!(out[..32], flip(&data[2..34])[..]);
        assert_eq!(out[32..64], flip(&data[36..68])[..]);
        assert_eq!(&out[64..], &[1, 2, 3, 4]);
        assert!(repack(DType::Q8_0, 1, 64, &data[1..]).is_err());
    }
}
