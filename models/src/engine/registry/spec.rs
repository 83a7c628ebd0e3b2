//! What the registry holds: model specs, footprints, states, and `kiln serve`'s loaded model.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use kiln_core::DeviceId;

use crate::engine::{Engine, EngineOptions};
use crate::error::Result;
use crate::runtime::Model;

/// A model the registry can serve.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name clients ask for (unique in the registry).
    pub name: String,
    /// Other names that resolve to this model (e.g. the path it was given as); names win
    /// over aliases.
    pub aliases: Vec<String>,
    /// A GGUF file, a Hugging Face directory or a catalog name.
    pub source: String,
    /// The devices the model runs on.
    pub devices: Vec<DeviceId>,
    /// How its engine is sized.
    pub engine: EngineOptions,
}

impl ModelSpec {
    /// A spec with no aliases and default engine options.
    pub fn new(name: impl Into<String>, source: impl Into<String>, devices: Vec<DeviceId>) -> Self {
        ModelSpec {
            name: name.into(),
            aliases: Vec::new(),
            source: source.into(),
            devices,
            engine: EngineOptions::default(),
        }
    }
}

/// Device bytes a loaded model holds (weights + KV cache + activations + workspaces), per
/// device. Devices with 0 bytes are not stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint(BTreeMap<DeviceId, u64>);

impl Footprint {
    pub fn new() -> Footprint {
        Footprint::default()
    }
    /// `bytes` on one device.
    pub fn single(device: DeviceId, bytes: u64) -> Footprint {
        let mut f = Footprint::new();
        f.add(device, bytes);
        f
    }
    /// Add `bytes` on `device`.
    pub fn add(&mut self, device: DeviceId, bytes: u64) {
        if bytes > 0 {
            *self.0.entry(device).or_insert(0) += bytes;
        }
    }
    /// Bytes on `device` (0 when absent).
    pub fn get(&self, device: DeviceId) -> u64 {
        self.0.get(&device).copied().unwrap_or(0)
    }
    /// Bytes over all devices.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (DeviceId, u64)> + '_ {
        self.0.iter().map(|(d, b)| (*d, *b))
    }
    pub fn as_map(&self) -> &BTreeMap<DeviceId, u64> {
        &self.0
    }
}

impl FromIterator<(DeviceId, u64)> for Footprint {
    fn from_iter<I: IntoIterator<Item = (DeviceId, u64)>>(it: I) -> Self {
        let mut f = Footprint::new();
        for (d, b) in it {
            f.add(d, b);
        }
        f
    }
}

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "0 bytes");
        }
        let parts: Vec<String> = self
            .iter()
            .map(|(d, b)| format!("{d}: {b} bytes"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// A model's bytes before it is loaded (wire the planner here).
pub type FootprintFn = Box<dyn Fn(&ModelSpec) -> Result<Footprint> + Send + Sync>;
/// Loads a model; what it returns is held while the model is ready and dropped at eviction
/// (which must free the model's device memory).
pub type LoaderFn<T> = Box<dyn Fn(&ModelSpec) -> Result<T> + Send + Sync>;
/// Loads a model for [`Registry::serving`](super::Registry::serving): the model and its
/// engine's options.
pub type EngineLoaderFn =
    Box<dyn Fn(&ModelSpec) -> Result<(Arc<Model>, EngineOptions)> + Send + Sync>;

/// A model as `kiln serve` holds it: the weights and the engine running it.
pub struct Served {
    pub engine: Engine,
    pub model: Arc<Model>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Served({:?})", self.model)
    }
}

/// Where a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelState {
    Unloaded,
    Loading,
    Ready,
    Evicting,
}

impl ModelState {
    pub fn name(self) -> &'static str {
        match self {
            ModelState::Unloaded => "unloaded",
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Evicting => "evicting",
        }
    }
}

/// One model's state as [`Registry::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelStatus {
    pub name: String,
    pub state: ModelState,
    /// Leases out (requests in flight).
    pub busy: usize,
    /// Known once the footprint function has run for it.
    pub footprint: Option<Footprint>,
    /// Registry clock at its last acquire or release (larger = more recent).
    pub last_used: u64,
    pub loads: u64,
    pub evictions: u64,
}
