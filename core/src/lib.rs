//! kiln-core: dtypes and GGUF block formats, the object-safe [`Backend`] trait and its parameter
//! types, the [`Collective`] trait, the reference backend (the oracle of the conformance
//! suite), device discovery and the error type.

pub mod backend;
pub mod collective;
pub mod convert;
pub mod devices;
pub mod dtype;
pub mod error;
pub mod quant;
pub mod reference;
pub mod shape;
pub mod tensor;
pub mod tune;

pub use backend::{
    Activation, AttnParams, Backend, MatmulUse, MoeExperts, MoeGating, MoeRouting, OpKind, PagedKv,
    Replay, RopeFreqs, RopeParams, RopeScaling, RopeStyle, SeqBatch,
};
pub use collective::{Collective, HostStagedAllReduce, ResidualNorm};
pub use devices::{BackendKind, BackendProvider, BackendReport, Caps, DeviceId, DeviceInfo, Probe};
pub use dtype::DType;
pub use error::{Error, Result};
pub use reference::{ReferenceBackend, ReferenceProvider};
pub use shape::Shape;
pub use tensor::{Buffer, HostTensor, Tensor, View, ViewMut, Weight};
