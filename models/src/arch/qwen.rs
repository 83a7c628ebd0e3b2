//! qwen2 (q/k/v biases), qwen3 (per-head q/k norm, head_dim default 128) and qwen3-moe
//! (routed experts, `norm_topk_prob`): config defaults and HF tensor names (MODELS.md §4.4–4.6).
//! Their GGUFs keep HF's Q/K rows: NEOX rope. llama.cpp ignores Qwen2 sliding windows and always
//! renormalizes the qwen3moe top-k weights; kiln does the same for GGUF files.

use kiln_core::MoeGating;

use super::config::{Arch, Gguf, Json, ModelConfig, MoeConfig, WeightFormat};
use super::names::Role;
use crate::error::{ModelError, Result};

pub(crate) fn from_hf(j: &Json<'_>, arch: Arch, name: &str) -> Result<ModelConfig> {
    let head_dim = match arch {
        Arch::Qwen2 => None,
        _ => Some(128), // Qwen3Config's class default, not hidden / heads
    };
    let c = j.common(head_dim, 1e-6)?;
    let rope = j.rope(1e4)?;
    let n_layers = c.n_layers;
    let mut cfg = ModelConfig::base(arch, name, WeightFormat::Hf, j.origin, c, rope);
    cfg.qkv_bias = arch == Arch::Qwen2;
    cfg.qk_norm = arch != Arch::Qwen2;
    // Sliding layers: `layer_types` when given, else layers ≥ max_window_layers if
    // use_sliding_window (then `sliding_window` is the width).
    let sliding = match j.layer_types(n_layers)? {
        Some(t) => t,
        None if j.bool("use_sliding_window")?.unwrap_or(false) => {
            let from = j.usize("max_window_layers")?.unwrap_or(n_layers);
            (0..n_layers).map(|i| i >= from).collect()
        }
        None => vec![false; n_layers],
    };
    if sliding.iter().any(|&s| s) {
        let w = j.usize("sliding_window")?.ok_or_else(|| {
            ModelError::metadata(
                j.origin,
                "sliding_window",
                "sliding layers need a window width",
            )
        })?;
        for (l, s) in cfg.layers.iter_mut().zip(sliding) {
            l.window = s.then_some(w);
        }
    }
    if arch == Arch::Qwen3Moe {
        let n_experts = match j.usize("num_experts")? {
            Some(e) => e,
            None => j.usize("num_local_experts")?.unwrap_or(128),
        };
        let step = j.usize("decoder_sparse_step")?.unwrap_or(1).max(1);
        let mlp_only: Vec<usize> = match j.raw("mlp_only_layers") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as usize)
                        .collect()
                })
                .ok_or_else(|| {
                    ModelError::metadata(
                        j.origin,
                        "mlp_only_layers",
                        "expected a list of layer indices",
                    )
                })?,
        };
        cfg.moe = Some(MoeConfig {
            n_experts,
            top_k: j.usize("num_experts_per_tok")?.unwrap_or(8),
            ff: j.usize("moe_intermediate_size")?.unwrap_or(768),
            gating: MoeGating::SoftmaxTopK {
                renormalize: j.bool("norm_topk_prob")?.unwrap_or(false),
            },
        });
        for (i, l) in cfg.layers.iter_mut().enumerate() {
            l.moe = n_experts > 0 && !mlp_only.contains(&i) && (i + 1) % step == 0;
        }
    }
    cfg.validate()
}

pub(crate) fn from_gguf(g: &Gguf<'_>, arch: Arch) -> Result<ModelConfig> {
    let c = g.common()?;
    let rope = g.rope(c.head_dim)?;
    let mut cfg = ModelConfig::base(arch, g.a, WeightFormat::Gguf, g.f.path(), c, rope);
    cfg.qkv_bias = arch == Arch::Qwen2;
    cfg.qk_norm = arch != Arch::Qwen2;
    if arch == Arch::Qwen3Moe {
        let (n_experts, top_k) = g.experts()?.ok_or_else(|| {
            ModelError::metadata(
                g.f.path(),
                &g.key("expert_count"),
                "missing for a qwen3moe model",
            )
        })?;
        cfg.moe = Some(MoeConfig {
            n_experts,
            top_k,
            ff: g.need_usize("expert_feed_forward_length")?,
            // llama.cpp's qwen3moe graph passes norm_w = true; no key carries the flag.
            gating: MoeGating::SoftmaxTopK { renormalize: true },
        });
        for l in &mut cfg.layers {
            l.moe = true;
        }
    } else if cfg.ffn == 0 {
        return Err(ModelError::metadata(
            g.f.path(),
            &g.key("feed_forward_length"),
            "missing or 0",
        ));
    }
    cfg.validate()
}

/// HF tensor name of a per-layer role (after `<prefix>layers.<i>.`).
pub(crate) fn hf_layer_name(arch: Arch, role: Role, expert: usize) -> Option<String> {
    let moe = arch == Arch::Qwen3Moe;
    let exp = |w: &str| format!("mlp.experts.{expert}.{w}.weight");
    Some(match role {
        Role::AttnNorm => "input_layernorm.weight".into(),
        Role::FfnNorm => "post_attention_layernorm.weight".into(),
        Role::Router if moe => "mlp.gate.weight".into(),
        Role::ExpGate if moe => exp("gate_proj"),
        Role::ExpUp if moe => exp("up_proj"),
        Role::ExpDown if moe => exp("down_proj"),
        r => return super::names::hf_common(r),
    })
}
