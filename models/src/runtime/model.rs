//! [`Model`]: a GGUF file, an HF directory or a catalog name, loaded onto one backend — config,
//! prepared weights, tokenizer and chat template.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::{Backend, BackendKind, BackendProvider, DType, OpKind, Probe};

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

/// A model on a backend.
pub struct Model {
    config: Arc<ModelConfig>,
    weights: Arc<Weights>,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    backend: Arc<dyn Backend>,
    path: PathBuf,
    load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Model({}, {} on {})",
            self.path.display(),
            self.config.arch_name,
            self.backend.id()
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
        let started = Instant::now();
        let path = catalog::resolve_with(name_or_path, &mut |e| progress(&LoadEvent::Fetch(e)))?;
        let mut weights_progress = |done, total| progress(&LoadEvent::Weights { done, total });
        let (mut config, weights, tokenizer, chat_template) = match format::detect(&path)? {
            ModelFormat::Gguf => {
                let file = GgufFile::open(&path)?;
                let mut cfg = ModelConfig::from_gguf(&file)?;
                apply(&mut cfg, opts);
                check_backend(backend.as_ref(), &cfg)?;
                let w = weights::load(
                    Source::Gguf(&file),
                    &mut cfg,
                    &backend,
                    &mut weights_progress,
                )?;
                let tok = Tokenizer::from_gguf(&file)?;
                (cfg, w, tok, ChatTemplate::from_gguf(&file)?)
            }
            ModelFormat::HfDir => {
                let dir = HfDir::open(&path)?;
                let origin = path.join("config.json").display().to_string();
                let mut cfg = ModelConfig::from_hf(dir.config(), &origin)?;
                apply(&mut cfg, opts);
                check_backend(backend.as_ref(), &cfg)?;
                let w = weights::load(
                    Source::Hf(dir.weights()),
                    &mut cfg,
                    &backend,
                    &mut weights_progress,
                )?;
                let tok = Tokenizer::from_hf_dir(&path)?;
                (cfg, w, tok, ChatTemplate::from_hf_dir(&path)?)
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
        backend
            .synchronize()
            .map_err(|e| ModelError::backend("uploading weights", e))?;
        config.origin = path.display().to_string();
        Ok(Model {
            config: Arc::new(config),
            weights: Arc::new(weights),
            tokenizer,
            chat_template,
            backend,
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
        let started = Instant::now();
        let mut config = ModelConfig {
            origin: tensors.origin().to_string(),
            ..config
        }
        .validate()?;
        check_backend(backend.as_ref(), &config)?;
        let w = weights::load(Source::Mem(tensors), &mut config, &backend, &mut |_, _| {})?;
        backend
            .synchronize()
            .map_err(|e| ModelError::backend("uploading weights", e))?;
        Ok(Model {
            config: Arc::new(config),
            weights: Arc::new(w),
            tokenizer,
            chat_template: None,
            backend,
            path: PathBuf::from(tensors.origin()),
            load_time: started.elapsed(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub(crate) fn config_arc(&self) -> Arc<ModelConfig> {
        self.config.clone()
    }
    pub(crate) fn weights_arc(&self) -> Arc<Weights> {
        self.weights.clone()
    }
    pub fn weights(&self) -> &Weights {
        &self.weights
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The model's chat template, `None` if it has none (e.g. gemma3-270m base).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
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
