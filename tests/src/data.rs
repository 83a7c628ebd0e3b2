//! Seeded random inputs: activations, integer tables, and weights of all 15 weight dtypes.
//!
//! Block-format weights come two ways:
//! - [`WeightSource::RandomBlocks`] (every type): each block is uniform random bytes (every bit
//!   pattern of the quant, sub-scale and high-bit fields is a valid encoding) with its f16
//!   super-scale fields overwritten by small finite values of realistic size, as
//!   `shared/testdata/quant/README.md` ("How the inputs were made") describes. Some blocks get
//!   scales 2⁻⁶ smaller, which puts them in the f16 subnormal range (real k-quant files have
//!   those; a kernel that flushes f16 denormals fails on them).
//! - [`WeightSource::Quantized`] (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K): random f32 quantized with
//!   `kiln_core::quant::quantize`.

use half::{bf16, f16};
use kiln_core::{DType, Shape};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore, SeedableRng};

/// A seeded random stream (one per case; see `harness::rng`).
pub struct Rng(StdRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.0.random::<f32>()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.0.random_range(lo..=hi)
    }
    pub fn coin(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
    /// Standard normal (Box–Muller in f64).
    pub fn normal(&mut self) -> f32 {
        let u1: f64 = 1.0 - self.0.random::<f64>(); // (0, 1]
        let u2: f64 = self.0.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    /// `n` values N(0, std²).
    pub fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
    /// Activation-like values: N(0, std²) with 1% outliers ×8.
    pub fn activations(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.normal() * std;
                if self.coin(0.01) { v * 8.0 } else { v }
            })
            .collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.0.fill_bytes(&mut v);
        v
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Round f32 values to a storage float type and back (what a buffer of that dtype holds).
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|x| f16::from_f32(*x).to_f32()).collect(),
        DType::BF16 => v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect(),
        _ => panic!("round_to: {dtype} is not a float storage type"),
    }
}

/// f32 values as little-endian bytes of a float dtype (round to nearest even).
pub fn float_bytes(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => panic!("float_bytes: {dtype} is not a float storage type"),
    }
}

/// Little-endian bytes of a float dtype as f32 values.
pub fn decode_floats(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => panic!("decode_floats: {dtype} is not a float storage type"),
    }
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// How a block-format weight is made (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightSource {
    RandomBlocks,
    Quantized,
}

/// The types `kiln_core::quant::quantize` handles besides the float ones.
pub const QUANTIZER_TYPES: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// A weight in host memory, in file layout.
#[derive(Clone, Debug)]
pub struct HostWeight {
    pub dtype: DType,
    pub shape: Shape,
    pub bytes: Vec<u8>,
}

impl HostWeight {
    pub fn host_tensor(&self) -> kiln_core::HostTensor<'_> {
        kiln_core::HostTensor::new(self.dtype, self.shape, &self.bytes)
            .unwrap_or_else(|e| panic!("host weight {} {}: {e}", self.shape, self.dtype))
    }
}

/// One f16 scale field of a block: byte offset, and how its value follows from the block's
/// absolute maximum `amax`.
#[derive(Clone, Copy)]
enum Field {
    /// d = ±amax / mul (random sign where negative scales are valid encodings).
    D { at: usize, mul: f32, signed: bool },
    /// dmin = amax / (2·mul) (k-quant minimum scale, subtracted).
    Dmin { at: usize, mul: f32 },
    /// m = −amax·u, u ∈ [0.5, 1) (Q4_1/Q5_1 block minimum, added).
    Min { at: usize },
}

