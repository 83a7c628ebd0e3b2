//! What the planner knows about a model before anything is loaded: the [`ModelConfig`] and,
//! for every tensor the loader (runtime/weights.rs) would prepare, its name, file dtype and
//! shape — read from GGUF tensor infos or safetensors headers, never from the weight data.
//! The walk mirrors the loader's: the same names, the same shape checks (a missing tensor or a
//! wrong shape is the same error), the same order of the f32 norm/bias parameters.

use std::path::{Path, PathBuf};

use kiln_core::DType;

use crate::arch::names::{HF_PREFIXES, global_name, hf_fused_experts, hf_layer, layer_name};
use crate::arch::{Global, ModelConfig, Role, WeightFormat};
use crate::catalog;
use crate::error::{ModelError, Result};
use crate::format::{self, ModelFormat};
use crate::runtime::HostTensors;
use crate::{GgufFile, HfDir, SafetensorsModel};

/// One matrix as the loader hands it to `prepare_weight`: file dtype and shape (`[n, k]`, or
/// `[experts, n, k]` for stacked experts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// The FFN matrices of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FfnMeta {
    /// gate, up `[ffn, hidden]`, down `[hidden, ffn]`.
    Dense {
        gate: TensorMeta,
        up: TensorMeta,
        down: TensorMeta,
    },
    /// router `[E, hidden]`, gate/up `[E, ff, hidden]`, down `[E, hidden, ff]`.
    Moe {
        router: TensorMeta,
        gate: TensorMeta,
        up: TensorMeta,
        down: TensorMeta,
    },
}

/// One f32 vector of the parameter buffer (a norm weight or a bias) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamMeta {
    /// The layer role; `None` for the final norm.
    pub role: Option<Role>,
    pub len: usize,
}

/// One decoder layer: its matrices and its parameters in the loader's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerMeta {
    /// q `[n_heads·hd, hidden]`, k/v `[n_kv·hd, hidden]`, o `[hidden, n_heads·hd]`.
    pub q: TensorMeta,
    pub k: TensorMeta,
    pub v: TensorMeta,
    pub o: TensorMeta,
    pub ffn: FfnMeta,
    pub params: Vec<ParamMeta>,
}

/// A model's config and tensor table, from metadata only.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelMeta {
    /// The file or directory (catalog names resolved to the cached file).
    pub path: PathBuf,
    /// `vocab` set from the embedding's rows, as loading does.
    pub config: ModelConfig,
    /// `[vocab, hidden]`.
    pub embed: TensorMeta,
    /// `[vocab, hidden]`; `None` when tied (the file has no output matrix).
    pub output: Option<TensorMeta>,
    /// The final norm `[hidden]` (the first parameter the loader packs).
    pub output_norm: ParamMeta,
    pub layers: Vec<LayerMeta>,
}

impl ModelMeta {
    /// Read `name_or_path`: a GGUF file, an HF directory, or a catalog name that is already
    /// downloaded (planning never fetches a model: that would read the weights).
    pub fn open(name_or_path: &str) -> Result<ModelMeta> {
        let path = local_path(name_or_path)?;
        match format::detect(&path)? {
            ModelFormat::Gguf => {
                let file = GgufFile::open(&path)?;
                let cfg = ModelConfig::from_gguf(&file)?;
                let meta = Walker::new(Tensors::Gguf(&file), cfg)?.walk(&path)?;
                Ok(meta)
            }
            ModelFormat::HfDir => {
                let dir = HfDir::open(&path)?;
                let origin = path.join("config.json").display().to_string();
                let cfg = ModelConfig::from_hf(dir.config(), &origin)?;
                Walker::new(Tensors::Hf(dir.weights()), cfg)?.walk(&path)
            }
            other => Err(ModelError::format(
                &path.display().to_string(),
                format!(
                    "a {} file has no model config: pass a GGUF file or a Hugging Face directory",
                    other.name()
                ),
            )),
        }
    }

