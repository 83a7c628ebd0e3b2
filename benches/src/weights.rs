//! Random weights of every kiln weight type for benchmarks (values do not change the speed of
//! a kernel, but NaN/Inf scales could, so f16 scale fields are set to small finite values).

use half::{bf16, f16};
use kiln_core::DType;

/// SplitMix64: fast, deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Offsets of the f16 scale fields inside a GGUF block.
fn f16_fields(dt: DType) -> &'static [usize] {
    use DType::*;
    match dt {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// `rows × k` elements of `dt` as GGUF bytes (`k` a multiple of the block size).
pub fn random_weight(dt: DType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let n = rows * k;
    match dt {
        DType::F32 => (0..n).flat_map(|_| r.f32().to_le_bytes()).collect(),
        DType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(r.f32()).to_le_bytes())
            .collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(r.f32()).to_le_bytes())
            .collect(),
        _ => {
            let bytes = dt.bytes_for(n).unwrap_or(0);
            let mut out = Vec::with_capacity(bytes);
            while out.len() < bytes {
                out.extend_from_slice(&r.next_u64().to_le_bytes());
            }
            out.truncate(bytes);
            for blk in out.chunks_exact_mut(dt.block_bytes()) {
                for &off in f16_fields(dt) {
                    let v = f16::from_f32(1e-3 * (1.0 + r.f32().abs()));
                    blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            out
        }
    }
}
