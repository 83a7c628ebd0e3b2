//! One [`ModelConfig`] for the seven architectures, read from a Hugging Face `config.json` or
//! from GGUF metadata (MODELS.md §2, §4, §8). Per-architecture quirks (defaults, which layers
//! slide, rope bases, attention scale) live in `llama.rs`, `qwen.rs` and `gemma3.rs`; this file
//! holds the common fields and the JSON / GGUF readers.

use kiln_core::{Activation, MoeGating, RopeFreqs, RopeScaling, RopeStyle};
use serde_json::Value;

use super::{gemma3, llama, qwen};
use crate::error::{ModelError, Result};
use crate::format::gguf::GgufFile;

/// The architecture families kiln runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3/3.1/3.2, and from GGUF also Mistral and Mixtral (all `llama` there).
    Llama,
    Mistral,
    Mixtral,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Gemma3,
}

/// Where the weights come from: decides tensor names, the rope pairing of llama-arch Q/K rows
/// and whether gemma3 norm weights already hold the +1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    Hf,
    Gguf,
}

/// Mixture-of-experts settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_experts: usize,
    pub top_k: usize,
    /// Per-expert FFN size.
    pub ff: usize,
    pub gating: MoeGating,
}

/// Per-layer attention settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Sliding window W (a query at p sees keys p − W < k ≤ p), `None` = full attention.
    pub window: Option<usize>,
    /// Use the local rope table (gemma3 sliding layers) instead of the global one.
    pub local_rope: bool,
    /// The FFN of this layer is a mixture of experts.
    pub moe: bool,
}

