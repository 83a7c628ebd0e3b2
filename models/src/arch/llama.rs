//! llama, mistral and mixtral: config defaults and Hugging Face tensor names (MODELS.md §4.1–4.3).
//! From GGUF all three are arch `llama`: Q/K rows stay permuted (interleaved rope), llama3
//! scaling comes from `rope_freqs.weight`, a window only from `llama.attention.sliding_window`,
//! MoE only from `llama.expert_count` plus the `ffn_*_exps` tensors.

use kiln_core::MoeGating;

use super::config::{Arch, Gguf, Json, ModelConfig, MoeConfig, WeightFormat};
use super::names::Role;
use crate::error::{ModelError, Result};

pub(crate) fn from_hf(j: &Json<'_>, arch: Arch, name: &str) -> Result<ModelConfig> {
    // HF class defaults: Llama/Mistral rms 1e-6 and theta 1e4; Mixtral rms 1e-5, theta 1e6.
    let (eps, theta) = match arch {
        Arch::Mixtral => (1e-5, 1e6),
        _ => (1e-6, 1e4),
    };
    let c = j.common(None, eps)?;
    let rope = j.rope(theta)?;
    let mut cfg = ModelConfig::base(arch, name, WeightFormat::Hf, j.origin, c, rope);
    // Mistral: `sliding_window` defaults to 4096 when the key is absent; null disables it.
    // Mixtral: default None. Llama has none. It applies to every layer.
    let window = match (arch, j.v.get("sliding_window")) {
        (Arch::Llama, _) => None,
        (Arch::Mistral, None) => Some(4096),
        _ => j.usize("sliding_window")?,
    };
    for l in &mut cfg.layers {
        l.window = window.filter(|&w| w > 0);
    }
    if arch == Arch::Mixtral {
        let n_experts = match j.usize("num_local_experts")? {
            Some(e) => e,
            None => j.usize("num_experts")?.unwrap_or(8),
        };
        cfg.moe = Some(MoeConfig {
            n_experts,
            top_k: j.usize("num_experts_per_tok")?.unwrap_or(2),
            ff: cfg.ffn,
            // softmax over all experts, top-k, divide by their sum (MixtralTopKRouter).
            gating: MoeGating::SoftmaxTopK { renormalize: true },
        });
        for l in &mut cfg.layers {
            l.moe = true;
        }
    }
    cfg.validate()
}

pub(crate) fn from_gguf(g: &Gguf<'_>) -> Result<ModelConfig> {
    let c = g.common()?;
    let n_rot = g.usize("rope.dimension_count")?.unwrap_or(c.head_dim);
    let rope = g.rope(n_rot)?;
    let experts = g.experts()?;
    let window = g.usize("attention.sliding_window")?.filter(|&w| w > 0);
    let arch = match (experts, window) {
        (Some(_), _) => Arch::Mixtral,
        (None, Some(_)) => Arch::Mistral,
        _ => Arch::Llama,
    };
    let mut cfg = ModelConfig::base(arch, "llama", WeightFormat::Gguf, g.f.path(), c, rope);
    cfg.n_rot = n_rot;
    for l in &mut cfg.layers {
        l.window = window;
    }
    if let Some((n_experts, top_k)) = experts {
        // llama.cpp: build_moe_ffn(SILU, norm_w = true, SOFTMAX).
        cfg.moe = Some(MoeConfig {
            n_experts,
            top_k,
            ff: cfg.ffn,
            gating: MoeGating::SoftmaxTopK { renormalize: true },
        });
        for l in &mut cfg.layers {
            l.moe = true;
        }
    }
    if cfg.ffn == 0 {
        return Err(ModelError::metadata(
            g.f.path(),
            &g.key("feed_forward_length"),
            "missing or 0",
        ));
    }
    cfg.validate()
}

/// HF tensor name of a per-layer role (after `<prefix>layers.<i>.`), `None` if the role does
/// not exist in this family.
pub(crate) fn hf_layer_name(arch: Arch, role: Role, expert: usize) -> Option<String> {
    let moe = |w: &str| format!("block_sparse_moe.experts.{expert}.{w}.weight");
    Some(match role {
        Role::AttnNorm => "input_layernorm.weight".into(),
        Role::FfnNorm => "post_attention_layernorm.weight".into(),
        Role::Router if arch == Arch::Mixtral => "block_sparse_moe.gate.weight".into(),
        Role::ExpGate if arch == Arch::Mixtral => moe("w1"),
        Role::ExpUp if arch == Arch::Mixtral => moe("w3"),
        Role::ExpDown if arch == Arch::Mixtral => moe("w2"),
        r => return super::names::hf_common(r),
    })
}
