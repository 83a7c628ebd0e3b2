//! kiln-wgpu: the wgpu backend of kiln (work in progress: see the issue tracker).

use std::sync::Arc;

use kiln_core::{Backend, BackendKind, BackendProvider, Error, Probe, Result};

/// Discovery entry point for wgpu devices.
#[derive(Default)]
pub struct WgpuProvider;

impl BackendProvider for WgpuProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn probe(&self) -> Probe {
        Probe::NotFound("the wgpu backend is not built yet".into())
    }
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>> {
        Err(Error::Invalid(format!("wgpu:{index}: the wgpu backend is not built yet")))
    }
}
