//! Weights prepared on a backend: every matrix through `Backend::prepare_weight` once; norm
//! weights and biases (which the ops take as f32 views) packed on the host into one f32 buffer
//! and uploaded once. Shapes are checked against the config; a missing tensor or a wrong shape
//! is an error naming the file and the tensor.
//!
//! Host-side transforms (MODELS.md): gemma3 HF norm weights get +1; HF per-expert matrices are
//! stacked into `[E, n, k]` (or split from transformers v5's fused `gate_up_proj`); GGUF
//! `ffn_*_exps` are already stacked. Llama-arch GGUF Q/K rows stay permuted (the config picks
//! interleaved rope for them).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_core::{Backend, Buffer, DType, HostTensor, Shape, Weight};

use super::shard::{self, Cut, ShardSpec, TpRank};
use crate::arch::names::{HF_PREFIXES, global_name, hf_fused_experts, layer_name};
use crate::arch::{Global, ModelConfig, Role, WeightFormat};
use crate::error::{ModelError, Result};
use crate::format::gguf::GgufFile;
use crate::format::safetensors::SafetensorsModel;

/// An f32 vector inside the parameter buffer: byte offset and element count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub offset: usize,
    pub len: usize,
}

/// The FFN of one layer.
pub enum Ffn {
    /// down(act(gate·h) ⊙ up·h): gate, up `[ffn, hidden]`, down `[hidden, ffn]`.
    Dense {
        gate: Weight,
        up: Weight,
        down: Weight,
    },
    /// Routed experts: router `[E, hidden]`, gate/up `[E, ff, hidden]`, down `[E, hidden, ff]`.
    Moe {
        router: Weight,
        gate: Weight,
        up: Weight,
        down: Weight,
    },
}

/// One decoder layer's weights.
pub struct LayerWeights {
    pub attn_norm: Param,
    /// q `[n_heads·hd, hidden]`, k/v `[n_kv·hd, hidden]`, o `[hidden, n_heads·hd]`.
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub q_bias: Option<Param>,
    pub k_bias: Option<Param>,
    pub v_bias: Option<Param>,
    pub o_bias: Option<Param>,
    /// Per-head norms `[head_dim]`.
    pub q_norm: Option<Param>,
    pub k_norm: Option<Param>,
    pub post_attn_norm: Option<Param>,
    pub ffn_norm: Param,
    pub post_ffn_norm: Option<Param>,
    pub ffn: Ffn,
}

/// A model's weights on one backend: all of them, or one device's share (see
/// [`shard`](super::shard)).
pub struct Weights {
    /// `[vocab, hidden]`, on devices that embed tokens.
    pub embed: Option<Weight>,
    /// `[vocab, hidden]` (the embedding itself when tied), on the device computing logits.
    pub output: Option<Weight>,
    /// The vocabulary rows of `output` this device computes logits for (`None`: no logits
    /// here; see [`shard::head_rows`]).
    pub head_rows: Option<std::ops::Range<usize>>,
    pub tied: bool,
    pub output_norm: Param,
    /// Global index of `layers[0]`.
    pub first_layer: usize,
    /// The layers held, from `first_layer` on (a tensor-parallel rank's slices).
    pub layers: Vec<LayerWeights>,
    /// f32 norm weights and biases (see [`Param`]).
    pub params: Buffer,
    /// Device bytes of the matrices plus the parameter buffer.
    pub bytes: usize,
}

/// Named host tensors built by a program rather than read from a file (synthetic benchmark
/// models, tests), for [`Model::from_parts`](super::Model::from_parts). Names follow the
/// config's [`WeightFormat`]: GGUF names (`blk.0.attn_q.weight`) or HF names
/// (`model.layers.0.self_attn.q_proj.weight`); any dtype `prepare_weight` takes.
#[derive(Clone, Debug, Default)]
pub struct HostTensors<'a> {
    origin: String,
    map: HashMap<String, HostTensor<'a>>,
}

