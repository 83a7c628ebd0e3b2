//! Synthetic llama-family models for the end-to-end decode bench: a preset shape (Llama-3-8B,
//! Llama-3.2-1B, a tiny one for smoke runs), seeded random weights made directly in the target
//! format on the machine that runs the bench (an 8B bf16 model is 16 GB: too big to carry), and
//! a placeholder vocabulary, assembled with `Model::from_parts`.
//!
//! How the weights are made (printed by the bench as well), every matrix `[n, k]`:
//! - F32/F16/BF16: uniform in [-0.02, 0.02) (std 0.0115, so q·k and the FFN stay O(1)).
//! - Q8_0: per 32-block an f16 scale d = 1.6e-4·(0.5 + u), quants uniform random i8
//!   (|w| ≤ 0.03).
//! - Q4_K: per 256-block random nibbles; the 8 sub-block scales and mins are random but equal
//!   per sub-block (sc = m, 1..63 for sub-blocks 0-3, 1..15 for 4-7, so only the low 6 bits of
//!   bytes 0-7 and both nibbles of bytes 8-11 are set); d = 8e-5·(0.5 + u) and dmin = 7.5·d, so
//!   w = d·sc·(q − 7.5): zero-mean, |w| ≤ 0.057. Activations stay finite through 32 layers.
//! - Q5_K: Q4_K's scales and mins with random 5-bit quants (qh and qs random bytes); d =
//!   4e-5·(0.5 + u), dmin = 15.5·d, so w = d·sc·(q − 15.5): zero-mean, |w| ≤ 0.059.
//! - IQ4_XS: random nibbles (IQ4 table values −127..113) and random 6-bit sub-block scales ls
//!   (w = d·(ls − 32)·value, scales of both signs, so zero-mean over sub-blocks); d =
//!   1e-5·(0.5 + u), |w| ≤ 0.061.
//! - Q4_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL (32-element blocks): random quant bytes; d = D·(0.5 + u)
//!   with D = 4e-3 / 4e-3 / 2e-3 / 2e-3 / 2.5e-4, Q4_1 / Q5_1 m = −7.5·d / −15.5·d (zero-mean), IQ4_NL
//!   d of random sign (zero-mean over blocks); |w| ≤ 0.049 (d rounded to f16).
//! - Q6_K: random 6-bit quants (ql, qh), random i8 sub-block scales in [−32, 31], d = 4e-5·(0.5 +
//!   u): w = d·sc·(q − 32), zero-mean over sub-blocks, |w| ≤ 0.062.
//! - Q2_K: random 2-bit quants, per sub-block sc = m random 1..15, d = 1.3e-3·(0.5 + u), dmin =
//!   1.5·d: w = d·sc·(q − 1.5), zero-mean, |w| ≤ 0.045. Q3_K: random quants, hmask and 6-bit
//!   scales (both signs), d = 3e-4·(0.5 + u): |w| ≤ 0.058.
//! - Norm weights: f32 ones. u is uniform in [0, 1) from the same generator.
//!
//! Generation is parallel: each tensor is cut into 4 MiB chunks of whole blocks, one SplitMix64
//! stream per (seed, tensor, chunk), chunks dealt round-robin to one scoped thread per core (the
//! values do not depend on the thread count).

use half::{bf16, f16};
use kiln_core::{DType, Error, HostTensor, Result, Shape};
use kiln_models::ModelConfig;
use kiln_models::runtime::HostTensors;
use kiln_models::{GgufVocab, Tokenizer};

use crate::weights::Rng;

/// A llama-family shape.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    pub rope_theta: f64,
    /// llama3 rope scaling factor (None: plain rope).
    pub llama3_factor: Option<f64>,
}

/// The shapes `--model` accepts by name. `llama3-8b-rank2` is one rank's share of llama3-8b
/// under 2-way tensor parallelism (half the heads, KV heads, FFN columns and vocabulary): run on
/// one device it shows what a TP2 rank computes without the all-reduces.
pub const PRESETS: [Preset; 4] = [
    Preset {
        name: "llama3-8b",
        layers: 32,
        hidden: 4096,
        ffn: 14336,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        tied: false,
        rope_theta: 500000.0,
        llama3_factor: Some(8.0),
    },
    Preset {
        name: "llama3-8b-rank2",
        layers: 32,
        hidden: 4096,
        ffn: 7168,
        heads: 16,
        kv_heads: 4,
        head_dim: 128,
        vocab: 64128,
        tied: false,
        rope_theta: 500000.0,
        llama3_factor: Some(8.0),
    },
    Preset {
        name: "llama3-1b",
        layers: 16,
        hidden: 2048,
        ffn: 8192,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        vocab: 128256,
        tied: true,
        rope_theta: 500000.0,
        llama3_factor: Some(32.0),
    },
    Preset {
        name: "tiny",
        layers: 2,
        hidden: 256,
        ffn: 512,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        vocab: 1024,
        tied: false,
        rope_theta: 10000.0,
        llama3_factor: None,
    },
];