    /// The metadata of a model built in memory ([`Model::from_parts`](crate::Model::from_parts):
    /// synthetic benchmark models), `config` as `from_parts` takes it.
    pub fn from_parts(config: ModelConfig, tensors: &HostTensors<'_>) -> Result<ModelMeta> {
        let cfg = ModelConfig {
            origin: tensors.origin().to_string(),
            ..config
        }
        .validate()?;
        let path = PathBuf::from(tensors.origin());
        Walker::new(Tensors::Mem(tensors), cfg)?.walk(&path)
    }

    /// The file's bytes of every matrix (file dtypes; the parameters not included).
    pub fn file_weight_bytes(&self) -> usize {
        let mut all = vec![&self.embed];
        all.extend(self.output.iter());
        for l in &self.layers {
            all.extend([&l.q, &l.k, &l.v, &l.o]);
            match &l.ffn {
                FfnMeta::Dense { gate, up, down } => all.extend([gate, up, down]),
                FfnMeta::Moe {
                    router,
                    gate,
                    up,
                    down,
                } => all.extend([router, gate, up, down]),
            }
        }
        all.iter()
            .filter_map(|t| t.dtype.bytes_for(t.shape.iter().product()).ok())
            .sum()
    }
}

/// An existing path as is, else a catalog model already in the cache.
fn local_path(name_or_path: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match catalog::find(name_or_path) {
        Some(entry) => {
            let cached = catalog::cached_path(entry);
            if cached.exists() {
                Ok(cached)
            } else {
                Err(ModelError::Fetch {
                    name: name_or_path.to_string(),
                    msg: format!(
                        "not downloaded yet ({} does not exist); planning reads metadata only and never fetches: run `kiln run {name_or_path}` once or pass a file",
                        cached.display()
                    ),
                })
            }
        }
        None => Err(ModelError::Fetch {
            name: name_or_path.to_string(),
            msg: format!(
                "no such file or directory, and not a catalog model (catalog: {})",
                catalog::names()
            ),
        }),
    }
}

/// Tensor descriptions of a file (no data), or of tensors in memory.
enum Tensors<'a> {
    Gguf(&'a GgufFile),
    Hf(&'a SafetensorsModel),
    Mem(&'a HostTensors<'a>),
}

impl Tensors<'_> {
    fn file(&self) -> &str {
        match self {
            Tensors::Gguf(f) => f.path(),
            Tensors::Hf(m) => m.path(),
            Tensors::Mem(t) => t.origin(),
        }
    }
    fn has(&self, name: &str) -> bool {
        match self {
            Tensors::Gguf(f) => f.contains(name),
            Tensors::Hf(m) => m.contains(name),
            Tensors::Mem(t) => t.get(name).is_some(),
        }
    }
    /// dtype and row-major shape; errors like the readers' `tensor()`.
    fn info(&self, name: &str) -> Result<(DType, Vec<usize>)> {
        let missing = || ModelError::NoTensor {
            file: self.file().to_string(),
            name: name.to_string(),
        };
        let unsupported = |type_name: String| ModelError::UnsupportedType {
            file: self.file().to_string(),
            name: name.to_string(),
            type_name,
        };
        match self {
            Tensors::Gguf(f) => {
                let t = f.tensor_info(name).ok_or_else(missing)?;
                match (t.dtype, t.size) {
                    (Some(d), Some(_)) => Ok((d, t.shape.dims().to_vec())),
                    _ => Err(unsupported(t.type_name())),
                }
            }
            Tensors::Hf(m) => {
                let t = m.tensor_info(name).ok_or_else(missing)?;
                let d = t.dtype.ok_or_else(|| unsupported(t.type_name.clone()))?;
                Ok((d, t.shape.clone()))
            }
            Tensors::Mem(m) => {
                let t = m.get(name).ok_or_else(missing)?;
                Ok((t.dtype, t.shape.dims().to_vec()))
            }
        }
    }
}

/// Walks the tensors in the loader's order.
struct Walker<'a> {
    src: Tensors<'a>,
    cfg: ModelConfig,
    prefix: &'static str,
}

