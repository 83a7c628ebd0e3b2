//! kiln-cuda: the CUDA backend of kiln.
//!
//! - Discovery (`CudaProvider`) probes libcuda.so.1 with `libloading` first: on a machine
//!   without CUDA it answers `Probe::NotFound` and never touches cudarc (which panics there).
//! - `CudaBackend`: one context and one stream per device; buffers are stream-ordered device
//!   allocations; weights are repacked once (`prepare_weight`) into the layout the kernels read
//!   with 16-byte loads (see kernels/quant.cuh).
//! - Kernels (`kernels/*.cu`) are embedded, compiled by NVRTC for the device's exact
//!   architecture on first use and cached on disk (`module_cache`).
//! - matmul dispatches between fused dequant GEMV/GEMM kernels and dequantize + cuBLASLt at a
//!   crossover measured per (device, dtype, n, k) (`tune`).
//! - `capture` records CUDA graphs.
//! - attention (paged, split-KV decode + tensor-core prefill, `ops/attention.rs`), moe (routing +
//!   grouped expert GEMV, `ops/moe.rs`) and the all-reduce `CudaComm` (NCCL, `comm.rs`, plus a
//!   one-shot P2P kernel for small f32 messages, `comm_p2p.rs`).

mod buffer;
mod comm;
mod comm_p2p;
mod device;
pub mod error;
mod gemm;
mod graph;
pub mod module_cache;
mod ops;
mod probe;
pub mod tune;

use std::sync::Arc;

use kiln_core::{Backend, BackendKind, BackendProvider, Error, Probe, Result};

pub use comm::{CudaComm, P2P_DEFAULT_MAX_BYTES};
pub use comm_p2p::P2P_STAGING_BYTES;
pub use device::CudaBackend;
pub use error::CudaError;
pub use ops::matmul_mma::{MmaXRounding, Q4kKernel};
pub use ops::matmul_q::{
    GroupKernel, MatmulPath, W_TILE_CAP, X_TILE_CAP, gemv_pipe_auto, gemv_pipe_types,
    gemv1_auto_on, pipe_max_rows,
};
pub use tune::TuneResult;

/// Discovery entry point for CUDA devices.
#[derive(Default)]
pub struct CudaProvider;

impl CudaProvider {
    /// Open device `index` as the concrete type (benches and `kiln tune` use its extra methods).
    pub fn open_cuda(&self, index: u32) -> Result<Arc<CudaBackend>> {
        let info = match probe::devices() {
            Err(why) => {
                return Err(Error::Invalid(format!(
                    "cuda:{index}: CUDA not found: {why}"
                )));
            }
            Ok(list) => list
                .iter()
                .find(|d| d.id.index == index)
                .cloned()
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "cuda:{index}: no such device ({} found)",
                        list.len()
                    ))
                })?,
        };
        let be = error::guard("opening the CUDA device", || CudaBackend::open(info))??;
        Ok(Arc::new(be))
    }
}

impl BackendProvider for CudaProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn probe(&self) -> Probe {
        match probe::devices() {
            Ok(list) => Probe::Found(list.clone()),
            Err(why) => Probe::NotFound(why.clone()),
        }
    }
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>> {
        let be: Arc<dyn Backend> = self.open_cuda(index)?;
        Ok(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_names_the_reason() {
        match CudaProvider.probe() {
            Probe::Found(list) => assert!(!list.is_empty()),
            Probe::NotFound(why) => {
                println!("skipped: CUDA not found ({why})");
                assert!(!why.is_empty());
                assert!(CudaProvider.open(0).is_err());
            }
        }
    }
}
