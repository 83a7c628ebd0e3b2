//! Shared helpers of the GPU tests: open cuda:0 or skip, random weights of every type, host
//! round trips.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use half::{bf16, f16};
use kiln_core::{Backend, BackendProvider, Buffer, DType, Probe, Shape, View};
use kiln_cuda::{CudaBackend, CudaComm, CudaProvider};

/// Every CUDA device of the machine for a group test (`what`), or `None` after printing why it
/// is skipped: fewer than 2 devices, or none at all (a failure under KILN_REQUIRE_NCCL=1).
pub fn all_gpus(what: &str) -> Option<Vec<Arc<CudaBackend>>> {
    let required = std::env::var("KILN_REQUIRE_NCCL").is_ok_and(|v| v == "1");
    let n = match CudaProvider.probe() {
        Probe::Found(list) => list.len(),
        Probe::NotFound(why) => {
            assert!(
                !required,
                "KILN_REQUIRE_NCCL=1 but CUDA was not found: {why}"
            );
            println!("skipped: CUDA not found ({why})");
            return None;
        }
    };
    if n < 2 {
        assert!(!required, "KILN_REQUIRE_NCCL=1 but only {n} CUDA device(s)");
        println!("skipped: {what} needs 2 CUDA devices, found {n}");
        return None;
    }
    Some(
        (0..n as u32)
            .map(|i| CudaProvider.open_cuda(i).unwrap())
            .collect(),
    )
}

/// A group over `devs` with its P2P all-reduce path, or `None` after printing why there is none
/// (a failure under KILN_REQUIRE_P2P=1).
pub fn p2p_group(devs: &[Arc<CudaBackend>]) -> Option<CudaComm> {
    let comm = CudaComm::from_cuda(devs).unwrap();
    if let Some(why) = comm.p2p_unavailable() {
        let required = std::env::var("KILN_REQUIRE_P2P").is_ok_and(|v| v == "1");
        assert!(!required, "KILN_REQUIRE_P2P=1 but: {why}");
        println!("skipped: no P2P all-reduce on this machine: {why}");
        return None;
    }
    Some(comm)
}