impl<'a> Walker<'a> {
    fn new(src: Tensors<'a>, cfg: ModelConfig) -> Result<Walker<'a>> {
        let prefix = match &src {
            Tensors::Hf(_) | Tensors::Mem(_) if cfg.format == WeightFormat::Hf => HF_PREFIXES
                .into_iter()
                .find(|p| src.has(&format!("{p}embed_tokens.weight")))
                .unwrap_or("model."),
            _ => "",
        };
        Ok(Walker { src, cfg, prefix })
    }

    fn terr(&self, name: &str, msg: impl Into<String>) -> ModelError {
        ModelError::tensor(self.src.file(), name, msg)
    }

    fn lname(&self, role: Role, layer: usize) -> Result<String> {
        layer_name(&self.cfg, self.prefix, role, layer, 0).ok_or_else(|| {
            ModelError::Runtime(format!(
                "{}: {:?} has no tensor name for {role:?}",
                self.src.file(),
                self.cfg.arch
            ))
        })
    }

    /// A tensor that must exist with exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorMeta> {
        let (dtype, got) = self.src.info(name)?;
        if got != shape {
            return Err(self.terr(
                name,
                format!("shape {got:?} does not match the config's {shape:?}"),
            ));
        }
        Ok(TensorMeta {
            name: name.to_string(),
            dtype,
            shape: got,
        })
    }

    fn role(&self, role: Role, l: usize, shape: &[usize]) -> Result<TensorMeta> {
        let name = self.lname(role, l)?;
        self.tensor(&name, shape)
    }

    fn param(&self, role: Option<Role>, name: &str, len: usize) -> Result<ParamMeta> {
        self.tensor(name, &[len])?;
        Ok(ParamMeta { role, len })
    }

    fn walk(mut self, path: &Path) -> Result<ModelMeta> {
        let embed_name = global_name(&self.cfg, self.prefix, Global::Embed);
        let (dt, shape) = self.src.info(&embed_name)?;
        if shape.len() != 2 || shape[1] != self.cfg.hidden {
            return Err(self.terr(
                &embed_name,
                format!("shape {shape:?} is not [vocab, {}]", self.cfg.hidden),
            ));
        }
        self.cfg.vocab = shape[0];
        let embed = TensorMeta {
            name: embed_name,
            dtype: dt,
            shape,
        };
        let (vocab, h) = (self.cfg.vocab, self.cfg.hidden);
        let out_name = global_name(&self.cfg, self.prefix, Global::Output);
        let output = if self.src.has(&out_name) {
            Some(self.tensor(&out_name, &[vocab, h])?)
        } else {
            None
        };
        let norm_name = global_name(&self.cfg, self.prefix, Global::OutputNorm);
        let output_norm = self.param(None, &norm_name, h)?;
        let layers = (0..self.cfg.n_layers)
            .map(|l| self.layer(l))
            .collect::<Result<Vec<_>>>()?;
        let mut config = self.cfg;
        config.origin = path.display().to_string();
        Ok(ModelMeta {
            path: path.to_path_buf(),
            config,
            embed,
            output,
            output_norm,
            layers,
        })
    }