pub fn preset(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

/// The weight types the generator makes.
pub const SYNTH_TYPES: [DType; 15] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::IQ4_XS,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::IQ4_NL,
    DType::Q6_K,
    DType::Q2_K,
    DType::Q3_K,
];

/// One line saying how the weights of `dt` were made (for the output and the log).
pub fn how_made(dt: DType, seed: u64) -> String {
    let m = match dt {
        DType::Q4_K => {
            "Q4_K: random nibbles, per-sub-block scale = min (random 6-bit / 4-bit), d = 8e-5*(0.5+u), dmin = 7.5*d => w = d*sc*(q-7.5), zero-mean, |w| <= 0.057"
        }
        DType::Q8_0 => "Q8_0: random i8 quants, d = 1.6e-4*(0.5+u), |w| <= 0.03",
        DType::Q5_K => {
            "Q5_K: random 5-bit quants, Q4_K's scales/mins, d = 4e-5*(0.5+u), dmin = 15.5*d => w = d*sc*(q-15.5), zero-mean, |w| <= 0.059"
        }
        DType::IQ4_XS => {
            "IQ4_XS: random nibbles and 6-bit sub-block scales, d = 1e-5*(0.5+u) => w = d*(ls-32)*kvalue, |w| <= 0.061"
        }
        DType::Q2_K => {
            "Q2_K: random 2-bit quants, per sub-block sc = m = 1..15, d = 1.3e-3*(0.5+u), dmin = 1.5*d => w = d*sc*(q-1.5), |w| <= 0.045"
        }
        DType::Q3_K => {
            "Q3_K: random quants, hmask and 6-bit scales, d = 3e-4*(0.5+u) => w = d*(sc-32)*(q-4), |w| <= 0.058"
        }
        DType::Q6_K => {
            "Q6_K: random 6-bit quants, random i8 scales in [-32, 31], d = 4e-5*(0.5+u) => w = d*sc*(q-32), |w| <= 0.062"
        }
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::IQ4_NL => {
            "32-element blocks: random quants, d = D*(0.5+u) (D 4e-3 Q4_0/Q4_1, 2e-3 Q5_0/Q5_1, 2.5e-4 IQ4_NL with a random sign), m = -7.5*d / -15.5*d (Q4_1 / Q5_1), |w| <= 0.049"
        }
        _ => "uniform in [-0.02, 0.02)",
    };
    format!(
        "synthetic weights, seed {seed}, SplitMix64 per (tensor, 4 MiB chunk), made on this machine: {m}; norms = 1.0 (f32)"
    )
}

impl Preset {
    /// The config, through the same `config.json` reader real HF models use.
    pub fn config(&self) -> Result<ModelConfig> {
        let mut j = serde_json::json!({
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tied,
        });
        if let Some(f) = self.llama3_factor {
            j["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": f, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            });
        }
        ModelConfig::from_hf(&j, &format!("synthetic:{}", self.name))
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// (HF name, rows, cols) of every matrix; cols 0 marks a vector (norm weight).
    pub fn tensor_list(&self) -> Vec<(String, usize, usize)> {
        let (h, q, kv, f) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.ffn,
        );
        let mut v = vec![("model.embed_tokens.weight".to_string(), self.vocab, h)];
        if !self.tied {
            v.push(("lm_head.weight".into(), self.vocab, h));
        }
        v.push(("model.norm.weight".into(), h, 0));
        for l in 0..self.layers {
            let p = format!("model.layers.{l}.");
            for (n, r, c) in [
                ("input_layernorm.weight", h, 0),
                ("self_attn.q_proj.weight", q, h),
                ("self_attn.k_proj.weight", kv, h),
                ("self_attn.v_proj.weight", kv, h),
                ("self_attn.o_proj.weight", h, q),
                ("post_attention_layernorm.weight", h, 0),
                ("mlp.gate_proj.weight", f, h),
                ("mlp.up_proj.weight", f, h),
                ("mlp.down_proj.weight", h, f),
            ] {
                v.push((format!("{p}{n}"), r, c));
            }
        }
        v
    }
}

