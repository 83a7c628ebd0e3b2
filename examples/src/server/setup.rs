//! The models of one `kiln serve`: their specs, the byte budget per device, and the registry
//! that loads and evicts them (`kiln_models::engine::Registry`).
//!
//! Footprints come from the memory planner (`kiln_models::planner`), from each model's
//! metadata only, BEFORE anything is loaded: per device, the weights (as the backend stores
//! them), the KV cache, the activations and the backend workspace, for the engine sizes the
//! model will run with. The registry decides from them whether a model fits next to the loaded
//! ones and which idle ones to evict. Catalog names are fetched (not loaded) at start so that
//! their metadata can be read.
//!
//! Several devices (`--devices a,b`): every model is spread over all of them as `--parallel`
//! says; a layer split uses the planner's layer counts for loading too, so the bytes planned
//! per device are the bytes loaded there.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use kiln_models::engine::{EngineOptions, Footprint, ModelSpec, Registry, Served};
use kiln_models::planner::{self, DEFAULT_RESERVE, ModelMeta, PlanOptions, Reserve};
use kiln_models::runtime::{Parallel, Placement};
use kiln_models::{LoadOptions, ModelError, catalog};

use crate::cli::load::load_placed;
use crate::cli::{CliError, CliResult};

/// `--budget`: bytes all models may hold together on each device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The device's memory less the planner's default reserve (5 %); unlimited when the
    /// backend does not report its memory.
    Auto,
    Bytes(u64),
}

impl FromStr for Budget {
    type Err = String;
    /// `auto`, or a byte count as `kiln plan` takes it: `24GiB`, `512MiB`, `1.5GB`, `4096`.
    fn from_str(s: &str) -> Result<Budget, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Budget::Auto);
        }
        match planner::parse_bytes(s) {
            Ok(0) => Err(format!("--budget {s}: must be more than 0 bytes")),
            Ok(b) => Ok(Budget::Bytes(b)),
            Err(e) => Err(format!("--budget: {e}")),
        }
    }
}

impl Budget {
    /// Bytes on a device of `memory` bytes.
    pub fn bytes(self, memory: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Auto if memory == 0 => u64::MAX,
            Budget::Auto => memory.saturating_sub(DEFAULT_RESERVE.bytes(Some(memory))),
        }
    }
}

/// One MODEL argument.
pub struct ModelArg {
    /// What the user gave (path or catalog name); also accepted as the request's `model`.
    pub source: String,
    /// The served name.
    pub name: String,
}

/// A model's plan: its footprint, the engine options it was planned with, and its layer split.
pub struct Planned {
    pub footprint: Footprint,
    pub engine: EngineOptions,
    /// Layers per device of a layer split (empty otherwise).
    pub layers: Vec<usize>,
    pub summary: String,
}