impl<'a> HostTensors<'a> {
    /// An empty set; `origin` names it in error messages (like a file path).
    pub fn new(origin: impl Into<String>) -> HostTensors<'a> {
        HostTensors {
            origin: origin.into(),
            map: HashMap::new(),
        }
    }
    /// A set from `(name, tensor)` pairs (a later duplicate name replaces an earlier one).
    pub fn from_pairs(
        origin: impl Into<String>,
        pairs: impl IntoIterator<Item = (String, HostTensor<'a>)>,
    ) -> HostTensors<'a> {
        HostTensors {
            origin: origin.into(),
            map: pairs.into_iter().collect(),
        }
    }
    /// Add or replace `name`; returns the tensor it replaced.
    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor<'a>) -> Option<HostTensor<'a>> {
        self.map.insert(name.into(), t)
    }
    pub fn get(&self, name: &str) -> Option<&HostTensor<'a>> {
        self.map.get(name)
    }
    pub fn origin(&self) -> &str {
        &self.origin
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Bytes of all tensors.
    pub fn bytes(&self) -> usize {
        self.map.values().map(|t| t.data.len()).sum()
    }
}

/// Where tensors come from.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Gguf(&'a GgufFile),
    Hf(&'a SafetensorsModel),
    Mem(&'a HostTensors<'a>),
}

impl<'a> Source<'a> {
    fn file(&self) -> &'a str {
        match *self {
            Source::Gguf(f) => f.path(),
            Source::Hf(m) => m.path(),
            Source::Mem(t) => t.origin(),
        }
    }
    fn has(&self, name: &str) -> bool {
        match self {
            Source::Gguf(f) => f.contains(name),
            Source::Hf(m) => m.contains(name),
            Source::Mem(t) => t.map.contains_key(name),
        }
    }
    fn get(&self, name: &str) -> Result<HostTensor<'a>> {
        match *self {
            Source::Gguf(f) => f.tensor(name),
            Source::Hf(m) => m.tensor(name),
            Source::Mem(t) => t
                .map
                .get(name)
                .copied()
                .ok_or_else(|| ModelError::NoTensor {
                    file: t.origin().to_string(),
                    name: name.to_string(),
                }),
        }
    }
    /// Bytes of every tensor (for progress).
    fn total_bytes(&self) -> u64 {
        match self {
            Source::Gguf(f) => f
                .tensors()
                .iter()
                .filter_map(|t| t.size)
                .map(|s| s as u64)
                .sum(),
            Source::Hf(m) => m.tensors().map(|(_, t)| t.size as u64).sum(),
            Source::Mem(t) => t.bytes() as u64,
        }
    }
}

/// Loads tensors by role, checks shapes, prepares them and packs the f32 parameters.
struct Loader<'a, 'p> {
    src: Source<'a>,
    cfg: &'a ModelConfig,
    backend: &'a dyn Backend,
    prefix: &'static str,
    params: Vec<f32>,
    done: u64,
    total: u64,
    bytes: usize,
    progress: &'p mut dyn FnMut(u64, u64),
    /// Tensor-parallel rank: matrices and biases are cut to its share.
    tp: Option<TpRank>,
}