/// Offsets from `shared/testdata/quant/README.md`; multipliers from its generate.py `CONSTRUCT`
/// table for k-quants and IQ types, and the full quant range for the legacy ones.
fn scale_fields(dt: DType) -> &'static [Field] {
    use Field::*;
    match dt {
        DType::Q4_0 => &[D {
            at: 0,
            mul: 8.0,
            signed: true,
        }],
        DType::Q4_1 => &[
            D {
                at: 0,
                mul: 15.0,
                signed: false,
            },
            Min { at: 2 },
        ],
        DType::Q5_0 => &[D {
            at: 0,
            mul: 16.0,
            signed: true,
        }],
        DType::Q5_1 => &[
            D {
                at: 0,
                mul: 31.0,
                signed: false,
            },
            Min { at: 2 },
        ],
        DType::Q8_0 => &[D {
            at: 0,
            mul: 127.0,
            signed: true,
        }],
        DType::Q2_K => &[
            D {
                at: 80,
                mul: 45.0,
                signed: false,
            },
            Dmin { at: 82, mul: 15.0 },
        ],
        DType::Q3_K => &[D {
            at: 108,
            mul: 128.0,
            signed: false,
        }],
        DType::Q4_K => &[
            D {
                at: 0,
                mul: 945.0,
                signed: false,
            },
            Dmin { at: 2, mul: 63.0 },
        ],
        DType::Q5_K => &[
            D {
                at: 0,
                mul: 1953.0,
                signed: false,
            },
            Dmin { at: 2, mul: 63.0 },
        ],
        DType::Q6_K => &[D {
            at: 208,
            mul: 4096.0,
            signed: false,
        }],
        DType::IQ4_NL => &[D {
            at: 0,
            mul: 127.0,
            signed: false,
        }],
        DType::IQ4_XS => &[D {
            at: 0,
            mul: 4064.0,
            signed: false,
        }],
        _ => &[],
    }
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Random blocks of `dtype` for `n` elements (see the module docs); `std` sets the size of the
/// dequantized values (about N(0, std²)-sized).
pub fn random_blocks(rng: &mut Rng, dtype: DType, n: usize, std: f32) -> Vec<u8> {
    assert!(
        dtype.is_quantized(),
        "random_blocks: {dtype} is not a block type"
    );
    let mut bytes = rng.bytes(dtype.bytes_for(n).unwrap());
    for (i, block) in bytes.chunks_exact_mut(dtype.block_bytes()).enumerate() {
        // amax of a block of N(0, std²) values is about 2.5–3.5 std.
        let mut amax = std * rng.uniform(2.0, 4.0);
        if i % 13 == 5 {
            amax *= 1.0 / 64.0; // subnormal f16 scales on some blocks
        }
        for f in scale_fields(dtype) {
            match *f {
                Field::D { at, mul, signed } => {
                    let s = if signed && rng.coin(0.5) { -1.0 } else { 1.0 };
                    put_f16(block, at, s * amax / mul);
                }
                Field::Dmin { at, mul } => put_f16(block, at, amax / (2.0 * mul)),
                Field::Min { at } => put_f16(block, at, -amax * rng.uniform(0.5, 1.0)),
            }
        }
    }
    bytes
}

/// A weight `[rows, cols]` (or any shape whose last dim is a whole number of blocks) of any of
/// the 15 weight dtypes, values about N(0, std²).
pub fn random_weight(
    rng: &mut Rng,
    dtype: DType,
    shape: &[usize],
    std: f32,
    src: WeightSource,
) -> HostWeight {
    let shape = Shape::new(shape).unwrap();
    let n = shape.numel();
    let bytes = if dtype.is_float() {
        float_bytes(dtype, &rng.activations(n, std))
    } else {
        match src {
            WeightSource::RandomBlocks => random_blocks(rng, dtype, n, std),
            WeightSource::Quantized => {
                let vals = rng.activations(n, std);
                let mut out = vec![0u8; dtype.bytes_for(n).unwrap()];
                kiln_core::quant::quantize(dtype, &vals, &mut out).unwrap_or_else(|e| {
                    panic!("kiln_core::quant::quantize({dtype}) is needed to make this case's weights: {e}")
                });
                out
            }
        }
    };
    HostWeight {
        dtype,
        shape,
        bytes,
    }
}

/// Dequantize a host weight with `kiln_core::quant::dequantize` (bit-exact against gguf-py,
/// verified in core's tests); the oracles use this and then compute in f64.
pub fn dequantize(w: &HostWeight) -> Vec<f32> {
    let mut out = vec![0f32; w.shape.numel()];
    kiln_core::quant::dequantize(w.dtype, &w.bytes, &mut out).unwrap_or_else(|e| {
        panic!(
            "kiln_core::quant::dequantize({}) is needed by the oracle: {e}",
            w.dtype
        )
    });
    out
}