/// Plan `source` (a local file or directory) on `place` with an engine from `options`
/// (called with the model's context length).
pub fn plan(
    source: &str,
    place: &Placement,
    options: &dyn Fn(usize) -> EngineOptions,
) -> kiln_models::Result<Planned> {
    let meta = ModelMeta::open(source)?;
    let engine = options(meta.config.context_length);
    let parallel = match &place.parallel {
        None => planner::Parallel::Single,
        Some(Parallel::Layer(c)) => planner::Parallel::Layer((!c.is_empty()).then(|| c.clone())),
        Some(Parallel::Tensor) => planner::Parallel::Tensor,
    };
    let layer = matches!(parallel, planner::Parallel::Layer(_));
    let opts = PlanOptions {
        parallel,
        runtime: engine.runtime.clone(),
        // The registry's budget is the limit; the reserve is in `--budget auto`.
        reserve: vec![Reserve::Bytes(0)],
        capacity: None,
        collective: place
            .collective
            .as_ref()
            .map(|c| c.device_bytes())
            .unwrap_or_default(),
    };
    let p = planner::plan(&meta, &place.devices, &opts)?;
    let footprint = p.devices.iter().map(|d| (d.device, d.total())).collect();
    let summary = p
        .devices
        .iter()
        .map(|d| {
            format!(
                "{}: {} bytes (weights {}, KV {}, activations {}, workspace {})",
                d.device,
                d.total(),
                d.weight_bytes(),
                d.kv,
                d.activations,
                d.workspace
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Planned {
        footprint,
        engine,
        layers: if layer { p.layer_counts() } else { Vec::new() },
        summary,
    })
}

/// What [`build`] returns.
pub struct Fleet {
    pub registry: Registry<Served>,
    /// The first model's name (requests without `model` get it).
    pub default: String,
}

/// Plan every model, register them, and load the first one: an error when a model cannot be
/// planned, the first one does not fit the budget, or a name is given twice.
pub fn build(
    models: &[ModelArg],
    place: &Placement,
    budget: Budget,
    options: &dyn Fn(usize) -> EngineOptions,
) -> CliResult<Fleet> {
    let first = models
        .first()
        .ok_or_else(|| CliError::Usage("kiln serve: no model given".into()))?;
    let mut planned: HashMap<String, (Planned, String)> = HashMap::new();
    for m in models {
        if planned.contains_key(&m.name) {
            return Err(CliError::Usage(format!(
                "kiln serve: two models are named '{}' (give each its own --name)",
                m.name
            )));
        }
        // A catalog name is fetched now (not loaded) so that its metadata can be planned.
        let path = catalog::resolve(&m.source)?.display().to_string();
        let p = plan(&path, place, options)?;
        eprintln!("kiln serve: {} ({path}) plans {}", m.name, p.summary);
        planned.insert(m.name.clone(), (p, path));
    }
    let budgets: Vec<_> = place
        .devices
        .iter()
        .map(|d| (d.id(), budget.bytes(d.info().memory_bytes)))
        .collect();
    let footprints: HashMap<String, Footprint> = planned
        .iter()
        .map(|(n, (p, _))| (n.clone(), p.footprint.clone()))
        .collect();
    let layers: HashMap<String, Vec<usize>> = planned
        .iter()
        .map(|(n, (p, _))| (n.clone(), p.layers.clone()))
        .collect();
    let base = place.clone();
    let registry = Registry::serving(
        budgets,
        Box::new(move |spec: &ModelSpec| {
            footprints.get(&spec.name).cloned().ok_or_else(|| {
                ModelError::Runtime(format!("kiln serve: no plan for '{}'", spec.name))
            })
        }),
        Box::new(move |spec: &ModelSpec| {
            let mut place = base.clone();
            if let Some(c) = layers.get(&spec.name).filter(|c| !c.is_empty()) {
                place.parallel = Some(Parallel::Layer(c.clone()));
            }
            eprintln!("kiln serve: loading {} ({})", spec.name, spec.source);
            let m =
                load_placed(&spec.source, place, &LoadOptions::default()).map_err(|e| match e {
                    CliError::Model(e) => e,
                    e => ModelError::Runtime(e.to_string()),
                })?;
            Ok((Arc::new(m), spec.engine.clone()))
        }),
    );
    for m in models {
        let Some((p, path)) = planned.get(&m.name) else {
            continue;
        };
        let devices = place.devices.iter().map(|d| d.id()).collect();
        let mut spec = ModelSpec::new(m.name.clone(), path.clone(), devices);
        if m.source != m.name {
            spec.aliases.push(m.source.clone());
        }
        spec.engine = p.engine.clone();
        registry.register(spec)?;
    }
    // Load the first model now (an error here when it cannot fit at all).
    drop(registry.acquire(&first.name)?);
    Ok(Fleet {
        registry,
        default: first.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!("auto".parse(), Ok(Budget::Auto));
        assert_eq!("1000".parse(), Ok(Budget::Bytes(1000)));
        assert_eq!("2KiB".parse(), Ok(Budget::Bytes(2048)));
        assert_eq!("1.5G".parse(), Ok(Budget::Bytes(3 << 29)));
        assert_eq!("3MB".parse(), Ok(Budget::Bytes(3_000_000)));
        assert!("12 parsecs".parse::<Budget>().is_err());
        assert!("".parse::<Budget>().is_err());
        assert!("0".parse::<Budget>().is_err());
        assert_eq!(Budget::Auto.bytes(1000), 950);
        assert_eq!(Budget::Auto.bytes(0), u64::MAX);
        assert_eq!(Budget::Bytes(7).bytes(1000), 7);
    }

    /// The planned footprint is what the engine's model and runtime really allocate on the
    /// reference backend (zoo llama3 and qwen3, the serve tests' engine sizes).
    #[test]
    fn plan_equals_what_loading_allocates() {
        use kiln_core::{Backend, ReferenceBackend};
        use kiln_models::{Model, Runtime};
        let zoo =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/zoo");
        if !zoo.join("README.md").is_file() {
            println!("skipped: zoo not found");
            return;
        }
        let b: Arc<dyn Backend> = Arc::new(ReferenceBackend::new(0));
        let place = Placement::single(b.clone());
        let opts = |ctx: usize| {
            let mut o = EngineOptions::default();
            o.runtime.context = Some(ctx.min(2048));
            o.runtime.kv_dtype = kiln_core::DType::F32;
            o.runtime.kv_blocks = Some(300);
            o
        };
        for m in ["llama3", "qwen3", "qwen3moe", "gemma3"] {
            let dir = zoo.join(m).display().to_string();
            let p = plan(&dir, &place, &opts).unwrap();
            let model = Model::load(&dir, b.clone(), &LoadOptions::default()).unwrap();
            let rt = Runtime::new(&model, p.engine.runtime.clone()).unwrap();
            let (act, kv) = rt.bytes();
            let loaded = (model.weight_bytes() + act + kv) as u64;
            assert_eq!(p.footprint.get(b.id()), loaded, "{m}: {}", p.summary);
        }
    }
}
