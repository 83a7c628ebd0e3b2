//! [`Model`]: a GGUF file, an HF directory or a catalog name, loaded onto one backend — config,
//! prepared weights, tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::{
    Backend, BackendKind, BackendProvider, Collective, DType, HostStagedAllReduce, OpKind, Probe,
};

use super::shard::{self, Parallel, ShardSpec};
use super::weights::{self, HostTensors, Source, Weights};
use crate::arch::ModelConfig;
use crate::catalog::{self, FetchEvent};
use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::format::{self, ModelFormat};
use crate::{GgufFile, HfDir, Tokenizer};

/// Options for [`Model::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Override the sliding window of every sliding layer. For a llama-family model without
    /// any window (a Mistral GGUF whose converter dropped it), the window applies to every
    /// layer.
    pub sliding_window: Option<usize>,
}

/// What loading reports, for a progress bar.
#[derive(Debug)]
pub enum LoadEvent<'a> {
    /// The catalog is fetching the model file.
    Fetch(&'a FetchEvent<'a>),
    /// `done` of `total` bytes of weights are on the device.
    Weights { done: u64, total: u64 },
}

/// The devices a model is loaded on and how it is spread over them.
#[derive(Clone)]
pub struct Placement {
    pub devices: Vec<Arc<dyn Backend>>,
    /// `None` for one device.
    pub parallel: Option<Parallel>,
    /// The all-reduce of a tensor-parallel group (NCCL for CUDA devices, built by the caller);
    /// `None`: host-staged, which works for any mix of backends.
    pub collective: Option<Arc<dyn Collective>>,
}

impl Placement {
    pub fn single(backend: Arc<dyn Backend>) -> Placement {
        Placement {
            devices: vec![backend],
            parallel: None,
            collective: None,
        }
    }
}

/// One device's share of a model: its backend, its view of the config (a tensor-parallel
/// rank's heads and FFN width), its weights and what it computes.
pub struct ModelShard {
    pub backend: Arc<dyn Backend>,
    pub config: Arc<ModelConfig>,
    pub weights: Arc<Weights>,
    pub(crate) spec: ShardSpec,
}

impl ModelShard {
    /// Global indices of the layers this device runs.
    pub fn layers(&self) -> std::ops::Range<usize> {
        self.spec.layers.clone()
    }
    /// The vocabulary rows whose logits this device computes (`None`: no logits here; all of
    /// them, or under tensor parallelism with an untied output matrix this rank's share).
    pub fn head_rows(&self) -> Option<std::ops::Range<usize>> {
        self.weights.head_rows.clone()
    }
}

/// A model on one or several devices.
pub struct Model {
    config: Arc<ModelConfig>,
    shards: Vec<ModelShard>,
    parallel: Option<Parallel>,
    collective: Option<Arc<dyn Collective>>,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    path: PathBuf,
    load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.backend.id().to_string())
            .collect();
        write!(
            f,
            "Model({}, {} on {})",
            self.path.display(),
            self.config.arch_name,
            on.join(",")
        )
    }
}

impl Model {
    /// Load `name_or_path` (GGUF file, HF directory, or catalog name fetched on first use).
    pub fn load(
        name_or_path: &str,
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
    ) -> Result<Model> {
        Model::load_with(name_or_path, backend, opts, &mut |_| {})
    }

    /// [`Model::load`] with progress reports (catalog fetch, weight upload).
    pub fn load_with(
        name_or_path: &str,
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadEvent<'_>),
    ) -> Result<Model> {
        Model::load_on(name_or_path, Placement::single(backend), opts, progress)
    }

