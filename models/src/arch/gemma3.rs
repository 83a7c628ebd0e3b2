//! gemma3 (text): sliding and global layers with their own rope bases, sandwich norms, per-head
//! q/k norms, GeGLU (tanh), embedding × sqrt(hidden) in f32, tied output (MODELS.md §4.7).
//! HF norms are `x·(1 + w)`: the +1 is added on the host at load; GGUF norms already hold it.

use kiln_core::{Activation, RopeFreqs, RopeScaling};

use super::config::{Arch, Gguf, Json, ModelConfig, WeightFormat};
use super::names::Role;
use crate::error::{ModelError, Result};

pub(crate) fn from_hf(j: &Json<'_>, name: &str) -> Result<ModelConfig> {
    let c = j.common(Some(256), 1e-6)?;
    let n_layers = c.n_layers;
    let hidden = c.hidden;
    // Rope: transformers v5 nests per layer type; older configs have rope_theta (global),
    // rope_local_base_freq and rope_scaling (global layers only).
    let (global, local) = match j.obj("rope_parameters") {
        Some(p) if p.obj("full_attention").is_some() || p.obj("sliding_attention").is_some() => {
            let full = match p.obj("full_attention") {
                Some(f) => RopeFreqs {
                    base: f.f64("rope_theta")?.unwrap_or(1e6),
                    scaling: f.scaling()?,
                },
                None => j.rope(1e6)?,
            };
            let slide = match p.obj("sliding_attention") {
                Some(s) => RopeFreqs {
                    base: s.f64("rope_theta")?.unwrap_or(1e4),
                    scaling: s.scaling()?,
                },
                None => local_default(j)?,
            };
            (full, slide)
        }
        _ => (j.rope(1e6)?, local_default(j)?),
    };
    let mut cfg = ModelConfig::base(Arch::Gemma3, name, WeightFormat::Hf, j.origin, c, global);
    cfg.rope_local = local;
    let window = j.usize("sliding_window")?.unwrap_or(4096);
    let sliding = match j.layer_types(n_layers)? {
        Some(t) => t,
        None => {
            let pattern = j.usize("sliding_window_pattern")?.unwrap_or(6).max(1);
            (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    for (l, s) in cfg.layers.iter_mut().zip(sliding) {
        l.window = s.then_some(window);
        l.local_rope = s;
    }
    let qpas = j.f64("query_pre_attn_scalar")?.unwrap_or(256.0);
    if qpas <= 0.0 {
        return Err(ModelError::metadata(
            j.origin,
            "query_pre_attn_scalar",
            "must be > 0",
        ));
    }
    cfg.attn_scale = qpas.powf(-0.5) as f32;
    cfg.attn_softcap = j.f64("attn_logit_softcapping")?.map(|v| v as f32);
    cfg.final_softcap = j.f64("final_logit_softcapping")?.map(|v| v as f32);
    cfg.norm_add_one = true;
    finish(cfg, hidden)
}

fn local_default(j: &Json<'_>) -> Result<RopeFreqs> {
    Ok(RopeFreqs {
        base: j.f64("rope_local_base_freq")?.unwrap_or(1e4),
        scaling: RopeScaling::None,
    })
}

/// The flags both sources share.
fn finish(mut cfg: ModelConfig, hidden: usize) -> Result<ModelConfig> {
    cfg.act = Activation::GeluTanh;
    cfg.qk_norm = true;
    cfg.sandwich_norms = true;
    // llama.cpp and an f32 transformers run use the exact f32 sqrt (HF bf16 rounds it).
    cfg.embed_scale = (hidden as f32).sqrt();
    cfg.validate()
}

pub(crate) fn from_gguf(g: &Gguf<'_>) -> Result<ModelConfig> {
    let c = g.common()?;
    let (hidden, n_heads, n_layers) = (c.hidden, c.n_heads, c.n_layers);
    let global = g.rope(c.head_dim)?;
    let mut cfg = ModelConfig::base(
        Arch::Gemma3,
        "gemma3",
        WeightFormat::Gguf,
        g.f.path(),
        c,
        global,
    );
    // SWA layers: base `rope.freq_base_swa`, else llama.cpp's hparams default 10000; scale 1.
    cfg.rope_local = RopeFreqs {
        base: g.f64("rope.freq_base_swa")?.unwrap_or(1e4),
        scaling: RopeScaling::None,
    };
    let window = g.usize("attention.sliding_window")?.filter(|&w| w > 0);
    if let Some(w) = window {
        let sliding = swa_pattern(g, n_layers)?;
        for (l, s) in cfg.layers.iter_mut().zip(sliding) {
            l.window = s.then_some(w);
            l.local_rope = s;
        }
    }
    // llama.cpp: 1/sqrt(head_dim), except 27B (62 layers): 1/sqrt(hidden / heads).
    cfg.attn_scale = if n_layers == 62 {
        1.0 / ((hidden / n_heads.max(1)) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    cfg.attn_softcap = g.f64("attn_logit_softcapping")?.map(|v| v as f32);
    cfg.final_softcap = g.f64("final_logit_softcapping")?.map(|v| v as f32);
    finish(cfg, hidden)
}

/// `gemma3.attention.sliding_window_pattern`: an array of per-layer flags, or a period n
/// (layer i slides iff i % n < n − 1), default 6 (llama.cpp `load_swa_pattern(ml, 6)`).
fn swa_pattern(g: &Gguf<'_>, n_layers: usize) -> Result<Vec<bool>> {
    let key = g.key("attention.sliding_window_pattern");
    let bad = |msg: String| ModelError::metadata(g.f.path(), &key, msg);
    let period = match g.f.metadata().get(&key) {
        None => 6,
        Some(v) => match v.as_array() {
            Some(a) => {
                let flags: Vec<bool> = match a.as_bools() {
                    Some(b) => b.to_vec(),
                    None => a
                        .to_i64s()
                        .map(|v| v.iter().map(|&x| x != 0).collect())
                        .ok_or_else(|| bad("expected an array of bools".into()))?,
                };
                if flags.len() != n_layers {
                    return Err(bad(format!("{} flags for {n_layers} layers", flags.len())));
                }
                return Ok(flags);
            }
            None => v
                .as_usize()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("expected a positive integer or an array of bools".into()))?,
        },
    };
    Ok((0..n_layers).map(|i| i % period < period - 1).collect())
}

/// HF tensor name of a per-layer role (after `<prefix>layers.<i>.`).
pub(crate) fn hf_layer_name(role: Role) -> Option<String> {
    Some(match role {
        Role::AttnNorm => "input_layernorm.weight".into(),
        Role::PostAttnNorm => "post_attention_layernorm.weight".into(),
        Role::FfnNorm => "pre_feedforward_layernorm.weight".into(),
        Role::PostFfnNorm => "post_feedforward_layernorm.weight".into(),
        r => return super::names::hf_common(r),
    })
}
