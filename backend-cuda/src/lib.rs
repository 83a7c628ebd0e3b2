//! kiln-cuda: the CUDA backend of kiln (work in progress: see the issue tracker).

use std::sync::Arc;

use kiln_core::{Backend, BackendKind, BackendProvider, Error, Probe, Result};

/// Discovery entry point for CUDA devices.
#[derive(Default)]
pub struct CudaProvider;

impl BackendProvider for CudaProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn probe(&self) -> Probe {
        Probe::NotFound("the CUDA backend is not built yet".into())
    }
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>> {
        Err(Error::Invalid(format!("cuda:{index}: the CUDA backend is not built yet")))
    }
}