/// Everything the runtime needs to know about a model besides its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The name the file gives (`llama`, `qwen3_moe`, `gemma3_text`, ...).
    pub arch_name: String,
    pub format: WeightFormat,
    /// The file or directory the config was read from (for messages).
    pub origin: String,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dense FFN size (unused by MoE layers).
    pub ffn: usize,
    /// Rows of the embedding table; set from the tensor when the weights load (0 before).
    pub vocab: usize,
    pub eps: f32,
    pub act: Activation,
    pub rope_style: RopeStyle,
    /// Rotated dims per head (= head_dim for all seven architectures).
    pub n_rot: usize,
    pub rope_global: RopeFreqs,
    /// Rope of sliding layers that have their own base (gemma3); equal to global elsewhere.
    pub rope_local: RopeFreqs,
    pub layers: Vec<LayerSpec>,
    pub attn_scale: f32,
    pub attn_softcap: Option<f32>,
    /// `final_logit_softcapping`: logits = c · tanh(logits / c), applied on the host.
    pub final_softcap: Option<f32>,
    /// The embedding rows are multiplied by this (gemma3: sqrt(hidden) in f32).
    pub embed_scale: f32,
    /// Per-head RMSNorm of q and k before rope (qwen3, qwen3moe, gemma3).
    pub qk_norm: bool,
    /// q/k/v biases are required (qwen2); other biases load when present.
    pub qkv_bias: bool,
    /// Norms of the attention output and of the FFN output (gemma3).
    pub sandwich_norms: bool,
    /// Norm weights get +1 on the host (gemma3 from HF; the GGUF already holds it).
    pub norm_add_one: bool,
    pub moe: Option<MoeConfig>,
    /// `max_position_embeddings` / `<arch>.context_length`.
    pub context_length: usize,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Whether any layer is MoE.
    pub fn is_moe(&self) -> bool {
        self.layers.iter().any(|l| l.moe)
    }

    /// Read `config.json` (already parsed). `origin` names the file for errors.
    pub fn from_hf(config: &Value, origin: &str) -> Result<ModelConfig> {
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::metadata(origin, "model_type", "missing or not a string"))?;
        // Gemma3ForConditionalGeneration: the text model's settings are in text_config.
        if model_type == "gemma3"
            && let Some(text) = config.get("text_config").filter(|v| v.is_object())
        {
            let j = Json { v: text, origin };
            return gemma3::from_hf(&j, "gemma3");
        }
        let j = Json { v: config, origin };
        match model_type {
            "llama" => llama::from_hf(&j, Arch::Llama, model_type),
            "mistral" => llama::from_hf(&j, Arch::Mistral, model_type),
            "mixtral" => llama::from_hf(&j, Arch::Mixtral, model_type),
            "qwen2" => qwen::from_hf(&j, Arch::Qwen2, model_type),
            "qwen3" => qwen::from_hf(&j, Arch::Qwen3, model_type),
            "qwen3_moe" => qwen::from_hf(&j, Arch::Qwen3Moe, model_type),
            "gemma3_text" | "gemma3" => gemma3::from_hf(&j, model_type),
            other => Err(ModelError::metadata(
                origin,
                "model_type",
                format!(
                    "unknown architecture '{other}' (kiln runs llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma3_text)"
                ),
            )),
        }
    }

    /// Read GGUF metadata (and `rope_freqs.weight` for llama3 scaling).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig> {
        let arch = file.architecture()?.to_string();
        let g = Gguf { f: file, a: &arch };
        match arch.as_str() {
            "llama" => llama::from_gguf(&g),
            "qwen2" => qwen::from_gguf(&g, Arch::Qwen2),
            "qwen3" => qwen::from_gguf(&g, Arch::Qwen3),
            "qwen3moe" => qwen::from_gguf(&g, Arch::Qwen3Moe),
            "gemma3" => gemma3::from_gguf(&g),
            other => Err(ModelError::metadata(
                file.path(),
                "general.architecture",
                format!(
                    "unknown architecture '{other}' (kiln runs llama, qwen2, qwen3, qwen3moe, gemma3 GGUFs)"
                ),
            )),
        }
    }

    /// Check the numbers agree with each other (heads divide, dims non-zero).
    pub(crate) fn validate(self) -> Result<ModelConfig> {
        let bad = |key: &str, msg: String| Err(ModelError::metadata(&self.origin, key, msg));
        for (key, v) in [
            ("hidden_size", self.hidden),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(key, "must be > 0".into());
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} kv heads",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if self.n_rot == 0 || self.n_rot > self.head_dim || !self.n_rot.is_multiple_of(2) {
            return bad(
                "rope dimension",
                format!("{} rotated dims for head_dim {}", self.n_rot, self.head_dim),
            );
        }
        if self.layers.len() != self.n_layers {
            return bad(
                "layer_types",
                format!("{} entries for {} layers", self.layers.len(), self.n_layers),
            );
        }
        if let Some(m) = &self.moe
            && (m.n_experts == 0 || m.top_k == 0 || m.top_k > m.n_experts || m.ff == 0)
        {
            return bad(
                "experts",
                format!(
                    "{} experts, {} per token, ff {}: need 0 < top_k ≤ experts and ff > 0",
                    m.n_experts, m.top_k, m.ff
                ),
            );
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(
                "rms_norm_eps",
                format!("{} is not a valid epsilon", self.eps),
            );
        }
        Ok(self)
    }
}

/// The defaults every architecture starts from; the per-arch readers fill in the rest.
pub(crate) struct Common {
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f32,
    pub context_length: usize,
}

impl ModelConfig {
    /// A config with the common fields set and per-arch flags at their plain defaults
    /// (SiLU, no norms/biases extras, full attention everywhere, scale 1/sqrt(head_dim)).
    pub(crate) fn base(
        arch: Arch,
        arch_name: &str,
        format: WeightFormat,
        origin: &str,
        c: Common,
        rope: RopeFreqs,
    ) -> ModelConfig {
        let style = match (format, arch) {
            // llama-arch GGUFs keep their permuted Q/K rows: pair (2i, 2i+1) (MODELS.md §3).
            (WeightFormat::Gguf, Arch::Llama | Arch::Mistral | Arch::Mixtral) => {
                RopeStyle::Interleaved
            }
            _ => RopeStyle::Neox,
        };
        ModelConfig {
            arch,
            arch_name: arch_name.to_string(),
            format,
            origin: origin.to_string(),
            hidden: c.hidden,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn: c.ffn,
            vocab: 0,
            eps: c.eps,
            act: Activation::Silu,
            rope_style: style,
            n_rot: c.head_dim,
            rope_local: rope.clone(),
            rope_global: rope,
            layers: vec![
                LayerSpec {
                    window: None,
                    local_rope: false,
                    moe: false
                };
                c.n_layers
            ],
            attn_scale: 1.0 / (c.head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: 1.0,
            qk_norm: false,
            qkv_bias: false,
            sandwich_norms: false,
            norm_add_one: false,
            moe: None,
            context_length: c.context_length,
        }
    }
}

// ---- config.json ---------------------------------------------------------------------------

/// A JSON object with typed, optional getters whose errors name the file and key.
pub(crate) struct Json<'a> {
    pub v: &'a Value,
    pub origin: &'a str,
}