/// cuda:0, or `None` after printing why the test is skipped (a failure under KILN_REQUIRE=cuda).
pub fn gpu() -> Option<Arc<CudaBackend>> {
    match CudaProvider.probe() {
        Probe::Found(_) => Some(CudaProvider.open_cuda(0).expect("cuda:0 opens")),
        Probe::NotFound(why) => {
            let req = std::env::var("KILN_REQUIRE").unwrap_or_default();
            assert!(
                !req.split(',').any(|s| s.trim() == "cuda"),
                "KILN_REQUIRE=cuda but CUDA was not found: {why}"
            );
            println!("skipped: CUDA not found ({why})");
            None
        }
    }
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// Offsets of the f16 scale fields inside a GGUF block (d first, then dmin / m if any).
pub fn f16_fields(dt: DType) -> &'static [usize] {
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

/// Random bytes of `rows × k` elements of `dt`: every bit pattern of quants and sub-scales is
/// valid; f16 scale fields are overwritten with small positive values (as in
/// shared/testdata/quant "How the inputs were made"); float types get values in [-1, 1).
pub fn random_weight(dt: DType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let n = rows * k;
    match dt {
        DType::F32 => r.vec(n).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => r
            .vec(n)
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => r
            .vec(n)
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => {
            let bytes = dt.bytes_for(n).unwrap();
            let mut out: Vec<u8> = (0..bytes).map(|_| r.next_u64() as u8).collect();
            for blk in out.chunks_exact_mut(dt.block_bytes()) {
                for (i, &off) in f16_fields(dt).iter().enumerate() {
                    let scale = if dt.block_size() == 256 { 1e-3 } else { 2e-2 };
                    let v = f16::from_f32(
                        scale * (0.5 + 0.5 * r.f32().abs()) * if i == 0 { 1.0 } else { 0.5 },
                    );
                    blk[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            out
        }
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn upload(be: &dyn Backend, bytes: &[u8]) -> Buffer {
    let b = be.alloc(bytes.len()).unwrap();
    be.write(&b, 0, bytes).unwrap();
    b
}

/// A buffer of `n` f32 filled with NaN (so unwritten outputs fail).
pub fn poisoned(be: &dyn Backend, n: usize) -> Buffer {
    upload(be, &f32_bytes(&vec![f32::NAN; n]))
}

pub fn read_f32(be: &dyn Backend, v: View<'_>) -> Vec<f32> {
    let mut b = vec![0u8; v.bytes()];
    be.read(v.buffer(), v.offset(), &mut b).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn view<'a>(b: &'a Buffer, dims: &[usize], dt: DType) -> View<'a> {
    b.view(0, Shape::new(dims).unwrap(), dt).unwrap()
}

/// x `[m, k]` (f64) · Wᵀ (the dequantized `[n, k]` weight) in f64: the oracle `[m, n]`.
pub fn matmul_f64(x: &[f64], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| {
            let (row, c) = (i / n, i % n);
            let wr = &w[c * k..(c + 1) * k];
            x[row * k..(row + 1) * k]
                .iter()
                .zip(wr)
                .map(|(a, b)| a * *b as f64)
                .sum()
        })
        .collect()
}

/// Σ(a−e)² / Σe².
pub fn nmse(a: &[f32], e: &[f64]) -> f64 {
    assert_eq!(a.len(), e.len());
    let num: f64 = a.iter().zip(e).map(|(a, e)| (*a as f64 - e).powi(2)).sum();
    let den: f64 = e.iter().map(|e| e * e).sum();
    num / den.max(1e-300)
}

/// The fused kernel's activation rounding for block-type weights (kernels/matmul_q.cu
/// quant_x): every aligned group of 16 x values becomes d·q with d = max|x| / 127 (f32, rounded
/// up to 22 significant bits), q = round-half-even(x · (1 / d)) clamped to ±127. Returns x̂ (as f64) and the
/// per-element error bound d / 2.
pub fn q8_round(x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    q8_round_group(x, 16)
}

/// `q8_round` with `group` elements per scale (32: the Q4_K few-row mma kernel's mq_quant_x,
/// `CudaBackend::mma_x_rounding`).
pub fn q8_round_group(x: &[f32], group: usize) -> (Vec<f64>, Vec<f64>) {
    let mut xh = Vec::with_capacity(x.len());
    let mut half = Vec::with_capacity(x.len());
    for g in x.chunks(group) {
        let amax = g.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        // d rounded up to 22 significant bits, as quant_x does.
        let d = f32::from_bits(((amax / 127.0).to_bits() + 3) & !3);
        let id = if amax > 0.0 { 1.0 / d } else { 0.0 };
        for v in g {
            let q = (v * id).round_ties_even().clamp(-127.0, 127.0);
            xh.push(d as f64 * q as f64);
            half.push(d as f64 / 2.0);
        }
    }
    (xh, half)
}

/// x rounded as the Q4_K f16 mma kernel (`mh_quant_x`) rounds it: per aligned block of 256
/// (rows are whole blocks), s = 2^(e − 14) with e = ⌊log2 max|x|⌋ (at least −112) and x̂ =
/// s·f16_rn(x / s); finite x.
pub fn f16_block_round(x: &[f32]) -> Vec<f64> {
    let f16_rn = |v: f32| -> f32 {
        if v.abs() < 6.103_515_6e-5 {
            // The subnormal grid 2^-24.
            return (v * 16_777_216.0).round_ties_even() / 16_777_216.0;
        }
        let u = v.to_bits();
        f32::from_bits((u + 0xfff + ((u >> 13) & 1)) & !0x1fff)
    };
    let mut out = Vec::with_capacity(x.len());
    for b in x.chunks(256) {
        let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let e = (((amax.to_bits() >> 23) & 255) as i32 - 127).max(-112);
        let (s, inv) = (2f64.powi(e - 14), 2f32.powi(14 - e));
        out.extend(b.iter().map(|v| s * f16_rn(v * inv) as f64));
    }
    out
}

/// x as the mma path rounds it (`CudaBackend::mma_x_rounding`).
pub fn mma_round(x: &[f32], r: kiln_cuda::MmaXRounding) -> Vec<f64> {
    match r {
        kiln_cuda::MmaXRounding::Int8 { group } => q8_round_group(x, group).0,
        kiln_cuda::MmaXRounding::F16Block => f16_block_round(x),
    }
}

/// The nmse bound of the mma path's x rounding against exact x: int8 per `group` as
/// `Q8_X_NMSE` per 16 (the bound grows with the group); f16 (11 significant bits: relative
/// error ≤ 2^-11 per element) 1e-6.
pub fn mma_x_nmse(r: kiln_cuda::MmaXRounding) -> f64 {
    match r {
        kiln_cuda::MmaXRounding::Int8 { group } => Q8_X_NMSE * (group / 16) as f64,
        kiln_cuda::MmaXRounding::F16Block => 1e-6,
    }
}

/// The int8-activation error bound of the fused kernel, relative (nmse): |x − x̂| ≤ d/2 =
/// max|x|/254 per group of 16, and max|x| ≤ 4·rms over 16 values, so Σ(x − x̂)² ≤ 4/127²·Σx²
/// (worst case; rounding errors spread uniformly give a third of that). For W with no special
/// alignment to the error, the output's nmse follows the input's.
pub const Q8_X_NMSE: f64 = 4.0 / (127.0 * 127.0);

/// The GLU activation in f64 (the oracle of the GLU-mode GEMV kernels).
pub fn act_f64(g: f64, act: kiln_core::Activation) -> f64 {
    match act {
        kiln_core::Activation::Silu => g / (1.0 + (-g).exp()),
        kiln_core::Activation::GeluTanh => {
            0.5 * g
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh())
        }
    }
}