impl<'a> Loader<'a, '_> {
    fn terr(&self, name: &str, msg: impl Into<String>) -> ModelError {
        ModelError::tensor(self.src.file(), name, msg)
    }
    fn missing(&self, name: &str) -> ModelError {
        ModelError::NoTensor {
            file: self.src.file().to_string(),
            name: name.to_string(),
        }
    }
    fn lname(&self, role: Role, layer: usize) -> Result<String> {
        layer_name(self.cfg, self.prefix, role, layer, 0).ok_or_else(|| {
            ModelError::Runtime(format!(
                "{}: {:?} has no tensor name for {role:?}",
                self.src.file(),
                self.cfg.arch
            ))
        })
    }
    fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor<'a>> {
        if !self.src.has(name) {
            return Err(self.missing(name));
        }
        let t = self.src.get(name)?;
        if t.shape.dims() != shape {
            return Err(self.terr(
                name,
                format!("shape {} does not match the config's {shape:?}", t.shape),
            ));
        }
        Ok(t)
    }
    fn tick(&mut self, bytes: usize) {
        self.done += bytes as u64;
        (self.progress)(self.done, self.total);
    }
    /// Prepare `t`, or its `cut` (a tensor-parallel share).
    fn prepare_cut(&mut self, name: &str, t: &HostTensor<'_>, cut: Option<Cut>) -> Result<Weight> {
        let Some(c) = cut else {
            return self.prepare(name, t);
        };
        let (bytes, shape) = shard::cut(t, &c)
            .map_err(|m| self.terr(name, format!("tensor-parallel share: {m}")))?;
        let part =
            HostTensor::new(t.dtype, shape, &bytes).map_err(|e| self.terr(name, e.to_string()))?;
        self.prepare(name, &part)
    }
    fn prepare(&mut self, name: &str, t: &HostTensor<'_>) -> Result<Weight> {
        let w = self
            .backend
            .prepare_weight(t)
            .map_err(|e| ModelError::backend(format!("{}: tensor '{name}'", self.src.file()), e))?;
        self.bytes += w.bytes();
        self.tick(t.data.len());
        Ok(w)
    }
    /// A matrix `[rows, cols]`.
    fn weight(&mut self, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let t = self.host(name, &[rows, cols])?;
        self.prepare(name, &t)
    }
    /// The MoE router `[experts, hidden]`, always in f32: a bf16 GEMM rounds its input to bf16
    /// (CUDA's dense path), and an expert choice is discrete, so a near-tie that rounding flips
    /// changes the output by a whole expert (the zoo's qwen3moe: 0.5–0.7 in logits, measured
    /// with zoo_util/rounded.rs); f32 keeps the router's input in f32 on every backend.
    /// Under tensor parallelism every rank must also pick the same experts for a token, or each
    /// computes its share of different experts and the sum is a mixture of none (ranks on
    /// different backends or kernels round differently). So the logits are broadcast from
    /// rank 0: ranks above 0 hold zeros, their logits are exact zeros, and the all-reduce of
    /// the logits (runtime/step.rs) leaves rank 0's on every rank.
    fn router(&mut self, layer: usize, experts: usize, hidden: usize) -> Result<Weight> {
        let name = self.lname(Role::Router, layer)?;
        let t = self.host(&name, &[experts, hidden])?;
        let mut v = kiln_core::convert::to_f32(t.dtype, t.data)
            .map_err(|e| self.terr(&name, e.to_string()))?;
        if self.tp.is_some_and(|tp| tp.rank > 0) {
            v.fill(0.0);
        }
        let z = HostTensor::new(DType::F32, t.shape, bytemuck::cast_slice(&v))
            .map_err(|e| self.terr(&name, e.to_string()))?;
        self.prepare(&name, &z)
    }
    /// A layer matrix of full shape `shape`, cut to this rank's share.
    fn role_cut(
        &mut self,
        role: Role,
        layer: usize,
        shape: impl AsRef<[usize]>,
        cut: Option<Cut>,
    ) -> Result<Weight> {
        let name = self.lname(role, layer)?;
        let t = self.host(&name, shape.as_ref())?;
        self.prepare_cut(&name, &t, cut)
    }
    /// An f32 vector of `len` into the parameter buffer (`add_one`: gemma3 HF norms).
    fn param(&mut self, name: &str, len: usize, add_one: bool) -> Result<Param> {
        self.param_cut(name, len, add_one, None)
    }
    /// [`Self::param`], keeping only `range` (a sharded bias).
    fn param_cut(
        &mut self,
        name: &str,
        len: usize,
        add_one: bool,
        range: Option<std::ops::Range<usize>>,
    ) -> Result<Param> {
        let t = self.host(name, &[len])?;
        let mut v = kiln_core::convert::to_f32(t.dtype, t.data)
            .map_err(|e| self.terr(name, e.to_string()))?;
        let n = t.data.len();
        if let Some(r) = &range {
            v = shard::cut_vec(&v, r);
        }
        let len = v.len();
        if add_one {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        // 256-byte aligned offsets: any backend may bind the view at its offset.
        while !self.params.len().is_multiple_of(64) {
            self.params.push(0.0);
        }
        let offset = self.params.len() * 4;
        self.params.extend_from_slice(&v);
        self.tick(n);
        Ok(Param { offset, len })
    }
    fn norm(&mut self, role: Role, layer: usize, len: usize) -> Result<Param> {
        let name = self.lname(role, layer)?;
        let add = self.cfg.norm_add_one;
        self.param(&name, len, add)
    }
    fn opt_norm(
        &mut self,
        role: Role,
        layer: usize,
        len: usize,
        want: bool,
    ) -> Result<Option<Param>> {
        if !want {
            return Ok(None);
        }
        self.norm(role, layer, len).map(Some)
    }
    /// A bias: required when `required`, else loaded if the file has it.
    fn bias(
        &mut self,
        role: Role,
        layer: usize,
        len: usize,
        required: bool,
        range: Option<std::ops::Range<usize>>,
    ) -> Result<Option<Param>> {
        let name = self.lname(role, layer)?;
        if !required && !self.src.has(&name) {
            return Ok(None);
        }
        self.param_cut(&name, len, false, range).map(Some)
    }

    fn layer(&mut self, l: usize) -> Result<LayerWeights> {
        let c = self.cfg;
        let (h, q, kv, hd) = (c.hidden, c.q_dim(), c.kv_dim(), c.head_dim);
        for role in [Role::GateBias, Role::UpBias, Role::DownBias] {
            let name = self.lname(role, l)?;
            if self.src.has(&name) {
                return Err(self.terr(&name, "MLP biases are not supported"));
            }
        }
        let sandwich = c.sandwich_norms;
        // A tensor-parallel rank's query / KV columns; the output bias is added once (rank 0).
        let (qr, kr) = match self.tp {
            Some(tp) => {
                let (a, b) = (tp.heads(c), tp.kv_heads(c));
                (
                    Some(a.start * hd..a.end * hd),
                    Some(b.start * hd..b.end * hd),
                )
            }
            None => (None, None),
        };
        let rows = |r: &Option<std::ops::Range<usize>>| r.clone().map(Cut::Rows);
        let o_bias = match self.tp {
            Some(tp) if tp.rank > 0 => None,
            _ => self.bias(Role::OBias, l, h, false, None)?,
        };
        Ok(LayerWeights {
            attn_norm: self.norm(Role::AttnNorm, l, h)?,
            q: self.role_cut(Role::Q, l, [q, h], rows(&qr))?,
            k: self.role_cut(Role::K, l, [kv, h], rows(&kr))?,
            v: self.role_cut(Role::V, l, [kv, h], rows(&kr))?,
            o: self.role_cut(Role::O, l, [h, q], qr.clone().map(Cut::Cols))?,
            q_bias: self.bias(Role::QBias, l, q, c.qkv_bias, qr.clone())?,
            k_bias: self.bias(Role::KBias, l, kv, c.qkv_bias, kr.clone())?,
            v_bias: self.bias(Role::VBias, l, kv, c.qkv_bias, kr)?,
            o_bias,
            q_norm: self.opt_norm(Role::QNorm, l, hd, c.qk_norm)?,
            k_norm: self.opt_norm(Role::KNorm, l, hd, c.qk_norm)?,
            post_attn_norm: self.opt_norm(Role::PostAttnNorm, l, h, sandwich)?,
            ffn_norm: self.norm(Role::FfnNorm, l, h)?,
            post_ffn_norm: self.opt_norm(Role::PostFfnNorm, l, h, sandwich)?,
            ffn: self.ffn(l)?,
        })
    }

    fn ffn(&mut self, l: usize) -> Result<Ffn> {
        let c = self.cfg;
        let h = c.hidden;
        let moe = c.layers.get(l).is_some_and(|s| s.moe);
        // This rank's FFN columns: gate/up rows, down columns (per expert for MoE).
        let tp = self.tp;
        let part = |n: usize| tp.map(|tp| tp.ffn(n));
        let rows = |n: usize| part(n).map(Cut::Rows);
        let cols = |n: usize| part(n).map(Cut::Cols);
        match (&c.moe, moe) {
            (Some(m), true) => {
                let (e, ff) = (m.n_experts, m.ff);
                let router = self.router(l, e, h)?;
                let (gate, up, down) = match c.format {
                    WeightFormat::Gguf => (
                        self.role_cut(Role::ExpGate, l, [e, ff, h], rows(ff))?,
                        self.role_cut(Role::ExpUp, l, [e, ff, h], rows(ff))?,
                        self.role_cut(Role::ExpDown, l, [e, h, ff], cols(ff))?,
                    ),
                    WeightFormat::Hf => self.hf_experts(l, e, ff)?,
                };
                Ok(Ffn::Moe {
                    router,
                    gate,
                    up,
                    down,
                })
            }
            _ => Ok(Ffn::Dense {
                gate: self.role_cut(Role::Gate, l, [c.ffn, h], rows(c.ffn))?,
                up: self.role_cut(Role::Up, l, [c.ffn, h], rows(c.ffn))?,
                down: self.role_cut(Role::Down, l, [h, c.ffn], cols(c.ffn))?,
            }),
        }
    }

    /// HF experts: per-expert matrices stacked on the host, or the fused v5 form split.
    fn hf_experts(&mut self, l: usize, e: usize, ff: usize) -> Result<(Weight, Weight, Weight)> {
        let h = self.cfg.hidden;
        let (fused_gu, fused_down) = hf_fused_experts(self.prefix, l);
        if self.src.has(&fused_gu) {
            let gu = self.host(&fused_gu, &[e, 2 * ff, h])?;
            let dt = gu.dtype;
            let half = dt
                .bytes_for(ff * h)
                .map_err(|err| self.terr(&fused_gu, err.to_string()))?;
            let (mut g, mut u) = (Vec::with_capacity(e * half), Vec::with_capacity(e * half));
            for chunk in gu.data.chunks_exact(2 * half) {
                g.extend_from_slice(&chunk[..half]);
                u.extend_from_slice(&chunk[half..]);
            }
            let tp = self.tp;
            let rows = || tp.map(|tp| Cut::Rows(tp.ffn(ff)));
            let gate = self.stacked_weight(&fused_gu, dt, [e, ff, h], &g, rows())?;
            let up = self.stacked_weight(&fused_gu, dt, [e, ff, h], &u, rows())?;
            let d = self.host(&fused_down, &[e, h, ff])?;
            let cut = self.tp.map(|tp| Cut::Cols(tp.ffn(ff)));
            let down = self.prepare_cut(&fused_down, &d, cut)?;
            return Ok((gate, up, down));
        }
        let mut out = Vec::with_capacity(3);
        for (role, rows, cols) in [
            (Role::ExpGate, ff, h),
            (Role::ExpUp, ff, h),
            (Role::ExpDown, h, ff),
        ] {
            let mut bytes = Vec::new();
            let mut dtype = None;
            let mut first = String::new();
            for x in 0..e {
                let name = crate::arch::names::hf_layer(self.cfg, self.prefix, role, l, x)
                    .ok_or_else(|| ModelError::Runtime(format!("no HF name for {role:?}")))?;
                let t = self.host(&name, &[rows, cols])?;
                match dtype {
                    None => {
                        dtype = Some(t.dtype);
                        first = name.clone();
                    }
                    Some(d) if d != t.dtype => {
                        return Err(self.terr(
                            &name,
                            format!("dtype {} differs from {first}'s {d}", t.dtype),
                        ));
                    }
                    Some(_) => {}
                }
                bytes.extend_from_slice(t.data);
            }
            let dt = dtype.unwrap_or(DType::F32);
            let cut = self.tp.map(|tp| match role {
                Role::ExpDown => Cut::Cols(tp.ffn(ff)),
                _ => Cut::Rows(tp.ffn(ff)),
            });
            out.push(self.stacked_weight(&first, dt, [e, rows, cols], &bytes, cut)?);
        }
        let mut it = out.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(g), Some(u), Some(d)) => Ok((g, u, d)),
            _ => Err(ModelError::Runtime(
                "expert stacking produced no weights".into(),
            )),
        }
    }

    fn stacked_weight(
        &mut self,
        name: &str,
        dt: DType,
        shape: [usize; 3],
        bytes: &[u8],
        cut: Option<Cut>,
    ) -> Result<Weight> {
        let t = HostTensor::new(dt, Shape::d3(shape[0], shape[1], shape[2]), bytes)
            .map_err(|e| self.terr(name, e.to_string()))?;
        self.prepare_cut(name, &t, cut)
    }
}

