//! The one error type of kiln-core. Every message names the op, field, file or limit involved.

use crate::backend::OpKind;
use crate::devices::DeviceId;
use crate::dtype::DType;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend does not implement this op for this dtype (see `Backend::supports`).
    #[error("{op:?} is not supported for {dtype} on {backend}")]
    Unsupported {
        op: OpKind,
        dtype: DType,
        backend: String,
    },

    /// Inputs of an op disagree in shape, dtype or size.
    #[error("{op:?}: {msg}")]
    Shape { op: OpKind, msg: String },

    /// A view or buffer lives on another device than the backend it was given to.
    #[error("{op:?}: a buffer of {found} was passed to {expected}")]
    WrongDevice {
        op: OpKind,
        expected: DeviceId,
        found: DeviceId,
    },

    /// A view does not fit its buffer, is misaligned, or overlaps an output.
    #[error("bad view: {0}")]
    View(String),

    /// Block-format data has the wrong length or an unknown type.
    #[error("{dtype}: {msg}")]
    Quant { dtype: DType, msg: String },

    /// A request exceeds a device limit (memory, binding size, workgroup memory, ...).
    #[error("{device}: {what} needs {requested} bytes, limit is {limit}")]
    Limit {
        device: String,
        what: String,
        requested: u64,
        limit: u64,
    },

    /// Device memory exhausted.
    #[error("{device}: out of memory allocating {requested} bytes")]
    OutOfMemory { device: String, requested: u64 },

    /// A bad argument that is none of the above (e.g. a parameter out of range).
    #[error("{0}")]
    Invalid(String),

    /// An error reported by a driver or runtime (CUDA, Vulkan, NVRTC, NCCL...).
    #[error("{backend}: {msg}")]
    Backend { backend: String, msg: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn shape(op: OpKind, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn backend(backend: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Backend {
            backend: backend.into(),
            msg: msg.into(),
        }
    }
}