/// Host bytes of a synthetic model (generated tensors kept until upload).
pub struct SynthWeights {
    tensors: Vec<(String, DType, Shape, Vec<u8>)>,
}

impl SynthWeights {
    /// Generate every tensor of `p` in `dt` (norms f32) on `threads` threads.
    pub fn generate(p: &Preset, dt: DType, seed: u64, threads: usize) -> Result<SynthWeights> {
        if !SYNTH_TYPES.contains(&dt) {
            return Err(Error::Invalid(format!(
                "the synthetic generator makes {:?}, not {dt}",
                SYNTH_TYPES.map(|t| t.name())
            )));
        }
        let mut tensors = Vec::new();
        for (i, (name, rows, cols)) in p.tensor_list().into_iter().enumerate() {
            let (t, shape) = if cols == 0 {
                (DType::F32, Shape::d1(rows))
            } else {
                (dt, Shape::d2(rows, cols))
            };
            let bytes = fill(t, rows * cols.max(1), cols == 0, seed, i as u64, threads)?;
            tensors.push((name, t, shape, bytes));
        }
        Ok(SynthWeights { tensors })
    }

    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.3.len()).sum()
    }

    /// Borrowed views for `Model::from_parts`.
    pub fn host_tensors(&self, origin: &str) -> Result<HostTensors<'_>> {
        let mut h = HostTensors::new(origin);
        for (name, dt, shape, bytes) in &self.tensors {
            h.insert(name.clone(), HostTensor::new(*dt, *shape, bytes)?);
        }
        Ok(h)
    }
}

/// `n` elements of `dt` (`ones`: f32 1.0), generated in parallel.
fn fill(
    dt: DType,
    n: usize,
    ones: bool,
    seed: u64,
    tensor: u64,
    threads: usize,
) -> Result<Vec<u8>> {
    let total = dt.bytes_for(n)?;
    let mut out = vec![0u8; total];
    if ones {
        for c in out.chunks_exact_mut(4) {
            c.copy_from_slice(&1f32.to_le_bytes());
        }
        return Ok(out);
    }
    // Chunks of whole blocks (or of 8-byte groups for the float types), one per thread.
    let unit = match dt {
        DType::F32 | DType::F16 | DType::BF16 => 8,
        _ => dt.block_bytes(),
    };
    // Chunks of a fixed size (4 MiB of whole units): the values depend on the seed only, not on
    // the machine's thread count; threads take chunks round-robin.
    let per = ((4 << 20) / unit).max(1) * unit;
    let n = threads.max(1);
    let mut groups: Vec<Vec<(usize, &mut [u8])>> = (0..n).map(|_| Vec::new()).collect();
    for (c, chunk) in out.chunks_mut(per).enumerate() {
        groups[c % n].push((c, chunk));
    }
    std::thread::scope(|s| {
        for g in groups {
            s.spawn(move || {
                for (c, chunk) in g {
                    let mut r =
                        Rng(seed ^ tensor.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((c as u64) << 40));
                    fill_chunk(dt, chunk, &mut r);
                }
            });
        }
    });
    Ok(out)
}

