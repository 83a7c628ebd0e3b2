//! Tensor names by role: llama.cpp's GGUF names (the same for every architecture) and the
//! Hugging Face names, whose per-family differences live in llama.rs, qwen.rs and gemma3.rs
//! (MODELS.md §2, "Tensor names: HF → GGUF").

use super::config::{Arch, ModelConfig, WeightFormat};
use super::{gemma3, llama, qwen};

/// What a per-layer tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    AttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    QNorm,
    KNorm,
    /// gemma3: norm of the attention output.
    PostAttnNorm,
    /// The norm before the FFN (llama/qwen `post_attention_layernorm`, gemma3
    /// `pre_feedforward_layernorm`).
    FfnNorm,
    /// gemma3: norm of the FFN output.
    PostFfnNorm,
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
    Router,
    ExpGate,
    ExpUp,
    ExpDown,
}

/// Model-level tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    Embed,
    Output,
    OutputNorm,
}

/// Prefixes under which HF checkpoints keep the decoder (`model.` for causal LMs, the others
/// for multimodal gemma3 checkpoints).
pub const HF_PREFIXES: [&str; 3] = ["model.", "model.language_model.", "language_model.model."];

/// The GGUF name of a per-layer role (stacked experts: one 3-D tensor per role).
pub fn gguf_layer(role: Role, layer: usize) -> String {
    let n = match role {
        Role::AttnNorm => "attn_norm.weight",
        Role::Q => "attn_q.weight",
        Role::K => "attn_k.weight",
        Role::V => "attn_v.weight",
        Role::O => "attn_output.weight",
        Role::QBias => "attn_q.bias",
        Role::KBias => "attn_k.bias",
        Role::VBias => "attn_v.bias",
        Role::OBias => "attn_output.bias",
        Role::QNorm => "attn_q_norm.weight",
        Role::KNorm => "attn_k_norm.weight",
        Role::PostAttnNorm => "post_attention_norm.weight",
        Role::FfnNorm => "ffn_norm.weight",
        Role::PostFfnNorm => "post_ffw_norm.weight",
        Role::Gate => "ffn_gate.weight",
        Role::Up => "ffn_up.weight",
        Role::Down => "ffn_down.weight",
        Role::GateBias => "ffn_gate.bias",
        Role::UpBias => "ffn_up.bias",
        Role::DownBias => "ffn_down.bias",
        Role::Router => "ffn_gate_inp.weight",
        Role::ExpGate => "ffn_gate_exps.weight",
        Role::ExpUp => "ffn_up_exps.weight",
        Role::ExpDown => "ffn_down_exps.weight",
    };
    format!("blk.{layer}.{n}")
}

pub fn gguf_global(g: Global) -> &'static str {
    match g {
        Global::Embed => "token_embd.weight",
        Global::Output => "output.weight",
        Global::OutputNorm => "output_norm.weight",
    }
}

/// HF names shared by the three families (attention projections, dense MLP).
pub(crate) fn hf_common(role: Role) -> Option<String> {
    Some(
        match role {
            Role::Q => "self_attn.q_proj.weight",
            Role::K => "self_attn.k_proj.weight",
            Role::V => "self_attn.v_proj.weight",
            Role::O => "self_attn.o_proj.weight",
            Role::QBias => "self_attn.q_proj.bias",
            Role::KBias => "self_attn.k_proj.bias",
            Role::VBias => "self_attn.v_proj.bias",
            Role::OBias => "self_attn.o_proj.bias",
            Role::QNorm => "self_attn.q_norm.weight",
            Role::KNorm => "self_attn.k_norm.weight",
            Role::Gate => "mlp.gate_proj.weight",
            Role::Up => "mlp.up_proj.weight",
            Role::Down => "mlp.down_proj.weight",
            Role::GateBias => "mlp.gate_proj.bias",
            Role::UpBias => "mlp.up_proj.bias",
            Role::DownBias => "mlp.down_proj.bias",
            _ => return None,
        }
        .to_string(),
    )
}

/// The HF name of a per-layer role under `prefix` (`expert` is used by per-expert roles).
pub fn hf_layer(
    cfg: &ModelConfig,
    prefix: &str,
    role: Role,
    layer: usize,
    expert: usize,
) -> Option<String> {
    let local = match cfg.arch {
        Arch::Llama | Arch::Mistral | Arch::Mixtral => llama::hf_layer_name(cfg.arch, role, expert),
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => qwen::hf_layer_name(cfg.arch, role, expert),
        Arch::Gemma3 => gemma3::hf_layer_name(role),
    }?;
    Some(format!("{prefix}layers.{layer}.{local}"))
}

/// transformers v5 may save a layer's experts fused: `mlp.experts.gate_up_proj [E, 2·ff, dim]`
/// (gate = first half) and `mlp.experts.down_proj [E, dim, ff]`.
pub fn hf_fused_experts(prefix: &str, layer: usize) -> (String, String) {
    (
        format!("{prefix}layers.{layer}.mlp.experts.gate_up_proj"),
        format!("{prefix}layers.{layer}.mlp.experts.down_proj"),
    )
}

pub fn hf_global(prefix: &str, g: Global) -> String {
    match g {
        Global::Embed => format!("{prefix}embed_tokens.weight"),
        Global::Output => "lm_head.weight".to_string(),
        Global::OutputNorm => format!("{prefix}norm.weight"),
    }
}

/// The name of a per-layer role for this model's weight format (`prefix`: HF only).
pub fn layer_name(
    cfg: &ModelConfig,
    prefix: &str,
    role: Role,
    layer: usize,
    expert: usize,
) -> Option<String> {
    match cfg.format {
        WeightFormat::Gguf => Some(gguf_layer(role, layer)),
        WeightFormat::Hf => hf_layer(cfg, prefix, role, layer, expert),
    }
}

pub fn global_name(cfg: &ModelConfig, prefix: &str, g: Global) -> String {
    match cfg.format {
        WeightFormat::Gguf => gguf_global(g).to_string(),
        WeightFormat::Hf => hf_global(prefix, g),
    }
}
