//! The crate's error enum. Every variant names the device, the kernel or the library call
//! involved; all convert into `kiln_core::Error::Backend` (or a more specific core variant) so the
//! `Backend` trait methods can use `?`.

use kiln_core::Error;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A shared library (libcuda, libnvrtc, libcublasLt, libnccl) is not on the loader path.
    #[error("{lib} not found: {why}")]
    LibraryMissing { lib: &'static str, why: String },

    /// A CUDA driver call failed.
    #[error("{device}: {call} failed: {msg}")]
    Driver {
        device: String,
        call: &'static str,
        msg: String,
    },

    /// NVRTC rejected a kernel file; `log` is the compiler's log.
    #[error("NVRTC failed to compile {kernel} for {arch}: {status}\n{log}")]
    Compile {
        kernel: String,
        arch: String,
        status: String,
        log: String,
    },

    /// A kernel function is missing from its compiled module.
    #[error("{device}: kernel {function} not found in {kernel}: {msg}")]
    MissingFunction {
        device: String,
        kernel: String,
        function: String,
        msg: String,
    },

    /// A cuBLASLt call failed (or found no algorithm for a shape).
    #[error("{device}: cuBLASLt {call} failed: {msg}")]
    Cublas {
        device: String,
        call: &'static str,
        msg: String,
    },

    /// A CUDA driver/library call panicked inside cudarc (contained with catch_unwind).
    #[error("{what} panicked inside cudarc: {msg}")]
    Panicked { what: String, msg: String },
}

impl CudaError {
    pub(crate) fn driver(
        device: impl Into<String>,
        call: &'static str,
        e: impl std::fmt::Debug,
    ) -> Self {
        CudaError::Driver {
            device: device.into(),
            call,
            msg: format!("{e:?}"),
        }
    }
}

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Error {
        Error::backend("cuda", e.to_string())
    }
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}

/// Run `f`, turning a panic inside cudarc (a missing symbol or library) into an error.
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, CudaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| CudaError::Panicked {
        what: what.to_string(),
        msg: panic_message(p.as_ref()),
    })
}