/// Random values of `dt` into `buf` (whole blocks; float types any length).
fn fill_chunk(dt: DType, buf: &mut [u8], r: &mut Rng) {
    // 16 random bits → uniform in [-0.02, 0.02).
    let small = |bits: u64| ((bits & 0xFFFF) as f32 * (1.0 / 32768.0) - 1.0) * 0.02;
    match dt {
        DType::F32 => {
            for c in buf.chunks_mut(8) {
                let x = r.next_u64();
                for (j, e) in c.chunks_mut(4).enumerate() {
                    let v = small(x >> (16 * j)).to_le_bytes();
                    e.copy_from_slice(&v[..e.len()]);
                }
            }
        }
        DType::F16 | DType::BF16 => {
            for c in buf.chunks_mut(8) {
                let x = r.next_u64();
                for (j, e) in c.chunks_mut(2).enumerate() {
                    let v = small(x >> (16 * j));
                    let b = if dt == DType::F16 {
                        f16::from_f32(v).to_le_bytes()
                    } else {
                        bf16::from_f32(v).to_le_bytes()
                    };
                    e.copy_from_slice(&b[..e.len()]);
                }
            }
        }
        DType::Q8_0 => {
            for blk in buf.chunks_exact_mut(34) {
                random_bytes(&mut blk[2..], r);
                let d = 1.6e-4 * (0.5 + unit(r));
                blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        DType::Q4_K | DType::Q5_K => {
            // Q5_K: Q4_K's 16-byte header, then qh[32] and qs[128], all random.
            let (size, d0, mid) = if dt == DType::Q4_K {
                (144, 8e-5, 7.5)
            } else {
                (176, 4e-5, 15.5)
            };
            for blk in buf.chunks_exact_mut(size) {
                random_bytes(&mut blk[16..], r);
                let x = r.next_u64();
                for j in 0..4 {
                    // sub-blocks 0-3: sc = m = 1..63 (6 bits, top 2 bits clear).
                    let s = 1 + ((x >> (8 * j)) & 0xFF) as u8 % 63;
                    blk[4 + j] = s;
                    blk[8 + j] = s;
                    // sub-blocks 4-7: sc = low nibble, m = high nibble of bytes 8-11.
                    let t = 1 + ((x >> (32 + 8 * j)) & 0xFF) as u8 % 15;
                    blk[12 + j] = t | (t << 4);
                }
                let d = d0 * (0.5 + unit(r));
                blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                blk[2..4].copy_from_slice(&f16::from_f32(mid * d).to_le_bytes());
            }
        }
        DType::IQ4_XS => {
            // d f16 @0, scales_h u16 @2, scales_l[4] @4, qs[128] @8: all but d random.
            for blk in buf.chunks_exact_mut(136) {
                random_bytes(&mut blk[2..], r);
                let d = 1e-5 * (0.5 + unit(r));
                blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        DType::Q2_K => {
            // scales[16] @0 (sc = m), qs[64] @16 random, d @80, dmin @82.
            for blk in buf.chunks_exact_mut(84) {
                random_bytes(&mut blk[..80], r);
                for b in &mut blk[..16] {
                    let v = 1 + *b % 15;
                    *b = v | (v << 4);
                }
                let d = 1.3e-3 * (0.5 + unit(r));
                blk[80..82].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                blk[82..84].copy_from_slice(&f16::from_f32(1.5 * d).to_le_bytes());
            }
        }
        DType::Q3_K => {
            // hmask, qs, scales random, d f16 @108.
            for blk in buf.chunks_exact_mut(110) {
                random_bytes(&mut blk[..108], r);
                let d = 3e-4 * (0.5 + unit(r));
                blk[108..].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        DType::Q6_K => {
            // ql[128], qh[64] random, scales i8[16] @192 in [-32, 31], d f16 @208.
            for blk in buf.chunks_exact_mut(210) {
                random_bytes(&mut blk[..208], r);
                for b in &mut blk[192..208] {
                    *b = ((*b & 63) as i8 - 32) as u8;
                }
                let d = 4e-5 * (0.5 + unit(r));
                blk[208..].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            }
        }
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::IQ4_NL => {
            // (block bytes, D, m / d or 0 for none); d f16 @0, m f16 @2 where there is one.
            let (size, d0, mid) = match dt {
                DType::Q4_0 => (18, 4e-3, 0.0),
                DType::Q4_1 => (20, 4e-3, -7.5),
                DType::Q5_0 => (22, 2e-3, 0.0),
                DType::Q5_1 => (24, 2e-3, -15.5),
                _ => (18, 2.5e-4, 0.0),
            };
            for blk in buf.chunks_exact_mut(size) {
                random_bytes(&mut blk[2..], r);
                let u = unit(r);
                let sign = if dt == DType::IQ4_NL && u < 0.5 {
                    -1.0
                } else {
                    1.0
                };
                let d = sign * d0 * (0.5 + unit(r));
                blk[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                if mid != 0.0 {
                    blk[2..4].copy_from_slice(&f16::from_f32(mid * d).to_le_bytes());
                }
            }
        }
        _ => random_bytes(buf, r),
    }
}

fn unit(r: &mut Rng) -> f32 {
    (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

fn random_bytes(buf: &mut [u8], r: &mut Rng) {
    for c in buf.chunks_mut(8) {
        let x = r.next_u64().to_le_bytes();
        c.copy_from_slice(&x[..c.len()]);
    }
}

/// A placeholder SentencePiece-style vocabulary of `n` tokens (`<unk>`, `<s>`, `</s>`, then
/// `<t3>`...): the bench prints ids, the runtime needs a tokenizer.
pub fn placeholder_tokenizer(n: usize, origin: &str) -> Result<Tokenizer> {
    let tokens: Vec<String> = (0..n)
        .map(|i| match i {
            0 => "<unk>".into(),
            1 => "<s>".into(),
            2 => "</s>".into(),
            i => format!("<t{i}>"),
        })
        .collect();
    let types = (0..n).map(|i| if i < 3 { 3 } else { 1 }).collect();
    Tokenizer::from_gguf_vocab(GgufVocab {
        origin: origin.into(),
        model: "llama".into(),
        tokens,
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufVocab::default()
    })
    .map_err(|e| Error::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The Q4_K blocks decode (through the reference dequantizer) to zero-mean values inside
    /// the stated bound, with sc = m in every sub-block.
    #[test]
    fn q4_k_blocks_are_zero_mean_and_bounded() {
        let bytes = fill(DType::Q4_K, 256 * 64, false, 7, 1, 3).unwrap();
        let v = kiln_core::quant::dequantize_vec(DType::Q4_K, &bytes).unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(mean.abs() < 2e-3, "mean {mean}");
        assert!(max <= 0.057 && max > 0.005, "max {max}");
    }

    /// Q5_K (zero-mean like Q4_K), IQ4_XS and the 32-element types decode inside their stated
    /// bounds.
    #[test]
    fn other_quantized_blocks_are_bounded() {
        for (dt, bound, mean_bound) in [
            (DType::Q5_K, 0.059, 2e-3),
            (DType::IQ4_XS, 0.061, 2e-3),
            (DType::Q4_0, 0.049, 2e-3),
            (DType::Q4_1, 0.049, 2e-3),
            (DType::Q5_0, 0.049, 2e-3),
            (DType::Q5_1, 0.049, 2e-3),
            (DType::IQ4_NL, 0.049, 2e-3),
            (DType::Q6_K, 0.062, 2e-3),
            (DType::Q2_K, 0.046, 2e-3),
            (DType::Q3_K, 0.058, 2e-3),
        ] {
            let bytes = fill(dt, 256 * 64, false, 7, 1, 3).unwrap();
            let v = kiln_core::quant::dequantize_vec(dt, &bytes).unwrap();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(mean.abs() < mean_bound, "{dt}: mean {mean}");
            assert!(max <= bound && max > 0.005, "{dt}: max {max}");
        }
    }

    #[test]
    fn float_and_q8_weights_are_bounded_and_seeded() {
        for dt in [DType::BF16, DType::F16, DType::F32, DType::Q8_0] {
            let a = fill(dt, 4096, false, 3, 2, 4).unwrap();
            let b = fill(dt, 4096, false, 3, 2, 4).unwrap();
            let c = fill(dt, 4096, false, 4, 2, 4).unwrap();
            assert_eq!(a, b, "{dt}: same seed, same bytes");
            assert_ne!(a, c, "{dt}: other seed, other bytes");
            let v = kiln_core::quant::dequantize_vec(dt, &a).unwrap();
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max <= 0.031 && max > 0.01, "{dt}: max {max}");
        }
    }

    #[test]
    fn tiny_preset_builds_a_config_and_all_tensors() {
        let p = preset("tiny").unwrap();
        let cfg = p.config().unwrap();
        assert_eq!(cfg.n_layers, 2);
        let w = SynthWeights::generate(&p, DType::Q8_0, 1, 2).unwrap();
        assert_eq!(
            w.tensors.len(),
            3 + 9 * 2,
            "embed, lm_head, norm + 9 per layer"
        );
        let h = w.host_tensors("synthetic:tiny").unwrap();
        assert_eq!(h.len(), w.tensors.len());
        assert!(placeholder_tokenizer(p.vocab, "x").is_ok());
    }

    #[test]
    fn values_do_not_depend_on_the_thread_count() {
        // 9 MiB: three 4 MiB chunks, dealt to 1, 2 and 7 threads.
        let n = 9 << 20;
        let one = fill(DType::F32, n / 4, false, 7, 3, 1).unwrap();
        for t in [2, 7] {
            assert!(
                fill(DType::F32, n / 4, false, 7, 3, t).unwrap() == one,
                "{t} threads"
            );
        }
        assert!(
            fill(DType::F32, n / 4, false, 8, 3, 1).unwrap() != one,
            "seed ignored"
        );
    }
}
