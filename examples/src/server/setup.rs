//! The models of one `kiln serve`: their specs, the byte budget, and the registry that loads
//! and evicts them (`kiln_models::engine::Registry`).
//!
//! Footprints: every model's device bytes (weights + activation plan + KV cache, what
//! `Model::weights().bytes` and `Runtime::bytes()` report) are MEASURED once at start by
//! loading the model alone on the device, then dropping it; the first model is measured last
//! and kept loaded. The registry then decides from these numbers, before any later load,
//! whether a model fits and what to evict. (When the planner (models/src/planner.rs) computes
//! the same bytes from metadata, it replaces the start-up loads; the registry's footprint
//! function is the only thing that changes.) Not counted: backend-internal workspaces
//! (cuBLASLt) and allocator rounding.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use kiln_core::Backend;
use kiln_models::engine::{EngineOptions, Footprint, ModelSpec, Registry, Served};
use kiln_models::runtime::Model;
use kiln_models::{LoadOptions, ModelError, Runtime};

use crate::cli::load::load_model;
use crate::cli::{CliError, CliResult};

/// `--budget`: bytes all models may hold together on each device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The device's memory less [`AUTO_RESERVE_PERCENT`] (unlimited when the backend does
    /// not report its memory).
    Auto,
    Bytes(u64),
}

/// The share of device memory `--budget auto` leaves free.
pub const AUTO_RESERVE_PERCENT: u64 = 5;

impl FromStr for Budget {
    type Err = String;
    /// `auto`, or a byte count with an optional unit: `1000`, `512KiB`, `1.5GiB`, `2G` (K, M,
    /// G, T and KiB.. are powers of 1024; KB, MB, GB, TB powers of 1000).
    fn from_str(s: &str) -> Result<Budget, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(Budget::Auto);
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1.0,
            "K" | "KIB" => 1024.0,
            "M" | "MIB" => 1024f64.powi(2),
            "G" | "GIB" => 1024f64.powi(3),
            "T" | "TIB" => 1024f64.powi(4),
            "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            u => {
                return Err(format!(
                    "--budget {s}: unknown unit '{u}' (use bytes, KiB, MiB, GiB, KB, MB, GB or auto)"
                ));
            }
        };
        let x: f64 = num
            .parse()
            .map_err(|_| format!("--budget {s}: expected a number of bytes (e.g. 8GiB) or auto"))?;
        let bytes = x * mult;
        if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("--budget {s}: out of range"));
        }
        Ok(Budget::Bytes(bytes as u64))
    }
}

impl Budget {
    /// Bytes on a device of `memory` bytes.
    pub fn bytes(self, memory: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::Auto if memory == 0 => u64::MAX,
            Budget::Auto => memory - memory / 100 * AUTO_RESERVE_PERCENT,
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

/// Device bytes of `model` with an engine sized by `opts`: weights + activation plan + KV
/// cache, by building (and dropping) the engine's runtime.
pub fn measure(model: &Model, opts: &EngineOptions) -> kiln_models::Result<Footprint> {
    let rt = Runtime::new(model, opts.runtime.clone())?;
    let (plan, kv) = rt.bytes();
    let bytes = model.weights().bytes + plan + kv;
    Ok(Footprint::single(model.backend().id(), bytes as u64))
}

/// What [`build`] returns.
pub struct Fleet {
    pub registry: Registry<Served>,
    /// The first model's name (requests without `model` get it).
    pub default: String,
}

/// Measure every model (see the module docs), register them, and load the first one: an
/// error when it does not fit the budget or a name is given twice.
pub fn build(
    models: &[ModelArg],
    backend: &Arc<dyn Backend>,
    budget: Budget,
    options: &dyn Fn(usize) -> EngineOptions,
) -> CliResult<Fleet> {
    let first = models
        .first()
        .ok_or_else(|| CliError::Usage("kiln serve: no model given".into()))?;
    let dev = backend.id();
    let cap = budget.bytes(backend.info().memory_bytes);
    let mut specs: HashMap<String, (Footprint, EngineOptions)> = HashMap::new();
    let mut kept: HashMap<String, Arc<Model>> = HashMap::new();
    // The first model last, so it stays loaded while nothing else is.
    for m in models[1..].iter().chain(std::iter::once(first)) {
        if specs.contains_key(&m.name) {
            return Err(CliError::Usage(format!(
                "kiln serve: two models are named '{}' (give each its own --name)",
                m.name
            )));
        }
        let model = Arc::new(load_model(
            &m.source,
            backend.clone(),
            &LoadOptions::default(),
        )?);
        let opts = options(model.config().context_length);
        let fp = measure(&model, &opts)?;
        eprintln!(
            "kiln serve: {} ({}) holds {} bytes on {dev} (weights {}, measured at start)",
            m.name,
            model.path().display(),
            fp.get(dev),
            model.weights().bytes
        );
        if std::ptr::eq(m, first) {
            kept.insert(m.name.clone(), model);
        }
        specs.insert(m.name.clone(), (fp, opts));
    }
    let footprints: HashMap<String, Footprint> = specs
        .iter()
        .map(|(n, (f, _))| (n.clone(), f.clone()))
        .collect();
    let kept = Mutex::new(kept);
    let load_backend = backend.clone();
    let registry = Registry::serving(
        [(dev, cap)],
        Box::new(move |spec: &ModelSpec| {
            footprints.get(&spec.name).cloned().ok_or_else(|| {
                ModelError::Runtime(format!("kiln serve: no footprint for '{}'", spec.name))
            })
        }),
        Box::new(move |spec: &ModelSpec| {
            let held = kept.lock().ok().and_then(|mut k| k.remove(&spec.name));
            let model = match held {
                Some(m) => m,
                None => {
                    eprintln!("kiln serve: loading {} ({})", spec.name, spec.source);
                    let m = load_model(&spec.source, load_backend.clone(), &LoadOptions::default())
                        .map_err(|e| match e {
                            CliError::Model(e) => e,
                            e => ModelError::Runtime(e.to_string()),
                        })?;
                    Arc::new(m)
                }
            };
            Ok((model, spec.engine.clone()))
        }),
    );
    for m in models {
        let Some((_, opts)) = specs.get(&m.name) else {
            continue;
        };
        let mut spec = ModelSpec::new(m.name.clone(), m.source.clone(), vec![dev]);
        if m.source != m.name {
            spec.aliases.push(m.source.clone());
        }
        spec.engine = opts.clone();
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
        assert_eq!("3 MB".parse(), Ok(Budget::Bytes(3_000_000)));
        assert!("12 parsecs".parse::<Budget>().is_err());
        assert!("".parse::<Budget>().is_err());
        assert!("0".parse::<Budget>().is_err());
        assert_eq!(Budget::Auto.bytes(1000), 950);
        assert_eq!(Budget::Auto.bytes(0), u64::MAX);
        assert_eq!(Budget::Bytes(7).bytes(1000), 7);
    }
}