    /// Load `name_or_path` over the devices of `place`: each device gets its share (see
    /// [`shard`](super::shard)) straight from the file.
    pub fn load_on(
        name_or_path: &str,
        place: Placement,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(&LoadEvent<'_>),
    ) -> Result<Model> {
        let started = Instant::now();
        let path = catalog::resolve_with(name_or_path, &mut |e| progress(&LoadEvent::Fetch(e)))?;
        let parallel = resolve_parallel(&place, || {
            crate::planner::ModelMeta::open(&path.display().to_string())
        })?;
        let place = Placement { parallel, ..place };
        let mut weights_progress = |done, total| progress(&LoadEvent::Weights { done, total });
        let (config, shards, tokenizer, chat_template) = match format::detect(&path)? {
            ModelFormat::Gguf => {
                let file = GgufFile::open(&path)?;
                let mut cfg = ModelConfig::from_gguf(&file)?;
                apply(&mut cfg, opts);
                let shards =
                    load_shards(Source::Gguf(&file), &mut cfg, &place, &mut weights_progress)?;
                let tok = Tokenizer::from_gguf(&file)?;
                (cfg, shards, tok, ChatTemplate::from_gguf(&file)?)
            }
            ModelFormat::HfDir => {
                let dir = HfDir::open(&path)?;
                let origin = path.join("config.json").display().to_string();
                let mut cfg = ModelConfig::from_hf(dir.config(), &origin)?;
                apply(&mut cfg, opts);
                let shards = load_shards(
                    Source::Hf(dir.weights()),
                    &mut cfg,
                    &place,
                    &mut weights_progress,
                )?;
                let tok = Tokenizer::from_hf_dir(&path)?;
                (cfg, shards, tok, ChatTemplate::from_hf_dir(&path)?)
            }
            other => {
                return Err(ModelError::format(
                    &path.display().to_string(),
                    format!(
                        "a {} file has no model config: pass a GGUF file or a Hugging Face directory",
                        other.name()
                    ),
                ));
            }
        };
        let mut config = config;
        config.origin = path.display().to_string();
        let collective = tensor_collective(&place)?;
        Ok(Model {
            parallel: place.parallel,
            config: Arc::new(config),
            shards,
            collective,
            tokenizer,
            chat_template,
            path,
            load_time: started.elapsed(),
        })
    }

    /// A model from tensors built in memory (synthetic benchmark models, tests) rather than a
    /// file: `config` as [`ModelConfig::from_hf`] or [`ModelConfig::from_gguf`] make it (its
    /// `format` picks the tensor names, `vocab` is set from the embedding), `tensors` named
    /// accordingly; the weights are checked and prepared on `backend` exactly as by
    /// [`Model::load`]. The model has no chat template; `path()` is the tensors' origin.
    pub fn from_parts(
        config: ModelConfig,
        tensors: &HostTensors<'_>,
        tokenizer: Tokenizer,
        backend: Arc<dyn Backend>,
    ) -> Result<Model> {
        Model::from_parts_on(config, tensors, tokenizer, Placement::single(backend))
    }

    /// [`Model::from_parts`] over the devices of `place`.
    pub fn from_parts_on(
        config: ModelConfig,
        tensors: &HostTensors<'_>,
        tokenizer: Tokenizer,
        place: Placement,
    ) -> Result<Model> {
        let started = Instant::now();
        let mut config = ModelConfig {
            origin: tensors.origin().to_string(),
            ..config
        }
        .validate()?;
        let parallel = resolve_parallel(&place, || {
            crate::planner::ModelMeta::from_parts(config.clone(), tensors)
        })?;
        let place = Placement { parallel, ..place };
        let shards = load_shards(Source::Mem(tensors), &mut config, &place, &mut |_, _| {})?;
        Ok(Model {
            collective: tensor_collective(&place)?,
            parallel: place.parallel,
            config: Arc::new(config),
            shards,
            tokenizer,
            chat_template: None,
            path: PathBuf::from(tensors.origin()),
            load_time: started.elapsed(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// Every device's share, in device order.
    pub fn shards(&self) -> &[ModelShard] {
        &self.shards
    }
    /// How the model is spread (`None`: one device).
    pub fn parallel(&self) -> Option<&Parallel> {
        self.parallel.as_ref()
    }
    /// The tensor-parallel group's all-reduce.
    pub fn collective(&self) -> Option<&Arc<dyn Collective>> {
        self.collective.as_ref()
    }
    /// The first device's weights (all of them on one device).
    pub fn weights(&self) -> &Weights {
        &self.shards[0].weights
    }
    /// Device bytes of the weights on every device.
    pub fn weight_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.weights.bytes).sum()
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The model's chat template, `None` if it has none (e.g. gemma3-270m base).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
    /// The devices as `cuda:0,cuda:1 (tensor)` for messages.
    pub fn devices_label(&self) -> String {
        let ids: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.backend.id().to_string())
            .collect();
        match &self.parallel {
            None => ids.join(","),
            Some(Parallel::Tensor) => format!("{} (tensor parallel)", ids.join(",")),
            Some(Parallel::Layer(c)) => format!("{} (layers {c:?})", ids.join(",")),
        }
    }
    /// The first device (the only one unless the model is split).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shards[0].backend
    }
    /// The resolved file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Wall time of [`Model::load`] (fetch included).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }
    pub fn vocab_size(&self) -> usize {
        self.config.vocab
    }
}

/// Load every device's share of `src`; sets `cfg.vocab`.
fn load_shards(
    src: Source<'_>,
    cfg: &mut ModelConfig,
    place: &Placement,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<ModelShard>> {
    check_devices(place)?;
    let specs = shard::shard_specs(cfg.n_layers, place.devices.len(), place.parallel.as_ref())?;
    let mut shards = Vec::with_capacity(specs.len());
    for (spec, backend) in specs.into_iter().zip(&place.devices) {
        check_backend(backend.as_ref(), cfg)?;
        let w = weights::load(src, cfg, &spec, backend, progress)?;
        let local = match spec.tp {
            Some(tp) => shard::local_config(cfg, tp)?,
            None => cfg.clone(),
        };
        shards.push(ModelShard {
            backend: backend.clone(),
            config: Arc::new(local),
            weights: Arc::new(w),
            spec,
        });
    }
    for s in &shards {
        s.backend
            .synchronize()
            .map_err(|e| ModelError::backend("uploading weights", e))?;
    }
    Ok(shards)
}

/// At least one device, none twice.
fn check_devices(place: &Placement) -> Result<()> {
    if place.devices.is_empty() {
        return Err(ModelError::Runtime("no device to load the model on".into()));
    }
    for (i, a) in place.devices.iter().enumerate() {
        if place.devices[..i].iter().any(|b| b.id() == a.id()) {
            return Err(ModelError::Runtime(format!(
                "device {} is given twice",
                a.id()
            )));
        }
    }
    Ok(())
}

/// An empty layer split (`Parallel::Layer(vec![])`) means: the memory planner's split (in
/// proportion to each device's free memory after its fixed costs and reserve, planner/assign.rs,
/// at the default runtime sizes), the same one `kiln plan` prints.
fn resolve_parallel(
    place: &Placement,
    meta: impl FnOnce() -> Result<crate::planner::ModelMeta>,
) -> Result<Option<Parallel>> {
    check_devices(place)?;
    match &place.parallel {
        Some(Parallel::Layer(c)) if c.is_empty() => {
            let opts = crate::planner::PlanOptions {
                parallel: crate::planner::Parallel::Layer(None),
                ..Default::default()
            };
            let plan = crate::planner::plan(&meta()?, &place.devices, &opts)?;
            Ok(Some(Parallel::Layer(plan.layer_counts())))
        }
        p => Ok(p.clone()),
    }
}

/// The all-reduce of a tensor-parallel placement: the caller's, else host-staged.
fn tensor_collective(place: &Placement) -> Result<Option<Arc<dyn Collective>>> {
    if place.parallel != Some(Parallel::Tensor) {
        return Ok(None);
    }
    if let Some(c) = &place.collective {
        return Ok(Some(c.clone()));
    }
    let c = HostStagedAllReduce::new(place.devices.clone())
        .map_err(|e| ModelError::backend("creating the host-staged all-reduce", e))?;
    Ok(Some(Arc::new(c)))
}

fn apply(cfg: &mut ModelConfig, opts: &LoadOptions) {
    if let Some(w) = opts.sliding_window {
        let any = cfg.layers.iter().any(|l| l.window.is_some());
        for l in &mut cfg.layers {
            if l.window.is_some() || !any {
                l.window = Some(w);
            }
        }
    }
}

/// Fail before loading when the backend lacks an op the model needs.
fn check_backend(b: &dyn Backend, cfg: &ModelConfig) -> Result<()> {
    // f32 activation ops; weight dtypes are checked by prepare_weight, KV by Runtime::new.
    let mut need = vec![OpKind::RmsNorm, OpKind::Rope, OpKind::Add, OpKind::Gather];
    if cfg.layers.iter().any(|l| !l.moe) {
        need.push(OpKind::Glu);
    }
    if cfg.qkv_bias {
        need.push(OpKind::AddBias);
    }
    let dt = DType::F32;
    for op in need {
        if !b.supports(op, dt) {
            return Err(ModelError::backend(
                format!("{} needs {op:?} on {}", cfg.origin, b.id()),
                kiln_core::Error::Unsupported {
                    op,
                    dtype: dt,
                    backend: b.id().to_string(),
                },
            ));
        }
    }
    Ok(())
}

/// `--backend` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA, else a real wgpu GPU (not a CPU adapter such as lavapipe), else the reference.
    Auto,
    Kind(BackendKind),
}

/// Open a backend from `providers` (listed by the caller, e.g. the `kiln` command's single
/// provider list). With `Auto`, the first provider kind that has a usable device wins, in the
/// order cuda, wgpu (GPU adapters only), reference.
pub fn open_backend(
    providers: &[&dyn BackendProvider],
    choice: BackendChoice,
) -> Result<Arc<dyn Backend>> {
    let open = |p: &dyn BackendProvider, index: u32| {
        p.open(index)
            .map_err(|e| ModelError::backend(format!("opening {}:{index}", p.kind()), e))
    };
    let find = |k: BackendKind| providers.iter().copied().find(|p| p.kind() == k);
    match choice {
        BackendChoice::Kind(k) => {
            let p = find(k).ok_or_else(|| {
                ModelError::Runtime(format!("backend {k} is not built into this program"))
            })?;
            match p.probe() {
                Probe::Found(d) if !d.is_empty() => open(p, d[0].id.index),
                Probe::Found(_) => Err(ModelError::Runtime(format!("{k}: no devices"))),
                Probe::NotFound(why) => Err(ModelError::Runtime(format!("{k}: not found: {why}"))),
            }
        }
        BackendChoice::Auto => {
            for k in [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Reference] {
                let Some(p) = find(k) else { continue };
                let Probe::Found(devs) = p.probe() else {
                    continue;
                };
                let usable = devs
                    .iter()
                    .find(|d| k != BackendKind::Wgpu || is_gpu_adapter(d));
                if let Some(d) = usable
                    && let Ok(b) = open(p, d.id.index)
                {
                    return Ok(b);
                }
            }
            Err(ModelError::Runtime(
                "no usable backend found (not even the reference backend)".into(),
            ))
        }
    }
}

/// Whether a device is a GPU, not a CPU Vulkan adapter (lavapipe/llvmpipe/SwiftShader); what
/// `--backend auto` skips.
pub fn is_gpu_adapter(d: &kiln_core::DeviceInfo) -> bool {
    let text = format!("{} {}", d.name, d.driver).to_lowercase();
    !["llvmpipe", "lavapipe", "swiftshader", " cpu "]
        .iter()
        .any(|w| text.contains(w))
        && !d.driver.contains("Cpu")
}
