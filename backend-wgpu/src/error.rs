//! The one error enum of kiln-wgpu. Every variant converts into `kiln_core::Error` at the
//! crate boundary, keeping the device name so messages say where things went wrong.

use kiln_core::Error;

#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// No usable adapter (no Vulkan/Metal/DX12 driver, or the index is out of range).
    #[error("no wgpu adapter: {0}")]
    NoAdapter(String),
    /// `request_device` failed.
    #[error("{device}: cannot open the device: {msg}")]
    RequestDevice { device: String, msg: String },
    /// A shader failed to parse, validate or compile into a pipeline.
    #[error("{device}: shader {shader} ({entry}): {msg}")]
    Shader {
        device: String,
        shader: String,
        entry: String,
        msg: String,
    },
    /// Mapping a staging buffer for a read failed.
    #[error("{device}: mapping a read-back buffer failed: {msg}")]
    Map { device: String, msg: String },
    /// Waiting for the queue failed (device lost, timeout).
    #[error("{device}: waiting for the queue failed: {msg}")]
    Poll { device: String, msg: String },
    /// wgpu reported a validation or out-of-memory error asynchronously.
    #[error("{device}: {msg}")]
    Uncaptured { device: String, msg: String },
}

impl From<WgpuError> for Error {
    fn from(e: WgpuError) -> Error {
        match &e {
            WgpuError::NoAdapter(_) => Error::Invalid(e.to_string()),
            _ => Error::backend("wgpu", e.to_string()),
        }
    }
}
