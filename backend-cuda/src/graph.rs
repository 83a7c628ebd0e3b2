//! CUDA graph capture and replay (`Backend::capture`): the ops `f` enqueues on the device's
//! stream are recorded into a graph, instantiated once, and replayed with `Replay::replay`.
//! Capture uses the relaxed mode: host-side calls made while recording (cuBLASLt heuristics,
//! module loads on first use) stay legal; a `read`/`synchronize` inside `f` makes capture fail.
//! The graph holds the GEMM scratch its matmuls used (`CudaBackend::graph_keep`): a later,
//! larger scratch retires it from the backend, and it is freed when the last graph using it is.

use std::sync::{Arc, Mutex};

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use kiln_core::{Error, Replay, Result};

use crate::buffer::CudaMem;
use crate::device::CudaBackend;

struct GraphReplay {
    graph: Mutex<CudaGraph>,
    device: String,
    /// The GEMM scratch the recorded kernels address (dropped after `graph`).
    _scratch: Vec<Arc<CudaMem>>,
}

// SAFETY: a CudaGraph is not internally synchronized; every use goes through the mutex, so no
// two threads touch the graph objects at once. The stream it replays on is thread-safe.
unsafe impl Send for GraphReplay {}
// SAFETY: as above (all access is serialized by the mutex).
unsafe impl Sync for GraphReplay {}

impl Replay for GraphReplay {
    fn replay(&self) -> Result<()> {
        let g = self.graph.lock().unwrap_or_else(|e| e.into_inner());
        g.launch().map_err(|e| {
            Error::backend(self.device.clone(), format!("cuGraphLaunch failed: {e:?}"))
        })
    }
}

pub(crate) fn capture(
    be: &CudaBackend,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<Option<Box<dyn Replay>>> {
    be.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(be.drv("cuStreamBeginCapture"))?;
    *be.graph_keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    let recorded = f();
    let scratch = be
        .graph_keep
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    // End the capture whatever `f` returned, so the stream is usable again.
    let ended = be.stream.end_capture(CUgraphInstantiate_flags(0));
    recorded?;
    let graph = ended.map_err(be.drv("cuStreamEndCapture/cuGraphInstantiate"))?;
    match graph {
        None => Ok(None),
        Some(g) => {
            g.upload().map_err(be.drv("cuGraphUpload"))?;
            Ok(Some(Box::new(GraphReplay {
                graph: Mutex::new(g),
                device: be.name(),
                _scratch: scratch,
            })))
        }
    }
}