impl<'a> Json<'a> {
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn err(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::metadata(self.origin, key, msg)
    }
    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(key, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }
    pub fn need_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| self.err(key, "missing from config.json"))
    }
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a bool, found {v}"))),
        }
    }
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }
    /// A nested object (`rope_parameters`, ...), if present.
    pub fn obj(&self, key: &str) -> Option<Json<'a>> {
        self.raw(key).filter(|v| v.is_object()).map(|v| Json {
            v,
            origin: self.origin,
        })
    }
    /// `layer_types` as per-layer "is sliding" flags, if present.
    pub fn layer_types(&self, n_layers: usize) -> Result<Option<Vec<bool>>> {
        let Some(v) = self.raw("layer_types") else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.err("layer_types", "expected a list of strings"))?;
        if list.len() != n_layers {
            return Err(self.err(
                "layer_types",
                format!("{} entries for {n_layers} layers", list.len()),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(self.err(
                    "layer_types",
                    format!(
                        "entry {i} is {t}, expected \"sliding_attention\" or \"full_attention\""
                    ),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The common fields; `head_dim` falls back to `default_head_dim` (None: hidden/heads).
    pub fn common(&self, default_head_dim: Option<usize>, default_eps: f64) -> Result<Common> {
        let hidden = self.need_usize("hidden_size")?;
        let n_heads = self.need_usize("num_attention_heads")?;
        let n_kv_heads = self.usize("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = match self.usize("head_dim")?.or(default_head_dim) {
            Some(d) => d,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        Ok(Common {
            hidden,
            n_layers: self.need_usize("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: self.usize("intermediate_size")?.unwrap_or(0),
            eps: self.f64("rms_norm_eps")?.unwrap_or(default_eps) as f32,
            context_length: self.usize("max_position_embeddings")?.unwrap_or(4096),
        })
    }

    /// Rope base and scaling from `rope_parameters` (transformers v5) or the older top-level
    /// `rope_theta` + `rope_scaling` (MODELS.md §4.1).
    pub fn rope(&self, default_theta: f64) -> Result<RopeFreqs> {
        let params = self
            .obj("rope_parameters")
            .or_else(|| self.obj("rope_scaling"));
        let base = match &params {
            Some(p) => p.f64("rope_theta")?,
            None => None,
        }
        .or(self.f64("rope_theta")?)
        .unwrap_or(default_theta);
        let scaling = match &params {
            Some(p) => p.scaling()?,
            None => RopeScaling::None,
        };
        Ok(RopeFreqs { base, scaling })
    }

    /// The scaling named by this rope parameter object (`rope_type` or `type`).
    pub fn scaling(&self) -> Result<RopeScaling> {
        let kind = match self.str("rope_type")? {
            Some(k) => Some(k),
            None => self.str("type")?,
        };
        match kind.unwrap_or("default") {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: self.need_f64("factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: self.need_f64("factor")?,
                low_freq_factor: self.f64("low_freq_factor")?.unwrap_or(1.0),
                high_freq_factor: self.f64("high_freq_factor")?.unwrap_or(4.0),
                original_max_position: self
                    .f64("original_max_position_embeddings")?
                    .unwrap_or(8192.0),
            }),
            other => Err(self.err(
                "rope_type",
                format!("rope scaling '{other}' is not supported (default, linear, llama3)"),
            )),
        }
    }
    fn need_f64(&self, key: &str) -> Result<f64> {
        self.f64(key)?
            .ok_or_else(|| self.err(key, "missing from the rope parameters"))
    }
}

// ---- GGUF metadata -------------------------------------------------------------------------

/// GGUF metadata of one architecture: `<arch>.key` getters.
pub(crate) struct Gguf<'a> {
    pub f: &'a GgufFile,
    pub a: &'a str,
}

impl Gguf<'_> {
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.a)
    }
    pub fn usize(&self, k: &str) -> Result<Option<usize>> {
        self.f.opt_usize(&self.key(k))
    }
    pub fn need_usize(&self, k: &str) -> Result<usize> {
        self.f.get_usize(&self.key(k))
    }
    pub fn f64(&self, k: &str) -> Result<Option<f64>> {
        self.f.opt_f64(&self.key(k))
    }

    /// The common fields (head_dim = key_length, else n_embd / n_head, as llama.cpp).
    pub fn common(&self) -> Result<Common> {
        let hidden = self.need_usize("embedding_length")?;
        let n_heads = self.need_usize("attention.head_count")?;
        let head_dim = match self.usize("attention.key_length")? {
            Some(d) => d,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        if let Some(v) = self.usize("attention.value_length")?
            && v != head_dim
        {
            return Err(ModelError::metadata(
                self.f.path(),
                &self.key("attention.value_length"),
                format!(
                    "{v} differs from key_length {head_dim}; kiln needs equal K and V head dims"
                ),
            ));
        }
        Ok(Common {
            hidden,
            n_layers: self.need_usize("block_count")?,
            n_heads,
            n_kv_heads: self.usize("attention.head_count_kv")?.unwrap_or(n_heads),
            head_dim,
            ffn: self.usize("feed_forward_length")?.unwrap_or(0),
            eps: self
                .f64("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-5) as f32,
            context_length: self.usize("context_length")?.unwrap_or(4096),
        })
    }

    /// Base and scaling: `rope.freq_base` (default 10000), `rope.scaling.type/factor`, and
    /// llama3's divisors in the `rope_freqs.weight` tensor.
    pub fn rope(&self, n_rot: usize) -> Result<RopeFreqs> {
        let base = self.f64("rope.freq_base")?.unwrap_or(10000.0);
        let mut scaling = match self.f.opt_str(&self.key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: self.f64("rope.scaling.factor")?.unwrap_or(1.0),
            },
            Some(other) => {
                return Err(ModelError::metadata(
                    self.f.path(),
                    &self.key("rope.scaling.type"),
                    format!("rope scaling '{other}' is not supported (none, linear)"),
                ));
            }
        };
        if let RopeScaling::Linear { factor } = scaling
            && factor == 1.0
        {
            scaling = RopeScaling::None;
        }
        if self.f.contains("rope_freqs.weight") {
            let t = self.f.tensor("rope_freqs.weight")?;
            let d = kiln_core::convert::to_f32(t.dtype, t.data).map_err(|e| {
                ModelError::tensor(self.f.path(), "rope_freqs.weight", e.to_string())
            })?;
            if d.len() != n_rot / 2 {
                return Err(ModelError::tensor(
                    self.f.path(),
                    "rope_freqs.weight",
                    format!(
                        "{} divisors for {n_rot} rotated dims (want {})",
                        d.len(),
                        n_rot / 2
                    ),
                ));
            }
            scaling = RopeScaling::Divisors(d);
        }
        Ok(RopeFreqs { base, scaling })
    }

    /// `<arch>.expert_count` and `expert_used_count` when experts are present.
    pub fn experts(&self) -> Result<Option<(usize, usize)>> {
        match self.usize("expert_count")? {
            None | Some(0) => Ok(None),
            Some(e) => Ok(Some((e, self.need_usize("expert_used_count")?))),
        }
    }
}