/// The HF prefix under which this checkpoint keeps `embed_tokens`.
fn hf_prefix(src: &Source<'_>) -> &'static str {
    HF_PREFIXES
        .into_iter()
        .find(|p| src.has(&format!("{p}embed_tokens.weight")))
        .unwrap_or("model.")
}

/// Load and prepare every weight of `cfg` from `src`; sets `cfg.vocab` from the embedding.
pub(crate) fn load(
    src: Source<'_>,
    cfg: &mut ModelConfig,
    spec: &ShardSpec,
    backend: &Arc<dyn Backend>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Weights> {
    let prefix = match (&src, cfg.format) {
        (Source::Hf(_), _) | (Source::Mem(_), WeightFormat::Hf) => hf_prefix(&src),
        (Source::Gguf(_), _) | (Source::Mem(_), WeightFormat::Gguf) => "",
    };
    // The vocabulary size is the embedding's row count.
    let embed_name = global_name(cfg, prefix, Global::Embed);
    if !src.has(&embed_name) {
        return Err(ModelError::NoTensor {
            file: src.file().to_string(),
            name: embed_name,
        });
    }
    let et = src.get(&embed_name)?;
    if et.shape.rank() != 2 || et.shape.dim(1) != cfg.hidden {
        return Err(ModelError::tensor(
            src.file(),
            &embed_name,
            format!("shape {} is not [vocab, {}]", et.shape, cfg.hidden),
        ));
    }
    cfg.vocab = et.shape.dim(0);
    let cfg: &ModelConfig = cfg;
    let total = src.total_bytes();
    let mut ld = Loader {
        src,
        cfg,
        backend: backend.as_ref(),
        prefix,
        params: Vec::new(),
        done: 0,
        total,
        bytes: 0,
        progress,
        tp: spec.tp,
    };
    let out_name = global_name(cfg, prefix, Global::Output);
    // Tied when the file has no output matrix (MODELS.md §2: use the file, not the config flag).
    let tied = !ld.src.has(&out_name);
    let head_rows = shard::head_rows(spec.head, spec.tp, tied, cfg.vocab);
    let embed = (spec.embed || (head_rows.is_some() && tied))
        .then(|| ld.weight(&embed_name, cfg.vocab, cfg.hidden))
        .transpose()?;
    let output = match (&head_rows, tied) {
        (None, _) => None,
        (Some(_), true) => embed.clone(),
        (Some(r), false) if r.len() == cfg.vocab => {
            Some(ld.weight(&out_name, cfg.vocab, cfg.hidden)?)
        }
        (Some(r), false) => {
            let t = ld.host(&out_name, &[cfg.vocab, cfg.hidden])?;
            Some(ld.prepare_cut(&out_name, &t, Some(Cut::Rows(r.clone())))?)
        }
    };
    let embed = if spec.embed { embed } else { None };
    let norm_name = global_name(cfg, prefix, Global::OutputNorm);
    let output_norm = ld.param(&norm_name, cfg.hidden, cfg.norm_add_one)?;
    let mut layers = Vec::with_capacity(spec.layers.len());
    for l in spec.layers.clone() {
        layers.push(ld.layer(l)?);
    }
    let params_bytes: Vec<u8> = ld.params.iter().flat_map(|x| x.to_le_bytes()).collect();
    let params = backend
        .alloc(params_bytes.len().max(4))
        .and_then(|b| backend.write(&b, 0, &params_bytes).map(|()| b))
        .map_err(|e| ModelError::backend("uploading norm weights and biases", e))?;
    let bytes = ld.bytes + params_bytes.len();
    (ld.progress)(ld.total, ld.total);
    Ok(Weights {
        embed,
        output,
        head_rows,
        tied,
        output_norm,
        first_layer: spec.layers.start,
        layers,
        params,
        bytes,
    })
}