    fn layer(&self, l: usize) -> Result<LayerMeta> {
        let c = &self.cfg;
        let (h, q, kv, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        for role in [Role::GateBias, Role::UpBias, Role::DownBias] {
            let name = self.lname(role, l)?;
            if self.src.has(&name) {
                return Err(self.terr(&name, "MLP biases are not supported"));
            }
        }
        // The parameters in the loader's order (LayerWeights' fields).
        let mut params = Vec::new();
        let mut want = |role: Role, len: usize, required: bool| -> Result<()> {
            let name = self.lname(role, l)?;
            if required || self.src.has(&name) {
                params.push(self.param(Some(role), &name, len)?);
            }
            Ok(())
        };
        want(Role::AttnNorm, h, true)?;
        want(Role::QBias, q, c.qkv_bias)?;
        want(Role::KBias, kv, c.qkv_bias)?;
        want(Role::VBias, kv, c.qkv_bias)?;
        want(Role::OBias, h, false)?;
        if c.qk_norm {
            want(Role::QNorm, hd, true)?;
            want(Role::KNorm, hd, true)?;
        }
        if c.sandwich_norms {
            want(Role::PostAttnNorm, h, true)?;
        }
        want(Role::FfnNorm, h, true)?;
        if c.sandwich_norms {
            want(Role::PostFfnNorm, h, true)?;
        }
        Ok(LayerMeta {
            q: self.role(Role::Q, l, &[q, h])?,
            k: self.role(Role::K, l, &[kv, h])?,
            v: self.role(Role::V, l, &[kv, h])?,
            o: self.role(Role::O, l, &[h, q])?,
            ffn: self.ffn(l)?,
            params,
        })
    }

    fn ffn(&self, l: usize) -> Result<FfnMeta> {
        let c = &self.cfg;
        let h = c.hidden;
        let moe = c.layers.get(l).is_some_and(|s| s.moe);
        match (&c.moe, moe) {
            (Some(m), true) => {
                let (e, ff) = (m.n_experts, m.ff);
                // Loaded as f32 whatever the file's type (runtime/weights.rs `router`).
                let router = TensorMeta {
                    dtype: DType::F32,
                    ..self.role(Role::Router, l, &[e, h])?
                };
                let (gate, up, down) = match c.format {
                    WeightFormat::Gguf => (
                        self.role(Role::ExpGate, l, &[e, ff, h])?,
                        self.role(Role::ExpUp, l, &[e, ff, h])?,
                        self.role(Role::ExpDown, l, &[e, h, ff])?,
                    ),
                    WeightFormat::Hf => self.hf_experts(l, e, ff)?,
                };
                Ok(FfnMeta::Moe {
                    router,
                    gate,
                    up,
                    down,
                })
            }
            _ => Ok(FfnMeta::Dense {
                gate: self.role(Role::Gate, l, &[c.ffn, h])?,
                up: self.role(Role::Up, l, &[c.ffn, h])?,
                down: self.role(Role::Down, l, &[h, c.ffn])?,
            }),
        }
    }

    /// HF experts: transformers v5's fused `gate_up_proj` split in two, or per-expert matrices
    /// stacked (all of one role must share a dtype).
    fn hf_experts(
        &self,
        l: usize,
        e: usize,
        ff: usize,
    ) -> Result<(TensorMeta, TensorMeta, TensorMeta)> {
        let h = self.cfg.hidden;
        let (fused_gu, fused_down) = hf_fused_experts(self.prefix, l);
        if self.src.has(&fused_gu) {
            let gu = self.tensor(&fused_gu, &[e, 2 * ff, h])?;
            let half = TensorMeta {
                shape: vec![e, ff, h],
                ..gu
            };
            let down = self.tensor(&fused_down, &[e, h, ff])?;
            return Ok((half.clone(), half, down));
        }
        let mut out = Vec::with_capacity(3);
        for (role, rows, cols) in [
            (Role::ExpGate, ff, h),
            (Role::ExpUp, ff, h),
            (Role::ExpDown, h, ff),
        ] {
            let mut first: Option<TensorMeta> = None;
            for x in 0..e {
                let name = hf_layer(&self.cfg, self.prefix, role, l, x)
                    .ok_or_else(|| ModelError::Runtime(format!("no HF name for {role:?}")))?;
                let t = self.tensor(&name, &[rows, cols])?;
                match &first {
                    None => first = Some(t),
                    Some(f) if f.dtype != t.dtype => {
                        return Err(self.terr(
                            &name,
                            format!("dtype {} differs from {}'s {}", t.dtype, f.name, f.dtype),
                        ));
                    }
                    Some(_) => {}
                }
            }
            let f =
                first.ok_or_else(|| ModelError::Runtime("a MoE layer has no experts".into()))?;
            out.push(TensorMeta {
                shape: vec![e, rows, cols],
                ..f
            });
        }
        let mut it = out.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(g), Some(u), Some(d)) => Ok((g, u, d)),
            _ => Err(ModelError::Runtime(
                "expert stacking produced no weights".into(),
            )),
        }
    }
}
